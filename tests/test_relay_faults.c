/*
 * test_relay_faults.c - hushd under hostile input and crashes: oversize and endless frames,
 * garbage, slowloris, dead peers (keepalive), send floods, corrupt database files, TLS, kill -9
 * under load (nothing acknowledged is lost or duplicated), and the plaintext canary.
 * Numbers in brackets refer to the hostile cases listed in docs/AUDIT.md.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
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

/* Fresh clients can still register, log in and get a message through. */
static void relay_still_serves(const struct relay_proc *r, const char *name)
{
    struct tclient *c = tc_registered(r, name, 1);
    char other[40];
    snprintf(other, sizeof other, "%s2", name);
    struct tclient *s = tc_registered(r, other, 1);
    uint8_t env[32], mid[16];
    randombytes_buf(env, sizeof env);
    randombytes_buf(mid, sizeof mid);
    uint64_t seq = 0;
    assert_int_equal(tc_send(s, name, 1, env, sizeof env, mid, &seq), 0);
    tc_free(s);
    Hush__Frame *d = tc_next_push(c, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(d);
    assert_int_equal(d->deliver->seq, seq);
    hush__frame__free_unpacked(d, NULL);
    tc_free(c);
}

static int closed_within(struct wsc *w, int ms)
{
    uint8_t *junk = NULL;
    size_t jl = 0;
    for (;;) {
        int r = wsc_recv(w, &junk, &jl, ms);
        free(junk);
        junk = NULL;
        if (r == -1)
            return 1;
        if (r == 0)
            return 0;
    }
}

/* [17] [18] [20] frames over the cap, a 2^63 length, endless continuations, garbage. */
static void test_hostile_frames(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "hostile", NULL);

    /* Before authentication the cap is 16 KiB. */
    struct wsc *w = wsc_connect("127.0.0.1", r.port, 0, T);
    assert_non_null(w);
    uint8_t *big = calloc(1, 64 * 1024);
    assert_int_equal(wsc_send(w, big, 20 * 1024), 0);
    assert_true(closed_within(w, T));
    assert_int_equal(wsc_close_code(w), 1009);
    wsc_close(w);

    /* After authentication: 512 KiB cap. */
    struct tclient *c = tc_registered(&r, "hank", 1);
    assert_int_equal(wsc_send(c->ws, big, 60 * 1024), 0); /* under the cap: an error reply, still open */
    Hush__Frame *res = tc_next_push(c, HUSH__FRAME__MSG_RESULT, T);
    assert_non_null(res);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__BAD_REQUEST);
    hush__frame__free_unpacked(res, NULL);
    free(big);
    big = calloc(1, 600 * 1024);
    assert_int_equal(wsc_send(c->ws, big, 600 * 1024), 0);
    assert_true(closed_within(c->ws, T));
    free(big);
    tc_free(c);

    /* A header claiming 2^63 bytes: closed, nothing of that size allocated. */
    w = wsc_connect("127.0.0.1", r.port, 0, T);
    uint8_t hdr[14] = { 0x82, 0x80 | 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4 };
    assert_int_equal(wsc_send_raw(w, hdr, sizeof hdr), 0);
    uint8_t chunk[4096] = { 0 };
    for (int i = 0; i < 8 && !wsc_is_closed(w); i++)
        if (wsc_send_raw(w, chunk, sizeof chunk) != 0)
            break;
    assert_true(closed_within(w, T));
    wsc_close(w);

    /* Endless continuation fragments: closed at the byte cap, memory bounded. */
    w = wsc_connect("127.0.0.1", r.port, 0, T);
    assert_int_equal(wsc_send_frame(w, 2, 0, chunk, 1024), 0);
    int sent = 0;
    for (int i = 0; i < 200; i++) {
        if (wsc_send_frame(w, 0, 0, chunk, 1024) != 0)
            break;
        sent++;
    }
    assert_true(closed_within(w, T));
    wsc_close(w);

    /* Garbage before and after authentication; a text frame. */
    w = wsc_connect("127.0.0.1", r.port, 0, T);
    const char junk[] = "\xff\x00\x13garbage that is not a protobuf frame";
    assert_int_equal(wsc_send(w, junk, sizeof junk), 0);
    assert_true(closed_within(w, T));
    wsc_close(w);
    c = tc_registered(&r, "ines", 1);
    assert_int_equal(wsc_send(c->ws, junk, sizeof junk), 0);
    res = tc_next_push(c, HUSH__FRAME__MSG_RESULT, T);
    assert_non_null(res);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__BAD_REQUEST);
    hush__frame__free_unpacked(res, NULL);
    /* truncated valid frame */
    Hush__FetchBundlesRequest fb = HUSH__FETCH_BUNDLES_REQUEST__INIT;
    fb.username = "ines";
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = 99;
    f.msg_case = HUSH__FRAME__MSG_FETCH_BUNDLES;
    f.fetch_bundles = &fb;
    uint8_t buf[64];
    size_t n = hush__frame__pack(&f, buf);
    assert_int_equal(wsc_send(c->ws, buf, n - 2), 0);
    res = tc_next_push(c, HUSH__FRAME__MSG_RESULT, T);
    assert_non_null(res);
    hush__frame__free_unpacked(res, NULL);
    assert_int_equal(wsc_send_frame(c->ws, 1, 1, "text!", 5), 0);
    assert_true(closed_within(c->ws, T));
    tc_free(c);

    relay_still_serves(&r, "jade");
    assert_true(relay_metric(&r, "hush_errors_total{code=\"too_large\"}") >= 2);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* [19] slowloris: hundreds of sockets trickling headers; a legitimate client still gets in. */
