/*
 * test_relay.c - the real hushd process on loopback, driven over real WebSockets by clients with
 * real libhush keys: accounts and authentication, the prekey directory, mailboxes, presence,
 * configuration, invites, graceful stop. Numbers in brackets refer to
 * the hostile cases listed in docs/AUDIT.md.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stddef.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>
#include <sqlite3.h>

#include "hush_wire.h"
#include "relay_util.h"
#include "util.h"

#define T 5000

static void msleep(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static uint8_t *encrypt_text(struct tclient *from, const char *to, const char *text, uint8_t mid[16], size_t *len)
{
    uint8_t *env = NULL;
    hush_err e = hush_encrypt(from->sdk, to, 1, (const uint8_t *)text, strlen(text), NULL, mid, &env, len);
    if (e)
        fail_msg("encrypt: %s", hush_strerror(e));
    return env;
}

/* Receives one Deliver, decrypts it with the SDK, checks the text, returns the seq. */
static uint64_t expect_text(struct tclient *to, const char *from, const char *text)
{
    Hush__Frame *d = tc_next_push(to, HUSH__FRAME__MSG_DELIVER, T);
    if (!d)
        fail_msg("%s: no delivery (expected \"%s\")", to->user, text);
    assert_string_equal(d->deliver->from_username, from);
    hush_message *m = NULL;
    hush_err e = hush_decrypt(to->sdk, from, 1, d->deliver->envelope.data, d->deliver->envelope.len, &m);
    if (e)
        fail_msg("%s: decrypt: %s", to->user, hush_strerror(e));
    assert_string_equal((char *)m->body, text);
    uint64_t seq = d->deliver->seq;
    hush_message_free(m);
    hush__frame__free_unpacked(d, NULL);
    return seq;
}

static void random_env(uint8_t *buf, size_t n, uint8_t mid[16])
{
    randombytes_buf(buf, n);
    randombytes_buf(mid, 16);
}

/* ------------------------------------------------------------------------------------------ */

static void test_config_and_cli(void **state)
{
    (void)state;
    const char *bin = getenv("HUSHD");
    char cmd[1024];
    FILE *f = fopen(tpath("good.conf"), "w");
    fprintf(f, "# a comment\nlisten = 127.0.0.1:9999\nregistration = invite\nquota_messages = 50 # inline\n"
               "max_envelope = 64k\ndb = \"/tmp/x.db\"\n");
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s --check-config %s > %s 2>&1", bin, tpath("good.conf"), tpath("good.out"));
    assert_int_equal(WEXITSTATUS(system(cmd)), 0);
    assert_true(file_contains(tpath("good.out"), "registration = invite", 21));
    assert_true(file_contains(tpath("good.out"), "quota_messages = 50", 19));
    assert_true(file_contains(tpath("good.out"), "max_envelope = 65536", 20));
    const char *bad[] = { "listen = nowhere\n", "bogus_key = 1\n", "quota_messages = -3\n", "workers = 1000\n",
                          "registration = maybe\n", "tls_cert = /x.pem\n", "max_frame = 5000\nmax_envelope = 4096\n",
                          "just some text\n",
                          /* size suffixes that overflow 64 bits must not wrap to a small value */
                          "quota_bytes = 17179869185g\n", "max_frame = 18014398509481985k\n",
                          "quota_bytes = 99999999999999999999\n" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        f = fopen(tpath("bad.conf"), "w");
        fputs(bad[i], f);
        fclose(f);
        snprintf(cmd, sizeof cmd, "%s --check-config %s > %s 2>&1", bin, tpath("bad.conf"), tpath("bad.out"));
        int st = system(cmd);
        if (WEXITSTATUS(st) != 1)
            fail_msg("config %s accepted", bad[i]);
        assert_true(file_contains(tpath("bad.out"), "hushd: ", 7));
    }
    /* a line number in the message */
    f = fopen(tpath("bad.conf"), "w");
    fputs("listen = 127.0.0.1:1\n\nnope = 2\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s --check-config %s > %s 2>&1", bin, tpath("bad.conf"), tpath("bad.out"));
    assert_int_equal(WEXITSTATUS(system(cmd)), 1);
    assert_true(file_contains(tpath("bad.out"), "bad.conf:3: unknown key 'nope'", 30));
    snprintf(cmd, sizeof cmd, "%s --help > %s 2>&1", bin, tpath("help.out"));
    assert_int_equal(WEXITSTATUS(system(cmd)), 0);
    assert_true(file_contains(tpath("help.out"), "--check-config", 14));
    /* flags override the file */
    snprintf(cmd, sizeof cmd, "%s --config %s --registration closed --print-config > %s 2>&1", bin, tpath("good.conf"),
             tpath("ov.out"));
    assert_int_equal(WEXITSTATUS(system(cmd)), 0);
    assert_true(file_contains(tpath("ov.out"), "registration = closed", 21));
}

