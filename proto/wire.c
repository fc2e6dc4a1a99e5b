/* wire.c - helpers of the relay wire protocol (see hush_wire.h). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "hush.pb-c.h"
#include "hush_wire.h"

size_t hwire_auth_message(uint8_t *out, size_t cap, const char *purpose, const char *origin, const uint8_t *binding,
                          size_t binding_len, const uint8_t challenge[HWIRE_CHALLENGE_BYTES], const char *username,
                          uint32_t device_id, const uint8_t *register_digest)
{
    static const char label[] = "hush-auth-v2";
    if (!out || !purpose || !origin || !challenge || !username || (binding_len && !binding) || binding_len > 255)
        return 0;
    size_t pl = strlen(purpose), ol = strlen(origin), ul = strlen(username);
    size_t dl = register_digest ? HWIRE_REGISTER_DIGEST_BYTES : 0;
    size_t n = sizeof label + pl + 1 + ol + 1 + 1 + binding_len + HWIRE_CHALLENGE_BYTES + ul + 1 + 4 + dl;
    if (n > cap || pl > 16 || ul > 64 || ol > HWIRE_ORIGIN_MAX)
        return 0;
    uint8_t *p = out;
    memcpy(p, label, sizeof label); /* includes the NUL separator */
    p += sizeof label;
    memcpy(p, purpose, pl);
    p += pl;
    *p++ = 0;
    memcpy(p, origin, ol);
    p += ol;
    *p++ = 0;
    *p++ = (uint8_t)binding_len;
    if (binding_len)
        memcpy(p, binding, binding_len);
    p += binding_len;
    memcpy(p, challenge, HWIRE_CHALLENGE_BYTES);
    p += HWIRE_CHALLENGE_BYTES;
    memcpy(p, username, ul);
    p += ul;
    *p++ = 0;
    *p++ = (uint8_t)(device_id >> 24);
    *p++ = (uint8_t)(device_id >> 16);
    *p++ = (uint8_t)(device_id >> 8);
    *p++ = (uint8_t)device_id;
    if (dl) {
        memcpy(p, register_digest, dl);
        p += dl;
    }
    return (size_t)(p - out);
}

int hwire_origin(char *out, size_t cap, int tls, const char *host, int port)
{
    if (!host || !*host || port < 1 || port > 65535)
        return -1;
    /* an IPv6 address is written in brackets, whether or not it was given with them */
    size_t hl = strlen(host);
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']')
        host++, hl -= 2;
    int v6 = memchr(host, ':', hl) != NULL;
    int n = snprintf(out, cap, "%s://%s", tls ? "wss" : "ws", v6 ? "[" : "");
    if (n < 0 || (size_t)n >= cap)
        return -1;
    size_t k = (size_t)n;
    for (size_t i = 0; i < hl; i++) {
        if (k + 2 >= cap)
            return -1;
        out[k++] = (char)tolower((unsigned char)host[i]);
    }
    if (v6)
        out[k++] = ']';
    n = snprintf(out + k, cap - k, ":%d", port);
    return n < 0 || (size_t)n >= cap - k || k + (size_t)n > HWIRE_ORIGIN_MAX ? -1 : 0;
}