static void test_slowloris(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "slowloris", NULL);
    enum { N = 300 };
    int fds[N];
    int opened = 0;
    for (int i = 0; i < N; i++) {
        fds[i] = wsc_tcp_connect("127.0.0.1", r.port, 1000);
        if (fds[i] >= 0) {
            opened++;
            if (send(fds[i], "GET / HTTP/1.1\r\nHost: x\r\n", 25, MSG_NOSIGNAL) < 0) {
            }
        }
    }
    assert_int_equal(opened, N);
    /* keep trickling a header byte now and then while a real client connects */
    time_t t0 = time(NULL);
    struct tclient *c = tc_registered(&r, "kurt", 1);
    assert_true(time(NULL) - t0 <= 3);
    tc_free(c);
    /* the trickling sockets are dropped by the header timeout */
    msleep(7000);
    int dropped = 0;
    for (int i = 0; i < N; i++) {
        char b;
        if (send(fds[i], "X", 1, MSG_NOSIGNAL) < 0 || recv(fds[i], &b, 1, MSG_DONTWAIT) == 0)
            dropped++;
        close(fds[i]);
    }
    assert_true(dropped > N * 9 / 10);
    relay_still_serves(&r, "lena");
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* Keepalive: a peer that stops answering pings is dropped after idle_timeout. */
static void test_keepalive(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "keepalive", "ping_interval = 1\nidle_timeout = 3");
    struct tclient *live = tc_registered(&r, "mark", 1);
    struct tclient *dead = tc_registered(&r, "nora", 1);
    /* mark keeps reading (and so answers pings); nora reads nothing for 6 s */
    for (int i = 0; i < 12; i++)
        assert_null(tc_next_push(live, HUSH__FRAME__MSG_CLOSING, 500));
    assert_false(wsc_is_closed(live->ws));
    uint8_t *junk = NULL;
    size_t jl;
    int r1;
    do {
        r1 = wsc_recv(dead->ws, &junk, &jl, 100);
        free(junk);
        junk = NULL;
    } while (r1 == 1);
    /* by now nora's socket has been closed by the relay */
    assert_true(r1 == -1 || closed_within(dead->ws, 2000));
    assert_int_equal(relay_metric(&r, "hush_authenticated_connections"), 1);
    tc_free(live);
    tc_free(dead);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* [16] a flood from one sender is throttled; the recipient's quota holds; others are unaffected. */
