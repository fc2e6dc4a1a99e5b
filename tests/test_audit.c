/*
 * test_audit.c - regression tests for defects an outside security review found in hushd, each
 * against the real relay on loopback over real WebSockets: large frames that disconnected the
 * recipient, unbounded storage work from one connection, a rate-limit map that failed open,
 * prekey-low storms, one sender filling another's mailbox, the login timing oracle, a slow client
 * holding /healthz, two relays on one port, oversized frames announced in the header, and config
 * size suffixes that overflowed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>
#include <sqlite3.h>

#include "hush_wire.h"
#include "relay_util.h"
#include "util.h"

#define T 10000

static __attribute__((unused)) void msleep(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* A field of /proc/PID/status in KiB (VmRSS, VmHWM). */
static long proc_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long v = -1;
    size_t fl = strlen(field);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, fl) && line[fl] == ':')
            v = atol(line + fl + 1);
    fclose(f);
    return v;
}

/* 1 when the relay closed the connection within ms (frames before the close are skipped). */
static int closed_within(struct wsc *w, int ms)
{
    uint8_t *junk = NULL;
    size_t jl = 0;
    long until = now_ms() + ms;
    for (;;) {
        long left = until - now_ms();
        if (left <= 0)
            return 0;
        int r = wsc_recv(w, &junk, &jl, (int)left);
        free(junk);
        junk = NULL;
        if (r == -1)
            return 1;
        if (r == 0)
            return 0;
    }
}

static void rand_id(uint8_t id[16])
{
    randombytes_buf(id, 16);
}

