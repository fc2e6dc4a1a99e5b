/*
 * test_push.c - push wake-ups end to end: the real hushd on loopback, real SDK clients, and a
 * real HTTP push service started by the test (tests/fixtures/push_receiver.py) that logs every
 * POST; the test decrypts each one with the device's own key (RFC 8291) and checks the relay's
 * VAPID signature (RFC 8292). Also the RFC 8291 test vector, the registration checks, the address
 * policy, and that a push service that hangs or refuses delays nothing else.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sodium.h>
#include <sqlite3.h>

#include "relay_util.h"
#include "util.h"
#include "webpush.h"

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------------------------------ */
/* the push service */

struct receiver {
    pid_t pid;
    int port;
    char log[300];
};

/* cert and key (may be NULL): HTTPS with that certificate */
static void receiver_start_tls(struct receiver *rv, const char *name, const char *cert, const char *key)
{
    const char *fx = getenv("HUSH_TEST_FIXTURES");
    if (!fx) {
        fail_msg("HUSH_TEST_FIXTURES is not set (make test sets it)");
        return;
    }
    char script[512], portfile[320];
    snprintf(script, sizeof script, "%s/push_receiver.py", fx);
    memset(rv, 0, sizeof *rv);
    snprintf(rv->log, sizeof rv->log, "%s", tpath(name));
    snprintf(portfile, sizeof portfile, "%s.port", rv->log);
    unlink(portfile);
    rv->pid = fork();
    assert_true(rv->pid >= 0);
    if (rv->pid == 0) {
        /* its output to a file: a receiver left behind by a failed test must not hold the
         * caller's pipes open */
        char out[340];
        snprintf(out, sizeof out, "%s.out", rv->log);
        FILE *o = fopen(out, "w");
        if (o) {
            dup2(fileno(o), 1);
            dup2(fileno(o), 2);
        }
        if (cert)
            execlp("python3", "python3", script, rv->log, portfile, cert, key, (char *)NULL);
        else
            execlp("python3", "python3", script, rv->log, portfile, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 300; i++) {
        FILE *f = fopen(portfile, "r");
        if (f) {
            int ok = fscanf(f, "%d", &rv->port) == 1;
            fclose(f);
            if (ok)
                return;
        }
        sleep_ms(50);
    }
    fail_msg("the push receiver did not start");
}

static void receiver_start(struct receiver *rv, const char *name) { receiver_start_tls(rv, name, NULL, NULL); }

static void receiver_stop(struct receiver *rv)
{
    if (rv->pid > 0) {
        kill(rv->pid, SIGKILL);
        waitpid(rv->pid, NULL, 0);
        rv->pid = 0;
    }
}

struct post {
    int n;
    double t;
    char ttl[32], urgency[32], topic[64], encoding[32];
    char auth[1400];
    uint8_t body[512];
    size_t body_len;
};

/* The POSTs the receiver logged for `path`, oldest first (at most max). */
static int posts_for(const struct receiver *rv, const char *path, struct post *out, int max)
{
    FILE *f = fopen(rv->log, "r");
    if (!f)
        return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *fields[9];
        int nf = 0;
        for (char *save = NULL, *t = strtok_r(line, "\t", &save); t && nf < 9; t = strtok_r(NULL, "\t", &save))
            fields[nf++] = t;
        if (nf != 9 || strcmp(fields[0], path) || n >= max)
            continue;
        struct post *p = &out[n++];
        memset(p, 0, sizeof *p);
        p->n = atoi(fields[1]);
        p->t = atof(fields[2]);
        snprintf(p->ttl, sizeof p->ttl, "%s", fields[3]);
        snprintf(p->urgency, sizeof p->urgency, "%s", fields[4]);
        snprintf(p->topic, sizeof p->topic, "%s", fields[5]);
        snprintf(p->encoding, sizeof p->encoding, "%s", fields[6]);
        snprintf(p->auth, sizeof p->auth, "%s", fields[7]);
        size_t bl = 0;
        if (strcmp(fields[8], "-") &&
            sodium_hex2bin(p->body, sizeof p->body, fields[8], strlen(fields[8]), NULL, &bl, NULL) == 0)
            p->body_len = bl;
    }
    fclose(f);
    return n;
}

static int wait_posts(const struct receiver *rv, const char *path, int want, int ms)
{
    struct post *p = calloc(64, sizeof *p);
    int n = 0;
    for (int i = 0; i <= ms / 50; i++) {
        if ((n = posts_for(rv, path, p, 64)) >= want)
            break;
        sleep_ms(50);
    }
    free(p);
    return n;
}

/* ------------------------------------------------------------------------------------------ */
/* a user agent's keys */

struct ua {
    uint8_t priv[32], pub[WEBPUSH_P256_PUBLIC], auth[WEBPUSH_AUTH_BYTES];
};

static void ua_new(struct ua *u)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(k);
    BIGNUM *d = NULL;
    size_t n = 0;
    assert_int_equal(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_PRIV_KEY, &d), 1);
    assert_int_equal(BN_bn2binpad(d, u->priv, 32), 32);
    assert_int_equal(EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, u->pub, sizeof u->pub, &n), 1);
    assert_int_equal(n, sizeof u->pub);
    BN_clear_free(d);
    EVP_PKEY_free(k);
    randombytes_buf(u->auth, sizeof u->auth);
}

/* The body decrypts with the device's key to the constant wake-up. */
static void assert_wakeup(const struct ua *u, const struct post *p)
{
    uint8_t pt[512];
    size_t n = 0;
    assert_true(p->body_len > 0);
    assert_int_equal(webpush_decrypt(u->priv, u->pub, u->auth, p->body, p->body_len, pt, &n), 0);
    assert_int_equal(n, 7);
    assert_memory_equal(pt, "{\"v\":1}", 7);
    assert_string_equal(p->encoding, "aes128gcm");
    assert_string_equal(p->topic, "hush-wake");
}

/* Checks "vapid t=<JWT>, k=<key>": an ES256 signature by the relay's key (its PEM file), for
 * audience `aud`, valid for at most a day. */