/* [10] [11] [13] login by challenge-response; every failure looks the same */
static void test_authentication(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "auth", "auth_timeout = 2");
    struct tclient *a = tc_registered(&r, "alma", 1);
    uint8_t first_challenge[32];
    memcpy(first_challenge, a->challenge, 32);

    /* A second registration of the same name fails. */
    struct tclient *dup = tc_new(&r, "alma2", 1);
    hush_client_close(dup->sdk);
    uint8_t key[32] = { 7 };
    assert_int_equal(hush_client_open(tpath("alma-other.db"), key, NULL, &dup->sdk), HUSH_OK);
    assert_int_equal(hush_device_create(dup->sdk, "alma", 1), HUSH_OK);
    snprintf(dup->user, sizeof dup->user, "alma");
    int code = tc_register(dup, NULL);
    assert_int_equal(code, HUSH__ERROR_CODE__USERNAME_TAKEN);

    /* The same device registering again (its first answer was lost) is logged in; a user's first
     * device is device 1, later ones are linked */
    assert_int_equal(tc_reconnect(a), 0);
    assert_int_equal(tc_register(a, NULL), 0);
    struct tclient *d2 = tc_new(&r, "dana", 2);
    assert_int_equal(tc_register(d2, NULL), HUSH__ERROR_CODE__BAD_REQUEST);
    tc_free(d2);

    /* Login works on a new connection with a fresh challenge. */
    assert_int_equal(tc_reconnect(a), 0);
    assert_int_not_equal(memcmp(first_challenge, a->challenge, 32), 0);
    assert_int_equal(tc_login(a), 0);

    /* [10] Replay: a proof for another connection's challenge is refused. */
    struct tclient *e = tc_new(&r, "eve", 1);
    uint8_t sig[64];
    char origin[HWIRE_ORIGIN_MAX + 1];
    tc_proof(a, HWIRE_PURPOSE_LOGIN, NULL, origin, sig);
    Hush__LoginRequest l = HUSH__LOGIN_REQUEST__INIT;
    l.username = "alma";
    l.device_id = 1;
    l.signature.data = sig;
    l.signature.len = 64;
    l.origin = origin;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_LOGIN;
    f.login = &l;
    Hush__Frame *res = tc_request(e, &f, T);
    assert_non_null(res);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__AUTH_FAILED);
    char msg_replay[64];
    snprintf(msg_replay, sizeof msg_replay, "%s", res->result->message);
    hush__frame__free_unpacked(res, NULL);
    uint8_t *junk;
    size_t jl;
    assert_int_equal(wsc_recv(e->ws, &junk, &jl, T), -1); /* closed after a failure */

    /* [11] Someone else's device id / unknown user / wrong key: the same answer. */
    const char *users[] = { "alma", "nobody" };
    uint32_t devs[] = { 2, 1 };
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tc_reconnect(e), 0);
        tc_proof(e, HWIRE_PURPOSE_LOGIN, NULL, origin, sig);
        l.username = (char *)users[i];
        l.device_id = devs[i];
        res = tc_request(e, &f, T);
        assert_non_null(res);
        assert_int_equal(res->result->code, HUSH__ERROR_CODE__AUTH_FAILED);
        assert_string_equal(res->result->message, msg_replay);
        hush__frame__free_unpacked(res, NULL);
    }
    /* Requests before login are refused. */
    assert_int_equal(tc_reconnect(e), 0);
    Hush__Frame *fb = tc_fetch(e, "alma");
    assert_non_null(fb);
    assert_int_equal(fb->result->code, HUSH__ERROR_CODE__AUTH_REQUIRED);
    hush__frame__free_unpacked(fb, NULL);

    /* [13] Upgrade, hello, then silence: closed within the auth timeout (2 s). */
    assert_int_equal(tc_reconnect(e), 0);
    time_t t0 = time(NULL);
    assert_int_equal(wsc_recv(e->ws, &junk, &jl, 8000), -1);
    assert_true(time(NULL) - t0 <= 4);
    /* and one that never even says hello */
    struct wsc *raw = wsc_connect("127.0.0.1", r.port, 0, T);
    assert_non_null(raw);
    t0 = time(NULL);
    assert_int_equal(wsc_recv(raw, &junk, &jl, 8000), -1);
    assert_true(time(NULL) - t0 <= 4);
    wsc_close(raw);

    /* Unsupported protocol version. */
    raw = wsc_connect("127.0.0.1", r.port, 0, T);
    Hush__Hello h = HUSH__HELLO__INIT;
    h.min_version = 2;
    h.max_version = 9;
    Hush__Frame hf = HUSH__FRAME__INIT;
    hf.id = 1;
    hf.msg_case = HUSH__FRAME__MSG_HELLO;
    hf.hello = &h;
    uint8_t buf[64];
    size_t n = hush__frame__pack(&hf, buf);
    assert_int_equal(wsc_send(raw, buf, n), 0);
    assert_int_equal(wsc_recv(raw, &junk, &jl, T), 1);
    Hush__Frame *uv = hush__frame__unpack(NULL, jl, junk);
    assert_int_equal(uv->result->code, HUSH__ERROR_CODE__UNSUPPORTED_VERSION);
    hush__frame__free_unpacked(uv, NULL);
    free(junk);
    wsc_close(raw);

    tc_free(a);
    tc_free(dup);
    tc_free(e);
    assert_true(relay_metric(&r, "hush_errors_total{code=\"auth_failed\"}") >= 3);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* Registration policy: invite tokens minted by `hushd invite`, single use; closed. */
static void test_registration_policy(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "invite", "registration = invite");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s invite --db %s --count 2 > %s", getenv("HUSHD"), r.db, tpath("tokens"));
    assert_int_equal(WEXITSTATUS(system(cmd)), 0);
    FILE *f = fopen(tpath("tokens"), "r");
    char t1[64] = "", t2[64] = "";
    assert_int_equal(fscanf(f, "%63s %63s", t1, t2), 2);
    fclose(f);
    assert_int_equal(strlen(t1), 32);
    /* only the hash is stored */
    assert_false(file_contains(r.db, t1, strlen(t1)));
    struct tclient *a = tc_new(&r, "ivy", 1);
    assert_int_equal(tc_register(a, NULL), HUSH__ERROR_CODE__REGISTRATION_CLOSED);
    assert_int_equal(tc_reconnect(a), 0);
    assert_int_equal(tc_register(a, "0123456789abcdef0123456789abcdef"), HUSH__ERROR_CODE__INVITE_INVALID);
    assert_int_equal(tc_reconnect(a), 0);
    assert_int_equal(tc_register(a, t1), 0);
    struct tclient *b = tc_new(&r, "ike", 1);
    assert_int_equal(tc_register(b, t1), HUSH__ERROR_CODE__INVITE_INVALID); /* single use */
    assert_int_equal(tc_reconnect(b), 0);
    assert_int_equal(tc_register(b, t2), 0);
    tc_free(a);
    tc_free(b);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);

    relay_start(&r, "closed", "registration = closed");
    a = tc_new(&r, "cal", 1);
    assert_int_equal(tc_register(a, NULL), HUSH__ERROR_CODE__REGISTRATION_CLOSED);
    tc_free(a);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* Online delivery, acks, offline drain in order with a window, queue-empty, [5] redelivery. */
static void test_mailbox(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "mailbox", "delivery_window = 16");
    struct tclient *a = tc_registered(&r, "mona", 1);
    struct tclient *b = tc_registered(&r, "nick", 1);
    assert_int_equal(tc_start_session(a, "nick"), 0);
    Hush__Frame *qe = tc_next_push(b, HUSH__FRAME__MSG_QUEUE_EMPTY, T);
    assert_non_null(qe);
    hush__frame__free_unpacked(qe, NULL);

    /* online: delivered at once */
    uint8_t mid[16];
    size_t len;
    uint8_t *env = encrypt_text(a, "nick", "live one", mid, &len);
    uint64_t seq = 0;
    assert_int_equal(tc_send(a, "nick", 1, env, len, mid, &seq), 0);
    hush_free(env);
    assert_int_equal(expect_text(b, "mona", "live one"), seq);
    assert_int_equal(tc_ack(b, &seq, 1), 0);

    /* offline: 300 messages wait, then drain in order through a 16-message window */
    tc_disconnect(b);
    enum { N = 300 };
    for (int i = 0; i < N; i++) {
        char text[32];
        snprintf(text, sizeof text, "offline %d", i);
        env = encrypt_text(a, "nick", text, mid, &len);
        assert_int_equal(tc_send(a, "nick", 1, env, len, mid, NULL), 0);
        hush_free(env);
    }
    assert_int_equal(relay_metric(&r, "hush_mailbox_depth"), N);
    assert_int_equal(tc_reconnect(b), 0);
    assert_int_equal(tc_login(b), 0);
    /* [5] take 10 without acking, drop the connection: all come back, in order */
    uint64_t seqs[N];
    for (int i = 0; i < 10; i++) {
        char text[32];
        snprintf(text, sizeof text, "offline %d", i);
        Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
        assert_non_null(d);
        seqs[i] = d->deliver->seq;
        hush__frame__free_unpacked(d, NULL);
    }
    tc_disconnect(b);
    assert_int_equal(tc_reconnect(b), 0);
    assert_int_equal(tc_login(b), 0);
    uint64_t last = 0;
    for (int i = 0; i < N; i++) {
        char text[32];
        snprintf(text, sizeof text, "offline %d", i);
        uint64_t s = expect_text(b, "mona", text); /* decrypts: the SDK never saw these */
        if (i < 10)
            assert_int_equal(s, seqs[i]);
        assert_true(s > last);
        last = s;
        assert_int_equal(tc_ack(b, &s, 1), 0); /* each ack frees a window slot */
    }
    qe = tc_next_push(b, HUSH__FRAME__MSG_QUEUE_EMPTY, T);
    assert_non_null(qe);
    hush__frame__free_unpacked(qe, NULL);
    msleep(200);
    assert_int_equal(relay_metric(&r, "hush_mailbox_depth"), 0);

    /* the window: with 16 unacked, the 17th waits until an ack */
    tc_disconnect(b);
    for (int i = 0; i < 20; i++) {
        uint8_t blob[64];
        random_env(blob, sizeof blob, mid);
        assert_int_equal(tc_send(a, "nick", 1, blob, sizeof blob, mid, NULL), 0);
    }
    assert_int_equal(tc_reconnect(b), 0);
    assert_int_equal(tc_login(b), 0);
    for (int i = 0; i < 16; i++) {
        Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
        assert_non_null(d);
        seqs[i] = d->deliver->seq;
        hush__frame__free_unpacked(d, NULL);
    }
    assert_null(tc_next_push(b, HUSH__FRAME__MSG_DELIVER, 500));
    assert_int_equal(tc_ack(b, seqs, 4), 0);
    for (int i = 0; i < 4; i++) {
        Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
        assert_non_null(d);
        hush__frame__free_unpacked(d, NULL);
    }
    tc_free(a);
    tc_free(b);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* [8] retry with the same client message id -> one copy; [12] acks on another's mailbox do
 * nothing; unknown recipient; quota; ephemeral never stored; TTL. */
