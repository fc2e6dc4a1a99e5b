/*
 * fuzz_client.c - the SDK's side of the relay protocol: sdk/net_main.c's frame handling (handle_frame,
 * the batched receive, results, pushes, the login state machine) driven over a real WebSocket by
 * a fake relay in the harness whose every answer the fuzzer chooses.
 *
 * Every input starts from the same database (bob, who knows alice; copied from a template made
 * once) with one message queued for alice, starts bob's network thread against the fake relay,
 * and plays the input as the relay: answer the client's oldest request (Welcome, register/login
 * Result with a chosen code, Send Result with seqs, FetchBundles with alice's real bundle or an
 * error), deliver one of six genuine envelopes from alice (possibly again, under a new or the same
 * seq), deliver fuzzed envelopes from fuzzed senders, unsolicited Results, QueueEmpty,
 * PreKeysLow, Presence, DeviceListChanged, Closing, raw frames, raw bytes on the socket, pings,
 * waits, hang-up; a Send refused with DEVICE_MISMATCH names alice's or bob's own devices.
 *
 * Invariants checked (abort() on violation):
 * - nothing is shown twice: each message id reaches on_message at most once;
 * - a genuine message whose delivery bob acknowledged is in bob's history exactly once (acked
 *   means stored), and no message is in the history twice;
 * - what on_message showed is a genuine message of alice's (the body "m<k>" and its id match);
 * - bob's queued message is never marked SENT unless the relay answered a Send carrying it with
 *   OK; it never leaves the outbox otherwise;
 * - before the relay told it OK for its register/login, the client sends nothing but its Hello,
 *   the register/login itself and acks;
 * - a one-time prekey is offered (register, upload) at most once unless the relay refused the
 *   earlier offer; keys whose only offer was refused are not left marked as published (checked
 *   when a closing ping shows the client handled everything);
 * - the database passes an integrity check afterwards.
 * The network thread makes runs depend a little on timing (answers wait for the client's next
 * request, not for the clock, to keep that small); inputs reproduce in practice.
 * FUZZ_CLIENT_DEBUG=1 prints what an input does, op by op.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "fuzz.h"
#include "hush.h"
#include "hush.pb-c.h"
#include "wss.h"

#include <sqlite3.h>

#define GENUINE 6
#define MAX_OPS 96
#define MAX_REQS 64
#define MAX_SHOWN 256
#define RX_CAP (2 * 1024 * 1024)
#ifndef IDLE_ROUNDS
#define IDLE_ROUNDS 4
#endif

static const uint8_t g_key_bob[HUSH_DB_KEY_BYTES] = { 6 }, g_key_alice[HUSH_DB_KEY_BYTES] = { 7 };
static char g_template[300], g_work[300], g_url[64];
static int g_lfd = -1;
static int g_debug; /* FUZZ_CLIENT_DEBUG=1: a line per op and per frame, to see what an input does */
static uint8_t *g_env[GENUINE], *g_bundle;
static size_t g_env_len[GENUINE], g_bundle_len;
static uint8_t g_mid[GENUINE][HUSH_MESSAGE_ID_BYTES];

/* what the callbacks saw (network thread) */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t g_shown[MAX_SHOWN][HUSH_MESSAGE_ID_BYTES];
static int g_nshown;

static void must(hush_err e, const char *what)
{
    if (e) {
        fprintf(stderr, "fuzz_client: setup: %s: %s\n", what, hush_strerror(e));
        abort();
    }
}

