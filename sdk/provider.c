/*
 * provider.c - the libsignal-protocol-c crypto provider: libsodium for randomness, HMAC-SHA256 and
 * SHA-512; OpenSSL EVP for AES-256-CBC (PKCS#7) and AES-256-CTR. See docs/LIBSIGNAL-NOTES.md §1 for the
 * contracts each callback honours.
 */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <sodium.h>

#include <curve.h>
#include <fingerprint.h>

#include "internal.h"

static int p_random(uint8_t *data, size_t len, void *ud)
{
    (void)ud;
    randombytes_buf(data, len);
    return 0;
}

static int p_hmac_init(void **ctx, const uint8_t *key, size_t key_len, void *ud)
{
    (void)ud;
    *ctx = NULL; /* cleanup may run after a failed init: it must see NULL */
    crypto_auth_hmacsha256_state *st = malloc(sizeof *st);
    if (!st)
        return SG_ERR_NOMEM;
    if (crypto_auth_hmacsha256_init(st, key, key_len) != 0) {
        free(st);
        return SG_ERR_UNKNOWN;
    }
    *ctx = st;
    return 0;
}

static int p_hmac_update(void *ctx, const uint8_t *data, size_t len, void *ud)
{
    (void)ud;
    return crypto_auth_hmacsha256_update(ctx, data, len) == 0 ? 0 : SG_ERR_UNKNOWN;
}

static int p_hmac_final(void *ctx, signal_buffer **out, void *ud)
{
    (void)ud;
    uint8_t mac[crypto_auth_hmacsha256_BYTES];
    if (crypto_auth_hmacsha256_final(ctx, mac) != 0)
        return SG_ERR_UNKNOWN;
    signal_buffer *b = signal_buffer_create(mac, sizeof mac);
    sodium_memzero(mac, sizeof mac);
    if (!b)
        return SG_ERR_NOMEM;
    *out = b;
    return 0;
}

static void p_hmac_cleanup(void *ctx, void *ud)
{
    (void)ud;
    if (!ctx)
        return;
    sodium_memzero(ctx, sizeof(crypto_auth_hmacsha256_state));
    free(ctx);
}

static int p_sha512_init(void **ctx, void *ud)
{
    (void)ud;
    *ctx = NULL;
    crypto_hash_sha512_state *st = malloc(sizeof *st);
    if (!st)
        return SG_ERR_NOMEM;
    crypto_hash_sha512_init(st);
    *ctx = st;
    return 0;
}

static int p_sha512_update(void *ctx, const uint8_t *data, size_t len, void *ud)
{
    (void)ud;
    return crypto_hash_sha512_update(ctx, data, len) == 0 ? 0 : SG_ERR_UNKNOWN;
}

static int p_sha512_final(void *ctx, signal_buffer **out, void *ud)
{
    (void)ud;
    uint8_t md[crypto_hash_sha512_BYTES];
    crypto_hash_sha512_final(ctx, md);
    /* fingerprint.c reuses one context for every iteration: the contract is "prepare the
     * context for reuse", and libsodium's final leaves it zeroed, so re-initialise here. */
    crypto_hash_sha512_init(ctx);
    signal_buffer *b = signal_buffer_create(md, sizeof md);
    if (!b)
        return SG_ERR_NOMEM;
    *out = b;
    return 0;
}

static void p_sha512_cleanup(void *ctx, void *ud)
{
    (void)ud;
    if (!ctx)
        return;
    sodium_memzero(ctx, sizeof(crypto_hash_sha512_state));
    free(ctx);
}

static const EVP_CIPHER *pick_cipher(int cipher, size_t key_len, size_t iv_len)
{
    if (key_len != 32 || iv_len != 16)
        return NULL;
    if (cipher == SG_CIPHER_AES_CBC_PKCS5)
        return EVP_aes_256_cbc();
    if (cipher == SG_CIPHER_AES_CTR_NOPADDING)
        return EVP_aes_256_ctr();
    return NULL;
}