static void test_send_rules(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "rules", "quota_messages = 5\nsender_share_percent = 100\nttl_seconds = 2");
    struct tclient *a = tc_registered(&r, "olaf", 1);
    struct tclient *b = tc_registered(&r, "pia", 1);
    struct tclient *m = tc_registered(&r, "mallory", 1);
    tc_disconnect(b);
    uint8_t env[100], mid[16];
    random_env(env, sizeof env, mid);
    uint64_t s1 = 0, s2 = 0;
    assert_int_equal(tc_send(a, "pia", 1, env, sizeof env, mid, &s1), 0);
    assert_int_equal(tc_send(a, "pia", 1, env, sizeof env, mid, &s2), 0);
    assert_int_equal(s1, s2);
    assert_int_equal(relay_metric(&r, "hush_mailbox_depth"), 1);

    /* [12] mallory acks pia's seq: nothing happens */
    assert_int_equal(tc_ack(m, &s1, 1), 0);
    assert_int_equal(relay_metric(&r, "hush_mailbox_depth"), 1);

    /* unknown recipient: nothing stored */
    uint8_t mid2[16];
    random_env(env, sizeof env, mid2);
    assert_int_equal(tc_send(a, "nobody", 1, env, sizeof env, mid2, NULL), HUSH__ERROR_CODE__UNKNOWN_RECIPIENT);
    /* a device pia does not have (and pia's device 1 left out): refused as a whole, with the
     * devices missing and extra */
    assert_int_equal(tc_send(a, "pia", 7, env, sizeof env, mid2, NULL), HUSH__ERROR_CODE__DEVICE_MISMATCH);
    /* sending to one's own device: nothing to deliver, refused */
    assert_int_equal(tc_send(a, a->user, 1, env, sizeof env, mid2, NULL), HUSH__ERROR_CODE__DEVICE_MISMATCH);
    /* bad requests */
    assert_int_equal(tc_send(a, "Bad Name", 1, env, sizeof env, mid2, NULL), HUSH__ERROR_CODE__BAD_REQUEST);
    uint8_t *big = calloc(1, 300 * 1024);
    assert_int_equal(tc_send(a, "pia", 1, big, 257 * 1024, mid2, NULL), HUSH__ERROR_CODE__TOO_LARGE);
    free(big);

    /* [16] quota: 5 messages, the 6th is refused with a clear error */
    for (int i = 0; i < 4; i++) {
        random_env(env, sizeof env, mid2);
        assert_int_equal(tc_send(a, "pia", 1, env, sizeof env, mid2, NULL), 0);
    }
    random_env(env, sizeof env, mid2);
    assert_int_equal(tc_send(a, "pia", 1, env, sizeof env, mid2, NULL), HUSH__ERROR_CODE__QUOTA_EXCEEDED);
    assert_int_equal(relay_metric(&r, "hush_mailbox_depth"), 5);

    /* ephemeral: to an offline device it is simply gone; to an online one delivered, seq 0 */
    Hush__Recipient rc = HUSH__RECIPIENT__INIT;
    rc.username = "mallory";
    rc.device_id = 1;
    rc.envelope.data = env;
    rc.envelope.len = 10;
    Hush__Recipient *rcs[1] = { &rc };
    Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
    s.client_msg_id.data = mid2;
    s.client_msg_id.len = 16;
    s.n_recipients = 1;
    s.recipients = rcs;
    s.ephemeral = 1;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_SEND;
    f.send = &s;
    Hush__Frame *res = tc_request(a, &f, T);
    assert_int_equal(res->result->code, 0);
    hush__frame__free_unpacked(res, NULL);
    Hush__Frame *d = tc_next_push(m, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(d);
    assert_int_equal(d->deliver->seq, 0);
    hush__frame__free_unpacked(d, NULL);
    rc.username = "pia";
    res = tc_request(a, &f, T);
    assert_int_equal(res->result->code, 0);
    hush__frame__free_unpacked(res, NULL);
    assert_int_equal(relay_metric(&r, "hush_mailbox_depth"), 5);

    /* TTL: after 2 s nothing is delivered */
    msleep(2500);
    assert_int_equal(tc_reconnect(b), 0);
    assert_int_equal(tc_login(b), 0);
    Hush__Frame *qe = tc_next_push(b, HUSH__FRAME__MSG_QUEUE_EMPTY, T);
    assert_non_null(qe);
    hush__frame__free_unpacked(qe, NULL);
    assert_null(tc_next_push(b, HUSH__FRAME__MSG_DELIVER, 300));
    /* ... and the expired rows are deleted: the expiry runs at start (then every minute), after
     * which pia's quota has room again and a message within its TTL stays */
    tc_free(a);
    tc_free(b);
    tc_free(m);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
    relay_restart(&r);
    a = tc_new(&r, "olaf", 1);
    assert_int_equal(tc_login(a), 0);
    random_env(env, sizeof env, mid2);
    assert_int_equal(tc_send(a, "pia", 1, env, sizeof env, mid2, NULL), 0);
    b = tc_new(&r, "pia", 1);
    assert_int_equal(tc_login(b), 0);
    Hush__Frame *fresh = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(fresh);
    hush__frame__free_unpacked(fresh, NULL);
    assert_null(tc_next_push(b, HUSH__FRAME__MSG_DELIVER, 300));
    tc_free(a);
    tc_free(b);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test \"$(sqlite3 '%s' 'SELECT count(*) FROM mailbox')\" = 1", r.db);
    assert_int_equal(system(cmd), 0);
}

