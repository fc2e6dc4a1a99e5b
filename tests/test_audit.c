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

static void msleep(long ms)
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
    /* Under AddressSanitizer freed memory waits in a quarantine (256 MiB by default) and would
     * count as the relay's: keep it small so RSS measures what the relay holds. */
    char *asan_old = getenv("ASAN_OPTIONS") ? strdup(getenv("ASAN_OPTIONS")) : NULL;
    char asan[512];
    snprintf(asan, sizeof asan, "%s%squarantine_size_mb=4", asan_old ? asan_old : "", asan_old && *asan_old ? ":" : "");
    setenv("ASAN_OPTIONS", asan, 1);
    /* the other user reads nothing while the flood lasts (under AddressSanitizer, longer than the
     * default 45 s idle timeout): keepalive is not what this test is about */
    relay_start(&r, "jobcap", "ping_interval = 600\nidle_timeout = 1200");
    if (asan_old)
        setenv("ASAN_OPTIONS", asan_old, 1);
    else
        unsetenv("ASAN_OPTIONS");
    free(asan_old);
    struct tclient *a = tc_registered(&r, "carl", 1);
    struct tclient *o = tc_registered(&r, "dora", 1);
    long rss0 = relay_proc_kib(r.pid, "VmRSS");
    /* no core file can hold what the relay has in memory */
    char lim[64], line[256];
    snprintf(lim, sizeof lim, "/proc/%d/limits", (int)r.pid);
    FILE *lf = fopen(lim, "r");
    int core_off = 0;
    while (lf && fgets(line, sizeof line, lf))
        if (!strncmp(line, "Max core file size", 18)) {
            char soft[32] = "", hard[32] = "";
            core_off = sscanf(line + 18, "%31s %31s", soft, hard) == 2 && !strcmp(soft, "0") && !strcmp(hard, "0");
        }
    if (lf)
        fclose(lf);
    assert_true(core_off);
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
            long v = relay_proc_kib(r.pid, "VmRSS");
            if (v > peak)
                peak = v;
        }
    }
    /* another user is still served */
    uint8_t env[64], mid[16];
    randombytes_buf(env, sizeof env);
    rand_id(mid);
    assert_int_equal(tc_send(o, "carl", 1, env, sizeof env, mid, NULL), 0);
    long v = relay_proc_kib(r.pid, "VmRSS");
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
    /* the last fragment crosses the cap (16,400 bytes in all), then nothing more: a write after
     * the relay closed (on a loaded machine the relay may read late) would reset the socket
     * before the close frame is read */
    for (int i = 0; i < 163; i++)
        if (wsc_send_frame(w, 0, 0, chunk, sizeof chunk) != 0)
            break;
    assert_true(closed_within(w, 3000));
    assert_int_equal(wsc_close_code(w), 1009);
    wsc_close(w);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* A request sent as many WebSocket fragments (first binary, then continuations, pieces far from
 * the frame boundaries) is reassembled byte for byte and answered; a message that starts as a text
 * frame is closed with 1003. */