static void violation(const char *what)
{
    fprintf(stderr, "fuzz_client: INVARIANT: %s\n", what);
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    g_debug = getenv("FUZZ_CLIENT_DEBUG") != NULL;
    char apath[300];
    snprintf(g_template, sizeof g_template, "%s/tpl-bob.db", fuzz_tmpdir());
    snprintf(g_work, sizeof g_work, "%s/run-bob.db", fuzz_tmpdir());
    snprintf(apath, sizeof apath, "%s/tpl-alice.db", fuzz_tmpdir());
    fuzz_remove_db(g_template);
    fuzz_remove_db(apath);
    hush_open_opts o = { HUSH_DURABILITY_NORMAL };
    hush_client *a = NULL, *b = NULL;
    must(hush_client_open(apath, g_key_alice, &o, &a), "open alice");
    must(hush_client_open(g_template, g_key_bob, &o, &b), "open bob");
    must(hush_device_create(a, "alice", 1), "alice");
    must(hush_device_create(b, "bob", 1), "bob");
    uint8_t *bundle = NULL;
    size_t blen = 0;
    must(hush_bundle_export(b, &bundle, &blen), "export bob");
    must(hush_bundle_import(a, bundle, blen, NULL, NULL), "import bob");
    hush_free(bundle);
    must(hush_bundle_export(a, &g_bundle, &g_bundle_len), "export alice");
    must(hush_bundle_import(b, g_bundle, g_bundle_len, NULL, NULL), "import alice");
    hush_free(g_bundle);
    must(hush_bundle_export(a, &g_bundle, &g_bundle_len), "export alice again"); /* for FetchBundles */
    for (int k = 0; k < GENUINE; k++) {
        char body[8];
        int len = snprintf(body, sizeof body, "m%d", k);
        must(hush_encrypt(a, "bob", 1, (const uint8_t *)body, (size_t)len, NULL, g_mid[k], &g_env[k], &g_env_len[k]),
             "encrypt");
    }
    hush_client_close(a);
    hush_client_close(b); /* the last connection checkpoints: the .db file alone is the state */
    fuzz_remove_db(apath);

    g_lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(g_lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    if (bind(g_lfd, (struct sockaddr *)&sa, sizeof sa) || getsockname(g_lfd, (struct sockaddr *)&sa, &sl) ||
        listen(g_lfd, 8))
        abort();
    snprintf(g_url, sizeof g_url, "ws://127.0.0.1:%d", ntohs(sa.sin_port));
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* callbacks (network thread) */

static void cb_message(void *ctx, const hush_message *m)
{
    (void)ctx;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < g_nshown; i++)
        if (!memcmp(g_shown[i], m->message_id, HUSH_MESSAGE_ID_BYTES))
            violation("a message was shown twice");
    int k = -1;
    for (int i = 0; i < GENUINE; i++)
        if (!memcmp(g_mid[i], m->message_id, HUSH_MESSAGE_ID_BYTES))
            k = i;
    char want[16];
    snprintf(want, sizeof want, "m%d", k);
    if (k < 0 || strcmp(m->sender, "alice") || m->sender_device != 1 || m->body_len != strlen(want) ||
        memcmp(m->body, want, m->body_len))
        violation("shown a message alice never sent");
    if (g_nshown < MAX_SHOWN)
        memcpy(g_shown[g_nshown++], m->message_id, HUSH_MESSAGE_ID_BYTES);
    pthread_mutex_unlock(&g_mu);
}

/* ---------------------------------------------------------------------------------------- */
/* the fake relay's side of the socket */

struct conn {
    int fd;
    int dead;
    uint8_t *rx; /* raw bytes from the client not yet parsed */
    size_t rx_len;
    uint8_t *msg; /* a message being reassembled from fragments */
    size_t msg_len;
    struct { uint64_t id; int kind; int carries_mid; } reqs[MAX_REQS]; /* unanswered, oldest first */
    int nreqs;
    uint64_t acked[512]; /* seqs bob acknowledged */
    int nacked;
    /* the fake relay's own output, parsed the way the client parses it (raw bytes and raw frames
     * can carry a Result too): ids answered OK, and ids of bob's Sends carrying the queued message */
    uint8_t *tx;
    size_t tx_len;
    uint8_t *tmsg;
    size_t tmsg_len;
    int expect;  /* a request from the client is likely to come: answer() may wait for it */
    int ws_open; /* after the HTTP upgrade: what is written from then on is a WebSocket stream */
    int tx_lost; /* more than the tracker keeps: count the queued message as possibly answered */
    uint64_t ok_ids[256];
    int nok;
    uint64_t mid_ids[64];
    int nmid;
    uint64_t auth_ids[16]; /* ids of the client's register/login requests */
    int nauth;
    /* every Result the fake relay wrote, in order, and the client's requests that offered one-time
     * prekeys (register, upload) with what became of them */
    uint64_t res_ids[1024];
    int res_err[1024];
    int nres;
    struct offer {
        uint64_t id;
        uint32_t keys[128];
        size_t nkeys;
        int ambiguous; /* a Result with its id was written before it arrived: which one counted? */
        int first;     /* code of the first Result written after it arrived; -1: none */
        int any_err, any_ok;
    } offers[16];
    int noffers;
    int synced; /* the client answered the closing ping: it has handled everything before it */
};

static void offer_result(struct offer *o, int code)
{
    if (o->first < 0)
        o->first = code;
    if (code)
        o->any_err = 1;
    else
        o->any_ok = 1;
}

/* per input: which seq carried which genuine envelope */
static int g_seq_genuine[256]; /* seq -> k + 1, 0: not genuine */
static uint64_t g_next_seq;
static uint8_t g_queued_mid[HUSH_MESSAGE_ID_BYTES];

/* One WebSocket frame at the start of buf[0..have): 0 while it is incomplete, else 1 with its
 * flags, payload length, and the payload unmasked in place at *payload. The caller removes
 * *used bytes. */
struct wsframe {
    int fin, op, masked;
    uint64_t len;
    uint8_t *payload;
    size_t used;
};

static int ws_frame(uint8_t *b, size_t have, struct wsframe *w)
{
    if (have < 2)
        return 0;
    w->fin = b[0] & 0x80;
    w->op = b[0] & 0x0f;
    w->masked = b[1] & 0x80;
    w->len = b[1] & 0x7f;
    size_t hl = 2;
    if (w->len == 126) {
        if (have < 4)
            return 0;
        w->len = (uint64_t)b[2] << 8 | b[3];
        hl = 4;
    } else if (w->len == 127) {
        if (have < 10)
            return 0;
        w->len = 0;
        for (int i = 0; i < 8; i++)
            w->len = w->len << 8 | b[2 + i];
        hl = 10;
    }
    if (w->len > RX_CAP)
        return 1; /* the caller refuses it before touching the payload */
    size_t ml = w->masked ? 4 : 0;
    if (have < hl + ml + w->len)
        return 0;
    w->payload = b + hl + ml;
    for (uint64_t i = 0; w->masked && i < w->len; i++)
        w->payload[i] ^= b[hl + (i & 3)];
    w->used = hl + ml + (size_t)w->len;
    return 1;
}

static void note_server_message(struct conn *c, const uint8_t *p, size_t n)
{
    Hush__Frame *f = hush__frame__unpack(NULL, n, p);
    if (f && f->msg_case == HUSH__FRAME__MSG_RESULT && f->id) {
        int code = f->result->code != HUSH__ERROR_CODE__OK;
        if (c->nres < (int)(sizeof c->res_ids / sizeof c->res_ids[0])) {
            c->res_ids[c->nres] = f->id;
            c->res_err[c->nres++] = code;
        } else {
            c->tx_lost = 1;
        }
        for (int i = 0; i < c->noffers; i++)
            if (c->offers[i].id == f->id)
                offer_result(&c->offers[i], code);
    }
    if (f && f->msg_case == HUSH__FRAME__MSG_RESULT && f->result->code == HUSH__ERROR_CODE__OK && f->id) {
        if (g_debug)
            fprintf(stderr, "fuzz_client: the client is told OK for id %llu\n", (unsigned long long)f->id);
        if (c->nok < (int)(sizeof c->ok_ids / sizeof c->ok_ids[0]))
            c->ok_ids[c->nok++] = f->id;
        else
            c->tx_lost = 1;
    }
    if (f)
        hush__frame__free_unpacked(f, NULL);
}

/* Follows the bytes the fake relay writes as a WebSocket stream. Each data frame's payload is
 * looked at alone and as part of its message, so fragmenting never hides a Result. */
static void track_tx(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->tx_lost || c->tx_len + n > RX_CAP) {
        c->tx_lost = 1;
        return;
    }
    memcpy(c->tx + c->tx_len, p, n);
    c->tx_len += n;
    for (;;) {
        struct wsframe w;
        if (!ws_frame(c->tx, c->tx_len, &w))
            return;
        if (w.len > RX_CAP) {
            c->tx_lost = 1;
            return;
        }
        int fin = w.fin, op = w.op;
        uint64_t len = w.len;
        uint8_t *pl = w.payload;
        if (op == 0 || op == 1 || op == 2) {
            note_server_message(c, pl, (size_t)len);
            if (op != 0)
                c->tmsg_len = 0;
            uint8_t *m = realloc(c->tmsg, c->tmsg_len + len + 1);
            if (!m)
                abort();
            c->tmsg = m;
            memcpy(c->tmsg + c->tmsg_len, pl, len);
            c->tmsg_len += len;
            note_server_message(c, c->tmsg, c->tmsg_len);
            if (fin)
                c->tmsg_len = 0;
        }
        memmove(c->tx, c->tx + w.used, c->tx_len - w.used);
        c->tx_len -= w.used;
    }
}