/* [9] a second connection for the same device closes the older one; no message goes to both. */
static void test_session_replaced(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "replace", NULL);
    struct tclient *a = tc_registered(&r, "quinn", 1);
    struct tclient *b1 = tc_registered(&r, "rita", 1);
    struct tclient *b2 = tc_new(&r, "rita", 1); /* same SDK database, second socket */
    hush_client_close(b2->sdk);
    b2->sdk = b1->sdk;
    assert_int_equal(tc_login(b2), 0);
    Hush__Frame *cl = tc_next_push(b1, HUSH__FRAME__MSG_CLOSING, T);
    assert_non_null(cl);
    assert_int_equal(cl->closing->code, HUSH__ERROR_CODE__SESSION_REPLACED);
    hush__frame__free_unpacked(cl, NULL);
    uint8_t *junk;
    size_t jl;
    assert_int_equal(wsc_recv(b1->ws, &junk, &jl, T), -1);
    uint8_t env[50], mid[16];
    random_env(env, sizeof env, mid);
    uint64_t seq;
    assert_int_equal(tc_send(a, "rita", 1, env, sizeof env, mid, &seq), 0);
    Hush__Frame *d = tc_next_push(b2, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(d);
    assert_int_equal(d->deliver->seq, seq);
    hush__frame__free_unpacked(d, NULL);
    b2->sdk = NULL;
    tc_free(b2);
    tc_free(b1);
    tc_free(a);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

static Hush__PreKeyUpload *upload_of(struct tclient *c, uint32_t n, uint8_t **raw)
{
    size_t len = 0;
    assert_int_equal(hush_prekey_upload(c->sdk, n, raw, &len, NULL), HUSH_OK);
    Hush__PreKeyUpload *u = hush__pre_key_upload__unpack(NULL, len, *raw);
    assert_non_null(u);
    return u;
}

static int upload(struct tclient *c, Hush__PreKeyUpload *u, uint32_t *remaining)
{
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_UPLOAD_PRE_KEYS;
    f.upload_pre_keys = u;
    Hush__Frame *res = tc_request(c, &f, T);
    assert_non_null(res);
    int code = res->result->code;
    if (remaining)
        *remaining = res->result->pre_keys_remaining;
    hush__frame__free_unpacked(res, NULL);
    return code;
}

struct fetcher {
    const struct relay_proc *r;
    int idx;
    uint32_t ids[64];
    int n;
};

static void *fetch_thread(void *p)
{
    struct fetcher *ft = p;
    char name[32];
    snprintf(name, sizeof name, "fetcher%d", ft->idx);
    struct tclient *c = tc_registered(ft->r, name, 1);
    for (int i = 0; i < 8; i++) {
        Hush__Frame *res = tc_fetch(c, "sara");
        if (res && res->result->code == 0 && res->result->n_bundles == 1 && res->result->bundles[0]->one_time_pre_key)
            ft->ids[ft->n++] = res->result->bundles[0]->one_time_pre_key->id;
        if (res)
            hush__frame__free_unpacked(res, NULL);
    }
    tc_free(c);
    return NULL;
}

/* Prekey directory: [15] bad uploads store nothing; one-time keys handed out once, even in
 * parallel; exhaustion; low-stock notice; [14] rate limit. */
static void test_prekeys(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "prekeys", "fetch_burst = 1000\nfetch_refill_per_min = 1");
    struct tclient *s = tc_new(&r, "sara", 1);
    uint8_t *raw = NULL;
    Hush__PreKeyUpload *u;
    assert_int_equal(tc_register(s, NULL), 0); /* uploads the device's 100 one-time keys */
    uint32_t remaining = 0;

    /* [15] over the per-request cap */
    u = upload_of(s, 0, &raw);
    Hush__PreKey *many[101];
    Hush__PreKey pk[101];
    uint8_t pub[33];
    pub[0] = 0x05;
    randombytes_buf(pub + 1, 32);
    for (int i = 0; i < 101; i++) {
        hush__pre_key__init(&pk[i]);
        pk[i].id = 5000 + (uint32_t)i;
        pk[i].public_key.data = pub;
        pk[i].public_key.len = 33;
        many[i] = &pk[i];
    }
    Hush__PreKey **saved = u->one_time_pre_keys;
    size_t saved_n = u->n_one_time_pre_keys;
    u->one_time_pre_keys = many;
    u->n_one_time_pre_keys = 101;
    assert_int_equal(upload(s, u, NULL), HUSH__ERROR_CODE__TOO_LARGE);
    /* a malformed key among good ones: nothing stored */
    u->n_one_time_pre_keys = 3;
    pk[1].public_key.len = 32;
    assert_int_equal(upload(s, u, NULL), HUSH__ERROR_CODE__BAD_KEYS);
    pk[1].public_key.len = 33;
    /* a signed prekey whose signature does not verify: nothing stored */
    u->signed_pre_key->signature.data[5] ^= 1;
    assert_int_equal(upload(s, u, NULL), HUSH__ERROR_CODE__BAD_KEYS);
    u->signed_pre_key->signature.data[5] ^= 1;
    u->n_one_time_pre_keys = 0;
    assert_int_equal(upload(s, u, &remaining), 0);
    assert_int_equal(remaining, 100); /* the failed uploads added nothing */
    u->one_time_pre_keys = saved;
    u->n_one_time_pre_keys = saved_n;
    hush__pre_key_upload__free_unpacked(u, NULL);
    hush_free(raw);

    /* parallel fetchers: 8 threads x 8 fetches = 64 keys, all different */
    struct fetcher ft[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
        memset(&ft[i], 0, sizeof ft[i]);
        ft[i].r = &r;
        ft[i].idx = i;
        pthread_create(&th[i], NULL, fetch_thread, &ft[i]);
    }
    uint32_t all[64];
    int nall = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        for (int k = 0; k < ft[i].n; k++)
            all[nall++] = ft[i].ids[k];
    }
    assert_int_equal(nall, 64);
    for (int i = 0; i < nall; i++)
        for (int k = i + 1; k < nall; k++)
            assert_int_not_equal(all[i], all[k]);

    /* drain the rest: 36 left; below 10 the owner (connected) is told */
    struct tclient *t = tc_registered(&r, "tom", 1);
    for (int i = 0; i < 36; i++) {
        Hush__Frame *res = tc_fetch(t, "sara");
        assert_non_null(res->result->bundles[0]->one_time_pre_key);
        hush__frame__free_unpacked(res, NULL);
    }
    Hush__Frame *low = tc_next_push(s, HUSH__FRAME__MSG_PRE_KEYS_LOW, T);
    assert_non_null(low);
    assert_true(low->pre_keys_low->remaining < 10);
    hush__frame__free_unpacked(low, NULL);
    /* exhausted: the bundle comes with the last-resort key (which the device never deletes) in
     * place of a one-time key, and a session still works */
    Hush__Frame *res = tc_fetch(t, "sara");
    assert_int_equal(res->result->code, 0);
    assert_non_null(res->result->bundles[0]->one_time_pre_key);
    assert_int_equal(res->result->bundles[0]->one_time_pre_key->id, HUSH_LAST_RESORT_PREKEY_ID);
    assert_int_equal(res->result->bundles[0]->signed_pre_key->public_key.len, 33);
    hush__frame__free_unpacked(res, NULL);
    assert_int_equal(tc_start_session(t, "sara"), 0);
    uint8_t mid[16];
    size_t len;
    uint8_t *env = encrypt_text(t, "sara", "no one-time key left", mid, &len);
    assert_int_equal(tc_send(t, "sara", 1, env, len, mid, NULL), 0);
    hush_free(env);
    expect_text(s, "tom", "no one-time key left");
    /* the owner, offline while it ran low, is told at its next login */
    tc_disconnect(s);
    res = tc_fetch(t, "sara");
    hush__frame__free_unpacked(res, NULL);
    assert_int_equal(tc_reconnect(s), 0);
    assert_int_equal(tc_login(s), 0);
    low = tc_next_push(s, HUSH__FRAME__MSG_PRE_KEYS_LOW, T);
    assert_non_null(low);
    assert_int_equal(low->pre_keys_low->remaining, 0);
    hush__frame__free_unpacked(low, NULL);
    /* unknown user */
    res = tc_fetch(t, "ghost");
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__UNKNOWN_USER);
    hush__frame__free_unpacked(res, NULL);
    tc_free(s);
    tc_free(t);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);

    /* [14] rate limit: burst 5, then RATE_LIMITED with a retry hint */
    relay_start(&r, "ratelimit", "fetch_burst = 5\nfetch_refill_per_min = 1");
    s = tc_registered(&r, "uma", 1);
    t = tc_registered(&r, "vic", 1);
    for (int i = 0; i < 5; i++) {
        res = tc_fetch(t, "uma");
        assert_int_equal(res->result->code, 0);
        hush__frame__free_unpacked(res, NULL);
    }
    res = tc_fetch(t, "uma");
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__RATE_LIMITED);
    assert_true(res->result->retry_after_ms > 0);
    hush__frame__free_unpacked(res, NULL);
    /* another requester is not affected */
    res = tc_fetch(s, "vic");
    assert_int_equal(res->result->code, 0);
    hush__frame__free_unpacked(res, NULL);
    tc_free(s);
    tc_free(t);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

