/*
 * webpush.c - Web Push message encryption (RFC 8291 / RFC 8188 aes128gcm) and VAPID (RFC 8292)
 * with OpenSSL 3: ECDH and ECDSA on P-256, HKDF-SHA-256 (EVP_KDF), AES-128-GCM (EVP); and which
 * addresses a push may not go to. See webpush.h; the format is in docs/PROTOCOL.md ("Push
 * wake-ups").
 */
#include "webpush.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <sodium.h>

struct webpush_key {
    EVP_PKEY *pkey;
    uint8_t pub[WEBPUSH_P256_PUBLIC];
};

void webpush_b64url(const uint8_t *in, size_t len, char *out, size_t outcap)
{
    if (outcap < sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_URLSAFE_NO_PADDING)) {
        if (outcap)
            out[0] = 0;
        return;
    }
    sodium_bin2base64(out, outcap, in, len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

long webpush_b64url_decode(const char *in, uint8_t *out, size_t outcap)
{
    size_t n = 0;
    if (sodium_base642bin(out, outcap, in, strlen(in), NULL, &n, NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
        return -1;
    return (long)n;
}

/* A P-256 public key from its uncompressed point (NULL: not a point on the curve). */
static EVP_PKEY *public_from_point(const uint8_t *pub, size_t len)
{
    if (len != WEBPUSH_P256_PUBLIC || pub[0] != 0x04)
        return NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *pk = NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"prime256v1", 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pub, len),
        OSSL_PARAM_END,
    };
    if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 || EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pk = NULL;
    EVP_PKEY_CTX_free(ctx);
    if (pk) {
        /* fromdata decodes the point; the check makes sure it is on the curve and not infinity */
        EVP_PKEY_CTX *chk = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
        int ok = chk && EVP_PKEY_public_check(chk) == 1;
        EVP_PKEY_CTX_free(chk);
        if (!ok) {
            EVP_PKEY_free(pk);
            pk = NULL;
        }
    }
    return pk;
}

/* A P-256 key pair from its private scalar (32 bytes) and public point. */
static EVP_PKEY *keypair_from(const uint8_t priv[32], const uint8_t pub[WEBPUSH_P256_PUBLIC])
{
    BIGNUM *d = BN_bin2bn(priv, 32, NULL);
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (d && b && ctx && OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_PRIV_KEY, d) &&
        OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, pub, WEBPUSH_P256_PUBLIC) &&
        (params = OSSL_PARAM_BLD_to_param(b)) != NULL && EVP_PKEY_fromdata_init(ctx) > 0 &&
        EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_KEYPAIR, params) <= 0)
        pk = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(b);
    BN_clear_free(d);
    return pk;
}

/* The public key of a P-256 key pair as an uncompressed point. */
static int point_of(EVP_PKEY *pk, uint8_t out[WEBPUSH_P256_PUBLIC])
{
    size_t n = 0;
    if (EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, out, WEBPUSH_P256_PUBLIC, &n) != 1 ||
        n != WEBPUSH_P256_PUBLIC || out[0] != 0x04)
        return -1;
    return 0;
}

/* ECDH on P-256: the x coordinate of the shared point. */
static int ecdh(EVP_PKEY *mine, EVP_PKEY *peer, uint8_t out[32])
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, mine, NULL);
    size_t n = 32;
    int ok = ctx && EVP_PKEY_derive_init(ctx) > 0 && EVP_PKEY_derive_set_peer(ctx, peer) > 0 &&
             EVP_PKEY_derive(ctx, out, &n) > 0 && n == 32;
    EVP_PKEY_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* HKDF-SHA-256 (RFC 5869), extract and expand. */
static int hkdf(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len, const uint8_t *info,
                size_t info_len, uint8_t *out, size_t out_len)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    EVP_KDF_free(kdf);
    if (!kctx)
        return -1;
    OSSL_PARAM params[] = {
        OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikm_len),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, info_len),
        OSSL_PARAM_END,
    };
    int ok = EVP_KDF_derive(kctx, out, out_len, params) > 0;
    EVP_KDF_CTX_free(kctx);
    return ok ? 0 : -1;
}