static void send_all(struct conn *c, const void *p, size_t n)
{
    const uint8_t *b = p;
    if (c->ws_open)
        track_tx(c, b, n);
    while (!c->dead && n) {
        ssize_t w = send(c->fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            c->dead = 1;
            return;
        }
        b += w;
        n -= (size_t)w;
    }
}

static void ws_send(struct conn *c, int op, const uint8_t *p, size_t n)
{
    uint8_t h[10];
    send_all(c, h, ws_frame_header(h, op, 1, n));
    send_all(c, p, n);
}

static void send_frame(struct conn *c, const Hush__Frame *f)
{
    size_t n = hush__frame__get_packed_size(f);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        abort();
    hush__frame__pack(f, b);
    ws_send(c, 2, b, n);
    free(b);
}

static void on_client_frame(struct conn *c, const uint8_t *p, size_t n)
{
    Hush__Frame *f = hush__frame__unpack(NULL, n, p);
    if (!f)
        violation("the SDK sent a frame that does not decode");
    if (g_debug)
        fprintf(stderr, "fuzz_client: client frame %d id %llu\n", (int)f->msg_case, (unsigned long long)f->id);
    int kind = (int)f->msg_case;
    if (kind == HUSH__FRAME__MSG_REGISTER || kind == HUSH__FRAME__MSG_LOGIN) {
        if (c->nauth < (int)(sizeof c->auth_ids / sizeof c->auth_ids[0]))
            c->auth_ids[c->nauth++] = f->id;
    } else if (kind != HUSH__FRAME__MSG_HELLO && kind != HUSH__FRAME__MSG_ACK) {
        /* anything else needs a logged-in connection: the client must have been told OK for its
         * register/login first (the OK was written before this frame could be caused by it) */
        int authed = c->tx_lost;
        for (int i = 0; i < c->nauth; i++)
            for (int j = 0; j < c->nok; j++)
                authed |= c->auth_ids[i] == c->ok_ids[j];
        if (!authed)
            violation("the SDK sent a request before it was logged in");
    }
    const Hush__PreKeyUpload *keys = kind == HUSH__FRAME__MSG_REGISTER        ? f->register_->keys
                                     : kind == HUSH__FRAME__MSG_UPLOAD_PRE_KEYS ? f->upload_pre_keys
                                                                                : NULL;
    if (keys && keys->n_one_time_pre_keys) {
        /* a one-time prekey is never offered twice, unless the relay refused the earlier offer
         * (a refusal stores nothing, and the client puts the keys back) */
        for (size_t k = 0; k < keys->n_one_time_pre_keys; k++)
            for (int i = 0; i < c->noffers; i++)
                for (size_t j = 0; j < c->offers[i].nkeys; j++)
                    if (c->offers[i].keys[j] == keys->one_time_pre_keys[k]->id && !c->offers[i].any_err &&
                        !c->tx_lost)
                        violation("a one-time prekey was published twice");
        if (c->noffers < (int)(sizeof c->offers / sizeof c->offers[0])) {
            struct offer *o = &c->offers[c->noffers++];
            memset(o, 0, sizeof *o);
            o->id = f->id;
            o->first = -1;
            for (size_t k = 0; k < keys->n_one_time_pre_keys && o->nkeys < 128; k++)
                o->keys[o->nkeys++] = keys->one_time_pre_keys[k]->id;
            for (int i = 0; i < c->nres; i++)
                if (c->res_ids[i] == f->id) {
                    o->ambiguous = 1;
                    if (c->res_err[i])
                        o->any_err = 1;
                    else
                        o->any_ok = 1;
                }
        } else {
            c->tx_lost = 1;
        }
    }
    if (f->msg_case == HUSH__FRAME__MSG_ACK) {
        for (size_t i = 0; i < f->ack->n_seqs && c->nacked < (int)(sizeof c->acked / sizeof c->acked[0]); i++)
            c->acked[c->nacked++] = f->ack->seqs[i];
    } else if (f->id && c->nreqs < MAX_REQS) {
        c->reqs[c->nreqs].id = f->id;
        c->reqs[c->nreqs].kind = (int)f->msg_case;
        c->reqs[c->nreqs].carries_mid = f->msg_case == HUSH__FRAME__MSG_SEND &&
                                        f->send->client_msg_id.len == HUSH_MESSAGE_ID_BYTES &&
                                        !memcmp(f->send->client_msg_id.data, g_queued_mid, HUSH_MESSAGE_ID_BYTES);
        if (c->reqs[c->nreqs].carries_mid) {
            if (c->nmid < (int)(sizeof c->mid_ids / sizeof c->mid_ids[0]))
                c->mid_ids[c->nmid++] = f->id;
            else
                c->tx_lost = 1;
        }
        c->nreqs++;
    }
    hush__frame__free_unpacked(f, NULL);
}