static int set_allow(struct tclient *c, char **users, size_t n)
{
    Hush__SetPresenceAllowRequest a = HUSH__SET_PRESENCE_ALLOW_REQUEST__INIT;
    a.usernames = users;
    a.n_usernames = n;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_SET_PRESENCE_ALLOW;
    f.set_presence_allow = &a;
    Hush__Frame *res = tc_request(c, &f, T);
    int code = res ? (int)res->result->code : -1;
    if (res)
        hush__frame__free_unpacked(res, NULL);
    return code;
}

static int subscribe(struct tclient *c, char **users, size_t n)
{
    Hush__SubscribePresenceRequest s = HUSH__SUBSCRIBE_PRESENCE_REQUEST__INIT;
    s.usernames = users;
    s.n_usernames = n;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_SUBSCRIBE_PRESENCE;
    f.subscribe_presence = &s;
    Hush__Frame *res = tc_request(c, &f, T);
    int code = res ? (int)res->result->code : -1;
    if (res)
        hush__frame__free_unpacked(res, NULL);
    return code;
}

/* Presence: only allowed subscribers learn anything; not allowed == unknown user. */
static void test_presence(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "presence", NULL);
    struct tclient *w = tc_registered(&r, "wendy", 1);
    struct tclient *x = tc_registered(&r, "xavi", 1);
    struct tclient *y = tc_registered(&r, "yann", 1);
    char *allow[] = { "xavi" };
    assert_int_equal(set_allow(w, allow, 1), 0);
    char *targets[] = { "wendy", "nosuchuser" };
    assert_int_equal(subscribe(x, targets, 2), 0);
    assert_int_equal(subscribe(y, targets, 2), 0);
    Hush__Frame *p = tc_next_push(x, HUSH__FRAME__MSG_PRESENCE, T);
    assert_non_null(p);
    assert_string_equal(p->presence->username, "wendy");
    assert_true(p->presence->online);
    hush__frame__free_unpacked(p, NULL);
    /* wendy goes offline, then online */
    tc_disconnect(w);
    p = tc_next_push(x, HUSH__FRAME__MSG_PRESENCE, T);
    assert_non_null(p);
    assert_false(p->presence->online);
    assert_true(p->presence->last_seen_ms > 0);
    hush__frame__free_unpacked(p, NULL);
    assert_int_equal(tc_reconnect(w), 0);
    assert_int_equal(tc_login(w), 0);
    p = tc_next_push(x, HUSH__FRAME__MSG_PRESENCE, T);
    assert_non_null(p);
    assert_true(p->presence->online);
    hush__frame__free_unpacked(p, NULL);
    /* yann (not allowed) and the unknown user: nothing at all */
    assert_null(tc_next_push(y, HUSH__FRAME__MSG_PRESENCE, 500));
    assert_null(tc_next_push(x, HUSH__FRAME__MSG_PRESENCE, 300));
    /* allowing yann later sends the current state; the list survives a restart */
    char *allow2[] = { "xavi", "yann" };
    assert_int_equal(set_allow(w, allow2, 2), 0);
    p = tc_next_push(y, HUSH__FRAME__MSG_PRESENCE, T);
    assert_non_null(p);
    assert_true(p->presence->online);
    hush__frame__free_unpacked(p, NULL);
    tc_free(w);
    tc_free(x);
    tc_free(y);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
    relay_restart(&r);
    y = tc_new(&r, "yann", 1);
    assert_int_equal(tc_login(y), 0);
    char *t1[] = { "wendy" };
    assert_int_equal(subscribe(y, t1, 1), 0);
    p = tc_next_push(y, HUSH__FRAME__MSG_PRESENCE, T);
    assert_non_null(p);
    assert_false(p->presence->online);
    assert_true(p->presence->last_seen_ms > 0);
    hush__frame__free_unpacked(p, NULL);
    tc_free(y);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* SIGTERM: in-flight work is answered, clients get a Closing frame, exit status 0; the health
 * endpoint and metrics answer while running. */
static void test_sigterm_and_health(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "sigterm", NULL);
    int st = 0;
    char *body = relay_http_get(&r, "/healthz", &st);
    assert_int_equal(st, 200);
    assert_string_equal(body, "ok\n");
    free(body);
    body = relay_http_get(&r, "/metrics", &st);
    assert_int_equal(st, 200);
    assert_non_null(strstr(body, "# TYPE hush_commit_seconds histogram"));
    assert_non_null(strstr(body, "hush_errors_total{code=\"quota_exceeded\"}"));
    free(body);
    body = relay_http_get(&r, "/nope", &st);
    assert_int_equal(st, 404);
    free(body);
    struct tclient *a = tc_registered(&r, "zoe", 1);
    assert_int_equal(relay_metric(&r, "hush_authenticated_connections"), 1);
    kill(r.pid, SIGTERM);
    Hush__Frame *cl = tc_next_push(a, HUSH__FRAME__MSG_CLOSING, T);
    assert_non_null(cl);
    assert_int_equal(cl->closing->code, HUSH__ERROR_CODE__SHUTTING_DOWN);
    hush__frame__free_unpacked(cl, NULL);
    assert_int_equal(relay_stop(&r, 0), 0); /* already signalled: just reap, exit 0 */
    assert_true(file_contains(r.log, "stopped clean=1", 15));
    tc_free(a);
}

