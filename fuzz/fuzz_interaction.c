/*
 * fuzz_interaction.c - two SDK clients and a fuzzer-chosen schedule of send / deliver / drop /
 * reorder / duplicate / tamper / reopen-database, in the spirit of libsignal's "interaction"
 * target. Every input starts from the same pair of databases (alice and bob with a session in
 * both directions, copied from a template made once) and the same random stream.
 *
 * Invariants checked (abort() on violation, so libFuzzer keeps the input):
 * - a genuine envelope, delivered, decrypts (or is reported DUPLICATE if a copy already did),
 *   whatever was dropped, reordered, duplicated or tampered with before it, and across reopens -
 *   unless it is older than the recipient's five most recent receiving chains (libsignal keeps
 *   five; the harness models the ratchet's epochs to know which messages that rules out);
 * - nothing is accepted twice: each message's body is shown at most once;
 * - a tampered envelope is never accepted as anything but a genuine, not yet seen message;
 * - after the schedule, delivering everything still in flight and one more message each way
 *   works: the sessions converge.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "hush.h"

#define MAX_INFLIGHT 64 /* envelopes on the wire per direction */
#define MAX_SENT 300    /* messages per direction per input: far below libsignal's 2000-ahead cap */
#define MAX_OPS 400

static const char *g_name[2] = { "alice", "bob" };
static const uint8_t g_key[2][HUSH_DB_KEY_BYTES] = { { 4 }, { 5 } };
static char g_template[2][300], g_work[2][300];

struct wire {
    uint8_t *env;
    size_t len;
    int seq;      /* which message of the direction it carries */
    int tampered; /* bytes were changed on the wire */
    int epoch;    /* the sender's DH-ratchet step when it was encrypted */
};

struct direction {
    struct wire q[MAX_INFLIGHT];
    int n;
    int sent;
    uint8_t seen[MAX_SENT + 1]; /* seq -> shown to the recipient already */
    int epoch;   /* the sender's current ratchet step */
    int maxseen; /* the newest step of this direction the recipient has decrypted */
};

/* libsignal keeps this many receiving chains per session (notes: "5 receiver chains") */
#define RECEIVER_CHAINS 5

static hush_client *g_c[2];
static struct direction g_dir[2]; /* g_dir[0]: alice -> bob, g_dir[1]: bob -> alice */

static void must(hush_err e)
{
    if (e) {
        fprintf(stderr, "fuzz_interaction: setup failed: %s\n", hush_strerror(e));
        abort();
    }
}

static hush_client *open_db(const char *path, int who)
{
    hush_client *c = NULL;
    hush_open_opts o = { HUSH_DURABILITY_NORMAL };
    must(hush_client_open(path, g_key[who], &o, &c));
    return c;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    for (int i = 0; i < 2; i++) {
        snprintf(g_template[i], sizeof g_template[i], "%s/tpl-%s.db", fuzz_tmpdir(), g_name[i]);
        snprintf(g_work[i], sizeof g_work[i], "%s/run-%s.db", fuzz_tmpdir(), g_name[i]);
        fuzz_remove_db(g_template[i]);
    }
    hush_client *a = open_db(g_template[0], 0), *b = open_db(g_template[1], 1);
    must(hush_device_create(a, "alice", 1));
    must(hush_device_create(b, "bob", 1));
    uint8_t *bundle = NULL, *env = NULL;
    size_t blen = 0, elen = 0;
    must(hush_bundle_export(b, &bundle, &blen));
    must(hush_bundle_import(a, bundle, blen, NULL, NULL));
    hush_free(bundle);
    hush_message *m = NULL;
    must(hush_encrypt(a, "bob", 1, (const uint8_t *)"hello", 5, NULL, NULL, &env, &elen));
    must(hush_decrypt(b, "alice", 1, env, elen, &m));
    hush_message_free(m);
    hush_free(env);
    must(hush_encrypt(b, "alice", 1, (const uint8_t *)"hi", 2, NULL, NULL, &env, &elen));
    must(hush_decrypt(a, "bob", 1, env, elen, &m));
    hush_message_free(m);
    hush_free(env);
    hush_client_close(a); /* the last connection checkpoints: the .db file alone is the state */
    hush_client_close(b);
    return 0;
}

static void fail(const char *what, int d, int seq, hush_err e)
{
    fprintf(stderr, "fuzz_interaction: %s (%s -> %s, message %d): %s\n", what, g_name[d], g_name[!d], seq,
            hush_strerror(e));
    abort();
}

static void do_send(int d)
{
    struct direction *x = &g_dir[d];
    if (x->n >= MAX_INFLIGHT || x->sent >= MAX_SENT)
        return;
    char body[32];
    int seq = ++x->sent;
    int len = snprintf(body, sizeof body, "%c%d", d ? 'B' : 'A', seq);
    struct wire *w = &x->q[x->n];
    uint8_t *env = NULL;
    hush_err e = hush_encrypt(g_c[d], g_name[!d], 1, (const uint8_t *)body, (size_t)len, NULL, NULL, &env, &w->len);
    if (e)
        fail("encrypt failed", d, seq, e);
    /* the wire owns plain malloc'd copies (duplicates are made with malloc too) */
    w->env = malloc(w->len);
    memcpy(w->env, env, w->len);
    hush_free(env);
    w->seq = seq;
    w->tampered = 0;
    w->epoch = x->epoch;
    x->n++;
}