/* RFC 8291 section 3.4: the content encryption key and nonce of one message. */
static int derive(const uint8_t shared[32], const uint8_t auth[WEBPUSH_AUTH_BYTES],
                  const uint8_t ua_public[WEBPUSH_P256_PUBLIC], const uint8_t as_public[WEBPUSH_P256_PUBLIC],
                  const uint8_t salt[WEBPUSH_SALT_BYTES], uint8_t cek[16], uint8_t nonce[12])
{
    static const char key_label[] = "WebPush: info"; /* followed by a zero byte */
    uint8_t info[sizeof key_label + 2 * WEBPUSH_P256_PUBLIC];
    memcpy(info, key_label, sizeof key_label); /* with its terminating zero */
    memcpy(info + sizeof key_label, ua_public, WEBPUSH_P256_PUBLIC);
    memcpy(info + sizeof key_label + WEBPUSH_P256_PUBLIC, as_public, WEBPUSH_P256_PUBLIC);
    uint8_t ikm[32];
    static const char cek_info[] = "Content-Encoding: aes128gcm";
    static const char nonce_info[] = "Content-Encoding: nonce";
    int r = hkdf(auth, WEBPUSH_AUTH_BYTES, shared, 32, info, sizeof info, ikm, sizeof ikm);
    if (!r)
        r = hkdf(salt, WEBPUSH_SALT_BYTES, ikm, sizeof ikm, (const uint8_t *)cek_info, sizeof cek_info, cek, 16);
    if (!r)
        r = hkdf(salt, WEBPUSH_SALT_BYTES, ikm, sizeof ikm, (const uint8_t *)nonce_info, sizeof nonce_info, nonce, 12);
    sodium_memzero(ikm, sizeof ikm);
    return r;
}

int webpush_valid_public(const uint8_t *pub, size_t len)
{
    EVP_PKEY *pk = public_from_point(pub, len);
    EVP_PKEY_free(pk);
    return pk != NULL;
}

int webpush_encrypt(const uint8_t ua_public[WEBPUSH_P256_PUBLIC], const uint8_t auth[WEBPUSH_AUTH_BYTES],
                    const uint8_t *pt, size_t len, const uint8_t *as_private, const uint8_t *salt_in, uint8_t *out,
                    size_t *out_len)
{
    if (len > WEBPUSH_MAX_PLAINTEXT)
        return -1;
    EVP_PKEY *peer = public_from_point(ua_public, WEBPUSH_P256_PUBLIC);
    if (!peer)
        return -1;
    EVP_PKEY *as = NULL;
    uint8_t as_public[WEBPUSH_P256_PUBLIC];
    if (as_private) {
        /* a fixed key (test vectors): its point is d * G */
        BIGNUM *d = BN_bin2bn(as_private, 32, NULL);
        EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
        EC_POINT *p = g ? EC_POINT_new(g) : NULL;
        int ok = d && p && EC_POINT_mul(g, p, d, NULL, NULL, NULL) &&
                 EC_POINT_point2oct(g, p, POINT_CONVERSION_UNCOMPRESSED, as_public, sizeof as_public, NULL) ==
                     sizeof as_public;
        EC_POINT_free(p);
        EC_GROUP_free(g);
        BN_clear_free(d);
        if (ok)
            as = keypair_from(as_private, as_public);
    } else {
        as = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        if (as && point_of(as, as_public) != 0) {
            EVP_PKEY_free(as);
            as = NULL;
        }
    }
    uint8_t shared[32], cek[16], nonce[12], salt[WEBPUSH_SALT_BYTES];
    int r = as ? ecdh(as, peer, shared) : -1;
    EVP_PKEY_free(as);
    EVP_PKEY_free(peer);
    if (r)
        return -1;
    if (salt_in)
        memcpy(salt, salt_in, sizeof salt);
    else
        randombytes_buf(salt, sizeof salt);
    r = derive(shared, auth, ua_public, as_public, salt, cek, nonce);
    sodium_memzero(shared, sizeof shared);
    /* header: salt, record size (big-endian), key id length, key id (the sender's public key) */
    uint8_t *o = out;
    memcpy(o, salt, sizeof salt);
    o += sizeof salt;
    uint32_t rs = WEBPUSH_RECORD_SIZE;
    *o++ = (uint8_t)(rs >> 24);
    *o++ = (uint8_t)(rs >> 16);
    *o++ = (uint8_t)(rs >> 8);
    *o++ = (uint8_t)rs;
    *o++ = WEBPUSH_P256_PUBLIC;
    memcpy(o, as_public, WEBPUSH_P256_PUBLIC);
    o += WEBPUSH_P256_PUBLIC;
    EVP_CIPHER_CTX *c = r ? NULL : EVP_CIPHER_CTX_new();
    int n1 = 0, n2 = 0, n3 = 0;
    static const uint8_t last = 0x02; /* the delimiter of the last (only) record, no padding */
    int ok = c && EVP_EncryptInit_ex(c, EVP_aes_128_gcm(), NULL, cek, nonce) == 1 &&
             EVP_EncryptUpdate(c, o, &n1, pt, (int)len) == 1 && EVP_EncryptUpdate(c, o + n1, &n2, &last, 1) == 1 &&
             EVP_EncryptFinal_ex(c, o + n1 + n2, &n3) == 1 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, WEBPUSH_TAG_BYTES, o + n1 + n2 + n3) == 1;
    EVP_CIPHER_CTX_free(c);
    sodium_memzero(cek, sizeof cek);
    sodium_memzero(nonce, sizeof nonce);
    if (!ok)
        return -1;
    *out_len = WEBPUSH_HEADER_BYTES + (size_t)(n1 + n2 + n3) + WEBPUSH_TAG_BYTES;
    return 0;
}