static void test_flood(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "flood", "send_burst = 50\nsend_refill_per_s = 10\nquota_messages = 1000");
    struct tclient *f = tc_registered(&r, "otto", 1);
    struct tclient *v = tc_registered(&r, "paul", 1);
    struct tclient *o = tc_registered(&r, "quin", 1);
    int ok = 0, limited = 0;
    for (int i = 0; i < 120; i++) {
        uint8_t env[64], mid[16];
        randombytes_buf(env, sizeof env);
        randombytes_buf(mid, sizeof mid);
        int code = tc_send(f, "paul", 1, env, sizeof env, mid, NULL);
        if (code == 0)
            ok++;
        else if (code == HUSH__ERROR_CODE__RATE_LIMITED)
            limited++;
        else
            fail_msg("unexpected code %d", code);
    }
    assert_true(ok >= 50 && ok < 100);
    assert_true(limited > 20);
    /* another sender is not throttled by otto's flood */
    uint8_t env[64], mid[16];
    randombytes_buf(env, sizeof env);
    randombytes_buf(mid, sizeof mid);
    assert_int_equal(tc_send(o, "paul", 1, env, sizeof env, mid, NULL), 0);
    tc_free(f);
    tc_free(v);
    tc_free(o);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* [22] a corrupt or truncated relay database: a clear error at start, no crash. */
static void test_corrupt_database(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "corrupt", NULL);
    struct tclient *c = tc_registered(&r, "rosa", 1);
    tc_free(c);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
    /* truncate the database */
    FILE *f = fopen(r.db, "r+b");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    assert_int_equal(truncate(r.db, size / 2 > 4096 ? 4096 + 100 : size / 2), 0);
    unlink(r.db);
    f = fopen(r.db, "wb");
    for (int i = 0; i < 8192; i++)
        fputc(i * 13, f);
    fclose(f);
    char cmd[1024], out[400];
    snprintf(out, sizeof out, "%s/corrupt.out", r.dir);
    snprintf(cmd, sizeof cmd, "%s --config %s > %s 2>&1", getenv("HUSHD"), r.config, out);
    int st = system(cmd);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 1);
    assert_true(file_contains(out, "not a database", 14));
}

/* TLS: wss:// with a self-signed certificate made by openssl. */
static void test_tls(void **state)
{
    (void)state;
    char cert[300], key[300];
    snprintf(cert, sizeof cert, "%s", tpath("cert.pem"));
    snprintf(key, sizeof key, "%s", tpath("key.pem"));
    make_test_cert(cert, key);
    char extra[800];
    snprintf(extra, sizeof extra, "tls_cert = %s\ntls_key = %s", cert, key);
    struct relay_proc r;
    relay_start(&r, "tls", extra);
    struct tclient *a = tc_registered(&r, "sven", 1);
    struct tclient *b = tc_registered(&r, "tina", 1);
    assert_int_equal(tc_start_session(a, "tina"), 0);
    uint8_t *env = NULL, mid[16];
    size_t len;
    assert_int_equal(hush_encrypt(a->sdk, "tina", 1, (const uint8_t *)"over tls", 8, NULL, mid, &env, &len), HUSH_OK);
    assert_int_equal(tc_send(a, "tina", 1, env, len, mid, NULL), 0);
    hush_free(env);
    Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(d);
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(b->sdk, "sven", 1, d->deliver->envelope.data, d->deliver->envelope.len, &m), HUSH_OK);
    assert_string_equal((char *)m->body, "over tls");
    hush_message_free(m);
    hush__frame__free_unpacked(d, NULL);
    /* a plain ws:// client is not understood by the TLS listener */
    assert_null(wsc_connect("127.0.0.1", r.port, 0, 2000));
    /* A proof carries its connection's TLS channel binding: signed with another connection's (as
     * for a man in the middle relaying this relay's challenge to the victim) it is refused. */
    assert_int_equal(tc_reconnect(a), 0);
    struct wsc *other = wsc_connect("127.0.0.1", r.port, 1, T);
    assert_non_null(other);
    uint8_t wrong[32], sig[64];
    assert_int_equal(wsc_tls_binding(other, wrong), 32);
    char origin[HWIRE_ORIGIN_MAX + 1];
    assert_int_equal(hwire_origin(origin, sizeof origin, 1, "127.0.0.1", r.port), 0);
    assert_int_equal(hush_auth_proof(a->sdk, HWIRE_PURPOSE_LOGIN, origin, wrong, 32, NULL, a->challenge, sig), HUSH_OK);
    Hush__LoginRequest l = HUSH__LOGIN_REQUEST__INIT;
    l.username = "sven";
    l.device_id = 1;
    l.signature.data = sig;
    l.signature.len = 64;
    l.origin = origin;
    Hush__Frame lf = HUSH__FRAME__INIT;
    lf.msg_case = HUSH__FRAME__MSG_LOGIN;
    lf.login = &l;
    Hush__Frame *res = tc_request(a, &lf, T);
    assert_non_null(res);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__AUTH_FAILED);
    hush__frame__free_unpacked(res, NULL);
    wsc_close(other);
    /* with its own connection's binding it logs in */
    assert_int_equal(tc_reconnect(a), 0);
    assert_int_equal(tc_login(a), 0);
    tc_free(a);
    tc_free(b);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* [1] kill -9 under load, many times: every acknowledged message is delivered exactly once after
 * the restarts, and PRAGMA integrity_check is ok. */