/* Delivers in-flight envelope k of direction d to its recipient and checks the outcome. */
static void deliver(int d, int k)
{
    struct direction *x = &g_dir[d];
    struct wire w = x->q[k];
    memmove(&x->q[k], &x->q[k + 1], (size_t)(x->n - k - 1) * sizeof x->q[0]);
    x->n--;
    hush_message *m = NULL;
    hush_err e = hush_decrypt(g_c[!d], g_name[d], 1, w.env, w.len, &m);
    if (e == HUSH_OK) {
        /* whatever arrived must be a genuine message of this direction, shown once */
        int seq = 0;
        char tag = 0;
        char body[32];
        if (m->body_len == 0 || m->body_len >= sizeof body)
            fail("accepted a body that was never sent", d, w.seq, e);
        memcpy(body, m->body, m->body_len);
        body[m->body_len] = '\0';
        if (sscanf(body, "%c%d", &tag, &seq) != 2 || tag != (d ? 'B' : 'A') || seq < 1 || seq > x->sent)
            fail("accepted a body that was never sent", d, w.seq, e);
        if (!w.tampered && seq != w.seq)
            fail("decrypted to another message's body", d, w.seq, e);
        if (x->seen[seq])
            fail("a message was accepted twice", d, seq, e);
        x->seen[seq] = 1;
        hush_message_free(m);
        /* a new ratchet key: the recipient makes a new receiving and a new sending chain */
        if (w.epoch > x->maxseen) {
            x->maxseen = w.epoch;
            g_dir[!d].epoch++;
        }
    } else if (!w.tampered && e == HUSH_ERR_BAD_MESSAGE && w.epoch <= x->maxseen - RECEIVER_CHAINS) {
        /* its receiving chain was evicted: lost by design, not a bug */
    } else if (!w.tampered && e != HUSH_ERR_DUPLICATE) {
        fail("a genuine envelope was refused", d, w.seq, e);
    } else if (!w.tampered && !x->seen[w.seq]) {
        fail("DUPLICATE for a message never shown", d, w.seq, e);
    }
    free(w.env);
}

static void reopen(int who)
{
    hush_client_close(g_c[who]);
    g_c[who] = open_db(g_work[who], who);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_random_reset(1);
    for (int i = 0; i < 2; i++) {
        fuzz_remove_db(g_work[i]);
        fuzz_copy_file(g_template[i], g_work[i]);
        g_c[i] = open_db(g_work[i], i);
    }
    memset(g_dir, 0, sizeof g_dir);
    /* the template's exchange (alice -> bob, bob -> alice) left alice at step 2, bob at step 1 */
    g_dir[0].epoch = 2;
    g_dir[0].maxseen = 1;
    g_dir[1].epoch = 1;
    g_dir[1].maxseen = 1;

    size_t ops = 0;
    for (size_t i = 0; i < size && ops < MAX_OPS; ops++) {
        uint8_t op = data[i++];
        uint8_t arg = i < size ? data[i] : 0;
        int d = op & 1;
        struct direction *x = &g_dir[d];
        switch ((op >> 1) % 8) {
        case 0:
        case 1: /* send (twice as likely: keeps traffic flowing) */
            do_send(d);
            break;
        case 2: /* deliver one */
            i++;
            if (x->n)
                deliver(d, arg % x->n);
            break;
        case 3: /* drop one */
            i++;
            if (x->n) {
                int k = arg % x->n;
                free(x->q[k].env);
                memmove(&x->q[k], &x->q[k + 1], (size_t)(x->n - k - 1) * sizeof x->q[0]);
                x->n--;
            }
            break;
        case 4: /* duplicate one */
            i++;
            if (x->n && x->n < MAX_INFLIGHT) {
                struct wire *src = &x->q[arg % x->n], *dst = &x->q[x->n];
                *dst = *src;
                dst->env = malloc(src->len);
                memcpy(dst->env, src->env, src->len);
                x->n++;
            }
            break;
        case 5: /* reorder: move one to the front */
            i++;
            if (x->n > 1) {
                int k = arg % x->n;
                struct wire w = x->q[k];
                memmove(&x->q[1], &x->q[0], (size_t)k * sizeof x->q[0]);
                x->q[0] = w;
            }
            break;
        case 6: /* tamper: xor a byte */
            if (i + 1 < size && x->n) {
                struct wire *w = &x->q[arg % x->n];
                uint8_t at = data[i + 1];
                i += 2;
                uint8_t mask = (uint8_t)((at >> 4) | 1);
                w->env[at % w->len] ^= mask;
                w->tampered = 1;
            } else {
                i = size;
            }
            break;
        case 7: /* reopen a database */
            reopen(d);
            break;
        }
    }
    /* drain: everything still on the wire arrives, in wire order */
    for (int d = 0; d < 2; d++)
        while (g_dir[d].n)
            deliver(d, 0);
    /* converged: one more message each way goes through */
    for (int d = 0; d < 2; d++) {
        if (g_dir[d].sent >= MAX_SENT)
            continue;
        do_send(d);
        struct wire w = g_dir[d].q[0];
        deliver(d, 0);
        if (!g_dir[d].seen[w.seq])
            fail("the sessions did not converge", d, w.seq, HUSH_ERR_BAD_MESSAGE);
    }
    for (int i = 0; i < 2; i++) {
        hush_client_close(g_c[i]);
        g_c[i] = NULL;
    }
    return 0;
}