static void test_fragmented_request(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "frag", NULL);
    struct tclient *a = tc_registered(&r, "fraga", 1);
    struct tclient *b = tc_registered(&r, "fragb", 1);

    uint8_t env[40000];
    for (size_t i = 0; i < sizeof env; i++)
        env[i] = (uint8_t)(i * 13 + 1);
    uint8_t mid[16] = { 9, 9, 9 };
    Hush__Recipient rc = HUSH__RECIPIENT__INIT;
    rc.username = "fragb";
    rc.device_id = 1;
    rc.envelope.data = env;
    rc.envelope.len = sizeof env;
    Hush__Recipient *rcs[1] = { &rc };
    Hush__SendRequest sr = HUSH__SEND_REQUEST__INIT;
    sr.client_msg_id.data = mid;
    sr.client_msg_id.len = 16;
    sr.n_recipients = 1;
    sr.recipients = rcs;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = 777;
    f.msg_case = HUSH__FRAME__MSG_SEND;
    f.send = &sr;
    size_t n = hush__frame__get_packed_size(&f);
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    hush__frame__pack(&f, buf);
    size_t off = 0, sizes[] = { 1, 999, 7000, 3, 12000 };
    for (int i = 0; off < n; i++) {
        size_t len = sizes[i % 5];
        if (len > n - off)
            len = n - off;
        assert_int_equal(wsc_send_frame(a->ws, i == 0 ? 2 : 0, off + len == n, buf + off, len), 0);
        off += len;
    }
    free(buf);
    int answered = 0;
    for (int tries = 0; tries < 50 && !answered; tries++) {
        uint8_t *in = NULL;
        size_t inlen = 0;
        if (wsc_recv(a->ws, &in, &inlen, 1000) != 1)
            continue;
        Hush__Frame *g = hush__frame__unpack(NULL, inlen, in);
        free(in);
        if (g && g->id == 777 && g->msg_case == HUSH__FRAME__MSG_RESULT) {
            assert_int_equal(g->result->code, HUSH__ERROR_CODE__OK);
            assert_int_equal(g->result->n_seqs, 1);
            answered = 1;
        }
        if (g)
            hush__frame__free_unpacked(g, NULL);
    }
    assert_true(answered);
    Hush__Frame *d = tc_next_push(b, HUSH__FRAME__MSG_DELIVER, T);
    assert_non_null(d);
    assert_int_equal(d->deliver->envelope.len, sizeof env);
    assert_memory_equal(d->deliver->envelope.data, env, sizeof env);
    hush__frame__free_unpacked(d, NULL);

    /* a text frame, even fragmented, is not a Hush frame */
    assert_int_equal(wsc_send_frame(a->ws, 1, 0, "hello", 5), 0);
    assert_true(closed_within(a->ws, 3000));
    assert_int_equal(wsc_close_code(a->ws), 1003);
    tc_free(a);
    tc_free(b);
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

/* ------------------------------------------------------------------------------------------ */
/* Bundle-fetch limits do not fail open: fetches of made-up names create no per-target state and
 * count against the requester's overall limit, so they cannot wipe the limit that protects
 * another user's one-time prekeys. */
static int fetch_code(Hush__Frame *r, int *with_otk)
{
    if (!r)
        return -1;
    int code = r->msg_case == HUSH__FRAME__MSG_RESULT ? (int)r->result->code : -2;
    if (with_otk)
        *with_otk = code == 0 && r->result->n_bundles == 1 && r->result->bundles[0]->one_time_pre_key != NULL;
    hush__frame__free_unpacked(r, NULL);
    return code;
}