static void test_kill9_under_load(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "kill9", "quota_messages = 200000"); /* up to 40,000 messages from one sender wait */
    struct tclient *s = tc_registered(&r, "uwe", 1);
    struct tclient *d = tc_registered(&r, "vera", 1);
    tc_disconnect(d);
    enum { KILLS = 12, MAXMSG = 40000 };
    static uint8_t acked[MAXMSG];
    static uint8_t seen[MAXMSG];
    memset(acked, 0, sizeof acked);
    memset(seen, 0, sizeof seen);
    int next = 0, total_acked = 0, lost_replies = 0;
    rnd_seed(42);
    for (int k = 0; k < KILLS; k++) {
        /* a child process kills the relay at a random moment while we send: 50-300 ms after this
         * round's first acknowledged message (so a loaded machine still has each round send) */
        int go[2];
        assert_int_equal(pipe(go), 0);
        long delay = 50 + (long)(rnd() % 250);
        pid_t killer = fork();
        if (killer == 0) {
            char b;
            close(go[1]);
            if (read(go[0], &b, 1) == 1)
                msleep(delay);
            kill(r.pid, SIGKILL);
            _exit(0);
        }
        close(go[0]);
        int started = 0;
        for (;;) {
            if (next >= MAXMSG)
                break;
            uint8_t env[80], mid[16];
            randombytes_buf(env, sizeof env);
            memset(mid, 0, sizeof mid);
            memcpy(mid, &next, sizeof next); /* the message number rides in the client id */
            memcpy(env, &next, sizeof next);
            int code = tc_send(s, "vera", 1, env, sizeof env, mid, NULL);
            if (code == 0) {
                acked[next] = 1;
                total_acked++;
                next++;
                if (!started && write(go[1], "g", 1) == 1)
                    started = 1;
            } else {
                lost_replies++; /* no ack: the sender would retry with the same id */
                break;
            }
        }
        close(go[1]); /* a round cut off before its first ack: the killer goes at once */
        int st;
        waitpid(killer, &st, 0);
        waitpid(r.pid, &st, 0);
        r.pid = 0;
        /* the database survives every kill */
        sqlite3 *db = NULL;
        assert_int_equal(sqlite3_open_v2(r.db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
        sqlite3_stmt *q = NULL;
        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(q), SQLITE_ROW);
        assert_string_equal((const char *)sqlite3_column_text(q, 0), "ok");
        sqlite3_finalize(q);
        sqlite3_close(db);
        relay_restart(&r);
        assert_int_equal(tc_reconnect(s), 0);
        assert_int_equal(tc_login(s), 0);
        /* retry the unacknowledged one with the same id: stored at most once */
        if (next < MAXMSG && !acked[next]) {
            uint8_t env[80], mid[16];
            randombytes_buf(env, sizeof env);
            memset(mid, 0, sizeof mid);
            memcpy(mid, &next, sizeof next);
            memcpy(env, &next, sizeof next);
            assert_int_equal(tc_send(s, "vera", 1, env, sizeof env, mid, NULL), 0);
            acked[next] = 1;
            total_acked++;
            next++;
        }
    }
    print_message("kill -9: %d kills, %d messages acknowledged, %d sends cut off by a kill\n", KILLS, total_acked,
                  lost_replies);
    assert_true(total_acked >= KILLS); /* every round sent something before its kill */
    /* the recipient drains everything: each acknowledged message exactly once */
    assert_int_equal(tc_reconnect(d), 0);
    assert_int_equal(tc_login(d), 0);
    int got = 0;
    for (;;) {
        Hush__Frame *f = tc_next_push(d, HUSH__FRAME__MSG_DELIVER, 3000);
        if (!f)
            break;
        int num;
        memcpy(&num, f->deliver->envelope.data, sizeof num);
        assert_true(num >= 0 && num < MAXMSG);
        if (seen[num])
            fail_msg("message %d delivered twice", num);
        seen[num] = 1;
        got++;
        uint64_t seq = f->deliver->seq;
        hush__frame__free_unpacked(f, NULL);
        assert_int_equal(tc_ack(d, &seq, 1), 0);
    }
    for (int i = 0; i < next; i++)
        if (acked[i] && !seen[i])
            fail_msg("acknowledged message %d lost", i);
    assert_int_equal(got, total_acked);
    tc_free(s);
    tc_free(d);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* [25] the relay's database, log and traffic never hold a plaintext. */
static void test_canary(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "canary", NULL);
    struct tclient *a = tc_registered(&r, "walt", 1);
    struct tclient *b = tc_registered(&r, "xena", 1);
    assert_int_equal(tc_start_session(a, "xena"), 0);
    const char *canary = "CANARY-relay-9b41e2-this-text-must-never-reach-the-relay-in-clear";
    FILE *cap = fopen(tpath("traffic.bin"), "wb");
    wsc_capture(cap); /* ws:// here, so these are the exact bytes on the wire, both directions */
    tc_disconnect(b); /* stored, not only relayed */
    for (int i = 0; i < 20; i++) {
        uint8_t *env = NULL, mid[16];
        size_t len;
        assert_int_equal(hush_encrypt(a->sdk, "xena", 1, (const uint8_t *)canary, strlen(canary), NULL, mid, &env, &len),
                         HUSH_OK);
        assert_int_equal(tc_send(a, "xena", 1, env, len, mid, NULL), 0);
        hush_free(env);
    }
    assert_int_equal(tc_reconnect(b), 0);
    assert_int_equal(tc_login(b), 0);
    for (int i = 0; i < 20; i++) {
        Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
        assert_non_null(d);
        hush_message *m = NULL;
        assert_int_equal(hush_decrypt(b->sdk, "walt", 1, d->deliver->envelope.data, d->deliver->envelope.len, &m), HUSH_OK);
        assert_string_equal((char *)m->body, canary); /* the canary really was in these messages */
        hush_message_free(m);
        uint64_t seq = d->deliver->seq;
        hush__frame__free_unpacked(d, NULL);
        if (i >= 10)
            assert_int_equal(tc_ack(b, &seq, 1), 0); /* half stay stored */
    }
    wsc_capture(NULL);
    fclose(cap);
    tc_free(a);
    tc_free(b);
    /* while the database still holds copies: check before and after a clean stop */
    char wal[320];
    snprintf(wal, sizeof wal, "%s-wal", r.db);
    assert_false(file_contains(r.db, canary, strlen(canary)));
    assert_false(file_contains(wal, canary, strlen(canary)));
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
    assert_false(file_contains(r.db, canary, strlen(canary)));
    assert_false(file_contains(r.log, canary, strlen(canary)));
    assert_false(file_contains(tpath("traffic.bin"), canary, strlen(canary)));
    /* and the search itself works: usernames are in the log and in both directions of traffic */
    assert_true(file_contains(r.log, "walt", 4));
    assert_true(file_contains(tpath("traffic.bin"), "xena", 4)); /* client -> relay (Send) */
    assert_true(file_contains(tpath("traffic.bin"), "walt", 4)); /* relay -> client (Deliver) */
}