/* ------------------------------------------------------------------------------------------ */
/* early delivery: a message for an online device is delivered before it is written */

struct async_send {
    pthread_t th;
    struct tclient *c;
    const char *to;
    uint8_t env[64], mid[16];
    int code;
    uint64_t seq;
    atomic_int done;
};

static void *async_send_main(void *arg)
{
    struct async_send *s = arg;
    s->code = tc_send(s->c, s->to, 1, s->env, sizeof s->env, s->mid, &s->seq);
    atomic_store(&s->done, 1);
    return NULL;
}

static void async_send_start(struct async_send *s, struct tclient *c, const char *to, const uint8_t *mid)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    s->to = to;
    uint8_t ignored[16];
    random_env(s->env, sizeof s->env, ignored);
    if (mid)
        memcpy(s->mid, mid, 16);
    else
        randombytes_buf(s->mid, 16);
    assert_int_equal(pthread_create(&s->th, NULL, async_send_main, s), 0);
}

static uint64_t next_delivery(struct tclient *c, const uint8_t mid[16])
{
    Hush__Frame *d = tc_next_push(c, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(d);
    assert_int_equal(d->deliver->client_msg_id.len, 16);
    assert_memory_equal(d->deliver->client_msg_id.data, mid, 16);
    uint64_t seq = d->deliver->seq;
    hush__frame__free_unpacked(d, NULL);
    return seq;
}

/* With a wait far longer than the test, nothing is written on a timer: the order of events alone
 * decides. The recipient gets the message before its sender is answered; its ack answers the
 * sender and the message is never written. Without an ack, the recipient's disconnect writes it
 * and answers the sender, and the next login delivers it again. A relay killed while a message
 * waits never answered its sender: nothing acknowledged is lost, the retry is stored. */
static void test_early_delivery(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "early", "early_delivery_ms = 60000");
    struct tclient *a = tc_registered(&r, "erin", 1);
    struct tclient *b = tc_registered(&r, "fred", 1);
    Hush__Frame *qe = tc_next_push(b, HUSH__FRAME__MSG_QUEUE_EMPTY, T);
    assert_non_null(qe);
    hush__frame__free_unpacked(qe, NULL);

    /* acknowledged before it was written */
    struct async_send s;
    async_send_start(&s, a, "fred", NULL);
    uint64_t seq = next_delivery(b, s.mid);
    msleep(300);
    assert_int_equal(atomic_load(&s.done), 0); /* the sender waits: nothing is on a disk yet */
    assert_int_equal(tc_ack(b, &seq, 1), 0);
    pthread_join(s.th, NULL);
    assert_int_equal(s.code, 0);
    assert_int_equal(s.seq, seq);
    assert_int_equal(relay_metric(&r, "hush_messages_unwritten_total"), 1);
    assert_int_equal(relay_metric(&r, "hush_messages_written_late_total"), 0);
    assert_int_equal(relay_metric(&r, "hush_mailbox_depth"), 0);

    /* not acknowledged: written when the recipient goes, then delivered again */
    async_send_start(&s, a, "fred", NULL);
    seq = next_delivery(b, s.mid);
    msleep(300);
    assert_int_equal(atomic_load(&s.done), 0);
    tc_disconnect(b);
    pthread_join(s.th, NULL);
    assert_int_equal(s.code, 0);
    assert_int_equal(s.seq, seq);
    assert_int_equal(relay_metric(&r, "hush_messages_written_late_total"), 1);
    assert_int_equal(relay_metric(&r, "hush_mailbox_depth"), 1);
    assert_int_equal(tc_reconnect(b), 0);
    assert_int_equal(tc_login(b), 0);
    assert_int_equal(next_delivery(b, s.mid), seq);
    assert_int_equal(tc_ack(b, &seq, 1), 0);
    msleep(200);
    assert_int_equal(relay_metric(&r, "hush_mailbox_depth"), 0);

    /* killed while it waits: the sender was never answered, nothing was written; its retry (same
     * client message id) is stored and delivered again (the recipient's SDK knows that id) */
    async_send_start(&s, a, "fred", NULL);
    uint64_t first = next_delivery(b, s.mid);
    relay_stop(&r, SIGKILL);
    pthread_join(s.th, NULL);
    assert_int_not_equal(s.code, 0);
    relay_restart(&r);
    assert_int_equal(relay_metric(&r, "hush_mailbox_depth"), 0);
    assert_int_equal(tc_reconnect(a), 0);
    assert_int_equal(tc_login(a), 0);
    tc_disconnect(b); /* offline this time: the retry is written at once */
    uint64_t again = 0;
    assert_int_equal(tc_send(a, "fred", 1, s.env, sizeof s.env, s.mid, &again), 0);
    assert_int_equal(relay_metric(&r, "hush_mailbox_depth"), 1);
    assert_int_equal(tc_reconnect(b), 0);
    assert_int_equal(tc_login(b), 0);
    assert_int_equal(next_delivery(b, s.mid), again);
    assert_true(first > 0);
    tc_free(a);
    tc_free(b);
    relay_stop(&r, SIGTERM);
}