static void test_fetch_limits_hold(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "fetchlimit", "fetch_burst = 5\nfetch_refill_per_min = 1");
    struct tclient *v = tc_registered(&r, "vivi", 1);
    struct tclient *m = tc_registered(&r, "mallo", 1);
    int otks = 0;
    for (int i = 0; i < 5; i++) {
        int otk = 0;
        assert_int_equal(fetch_code(tc_fetch(m, "vivi"), &otk), 0);
        otks += otk;
    }
    assert_int_equal(otks, 5);
    assert_int_equal(fetch_code(tc_fetch(m, "vivi"), NULL), HUSH__ERROR_CODE__RATE_LIMITED);

    /* 100,001 fetches of names nobody has, 64 in flight at a time */
    enum { NFAKE = 100001, PIPE = 64 };
    int unknown = 0, limited = 0, other = 0;
    for (int sent = 0; sent < NFAKE;) {
        int batch = NFAKE - sent < PIPE ? NFAKE - sent : PIPE;
        uint64_t first = m->next_id;
        for (int k = 0; k < batch; k++) {
            char name[24];
            snprintf(name, sizeof name, "ghost%d", sent + k);
            Hush__FetchBundlesRequest fb = HUSH__FETCH_BUNDLES_REQUEST__INIT;
            fb.username = name;
            Hush__Frame f = HUSH__FRAME__INIT;
            f.id = m->next_id++;
            f.msg_case = HUSH__FRAME__MSG_FETCH_BUNDLES;
            f.fetch_bundles = &fb;
            assert_int_equal(send_nowait(m, &f), 0);
        }
        for (int k = 0; k < batch; k++) {
            uint8_t *data = NULL;
            size_t len = 0;
            assert_int_equal(wsc_recv(m->ws, &data, &len, T), 1);
            Hush__Frame *res = hush__frame__unpack(NULL, len, data);
            free(data);
            assert_non_null(res);
            if (res->msg_case == HUSH__FRAME__MSG_RESULT && res->id >= first) {
                if (res->result->code == HUSH__ERROR_CODE__UNKNOWN_USER)
                    unknown++;
                else if (res->result->code == HUSH__ERROR_CODE__RATE_LIMITED)
                    limited++;
                else
                    other++;
            } else {
                k--; /* a push, not an answer */
            }
            hush__frame__free_unpacked(res, NULL);
        }
        sent += batch;
    }
    print_message("fetch limits: %d fetches of made-up names: %d answered UNKNOWN_USER, %d RATE_LIMITED\n", NFAKE,
                  unknown, limited);
    assert_int_equal(other, 0);
    assert_true(unknown <= 200);  /* the overall burst (100) and a minute's refill at most */
    /* vivi's one-time prekeys are still protected from mallo */
    int otk = 0;
    assert_int_equal(fetch_code(tc_fetch(m, "vivi"), &otk), HUSH__ERROR_CODE__RATE_LIMITED);
    assert_false(otk);
    /* another requester is not affected by mallo's limit */
    struct tclient *w = tc_registered(&r, "wendy", 1);
    assert_int_equal(fetch_code(tc_fetch(w, "vivi"), &otk), 0);
    assert_true(otk);
    tc_free(v);
    tc_free(m);
    tc_free(w);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* PreKeysLow is pushed to an online device at most once per interval, however many fetches
 * find its stock under the threshold. */
static void test_prekeys_low_throttled(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "lowpush", "prekeys_low_threshold = 95\nfetch_burst = 1000");
    struct tclient *v = tc_registered(&r, "lowa", 1);
    struct tclient *m = tc_registered(&r, "lowb", 1);
    for (int i = 0; i < 25; i++)
        assert_int_equal(fetch_code(tc_fetch(m, "lowa"), NULL), 0);
    /* the victim reads what it was sent: its own request's answer comes after every push */
    Hush__FetchBundlesRequest fb = HUSH__FETCH_BUNDLES_REQUEST__INIT;
    fb.username = "lowb";
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_FETCH_BUNDLES;
    f.fetch_bundles = &fb;
    Hush__Frame *res = tc_request(v, &f, T);
    assert_non_null(res);
    hush__frame__free_unpacked(res, NULL);
    int pushes = 0;
    Hush__Frame *p;
    while ((p = tc_next_push(v, HUSH__FRAME__MSG_PRE_KEYS_LOW, 200)) != NULL) {
        pushes++;
        hush__frame__free_unpacked(p, NULL);
    }
    print_message("prekeys low: 20 fetches under the threshold gave %d PreKeysLow pushes\n", pushes);
    assert_int_equal(pushes, 1);
    tc_free(v);
    tc_free(m);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* One sender fills at most its share (25 %) of a recipient's quota; others still get through. */
static void test_mailbox_share(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "share", "quota_messages = 20");
    struct tclient *a = tc_registered(&r, "squat", 1);
    struct tclient *b = tc_registered(&r, "frend", 1);
    struct tclient *v = tc_registered(&r, "victm", 1);
    tc_disconnect(v);
    uint8_t env[64], mid[16];
    int ok = 0, refused = 0;
    for (int i = 0; i < 20; i++) {
        randombytes_buf(env, sizeof env);
        rand_id(mid);
        int code = tc_send(a, "victm", 1, env, sizeof env, mid, NULL);
        if (code == 0)
            ok++;
        else if (code == HUSH__ERROR_CODE__QUOTA_EXCEEDED)
            refused++;
        else
            fail_msg("unexpected code %d", code);
    }
    print_message("mailbox share: one sender stored %d of 20 (quota 20), %d refused\n", ok, refused);
    assert_int_equal(ok, 5);
    for (int i = 0; i < 5; i++) {
        randombytes_buf(env, sizeof env);
        rand_id(mid);
        assert_int_equal(tc_send(b, "victm", 1, env, sizeof env, mid, NULL), 0);
    }
    tc_free(a);
    tc_free(b);
    tc_free(v);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* A login for a device that does not exist does the same verification work as one with a wrong
 * signature for a device that does (a full check against a valid key, counted by the relay). */