static void assert_vapid(const char *hdr, const char *key_pem, const char *aud)
{
    char t[1400], k[200];
    assert_int_equal(sscanf(hdr, "vapid t=%1399[^,], k=%199s", t, k), 2);
    uint8_t kb[80];
    assert_int_equal(webpush_b64url_decode(k, kb, sizeof kb), WEBPUSH_P256_PUBLIC);
    /* k is the relay's key */
    FILE *f = fopen(key_pem, "r");
    assert_non_null(f);
    EVP_PKEY *relay = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(relay);
    uint8_t rp[WEBPUSH_P256_PUBLIC];
    size_t n = 0;
    assert_int_equal(EVP_PKEY_get_octet_string_param(relay, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, rp, sizeof rp, &n), 1);
    assert_memory_equal(rp, kb, sizeof rp);
    /* the claims */
    char *dot1 = strchr(t, '.'), *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    assert_non_null(dot2);
    char claims_b64[1000];
    snprintf(claims_b64, sizeof claims_b64, "%.*s", (int)(dot2 - dot1 - 1), dot1 + 1);
    char claims[800];
    long cl = webpush_b64url_decode(claims_b64, (uint8_t *)claims, sizeof claims - 1);
    assert_true(cl > 0);
    claims[cl] = 0;
    char want[400];
    snprintf(want, sizeof want, "\"aud\":\"%s\"", aud);
    assert_non_null(strstr(claims, want));
    const char *e = strstr(claims, "\"exp\":");
    assert_non_null(e);
    long long exp = atoll(e + 6);
    assert_true(exp > (long long)time(NULL) && exp <= (long long)time(NULL) + 86400);
    /* the signature: r || s over "header.claims" */
    uint8_t rs[80];
    assert_int_equal(webpush_b64url_decode(dot2 + 1, rs, sizeof rs), 64);
    ECDSA_SIG *sig = ECDSA_SIG_new();
    ECDSA_SIG_set0(sig, BN_bin2bn(rs, 32, NULL), BN_bin2bn(rs + 32, 32, NULL));
    uint8_t der[100], *dp = der;
    int dl = i2d_ECDSA_SIG(sig, &dp);
    ECDSA_SIG_free(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, relay), 1);
    assert_int_equal(EVP_DigestVerify(md, der, (size_t)dl, (const uint8_t *)t, (size_t)(dot2 - t)), 1);
    /* and a changed claim does not verify */
    t[0] ^= 1;
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, relay), 1);
    assert_int_not_equal(EVP_DigestVerify(md, der, (size_t)dl, (const uint8_t *)t, (size_t)(dot2 - t)), 1);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(relay);
}

/* ------------------------------------------------------------------------------------------ */
/* SDK users */

struct user {
    hush_client *c;
    char name[33];
    char url[64];
    pthread_mutex_t mu;
    int nmsgs;
    int errors;
    hush_err last_code;
    char last_error[256];
};

static void cb_message(void *ctx, const hush_message *m)
{
    (void)m;
    struct user *u = ctx;
    pthread_mutex_lock(&u->mu);
    u->nmsgs++;
    pthread_mutex_unlock(&u->mu);
}

static void cb_error(void *ctx, hush_err e, const char *detail)
{
    struct user *u = ctx;
    if (getenv("HUSH_TEST_VERBOSE"))
        fprintf(stderr, "%s: cb_error: %s: %s\n", u->name, hush_strerror(e), detail);
    pthread_mutex_lock(&u->mu);
    u->errors++;
    u->last_code = e;
    snprintf(u->last_error, sizeof u->last_error, "%s", detail ? detail : "");
    pthread_mutex_unlock(&u->mu);
}

static hush_callbacks callbacks(struct user *u)
{
    hush_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.ctx = u;
    cb.on_message = cb_message;
    cb.on_error = cb_error;
    return cb;
}

static int msgs_of(struct user *u)
{
    pthread_mutex_lock(&u->mu);
    int n = u->nmsgs;
    pthread_mutex_unlock(&u->mu);
    return n;
}

static int wait_msgs(struct user *u, int want, int ms)
{
    for (int i = 0; i <= ms / 20 && msgs_of(u) < want; i++)
        sleep_ms(20);
    return msgs_of(u);
}

static void user_start(struct user *u)
{
    hush_callbacks cb = callbacks(u);
    hush_net_opts o = { u->url, NULL, NULL, 0 };
    assert_int_equal(hush_net_start(u->c, &o, &cb), HUSH_OK);
    hush_err e = hush_net_wait_online(u->c, 15000);
    if (e)
        fail_msg("%s: not online: %s", u->name, hush_strerror(e));
}

static struct user *user_new(const struct relay_proc *relay, const char *name)
{
    struct user *u = calloc(1, sizeof *u);
    pthread_mutex_init(&u->mu, NULL);
    snprintf(u->name, sizeof u->name, "%s", name);
    snprintf(u->url, sizeof u->url, "ws://127.0.0.1:%d", relay->port);
    u->c = open_client(name, 1, HUSH_DURABILITY_NORMAL);
    user_start(u);
    return u;
}

static void user_free(struct user *u)
{
    hush_client_close(u->c);
    free(u);
}

static void send_text(struct user *u, const char *to, const char *text)
{
    hush_err e = hush_send(u->c, to, (const uint8_t *)text, strlen(text), NULL);
    if (e)
        fail_msg("hush_send: %s", hush_strerror(e));
}

