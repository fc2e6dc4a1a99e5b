/*
 * fuzz_relay.c - the relay as a state machine. The real relay code (storage thread, event loop,
 * presence, directory) runs inside this process on a loopback port with a throw-away database, in
 * the spirit of mosquitto's broker fuzzer. Three registered users drive it over real WebSocket
 * connections with a fuzzer-chosen sequence of operations: send (to any of them, or to nobody;
 * as a one-to-one message or as a room message whose shared envelope the relay stores once),
 * acknowledge (their own deliveries, or any sequence number at all - another user's included),
 * raw frame bytes after login, bundle fetches, presence changes, device requests (list, link
 * token, removal), reconnects and reading pushes.
 *
 * Invariants (abort() on violation):
 * - nothing acked is lost: every message the relay acknowledged for a user is delivered to that
 *   user before the input ends (a final login drains each mailbox), unless that user acked it;
 * - no access to another user's mailbox: a user only ever receives messages that were sent to it,
 *   and acks from one user never remove another's messages (they would then be missing);
 * - the relay keeps answering: a fresh login works at the end of every input;
 * - a user's last device is never removed.
 *
 * Every input starts with empty mailboxes (the previous input's final drain acked everything).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "fuzz.h"
#include "inproc.h"
#include "hush.h"
#include "hush.pb-c.h"
#include "relay.h"
#include "relay_util.h"
#include "server.h"

#define NUSERS 3
#define MAX_MSGS 512
#define T 3000 /* ms: a reply slower than this means the relay stopped answering */

static struct relay_proc g_relay; /* only .port and .tls are used by the test client */
static struct tclient *g_u[NUSERS];
static int g_live[NUSERS]; /* connected and logged in */
static const char *g_names[NUSERS] = { "ann", "ben", "cat" };

/* messages of the current input, by number; the number is carried in the envelope */
struct msg {
    int to;        /* recipient index */
    int acked;     /* the relay acknowledged it (stored) */
    int delivered; /* the recipient got it at least once */
    int removed;   /* the recipient acked it */
    uint64_t seq;  /* the relay's seq for it (from the send's Result) */
};
static struct msg g_msgs[MAX_MSGS];
static int g_nmsgs;
static uint32_t g_run; /* input counter: envelopes of earlier inputs are recognisable */

/* seqs delivered to each user in this input (to ack them) */
static uint64_t g_seqs[NUSERS][MAX_MSGS];
static int g_seq_msg[NUSERS][MAX_MSGS];
static int g_nseqs[NUSERS];

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz_relay: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

int LLVMFuzzerInitialize(int *argc, char **argv[])
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    static const char *const set[][2] = {
        { "send_burst", "100000" }, { "send_refill_per_s", "100000" }, { "fetch_burst", "100000" },
        { "fetch_refill_per_min", "100000" }, { "delivery_window", "8" },
    };
    fuzz_relay_inproc(&g_relay, "relay", set, sizeof set / sizeof set[0], 0);
    for (int i = 0; i < NUSERS; i++) {
        g_u[i] = tc_registered(&g_relay, g_names[i], 1);
        g_live[i] = 1;
    }
    return 0;
}

/* Our envelopes: "fz" | input number | message number | tag. The tag (keyed hash, compared in
 * libsodium, which is not instrumented) keeps the fuzzer from forging one through a raw Send frame
 * - such frames are legitimate traffic, just not ours to account for. */
#define ENV_LEN (2 + 4 + 4 + crypto_shorthash_BYTES)
static const uint8_t g_tag_key[crypto_shorthash_KEYBYTES] = { 'f', 'u', 'z', 'z', '-', 'r', 'e', 'l', 'a', 'y' };

static void make_env(uint8_t env[ENV_LEN], int n)
{
    memcpy(env, "fz", 2);
    memcpy(env + 2, &g_run, 4);
    memcpy(env + 6, &n, 4);
    crypto_shorthash(env + 10, env, 10, g_tag_key);
}