static void test_login_same_work(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "loginwork", NULL);
    struct tclient *k = tc_registered(&r, "known", 1);
    tc_disconnect(k);
    long v0 = relay_metric(&r, "hush_auth_verifications_total");
    assert_true(v0 >= 1); /* the registration's proof */
    const char *users[2] = { "known", "nobody" };
    for (int i = 0; i < 2; i++) {
        struct tclient *c = tc_new(&r, users[i], 1);
        uint8_t sig[64];
        randombytes_buf(sig, sizeof sig);
        Hush__LoginRequest l = HUSH__LOGIN_REQUEST__INIT;
        l.username = (char *)users[i];
        l.device_id = 1;
        l.signature.data = sig;
        l.signature.len = 64;
        char origin[HWIRE_ORIGIN_MAX + 1];
        assert_int_equal(hwire_origin(origin, sizeof origin, 0, "127.0.0.1", r.port), 0);
        l.origin = origin;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.msg_case = HUSH__FRAME__MSG_LOGIN;
        f.login = &l;
        Hush__Frame *res = tc_request(c, &f, T);
        assert_non_null(res);
        assert_int_equal(res->result->code, HUSH__ERROR_CODE__AUTH_FAILED);
        hush__frame__free_unpacked(res, NULL);
        long v1 = relay_metric(&r, "hush_auth_verifications_total");
        print_message("login work: %s device, bad proof: %ld full verification(s)\n", i ? "unknown" : "known", v1 - v0);
        assert_int_equal(v1 - v0, 1);
        v0 = v1;
        tc_free(c);
    }
    tc_free(k);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* /healthz answers while slow clients trickle requests to the metrics port (one byte every half
 * second) and while more idle connections than the server has slots are open. */
static void test_health_not_held(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "slowhealth", NULL);
    pid_t trickler = fork();
    assert_true(trickler >= 0);
    if (trickler == 0) {
        int fds[4];
        for (int i = 0; i < 4; i++)
            fds[i] = wsc_tcp_connect("127.0.0.1", r.metrics_port, 1000);
        const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
        for (int k = 0; k < 16; k++) { /* 8 s */
            for (int i = 0; i < 4; i++)
                if (fds[i] >= 0 && write(fds[i], req + (k % 30), 1) != 1) {
                    close(fds[i]);
                    fds[i] = wsc_tcp_connect("127.0.0.1", r.metrics_port, 1000);
                }
            msleep(500);
        }
        _exit(0);
    }
    int idle[40];
    for (int i = 0; i < 40; i++)
        idle[i] = wsc_tcp_connect("127.0.0.1", r.metrics_port, 1000);
    msleep(300);
    int answered = 0;
    for (int i = 0; i < 5; i++) {
        int status = 0;
        char *body = relay_http_get(&r, "/healthz", &status);
        free(body);
        int st;
        if (status == 200 && waitpid(trickler, &st, WNOHANG) == 0)
            answered++; /* answered while the trickler was still at it */
    }
    print_message("health: %d of 5 probes answered while 4 clients trickled and 40 sat idle\n", answered);
    assert_int_equal(answered, 5);
    int st;
    waitpid(trickler, &st, 0);
    for (int i = 0; i < 40; i++)
        if (idle[i] >= 0)
            close(idle[i]);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* When a device's one-time prekeys are all handed out, its last-resort key is served instead. */