static int aes_run(int enc, signal_buffer **output, int cipher, const uint8_t *key, size_t key_len,
                   const uint8_t *iv, size_t iv_len, const uint8_t *in, size_t in_len)
{
    const EVP_CIPHER *evp = pick_cipher(cipher, key_len, iv_len);
    if (!evp || in_len > (size_t)INT_MAX - 16)
        return SG_ERR_INVAL;
    if (!enc && cipher == SG_CIPHER_AES_CBC_PKCS5 && (in_len == 0 || in_len % 16 != 0))
        return SG_ERR_INVAL;
    int rc = SG_ERR_UNKNOWN;
    uint8_t *buf = malloc(in_len + 16);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n1 = 0, n2 = 0;
    if (!buf || !ctx) {
        rc = SG_ERR_NOMEM;
        goto out;
    }
    if (EVP_CipherInit_ex(ctx, evp, NULL, key, iv, enc) != 1)
        goto out;
    /* PKCS#7 padding on for CBC (the EVP default), off for CTR (a stream mode). */
    EVP_CIPHER_CTX_set_padding(ctx, cipher == SG_CIPHER_AES_CBC_PKCS5 ? 1 : 0);
    if (EVP_CipherUpdate(ctx, buf, &n1, in, (int)in_len) != 1)
        goto out;
    if (EVP_CipherFinal_ex(ctx, buf + n1, &n2) != 1)
        goto out; /* bad padding on decrypt fails here */
    *output = signal_buffer_create(buf, (size_t)n1 + (size_t)n2);
    rc = *output ? 0 : SG_ERR_NOMEM;
out:
    if (rc)
        ERR_clear_error(); /* leave nothing on this thread's OpenSSL error queue for others to misread */
    if (buf) {
        sodium_memzero(buf, in_len + 16);
        free(buf);
    }
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

static int p_encrypt(signal_buffer **output, int cipher, const uint8_t *key, size_t key_len,
                     const uint8_t *iv, size_t iv_len, const uint8_t *pt, size_t pt_len, void *ud)
{
    (void)ud;
    return aes_run(1, output, cipher, key, key_len, iv, iv_len, pt, pt_len);
}

static int p_decrypt(signal_buffer **output, int cipher, const uint8_t *key, size_t key_len,
                     const uint8_t *iv, size_t iv_len, const uint8_t *ct, size_t ct_len, void *ud)
{
    (void)ud;
    return aes_run(0, output, cipher, key, key_len, iv, iv_len, ct, ct_len);
}

int hsdk_provider_install(signal_context *sg)
{
    signal_crypto_provider p = {
        .random_func = p_random,
        .hmac_sha256_init_func = p_hmac_init,
        .hmac_sha256_update_func = p_hmac_update,
        .hmac_sha256_final_func = p_hmac_final,
        .hmac_sha256_cleanup_func = p_hmac_cleanup,
        .sha512_digest_init_func = p_sha512_init,
        .sha512_digest_update_func = p_sha512_update,
        .sha512_digest_final_func = p_sha512_final,
        .sha512_digest_cleanup_func = p_sha512_cleanup,
        .encrypt_func = p_encrypt,
        .decrypt_func = p_decrypt,
        .user_data = NULL,
    };
    return signal_context_set_crypto_provider(sg, &p);
}

/* Known-answer test: the displayable fingerprint vector from libsignal-protocol-c's own test
 * suite (5200 iterations). It exercises SHA-512 context reuse, the trap that silently produces
 * wrong safety numbers. Plus an AES-CBC round trip with a tampered-padding check. */
static const uint8_t kat_alice[33] = {
    0x05, 0x06, 0x86, 0x3b, 0xc6, 0x6d, 0x02, 0xb4, 0x0d, 0x27, 0xb8, 0xd4, 0x9c, 0xa7, 0xc0, 0x9e, 0x92,
    0x39, 0x23, 0x6f, 0x9d, 0x7d, 0x25, 0xd6, 0xfc, 0xca, 0x5c, 0xe1, 0x3c, 0x70, 0x64, 0xd8, 0x68
};
static const uint8_t kat_bob[33] = {
    0x05, 0xf7, 0x81, 0xb6, 0xfb, 0x32, 0xfe, 0xd9, 0xba, 0x1c, 0xf2, 0xde, 0x97, 0x8d, 0x4d, 0x5d, 0xa2,
    0x8d, 0xc3, 0x40, 0x46, 0xae, 0x81, 0x44, 0x02, 0xb5, 0xc0, 0xdb, 0xd9, 0x6f, 0xda, 0x90, 0x7b
};
static const char kat_display[] = "300354477692869396892869876765458257569162576843440918079131";

/* Known answers from the standards: HMAC-SHA256, RFC 4231 test case 2; AES-256-CTR and
 * AES-256-CBC, NIST SP 800-38A F.5.5 and F.2.5 (first block). */
static const uint8_t kat_hmac[32] = { 0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24,
                                      0x26, 0x08, 0x95, 0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27,
                                      0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43 };
static const uint8_t kat_aes_key[32] = { 0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe, 0x2b, 0x73, 0xae,
                                         0xf0, 0x85, 0x7d, 0x77, 0x81, 0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61,
                                         0x08, 0xd7, 0x2d, 0x98, 0x10, 0xa3, 0x09, 0x14, 0xdf, 0xf4 };
static const uint8_t kat_ctr_iv[16] = { 0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7,
                                        0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff };
static const uint8_t kat_cbc_iv[16] = { 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
                                        0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f };
static const uint8_t kat_aes_pt[16] = { 0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96,
                                        0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93, 0x17, 0x2a };
static const uint8_t kat_ctr_ct[16] = { 0x60, 0x1e, 0xc3, 0x13, 0x77, 0x57, 0x89, 0xa5,
                                        0xb7, 0xa7, 0xf5, 0x04, 0xbb, 0xf3, 0xd2, 0x28 };
static const uint8_t kat_cbc_ct[16] = { 0xf5, 0x8c, 0x4c, 0x04, 0xd6, 0xe5, 0xf1, 0xba,
                                        0x77, 0x9e, 0xab, 0xfb, 0x5f, 0x7b, 0xfb, 0xd6 };

static int kat_primitives(void)
{
    void *h = NULL;
    signal_buffer *mac = NULL, *ct = NULL, *cbc = NULL;
    static const char data[] = "what do ya want for nothing?";
    int ok = p_hmac_init(&h, (const uint8_t *)"Jefe", 4, NULL) == 0 &&
             p_hmac_update(h, (const uint8_t *)data, sizeof data - 1, NULL) == 0 &&
             p_hmac_final(h, &mac, NULL) == 0 && signal_buffer_len(mac) == 32 &&
             sodium_memcmp(signal_buffer_data(mac), kat_hmac, 32) == 0;
    p_hmac_cleanup(h, NULL);
    ok = ok && p_encrypt(&ct, SG_CIPHER_AES_CTR_NOPADDING, kat_aes_key, 32, kat_ctr_iv, 16, kat_aes_pt, 16, NULL) == 0 &&
         signal_buffer_len(ct) == 16 && memcmp(signal_buffer_data(ct), kat_ctr_ct, 16) == 0;
    ok = ok && p_encrypt(&cbc, SG_CIPHER_AES_CBC_PKCS5, kat_aes_key, 32, kat_cbc_iv, 16, kat_aes_pt, 16, NULL) == 0 &&
         signal_buffer_len(cbc) == 32 && memcmp(signal_buffer_data(cbc), kat_cbc_ct, 16) == 0;
    signal_buffer_free(mac);
    signal_buffer_free(ct);
    signal_buffer_free(cbc);
    return ok;
}

static hush_err selftest_result = HUSH_ERR_SELFTEST;
static pthread_once_t selftest_once = PTHREAD_ONCE_INIT;

static hush_err run_selftest(void)
{
    hush_err r = HUSH_ERR_SELFTEST;
    signal_context *sg = NULL;
    ec_public_key *a = NULL, *b = NULL;
    fingerprint_generator *gen = NULL;
    fingerprint *fp = NULL;
    signal_buffer *ct = NULL, *pt = NULL;

    if (signal_context_create(&sg, NULL) != 0 || hsdk_provider_install(sg) != 0)
        goto out;
    if (curve_decode_point(&a, kat_alice, sizeof kat_alice, sg) != 0 ||
        curve_decode_point(&b, kat_bob, sizeof kat_bob, sg) != 0)
        goto out;
    if (fingerprint_generator_create(&gen, HUSH_SAFETY_ITERATIONS, 1, sg) != 0)
        goto out;
    if (fingerprint_generator_create_for(gen, "+14152222222", a, "+14153333333", b, &fp) != 0)
        goto out;
    const char *text = displayable_fingerprint_text(fingerprint_get_displayable(fp));
    if (!text || strcmp(text, kat_display) != 0)
        goto out;

    uint8_t key[32], iv[16], msg[37];
    for (size_t i = 0; i < sizeof key; i++) key[i] = (uint8_t)i;
    for (size_t i = 0; i < sizeof iv; i++) iv[i] = (uint8_t)(0xa0 + i);
    for (size_t i = 0; i < sizeof msg; i++) msg[i] = (uint8_t)(3 * i);
    if (p_encrypt(&ct, SG_CIPHER_AES_CBC_PKCS5, key, 32, iv, 16, msg, sizeof msg, NULL) != 0 ||
        signal_buffer_len(ct) != 48)
        goto out;
    if (p_decrypt(&pt, SG_CIPHER_AES_CBC_PKCS5, key, 32, iv, 16, signal_buffer_data(ct), 48, NULL) != 0 ||
        signal_buffer_len(pt) != sizeof msg || memcmp(signal_buffer_data(pt), msg, sizeof msg) != 0)
        goto out;
    signal_buffer_free(pt);
    pt = NULL;
    signal_buffer_data(ct)[47] ^= 0x01; /* corrupt the padding block: must fail */
    if (p_decrypt(&pt, SG_CIPHER_AES_CBC_PKCS5, key, 32, iv, 16, signal_buffer_data(ct), 48, NULL) == 0)
        goto out;
    if (ERR_peek_error() != 0) /* the failed decrypt left nothing behind */
        goto out;
    if (!kat_primitives())
        goto out;
    r = HUSH_OK;
out:
    signal_buffer_free(ct);
    signal_buffer_free(pt);
    SIGNAL_UNREF(fp);
    fingerprint_generator_free(gen);
    SIGNAL_UNREF(a);
    SIGNAL_UNREF(b);
    signal_context_destroy(sg);
    return r;
}

static void selftest_init(void)
{
    if (sodium_init() < 0)
        return;
    selftest_result = run_selftest();
}

hush_err hsdk_selftest(void)
{
    pthread_once(&selftest_once, selftest_init);
    return selftest_result;
}