/* Rows of the relay's push_endpoints for (user, 1): live ones, or the ones marked gone. */
static long rows_where(const struct relay_proc *r, const char *user, int gone)
{
    sqlite3 *db = NULL;
    long n = -1;
    if (sqlite3_open_v2(r->db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_busy_timeout(db, 2000);
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, "SELECT count(*) FROM push_endpoints WHERE username = ?1 AND gone = ?2", -1, &st, NULL) ==
            SQLITE_OK) {
            sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int(st, 2, gone);
            if (sqlite3_step(st) == SQLITE_ROW)
                n = sqlite3_column_int64(st, 0);
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return n;
}

static long endpoint_rows(const struct relay_proc *r, const char *user) { return rows_where(r, user, 0); }

/* Until `u` was told `want` through on_error, or ms passed. */
static int wait_error(struct user *u, hush_err want, int ms)
{
    for (int i = 0; i <= ms / 50; i++) {
        pthread_mutex_lock(&u->mu);
        int got = u->errors > 0 && u->last_code == want;
        pthread_mutex_unlock(&u->mu);
        if (got)
            return 1;
        sleep_ms(50);
    }
    return 0;
}

static int wait_rows(const struct relay_proc *r, const char *user, long want, int ms)
{
    for (int i = 0; i <= ms / 50; i++) {
        if (endpoint_rows(r, user) == want)
            return 1;
        sleep_ms(50);
    }
    return endpoint_rows(r, user) == want;
}

/* A user whose device registered `path` on the receiver, then went offline. */
static struct user *sleeper(const struct relay_proc *relay, const struct receiver *rv, const char *name, const char *mode,
                            struct ua *ua)
{
    struct user *u = user_new(relay, name);
    ua_new(ua);
    char url[200];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/%s/%s", rv->port, mode, name);
    assert_int_equal(hush_push_register(u->c, url, ua->pub, sizeof ua->pub, ua->auth, sizeof ua->auth), HUSH_OK);
    assert_true(wait_rows(relay, name, 1, 10000));
    hush_net_stop(u->c);
    return u;
}

#define PUSH_CONFIG "push_allow_http = on\npush_allow_private = on\n"

/* ------------------------------------------------------------------------------------------ */

static void test_rfc8291_vector(void **state)
{
    (void)state;
    /* RFC 8291, Appendix A */
    uint8_t ua_pub[65], ua_priv[32], auth[16], as_priv[32], salt[16], body[300], out[300], pt[300];
    assert_int_equal(webpush_b64url_decode("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SR"
                                           "pkNtoIAiw4", ua_pub, sizeof ua_pub), 65);
    assert_int_equal(webpush_b64url_decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94", ua_priv, sizeof ua_priv), 32);
    assert_int_equal(webpush_b64url_decode("BTBZMqHH6r4Tts7J_aSIgg", auth, sizeof auth), 16);
    assert_int_equal(webpush_b64url_decode("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw", as_priv, sizeof as_priv), 32);
    assert_int_equal(webpush_b64url_decode("DGv6ra1nlYgDCS1FRnbzlw", salt, sizeof salt), 16);
    long bl = webpush_b64url_decode("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vC"
                                    "YLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXL"
                                    "WyouBWLVWGNWQexSgSxsj_Qulcy4a-fN", body, sizeof body);
    assert_true(bl > 0);
    static const char plain[] = "When I grow up, I want to be a watermelon";
    size_t n = 0;
    /* the sender's side, with the RFC's key and salt, gives the RFC's bytes */
    assert_int_equal(webpush_encrypt(ua_pub, auth, (const uint8_t *)plain, sizeof plain - 1, as_priv, salt, out, &n), 0);
    assert_int_equal(n, (size_t)bl);
    assert_memory_equal(out, body, n);
    /* the receiver's side reads the RFC's message */
    assert_int_equal(webpush_decrypt(ua_priv, ua_pub, auth, body, (size_t)bl, pt, &n), 0);
    assert_int_equal(n, sizeof plain - 1);
    assert_memory_equal(pt, plain, n);
    /* a changed byte anywhere fails, a wrong auth secret too */
    for (long i = 0; i < bl; i += 7) {
        body[i] ^= 0x40;
        assert_int_not_equal(webpush_decrypt(ua_priv, ua_pub, auth, body, (size_t)bl, pt, &n), 0);
        body[i] ^= 0x40;
    }
    auth[0] ^= 1;
    assert_int_not_equal(webpush_decrypt(ua_priv, ua_pub, auth, body, (size_t)bl, pt, &n), 0);
    auth[0] ^= 1;
    /* fresh keys: a different message each time, each one readable */
    uint8_t o2[300];
    size_t n2 = 0;
    assert_int_equal(webpush_encrypt(ua_pub, auth, (const uint8_t *)plain, sizeof plain - 1, NULL, NULL, out, &n), 0);
    assert_int_equal(webpush_encrypt(ua_pub, auth, (const uint8_t *)plain, sizeof plain - 1, NULL, NULL, o2, &n2), 0);
    assert_int_equal(n, n2);
    assert_memory_not_equal(out, o2, n);
    assert_int_equal(webpush_decrypt(ua_priv, ua_pub, auth, o2, n2, pt, &n), 0);
    /* a point not on the curve is refused */
    ua_pub[64] ^= 1;
    assert_false(webpush_valid_public(ua_pub, 65));
    assert_int_not_equal(webpush_encrypt(ua_pub, auth, (const uint8_t *)plain, 3, NULL, NULL, out, &n), 0);
}

static int is_private(const char *addr)
{
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    if (inet_pton(AF_INET, addr, &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        return webpush_address_private((struct sockaddr *)&v4);
    }
    assert_int_equal(inet_pton(AF_INET6, addr, &v6.sin6_addr), 1);
    v6.sin6_family = AF_INET6;
    return webpush_address_private((struct sockaddr *)&v6);
}

static void test_address_policy(void **state)
{
    (void)state;
    static const char *const priv[] = { "127.0.0.1", "127.8.9.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
                                        "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255",
                                        "::1", "::", "fd00::1", "fe80::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1" };
    static const char *const pub[] = { "1.1.1.1", "8.8.8.8", "172.15.255.255", "172.32.0.1", "192.169.0.1", "100.128.0.1",
                                       "2606:4700::1111", "::ffff:8.8.8.8" };
    for (size_t i = 0; i < sizeof priv / sizeof priv[0]; i++)
        if (!is_private(priv[i]))
            fail_msg("%s should be refused", priv[i]);
    for (size_t i = 0; i < sizeof pub / sizeof pub[0]; i++)
        if (is_private(pub[i]))
            fail_msg("%s should be allowed", pub[i]);
}

/* The relay's answer to a PushRegisterRequest. */
static int register_raw(struct tclient *c, const char *url, const uint8_t *p256dh, size_t plen, const uint8_t *auth,
                        size_t alen, char *msg, size_t msgcap)
{
    Hush__PushRegisterRequest pr = HUSH__PUSH_REGISTER_REQUEST__INIT;
    pr.endpoint = (char *)url;
    pr.p256dh.data = (uint8_t *)p256dh;
    pr.p256dh.len = plen;
    pr.auth.data = (uint8_t *)auth;
    pr.auth.len = alen;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_PUSH_REGISTER;
    f.push_register = &pr;
    Hush__Frame *r = tc_request(c, &f, 5000);
    assert_non_null(r);
    assert_int_equal(r->msg_case, HUSH__FRAME__MSG_RESULT);
    int code = r->result->code;
    if (msg)
        snprintf(msg, msgcap, "%s", r->result->message);
    hush__frame__free_unpacked(r, NULL);
    return code;
}

static void test_registration_checks(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "pushreg", NULL); /* defaults: https only, no private addresses */
    struct tclient *c = tc_new(&relay, "regina", 1);
    assert_int_equal(tc_register(c, NULL), HUSH__ERROR_CODE__OK);
    struct ua ua;
    ua_new(&ua);
    char msg[200];
    /* scheme, private addresses (literal or localhost), credentials, length */
    assert_int_equal(register_raw(c, "http://push.example.org/x", ua.pub, 65, ua.auth, 16, msg, sizeof msg),
                     HUSH__ERROR_CODE__BAD_REQUEST);
    assert_non_null(strstr(msg, "https"));
    static const char *const bad[] = { "https://127.0.0.1/x", "https://10.0.0.7:8443/x", "https://[::1]/x",
                                       "https://localhost/x", "https://LOCALHOST./x", "https://a.localhost/x", "https://user:pw@push.example.org/x",
                                       "ftp://push.example.org/x", "not a url", "https://" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (register_raw(c, bad[i], ua.pub, 65, ua.auth, 16, msg, sizeof msg) != HUSH__ERROR_CODE__BAD_REQUEST)
            fail_msg("%s was accepted", bad[i]);
    char big[1100];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    memcpy(big, "https://push.example.org/", 25);
    assert_int_equal(register_raw(c, big, ua.pub, 65, ua.auth, 16, NULL, 0), HUSH__ERROR_CODE__TOO_LARGE);
    /* keys */
    uint8_t off[65];
    memcpy(off, ua.pub, 65);
    off[64] ^= 1; /* not on the curve */
    assert_int_equal(register_raw(c, "https://push.example.org/x", off, 65, ua.auth, 16, NULL, 0), HUSH__ERROR_CODE__BAD_REQUEST);
    assert_int_equal(register_raw(c, "https://push.example.org/x", ua.pub, 33, ua.auth, 16, NULL, 0), HUSH__ERROR_CODE__BAD_REQUEST);
    assert_int_equal(register_raw(c, "https://push.example.org/x", ua.pub, 65, ua.auth, 15, NULL, 0), HUSH__ERROR_CODE__BAD_REQUEST);
    assert_int_equal(endpoint_rows(&relay, "regina"), 0);
    /* a good one is stored, replaced by the next, removed */
    assert_int_equal(register_raw(c, "https://push.example.org/up/abc", ua.pub, 65, ua.auth, 16, NULL, 0), HUSH__ERROR_CODE__OK);
    assert_int_equal(register_raw(c, "https://push.example.org/up/def", ua.pub, 65, ua.auth, 16, NULL, 0), HUSH__ERROR_CODE__OK);
    assert_int_equal(endpoint_rows(&relay, "regina"), 1);
    Hush__PushRemoveRequest rm = HUSH__PUSH_REMOVE_REQUEST__INIT;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_PUSH_REMOVE;
    f.push_remove = &rm;
    Hush__Frame *r = tc_request(c, &f, 5000);
    assert_non_null(r);
    assert_int_equal(r->result->code, HUSH__ERROR_CODE__OK);
    hush__frame__free_unpacked(r, NULL);
    assert_int_equal(endpoint_rows(&relay, "regina"), 0);
    /* before a login: refused like any request */
    struct tclient *anon = tc_new(&relay, "nobody", 1);
    assert_int_not_equal(register_raw(anon, "https://push.example.org/x", ua.pub, 65, ua.auth, 16, NULL, 0),
                         HUSH__ERROR_CODE__OK);
    tc_free(anon);
    tc_free(c);
    relay_stop(&relay, SIGTERM);

    /* push off: the relay says so, in Welcome too */
    relay_start(&relay, "pushoff", "push = off\n");
    c = tc_new(&relay, "regina", 1);
    assert_int_equal(tc_register(c, NULL), HUSH__ERROR_CODE__OK);
    assert_int_equal(register_raw(c, "https://push.example.org/x", ua.pub, 65, ua.auth, 16, msg, sizeof msg),
                     HUSH__ERROR_CODE__BAD_REQUEST);
    assert_non_null(strstr(msg, "off"));
    tc_free(c);
    relay_stop(&relay, SIGTERM);
}

static void test_offline_device_woken_once(void **state)
{
    (void)state;
    struct receiver rv;
    receiver_start(&rv, "once.log");
    struct relay_proc relay;
    relay_start(&relay, "pushonce", PUSH_CONFIG "push_ttl = 3600\n");
    struct user *al = user_new(&relay, "ann");
    struct ua ua;
    struct user *bo = sleeper(&relay, &rv, "bob", "ok", &ua);
    /* a burst to the sleeping device: one wake-up */
    for (int i = 0; i < 5; i++)
        send_text(al, "bob", "hello while you sleep");
    assert_int_equal(hush_net_flush(al->c, 15000), HUSH_OK);
    assert_int_equal(wait_posts(&rv, "/ok/bob", 1, 10000), 1);
    sleep_ms(1500); /* more than push_min_interval: nothing else comes */
    struct post p[8];
    assert_int_equal(posts_for(&rv, "/ok/bob", p, 8), 1);
    assert_wakeup(&ua, &p[0]);
    assert_string_equal(p[0].ttl, "3600");
    assert_string_equal(p[0].urgency, "high");
    char key[400], aud[100];
    snprintf(key, sizeof key, "%s.push-key.pem", relay.db);
    snprintf(aud, sizeof aud, "http://127.0.0.1:%d", rv.port);
    assert_vapid(p[0].auth, key, aud);
    assert_true(relay_metric(&relay, "hush_push_sent_total") >= 1);

    /* the woken device drains and stops */
    hush_callbacks cb = callbacks(bo);
    hush_net_opts o = { bo->url, NULL, NULL, 0 };
    assert_int_equal(hush_net_wake(bo->c, &o, &cb, 15000), HUSH_OK);
    assert_int_equal(msgs_of(bo), 5);
    /* typing (ephemeral) never wakes it */
    assert_int_equal(hush_typing(al->c, "bob", 1), HUSH_OK);
    sleep_ms(1200);
    assert_int_equal(posts_for(&rv, "/ok/bob", p, 8), 1);
    /* it connected: the next message wakes it again */
    send_text(al, "bob", "again");
    assert_int_equal(wait_posts(&rv, "/ok/bob", 2, 10000), 2);
    assert_int_equal(posts_for(&rv, "/ok/bob", p, 8), 2);
    assert_wakeup(&ua, &p[1]);
    /* and the keys in each wake-up are fresh */
    assert_memory_not_equal(p[0].body, p[1].body, 16);

    /* online: no wake-up at all */
    user_start(bo);
    for (int i = 0; i < 3; i++)
        send_text(al, "bob", "you are here");
    assert_int_equal(wait_msgs(bo, 9, 15000), 9);
    sleep_ms(1200);
    assert_int_equal(posts_for(&rv, "/ok/bob", p, 8), 2);

    /* unregistered: gone at the relay too, and nothing more is pushed */
    assert_int_equal(hush_push_unregister(bo->c), HUSH_OK);
    assert_true(wait_rows(&relay, "bob", 0, 10000));
    hush_net_stop(bo->c);
    send_text(al, "bob", "nobody to wake");
    assert_int_equal(hush_net_flush(al->c, 15000), HUSH_OK);
    sleep_ms(1200);
    assert_int_equal(posts_for(&rv, "/ok/bob", p, 8), 2);
    user_free(al);
    user_free(bo);
    relay_stop(&relay, SIGTERM);
    receiver_stop(&rv);
}

static void test_nonurgent_coalesced(void **state)
{
    (void)state;
    struct receiver rv;
    receiver_start(&rv, "nonurgent.log");
    struct relay_proc relay;
    relay_start(&relay, "pushnu", PUSH_CONFIG "push_nonurgent_period = 3\n");
    struct user *bo = user_new(&relay, "dave");
    struct ua ua;
    struct user *al = sleeper(&relay, &rv, "cleo", "ok", &ua);
    /* alice's texts reach bob while she sleeps... */
    user_start(al);
    send_text(al, "dave", "one");
    send_text(al, "dave", "two");
    assert_int_equal(wait_msgs(bo, 2, 15000), 2);
    assert_int_equal(hush_net_flush(al->c, 15000), HUSH_OK);
    hush_net_stop(al->c);
    /* ...and his delivery receipts (automatic, non-urgent) wake her, at normal urgency */
    assert_int_equal(wait_posts(&rv, "/ok/cleo", 1, 10000), 1);
    struct post p[8];
    assert_int_equal(posts_for(&rv, "/ok/cleo", p, 8), 1);
    assert_string_equal(p[0].urgency, "normal");
    assert_wakeup(&ua, &p[0]);
    /* she connects (which clears the pending mark), sleeps again; a second non-urgent message in
     * the period waits for its end */
    user_start(al);
    hush_net_stop(al->c);
    hush_history_entry *h = NULL;
    size_t nh = 0;
    assert_int_equal(hush_history_list(bo->c, "cleo", 0, 10, &h, &nh), HUSH_OK);
    assert_true(nh >= 1);
    int64_t lid = h[0].local_id;
    hush_history_free(h, nh);
    assert_int_equal(hush_mark_read(bo->c, lid), HUSH_OK); /* a read receipt: non-urgent */
    assert_int_equal(hush_net_flush(bo->c, 15000), HUSH_OK);
    assert_int_equal(wait_posts(&rv, "/ok/cleo", 2, 10000), 2);
    assert_int_equal(posts_for(&rv, "/ok/cleo", p, 8), 2);
    assert_string_equal(p[1].urgency, "normal");
    assert_true(p[1].t - p[0].t >= 2.9);
    /* an urgent message is not held by the period */
    user_start(al);
    hush_net_stop(al->c);
    double t0 = now_s();
    send_text(bo, "cleo", "urgent");
    assert_int_equal(wait_posts(&rv, "/ok/cleo", 3, 10000), 3);
    assert_int_equal(posts_for(&rv, "/ok/cleo", p, 8), 3);
    assert_string_equal(p[2].urgency, "high");
    assert_true(p[2].t - t0 < 2.5); /* not pushed back to the end of the non-urgent period */
    user_free(al);
    user_free(bo);
    relay_stop(&relay, SIGTERM);
    receiver_stop(&rv);
}

/* What `hushd user show NAME` prints (the operator's view), into out. */
static void user_show(const struct relay_proc *relay, const char *name, char *out, size_t cap)
{
    char cmd[800];
    snprintf(cmd, sizeof cmd, "%s user --db %s show %s 2>&1", getenv("HUSHD"), relay->db, name);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = 0;
    assert_int_equal(pclose(f), 0);
}

static void test_gone_and_backoff(void **state)
{
    (void)state;
    struct receiver rv;
    receiver_start(&rv, "gone.log");
    struct relay_proc relay;
    relay_start(&relay, "pushgone", PUSH_CONFIG);
    struct user *al = user_new(&relay, "gus");
    struct ua ua_c, ua_d;
    struct user *carl = sleeper(&relay, &rv, "carl", "gone", &ua_c);
    struct user *dan = sleeper(&relay, &rv, "dan", "busy", &ua_d);
    /* 410: the endpoint is marked gone, and never tried again */
    send_text(al, "carl", "hi carl");
    assert_int_equal(wait_posts(&rv, "/gone/carl", 1, 10000), 1);
    assert_true(wait_rows(&relay, "carl", 0, 10000));
    assert_int_equal(rows_where(&relay, "carl", 1), 1);
    assert_true(relay_metric(&relay, "hush_push_endpoints_dropped_total") >= 1);
    /* the operator sees it (the host only, never the rest of the URL) */
    char shown[1000];
    user_show(&relay, "carl", shown, sizeof shown);
    assert_non_null(strstr(shown, "push 127.0.0.1 (gone)"));
    assert_null(strstr(shown, "/gone/carl"));
    user_show(&relay, "dan", shown, sizeof shown);
    assert_non_null(strstr(shown, "push 127.0.0.1\n"));
    user_show(&relay, "gus", shown, sizeof shown);
    assert_non_null(strstr(shown, "push none"));
    /* carl's app comes back: its libhush sends the endpoint again after the login, the relay says
     * it is gone, and libhush forgets it and tells the app (which asks its distributor anew) */
    user_start(carl);
    assert_true(wait_error(carl, HUSH_ERR_PUSH_GONE, 10000));
    hush_net_stop(carl->c);
    assert_int_equal(endpoint_rows(&relay, "carl"), 0);
    send_text(al, "carl", "still there?");
    assert_int_equal(hush_net_flush(al->c, 15000), HUSH_OK);
    sleep_ms(1500);
    struct post p[8];
    assert_int_equal(posts_for(&rv, "/gone/carl", p, 8), 1);
    /* the next login sends no endpoint: nothing more to report */
    pthread_mutex_lock(&carl->mu);
    carl->errors = 0;
    pthread_mutex_unlock(&carl->mu);
    user_start(carl);
    assert_int_equal(hush_net_wait_drained(carl->c, 15000), HUSH_OK);
    sleep_ms(300);
    pthread_mutex_lock(&carl->mu);
    assert_int_equal(carl->errors, 0);
    pthread_mutex_unlock(&carl->mu);
    /* the distributor's new endpoint: woken again */
    struct ua ua_c2;
    ua_new(&ua_c2);
    char url[200];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/ok/carl", rv.port);
    assert_int_equal(hush_push_register(carl->c, url, ua_c2.pub, sizeof ua_c2.pub, ua_c2.auth, sizeof ua_c2.auth), HUSH_OK);
    assert_true(wait_rows(&relay, "carl", 1, 10000));
    assert_int_equal(rows_where(&relay, "carl", 1), 0);
    hush_net_stop(carl->c);
    send_text(al, "carl", "new endpoint");
    assert_int_equal(wait_posts(&rv, "/ok/carl", 1, 10000), 1);
    assert_int_equal(posts_for(&rv, "/ok/carl", p, 8), 1);
    assert_wakeup(&ua_c2, &p[0]);
    /* 429 with Retry-After: 2 - tried again after two seconds, then accepted */
    send_text(al, "dan", "hi dan");
    assert_int_equal(wait_posts(&rv, "/busy/dan", 2, 15000), 2);
    assert_int_equal(posts_for(&rv, "/busy/dan", p, 8), 2);
    assert_true(p[1].t - p[0].t >= 1.9);
    assert_wakeup(&ua_d, &p[1]);
    assert_int_equal(endpoint_rows(&relay, "dan"), 1);
    assert_true(relay_metric(&relay, "hush_push_retries_total") >= 1);
    sleep_ms(1200);
    assert_int_equal(posts_for(&rv, "/busy/dan", p, 8), 2);
    user_free(al);
    user_free(carl);
    user_free(dan);
    relay_stop(&relay, SIGTERM);
    receiver_stop(&rv);
}

static void test_hanging_push_service(void **state)
{
    (void)state;
    struct receiver rv;
    receiver_start(&rv, "hang.log");
    struct relay_proc relay;
    relay_start(&relay, "pushhang", PUSH_CONFIG "push_timeout = 60\n");
    struct user *al = user_new(&relay, "hal"), *bo = user_new(&relay, "ida");
    struct ua ua_e, ua_f;
    struct user *eve = sleeper(&relay, &rv, "eve", "hang", &ua_e);
    struct user *fay = sleeper(&relay, &rv, "fay", "ok", &ua_f);
    /* eve's push service takes the request and never answers */
    send_text(al, "eve", "hello eve");
    assert_int_equal(wait_posts(&rv, "/hang/eve", 1, 10000), 1);
    /* meanwhile: online traffic flows, acknowledged and delivered... */
    for (int i = 0; i < 200; i++)
        send_text(al, "ida", "while eve's push hangs");
    assert_int_equal(hush_net_flush(al->c, 30000), HUSH_OK);
    assert_int_equal(wait_msgs(bo, 200, 30000), 200);
    /* ...and another device's wake-up goes out */
    send_text(al, "fay", "hello fay");
    assert_int_equal(wait_posts(&rv, "/ok/fay", 1, 10000), 1);
    struct post p[4];
    assert_int_equal(posts_for(&rv, "/ok/fay", p, 4), 1);
    assert_wakeup(&ua_f, &p[0]);
    /* the relay stops cleanly with the request still hanging */
    user_free(al);
    user_free(bo);
    user_free(eve);
    user_free(fay);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
    receiver_stop(&rv);
}

/* A device that leaves with mail it was handed but did not acknowledge is woken: early_delivery_ms
 * 0 (the copy is in the mailbox when the device leaves) and 2000 (it is delivered before it is
 * written, and written after the device left). */
static void left_unacked(const char *name, const char *sender, const char *rcpt, const char *cfg)
{
    struct receiver rv;
    char log[64];
    snprintf(log, sizeof log, "%s.log", name);
    receiver_start(&rv, log);
    struct relay_proc relay;
    relay_start(&relay, name, cfg);
    struct user *al = user_new(&relay, sender);
    struct tclient *lea = tc_new(&relay, rcpt, 1);
    assert_int_equal(tc_register(lea, NULL), HUSH__ERROR_CODE__OK);
    struct ua ua;
    ua_new(&ua);
    char url[200];
    char path[64];
    snprintf(path, sizeof path, "/ok/%s", rcpt);
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", rv.port, path);
    assert_int_equal(register_raw(lea, url, ua.pub, sizeof ua.pub, ua.auth, sizeof ua.auth, NULL, 0),
                     HUSH__ERROR_CODE__OK);
    send_text(al, rcpt, "read this");
    Hush__Frame *d = tc_next_push(lea, HUSH__FRAME__MSG_DELIVER, 10000);
    assert_non_null(d);
    hush__frame__free_unpacked(d, NULL);
    /* it was connected: nothing pushed; it leaves without acknowledging */
    struct post p[4];
    assert_int_equal(posts_for(&rv, path, p, 4), 0);
    tc_disconnect(lea);
    assert_int_equal(wait_posts(&rv, path, 1, 10000), 1);
    assert_int_equal(posts_for(&rv, path, p, 4), 1);
    assert_wakeup(&ua, &p[0]);
    assert_string_equal(p[0].urgency, "high"); /* a text waits */
    assert_int_equal(hush_net_flush(al->c, 15000), HUSH_OK);
    /* it comes back, takes the mail and acknowledges it, and leaves: nothing waits, no wake-up */
    assert_int_equal(tc_reconnect(lea), 0);
    assert_int_equal(tc_login(lea), HUSH__ERROR_CODE__OK);
    d = tc_next_push(lea, HUSH__FRAME__MSG_DELIVER, 10000);
    assert_non_null(d);
    uint64_t seq = d->deliver->seq;
    hush__frame__free_unpacked(d, NULL);
    assert_int_equal(tc_ack(lea, &seq, 1), HUSH__ERROR_CODE__OK);
    tc_disconnect(lea);
    sleep_ms(1500);
    assert_int_equal(posts_for(&rv, path, p, 4), 1);
    tc_free(lea);
    user_free(al);
    relay_stop(&relay, SIGTERM);
    receiver_stop(&rv);
}

static void test_left_with_mail_unacked(void **state)
{
    (void)state;
    left_unacked("pushleft0", "lou", "lea", PUSH_CONFIG "early_delivery_ms = 0\n");
    left_unacked("pushleft2", "lui", "lia", PUSH_CONFIG "early_delivery_ms = 2000\n");
}

/* A host name (not a literal address, so registration takes it) whose every address is loopback
 * or private here: the machine's own name, or Debian's ip6-localhost. NULL when none is. */
static const char *private_name(char *buf, size_t cap)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    const char *cands[] = { host, "ip6-localhost", "ip6-loopback" };
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        if (!cands[i][0] || !strcasecmp(cands[i], "localhost"))
            continue;
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        if (getaddrinfo(cands[i], NULL, &hints, &res) != 0 || !res)
            continue;
        int all = 1;
        for (struct addrinfo *a = res; a; a = a->ai_next)
            all &= webpush_address_private(a->ai_addr);
        freeaddrinfo(res);
        if (all) {
            snprintf(buf, cap, "%s", cands[i]);
            return buf;
        }
    }
    return NULL;
}

/* The registration check sees a name; the connection sees its address: a name that resolves to a
 * private address is refused when the relay connects, and nothing reaches it. */
static void test_private_address_refused_at_connect(void **state)
{
    (void)state;
    char name[256];
    if (!private_name(name, sizeof name)) {
        fprintf(stderr, "test_private_address_refused_at_connect: no host name here resolves to a private "
                        "address only: skipped\n");
        return;
    }
    struct receiver rv;
    receiver_start(&rv, "conn.log");
    struct relay_proc relay;
    relay_start(&relay, "pushconn", "push_allow_http = on\n"); /* private addresses refused */
    struct user *al = user_new(&relay, "nia"), *bo = user_new(&relay, "noa");
    struct ua ua;
    ua_new(&ua);
    char url[400];
    snprintf(url, sizeof url, "http://%s:%d/ok/noa", name, rv.port);
    assert_int_equal(hush_push_register(bo->c, url, ua.pub, sizeof ua.pub, ua.auth, sizeof ua.auth), HUSH_OK);
    assert_true(wait_rows(&relay, "noa", 1, 10000)); /* a name: taken at registration */
    hush_net_stop(bo->c);
    send_text(al, "noa", "knock knock");
    assert_int_equal(hush_net_flush(al->c, 15000), HUSH_OK);
    int refused = 0;
    for (int i = 0; i < 200 && refused < 1; i++) {
        refused = (int)relay_metric(&relay, "hush_push_failed_total{class=\"refused\"}");
        if (refused < 1)
            sleep_ms(50);
    }
    assert_int_equal(refused, 1);
    struct post p[2];
    assert_int_equal(posts_for(&rv, "/ok/noa", p, 2), 0);
    assert_true(wait_rows(&relay, "noa", 0, 10000)); /* never tried again */
    user_free(al);
    user_free(bo);
    relay_stop(&relay, SIGTERM);
    receiver_stop(&rv);
}

/* Over HTTPS, as every real push service: the certificate is checked (against push_ca_file here;
 * the system's CAs do not know this one, and the wake-up does not go). */
static void test_https_push_service(void **state)
{
    (void)state;
    char cert[300], key[300];
    snprintf(cert, sizeof cert, "%s", tpath("push-cert.pem"));
    snprintf(key, sizeof key, "%s", tpath("push-key.pem"));
    make_test_cert(cert, key);
    struct receiver rv;
    receiver_start_tls(&rv, "tls.log", cert, key);
    char cfg[800];
    snprintf(cfg, sizeof cfg, "push_allow_private = on\npush_ca_file = %s\n", cert); /* https only */
    struct relay_proc relay;
    relay_start(&relay, "pushtls", cfg);
    struct user *al = user_new(&relay, "tom");
    struct user *bo = user_new(&relay, "tia");
    struct ua ua;
    ua_new(&ua);
    char url[200];
    snprintf(url, sizeof url, "https://localhost:%d/ok/tia", rv.port);
    assert_int_equal(hush_push_register(bo->c, url, ua.pub, sizeof ua.pub, ua.auth, sizeof ua.auth), HUSH_OK);
    assert_true(wait_rows(&relay, "tia", 1, 10000));
    hush_net_stop(bo->c);
    send_text(al, "tia", "over tls");
    assert_int_equal(wait_posts(&rv, "/ok/tia", 1, 10000), 1);
    struct post p[2];
    assert_int_equal(posts_for(&rv, "/ok/tia", p, 2), 1);
    assert_wakeup(&ua, &p[0]);
    user_free(al);
    user_free(bo);
    relay_stop(&relay, SIGTERM);

    /* the same service, a relay that trusts only the system's CAs: refused, nothing posted */
    relay_start(&relay, "pushtls2", "push_allow_private = on\npush_max_attempts = 1\n");
    al = user_new(&relay, "tam");
    bo = user_new(&relay, "tea");
    ua_new(&ua);
    snprintf(url, sizeof url, "https://localhost:%d/ok/tea", rv.port);
    assert_int_equal(hush_push_register(bo->c, url, ua.pub, sizeof ua.pub, ua.auth, sizeof ua.auth), HUSH_OK);
    assert_true(wait_rows(&relay, "tea", 1, 10000));
    hush_net_stop(bo->c);
    send_text(al, "tea", "not over an unknown certificate");
    long failed = 0;
    for (int i = 0; i < 200 && failed < 1; i++) {
        failed = relay_metric(&relay, "hush_push_failed_total{class=\"network\"}");
        if (failed < 1)
            sleep_ms(50);
    }
    assert_int_equal(failed, 1);
    assert_int_equal(posts_for(&rv, "/ok/tea", p, 2), 0);
    assert_int_equal(relay_metric(&relay, "hush_push_sent_total"), 0);
    user_free(al);
    user_free(bo);
    relay_stop(&relay, SIGTERM);
    receiver_stop(&rv);
}

/* The per-host bucket spreads a burst of wake-ups to one push service; the hourly cap holds a
 * device's wake-ups back once it had its share. */
static void test_rate_limits(void **state)
{
    (void)state;
    struct receiver rv;
    receiver_start(&rv, "rate.log");
    struct relay_proc relay;
    relay_start(&relay, "pushrate",
                PUSH_CONFIG "push_host_burst = 2\npush_host_per_s = 1\npush_min_interval_ms = 0\npush_max_per_hour = 2\n");
    struct user *al = user_new(&relay, "rae");
    struct ua ua[5];
    struct user *sl[5];
    static const char *const names[5] = { "rb0", "rb1", "rb2", "rb3", "rb4" };
    for (int i = 0; i < 5; i++)
        sl[i] = sleeper(&relay, &rv, names[i], "ok", &ua[i]);
    for (int i = 0; i < 5; i++)
        send_text(al, names[i], "burst");
    assert_int_equal(hush_net_flush(al->c, 15000), HUSH_OK);
    /* a burst of 2, then one a second: the fifth goes about 3 s after the first */
    double t[5];
    for (int i = 0; i < 5; i++) {
        char path[32];
        snprintf(path, sizeof path, "/ok/%s", names[i]);
        assert_int_equal(wait_posts(&rv, path, 1, 15000), 1);
        struct post p[2];
        assert_int_equal(posts_for(&rv, path, p, 2), 1);
        assert_wakeup(&ua[i], &p[0]);
        t[i] = p[0].t;
    }
    double lo = t[0], hi = t[0];
    for (int i = 1; i < 5; i++) {
        lo = t[i] < lo ? t[i] : lo;
        hi = t[i] > hi ? t[i] : hi;
    }
    assert_true(hi - lo >= 2.5);
    assert_true(relay_metric(&relay, "hush_push_host_limited_total") >= 1);
    /* rb0 comes back and sleeps again twice: its second wake-up of the hour goes, the third waits */
    for (int k = 2; k <= 3; k++) {
        user_start(sl[0]);
        assert_int_equal(hush_net_wait_drained(sl[0]->c, 15000), HUSH_OK);
        hush_net_stop(sl[0]->c);
        send_text(al, "rb0", "again");
        assert_int_equal(hush_net_flush(al->c, 15000), HUSH_OK);
        if (k == 2)
            assert_int_equal(wait_posts(&rv, "/ok/rb0", 2, 15000), 2);
    }
    sleep_ms(3000); /* more than the host bucket needs */
    struct post p[4];
    assert_int_equal(posts_for(&rv, "/ok/rb0", p, 4), 2);
    for (int i = 0; i < 5; i++)
        user_free(sl[i]);
    user_free(al);
    relay_stop(&relay, SIGTERM);
    receiver_stop(&rv);
}

/* A wake-up in flight when the relay is killed is not lost: at start the relay wakes every device
 * that has an endpoint and mail waiting (and no other). */
static void test_wake_survives_crash(void **state)
{
    (void)state;
    struct receiver rv;
    receiver_start(&rv, "crash.log");
    struct relay_proc relay;
    relay_start(&relay, "pushcrash", PUSH_CONFIG "push_timeout = 60\n");
    struct user *al = user_new(&relay, "cal");
    struct ua ua_z, ua_q;
    struct user *zoe = sleeper(&relay, &rv, "zoe", "hang", &ua_z); /* her push service takes it and hangs */
    struct user *quin = sleeper(&relay, &rv, "quin", "ok", &ua_q); /* nothing waits for him */
    send_text(al, "zoe", "are you there");
    assert_int_equal(hush_net_flush(al->c, 15000), HUSH_OK);
    assert_int_equal(wait_posts(&rv, "/hang/zoe", 1, 10000), 1);
    relay_stop(&relay, SIGKILL);
    relay_restart(&relay);
    assert_int_equal(wait_posts(&rv, "/hang/zoe", 2, 10000), 2);
    struct post p[4];
    assert_int_equal(posts_for(&rv, "/hang/zoe", p, 4), 2);
    assert_wakeup(&ua_z, &p[1]);
    assert_string_equal(p[1].urgency, "high");
    sleep_ms(1000);
    assert_int_equal(posts_for(&rv, "/ok/quin", p, 4), 0);
    user_free(al);
    user_free(zoe);
    user_free(quin);
    relay_stop(&relay, SIGKILL); /* a request still hangs */
    receiver_stop(&rv);
}

static void test_endpoint_survives_restart_and_relogin(void **state)
{
    (void)state;
    /* the SDK sends its endpoint again after each login: a relay that lost it gets it back */
    struct receiver rv;
    receiver_start(&rv, "restart.log");
    struct relay_proc relay;
    relay_start(&relay, "pushrestart", PUSH_CONFIG);
    struct user *al = user_new(&relay, "jon");
    struct ua ua;
    struct user *bo = sleeper(&relay, &rv, "kim", "ok", &ua);
    /* the relay is killed and restarts: the endpoint is on its disk */
    relay_stop(&relay, SIGKILL);
    relay_restart(&relay);
    assert_int_equal(endpoint_rows(&relay, "kim"), 1);
    send_text(al, "kim", "after the restart");
    assert_int_equal(wait_posts(&rv, "/ok/kim", 1, 20000), 1);
    /* the operator deletes it by hand: the next login brings it back */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(relay.db, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, "DELETE FROM push_endpoints", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    user_start(bo);
    assert_true(wait_rows(&relay, "kim", 1, 10000));
    user_free(al);
    user_free(bo);
    relay_stop(&relay, SIGTERM);
    receiver_stop(&rv);
}

static void test_sdk_refusal_reported(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "pushsdk", NULL); /* https only, no private addresses */
    struct user *u = user_new(&relay, "ursula");
    struct ua ua;
    ua_new(&ua);
    /* the SDK checks what it can itself */
    assert_int_equal(hush_push_register(u->c, "ftp://x/y", ua.pub, 65, ua.auth, 16), HUSH_ERR_INVALID_ARG);
    assert_int_equal(hush_push_register(u->c, "https://x/y", ua.pub, 64, ua.auth, 16), HUSH_ERR_INVALID_ARG);
    assert_int_equal(hush_push_register(u->c, "https://x/y", ua.pub, 65, ua.auth, 8), HUSH_ERR_INVALID_ARG);
    /* the relay's refusal reaches the app with its reason */
    assert_int_equal(hush_push_register(u->c, "https://127.0.0.1/up", ua.pub, 65, ua.auth, 16), HUSH_OK);
    for (int i = 0; i < 200; i++) {
        pthread_mutex_lock(&u->mu);
        int found = strstr(u->last_error, "push endpoint") != NULL;
        pthread_mutex_unlock(&u->mu);
        if (found)
            break;
        sleep_ms(50);
    }
    assert_non_null(strstr(u->last_error, "private"));
    assert_int_equal(endpoint_rows(&relay, "ursula"), 0);
    /* the secret is not in the SDK's database file in clear */
    hush_net_stop(u->c);
    char dbfile[64];
    snprintf(dbfile, sizeof dbfile, "%s.db", "ursula");
    assert_false(file_contains(tpath(dbfile), ua.auth, sizeof ua.auth));
    assert_false(file_contains(tpath(dbfile), "127.0.0.1/up", 12));
    /* the relay's VAPID key, for a distributor that asks for it: learned at login, kept offline */
    char vk[HUSH_PUSH_VAPID_KEY_LEN + 1];
    assert_int_equal(hush_push_vapid_key(u->c, vk, sizeof vk - 1), HUSH_ERR_INVALID_ARG);
    assert_int_equal(hush_push_vapid_key(u->c, vk, sizeof vk), HUSH_OK);
    assert_int_equal(strlen(vk), HUSH_PUSH_VAPID_KEY_LEN);
    uint8_t kb[80];
    assert_int_equal(webpush_b64url_decode(vk, kb, sizeof kb), WEBPUSH_P256_PUBLIC);
    char pem[400];
    snprintf(pem, sizeof pem, "%s.push-key.pem", relay.db);
    FILE *f = fopen(pem, "r");
    assert_non_null(f);
    EVP_PKEY *rk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(rk);
    uint8_t rp[WEBPUSH_P256_PUBLIC];
    size_t rn = 0;
    assert_int_equal(EVP_PKEY_get_octet_string_param(rk, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, rp, sizeof rp, &rn), 1);
    EVP_PKEY_free(rk);
    assert_memory_equal(rp, kb, sizeof rp);
    user_free(u);
    relay_stop(&relay, SIGTERM);
    /* never connected: not known; a relay with push off: none */
    hush_client *fresh = open_client("vera", 1, HUSH_DURABILITY_NORMAL);
    assert_int_equal(hush_push_vapid_key(fresh, vk, sizeof vk), HUSH_ERR_NOT_FOUND);
    hush_client_close(fresh);
    relay_start(&relay, "pushsdkoff", "push = off\n");
    u = user_new(&relay, "otto");
    assert_int_equal(hush_push_vapid_key(u->c, vk, sizeof vk), HUSH_ERR_NOT_FOUND);
    user_free(u);
    relay_stop(&relay, SIGTERM);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc8291_vector),
        cmocka_unit_test(test_address_policy),
        cmocka_unit_test(test_registration_checks),
        cmocka_unit_test(test_offline_device_woken_once),
        cmocka_unit_test(test_nonurgent_coalesced),
        cmocka_unit_test(test_gone_and_backoff),
        cmocka_unit_test(test_hanging_push_service),
        cmocka_unit_test(test_left_with_mail_unacked),
        cmocka_unit_test(test_private_address_refused_at_connect),
        cmocka_unit_test(test_https_push_service),
        cmocka_unit_test(test_rate_limits),
        cmocka_unit_test(test_wake_survives_crash),
        cmocka_unit_test(test_endpoint_survives_restart_and_relogin),
        cmocka_unit_test(test_sdk_refusal_reported),
    };
    if (getenv("HUSH_TEST_ONLY"))
        cmocka_set_test_filter(getenv("HUSH_TEST_ONLY"));
    return cmocka_run_group_tests_name("push", tests, NULL, NULL);
}