/* One integer from the relay's database (opened beside the running relay; WAL lets it read). */
static int64_t db_int(const struct relay_proc *r, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(r->db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return v;
}

/* A room send: (to[i], 1) each, own[i] its pairwise part (NULL: none), one shared envelope. */
static Hush__Frame *room_send(struct tclient *c, char **to, uint8_t **own, size_t *own_len, size_t n,
                              const uint8_t *shared, size_t shared_len, const uint8_t mid[16])
{
    Hush__Recipient rc[8], *rp[8];
    for (size_t i = 0; i < n; i++) {
        hush__recipient__init(&rc[i]);
        rc[i].username = to[i];
        rc[i].device_id = 1;
        rc[i].envelope.data = own ? own[i] : NULL;
        rc[i].envelope.len = own ? own_len[i] : 0;
        rp[i] = &rc[i];
    }
    Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
    s.client_msg_id.data = (uint8_t *)mid;
    s.client_msg_id.len = 16;
    s.n_recipients = n;
    s.recipients = rp;
    s.shared_envelope.data = (uint8_t *)shared;
    s.shared_envelope.len = shared_len;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_SEND;
    f.send = &s;
    Hush__Frame *r = tc_request(c, &f, T);
    assert_non_null(r);
    assert_int_equal(r->msg_case, HUSH__FRAME__MSG_RESULT);
    return r;
}

/* A room message names its recipients once and carries one shared envelope: the relay stores it
 * once, delivers it with each device's own part (live and from the mailbox), and deletes it with
 * the last acknowledgement; retries are stored once; limits hold. */
static void test_room_fanout(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "rooms", "max_room_recipients = 3");
    struct tclient *a = tc_registered(&r, "rhea", 1);
    struct tclient *b = tc_registered(&r, "rolf", 1);
    struct tclient *c = tc_registered(&r, "ruth", 1);
    Hush__Frame *qe = tc_next_push(b, HUSH__FRAME__MSG_QUEUE_EMPTY, T);
    assert_non_null(qe);
    hush__frame__free_unpacked(qe, NULL);
    tc_disconnect(c); /* offline: hers waits in the mailbox */

    uint8_t shared[3000], part[40], mid[16];
    randombytes_buf(shared, sizeof shared);
    randombytes_buf(part, sizeof part);
    randombytes_buf(mid, sizeof mid);
    char *to[] = { "rolf", "ruth" };
    uint8_t *own[] = { part, NULL };
    size_t own_len[] = { sizeof part, 0 };
    Hush__Frame *res = room_send(a, to, own, own_len, 2, shared, sizeof shared, mid);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__OK);
    assert_int_equal(res->result->n_seqs, 2);
    uint64_t s_rolf = res->result->seqs[0], s_ruth = res->result->seqs[1];
    hush__frame__free_unpacked(res, NULL);
    /* stored once, whatever the number of recipients */
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 1);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM mailbox WHERE payload IS NOT NULL"), 2);
    assert_int_equal(db_int(&r, "SELECT sum(length(envelope)) FROM mailbox"), (int64_t)sizeof part);

    /* live: the device's own part and the shared one */
    Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(d);
    assert_int_equal(d->deliver->seq, s_rolf);
    assert_int_equal(d->deliver->envelope.len, sizeof part);
    assert_memory_equal(d->deliver->envelope.data, part, sizeof part);
    assert_int_equal(d->deliver->shared_envelope.len, sizeof shared);
    assert_memory_equal(d->deliver->shared_envelope.data, shared, sizeof shared);
    hush__frame__free_unpacked(d, NULL);

    /* a retry (same id) is stored once and answered with the same seqs */
    res = room_send(a, to, own, own_len, 2, shared, sizeof shared, mid);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__OK);
    assert_int_equal(res->result->seqs[0], s_rolf);
    assert_int_equal(res->result->seqs[1], s_ruth);
    hush__frame__free_unpacked(res, NULL);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 1);

    /* the payload stays while one row points at it */
    assert_int_equal(tc_ack(b, &s_rolf, 1), 0);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 1);
    assert_int_equal(tc_reconnect(c), 0);
    assert_int_equal(tc_login(c), 0);
    d = tc_next_push(c, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(d);
    assert_int_equal(d->deliver->seq, s_ruth);
    assert_int_equal(d->deliver->envelope.len, 0);
    assert_int_equal(d->deliver->shared_envelope.len, sizeof shared);
    assert_memory_equal(d->deliver->shared_envelope.data, shared, sizeof shared);
    hush__frame__free_unpacked(d, NULL);
    assert_int_equal(tc_ack(c, &s_ruth, 1), 0);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 0);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM mailbox"), 0);

    /* acknowledged by one of two: the payload stays for the other (offline) */
    tc_disconnect(c);
    randombytes_buf(mid, sizeof mid);
    res = room_send(a, to, NULL, NULL, 2, shared, sizeof shared, mid);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__OK);
    hush__frame__free_unpacked(res, NULL);
    d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(d);
    uint64_t s2 = d->deliver->seq;
    hush__frame__free_unpacked(d, NULL);
    assert_int_equal(tc_ack(b, &s2, 1), 0);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 1);

    /* limits: recipients of a room send, an empty own part without a shared envelope, size */
    char *many[] = { "rolf", "ruth", "rolf", "ruth" };
    randombytes_buf(mid, sizeof mid);
    res = room_send(a, many, NULL, NULL, 4, shared, sizeof shared, mid);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__TOO_LARGE);
    hush__frame__free_unpacked(res, NULL);
    res = room_send(a, to, NULL, NULL, 2, NULL, 0, mid);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__BAD_REQUEST);
    hush__frame__free_unpacked(res, NULL);
    uint8_t *big = calloc(1, 256 * 1024 + 1);
    assert_non_null(big);
    res = room_send(a, to, NULL, NULL, 2, big, 256 * 1024 + 1, mid);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__TOO_LARGE);
    hush__frame__free_unpacked(res, NULL);
    free(big);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 1);
    tc_free(a);
    tc_free(b);
    tc_free(c);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* A room send on a thread of its own (the sender is answered only when its rows are resolved). */
struct async_room {
    pthread_t th;
    struct tclient *c;
    char *to[2];
    size_t n;
    uint8_t shared[2000], mid[16];
    int code;
    uint64_t seqs[2];
    atomic_int done;
};

static void *async_room_main(void *arg)
{
    struct async_room *s = arg;
    Hush__Recipient rc[2], *rp[2];
    for (size_t i = 0; i < s->n; i++) {
        hush__recipient__init(&rc[i]);
        rc[i].username = s->to[i];
        rc[i].device_id = 1;
        rp[i] = &rc[i];
    }
    Hush__SendRequest sr = HUSH__SEND_REQUEST__INIT;
    sr.client_msg_id.data = s->mid;
    sr.client_msg_id.len = 16;
    sr.n_recipients = s->n;
    sr.recipients = rp;
    sr.shared_envelope.data = s->shared;
    sr.shared_envelope.len = sizeof s->shared;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_SEND;
    f.send = &sr;
    Hush__Frame *r = tc_request(s->c, &f, T);
    s->code = -1;
    if (r && r->msg_case == HUSH__FRAME__MSG_RESULT) {
        s->code = r->result->code;
        for (size_t i = 0; i < r->result->n_seqs && i < 2; i++)
            s->seqs[i] = r->result->seqs[i];
    }
    if (r)
        hush__frame__free_unpacked(r, NULL);
    atomic_store(&s->done, 1);
    return NULL;
}

static void async_room_start(struct async_room *s, struct tclient *c, char *to0, char *to1)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    s->to[0] = to0;
    s->to[1] = to1;
    s->n = 2;
    randombytes_buf(s->shared, sizeof s->shared);
    randombytes_buf(s->mid, sizeof s->mid);
    assert_int_equal(pthread_create(&s->th, NULL, async_room_main, s), 0);
}