/* hushd --supervise: the child is restarted after kill -9; SIGTERM to the parent stops both. */
static void test_supervisor(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "supervise", NULL);
    struct tclient *c = tc_registered(&r, "yves", 1);
    tc_free(c);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
    pid_t parent = fork();
    if (parent == 0) {
        execl(getenv("HUSHD"), "hushd", "--supervise", "--config", r.config, (char *)NULL);
        _exit(127);
    }
    pid_t child = 0;
    for (int i = 0; i < 100 && !child; i++) {
        msleep(100);
        char cmd[64], line[32];
        snprintf(cmd, sizeof cmd, "pgrep -P %d", (int)parent);
        FILE *p = popen(cmd, "r");
        if (p && fgets(line, sizeof line, p))
            child = atoi(line);
        if (p)
            pclose(p);
    }
    assert_true(child > 0);
    r.pid = child; /* for the helpers' health checks */
    c = tc_new(&r, "yves", 1);
    assert_int_equal(tc_login(c), 0);
    tc_disconnect(c);
    kill(child, SIGKILL);
    pid_t child2 = 0;
    for (int i = 0; i < 100 && (!child2 || child2 == child); i++) {
        msleep(100);
        char cmd[64], line[32];
        snprintf(cmd, sizeof cmd, "pgrep -P %d", (int)parent);
        FILE *p = popen(cmd, "r");
        child2 = (p && fgets(line, sizeof line, p)) ? atoi(line) : 0;
        if (p)
            pclose(p);
    }
    assert_true(child2 > 0 && child2 != child);
    int ok = 0;
    for (int i = 0; i < 100 && !ok; i++) {
        msleep(100);
        ok = tc_reconnect(c) == 0;
    }
    assert_true(ok);
    assert_int_equal(tc_login(c), 0);
    tc_free(c);
    kill(parent, SIGTERM);
    int st = 0;
    assert_int_equal(waitpid(parent, &st, 0), parent);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_int_equal(kill(child2, 0), -1); /* the child is gone too */
}

