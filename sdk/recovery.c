/*
 * recovery.c - the account's recovery code. A new account's first device makes 16 random bytes,
 * shown once to the user as the recovery code; the relay keeps only the Ed25519 public key derived
 * from it, and a user who lost every device proves the code with the matching signature to put a
 * new device in their place (net_link.c). The code stays in this database (sealed) only until the
 * app says it was shown (hush_recovery_code_forget).
 *
 *   code:  32 hex digits of the secret in 8 groups of 4, "-" between them (any case; spaces and
 *          dashes are ignored when read back)
 *   key:   Ed25519 seed = BLAKE2b-256(key = "hush-recovery-v1", message = the 16 secret bytes)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "internal.h"

#define SECRET_AD "hush1|meta|recovery_secret"
#define SECRET_BYTES 16

void hsdk_recovery_keys(const uint8_t secret[16], uint8_t pk[32], uint8_t sk[64])
{
    static const char label[] = "hush-recovery-v1";
    uint8_t seed[crypto_sign_SEEDBYTES];
    crypto_generichash(seed, sizeof seed, secret, SECRET_BYTES, (const uint8_t *)label, sizeof label - 1);
    crypto_sign_seed_keypair(pk, sk, seed);
    sodium_memzero(seed, sizeof seed);
}

static void format_code(const uint8_t secret[16], char out[HUSH_RECOVERY_CODE_LEN + 1])
{
    char hex[2 * SECRET_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, secret, SECRET_BYTES);
    size_t k = 0;
    for (size_t i = 0; i < 2 * SECRET_BYTES; i++) {
        if (i && i % 4 == 0)
            out[k++] = '-';
        out[k++] = hex[i];
    }
    out[k] = '\0';
    sodium_memzero(hex, sizeof hex);
}

hush_err hsdk_recovery_code_parse(const char *code, uint8_t secret[16])
{
    if (!code || strlen(code) > 128)
        return HUSH_ERR_INVALID_ARG;
    char hex[2 * SECRET_BYTES + 1];
    size_t n = 0;
    for (const char *p = code; *p; p++) {
        char ch = *p;
        if (ch == '-' || ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r')
            continue;
        if (ch >= 'A' && ch <= 'F')
            ch = (char)(ch - 'A' + 'a');
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')) || n == 2 * SECRET_BYTES) {
            sodium_memzero(hex, sizeof hex);
            return HUSH_ERR_INVALID_ARG;
        }
        hex[n++] = ch;
    }
    hex[n] = '\0';
    size_t got = 0;
    int rc = n == 2 * SECRET_BYTES ? sodium_hex2bin(secret, SECRET_BYTES, hex, n, NULL, &got, NULL) : -1;
    sodium_memzero(hex, sizeof hex);
    return rc == 0 && got == SECRET_BYTES ? HUSH_OK : HUSH_ERR_INVALID_ARG;
}

/* The pending secret, or HUSH_ERR_NOT_FOUND. Caller holds the lock. */
static hush_err pending_secret(hush_client *c, uint8_t secret[16])
{
    uint8_t *b = NULL, *pt = NULL;
    size_t n = 0, ptl = 0;
    hush_err e = hsdk_meta_get_blob(c, "recovery_secret", &b, &n);
    if (!e && (!b || !n))
        e = HUSH_ERR_NOT_FOUND;
    if (!e)
        e = hsdk_open(c, SECRET_AD, b, n, &pt, &ptl);
    if (!e && ptl != SECRET_BYTES)
        e = HUSH_ERR_DB_CORRUPT;
    if (!e)
        memcpy(secret, pt, SECRET_BYTES);
    if (pt) {
        sodium_memzero(pt, ptl);
        free(pt);
    }
    free(b);
    return e;
}

hush_err hsdk_recovery_public_key(hush_client *c, uint8_t pk[32])
{
    uint8_t secret[SECRET_BYTES], sk[crypto_sign_SECRETKEYBYTES];
    hush_err e = pending_secret(c, secret);
    if (e == HUSH_ERR_NOT_FOUND) {
        /* made once, kept (sealed) until the app has shown it: a retried registration sends the
         * same key */
        randombytes_buf(secret, sizeof secret);
        uint8_t *sealed = NULL;
        size_t slen = 0;
        e = hsdk_seal(c, SECRET_AD, secret, sizeof secret, &sealed, &slen);
        if (!e)
            e = hsdk_meta_set_blob(c, "recovery_secret", sealed, slen);
        free(sealed);
    }
    if (!e)
        hsdk_recovery_keys(secret, pk, sk);
    sodium_memzero(secret, sizeof secret);
    sodium_memzero(sk, sizeof sk);
    return e;
}

hush_err hush_recovery_code(hush_client *c, char out[HUSH_RECOVERY_CODE_LEN + 1])
{
    if (!c || !out)
        return HUSH_ERR_INVALID_ARG;
    out[0] = '\0';
    hsdk_lock(c);
    uint8_t secret[SECRET_BYTES];
    hush_err e = pending_secret(c, secret);
    if (!e)
        format_code(secret, out);
    sodium_memzero(secret, sizeof secret);
    hsdk_unlock(c);
    return e;
}

hush_err hush_recovery_code_forget(hush_client *c)
{
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = hsdk_meta_set_blob(c, "recovery_secret", (const uint8_t *)"", 0);
    hsdk_unlock(c);
    return e;
}