static void test_last_resort_served(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "lastresort", "fetch_burst = 1000\nfetch_total_burst = 1000");
    struct tclient *v = tc_registered(&r, "lrvic", 1);
    struct tclient *m = tc_registered(&r, "lrget", 1);
    for (int i = 0; i < 100; i++) {
        Hush__Frame *res = tc_fetch(m, "lrvic");
        assert_non_null(res);
        assert_non_null(res->result->bundles[0]->one_time_pre_key);
        assert_true(res->result->bundles[0]->one_time_pre_key->id < HUSH_LAST_RESORT_PREKEY_ID);
        hush__frame__free_unpacked(res, NULL);
    }
    for (int i = 0; i < 2; i++) {
        Hush__Frame *res = tc_fetch(m, "lrvic");
        assert_non_null(res);
        assert_int_equal(res->result->code, 0);
        assert_non_null(res->result->bundles[0]->one_time_pre_key);
        assert_int_equal(res->result->bundles[0]->one_time_pre_key->id, HUSH_LAST_RESORT_PREKEY_ID);
        hush__frame__free_unpacked(res, NULL);
    }
    /* and a session built on it works */
    assert_int_equal(tc_start_session(m, "lrvic"), 0);
    tc_free(v);
    tc_free(m);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Welcome.limits announces every limit a client must respect; a registration carrying more
 * one-time prekeys than an upload may is TOO_LARGE, as an upload is. */