/* Sends one request without waiting for its answer. */
static int send_nowait(struct tclient *c, Hush__Frame *f)
{
    size_t n = hush__frame__get_packed_size(f);
    uint8_t *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    hush__frame__pack(f, buf);
    int r = wsc_send(c->ws, buf, n);
    free(buf);
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* Large frames: a backlog of 200 KiB envelopes drains, and a burst of two large ephemeral
 * frames leaves the recipient connected (lws buffers part of a large write; the relay used to
 * treat the next short write as an error and close the connection). */
static void test_large_frames_drain(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "largeframes", NULL);
    struct tclient *a = tc_registered(&r, "alma", 1);
    struct tclient *b = tc_registered(&r, "bert", 1);
    tc_disconnect(b);
    enum { N = 50, SZ = 200 * 1024 };
    uint8_t *env = malloc(SZ);
    assert_non_null(env);
    for (int i = 0; i < N; i++) {
        randombytes_buf(env, SZ);
        uint8_t mid[16];
        rand_id(mid);
        assert_int_equal(tc_send(a, "bert", 1, env, SZ, mid, NULL), 0);
    }
    assert_int_equal(tc_reconnect(b), 0);
    assert_int_equal(tc_login(b), 0);
    int got = 0;
    for (int i = 0; i < N; i++) {
        Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
        if (!d)
            break;
        assert_int_equal(d->deliver->envelope.len, SZ);
        uint64_t seq = d->deliver->seq;
        hush__frame__free_unpacked(d, NULL);
        got++;
        /* acknowledge in batches, as the SDK does, so the window refills */
        if (got % 16 == 0 || got == N) {
            Hush__AckRequest ack = HUSH__ACK_REQUEST__INIT;
            ack.n_seqs = 1;
            ack.seqs = &seq;
            Hush__Frame f = HUSH__FRAME__INIT;
            f.msg_case = HUSH__FRAME__MSG_ACK;
            f.ack = &ack;
            assert_int_equal(send_nowait(b, &f), 0);
        }
    }
    print_message("large frames: %d of %d 200 KiB envelopes delivered on one connection\n", got, N);
    assert_int_equal(got, N);
    assert_false(wsc_is_closed(b->ws));

    /* one ephemeral send naming the recipient twice: two 100 KiB frames back to back */
    enum { ESZ = 100 * 1024 };
    uint8_t *e1 = malloc(ESZ);
    assert_non_null(e1);
    randombytes_buf(e1, ESZ);
    Hush__Recipient rc = HUSH__RECIPIENT__INIT;
    rc.username = "bert";
    rc.device_id = 1;
    rc.envelope.data = e1;
    rc.envelope.len = ESZ;
    Hush__Recipient *rcs[2] = { &rc, &rc };
    uint8_t mid[16];
    rand_id(mid);
    Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
    s.client_msg_id.data = mid;
    s.client_msg_id.len = 16;
    s.n_recipients = 2;
    s.recipients = rcs;
    s.ephemeral = 1;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_SEND;
    f.send = &s;
    Hush__Frame *res = tc_request(a, &f, T);
    assert_non_null(res);
    assert_int_equal(res->result->code, 0);
    hush__frame__free_unpacked(res, NULL);
    for (int i = 0; i < 2; i++) {
        Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
        assert_non_null(d);
        assert_int_equal(d->deliver->seq, 0);
        assert_int_equal(d->deliver->envelope.len, ESZ);
        hush__frame__free_unpacked(d, NULL);
    }
    /* still connected: a stored message arrives on the same connection */
    uint8_t small[64];
    randombytes_buf(small, sizeof small);
    rand_id(mid);
    uint64_t seq = 0;
    assert_int_equal(tc_send(a, "bert", 1, small, sizeof small, mid, &seq), 0);
    Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(d);
    assert_int_equal(d->deliver->seq, seq);
    hush__frame__free_unpacked(d, NULL);
    free(e1);
    free(env);
    tc_free(a);
    tc_free(b);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* One connection pipelining acks that get no reply (id 0) must not grow the relay's memory
 * without bound nor starve other users' requests. */
static void test_storage_jobs_bounded(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "jobcap", NULL);
    struct tclient *a = tc_registered(&r, "carl", 1);
    struct tclient *o = tc_registered(&r, "dora", 1);
    long rss0 = proc_kib(r.pid, "VmRSS");
    /* Give up writing when the relay stops reading for 3 s (it is allowed to). */
    struct timeval tv = { 3, 0 };
    setsockopt(wsc_fd(a->ws), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    enum { NSEQ = 4096, NACK = 8000 };
    uint64_t *seqs = malloc(NSEQ * sizeof *seqs);
    assert_non_null(seqs);
    for (int i = 0; i < NSEQ; i++)
        seqs[i] = 1000000000ull + (uint64_t)i * 7919;
    Hush__AckRequest ack = HUSH__ACK_REQUEST__INIT;
    ack.n_seqs = NSEQ;
    ack.seqs = seqs;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_ACK;
    f.ack = &ack;
    f.id = 0;
    size_t n = hush__frame__get_packed_size(&f);
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    hush__frame__pack(&f, buf);
    int sent = 0;
    long peak = 0;
    for (int i = 0; i < NACK; i++) {
        if (wsc_send(a->ws, buf, n) != 0)
            break;
        sent++;
        if (i % 256 == 0) {
            long v = proc_kib(r.pid, "VmRSS");
            if (v > peak)
                peak = v;
        }
    }
    /* another user is still served */
    uint8_t env[64], mid[16];
    randombytes_buf(env, sizeof env);
    rand_id(mid);
    assert_int_equal(tc_send(o, "dora", 1, env, sizeof env, mid, NULL), 0);
    long v = proc_kib(r.pid, "VmRSS");
    if (v > peak)
        peak = v;
    print_message("ack flood: %d acks of %d seqs (%zu bytes each) written; relay RSS %ld -> peak %ld KiB\n", sent, NSEQ,
                  n, rss0, peak);
    /* each queued ack holds ~32 KiB of seqs: 8,000 of them would be ~250 MiB */
    assert_true(peak - rss0 < 64 * 1024);
    free(buf);
    free(seqs);
    tc_free(a);
    tc_free(o);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* A frame header announcing more than the cap is closed with 1009 at once, before any payload;
 * so is a message assembled from small fragments past the pre-login cap. */
static void test_oversize_header_closed(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "bighdr", NULL);

    /* before login: 2^40 announced, 4 payload bytes */
    struct wsc *w = wsc_connect("127.0.0.1", r.port, 0, T);
    assert_non_null(w);
    uint8_t hdr[18] = { 0x82, 0x80 | 127, 0, 0, 0, 0x01, 0, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9 };
    assert_int_equal(wsc_send_raw(w, hdr, sizeof hdr), 0);
    assert_true(closed_within(w, 3000));
    assert_int_equal(wsc_close_code(w), 1009);
    wsc_close(w);

    /* after login: 1 MiB announced (cap 512 KiB), one payload byte */
    struct tclient *c = tc_registered(&r, "emil", 1);
    uint8_t hdr2[15] = { 0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4, 7 };
    assert_int_equal(wsc_send_raw(c->ws, hdr2, sizeof hdr2), 0);
    assert_true(closed_within(c->ws, 3000));
    assert_int_equal(wsc_close_code(c->ws), 1009);
    tc_free(c);

    /* before login: fragments of 100 bytes past the 16 KiB cap */
    w = wsc_connect("127.0.0.1", r.port, 0, T);
    uint8_t chunk[100] = { 0 };
    assert_int_equal(wsc_send_frame(w, 2, 0, chunk, sizeof chunk), 0);
    /* just past the cap (16,500 bytes), then nothing more: further writes to a socket the relay
     * closed would reset it before the close frame is read */
    for (int i = 0; i < 164; i++)
        if (wsc_send_frame(w, 0, 0, chunk, sizeof chunk) != 0)
            break;
    assert_true(closed_within(w, 3000));
    assert_int_equal(wsc_close_code(w), 1009);
    wsc_close(w);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* A second hushd on the same port (even with another database) or on the same database (even on
 * another port) refuses to start with a clear message, and the first keeps serving. */
static int run_second(const struct relay_proc *r, const char *name, int port, const char *db, char *out, size_t outcap)
{
    char conf[320], log[320], cmd[1200];
    snprintf(conf, sizeof conf, "%s/%s.conf", r->dir, name);
    snprintf(log, sizeof log, "%s/%s.out", r->dir, name);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "listen = 127.0.0.1:%d\nmetrics_listen = off\ndb = %s\nworkers = 2\n", port, db);
    fclose(f);
    /* if it starts, it is stopped after 5 s (exit 124) */
    snprintf(cmd, sizeof cmd, "timeout 5 %s --config %s > %s 2>&1", getenv("HUSHD"), conf, log);
    int st = system(cmd);
    f = fopen(log, "r");
    size_t n = f ? fread(out, 1, outcap - 1, f) : 0;
    out[n] = '\0';
    if (f)
        fclose(f);
    return WEXITSTATUS(st);
}

static void test_one_relay_per_port_and_db(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "exclusive", NULL);
    char out[2048], otherdb[320];
    snprintf(otherdb, sizeof otherdb, "%s/other.db", r.dir);
    assert_int_equal(run_second(&r, "sameport", r.port, otherdb, out, sizeof out), 1);
    print_message("second relay on the same port: %s", out);
    assert_non_null(strstr(out, "already listening"));
    assert_int_equal(run_second(&r, "samedb", relay_free_port(), r.db, out, sizeof out), 1);
    print_message("second relay on the same database: %s", out);
    assert_non_null(strstr(out, "another hushd is already serving this database"));
    /* the first one still serves every client */
    for (int i = 0; i < 8; i++) {
        char name[16];
        snprintf(name, sizeof name, "solo%d", i);
        struct tclient *c = tc_registered(&r, name, 1);
        tc_free(c);
    }
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
    /* and once it stopped, the database is free again */
    assert_int_equal(run_second(&r, "after", relay_free_port(), r.db, out, sizeof out), 124);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_large_frames_drain),
        cmocka_unit_test(test_storage_jobs_bounded),
        cmocka_unit_test(test_oversize_header_closed),
        cmocka_unit_test(test_one_relay_per_port_and_db),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
