/*
 * seal.c - sealing rows at rest. Every secret column holds
 *     0x01 || nonce (24) || XChaCha20-Poly1305(ciphertext || tag (16))
 * under a key derived from the app's database key, with associated data naming the table and the
 * row's identity, so a sealed value copied into another row (or table) fails to open.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "internal.h"

#define SEAL_VERSION 0x01

void hsdk_ad(char *buf, size_t cap, const char *table, const char *name, size_t name_len,
              int64_t n1, int64_t n2)
{
    /* Length-prefixed name: "a|1" and "a|" + "1" can never collide. */
    int n = snprintf(buf, cap, "hush1|%s|%zu:%.*s|%lld|%lld", table, name_len, (int)name_len,
                     name ? name : "", (long long)n1, (long long)n2);
    /* Every caller's buffer fits the longest names the SDK accepts. Were one ever too small, two
     * rows could share a truncated associated data and be swapped undetected: stop instead. */
    if (n < 0 || (size_t)n >= cap)
        abort();
}

hush_err hsdk_seal(const hush_client *c, const char *ad, const uint8_t *pt, size_t len,
                    uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    size_t n = HUSH_SEAL_OVERHEAD + len;
    uint8_t *buf = malloc(n);
    if (!buf)
        return HUSH_ERR_NOMEM;
    buf[0] = SEAL_VERSION;
    randombytes_buf(buf + 1, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(buf + 25, &clen, pt, len, (const uint8_t *)ad,
                                               strlen(ad), NULL, buf + 1, c->seal_key);
    *out = buf;
    *out_len = 25 + (size_t)clen;
    return HUSH_OK;
}

hush_err hsdk_open(const hush_client *c, const char *ad, const uint8_t *ct, size_t len,
                    uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (!ct || len < HUSH_SEAL_OVERHEAD || ct[0] != SEAL_VERSION)
        return HUSH_ERR_DB_KEY;
    size_t n = len - HUSH_SEAL_OVERHEAD;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return HUSH_ERR_NOMEM;
    unsigned long long plen = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(buf, &plen, NULL, ct + 25, len - 25,
                                                   (const uint8_t *)ad, strlen(ad), ct + 1,
                                                   c->seal_key) != 0) {
        free(buf);
        return HUSH_ERR_DB_KEY;
    }
    *out = buf;
    *out_len = (size_t)plen;
    return HUSH_OK;
}