static void test_limits_announced(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "limits", "quota_messages = 777\nsend_burst = 55\nttl_seconds = 3600");
    struct tclient *c = tc_new(&r, "limo", 1);
    tc_disconnect(c);
    c->ws = wsc_connect("127.0.0.1", r.port, 0, T);
    assert_non_null(c->ws);
    Hush__Hello hello = HUSH__HELLO__INIT;
    hello.min_version = 1;
    hello.max_version = 1;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_HELLO;
    f.hello = &hello;
    Hush__Frame *w = tc_request(c, &f, T);
    assert_non_null(w);
    assert_int_equal(w->msg_case, HUSH__FRAME__MSG_WELCOME);
    const Hush__Limits *l = w->welcome->limits;
    assert_int_equal(l->quota_messages, 777);
    assert_int_equal(l->send_burst, 55);
    assert_int_equal(l->ttl_seconds, 3600);
    assert_int_equal(l->sender_share_percent, 25);
    assert_int_equal(l->max_seqs_per_ack, 4096);
    assert_int_equal(l->max_stored_pre_keys, 1000);
    assert_int_equal(l->fetch_total_burst, 100);
    assert_true(l->idle_timeout_s > l->ping_interval_s);
    assert_true(l->max_jobs_in_flight > 0);
    memcpy(c->challenge, w->welcome->challenge.data, 32);
    hush__frame__free_unpacked(w, NULL);

    /* 101 one-time prekeys at registration */
    struct tc_reg g;
    tc_reg_build(c, 100, NULL, &g);
    assert_int_equal(g.keys->n_one_time_pre_keys, 100);
    Hush__PreKey *all[101], extra = HUSH__PRE_KEY__INIT;
    memcpy(all, g.keys->one_time_pre_keys, 100 * sizeof *all);
    extra.id = 999999;
    extra.public_key = g.keys->one_time_pre_keys[0]->public_key;
    all[100] = &extra;
    Hush__PreKey **saved = g.keys->one_time_pre_keys;
    g.keys->one_time_pre_keys = all;
    g.keys->n_one_time_pre_keys = 101;
    tc_reg_sign(c, &g);
    Hush__Frame rf = HUSH__FRAME__INIT;
    rf.msg_case = HUSH__FRAME__MSG_REGISTER;
    rf.register_ = &g.r;
    Hush__Frame *res = tc_request(c, &rf, T);
    assert_non_null(res);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__TOO_LARGE);
    hush__frame__free_unpacked(res, NULL);
    g.keys->one_time_pre_keys = saved;
    g.keys->n_one_time_pre_keys = 100;
    tc_reg_free(&g);
    tc_free(c);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* A login proof names the relay the client reached: one made for another endpoint (a wrong URL, an
 * impostor relaying this relay's challenge) is refused here; a relay configured with public_url
 * takes those names too. */
static void test_proof_bound_to_origin(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "origin", "public_url = wss://relay.example.org, ws://127.0.0.1:1");
    struct tclient *c = tc_registered(&r, "orig", 1);
    const char *tries[] = { "ws://evil.example:7443", "wss://relay.example.org:443", "ws://127.0.0.1:1", NULL };
    int want[] = { HUSH__ERROR_CODE__AUTH_FAILED, 0, 0, 0 };
    for (int i = 0; i < 4; i++) {
        assert_int_equal(tc_reconnect(c), 0);
        char origin[HWIRE_ORIGIN_MAX + 1];
        if (tries[i])
            snprintf(origin, sizeof origin, "%s", tries[i]);
        else
            assert_int_equal(hwire_origin(origin, sizeof origin, 0, "localhost", r.port), 0); /* loopback name */
        uint8_t sig[64];
        assert_int_equal(hush_auth_proof(c->sdk, HWIRE_PURPOSE_LOGIN, origin, NULL, 0, NULL, c->challenge, sig), HUSH_OK);
        Hush__LoginRequest l = HUSH__LOGIN_REQUEST__INIT;
        l.username = "orig";
        l.device_id = 1;
        l.signature.data = sig;
        l.signature.len = 64;
        l.origin = origin;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.msg_case = HUSH__FRAME__MSG_LOGIN;
        f.login = &l;
        Hush__Frame *res = tc_request(c, &f, T);
        assert_non_null(res);
        if ((int)res->result->code != want[i])
            fail_msg("origin %s: code %d, expected %d", origin, (int)res->result->code, want[i]);
        hush__frame__free_unpacked(res, NULL);
    }
    /* a registration proof covers what is registered: the same proof over other keys is refused */
    {
        struct tclient *n = tc_new(&r, "orignew", 1);
        struct tc_reg g;
        tc_reg_build(n, 10, NULL, &g);
        tc_reg_sign(n, &g);
        g.keys->n_one_time_pre_keys = 9; /* one key fewer than signed */
        Hush__Frame rf = HUSH__FRAME__INIT;
        rf.msg_case = HUSH__FRAME__MSG_REGISTER;
        rf.register_ = &g.r;
        Hush__Frame *res = tc_request(n, &rf, T);
        assert_non_null(res);
        assert_int_equal(res->result->code, HUSH__ERROR_CODE__AUTH_FAILED);
        hush__frame__free_unpacked(res, NULL);
        g.keys->n_one_time_pre_keys = 10;
        tc_reg_free(&g);
        tc_free(n);
    }
    /* a proof signed for one origin and sent claiming another fails too */
    assert_int_equal(tc_reconnect(c), 0);
    uint8_t sig[64];
    assert_int_equal(hush_auth_proof(c->sdk, HWIRE_PURPOSE_LOGIN, "ws://evil.example:7443", NULL, 0, NULL, c->challenge,
                                     sig), HUSH_OK);
    char origin[HWIRE_ORIGIN_MAX + 1];
    assert_int_equal(hwire_origin(origin, sizeof origin, 0, "127.0.0.1", r.port), 0);
    Hush__LoginRequest l = HUSH__LOGIN_REQUEST__INIT;
    l.username = "orig";
    l.device_id = 1;
    l.signature.data = sig;
    l.signature.len = 64;
    l.origin = origin;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_LOGIN;
    f.login = &l;
    Hush__Frame *res = tc_request(c, &f, T);
    assert_non_null(res);
    assert_int_equal(res->result->code, HUSH__ERROR_CODE__AUTH_FAILED);
    hush__frame__free_unpacked(res, NULL);
    tc_free(c);
    assert_int_equal(relay_stop(&r, SIGTERM), 0);
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
        cmocka_unit_test(test_fragmented_request),
        cmocka_unit_test(test_one_relay_per_port_and_db),
        cmocka_unit_test(test_fetch_limits_hold),
        cmocka_unit_test(test_prekeys_low_throttled),
        cmocka_unit_test(test_mailbox_share),
        cmocka_unit_test(test_login_same_work),
        cmocka_unit_test(test_health_not_held),
        cmocka_unit_test(test_last_resort_served),
        cmocka_unit_test(test_limits_announced),
        cmocka_unit_test(test_proof_bound_to_origin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