int webpush_decrypt(const uint8_t ua_private[32], const uint8_t ua_public[WEBPUSH_P256_PUBLIC],
                    const uint8_t auth[WEBPUSH_AUTH_BYTES], const uint8_t *body, size_t len, uint8_t *out,
                    size_t *out_len)
{
    if (len < WEBPUSH_HEADER_BYTES + 1 + WEBPUSH_TAG_BYTES || body[20] != WEBPUSH_P256_PUBLIC)
        return -1;
    uint32_t rs = (uint32_t)body[16] << 24 | (uint32_t)body[17] << 16 | (uint32_t)body[18] << 8 | body[19];
    size_t clen = len - WEBPUSH_HEADER_BYTES;
    if (rs < 18 || clen > rs) /* one record only */
        return -1;
    EVP_PKEY *as = public_from_point(body + 21, WEBPUSH_P256_PUBLIC);
    EVP_PKEY *ua = as ? keypair_from(ua_private, ua_public) : NULL;
    uint8_t shared[32], cek[16], nonce[12];
    int r = ua ? ecdh(ua, as, shared) : -1;
    EVP_PKEY_free(as);
    EVP_PKEY_free(ua);
    if (r)
        return -1;
    r = derive(shared, auth, ua_public, body + 21, body, cek, nonce);
    sodium_memzero(shared, sizeof shared);
    const uint8_t *ct = body + WEBPUSH_HEADER_BYTES;
    size_t ctlen = clen - WEBPUSH_TAG_BYTES;
    EVP_CIPHER_CTX *c = r ? NULL : EVP_CIPHER_CTX_new();
    int n1 = 0, n2 = 0;
    int ok = c && EVP_DecryptInit_ex(c, EVP_aes_128_gcm(), NULL, cek, nonce) == 1 &&
             EVP_DecryptUpdate(c, out, &n1, ct, (int)ctlen) == 1 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, WEBPUSH_TAG_BYTES, (void *)(ct + ctlen)) == 1 &&
             EVP_DecryptFinal_ex(c, out + n1, &n2) == 1;
    EVP_CIPHER_CTX_free(c);
    sodium_memzero(cek, sizeof cek);
    sodium_memzero(nonce, sizeof nonce);
    if (!ok)
        return -1;
    /* strip the padding: zeros, then the last record's delimiter 0x02 */
    size_t n = (size_t)(n1 + n2);
    while (n > 0 && out[n - 1] == 0)
        n--;
    if (n == 0 || out[n - 1] != 0x02)
        return -1;
    *out_len = n - 1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* addresses */

/* a (host order) is loopback, private, shared, link-local, multicast or reserved */
static int v4_private(uint32_t a)
{
    return (a >> 24) == 0 || (a >> 24) == 10 || (a >> 24) == 127 || (a & 0xffc00000u) == 0x64400000u /* 100.64/10 */ ||
           (a & 0xffff0000u) == 0xa9fe0000u /* 169.254/16 */ || (a & 0xfff00000u) == 0xac100000u /* 172.16/12 */ ||
           (a & 0xffff0000u) == 0xc0a80000u /* 192.168/16 */ || (a & 0xffffff00u) == 0xc0000000u /* 192.0.0/24 */ ||
           (a & 0xfffe0000u) == 0xc6120000u /* 198.18/15 */ || (a >> 28) >= 0xe /* multicast, reserved */;
}

