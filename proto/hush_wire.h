/*
 * hush_wire.h - constants and helpers of the relay wire protocol shared by hushd, libhush and the
 * tests (prefix hwire_). The schema itself is proto/hush.proto; docs/PROTOCOL.md is the reference.
 */
#ifndef HUSH_WIRE_H
#define HUSH_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define HWIRE_VERSION 1
#define HWIRE_CHALLENGE_BYTES 32
#define HWIRE_CLIENT_MSG_ID_BYTES 16
#define HWIRE_PURPOSE_LOGIN "login"
#define HWIRE_PURPOSE_REGISTER "register"
#define HWIRE_PURPOSE_RECOVER "recover"
#define HWIRE_AUTH_MESSAGE_MAX 512
#define HWIRE_ORIGIN_MAX 255       /* "ws://host:port" / "wss://host:port" as the client connected */
#define HWIRE_BINDING_BYTES 32     /* TLS exporter (RFC 9266): "EXPORTER-Channel-Binding", no context */
#define HWIRE_REGISTER_DIGEST_BYTES 32
#define HWIRE_PROVISION_ADDRESS_LEN 32 /* hex of 16 random bytes */
#define HWIRE_MAX_LINK_BOX (64 * 1024) /* ProvisionSend.box / Provisioned.box */
#define HWIRE_MAX_DEVICE_NAME 255      /* RegisterRequest.device_name, sealed (a length byte in the digest) */

#define HWIRE_USERNAME_MIN 3
#define HWIRE_USERNAME_MAX 32

/* 1 if s is a valid username: 3..32 characters of [a-z0-9._-]. */
int hwire_valid_username(const char *s);

/*
 * Builds the transcript a device signs with its Ed25519 key to log in or register:
 *   "hush-auth-v2" 0x00 purpose 0x00 origin 0x00 binding_len(1) binding challenge(32)
 *   username 0x00 device_id(4 bytes, big endian) [register_digest(32), purpose "register" only]
 * `origin` names the relay as the client reached it ("wss://relay.example.org:443"; the relay
 * accepts only its own), `binding` is the TLS channel binding (32 bytes, or none without TLS), so
 * a proof made for one relay or one connection is worthless anywhere else; `register_digest`
 * (hwire_register_digest) covers the keys and invite of a registration. Returns the length, or 0
 * if an argument is invalid or `cap` too small.
 */
size_t hwire_auth_message(uint8_t *out, size_t cap, const char *purpose, const char *origin, const uint8_t *binding,
                          size_t binding_len, const uint8_t challenge[HWIRE_CHALLENGE_BYTES], const char *username,
                          uint32_t device_id, const uint8_t *register_digest);

/* "ws://host:port" or "wss://host:port" for a URL's scheme, host and port (host lower-cased). 0 on
 * success, -1 if it does not fit. */
int hwire_origin(char *out, size_t cap, int tls, const char *host, int port);

/*
 * WebSocket message reassembly, shared by hushd and libhush. libwebsockets hands a message over in
 * pieces (fragments, and parts of one fragment); hwire_rx_feed collects them under a cap that is
 * checked BEFORE anything is allocated, against what the peer has announced so far: the peer never
 * chooses our allocation size.
 *
 * Feed each piece with `remaining` (bytes libwebsockets still expects for the current fragment:
 * lws_remaining_packet_payload) and `final` (1 when this piece ends the message: the final fragment
 * and remaining == 0). Returns:
 *   HWIRE_RX_MORE     the piece was kept; wait for more
 *   HWIRE_RX_DONE     *msg / *msg_len is the whole message: `in` itself when the message came in
 *                     one piece (no copy), else the internal buffer. Valid until hwire_rx_consumed
 *                     (call it once the message is handled) or the next call on rx.
 *   HWIRE_RX_TOO_BIG  the message would exceed `max`: nothing was kept (close the connection)
 *   HWIRE_RX_NOMEM    allocation failed: nothing was kept
 * A buffer grown past 64 KiB is released once its message is delivered (an idle connection keeps
 * nothing large). hwire_rx_reset drops a partial message (a new connection); hwire_rx_free frees.
 */
enum { HWIRE_RX_MORE = 0, HWIRE_RX_DONE = 1, HWIRE_RX_TOO_BIG = -1, HWIRE_RX_NOMEM = -2 };
struct hwire_rx {
    uint8_t *buf;
    size_t len, cap;
    int delivered; /* the last DONE came from buf: empty it on the next call */
};
int hwire_rx_feed(struct hwire_rx *rx, const uint8_t *in, size_t len, size_t remaining, int final, size_t max,
                  const uint8_t **msg, size_t *msg_len);
/* 1 while a message is partly received (its first fragment has been fed). */
int hwire_rx_partial(const struct hwire_rx *rx);
void hwire_rx_consumed(struct hwire_rx *rx);
void hwire_rx_reset(struct hwire_rx *rx);
void hwire_rx_free(struct hwire_rx *rx);

/* The CLOCK_REALTIME instant `ms` milliseconds from now, for pthread_cond_timedwait: the one
 * deadline computation hushd, libhush and the tests share. */
void hwire_deadline(struct timespec *ts, int ms);
/* Wall-clock milliseconds since the epoch (timestamps on the wire and in databases). */
uint64_t hwire_now_ms(void);

struct Hush__RegisterRequest;
/* SHA-256 over a canonical encoding of what a registration stores: identity key, registration id,
 * auth key, invite, signed prekey, one-time prekeys and last-resort key (docs/PROTOCOL.md).
 * 0 on success, -1 if a field is over its size. */
int hwire_register_digest(const struct Hush__RegisterRequest *r, uint8_t out[HWIRE_REGISTER_DIGEST_BYTES]);

#endif