static int parse_env(const ProtobufCBinaryData *e, uint32_t *run, int *n)
{
    uint8_t tag[crypto_shorthash_BYTES];
    if (e->len != ENV_LEN)
        return -1;
    crypto_shorthash(tag, e->data, 10, g_tag_key);
    if (sodium_memcmp(tag, e->data + 10, sizeof tag) != 0)
        return -1;
    memcpy(run, e->data + 2, 4);
    memcpy(n, e->data + 6, 4);
    return 0;
}

static int login(int u)
{
    if (tc_reconnect(g_u[u]) != 0 || tc_login(g_u[u]) != 0) {
        g_live[u] = 0;
        return -1;
    }
    g_live[u] = 1;
    return 0;
}

/* The next frame for u: queued pushes first (the test client queues what arrives while it waits
 * for a reply), then the socket. NULL on timeout or a closed connection. */
static Hush__Frame *next_frame(struct tclient *c, int ms)
{
    if (c->npush) {
        Hush__Frame *f = c->push[0];
        memmove(&c->push[0], &c->push[1], (c->npush - 1) * sizeof c->push[0]);
        c->npush--;
        return f;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    if (!c->ws || wsc_recv(c->ws, &buf, &len, ms) != 1)
        return NULL;
    Hush__Frame *f = hush__frame__unpack(NULL, len, buf);
    free(buf);
    if (!f)
        die("%s: the relay sent a frame that does not decode", c->user);
    return f;
}

/* Checks a Deliver and remembers its seq for acking; returns its message number or -1. */
static int on_deliver(int u, const Hush__Deliver *d)
{
    uint32_t run = 0;
    int n = -1;
    /* a room message carries the numbered envelope as its shared part (its own part empty) */
    if (parse_env(d->shared_envelope.len ? &d->shared_envelope : &d->envelope, &run, &n) == 0) {
        if (d->shared_envelope.len && d->envelope.len)
            die("%s received a room message with an own part nobody sent", g_names[u]);
        if (run == g_run) {
            if (n < 0 || n >= g_nmsgs || g_msgs[n].to != u)
                die("%s received message %d, which was sent to %s", g_names[u], n,
                    n >= 0 && n < g_nmsgs && g_msgs[n].to < NUSERS ? g_names[g_msgs[n].to] : "nobody");
            g_msgs[n].delivered = 1;
        } else if (run > g_run) {
            die("%s received a message from a later input", g_names[u]);
        } else {
            n = -1; /* an earlier input's, redelivered */
        }
    } else {
        n = -1; /* sent by a raw frame of the fuzzer's: not ours to account for */
    }
    if (d->seq && g_nseqs[u] < MAX_MSGS) {
        g_seq_msg[u][g_nseqs[u]] = n;
        g_seqs[u][g_nseqs[u]++] = d->seq;
    }
    return n;
}

/* Takes what has arrived for u (waiting up to ms for the first frame). 1 if QueueEmpty came. */
static int take_pushes(int u, int ms)
{
    int empty = 0;
    Hush__Frame *f;
    while ((f = next_frame(g_u[u], ms)) != NULL) {
        ms = 1;
        if (f->msg_case == HUSH__FRAME__MSG_QUEUE_EMPTY)
            empty = 1;
        else if (f->msg_case == HUSH__FRAME__MSG_DELIVER)
            on_deliver(u, f->deliver);
        hush__frame__free_unpacked(f, NULL);
    }
    return empty;
}

static void ack_seq(int u, uint64_t seq, int msg)
{
    if (!g_live[u])
        return;
    if (tc_ack(g_u[u], &seq, 1) == 0 && msg >= 0)
        g_msgs[msg].removed = 1;
}

/* Logs u in anew and takes its whole mailbox, acking each delivery as it comes (which frees the
 * delivery window) until the relay says QueueEmpty. 0 on success. */
static int drain(int u)
{
    g_nseqs[u] = 0;
    if (login(u) != 0)
        return -1;
    Hush__Frame *f;
    while ((f = next_frame(g_u[u], T)) != NULL) {
        int done = f->msg_case == HUSH__FRAME__MSG_QUEUE_EMPTY;
        if (f->msg_case == HUSH__FRAME__MSG_DELIVER && f->deliver->seq) {
            on_deliver(u, f->deliver);
            ack_seq(u, g_seqs[u][g_nseqs[u] - 1], g_seq_msg[u][g_nseqs[u] - 1]);
            g_nseqs[u] = 0;
        }
        hush__frame__free_unpacked(f, NULL);
        if (done)
            return 0;
    }
    return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_run++;
    g_nmsgs = 0;
    memset(g_msgs, 0, sizeof g_msgs);
    memset(g_nseqs, 0, sizeof g_nseqs);
    for (int u = 0; u < NUSERS; u++)
        if (!g_live[u] && login(u) != 0)
            die("%s cannot log in at the start of an input", g_names[u]);

    size_t i = 0;
    for (int ops = 0; i < size && ops < 64; ops++) {
        uint8_t op = data[i++];
        int u = op % NUSERS;
        uint8_t arg = i < size ? data[i] : 0;
        switch ((op / NUSERS) % 8) {
        case 0:
        case 1: { /* send to arg's user (3: an unknown user) */
            i++;
            if (!g_live[u] || g_nmsgs >= MAX_MSGS)
                break;
            int to = arg % (NUSERS + 1);
            int n = g_nmsgs++;
            g_msgs[n].to = to;
            uint8_t env[ENV_LEN], mid[16];
            make_env(env, n);
            memset(mid, 0, sizeof mid);
            memcpy(mid, &g_run, 4);
            memcpy(mid + 4, &n, 4);
            int r;
            if (arg & 0x80) {
                /* as a room message: the envelope is the shared part, stored once */
                Hush__Recipient rc = HUSH__RECIPIENT__INIT, *rp[1] = { &rc };
                rc.username = (char *)(to < NUSERS ? g_names[to] : "nobody");
                rc.device_id = 1;
                Hush__SendRequest sr = HUSH__SEND_REQUEST__INIT;
                sr.client_msg_id.data = mid;
                sr.client_msg_id.len = 16;
                sr.recipients = rp;
                sr.n_recipients = 1;
                sr.shared_envelope.data = env;
                sr.shared_envelope.len = sizeof env;
                Hush__Frame f = HUSH__FRAME__INIT;
                f.msg_case = HUSH__FRAME__MSG_SEND;
                f.send = &sr;
                Hush__Frame *res = tc_request(g_u[u], &f, T);
                r = !res ? -1 : res->msg_case != HUSH__FRAME__MSG_RESULT ? -2 : (int)res->result->code;
                if (r == 0 && res->result->n_seqs == 1)
                    g_msgs[n].seq = res->result->seqs[0];
                if (res)
                    hush__frame__free_unpacked(res, NULL);
            } else {
                r = tc_send(g_u[u], to < NUSERS ? g_names[to] : "nobody", 1, env, sizeof env, mid, &g_msgs[n].seq);
            }
            if (r == 0) {
                if (to == NUSERS)
                    die("a send to an unknown user was acknowledged");
                g_msgs[n].acked = 1;
            } else if (r < 0) {
                g_live[u] = 0; /* no answer: the connection went away */
            }
            break;
        }
        case 2: /* ack one of u's deliveries, the right way */
            i++;
            if (g_nseqs[u]) {
                int k = arg % g_nseqs[u];
                ack_seq(u, g_seqs[u][k], g_seq_msg[u][k]);
            }
            break;
        case 3: { /* ack the seq of any message of this input - another user's too - or a raw one */
            uint64_t seq = 0;
            int k = -1;
            if (g_nmsgs && !(arg & 0x80)) {
                k = arg % g_nmsgs;
                seq = g_msgs[k].seq;
                i++;
            } else {
                for (int b = 0; b < 3 && i < size; b++)
                    seq = seq << 8 | data[i++];
            }
            /* the owner may remove its own message by seq even unseen; anyone else removes nothing */
            if (g_live[u] && tc_ack(g_u[u], &seq, 1) == 0 && k >= 0 && g_msgs[k].to == u)
                g_msgs[k].removed = 1;
            break;
        }
        case 4: { /* raw bytes as a frame on u's connection */
            size_t len = arg % 64;
            i++;
            if (len > size - i)
                len = size - i;
            if (g_live[u] && wsc_send(g_u[u]->ws, data + i, len) != 0)
                g_live[u] = 0;
            i += len;
            if (g_live[u] && !tc_next_push(g_u[u], HUSH__FRAME__MSG_CLOSING, 5) && g_u[u]->ws == NULL)
                g_live[u] = 0;
            break;
        }
        case 5: /* reconnect and log in again (unacked deliveries come back) */
            g_nseqs[u] = 0;
            login(u);
            break;
        case 6: /* read what has arrived */
            if (g_live[u])
                take_pushes(u, 20);
            break;
        case 7: { /* fetch bundles, change presence, or the device requests */
            i++;
            if (!g_live[u])
                break;
            if (arg & 0x80) {
                /* list devices, a link token (for an address nobody waits at, or none), or a
                 * removal: each user has one device, which may never be removed */
                Hush__Frame f = HUSH__FRAME__INIT;
                Hush__ListDevicesRequest ld = HUSH__LIST_DEVICES_REQUEST__INIT;
                Hush__LinkTokenRequest lt = HUSH__LINK_TOKEN_REQUEST__INIT;
                Hush__RemoveDeviceRequest rd = HUSH__REMOVE_DEVICE_REQUEST__INIT;
                int which = (arg >> 1) % 3;
                if (which == 0) {
                    f.msg_case = HUSH__FRAME__MSG_LIST_DEVICES;
                    f.list_devices = &ld;
                } else if (which == 1) {
                    lt.address = (arg & 8) ? "00112233445566778899aabbccddeeff" : "";
                    f.msg_case = HUSH__FRAME__MSG_LINK_TOKEN;
                    f.link_token = &lt;
                } else {
                    rd.device_id = 1 + (arg >> 3) % 3;
                    f.msg_case = HUSH__FRAME__MSG_REMOVE_DEVICE;
                    f.remove_device = &rd;
                }
                Hush__Frame *r = tc_request(g_u[u], &f, T);
                if (!r) {
                    g_live[u] = 0;
                } else {
                    if (which == 2 && r->msg_case == HUSH__FRAME__MSG_RESULT && r->result->code == HUSH__ERROR_CODE__OK)
                        die("%s's only device was removed", g_names[u]);
                    hush__frame__free_unpacked(r, NULL);
                }
                break;
            }
            if (arg & 1) {
                Hush__Frame *r = tc_fetch(g_u[u], g_names[arg / 2 % NUSERS]);
                if (r)
                    hush__frame__free_unpacked(r, NULL);
            } else {
                Hush__SetPresenceAllowRequest pa = HUSH__SET_PRESENCE_ALLOW_REQUEST__INIT;
                char *names[NUSERS];
                for (int k = 0; k < NUSERS; k++)
                    names[k] = (char *)g_names[k];
                pa.usernames = names;
                pa.n_usernames = arg / 2 % (NUSERS + 1);
                Hush__Frame f = HUSH__FRAME__INIT;
                f.msg_case = HUSH__FRAME__MSG_SET_PRESENCE_ALLOW;
                f.set_presence_allow = &pa;
                Hush__Frame *r = tc_request(g_u[u], &f, T);
                if (r)
                    hush__frame__free_unpacked(r, NULL);
                else
                    g_live[u] = 0;
            }
            break;
        }
        }
    }

    /* every mailbox drains through a fresh login; then nothing acknowledged may be missing */
    for (int u = 0; u < NUSERS; u++)
        if (drain(u) != 0)
            die("%s: the relay stopped answering while draining", g_names[u]);
    for (int n = 0; n < g_nmsgs; n++) {
        const struct msg *m = &g_msgs[n];
        if (m->acked && !m->delivered && !m->removed)
            die("message %d to %s was acknowledged by the relay and never delivered", n, g_names[m->to]);
    }
    return 0;
}