int webpush_address_private(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in v4;
        memcpy(&v4, sa, sizeof v4);
        return v4_private(ntohl(v4.sin_addr.s_addr));
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 v6;
        memcpy(&v6, sa, sizeof v6);
        const uint8_t *b = v6.sin6_addr.s6_addr;
        static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        static const uint8_t zero[15] = { 0 };
        if (!memcmp(b, mapped, 12)) /* ::ffff:a.b.c.d is a.b.c.d */
            return v4_private((uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 | b[15]);
        return !memcmp(b, zero, 15) /* :: and ::1 */ || (b[0] & 0xfe) == 0xfc /* fc00::/7 */ ||
               (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) /* fe80::/10 */ || b[0] == 0xff /* multicast */;
    }
    return 1; /* anything else is no Internet address */
}

/* ------------------------------------------------------------------------------------------ */
/* endpoints */

int webpush_endpoint_check(const char *url, int allow_http, int allow_private, const uint8_t *p256dh, size_t plen,
                           size_t alen, char *host, size_t hostcap, char *origin, size_t origincap, const char **why)
{
    *why = NULL;
    size_t ul = strlen(url);
    if (ul == 0 || ul > WEBPUSH_MAX_ENDPOINT) {
        *why = "the endpoint must be 1..1000 bytes";
        return -1;
    }
    if (plen != WEBPUSH_P256_PUBLIC || !webpush_valid_public(p256dh, plen)) {
        *why = "p256dh must be an uncompressed P-256 point (65 bytes)";
        return -1;
    }
    if (alen != WEBPUSH_AUTH_BYTES) {
        *why = "auth must be 16 bytes";
        return -1;
    }
    CURLU *u = curl_url();
    char *scheme = NULL, *h = NULL, *port = NULL, *user = NULL;
    int r = -1;
    if (!u || curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK) {
        *why = "the endpoint is not a URL";
        goto out;
    }
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    curl_url_get(u, CURLUPART_HOST, &h, 0);
    curl_url_get(u, CURLUPART_PORT, &port, CURLU_NO_DEFAULT_PORT);
    curl_url_get(u, CURLUPART_USER, &user, 0);
    if (!scheme || !h || !*h) {
        *why = "the endpoint has no host";
        goto out;
    }
    if (strcmp(scheme, "https") && !(allow_http && !strcmp(scheme, "http"))) {
        *why = allow_http ? "the endpoint must be http:// or https://" : "the endpoint must be https://";
        goto out;
    }
    if (user) {
        *why = "the endpoint must not carry credentials";
        goto out;
    }
    /* a literal address is checked now; a name when it is resolved, at each push */
    char lit[256];
    snprintf(lit, sizeof lit, "%s", h);
    size_t ll = strlen(lit);
    if (lit[0] == '[' && ll > 2 && lit[ll - 1] == ']') {
        memmove(lit, lit + 1, ll - 2);
        lit[ll - 2] = 0;
    }
    ll = strlen(lit);
    if (ll > 1 && lit[ll - 1] == '.') /* "localhost." is localhost */
        lit[--ll] = 0;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    v4.sin_family = AF_INET;
    v6.sin6_family = AF_INET6;
    int priv = 0;
    if (inet_pton(AF_INET, lit, &v4.sin_addr) == 1)
        priv = webpush_address_private((struct sockaddr *)&v4);
    else if (inet_pton(AF_INET6, lit, &v6.sin6_addr) == 1)
        priv = webpush_address_private((struct sockaddr *)&v6);
    else if (!strcasecmp(lit, "localhost") || (ll > 10 && !strcasecmp(lit + ll - 10, ".localhost")))
        priv = 1;
    if (priv && !allow_private) {
        *why = "the endpoint is a loopback or private address (not allowed on this relay)";
        goto out;
    }
    if (host && snprintf(host, hostcap, "%s", h) >= (int)hostcap) {
        *why = "the endpoint's host is too long";
        goto out;
    }
    if (origin && snprintf(origin, origincap, "%s://%s%s%s", scheme, h, port ? ":" : "", port ? port : "") >= (int)origincap) {
        *why = "the endpoint's host is too long";
        goto out;
    }
    r = 0;
out:
    curl_free(scheme);
    curl_free(h);
    curl_free(port);
    curl_free(user);
    curl_url_cleanup(u);
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* VAPID */

webpush_key *webpush_key_load_or_create(const char *path, char *err, size_t errlen)
{
    webpush_key *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "no memory");
        return NULL;
    }
    FILE *f = fopen(path, "r");
    if (f) {
        k->pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
        if (!k->pkey || EVP_PKEY_get_base_id(k->pkey) != EVP_PKEY_EC || EVP_PKEY_get_bits(k->pkey) != 256 ||
            point_of(k->pkey, k->pub) != 0) {
            snprintf(err, errlen, "%s: not a P-256 private key in PEM", path);
            webpush_key_free(k);
            return NULL;
        }
        return k;
    }
    if (errno != ENOENT) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        free(k);
        return NULL;
    }
    k->pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!k->pkey || point_of(k->pkey, k->pub) != 0) {
        snprintf(err, errlen, "could not make a P-256 key");
        webpush_key_free(k);
        return NULL;
    }
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    FILE *w = fd >= 0 ? fdopen(fd, "w") : NULL;
    int ok = w && PEM_write_PrivateKey(w, k->pkey, NULL, NULL, 0, NULL, NULL) == 1;
    if (w) {
        ok = ok && fflush(w) == 0 && fsync(fileno(w)) == 0;
        ok = fclose(w) == 0 && ok;
    } else if (fd >= 0) {
        close(fd);
    }
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: cannot write the push key: %s", path, strerror(errno));
        unlink(tmp);
        webpush_key_free(k);
        return NULL;
    }
    return k;
}