static void dg_u32(crypto_hash_sha256_state *st, uint32_t v)
{
    uint8_t b[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
    crypto_hash_sha256_update(st, b, 4);
}

static int dg_bytes(crypto_hash_sha256_state *st, const uint8_t *p, size_t n)
{
    if (n > 255)
        return -1;
    uint8_t l = (uint8_t)n;
    crypto_hash_sha256_update(st, &l, 1);
    if (n)
        crypto_hash_sha256_update(st, p, n);
    return 0;
}

static int dg_prekey(crypto_hash_sha256_state *st, const Hush__PreKey *k)
{
    dg_u32(st, k->id);
    return dg_bytes(st, k->public_key.data, k->public_key.len);
}

int hwire_register_digest(const struct Hush__RegisterRequest *r, uint8_t out[HWIRE_REGISTER_DIGEST_BYTES])
{
    static const char label[] = "hush-register-v1";
    static const Hush__PreKeyUpload no_keys = HUSH__PRE_KEY_UPLOAD__INIT;
    static const Hush__SignedPreKey no_spk = HUSH__SIGNED_PRE_KEY__INIT;
    if (!r)
        return -1;
    /* missing parts are encoded as empty ones: the relay then refuses them as BAD_KEYS */
    const Hush__PreKeyUpload *k = r->keys ? r->keys : &no_keys;
    const Hush__SignedPreKey *spk = k->signed_pre_key ? k->signed_pre_key : &no_spk;
    if (k->n_one_time_pre_keys > 65535)
        return -1;
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const uint8_t *)label, sizeof label);
    const char *inv = r->invite ? r->invite : "";
    int bad = dg_bytes(&st, r->identity_key.data, r->identity_key.len);
    dg_u32(&st, r->registration_id);
    bad |= dg_bytes(&st, r->auth_key.data, r->auth_key.len);
    bad |= dg_bytes(&st, (const uint8_t *)inv, strlen(inv));
    dg_u32(&st, spk->id);
    bad |= dg_bytes(&st, spk->public_key.data, spk->public_key.len);
    bad |= dg_bytes(&st, spk->signature.data, spk->signature.len);
    dg_u32(&st, (uint32_t)(spk->timestamp_ms >> 32));
    dg_u32(&st, (uint32_t)spk->timestamp_ms);
    uint8_t cnt[2] = { (uint8_t)(k->n_one_time_pre_keys >> 8), (uint8_t)k->n_one_time_pre_keys };
    crypto_hash_sha256_update(&st, cnt, 2);
    for (size_t i = 0; i < k->n_one_time_pre_keys && !bad; i++)
        bad |= dg_prekey(&st, k->one_time_pre_keys[i]);
    uint8_t has_lr = k->last_resort != NULL;
    crypto_hash_sha256_update(&st, &has_lr, 1);
    if (has_lr)
        bad |= dg_prekey(&st, k->last_resort);
    if (r->recovery_key.len) {
        /* the recovery code's public key (absent from older registrations: their proofs stay valid) */
        static const char rec[] = "recovery";
        crypto_hash_sha256_update(&st, (const uint8_t *)rec, sizeof rec);
        bad |= dg_bytes(&st, r->recovery_key.data, r->recovery_key.len);
    }
    if (r->device_name.len) {
        static const char name[] = "name";
        crypto_hash_sha256_update(&st, (const uint8_t *)name, sizeof name);
        bad |= dg_bytes(&st, r->device_name.data, r->device_name.len);
    }
    if (r->link_token && *r->link_token) {
        /* a linked device's token (absent for a user's first device: older proofs stay valid) */
        static const char link[] = "link";
        crypto_hash_sha256_update(&st, (const uint8_t *)link, sizeof link);
        bad |= dg_bytes(&st, (const uint8_t *)r->link_token, strlen(r->link_token));
    }
    crypto_hash_sha256_final(&st, out);
    return bad ? -1 : 0;
}

int hwire_valid_username(const char *s)
{
    if (!s)
        return 0;
    size_t n = strnlen(s, HWIRE_USERNAME_MAX + 1);
    if (n < HWIRE_USERNAME_MIN || n > HWIRE_USERNAME_MAX || s[0] == '-')
        return 0; /* a leading '-' would read as an option on command lines */
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* WebSocket message reassembly */

#define RX_FIRST_ALLOC 4096
#define RX_KEEP_MAX 65536

void hwire_rx_consumed(struct hwire_rx *rx)
{
    if (!rx->delivered)
        return;
    rx->delivered = 0;
    rx->len = 0;
    if (rx->cap > RX_KEEP_MAX) { /* do not keep a large buffer for an idle connection */
        free(rx->buf);
        rx->buf = NULL;
        rx->cap = 0;
    }
}

int hwire_rx_feed(struct hwire_rx *rx, const uint8_t *in, size_t len, size_t remaining, int final, size_t max,
                  const uint8_t **msg, size_t *msg_len)
{
    hwire_rx_consumed(rx);
    *msg = NULL;
    *msg_len = 0;
    /* the cap, on what is held plus this piece plus what the peer announced: before allocating */
    if (len > max || rx->len > max - len || remaining > max - rx->len - len) {
        rx->len = 0;
        return HWIRE_RX_TOO_BIG;
    }
    if (final && rx->len == 0) {
        *msg = in; /* the common case: the whole message in one piece, no copy */
        *msg_len = len;
        return HWIRE_RX_DONE;
    }
    if (rx->len + len > rx->cap) {
        size_t ncap = rx->cap ? rx->cap : RX_FIRST_ALLOC;
        while (ncap < rx->len + len + remaining && ncap < max)
            ncap *= 2;
        if (ncap > max)
            ncap = max;
        if (ncap < rx->len + len)
            ncap = rx->len + len;
        uint8_t *nb = realloc(rx->buf, ncap);
        if (!nb) {
            rx->len = 0;
            return HWIRE_RX_NOMEM;
        }
        rx->buf = nb;
        rx->cap = ncap;
    }
    if (len)
        memcpy(rx->buf + rx->len, in, len);
    rx->len += len;
    if (!final)
        return HWIRE_RX_MORE;
    *msg = rx->buf;
    *msg_len = rx->len;
    rx->delivered = 1;
    return HWIRE_RX_DONE;
}

int hwire_rx_partial(const struct hwire_rx *rx) { return !rx->delivered && rx->len > 0; }

void hwire_rx_reset(struct hwire_rx *rx)
{
    rx->delivered = 1;
    hwire_rx_consumed(rx);
}

void hwire_rx_free(struct hwire_rx *rx)
{
    free(rx->buf);
    rx->buf = NULL;
    rx->len = rx->cap = 0;
    rx->delivered = 0;
}

void hwire_deadline(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

uint64_t hwire_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