/* Parses the client's (masked) WebSocket frames out of c->rx. */
static void parse_rx(struct conn *c)
{
    for (;;) {
        struct wsframe w;
        if (!ws_frame(c->rx, c->rx_len, &w))
            return;
        if (!w.masked || w.len > RX_CAP)
            violation("the SDK sent an unmasked or oversized WebSocket frame");
        int fin = w.fin, op = w.op;
        uint64_t len = w.len;
        const uint8_t *p = w.payload;
        if (op == 2 || op == 0) {
            uint8_t *m = realloc(c->msg, c->msg_len + len + 1);
            if (!m)
                abort();
            c->msg = m;
            memcpy(c->msg + c->msg_len, p, len);
            c->msg_len += len;
            if (fin) {
                on_client_frame(c, c->msg, c->msg_len);
                c->msg_len = 0;
            }
        } else if (op == 8) {
            c->dead = 1;
        } else if (op == 10 && len == 4 && !memcmp(p, "sync", 4)) {
            c->synced = 1; /* lws answers a ping in stream order: everything before it was handled */
        } /* other pings/pongs: nothing to do */
        memmove(c->rx, c->rx + w.used, c->rx_len - w.used);
        c->rx_len -= w.used;
    }
}

/* Reads what the client sent, waiting at most wait_ms for the first byte. */
static void pump(struct conn *c, int wait_ms)
{
    while (!c->dead) {
        struct pollfd p = { c->fd, POLLIN, 0 };
        int r = poll(&p, 1, wait_ms);
        if (r <= 0)
            return;
        if (c->rx_len == RX_CAP)
            violation("the SDK sent more than the fake relay's buffer");
        ssize_t got = recv(c->fd, c->rx + c->rx_len, RX_CAP - c->rx_len, 0);
        if (got <= 0) {
            c->dead = 1;
            return;
        }
        c->rx_len += (size_t)got;
        parse_rx(c);
        wait_ms = 0;
    }
}