void webpush_key_free(webpush_key *k)
{
    if (!k)
        return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

void webpush_key_public(const webpush_key *k, uint8_t out[WEBPUSH_P256_PUBLIC])
{
    memcpy(out, k->pub, WEBPUSH_P256_PUBLIC);
}

int webpush_vapid_header(const webpush_key *k, const char *audience, uint64_t exp, const char *sub, char *out,
                         size_t outcap)
{
    char claims[1400];
    /* audience is an origin taken from a parsed URL: scheme, host and port, nothing to escape */
    int cn = sub && *sub ? snprintf(claims, sizeof claims, "{\"aud\":\"%s\",\"exp\":%llu,\"sub\":\"%s\"}", audience,
                                    (unsigned long long)exp, sub)
                         : snprintf(claims, sizeof claims, "{\"aud\":\"%s\",\"exp\":%llu}", audience, (unsigned long long)exp);
    if (cn < 0 || (size_t)cn >= sizeof claims)
        return -1;
    static const char header[] = "{\"typ\":\"JWT\",\"alg\":\"ES256\"}";
    char input[2048];
    webpush_b64url((const uint8_t *)header, sizeof header - 1, input, sizeof input);
    size_t hl = strlen(input);
    input[hl++] = '.';
    webpush_b64url((const uint8_t *)claims, (size_t)cn, input + hl, sizeof input - hl);
    size_t il = strlen(input);
    if (il == hl)
        return -1;
    /* ES256: ECDSA over SHA-256, the signature as r || s (32 bytes each), not DER */
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    uint8_t der[80];
    size_t dl = sizeof der;
    int ok = md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k->pkey) == 1 &&
             EVP_DigestSign(md, der, &dl, (const uint8_t *)input, il) == 1;
    EVP_MD_CTX_free(md);
    if (!ok)
        return -1;
    const uint8_t *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)dl);
    uint8_t rs[64];
    ok = sig && BN_bn2binpad(ECDSA_SIG_get0_r(sig), rs, 32) == 32 && BN_bn2binpad(ECDSA_SIG_get0_s(sig), rs + 32, 32) == 32;
    ECDSA_SIG_free(sig);
    if (!ok)
        return -1;
    char s64[90], k64[90];
    webpush_b64url(rs, sizeof rs, s64, sizeof s64);
    webpush_b64url(k->pub, sizeof k->pub, k64, sizeof k64);
    int n = snprintf(out, outcap, "vapid t=%s.%s, k=%s", input, s64, k64);
    return n < 0 || (size_t)n >= outcap ? -1 : 0;
}