/* [3] Disk full under the relay's database (a small tmpfs; skipped where one cannot be mounted):
 * senders get STORAGE_FAILED, never an ack for what was not stored; reads keep being served; once
 * space is back everything works again, every acknowledged message is delivered exactly once and
 * the database passes integrity_check. */
#define DF_MAX 4000
static void test_disk_full(void **state)
{
    (void)state;
    char mnt[300], cmd[700];
    snprintf(mnt, sizeof mnt, "%s", tpath("diskfull-mnt"));
    mkdir(mnt, 0700);
    snprintf(cmd, sizeof cmd, "mount -t tmpfs -o size=3m tmpfs '%s' 2>/dev/null", mnt);
    if (system(cmd) != 0) {
        print_message("skipped: cannot mount a tmpfs here (needs root)\n");
        skip();
    }
    char extra[700];
    snprintf(extra, sizeof extra, "db = %s/hushd.db\nquota_messages = 1000000\nquota_bytes = 1g\n"
                                  "send_burst = 1000000\nsend_refill_per_s = 1000000", mnt);
    struct relay_proc r;
    relay_start(&r, "diskfull", extra);
    struct tclient *a = tc_registered(&r, "vera", 1);
    struct tclient *b = tc_registered(&r, "walt", 1);
    tc_disconnect(b);
    /* leave about 400 KiB free */
    struct statvfs sv;
    assert_int_equal(statvfs(mnt, &sv), 0);
    long long avail = (long long)sv.f_bavail * (long long)sv.f_frsize - 400 * 1024;
    char filler[400];
    snprintf(filler, sizeof filler, "%s/filler", mnt);
    FILE *f = fopen(filler, "wb");
    assert_non_null(f);
    static uint8_t block[65536];
    for (long long w = 0; w + (long long)sizeof block <= avail; w += (long long)sizeof block)
        if (fwrite(block, 1, sizeof block, f) != sizeof block)
            break;
    fclose(f);

    static uint8_t acked[DF_MAX], seen[DF_MAX];
    memset(acked, 0, sizeof acked);
    memset(seen, 0, sizeof seen);
    int next = 0, nacked = 0, failed = 0;
    while (next < DF_MAX && failed < 10) {
        uint8_t env[3000], mid[16];
        randombytes_buf(env, sizeof env);
        memcpy(env, &next, sizeof next);
        randombytes_buf(mid, sizeof mid);
        int code = tc_send(a, "walt", 1, env, sizeof env, mid, NULL);
        if (code == 0) {
            acked[next] = 1;
            nacked++;
        } else if (code == HUSH__ERROR_CODE__STORAGE_FAILED) {
            failed++;
        } else {
            fail_msg("send %d: unexpected code %d while the disk is full", next, code);
        }
        next++;
    }
    assert_true(failed > 0); /* the disk did fill up */
    assert_true(nacked > 10);
    /* reads are still served */
    Hush__Frame *fr = tc_fetch(a, "walt");
    assert_non_null(fr);
    assert_int_equal(fr->msg_case, HUSH__FRAME__MSG_RESULT);
    hush__frame__free_unpacked(fr, NULL);
    /* space comes back: sends are acknowledged again */
    assert_int_equal(unlink(filler), 0);
    int after = 0;
    for (int i = 0; i < 20 && next < DF_MAX; i++, next++) {
        uint8_t env[3000], mid[16];
        randombytes_buf(env, sizeof env);
        memcpy(env, &next, sizeof next);
        randombytes_buf(mid, sizeof mid);
        if (tc_send(a, "walt", 1, env, sizeof env, mid, NULL) == 0) {
            acked[next] = 1;
            nacked++;
            after++;
        }
    }
    assert_int_equal(after, 20);
    /* every acknowledged message reaches walt once */
    assert_int_equal(tc_reconnect(b), 0);
    assert_int_equal(tc_login(b), 0);
    int got = 0;
    for (;;) {
        Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, 3000);
        if (!d)
            break;
        int idx = -1;
        if (d->deliver->envelope.len == 3000)
            memcpy(&idx, d->deliver->envelope.data, sizeof idx);
        assert_true(idx >= 0 && idx < DF_MAX);
        assert_true(acked[idx]);   /* nothing that was refused shows up */
        assert_false(seen[idx]);   /* nor twice */
        seen[idx] = 1;
        got++;
        uint64_t seq = d->deliver->seq;
        hush__frame__free_unpacked(d, NULL);
        assert_int_equal(tc_ack(b, &seq, 1), 0);
    }
    assert_int_equal(got, nacked);
    print_message("disk full after %d acked sends (%d refused with STORAGE_FAILED); all %d acked delivered once\n",
                  nacked - after, failed, nacked);
    tc_free(a);
    tc_free(b);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
    snprintf(cmd, sizeof cmd, "sqlite3 '%s/hushd.db' 'PRAGMA integrity_check' | grep -qx ok", mnt);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "umount '%s'", mnt);
    if (system(cmd) != 0)
        print_message("could not unmount %s\n", mnt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_frames),
        cmocka_unit_test(test_slowloris),
        cmocka_unit_test(test_keepalive),
        cmocka_unit_test(test_flood),
        cmocka_unit_test(test_corrupt_database),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_kill9_under_load),
        cmocka_unit_test(test_canary),
        cmocka_unit_test(test_supervisor),
        cmocka_unit_test(test_disk_full),
    };
    return cmocka_run_group_tests_name("relay_faults", tests, NULL, NULL);
}