static int handshake(struct conn *c)
{
    if (wss_accept_upgrade(c->fd, "hush.v1", 2000) != 0)
        return -1;
    c->ws_open = 1; /* what is written from now on is tracked as a WebSocket stream */
    c->expect = 1;  /* the Hello */
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* the input, played as the relay */

struct input {
    const uint8_t *p;
    size_t n;
};

static uint8_t next(struct input *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static const char *pick_name(uint8_t b)
{
    static const char *const names[] = { "alice", "bob", "carol", "", "Alice", "a", "al ice",
                                         "abcdefghijklmnopqrstuvwxyz0123456789" };
    return names[b % (sizeof names / sizeof names[0])];
}

static void pump(struct conn *c, int wait_ms);

static double cpu_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* Reads what the client sends while it is busy: returns once `until` holds, or once a 3 ms wait
 * passed with the process (this thread sleeps in poll: so the client's network thread) using almost
 * no CPU, or after 500 ms. So the script follows the client's progress rather than the clock. */
static void pump_while_busy(struct conn *c, int (*until)(const struct conn *))
{
    int idle = 0;
    for (int i = 0; i < 160 && !c->dead && !(until && until(c)); i++) {
        double before = cpu_ms();
        pump(c, 3);
        idle = cpu_ms() - before < 0.3 ? idle + 1 : 0;
        if (idle == IDLE_ROUNDS)
            return;
    }
}

static int has_request(const struct conn *c)
{
    return c->nreqs > 0;
}

/* Answers the client's oldest open request. When none is open but one is expected (at the start,
 * and after each answer: the client's next step usually follows one), waits while the client works
 * towards it. */
static void answer(struct conn *c, struct input *in)
{
    if (c->expect && !c->nreqs)
        pump_while_busy(c, has_request);
    c->expect = 0;
    if (!c->nreqs)
        return;
    c->expect = 1;
    uint8_t how = next(in);
    uint64_t id = c->reqs[0].id;
    int kind = c->reqs[0].kind;
    if (g_debug)
        fprintf(stderr, "fuzz_client: answering %d id %llu with 0x%02x\n", kind, (unsigned long long)id, how);
    memmove(&c->reqs[0], &c->reqs[1], (size_t)(c->nreqs - 1) * sizeof c->reqs[0]);
    c->nreqs--;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = id;
    Hush__Result r = HUSH__RESULT__INIT;
    /* mostly a good answer (so the state machine moves on), sometimes a chosen error code */
    r.code = (how & 0xc0) == 0xc0 ? (Hush__ErrorCode)(how & 0x1f) : HUSH__ERROR_CODE__OK;
    r.message = "fuzz";
    f.msg_case = HUSH__FRAME__MSG_RESULT;
    f.result = &r;
    if (kind == HUSH__FRAME__MSG_HELLO) {
        uint8_t ch[32];
        randombytes_buf(ch, sizeof ch);
        Hush__Welcome w = HUSH__WELCOME__INIT;
        w.version = (how & 0xe0) == 0xe0 ? how & 3 : 1;
        w.challenge.data = ch;
        w.challenge.len = (how & 0xf0) == 0xd0 ? how & 31 : 32;
        w.registration = "open";
        f.msg_case = HUSH__FRAME__MSG_WELCOME;
        f.welcome = &w;
        send_frame(c, &f);
        return;
    }
    uint64_t seqs[8];
    Hush__KeyBundle *kb = NULL, *kbs[1];
    uint32_t miss[1] = { 2 + (how & 1) };
    Hush__DeviceMismatch dm = HUSH__DEVICE_MISMATCH__INIT, *dmp[1] = { &dm };
    if (kind == HUSH__FRAME__MSG_SEND && r.code == HUSH__ERROR_CODE__DEVICE_MISMATCH) {
        /* the device list changed: alice's, or bob's own (how's bit 1) */
        dm.username = how & 2 ? "bob" : "alice";
        dm.missing = miss;
        dm.n_missing = 1;
        r.mismatches = dmp;
        r.n_mismatches = 1;
    } else if (kind == HUSH__FRAME__MSG_SEND && r.code == HUSH__ERROR_CODE__OK) {
        r.n_seqs = how & 1 ? 1 : (size_t)(how >> 1) % 3; /* the right count (1), or a wrong one */
        for (size_t i = 0; i < r.n_seqs; i++)
            seqs[i] = 1000 + i;
        r.seqs = seqs;
    } else if (kind == HUSH__FRAME__MSG_FETCH_BUNDLES && r.code == HUSH__ERROR_CODE__OK && !(how & 1)) {
        kb = hush__key_bundle__unpack(NULL, g_bundle_len, g_bundle);
        if (kb) {
            kbs[0] = kb;
            r.bundles = kbs;
            r.n_bundles = 1;
        }
    }
    send_frame(c, &f);
    if (kb)
        hush__key_bundle__free_unpacked(kb, NULL);
}

static void deliver(struct conn *c, const char *from, uint32_t dev, const uint8_t *env, size_t len, uint64_t seq)
{
    Hush__Deliver d = HUSH__DELIVER__INIT;
    d.seq = seq;
    d.from_username = (char *)from;
    d.from_device = dev;
    d.envelope.data = (uint8_t *)env;
    d.envelope.len = len;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_DELIVER;
    f.deliver = &d;
    send_frame(c, &f);
}

static void play(struct conn *c, struct input *in)
{
    for (int ops = 0; in->n && ops < MAX_OPS && !c->dead; ops++) {
        pump(c, 0);
        uint8_t op = next(in);
        if (g_debug)
            fprintf(stderr, "fuzz_client: op %d (%zu bytes left, %d requests open)\n", op % 14, in->n, c->nreqs);
        switch (op % 14) {
        case 0:
        case 1:
            answer(c, in);
            break;
        case 2: { /* a genuine envelope: new seq, or an earlier seq again (redelivery) */
            uint8_t b = next(in);
            int k = b % GENUINE;
            uint64_t seq = 0;
            if ((b & 0x80) && g_next_seq) { /* the same envelope under its earlier seq */
                uint64_t s = 1 + (uint64_t)(b >> 3 & 0x0f) % g_next_seq;
                if (s < 256 && g_seq_genuine[s])
                    seq = s, k = g_seq_genuine[s] - 1;
            }
            if (!seq) {
                seq = ++g_next_seq;
                if (seq < 256)
                    g_seq_genuine[seq] = k + 1;
            }
            deliver(c, "alice", 1, g_env[k], g_env_len[k], seq);
            break;
        }
        case 3: { /* a fuzzed envelope from a fuzzed sender */
            const char *from = pick_name(next(in));
            uint32_t dev = next(in) % 4;
            size_t len = next(in);
            len = len < in->n ? len : in->n;
            uint64_t seq = ++g_next_seq;
            deliver(c, from, dev, in->p, len, seq);
            in->p += len, in->n -= len;
            break;
        }
        case 4: { /* a Result nobody asked for, or for an id already answered */
            Hush__Result r = HUSH__RESULT__INIT;
            r.code = (Hush__ErrorCode)(next(in) % 20);
            r.message = "";
            Hush__Frame f = HUSH__FRAME__INIT;
            f.id = next(in) % 8;
            f.msg_case = HUSH__FRAME__MSG_RESULT;
            f.result = &r;
            send_frame(c, &f);
            break;
        }
        case 5: {
            Hush__QueueEmpty q = HUSH__QUEUE_EMPTY__INIT;
            Hush__Frame f = HUSH__FRAME__INIT;
            f.msg_case = HUSH__FRAME__MSG_QUEUE_EMPTY;
            f.queue_empty = &q;
            send_frame(c, &f);
            break;
        }
        case 6: {
            Hush__PreKeysLow l = HUSH__PRE_KEYS_LOW__INIT;
            l.remaining = next(in);
            Hush__Frame f = HUSH__FRAME__INIT;
            f.msg_case = HUSH__FRAME__MSG_PRE_KEYS_LOW;
            f.pre_keys_low = &l;
            send_frame(c, &f);
            break;
        }
        case 7: {
            Hush__PresenceUpdate p = HUSH__PRESENCE_UPDATE__INIT;
            uint8_t b = next(in);
            if ((b & 0x60) == 0x60) { /* a device list changed (a contact's, or bob's own) */
                Hush__DeviceListChanged dc = HUSH__DEVICE_LIST_CHANGED__INIT;
                dc.username = b & 0x10 ? "bob" : (char *)pick_name(b);
                Hush__Frame f = HUSH__FRAME__INIT;
                f.msg_case = HUSH__FRAME__MSG_DEVICE_LIST_CHANGED;
                f.device_list_changed = &dc;
                send_frame(c, &f);
                break;
            }
            p.username = (char *)pick_name(b);
            p.online = b & 0x80 ? 1 : 0;
            p.last_seen_ms = (uint64_t)next(in) << 40;
            Hush__Frame f = HUSH__FRAME__INIT;
            f.msg_case = HUSH__FRAME__MSG_PRESENCE;
            f.presence = &p;
            send_frame(c, &f);
            break;
        }
        case 8: {
            Hush__Closing cl = HUSH__CLOSING__INIT;
            cl.code = (Hush__ErrorCode)(next(in) % 24);
            Hush__Frame f = HUSH__FRAME__INIT;
            f.msg_case = HUSH__FRAME__MSG_CLOSING;
            f.closing = &cl;
            send_frame(c, &f);
            break;
        }
        case 9: { /* raw bytes as one binary message */
            size_t len = next(in);
            len = len < in->n ? len : in->n;
            ws_send(c, 2, in->p, len);
            in->p += len, in->n -= len;
            break;
        }
        case 10: { /* raw bytes on the socket: broken WebSocket framing */
            size_t len = next(in) % 16;
            len = len < in->n ? len : in->n;
            send_all(c, in->p, len);
            in->p += len, in->n -= len;
            break;
        }
        case 11: { /* control and text frames */
            uint8_t b = next(in);
            static const int ops_ctl[] = { 9, 10, 1, 8 };
            ws_send(c, ops_ctl[b & 3], (const uint8_t *)"fuzz", b & 4 ? 4 : 0);
            break;
        }
        case 12: /* let the client work */
            pump(c, 1 + next(in) % 20);
            break;
        case 13: /* hang up */
            c->dead = 1;
            break;
        }
    }
    pump_while_busy(c, NULL); /* what the client does with the last of it */
    if (!c->dead) { /* a ping after everything: its pong says the client has handled all of it */
        ws_send(c, 9, (const uint8_t *)"sync", 4);
        for (int i = 0; i < 100 && !c->synced && !c->dead; i++)
            pump(c, 5);
    }
}

static int has_offer(const struct conn *c, int after, uint32_t key)
{
    for (int i = after; i < c->noffers; i++)
        for (size_t j = 0; j < c->offers[i].nkeys; j++)
            if (c->offers[i].keys[j] == key)
                return 1;
    return 0;
}

/* Keys whose only offer the relay refused (and the client handled the refusal) are not used up. */
static void check_refused_keys_back(const struct conn *c)
{
    if (g_debug)
        fprintf(stderr, "fuzz_client: synced %d, offers %d, first answer to the first %d\n", c->synced, c->noffers,
                c->noffers ? c->offers[0].first : -2);
    if (!c->synced || c->tx_lost)
        return;
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(g_work, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        abort();
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT exported FROM pre_keys WHERE id = ?1", -1, &st, NULL) != SQLITE_OK)
        abort();
    for (int i = 0; i < c->noffers; i++) {
        const struct offer *o = &c->offers[i];
        if (o->ambiguous || o->first <= 0)
            continue; /* accepted, unanswered, or not clear which answer the client took */
        for (size_t j = 0; j < o->nkeys; j++) {
            if (has_offer(c, i + 1, o->keys[j]))
                continue; /* offered again later */
            sqlite3_bind_int64(st, 1, o->keys[j]);
            if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) != 0)
                violation("prekeys the relay refused stay marked as published");
            sqlite3_reset(st);
        }
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* However often the relay says PreKeysLow, the device's local stock of one-time prekeys stays
 * bounded (a storm used to add 100 keys per push). */
static void check_prekey_stock(void)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(g_work, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        abort();
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM pre_keys WHERE id != 16777215", -1, &st, NULL) != SQLITE_OK)
        abort();
    long n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (g_debug)
        fprintf(stderr, "fuzz_client: %ld one-time prekeys stored locally\n", n);
    if (n > HUSH_MAX_LOCAL_PREKEYS + 100)
        violation("PreKeysLow pushes grew the local prekey stock past its cap");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_random_reset(1);
    fuzz_remove_db(g_work);
    fuzz_copy_file(g_template, g_work);
    memset(g_seq_genuine, 0, sizeof g_seq_genuine);
    g_next_seq = 0;
    g_nshown = 0;

    hush_open_opts o = { HUSH_DURABILITY_NORMAL };
    hush_client *cl = NULL;
    must(hush_client_open(g_work, g_key_bob, &o, &cl), "open");
    must(hush_send(cl, "alice", (const uint8_t *)"queued", 6, g_queued_mid), "queue");
    hush_callbacks cb = { NULL, cb_message, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL };
    hush_net_opts no = { g_url, NULL, NULL, 0 };
    must(hush_net_start(cl, &no, &cb), "net start");

    struct conn c;
    memset(&c, 0, sizeof c);
    c.fd = -1;
    c.rx = malloc(RX_CAP);
    c.tx = malloc(RX_CAP);
    if (!c.rx || !c.tx)
        abort();
    struct pollfd p = { g_lfd, POLLIN, 0 };
    if (poll(&p, 1, 3000) == 1 && (c.fd = accept(g_lfd, NULL, NULL)) >= 0 && handshake(&c) == 0) {
        struct input in = { data, size };
        play(&c, &in);
    }
    hush_net_stop(cl); /* joins the network thread: the callbacks are over */
    if (c.fd >= 0) {
        pump(&c, 0); /* acks the client wrote before it stopped */
        close(c.fd);
    }
    /* a reconnect attempt the client made meanwhile: accept and drop it */
    while (poll(&p, 1, 0) == 1) {
        int fd = accept(g_lfd, NULL, NULL);
        if (fd < 0)
            break;
        close(fd);
    }

    /* acked genuine messages are stored, exactly once; nothing is stored twice */
    hush_history_entry *h = NULL;
    size_t nh = 0;
    must(hush_history_list(cl, "alice", 0, 100, &h, &nh), "history");
    int count[GENUINE] = { 0 };
    for (size_t i = 0; i < nh; i++) {
        if (h[i].outgoing)
            continue;
        int k = -1;
        for (int j = 0; j < GENUINE; j++)
            if (!memcmp(h[i].message_id, g_mid[j], HUSH_MESSAGE_ID_BYTES))
                k = j;
        if (k < 0)
            violation("history holds a message alice never sent");
        if (++count[k] > 1)
            violation("a message is in the history twice");
    }
    hush_history_free(h, nh);
    for (int i = 0; i < c.nacked; i++) {
        uint64_t s = c.acked[i];
        if (s < 256 && g_seq_genuine[s] && !count[g_seq_genuine[s] - 1])
            violation("bob acknowledged a genuine message it did not store");
    }
    int send_ok = c.tx_lost;
    for (int i = 0; i < c.nmid; i++)
        for (int j = 0; j < c.nok; j++)
            send_ok |= c.mid_ids[i] == c.ok_ids[j];
    hush_msg_state st;
    must(hush_message_state(cl, g_queued_mid, &st), "state");
    uint32_t pending = 0;
    must(hush_outbox_count(cl, &pending), "outbox");
    if (g_debug)
        fprintf(stderr, "fuzz_client: %zu-byte input: connected %d, sends of the queued message %d, open requests %d, "
                        "acked %d, shown %d, queued message state %d, outbox %u, OKs %d, lost %d\n",
                size, c.fd >= 0, c.nmid, c.nreqs, c.nacked, g_nshown, (int)st, pending, c.nok, c.tx_lost);
    if (st >= HUSH_MSG_SENT && !send_ok)
        violation("the queued message was marked sent without the relay's OK");
    if (!pending && !send_ok && st != HUSH_MSG_FAILED)
        violation("the queued message left the outbox without an OK");
    must(hush_client_check(cl), "integrity");
    hush_client_close(cl);
    check_refused_keys_back(&c);
    check_prekey_stock();
    free(c.rx);
    free(c.msg);
    free(c.tx);
    free(c.tmsg);
    fuzz_remove_db(g_work);
    return 0;
}
