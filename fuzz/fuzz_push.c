/*
 * fuzz_push.c - what a device hands the relay for push wake-ups, and what a push carries: the
 * first byte picks the mode. 0: the rest is a Frame; a PushRegisterRequest in it goes through the
 * relay's endpoint check under each policy (https only or http too, private addresses refused or
 * allowed). 1: the rest is an endpoint URL (as text) with a valid key. 2: the rest is a Web Push
 * body, decrypted with a fixed user agent key (the RFC 8291 reader the tests use). Invariants: an
 * accepted endpoint is at most 1000 bytes, https unless http is allowed, never a literal private
 * address or localhost name unless allowed; a decrypted body is shorter than its input.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "fuzz.h"
#include "hush.pb-c.h"
#include "webpush.h"

static uint8_t g_pub[WEBPUSH_P256_PUBLIC], g_priv[32], g_auth[WEBPUSH_AUTH_BYTES];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    /* RFC 8291, Appendix A: the user agent's keys */
    if (webpush_b64url_decode("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
                              g_pub, sizeof g_pub) != WEBPUSH_P256_PUBLIC ||
        webpush_b64url_decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94", g_priv, sizeof g_priv) != 32 ||
        webpush_b64url_decode("BTBZMqHH6r4Tts7J_aSIgg", g_auth, sizeof g_auth) != WEBPUSH_AUTH_BYTES)
        abort();
    return 0;
}

/* The literal host of an accepted origin ("scheme://host[:port]"), brackets stripped. */
static void origin_host(const char *origin, char *out, size_t cap)
{
    const char *h = strstr(origin, "://");
    h = h ? h + 3 : origin;
    size_t n;
    if (*h == '[') {
        h++;
        n = strcspn(h, "]");
    } else {
        n = strcspn(h, ":");
    }
    snprintf(out, cap, "%.*s", (int)n, h);
}

static int literal_private(const char *host)
{
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    v4.sin_family = AF_INET;
    v6.sin6_family = AF_INET6;
    if (inet_pton(AF_INET, host, &v4.sin_addr) == 1)
        return webpush_address_private((struct sockaddr *)&v4);
    if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1)
        return webpush_address_private((struct sockaddr *)&v6);
    char h[256];
    snprintf(h, sizeof h, "%s", host);
    size_t n = strlen(h);
    if (n > 1 && h[n - 1] == '.')
        h[--n] = 0;
    host = h;
    return !strcasecmp(host, "localhost") || (n > 10 && !strcasecmp(host + n - 10, ".localhost"));
}

static void check_endpoint(const char *url, const uint8_t *p256dh, size_t plen, size_t alen)
{
    for (int http = 0; http < 2; http++) {
        for (int priv = 0; priv < 2; priv++) {
            char host[256], origin[300];
            const char *why = NULL;
            int r = webpush_endpoint_check(url, http, priv, p256dh, plen, alen, host, sizeof host, origin, sizeof origin,
                                           &why);
            if (r != 0) {
                if (!why)
                    abort(); /* a refusal always says why */
                continue;
            }
            if (strlen(url) > WEBPUSH_MAX_ENDPOINT || plen != WEBPUSH_P256_PUBLIC || alen != WEBPUSH_AUTH_BYTES || !host[0])
                abort();
            if (!http && strncmp(origin, "https://", 8))
                abort();
            char lit[256];
            origin_host(origin, lit, sizeof lit);
            if (!priv && literal_private(lit))
                abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    uint8_t mode = data[0] % 3;
    data++;
    size--;
    if (mode == 0) {
        Hush__Frame *f = hush__frame__unpack(NULL, size, data);
        if (!f)
            return 0;
        if (f->msg_case == HUSH__FRAME__MSG_PUSH_REGISTER && f->push_register->endpoint)
            check_endpoint(f->push_register->endpoint, f->push_register->p256dh.data, f->push_register->p256dh.len,
                           f->push_register->auth.len);
        hush__frame__free_unpacked(f, NULL);
    } else if (mode == 1) {
        char url[1200];
        size_t n = size < sizeof url - 1 ? size : sizeof url - 1;
        memcpy(url, data, n);
        url[n] = 0;
        check_endpoint(url, g_pub, sizeof g_pub, sizeof g_auth);
    } else {
        uint8_t *out = malloc(size ? size : 1);
        size_t n = 0;
        if (!out)
            return 0;
        if (webpush_decrypt(g_priv, g_pub, g_auth, data, size, out, &n) == 0 && n >= size)
            abort();
        free(out);
    }
    return 0;
}
