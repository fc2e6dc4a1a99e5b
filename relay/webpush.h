/*
 * webpush.h - the cryptography of a Web Push wake-up (prefix webpush_), with OpenSSL: message
 * encryption (RFC 8291, content coding aes128gcm of RFC 8188) and the relay's identification to a
 * push service (VAPID, RFC 8292: an ES256 JSON Web Token). No I/O but the VAPID key file; no
 * threads of its own: callable from any thread. Internal to relay/ (tests and fuzzers link it).
 * And the endpoint policy: which URLs and addresses a push may go to.
 */
#ifndef HUSH_RELAY_WEBPUSH_H
#define HUSH_RELAY_WEBPUSH_H

#include <stddef.h>
#include <stdint.h>

#define WEBPUSH_P256_PUBLIC 65   /* uncompressed point: 0x04 || x || y */
#define WEBPUSH_AUTH_BYTES 16
#define WEBPUSH_SALT_BYTES 16
#define WEBPUSH_HEADER_BYTES (WEBPUSH_SALT_BYTES + 4 + 1 + WEBPUSH_P256_PUBLIC)
#define WEBPUSH_TAG_BYTES 16
#define WEBPUSH_RECORD_SIZE 4096
/* the largest plaintext one record carries (one delimiter byte and the tag in the record) */
#define WEBPUSH_MAX_PLAINTEXT (WEBPUSH_RECORD_SIZE - WEBPUSH_HEADER_BYTES - 1 - WEBPUSH_TAG_BYTES)

/* 1 when `pub` (len bytes) is an uncompressed P-256 point on the curve, 0 otherwise. */
int webpush_valid_public(const uint8_t *pub, size_t len);

/*
 * Encrypts `pt` (at most WEBPUSH_MAX_PLAINTEXT bytes) for the user agent whose key is ua_public
 * and whose authentication secret is auth: one aes128gcm record with its header. `out` holds at
 * least WEBPUSH_HEADER_BYTES + len + 1 + WEBPUSH_TAG_BYTES bytes; *out_len gets the length.
 * as_private (32 bytes) and salt fix the sender's ephemeral key and the salt (test vectors
 * only); NULL: fresh random ones, as every real message must use. Returns 0, or -1 (bad key,
 * too long, OpenSSL failure). Every intermediate secret is wiped.
 */
int webpush_encrypt(const uint8_t ua_public[WEBPUSH_P256_PUBLIC], const uint8_t auth[WEBPUSH_AUTH_BYTES],
                    const uint8_t *pt, size_t len, const uint8_t *as_private, const uint8_t *salt, uint8_t *out,
                    size_t *out_len);

/*
 * The receiving side (a user agent's): decrypts one aes128gcm record made for (ua_private,
 * ua_public, auth). For the tests and the fuzzer; the relay never decrypts. `out` holds at least
 * len bytes. Returns 0 with *out_len, or -1 (malformed, or not authentic).
 */
int webpush_decrypt(const uint8_t ua_private[32], const uint8_t ua_public[WEBPUSH_P256_PUBLIC],
                    const uint8_t auth[WEBPUSH_AUTH_BYTES], const uint8_t *body, size_t len, uint8_t *out,
                    size_t *out_len);

/* The relay's VAPID key (an opaque OpenSSL key; owned by whoever loaded it). */
typedef struct webpush_key webpush_key;
/* Loads the PEM private key at `path`, or makes a new P-256 key and writes it there (mode 0600,
 * written to a temporary file and renamed). Returns the key, or NULL with a message in err. */
webpush_key *webpush_key_load_or_create(const char *path, char *err, size_t errlen);
void webpush_key_free(webpush_key *k);
/* The public key as an uncompressed point (what clients and push services are given). */
void webpush_key_public(const webpush_key *k, uint8_t out[WEBPUSH_P256_PUBLIC]);
/*
 * The Authorization header value for a push to `audience` (the endpoint's origin,
 * "https://host[:port]"): "vapid t=<JWT>, k=<public key>", the JWT signed with ES256 and valid
 * until exp (seconds since the epoch); `sub` (may be NULL or "") is the operator's contact
 * ("mailto:..." or "https://..."). Returns 0, or -1 (too long for out, OpenSSL failure).
 */
int webpush_vapid_header(const webpush_key *k, const char *audience, uint64_t exp, const char *sub, char *out,
                         size_t outcap);

/* 1 for loopback, private (RFC 1918, RFC 4193), shared (100.64/10), link-local, multicast,
 * unspecified and reserved addresses, IPv4 and IPv6 (a v4-mapped v6 address as its v4): where a
 * push must not go unless the operator allows it. */
struct sockaddr;
int webpush_address_private(const struct sockaddr *sa);

/*
 * Checks an endpoint as a device registers it: 1..WEBPUSH_MAX_ENDPOINT bytes, a URL libcurl's
 * parser takes, scheme https (http too when allow_http), no credentials, not a literal loopback or
 * private address nor a localhost name unless allow_private (a name is checked again when it is
 * resolved, at each push); p256dh a point on P-256; auth alen == 16. 0, or -1 with *why (a static
 * string). host and origin (may be NULL) receive the URL's host and origin ("https://host[:port]").
 */
#define WEBPUSH_MAX_ENDPOINT 1000
int webpush_endpoint_check(const char *url, int allow_http, int allow_private, const uint8_t *p256dh, size_t plen,
                           size_t alen, char *host, size_t hostcap, char *origin, size_t origincap, const char **why);

/* base64url without padding (RFC 4648 section 5), as Web Push uses everywhere. encode: `out`
 * holds at least 4 * ((len + 2) / 3) + 1 bytes. decode: returns the byte length, or -1. */
void webpush_b64url(const uint8_t *in, size_t len, char *out, size_t outcap);
long webpush_b64url_decode(const char *in, uint8_t *out, size_t outcap);

#endif