/* The next delivery of c: it must be the room message s (its shared envelope whole); its seq. */
static uint64_t next_room_delivery(struct tclient *c, const struct async_room *s)
{
    Hush__Frame *d = tc_next_push(c, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(d);
    assert_memory_equal(d->deliver->client_msg_id.data, s->mid, 16);
    assert_int_equal(d->deliver->shared_envelope.len, sizeof s->shared);
    assert_memory_equal(d->deliver->shared_envelope.data, s->shared, sizeof s->shared);
    uint64_t seq = d->deliver->seq;
    hush__frame__free_unpacked(d, NULL);
    return seq;
}

/* Room messages are delivered early too: members online get it before anything is written, the
 * sender is answered when every one of them acknowledged it (nothing written then, not even the
 * shared envelope) or when the rows still waiting were written; rows written late share one
 * payload row with those written at once. */
static void test_room_early_delivery(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "roomearly", "early_delivery_ms = 60000");
    struct tclient *a = tc_registered(&r, "rita", 1);
    struct tclient *b = tc_registered(&r, "rolo", 1);
    struct tclient *c = tc_registered(&r, "rudi", 1);
    for (int i = 0; i < 2; i++) {
        Hush__Frame *qe = tc_next_push(i ? c : b, HUSH__FRAME__MSG_QUEUE_EMPTY, T);
        assert_non_null(qe);
        hush__frame__free_unpacked(qe, NULL);
    }
    /* both online and both acknowledge: answered, nothing ever written */
    struct async_room s;
    async_room_start(&s, a, "rolo", "rudi");
    uint64_t sb = next_room_delivery(b, &s), sc = next_room_delivery(c, &s);
    msleep(300);
    assert_int_equal(atomic_load(&s.done), 0);
    assert_int_equal(tc_ack(b, &sb, 1), 0);
    msleep(300);
    assert_int_equal(atomic_load(&s.done), 0); /* one member still has it on no disk */
    assert_int_equal(tc_ack(c, &sc, 1), 0);
    pthread_join(s.th, NULL);
    assert_int_equal(s.code, 0);
    assert_int_equal(s.seqs[0], sb);
    assert_int_equal(s.seqs[1], sc);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 0);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM mailbox"), 0);
    assert_int_equal(relay_metric(&r, "hush_messages_unwritten_total"), 2);

    /* one offline (written at once, with the payload), one online that never acknowledges: its row
     * is written when it goes, pointing at the same payload; then both get it from the mailbox */
    tc_disconnect(c);
    async_room_start(&s, a, "rolo", "rudi");
    sb = next_room_delivery(b, &s);
    msleep(300);
    assert_int_equal(atomic_load(&s.done), 0);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 1);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM mailbox"), 1);
    tc_disconnect(b);
    pthread_join(s.th, NULL);
    assert_int_equal(s.code, 0);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 1);
    assert_int_equal(db_int(&r, "SELECT count(DISTINCT payload) FROM mailbox"), 1);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM mailbox"), 2);
    assert_int_equal(relay_metric(&r, "hush_messages_written_late_total"), 1);
    struct tclient *both[] = { b, c };
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tc_reconnect(both[i]), 0);
        assert_int_equal(tc_login(both[i]), 0);
        uint64_t q = next_room_delivery(both[i], &s);
        assert_int_equal(q, s.seqs[i]);
        assert_int_equal(tc_ack(both[i], &q, 1), 0);
    }
    msleep(200);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 0);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM mailbox"), 0);

    /* killed while it waits: never answered, nothing written; the retry is stored and delivered */
    async_room_start(&s, a, "rolo", "rudi");
    next_room_delivery(b, &s);
    next_room_delivery(c, &s);
    relay_stop(&r, SIGKILL);
    pthread_join(s.th, NULL);
    assert_int_not_equal(s.code, 0);
    relay_restart(&r);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 0);
    tc_disconnect(b);
    tc_disconnect(c);
    assert_int_equal(tc_reconnect(a), 0);
    assert_int_equal(tc_login(a), 0);
    Hush__Frame *res = room_send(a, s.to, NULL, NULL, 2, s.shared, sizeof s.shared, s.mid);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__OK);
    hush__frame__free_unpacked(res, NULL);
    assert_int_equal(db_int(&r, "SELECT count(*) FROM payloads"), 1);
    assert_int_equal(tc_reconnect(b), 0);
    assert_int_equal(tc_login(b), 0);
    next_room_delivery(b, &s);
    tc_free(a);
    tc_free(b);
    tc_free(c);
    relay_stop(&r, SIGTERM);
}

/* More live deliveries than a device's window (a room of a few members whose writers keep many
 * messages in flight): the rest wait in the connection's memory and go out as acks free the
 * window, in order, without anything being written (a fetch would first write every message
 * waiting for its ack). */
static void test_window_backlog(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "backlog", "delivery_window = 16\nearly_delivery_ms = 60000");
    struct tclient *a = tc_registered(&r, "bree", 1);
    struct tclient *b = tc_registered(&r, "bill", 1);
    Hush__Frame *qe = tc_next_push(b, HUSH__FRAME__MSG_QUEUE_EMPTY, T);
    assert_non_null(qe);
    hush__frame__free_unpacked(qe, NULL);
    enum { N = 40 };
    for (int i = 0; i < N; i++) {
        /* written straight to the socket: each send is answered only once bill acknowledges it */
        uint8_t env[64], mid[16];
        random_env(env, sizeof env, mid);
        Hush__Recipient rc = HUSH__RECIPIENT__INIT, *rp = &rc;
        rc.username = "bill";
        rc.device_id = 1;
        rc.envelope.data = env;
        rc.envelope.len = sizeof env;
        Hush__SendRequest sr = HUSH__SEND_REQUEST__INIT;
        sr.client_msg_id.data = mid;
        sr.client_msg_id.len = 16;
        sr.n_recipients = 1;
        sr.recipients = &rp;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.id = 5000 + (uint64_t)i;
        f.msg_case = HUSH__FRAME__MSG_SEND;
        f.send = &sr;
        uint8_t buf[512];
        size_t len = hush__frame__pack(&f, buf);
        assert_int_equal(wsc_send(a->ws, buf, len), 0);
    }
    uint64_t last = 0;
    int got = 0;
    while (got < N) {
        uint64_t seqs[16];
        int n = 0;
        while (n < 16 && got + n < N) {
            Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
            assert_non_null(d);
            assert_true(d->deliver->seq > last);
            last = seqs[n++] = d->deliver->seq;
            hush__frame__free_unpacked(d, NULL);
        }
        if (got == 0)
            assert_null(tc_next_push(b, HUSH__FRAME__MSG_DELIVER, 500)); /* the window is full */
        assert_int_equal(db_int(&r, "SELECT count(*) FROM mailbox"), 0); /* nothing written */
        assert_int_equal(tc_ack(b, seqs, (size_t)n), 0);
        got += n;
    }
    msleep(200);
    assert_int_equal(relay_metric(&r, "hush_messages_unwritten_total"), N);
    assert_int_equal(relay_metric(&r, "hush_messages_written_late_total"), 0);
    tc_free(a);
    tc_free(b);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_and_cli),
        cmocka_unit_test(test_authentication),
        cmocka_unit_test(test_registration_policy),
        cmocka_unit_test(test_mailbox),
        cmocka_unit_test(test_send_rules),
        cmocka_unit_test(test_session_replaced),
        cmocka_unit_test(test_prekeys),
        cmocka_unit_test(test_presence),
        cmocka_unit_test(test_sigterm_and_health),
        cmocka_unit_test(test_early_delivery),
        cmocka_unit_test(test_room_fanout),
        cmocka_unit_test(test_room_early_delivery),
        cmocka_unit_test(test_window_backlog),
    };
    return cmocka_run_group_tests_name("relay", tests, NULL, NULL);
}
