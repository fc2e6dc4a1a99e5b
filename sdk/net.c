/*
 * net.c - libhush's network thread: one libwebsockets client context per hush_client.
 *
 * Everything that talks to the relay happens on this thread; app threads only commit to the
 * database (messaging.c) and wake it. Inbound: decrypt + store + session state in one transaction
 * (hush_decrypt), then the app callback, then "notified", and the ack to the relay only after the
 * commit. Outbound: outbox rows in order; device lists and sessions fetched when missing;
 * ciphertexts stored before the first attempt so every retry resends the same bytes under the same
 * client message id.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>

#include <libwebsockets.h>
#include <openssl/ssl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <sys/socket.h>
#if defined(__linux__)
#include <sys/prctl.h>
#elif defined(__APPLE__)
#include <pthread.h>
#endif

#include "hush_wire.h"
#include "net.h"

#define NET_MAX_FRAME (1024 * 1024)
#define NET_MAX_INFLIGHT 32
#define NET_MAX_REQS 128
#define NET_BACKOFF_MIN_MS 250
#define NET_BACKOFF_MAX_MS 30000
#define NET_RETRY_MS 2000
#define NET_TYPING_EVERY_MS 3000
#define NET_MAX_TYPING 32
#define SPK_MAX_AGE_MS (7ull * 24 * 3600 * 1000)
#define SPK_GRACE_MS (30ull * 24 * 3600 * 1000)
#define PREKEY_BATCH 100

enum nstate { N_IDLE, N_CONNECTING, N_HELLO, N_AUTH, N_ONLINE };
enum req_type { R_NONE, R_HELLO, R_AUTH, R_SEND, R_FETCH, R_UPLOAD, R_OTHER };

struct nbuf {
    struct nbuf *next;
    size_t len;
    unsigned char data[]; /* LWS_PRE, then the frame */
};

struct req {
    uint64_t id;
    enum req_type type;
    int64_t outbox_id;
    int kind;
    uint8_t mid[16];
    char peer[HUSH_USERNAME_MAX + 1];
};

struct typing_req {
    char peer[HUSH_USERNAME_MAX + 1];
    int typing;
    int pending;
    uint64_t last_sent_ms;
};

/* Deliveries that arrive together are decrypted and stored in one transaction (one fsync with
 * durability FULL instead of one per message), then acknowledged, then reported. */
#define NET_BATCH_MAX 128
#define NET_MAX_OFFERED 4

struct inbound {
    char from[HUSH_USERNAME_MAX + 1];
    uint32_t dev;
    uint64_t seq;
    uint8_t *env;
    size_t len;
    /* outcome, filled while the batch's transaction is open */
    hush_err e;
    hush_message *m;
    int held_first;   /* the first envelope held for this (peer, device): tell the app */
    int held_dropped; /* over the per-peer cap: not held, dropped */
};

/* Envelopes held for an identity decision, per peer (all its devices): nothing checks them
 * before the decision (libsignal refuses the identity before any MAC), so anyone could fill the
 * table otherwise. */
#define HELD_MAX_PER_PEER 200
#define HELD_BYTES_PER_PEER (8u << 20)

struct hush_net {
    hush_client *c;
    hush_callbacks cb;
    char host[256];
    char path[256];
    int port;
    int tls;
    int insecure;
    int connect_error_said;  /* this connection attempt's failure was reported already */
    int held_drop_said;      /* "too many held" was reported (once per network start) */
    char ca_file[512];
    char invite[129];
    pthread_t th;
    struct lws_context *ctx;
    struct lws *wsi;
    enum nstate st;
    atomic_int stop;
    atomic_int wake;          /* NET_WAKE_* flags from other threads */
    uint64_t next_id;
    uint8_t challenge[32];
    struct nbuf *out_head, *out_tail;
    struct hwire_rx rx; /* a frame arriving in pieces */
    struct req reqs[NET_MAX_REQS];
    int nreqs;
    struct offered {          /* one-time prekeys in a request still waiting for its Result */
        uint64_t req_id;
        uint32_t *ids;        /* NULL: slot free */
        size_t n;
    } offered[NET_MAX_OFFERED];
    int inflight;
    int64_t pump_cursor;      /* outbox id last handed out in this connection */
    int fetching;             /* a FetchBundles is outstanding: the pump waits */
    int unflushed_receipts;   /* messages notified since receipts were last flushed */
    uint64_t next_rotation_check_ms;
    char fetch_peer[HUSH_USERNAME_MAX + 1];
    char blocked_peer[HUSH_USERNAME_MAX + 1]; /* identity change pending: its outbox waits */
    int backoff_ms;
    uint64_t retry_at_ms;     /* pump again after a refusal (rate limit, quota...) */
    lws_sorted_usec_list_t sul_reconnect;
    lws_sorted_usec_list_t sul_tick;
    lws_sorted_usec_list_t sul_batch;
    struct inbound batch[NET_BATCH_MAX]; /* deliveries read in this pass, processed together */
    int nbatch;
    int batch_scheduled;
    /* status, read by other threads */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int waiters;       /* threads inside wait_until: hush_net_stop frees only at zero */
    hush_conn_state conn;
    hush_err last_err;
    int fatal;
    struct typing_req typing[NET_MAX_TYPING];
    int ntyping;
    pthread_mutex_t typing_mu;
};

/* Text from the relay (Result.message) on its way to the app: printable ASCII only, at most cap-1
 * bytes. A relay is not trusted to send valid UTF-8 (JNI's NewStringUTF aborts on invalid Modified
 * UTF-8) or harmless bytes (terminal escapes). */
static const char *relay_text(char *buf, size_t cap, const char *s)
{
    size_t n = 0;
    for (; s && *s && n + 1 < cap; s++)
        buf[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    buf[n] = '\0';
    return buf;
}

/* Why a connection attempt failed, in words a user can act on: the host name does not resolve,
 * nothing listens there, TLS failed (an untrusted certificate, or a port without TLS), or what
 * answered is not a WebSocket relay. libwebsockets' own text is kept at the end. */
static void describe_connect_error(struct hush_net *n, const char *why, char *out, size_t cap)
{
    char lws[96];
    relay_text(lws, sizeof lws, why);
    if (strstr(why, "SSL") || strstr(why, "ssl") || strstr(why, "TLS") || strstr(why, "tls") || strstr(why, "cert")) {
        snprintf(out, cap, "TLS with %.64s:%d failed: its certificate is not trusted (a self-signed relay needs "
                           "its CA file: --ca-file) or that port does not speak TLS [%s]", n->host, n->port, lws);
    } else if (strstr(why, "HS:") || strstr(why, "101") || strstr(why, "upgrade")) {
        snprintf(out, cap, "%.64s:%d answered, but not as a Hush relay (the WebSocket upgrade was refused: wrong "
                           "port or path?) [%s]", n->host, n->port, lws);
    } else {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        int rc = getaddrinfo(n->host, NULL, &hints, &res);
        if (res)
            freeaddrinfo(res);
        if (rc != 0)
            snprintf(out, cap, "unknown host %.64s: %s", n->host, gai_strerror(rc));
        else
            snprintf(out, cap, "cannot connect to %.64s:%d: refused or unreachable (is hushd running there?) [%s]",
                     n->host, n->port, lws[0] ? lws : "no answer");
    }
}


static int net_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len);

static const struct lws_protocols net_protocols[] = {
    { "hush.v1", net_callback, 0, 4096, 0, NULL, 0 },
    { NULL, NULL, 0, 0, 0, NULL, 0 },
};

static uint64_t now_ms(void) { return hsdk_now_ms(); }

/* ------------------------------------------------------------------------------------------ */
/* status */

static void set_conn(struct hush_net *n, hush_conn_state s, hush_err err)
{
    pthread_mutex_lock(&n->mu);
    int changed = n->conn != s;
    n->conn = s;
    if (err)
        n->last_err = err;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
    if (changed && n->cb.on_connection)
        n->cb.on_connection(n->cb.ctx, s, err);
}

static void report(struct hush_net *n, hush_err e, const char *detail)
{
    if (n->cb.on_error)
        n->cb.on_error(n->cb.ctx, e, detail);
}

static void signal_progress(struct hush_net *n)
{
    pthread_mutex_lock(&n->mu);
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

/* ------------------------------------------------------------------------------------------ */
/* sending frames */

static void queue_frame(struct hush_net *n, Hush__Frame *f)
{
    if (!n->wsi)
        return;
    size_t len = hush__frame__get_packed_size(f);
    struct nbuf *b = malloc(sizeof *b + LWS_PRE + len);
    if (!b)
        return;
    b->next = NULL;
    b->len = len;
    hush__frame__pack(f, b->data + LWS_PRE);
    if (n->out_tail)
        n->out_tail->next = b;
    else
        n->out_head = b;
    n->out_tail = b;
    lws_callback_on_writable(n->wsi);
}

static struct req *add_req(struct hush_net *n, enum req_type t)
{
    if (n->nreqs == NET_MAX_REQS)
        return NULL;
    struct req *r = &n->reqs[n->nreqs++];
    memset(r, 0, sizeof *r);
    r->id = n->next_id++;
    r->type = t;
    return r;
}

static int take_req(struct hush_net *n, uint64_t id, struct req *out)
{
    for (int i = 0; i < n->nreqs; i++) {
        if (n->reqs[i].id == id) {
            *out = n->reqs[i];
            n->reqs[i] = n->reqs[--n->nreqs];
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* one-time prekeys offered to the relay
 *
 * hush_prekey_upload marks the keys it puts in an upload as handed out. If the relay refuses the
 * request (a refusal stores nothing) they are put back, so a refused upload or registration does
 * not use them up. Without an answer (the connection went) they stay handed out: the relay may
 * have stored them, and a one-time key must never be published twice. */

static void forget_offer(struct offered *o)
{
    free(o->ids);
    o->ids = NULL;
    o->n = 0;
}

static void forget_offers(struct hush_net *n)
{
    for (int i = 0; i < NET_MAX_OFFERED; i++)
        forget_offer(&n->offered[i]);
}

static void put_back(struct hush_net *n, const uint32_t *ids, size_t cnt)
{
    hsdk_lock(n->c);
    hush_err e = hsdk_unpublish_pre_keys(n->c, ids, cnt);
    hsdk_unlock(n->c);
    if (e)
        report(n, e, "could not put back prekeys the relay refused");
}

static void offer_keys(struct hush_net *n, uint64_t req_id, const Hush__PreKeyUpload *up)
{
    if (!up || !up->n_one_time_pre_keys)
        return;
    struct offered *o = NULL;
    for (int i = 0; i < NET_MAX_OFFERED && !o; i++)
        if (!n->offered[i].ids)
            o = &n->offered[i];
    if (!o) { /* full: the oldest stays handed out, as if its answer never came */
        forget_offer(&n->offered[0]);
        memmove(&n->offered[0], &n->offered[1], (NET_MAX_OFFERED - 1) * sizeof n->offered[0]);
        o = &n->offered[NET_MAX_OFFERED - 1];
        o->ids = NULL;
    }
    o->ids = malloc(up->n_one_time_pre_keys * sizeof *o->ids);
    if (!o->ids)
        return;
    for (size_t i = 0; i < up->n_one_time_pre_keys; i++)
        o->ids[i] = up->one_time_pre_keys[i]->id;
    o->n = up->n_one_time_pre_keys;
    o->req_id = req_id;
}

/* The relay answered request req_id: its keys are published (OK) or put back (refused). */
static void settle_offer(struct hush_net *n, uint64_t req_id, int refused)
{
    for (int i = 0; i < NET_MAX_OFFERED; i++) {
        struct offered *o = &n->offered[i];
        if (!o->ids || o->req_id != req_id)
            continue;
        if (refused)
            put_back(n, o->ids, o->n);
        forget_offer(o);
    }
}

static void send_acks(struct hush_net *n, uint64_t *seqs, size_t count)
{
    if (!count)
        return;
    Hush__AckRequest a = HUSH__ACK_REQUEST__INIT;
    a.n_seqs = count;
    a.seqs = seqs;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_ACK;
    f.ack = &a;
    queue_frame(n, &f);
}

/* ------------------------------------------------------------------------------------------ */
/* storage helpers (each takes the client lock) */

struct orow {
    int64_t id;
    char peer[HUSH_USERNAME_MAX + 1];
    uint8_t mid[16];
    int kind;
    uint8_t *body;
    size_t len;
};

static int next_outbox_row(hush_client *c, int64_t after, const char *skip_peer, struct orow *o)
{
    hsdk_lock(c);
    sqlite3_stmt *st;
    int row = 0, found = 0;
    if (hstore_prepare(c->db, "SELECT id, peer, message_id, kind, body FROM outbox WHERE id > ?1 AND peer != ?2 "
                              "ORDER BY id LIMIT 1", &st) == HSTORE_OK) {
        sqlite3_bind_int64(st, 1, after);
        sqlite3_bind_text(st, 2, skip_peer, -1, SQLITE_TRANSIENT);
        if (hstore_step(c->db, st, &row) == HSTORE_OK && row) {
            const char *peer = (const char *)sqlite3_column_text(st, 1);
            o->id = sqlite3_column_int64(st, 0);
            snprintf(o->peer, sizeof o->peer, "%s", peer ? peer : "");
            if (sqlite3_column_bytes(st, 2) == 16)
                memcpy(o->mid, sqlite3_column_blob(st, 2), 16);
            o->kind = sqlite3_column_int(st, 3);
            char ad[160];
            hsdk_outbox_ad(ad, sizeof ad, o->peer, o->mid);
            found = hsdk_open(c, ad, sqlite3_column_blob(st, 4), (size_t)sqlite3_column_bytes(st, 4), &o->body,
                               &o->len) == HUSH_OK;
            sqlite3_reset(st);
        }
    }
    hsdk_unlock(c);
    return found;
}

static void exec1(hush_client *c, const char *sql, const char *text, const uint8_t *blob, int64_t num)
{
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, sql, &st) != HSTORE_OK)
        return;
    if (text)
        sqlite3_bind_text(st, 1, text, -1, SQLITE_TRANSIENT);
    if (blob)
        sqlite3_bind_blob(st, text ? 2 : 1, blob, 16, SQLITE_TRANSIENT);
    if (num >= 0)
        sqlite3_bind_int64(st, sqlite3_bind_parameter_count(st), num);
    if (hstore_run(c->db, st) != HSTORE_OK) {
        /* best effort: the worst outcome is a redundant fetch or resend later */
    }
}

static void forget_devices(hush_client *c, const char *peer)
{
    hsdk_lock(c);
    hsdk_peers_forget(c, peer);
    hsdk_unlock(c);
}

static void forget_envelopes(hush_client *c, const uint8_t mid[16])
{
    hsdk_lock(c);
    exec1(c, "DELETE FROM outbox_envelopes WHERE message_id = ?1", NULL, mid, -1);
    hsdk_unlock(c);
}

/* The stored envelope for (mid, dev), or NULL. */
static uint8_t *stored_envelope(hush_client *c, const uint8_t mid[16], uint32_t dev, size_t *len)
{
    hsdk_lock(c);
    sqlite3_stmt *st;
    int row = 0;
    uint8_t *out = NULL;
    if (hstore_prepare(c->db, "SELECT envelope FROM outbox_envelopes WHERE message_id = ?1 AND device_id = ?2", &st) ==
        HSTORE_OK) {
        sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        if (hstore_step(c->db, st, &row) == HSTORE_OK && row) {
            *len = (size_t)sqlite3_column_bytes(st, 0);
            out = malloc(*len ? *len : 1);
            if (out)
                memcpy(out, sqlite3_column_blob(st, 0), *len);
            sqlite3_reset(st);
        }
    }
    hsdk_unlock(c);
    return out;
}

/* Encrypts for one device and stores the envelope, atomically with the ratchet step: a crash
 * between the two would otherwise leave a state advanced for a ciphertext nobody kept. */
static uint8_t *make_envelope(struct hush_net *n, const struct orow *o, uint32_t dev, size_t *len, hush_err *err)
{
    hush_client *c = n->c;
    hsdk_lock(c);
    uint8_t *env = NULL;
    *err = hsdk_begin(c);
    if (!*err) {
        *err = hsdk_encrypt_kind(c, o->peer, dev, o->kind, o->body, o->len, o->mid, 0, &env, len);
        if (!*err) {
            sqlite3_stmt *st;
            hstore_err se = hstore_prepare(c->db, "INSERT OR REPLACE INTO outbox_envelopes (message_id, device_id, envelope) "
                                                  "VALUES (?1, ?2, ?3)", &st);
            if (!se) {
                sqlite3_bind_blob(st, 1, o->mid, 16, SQLITE_TRANSIENT);
                sqlite3_bind_int64(st, 2, dev);
                sqlite3_bind_blob(st, 3, env, (int)*len, SQLITE_TRANSIENT);
                se = hstore_run(c->db, st);
            }
            *err = hsdk_from_store(se);
        }
        if (!*err)
            *err = hsdk_commit(c);
        else
            hsdk_rollback(c);
    }
    hsdk_unlock(c);
    if (*err) {
        hush_free(env);
        return NULL;
    }
    /* hand back a plain malloc copy (hush_free'd buffer) */
    uint8_t *copy = malloc(*len);
    if (copy)
        memcpy(copy, env, *len);
    hush_free(env);
    return copy;
}

/* Tells the app a message's new state, unless a later state was already recorded (receipts can
 * arrive out of order: a read receipt before the delivery one, or before the relay's answer to
 * the send). What the app sees never goes backwards. */
static void report_state(struct hush_net *n, const char *peer, const uint8_t mid[16], int state)
{
    if (!n->cb.on_receipt)
        return;
    hush_msg_state cur = HUSH_MSG_QUEUED;
    if (hush_message_state(n->c, mid, &cur) == HUSH_OK && (int)cur != state)
        return;
    n->cb.on_receipt(n->cb.ctx, peer, mid, (hush_msg_state)state);
}

static void outbox_finished(struct hush_net *n, int64_t outbox_id, const uint8_t mid[16], int kind, int state,
                            const char *peer)
{
    hush_client *c = n->c;
    hsdk_lock(c);
    if (hsdk_begin(c) == HUSH_OK) {
        exec1(c, "DELETE FROM outbox WHERE id = ?1", NULL, NULL, outbox_id);
        exec1(c, "DELETE FROM outbox_envelopes WHERE message_id = ?1", NULL, mid, -1);
        if (kind == HUSH__CONTENT_KIND__CONTENT_TEXT)
            hsdk_set_message_state(c, mid, state);
        if (hsdk_commit(c)) {
            /* the row stays: it is resent (same id, deduplicated by the relay) */
        }
    }
    hsdk_unlock(c);
    if (kind == HUSH__CONTENT_KIND__CONTENT_TEXT)
        report_state(n, peer, mid, state);
    signal_progress(n);
}

/* ------------------------------------------------------------------------------------------ */
/* the outbox pump */

static void request_fetch(struct hush_net *n, const char *peer)
{
    struct req *r = add_req(n, R_FETCH);
    if (!r)
        return;
    snprintf(r->peer, sizeof r->peer, "%s", peer);
    Hush__FetchBundlesRequest fb = HUSH__FETCH_BUNDLES_REQUEST__INIT;
    fb.username = r->peer;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = r->id;
    f.msg_case = HUSH__FRAME__MSG_FETCH_BUNDLES;
    f.fetch_bundles = &fb;
    queue_frame(n, &f);
    n->fetching = 1;
    snprintf(n->fetch_peer, sizeof n->fetch_peer, "%s", peer);
}

#define MAX_DEVS 16

/* Sends one outbox row. Returns 1 if sent, 0 if it must wait (fetch started or retry later). */
static int send_row(struct hush_net *n, struct orow *o)
{
    hush_client *c = n->c;
    uint32_t devs[MAX_DEVS];
    int nd = hsdk_peers_list(c, o->peer, devs, MAX_DEVS);
    int missing = nd == 0;
    for (int i = 0; i < nd && !missing; i++)
        missing = !hush_has_session(c, o->peer, devs[i]);
    if (missing) {
        request_fetch(n, o->peer);
        return 0;
    }
    Hush__Recipient rcs[MAX_DEVS], *rp[MAX_DEVS];
    uint8_t *envs[MAX_DEVS] = { 0 };
    int ok = 1;
    for (int i = 0; i < nd && ok; i++) {
        size_t len = 0;
        envs[i] = stored_envelope(c, o->mid, devs[i], &len);
        if (!envs[i]) {
            hush_err e = HUSH_OK;
            envs[i] = make_envelope(n, o, devs[i], &len, &e);
            if (!envs[i]) {
                report(n, e, "encrypting an outgoing message failed; will retry");
                ok = 0;
                break;
            }
        }
        hush__recipient__init(&rcs[i]);
        rcs[i].username = o->peer;
        rcs[i].device_id = devs[i];
        rcs[i].envelope.data = envs[i];
        rcs[i].envelope.len = len;
        rp[i] = &rcs[i];
    }
    if (ok) {
        struct req *r = add_req(n, R_SEND);
        if (!r) {
            ok = 0;
        } else {
            r->outbox_id = o->id;
            r->kind = o->kind;
            memcpy(r->mid, o->mid, 16);
            snprintf(r->peer, sizeof r->peer, "%s", o->peer);
            Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
            s.client_msg_id.data = o->mid;
            s.client_msg_id.len = 16;
            s.n_recipients = (size_t)nd;
            s.recipients = rp;
            Hush__Frame f = HUSH__FRAME__INIT;
            f.id = r->id;
            f.msg_case = HUSH__FRAME__MSG_SEND;
            f.send = &s;
            queue_frame(n, &f);
            n->inflight++;
        }
    }
    for (int i = 0; i < nd; i++)
        free(envs[i]);
    if (!ok)
        n->retry_at_ms = now_ms() + NET_RETRY_MS;
    return ok;
}

static void pump_outbox(struct hush_net *n)
{
    if (n->st != N_ONLINE || n->fetching || (n->retry_at_ms && now_ms() < n->retry_at_ms))
        return;
    n->retry_at_ms = 0;
    while (n->inflight < NET_MAX_INFLIGHT) {
        struct orow o;
        memset(&o, 0, sizeof o);
        if (!next_outbox_row(n->c, n->pump_cursor, n->blocked_peer, &o))
            break;
        int sent;
        if (!strcmp(o.peer, n->c->username)) {
            /* queued by an older version: nothing to deliver to yet, so it fails */
            outbox_finished(n, o.id, o.mid, o.kind, HUSH_MSG_FAILED, o.peer);
            sent = 1;
        } else {
            sent = send_row(n, &o);
        }
        if (o.body) {
            sodium_memzero(o.body, o.len);
            free(o.body);
        }
        if (!sent)
            break; /* in order: later rows wait for this one */
        n->pump_cursor = o.id;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* inbound */

/* Inside the caller's transaction: the message is marked notified, and its sender is owed a
 * delivery receipt (pairwise texts). */
static hush_err mark_notified(hush_client *c, const hush_message *m)
{
    exec1(c, "UPDATE history SET notified = 1 WHERE id = ?1", NULL, NULL, m->local_id);
    return m->kind == HUSH_KIND_TEXT ? hsdk_queue_receipt(c, m->sender, HUSH_MSG_DELIVERED, m->message_id) : HUSH_OK;
}

/* After the app has been told: mark the message notified and owe its sender a delivery receipt,
 * in one transaction. Receipts go out in batches (flush_receipts). */
static void notify_and_mark(struct hush_net *n, const hush_message *m)
{
    if (n->cb.on_message)
        n->cb.on_message(n->cb.ctx, m);
    hush_client *c = n->c;
    hsdk_lock(c);
    if (hsdk_begin(c) == HUSH_OK) {
        hush_err e = mark_notified(c, m);
        e = hsdk_end(c, e);
        if (e)
            report(n, e, "could not record a delivery receipt");
    }
    hsdk_unlock(c);
    n->unflushed_receipts++;
}

static void flush_receipts(struct hush_net *n)
{
    if (!n->unflushed_receipts)
        return;
    int queued = 0;
    hsdk_lock(n->c);
    hush_err e = hsdk_flush_receipts(n->c, &queued);
    hsdk_unlock(n->c);
    if (e)
        report(n, e, "could not queue receipts");
    n->unflushed_receipts = 0;
    if (queued)
        pump_outbox(n);
}

static void on_identity(struct hush_net *n, const char *peer, uint32_t dev)
{
    char old_sn[HUSH_SAFETY_NUMBER_LEN + 1], new_sn[HUSH_SAFETY_NUMBER_LEN + 1];
    if (hush_identity_pending(n->c, peer, dev, old_sn, new_sn) == HUSH_OK && n->cb.on_identity_changed)
        n->cb.on_identity_changed(n->cb.ctx, peer, dev, old_sn, new_sn);
}

/* Phase 1 of an inbound envelope, inside the caller's transaction when there is one: decrypt and
 * store it (hush_decrypt), or keep it aside when its sender's identity changed. */
static void inbound_store(struct hush_net *n, struct inbound *in, int from_pending)
{
    in->m = NULL;
    in->e = hush_decrypt(n->c, in->from, in->dev, in->env, in->len, &in->m);
    if (in->e == HUSH_ERR_IDENTITY_CHANGED && !from_pending) {
        /* keep the envelope until the user decides, and let the relay forget it */
        hsdk_lock(n->c);
        sqlite3_stmt *st;
        int64_t peer_count = 0, peer_bytes = 0, dev_count = 0;
        int row = 0;
        hstore_err se = hstore_prepare(n->c->db, "SELECT count(*), coalesce(sum(length(envelope)), 0), "
                                                 "coalesce(sum(device_id = ?2), 0) FROM pending_inbox WHERE peer = ?1", &st);
        if (!se) {
            sqlite3_bind_text(st, 1, in->from, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 2, in->dev);
            se = hstore_step(n->c->db, st, &row);
            if (!se && row) {
                peer_count = sqlite3_column_int64(st, 0);
                peer_bytes = sqlite3_column_int64(st, 1);
                dev_count = sqlite3_column_int64(st, 2);
                sqlite3_reset(st);
            }
        }
        in->held_first = dev_count == 0;
        if (!se && (peer_count >= HELD_MAX_PER_PEER || peer_bytes + (int64_t)in->len > (int64_t)HELD_BYTES_PER_PEER)) {
            hsdk_unlock(n->c);
            in->held_dropped = 1; /* acknowledged and dropped: the sender keeps its own copy */
            return;
        }
        if (!se)
            se = hstore_prepare(n->c->db, "INSERT INTO pending_inbox (peer, device_id, envelope, received_at) "
                                          "VALUES (?1, ?2, ?3, ?4)", &st);
        if (!se) {
            sqlite3_bind_text(st, 1, in->from, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 2, in->dev);
            sqlite3_bind_blob(st, 3, in->env, (int)in->len, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 4, (int64_t)now_ms());
            se = hstore_run(n->c->db, st);
        }
        hsdk_unlock(n->c);
        if (se)
            in->e = HUSH_ERR_STORAGE; /* not kept: the relay must deliver it again */
        else
            in->e = HUSH_ERR_IDENTITY_CHANGED;
    }
}

/* Phase 2, once phase 1 is committed: tell the app. Texts are reported by the caller (they are
 * marked notified in a batch). Returns 1 if the envelope may be acknowledged to the relay. */
static int inbound_report(struct hush_net *n, struct inbound *in, int from_pending)
{
    hush_message *m = in->m;
    switch (in->e) {
    case HUSH_OK:
        if (m->kind == HUSH_KIND_RECEIPT && n->cb.on_receipt) {
            int state = m->body[0];
            for (size_t i = 1; i + HUSH_MESSAGE_ID_BYTES <= m->body_len; i += HUSH_MESSAGE_ID_BYTES)
                report_state(n, in->from, m->body + i, state);
            signal_progress(n);
        } else if (m->kind == HUSH_KIND_TYPING && n->cb.on_typing) {
            n->cb.on_typing(n->cb.ctx, in->from, in->dev, m->body[0] != 0);
        }
        return 1;
    case HUSH_ERR_DUPLICATE:
        return 1; /* already stored (and reported): just drop it */
    case HUSH_ERR_IDENTITY_CHANGED:
        if (!from_pending && in->held_dropped && !n->held_drop_said) {
            char detail[160];
            snprintf(detail, sizeof detail, "too many messages held from %s until its identity is decided: dropping more",
                     in->from);
            report(n, HUSH_ERR_IDENTITY_CHANGED, detail);
            n->held_drop_said = 1;
        } else if (!from_pending && in->held_first) {
            on_identity(n, in->from, in->dev); /* once per device, not for every held envelope */
        }
        return 1;
    case HUSH_ERR_STORAGE:
    case HUSH_ERR_NOMEM:
    case HUSH_ERR_DB_KEY:
    case HUSH_ERR_INTERNAL:
        report(n, in->e, "could not store an incoming message; the relay will deliver it again");
        return 0;
    default: {
        char detail[128];
        snprintf(detail, sizeof detail, "dropped an undecryptable message from %s/%u: %s", in->from, in->dev,
                 hush_strerror(in->e));
        report(n, in->e, detail);
        return 1;
    }
    }
}

static int is_text(const struct inbound *in)
{
    return in->e == HUSH_OK && (in->m->kind == HUSH_KIND_TEXT || in->m->kind == HUSH_KIND_GROUP_TEXT);
}

static void batch_clear(struct hush_net *n)
{
    for (int i = 0; i < n->nbatch; i++) {
        free(n->batch[i].env);
        hush_message_free(n->batch[i].m);
    }
    n->nbatch = 0;
}

/* Phase 1 for every delivery of the batch in one transaction (each decrypt is a savepoint inside
 * it, so one bad message rolls back alone), one commit, then the acks (one frame), then the app is
 * told, then everything reported is marked notified in one more transaction. A crash anywhere
 * before the commit loses nothing: nothing was acked, the relay delivers again. */
static void process_batch(struct hush_net *n)
{
    if (!n->nbatch)
        return;
    hush_client *c = n->c;
    hsdk_lock(c);
    int outer = hsdk_begin(c) == HUSH_OK;
    for (int i = 0; i < n->nbatch; i++)
        inbound_store(n, &n->batch[i], 0);
    hush_err ce = outer ? hsdk_commit(c) : HUSH_ERR_STORAGE;
    hsdk_unlock(c);
    if (ce) {
        /* rolled back as a whole: nothing is acknowledged, everything comes again */
        report(n, ce, "could not store incoming messages; the relay will deliver them again");
        batch_clear(n);
        return;
    }
    uint64_t seqs[NET_BATCH_MAX];
    size_t nseqs = 0;
    for (int i = 0; i < n->nbatch; i++)
        if (inbound_report(n, &n->batch[i], 0) && n->batch[i].seq)
            seqs[nseqs++] = n->batch[i].seq;
    send_acks(n, seqs, nseqs);
    /* texts: the app first, then one transaction marks them notified and owes receipts */
    int ntexts = 0;
    for (int i = 0; i < n->nbatch; i++)
        if (is_text(&n->batch[i])) {
            ntexts++;
            if (n->cb.on_message)
                n->cb.on_message(n->cb.ctx, n->batch[i].m);
        }
    if (ntexts) {
        hsdk_lock(c);
        hush_err e = hsdk_begin(c);
        for (int i = 0; i < n->nbatch && !e; i++)
            if (is_text(&n->batch[i]))
                e = mark_notified(c, n->batch[i].m);
        e = hsdk_end(c, e);
        hsdk_unlock(c);
        if (e)
            report(n, e, "could not record delivery receipts");
        n->unflushed_receipts += ntexts;
        if (n->unflushed_receipts >= 64)
            flush_receipts(n);
    }
    batch_clear(n);
}

static void batch_cb(lws_sorted_usec_list_t *sul)
{
    struct hush_net *n = lws_container_of(sul, struct hush_net, sul_batch);
    n->batch_scheduled = 0;
    process_batch(n);
}

/* Envelopes held for an identity decision: reprocess those whose peer is no longer pending. */
static void reprocess_pending(struct hush_net *n)
{
    for (;;) {
        hsdk_lock(n->c);
        sqlite3_stmt *st;
        int row = 0;
        int64_t id = 0;
        char peer[HUSH_USERNAME_MAX + 1] = "";
        uint32_t dev = 0;
        uint8_t *env = NULL;
        size_t len = 0;
        if (hstore_prepare(n->c->db, "SELECT p.id, p.peer, p.device_id, p.envelope FROM pending_inbox p WHERE NOT EXISTS "
                                     "(SELECT 1 FROM pending_identities i WHERE i.name = CAST(p.peer AS BLOB) AND "
                                     "i.device_id = p.device_id) ORDER BY p.id LIMIT 1", &st) == HSTORE_OK &&
            hstore_step(n->c->db, st, &row) == HSTORE_OK && row) {
            id = sqlite3_column_int64(st, 0);
            snprintf(peer, sizeof peer, "%s", (const char *)sqlite3_column_text(st, 1));
            dev = (uint32_t)sqlite3_column_int64(st, 2);
            len = (size_t)sqlite3_column_bytes(st, 3);
            env = malloc(len ? len : 1);
            if (env)
                memcpy(env, sqlite3_column_blob(st, 3), len);
            sqlite3_reset(st);
        }
        hsdk_unlock(n->c);
        if (!id || !env) {
            free(env);
            return;
        }
        struct inbound in;
        memset(&in, 0, sizeof in);
        snprintf(in.from, sizeof in.from, "%s", peer);
        in.dev = dev;
        in.env = env;
        in.len = len;
        inbound_store(n, &in, 1);
        hush_err e = in.e;
        if (e == HUSH_OK) {
            /* receipts and typing indicators held back too are reported like fresh ones */
            inbound_report(n, &in, 1);
            if (is_text(&in))
                notify_and_mark(n, in.m);
            hush_message_free(in.m);
        } else if (e == HUSH_ERR_IDENTITY_CHANGED) {
            free(env);
            return; /* rejected and still different: keep waiting for an accept */
        } else if (e == HUSH_ERR_STORAGE || e == HUSH_ERR_NOMEM) {
            free(env);
            return;
        }
        free(env);
        hsdk_lock(n->c);
        exec1(n->c, "DELETE FROM pending_inbox WHERE id = ?1", NULL, NULL, id);
        hsdk_unlock(n->c);
    }
}

/* Messages stored before a crash but never reported: report them now (same local_id). */
static void replay_unnotified(struct hush_net *n)
{
    for (;;) {
        hsdk_lock(n->c);
        sqlite3_stmt *st;
        int row = 0;
        int64_t id = 0;
        char peer[HUSH_USERNAME_MAX + 1] = "";
        if (hstore_prepare(n->c->db, "SELECT id, peer FROM history WHERE notified = 0 ORDER BY id LIMIT 1", &st) ==
                HSTORE_OK &&
            hstore_step(n->c->db, st, &row) == HSTORE_OK && row) {
            id = sqlite3_column_int64(st, 0);
            snprintf(peer, sizeof peer, "%s", (const char *)sqlite3_column_text(st, 1));
            sqlite3_reset(st);
        }
        hsdk_unlock(n->c);
        if (!id)
            return;
        hush_history_entry *h = NULL;
        size_t cnt = 0;
        hush_message m;
        memset(&m, 0, sizeof m);
        int found = 0;
        if (hsdk_valid_username(peer) && hush_history_list(n->c, peer, id + 1, 1, &h, &cnt) == HUSH_OK && cnt == 1 &&
            h[0].local_id == id) {
            m.kind = HUSH_KIND_TEXT;
            snprintf(m.sender, sizeof m.sender, "%s", peer);
            m.sender_device = h[0].peer_device;
            memcpy(m.message_id, h[0].message_id, 16);
            m.sent_at_ms = h[0].sent_at_ms;
            m.received_at_ms = h[0].received_at_ms;
            m.local_id = id;
            m.body = h[0].body;
            m.body_len = h[0].body_len;
            found = 1;
        }
        if (found) {
            notify_and_mark(n, &m);
        } else {
            hsdk_lock(n->c);
            exec1(n->c, "UPDATE history SET notified = 1 WHERE id = ?1", NULL, NULL, id);
            hsdk_unlock(n->c);
        }
        hush_history_free(h, cnt);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* login, keys, presence */

static void send_presence(struct hush_net *n)
{
    for (int kind = PRESENCE_ALLOW; kind <= PRESENCE_SUBSCRIBE; kind++) {
        char *names[1000];
        size_t cnt = 0;
        hsdk_lock(n->c);
        sqlite3_stmt *st;
        int row = 0;
        if (hstore_prepare(n->c->db, "SELECT username FROM presence_prefs WHERE kind = ?1 ORDER BY username", &st) ==
            HSTORE_OK) {
            sqlite3_bind_int(st, 1, kind);
            while (cnt < 1000 && hstore_step(n->c->db, st, &row) == HSTORE_OK && row) {
                names[cnt] = strdup((const char *)sqlite3_column_text(st, 0));
                if (names[cnt])
                    cnt++;
            }
            sqlite3_reset(st);
        }
        hsdk_unlock(n->c);
        struct req *r = add_req(n, R_OTHER);
        if (r && (kind == PRESENCE_ALLOW || cnt > 0)) {
            Hush__Frame f = HUSH__FRAME__INIT;
            f.id = r->id;
            Hush__SetPresenceAllowRequest a = HUSH__SET_PRESENCE_ALLOW_REQUEST__INIT;
            Hush__SubscribePresenceRequest s = HUSH__SUBSCRIBE_PRESENCE_REQUEST__INIT;
            if (kind == PRESENCE_ALLOW) {
                a.usernames = names;
                a.n_usernames = cnt;
                f.msg_case = HUSH__FRAME__MSG_SET_PRESENCE_ALLOW;
                f.set_presence_allow = &a;
            } else {
                s.usernames = names;
                s.n_usernames = cnt;
                f.msg_case = HUSH__FRAME__MSG_SUBSCRIBE_PRESENCE;
                f.subscribe_presence = &s;
            }
            queue_frame(n, &f);
        } else if (r) {
            n->nreqs--; /* nothing to send */
        }
        for (size_t i = 0; i < cnt; i++)
            free(names[i]);
    }
}

static int upload_in_flight(const struct hush_net *n)
{
    for (int i = 0; i < n->nreqs; i++)
        if (n->reqs[i].type == R_UPLOAD)
            return 1;
    return 0;
}

static void upload_keys(struct hush_net *n, uint32_t max_one_time)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    hush_err e = hush_prekey_upload(n->c, max_one_time, &buf, &len, NULL);
    if (e) {
        report(n, e, "could not prepare a prekey upload");
        return;
    }
    Hush__PreKeyUpload *up = hush__pre_key_upload__unpack(NULL, len, buf);
    hush_free(buf);
    if (!up) {
        report(n, HUSH_ERR_NOMEM, "could not prepare a prekey upload");
        return;
    }
    struct req *r = add_req(n, R_UPLOAD);
    if (r) {
        Hush__Frame f = HUSH__FRAME__INIT;
        f.id = r->id;
        f.msg_case = HUSH__FRAME__MSG_UPLOAD_PRE_KEYS;
        f.upload_pre_keys = up;
        queue_frame(n, &f);
        offer_keys(n, r->id, up);
    } else if (up->n_one_time_pre_keys) { /* never sent: the keys are not used up */
        uint32_t ids[PREKEY_BATCH];
        size_t cnt = 0;
        for (size_t i = 0; i < up->n_one_time_pre_keys && cnt < PREKEY_BATCH; i++)
            ids[cnt++] = up->one_time_pre_keys[i]->id;
        put_back(n, ids, cnt);
    }
    hush__pre_key_upload__free_unpacked(up, NULL);
}

static int registered(hush_client *c)
{
    int64_t v = 0;
    int found = 0;
    hsdk_lock(c);
    hush_err e = hsdk_meta_get_int(c, "registered", &v, &found);
    hsdk_unlock(c);
    return !e && found && v == 1;
}

static void send_auth(struct hush_net *n)
{
    hush_client *c = n->c;
    struct req *r = add_req(n, R_AUTH);
    if (!r)
        return;
    uint8_t sig[64];
    char user[HUSH_USERNAME_MAX + 1];
    uint32_t dev = 0, reg = 0;
    if (hush_device_info(c, user, &dev, &reg) != HUSH_OK)
        return;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = r->id;
    /* The proof names the relay as we reached it and, on TLS, this very connection: a proof
     * captured by whatever endpoint we reached is refused by any other relay or connection. */
    char origin[HWIRE_ORIGIN_MAX + 1];
    uint8_t binding[HWIRE_BINDING_BYTES];
    size_t blen = 0;
    if (hwire_origin(origin, sizeof origin, n->tls, n->host, n->port) != 0)
        return;
    if (n->tls) {
        SSL *ssl = lws_get_ssl(n->wsi);
        static const char label[] = "EXPORTER-Channel-Binding";
        if (!ssl || SSL_export_keying_material(ssl, binding, sizeof binding, label, sizeof label - 1, NULL, 0, 0) != 1) {
            report(n, HUSH_ERR_NETWORK, "no TLS channel binding on this connection");
            return;
        }
        blen = sizeof binding;
    }
    if (registered(c)) {
        if (hush_auth_proof(c, HWIRE_PURPOSE_LOGIN, origin, binding, blen, NULL, n->challenge, sig) != HUSH_OK)
            return;
        Hush__LoginRequest l = HUSH__LOGIN_REQUEST__INIT;
        l.username = user;
        l.device_id = dev;
        l.signature.data = sig;
        l.signature.len = 64;
        l.origin = origin;
        f.msg_case = HUSH__FRAME__MSG_LOGIN;
        f.login = &l;
        queue_frame(n, &f);
        return;
    }
    uint8_t auth[32], idk[33], *up = NULL;
    size_t uplen = 0;
    if (hush_device_auth_key(c, auth) != HUSH_OK || hush_device_identity_key(c, idk) != HUSH_OK)
        return;
    /* A failed earlier attempt may have marked keys as handed out: make sure some are left. */
    uint32_t stock = 0;
    if (hush_prekeys_remaining(c, &stock) == HUSH_OK && stock < PREKEY_BATCH / 2) {
        hsdk_lock(c);
        if (hsdk_generate_pre_keys(c, PREKEY_BATCH) != HUSH_OK)
            report(n, HUSH_ERR_STORAGE, "could not generate prekeys");
        hsdk_unlock(c);
    }
    if (hush_prekey_upload(c, PREKEY_BATCH, &up, &uplen, NULL) != HUSH_OK)
        return;
    Hush__PreKeyUpload *keys = hush__pre_key_upload__unpack(NULL, uplen, up);
    hush_free(up);
    if (!keys)
        return;
    Hush__RegisterRequest rr = HUSH__REGISTER_REQUEST__INIT;
    rr.username = user;
    rr.device_id = dev;
    rr.auth_key.data = auth;
    rr.auth_key.len = 32;
    rr.signature.data = sig;
    rr.signature.len = 64;
    rr.identity_key.data = idk;
    rr.identity_key.len = 33;
    rr.registration_id = reg;
    rr.keys = keys;
    rr.invite = n->invite;
    rr.origin = origin;
    uint8_t digest[HWIRE_REGISTER_DIGEST_BYTES];
    if (hwire_register_digest(&rr, digest) != 0 ||
        hush_auth_proof(c, HWIRE_PURPOSE_REGISTER, origin, binding, blen, digest, n->challenge, sig) != HUSH_OK) {
        uint32_t ids[PREKEY_BATCH]; /* never sent: the keys are not used up */
        size_t cnt = 0;
        for (size_t i = 0; i < keys->n_one_time_pre_keys && cnt < PREKEY_BATCH; i++)
            ids[cnt++] = keys->one_time_pre_keys[i]->id;
        put_back(n, ids, cnt);
        hush__pre_key_upload__free_unpacked(keys, NULL);
        return;
    }
    f.msg_case = HUSH__FRAME__MSG_REGISTER;
    f.register_ = &rr;
    queue_frame(n, &f);
    offer_keys(n, f.id, keys);
    hush__pre_key_upload__free_unpacked(keys, NULL);
}

/* Rotates the signed prekey when it is due (and uploads the new one); at login and hourly. */
static void rotation_check(struct hush_net *n)
{
    n->next_rotation_check_ms = now_ms() + 3600ull * 1000;
    int rotated = 0;
    hsdk_lock(n->c);
    hush_err e = hsdk_rotate_signed_pre_key(n->c, SPK_MAX_AGE_MS, SPK_GRACE_MS, &rotated);
    hsdk_unlock(n->c);
    if (e)
        report(n, e, "signed prekey rotation failed; will retry");
    else if (rotated)
        upload_keys(n, 0);
}

static void went_online(struct hush_net *n)
{
    n->st = N_ONLINE;
    n->backoff_ms = 0;
    set_conn(n, HUSH_CONN_ONLINE, HUSH_OK);
    send_presence(n);
    rotation_check(n);
    reprocess_pending(n);
    n->unflushed_receipts = 1; /* receipts owed from before a restart */
    flush_receipts(n);
    pump_outbox(n);
}

static hush_err fatal_for(int code)
{
    switch (code) {
    case HUSH__ERROR_CODE__AUTH_FAILED: return HUSH_ERR_AUTH_FAILED;
    case HUSH__ERROR_CODE__USERNAME_TAKEN: return HUSH_ERR_USERNAME_TAKEN;
    case HUSH__ERROR_CODE__REGISTRATION_CLOSED:
    case HUSH__ERROR_CODE__INVITE_INVALID: return HUSH_ERR_REGISTRATION_REFUSED;
    case HUSH__ERROR_CODE__BAD_KEYS:
    case HUSH__ERROR_CODE__UNSUPPORTED_VERSION: return HUSH_ERR_RELAY;
    default: return HUSH_OK;
    }
}

static void fail_for_good(struct hush_net *n, hush_err e)
{
    n->fatal = 1;
    set_conn(n, HUSH_CONN_FAILED, e);
    if (n->wsi)
        lws_set_timeout(n->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

/* ------------------------------------------------------------------------------------------ */
/* results and pushes */

/* 1 when `dev` has no trusted key on record but another device of `peer` has. */
static int is_new_device_of_known_user(hush_client *c, const char *peer, uint32_t dev)
{
    uint8_t key[33];
    int mine = 0, other = 0;
    hsdk_lock(c);
    hush_err e = hsdk_peer_identity(c, peer, dev, key, &mine);
    if (e == HUSH_OK && !mine)
        e = hsdk_peer_identity_other(c, peer, dev, key, &other);
    hsdk_unlock(c);
    sodium_memzero(key, sizeof key);
    return e == HUSH_OK && !mine && other;
}

/* Nobody to deliver to: the queued messages to `peer` at the head of the outbox fail (state
 * FAILED), so the rows behind them are not held up. */
static void fail_head_rows(struct hush_net *n, const char *peer)
{
    for (;;) {
        struct orow o;
        memset(&o, 0, sizeof o);
        if (!next_outbox_row(n->c, 0, "", &o))
            break;
        int match = !strcmp(o.peer, peer);
        if (o.body) {
            sodium_memzero(o.body, o.len);
            free(o.body);
        }
        if (!match)
            break;
        outbox_finished(n, o.id, o.mid, o.kind, HUSH_MSG_FAILED, o.peer);
    }
    n->pump_cursor = 0;
}

static void on_fetch_result(struct hush_net *n, const struct req *r, const Hush__Result *res)
{
    n->fetching = 0;
    if (res->code == HUSH__ERROR_CODE__UNKNOWN_USER) {
        fail_head_rows(n, r->peer);
        report(n, HUSH_ERR_UNKNOWN_USER, r->peer);
        return;
    }
    if (res->code != HUSH__ERROR_CODE__OK) {
        n->retry_at_ms = now_ms() + (res->retry_after_ms ? res->retry_after_ms : NET_RETRY_MS);
        return;
    }
    hush_client *c = n->c;
    hsdk_lock(c);
    hsdk_peers_forget(c, r->peer);
    hsdk_unlock(c);
    for (size_t i = 0; i < res->n_bundles; i++) {
        const Hush__KeyBundle *b = res->bundles[i];
        if (strcmp(b->username, r->peer) != 0)
            continue;
        uint32_t dev = b->device_id;
        if (!hush_has_session(c, r->peer, dev)) {
            size_t len = hush__key_bundle__get_packed_size(b);
            uint8_t *buf = malloc(len);
            if (!buf)
                continue;
            hush__key_bundle__pack(b, buf);
            hush_err e = hush_bundle_import(c, buf, len, NULL, NULL);
            free(buf);
            if (e == HUSH_ERR_IDENTITY_CHANGED) {
                /* A changed key of a known device holds every send to this peer until the user
                 * decides. A device never seen of a known user is left out of the device list:
                 * sends go to the devices the user already trusts, nothing to the new one. */
                if (!is_new_device_of_known_user(c, r->peer, dev))
                    snprintf(n->blocked_peer, sizeof n->blocked_peer, "%s", r->peer);
                on_identity(n, r->peer, dev);
                continue;
            }
            if (e) {
                char detail[96];
                snprintf(detail, sizeof detail, "a key bundle of %s/%u was refused", r->peer, dev);
                report(n, e, detail);
                continue;
            }
        }
        hsdk_lock(c);
        if (hsdk_peers_add(c, r->peer, dev, now_ms()) != HUSH_OK)
            report(n, HUSH_ERR_STORAGE, "could not record a contact's devices");
        hsdk_unlock(c);
    }
    uint32_t devs[1];
    if (hsdk_peers_list(c, r->peer, devs, 1) == 0 && strcmp(n->blocked_peer, r->peer) != 0) {
        /* not one usable device (every bundle refused, or none listed): the messages fail now
         * rather than block the outbox with fetches that cannot succeed */
        fail_head_rows(n, r->peer);
        return;
    }
    n->pump_cursor = 0; /* resume from the oldest row not yet acknowledged */
    n->inflight = 0;
    for (int i = 0; i < n->nreqs; i++)
        if (n->reqs[i].type == R_SEND)
            n->inflight++;
}

static void on_send_result(struct hush_net *n, const struct req *r, const Hush__Result *res)
{
    n->inflight--;
    switch (res->code) {
    case HUSH__ERROR_CODE__OK:
        outbox_finished(n, r->outbox_id, r->mid, r->kind, HUSH_MSG_SENT, r->peer);
        break;
    case HUSH__ERROR_CODE__UNKNOWN_RECIPIENT:
        /* the device list changed: forget it and this message's ciphertexts, fetch again */
        forget_devices(n->c, r->peer);
        forget_envelopes(n->c, r->mid);
        n->pump_cursor = 0;
        n->inflight = 0;
        break;
    default:
        /* rate limit, quota, storage trouble at the relay: the row stays, try again later */
        n->retry_at_ms = now_ms() + (res->retry_after_ms ? res->retry_after_ms : NET_RETRY_MS);
        n->pump_cursor = 0;
        n->inflight = 0;
        if (res->code == HUSH__ERROR_CODE__QUOTA_EXCEEDED)
            report(n, HUSH_ERR_RELAY, "the recipient's mailbox is full; will retry");
        break;
    }
}

static void handle_frame(struct hush_net *n, const uint8_t *data, size_t len)
{
    Hush__Frame *f = hush__frame__unpack(NULL, len, data);
    if (!f) {
        report(n, HUSH_ERR_RELAY, "the relay sent an undecodable frame");
        return;
    }
    /* deliveries gathered so far go first: everything else is handled in arrival order after them */
    if (f->msg_case != HUSH__FRAME__MSG_DELIVER && n->nbatch)
        process_batch(n);
    struct req r;
    char txt[128];
    switch (f->msg_case) {
    case HUSH__FRAME__MSG_WELCOME:
        if (n->st == N_HELLO && take_req(n, f->id, &r) && f->welcome->challenge.len == 32 && f->welcome->version == 1) {
            memcpy(n->challenge, f->welcome->challenge.data, 32);
            n->st = N_AUTH;
            send_auth(n);
        } else {
            report(n, HUSH_ERR_RELAY, "unexpected welcome");
        }
        break;
    case HUSH__FRAME__MSG_RESULT:
        if (!take_req(n, f->id, &r)) {
            if (f->result->code)
                report(n, HUSH_ERR_RELAY, relay_text(txt, sizeof txt, f->result->message));
            break;
        }
        if (r.type == R_AUTH || r.type == R_UPLOAD)
            settle_offer(n, r.id, f->result->code != HUSH__ERROR_CODE__OK);
        if (r.type == R_AUTH) {
            if (f->result->code == HUSH__ERROR_CODE__OK) {
                hsdk_lock(n->c);
                if (hsdk_meta_set_int(n->c, "registered", 1) != HUSH_OK)
                    report(n, HUSH_ERR_STORAGE, "could not record the registration");
                hsdk_unlock(n->c);
                went_online(n);
            } else {
                hush_err fe = fatal_for(f->result->code);
                if (fe) {
                    if (f->result->message && *f->result->message)
                        report(n, fe, relay_text(txt, sizeof txt, f->result->message)); /* the relay's reason */
                    fail_for_good(n, fe);
                } else
                    report(n, HUSH_ERR_RELAY, relay_text(txt, sizeof txt, f->result->message));
            }
        } else if (r.type == R_SEND) {
            on_send_result(n, &r, f->result);
            pump_outbox(n);
        } else if (r.type == R_FETCH) {
            on_fetch_result(n, &r, f->result);
            pump_outbox(n);
        } else if (r.type == R_UPLOAD && f->result->code) {
            report(n, HUSH_ERR_RELAY, "prekey upload refused");
        }
        break;
    case HUSH__FRAME__MSG_DELIVER: {
        const Hush__Deliver *d = f->deliver;
        if (!hsdk_valid_username(d->from_username) || d->from_device == 0) {
            report(n, HUSH_ERR_RELAY, "delivery with a bad sender");
            uint64_t seq = d->seq;
            send_acks(n, &seq, seq ? 1 : 0);
            break;
        }
        struct inbound *in = &n->batch[n->nbatch];
        memset(in, 0, sizeof *in);
        in->env = malloc(d->envelope.len ? d->envelope.len : 1);
        if (!in->env) {
            report(n, HUSH_ERR_NOMEM, "no memory for a delivery; the relay will deliver it again");
            break;
        }
        memcpy(in->env, d->envelope.data, d->envelope.len);
        in->len = d->envelope.len;
        snprintf(in->from, sizeof in->from, "%s", d->from_username);
        in->dev = d->from_device;
        in->seq = d->seq;
        n->nbatch++;
        if (n->nbatch == NET_BATCH_MAX) {
            process_batch(n);
        } else if (!n->batch_scheduled) {
            /* after the frames already read in this pass of the event loop */
            n->batch_scheduled = 1;
            lws_sul_schedule(n->ctx, 0, &n->sul_batch, batch_cb, 1);
        }
        break;
    }
    case HUSH__FRAME__MSG_PRE_KEYS_LOW: {
        if (n->st != N_ONLINE)
            break; /* a relay sends it after login only; an upload before it would be refused */
        /* However often it is said: one upload at a time, keys made only when none are waiting
         * to be published, and never more than HUSH_MAX_LOCAL_PREKEYS stored. */
        if (upload_in_flight(n))
            break;
        uint32_t unpublished = 0, total = 0;
        hsdk_lock(n->c);
        hush_err e = hsdk_prekey_stock(n->c, &unpublished, &total);
        if (!e && unpublished == 0 && total + PREKEY_BATCH <= HUSH_MAX_LOCAL_PREKEYS)
            e = hsdk_generate_pre_keys(n->c, PREKEY_BATCH);
        hsdk_unlock(n->c);
        if (e)
            report(n, e, "could not generate prekeys");
        else
            upload_keys(n, PREKEY_BATCH);
        break;
    }
    case HUSH__FRAME__MSG_PRESENCE:
        if (n->cb.on_presence && hsdk_valid_username(f->presence->username))
            n->cb.on_presence(n->cb.ctx, f->presence->username, f->presence->online, f->presence->last_seen_ms);
        break;
    case HUSH__FRAME__MSG_CLOSING:
        if (f->closing->code == HUSH__ERROR_CODE__SESSION_REPLACED) {
            report(n, HUSH_ERR_SESSION_REPLACED, "another connection logged in as this device; not reconnecting");
            fail_for_good(n, HUSH_ERR_SESSION_REPLACED);
        }
        break;
    case HUSH__FRAME__MSG_QUEUE_EMPTY:
        flush_receipts(n);
        signal_progress(n);
        break;
    default:
        break;
    }
    hush__frame__free_unpacked(f, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* typing */

static void send_typing(struct hush_net *n)
{
    for (;;) {
        char peer[HUSH_USERNAME_MAX + 1] = "";
        int typing = 0;
        pthread_mutex_lock(&n->typing_mu);
        for (int i = 0; i < n->ntyping && !peer[0]; i++) {
            if (n->typing[i].pending) {
                n->typing[i].pending = 0;
                snprintf(peer, sizeof peer, "%s", n->typing[i].peer);
                typing = n->typing[i].typing;
            }
        }
        pthread_mutex_unlock(&n->typing_mu);
        if (!peer[0] || n->st != N_ONLINE)
            return;
        uint32_t devs[MAX_DEVS];
        int nd = hsdk_peers_list(n->c, peer, devs, MAX_DEVS);
        Hush__Recipient rcs[MAX_DEVS], *rp[MAX_DEVS];
        uint8_t *envs[MAX_DEVS] = { 0 };
        int cnt = 0;
        uint8_t mid[16], body = (uint8_t)(typing ? 1 : 0);
        randombytes_buf(mid, sizeof mid);
        for (int i = 0; i < nd; i++) {
            size_t len = 0;
            hsdk_lock(n->c);
            hush_err e = hsdk_encrypt_kind(n->c, peer, devs[i], HUSH__CONTENT_KIND__CONTENT_TYPING, &body, 1, mid, 0,
                                            &envs[cnt], &len);
            hsdk_unlock(n->c);
            if (e)
                continue;
            hush__recipient__init(&rcs[cnt]);
            rcs[cnt].username = peer;
            rcs[cnt].device_id = devs[i];
            rcs[cnt].envelope.data = envs[cnt];
            rcs[cnt].envelope.len = len;
            rp[cnt] = &rcs[cnt];
            cnt++;
        }
        if (cnt) {
            struct req *r = add_req(n, R_OTHER);
            if (r) {
                Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
                s.client_msg_id.data = mid;
                s.client_msg_id.len = 16;
                s.n_recipients = (size_t)cnt;
                s.recipients = rp;
                s.ephemeral = 1;
                Hush__Frame f = HUSH__FRAME__INIT;
                f.id = r->id;
                f.msg_case = HUSH__FRAME__MSG_SEND;
                f.send = &s;
                queue_frame(n, &f);
            }
        }
        for (int i = 0; i < cnt; i++)
            hush_free(envs[i]);
    }
}

hush_err hush_typing(hush_client *c, const char *peer, int typing)
{
    if (!c || !hsdk_valid_username(peer))
        return HUSH_ERR_INVALID_ARG;
    pthread_mutex_lock(&c->net_mu);
    struct hush_net *n = c->net;
    hush_err e = HUSH_ERR_NOT_RUNNING;
    if (n) {
        e = HUSH_OK;
        pthread_mutex_lock(&n->typing_mu);
        struct typing_req *t = NULL;
        for (int i = 0; i < n->ntyping && !t; i++)
            if (!strcmp(n->typing[i].peer, peer))
                t = &n->typing[i];
        if (!t && n->ntyping < NET_MAX_TYPING) {
            t = &n->typing[n->ntyping++];
            memset(t, 0, sizeof *t);
            snprintf(t->peer, sizeof t->peer, "%s", peer);
        }
        uint64_t now = now_ms();
        int send = 0;
        if (t && (!typing || t->typing != typing || now - t->last_sent_ms >= NET_TYPING_EVERY_MS)) {
            t->typing = typing ? 1 : 0;
            t->pending = 1;
            t->last_sent_ms = now;
            send = 1;
        }
        pthread_mutex_unlock(&n->typing_mu);
        if (send) {
            atomic_fetch_or(&n->wake, NET_WAKE_TYPING);
            lws_cancel_service(n->ctx);
        }
    }
    pthread_mutex_unlock(&c->net_mu);
    return e;
}

/* ------------------------------------------------------------------------------------------ */
/* connection management */

static void connect_now(struct hush_net *n);

static void reconnect_cb(lws_sorted_usec_list_t *sul)
{
    struct hush_net *n = lws_container_of(sul, struct hush_net, sul_reconnect);
    connect_now(n);
}

static void schedule_reconnect(struct hush_net *n)
{
    if (atomic_load(&n->stop) || n->fatal)
        return;
    n->backoff_ms = n->backoff_ms ? n->backoff_ms * 2 : NET_BACKOFF_MIN_MS;
    if (n->backoff_ms > NET_BACKOFF_MAX_MS)
        n->backoff_ms = NET_BACKOFF_MAX_MS;
    /* jitter: 75%..125% so that clients of a restarted relay do not come back in lockstep */
    uint32_t span = (uint32_t)n->backoff_ms / 2;
    uint32_t delay = (uint32_t)n->backoff_ms * 3 / 4 + (span ? randombytes_uniform(span + 1) : 0);
    lws_sul_schedule(n->ctx, 0, &n->sul_reconnect, reconnect_cb, (lws_usec_t)delay * 1000);
}

static void connection_lost(struct hush_net *n)
{
    n->wsi = NULL;
    batch_clear(n); /* not acknowledged: the relay delivers them again */
    n->st = N_IDLE;
    while (n->out_head) {
        struct nbuf *b = n->out_head->next;
        free(n->out_head);
        n->out_head = b;
    }
    n->out_tail = NULL;
    hwire_rx_reset(&n->rx);
    n->nreqs = 0;
    forget_offers(n); /* unanswered: the relay may have stored them */
    n->inflight = 0;
    n->fetching = 0;
    n->pump_cursor = 0;
    if (!n->fatal && !atomic_load(&n->stop))
        set_conn(n, HUSH_CONN_OFFLINE, HUSH_ERR_NETWORK);
    schedule_reconnect(n);
}

static void connect_now(struct hush_net *n)
{
    if (atomic_load(&n->stop) || n->fatal || n->wsi)
        return;
    set_conn(n, HUSH_CONN_CONNECTING, HUSH_OK);
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = n->ctx;
    ci.address = n->host;
    ci.port = n->port;
    ci.path = n->path;
    ci.host = n->host;
    ci.origin = n->host;
    ci.protocol = "hush.v1";
    ci.pwsi = &n->wsi;
    if (n->tls)
        ci.ssl_connection = LCCSCF_USE_SSL | (n->insecure ? (LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                                                              LCCSCF_ALLOW_INSECURE | LCCSCF_ALLOW_EXPIRED)
                                                           : 0);
    n->st = N_CONNECTING;
    n->connect_error_said = 0;
    if (!lws_client_connect_via_info(&ci)) {
        if (!n->connect_error_said) { /* failed before any callback: most often the name did not resolve */
            char detail[400];
            describe_connect_error(n, "", detail, sizeof detail);
            report(n, HUSH_ERR_NETWORK, detail);
        }
        n->wsi = NULL;
        n->st = N_IDLE;
        set_conn(n, HUSH_CONN_OFFLINE, HUSH_ERR_NETWORK);
        schedule_reconnect(n);
    }
}

static int identity_pending_for(hush_client *c, const char *peer)
{
    hsdk_lock(c);
    sqlite3_stmt *st;
    int row = 0;
    if (hstore_prepare(c->db, "SELECT 1 FROM pending_identities WHERE name = ?1 LIMIT 1", &st) == HSTORE_OK) {
        sqlite3_bind_blob(st, 1, peer, (int)strlen(peer), SQLITE_TRANSIENT);
        if (hstore_step(c->db, st, &row) != HSTORE_OK)
            row = 1; /* when unsure, keep waiting */
        else if (row)
            sqlite3_reset(st);
    }
    hsdk_unlock(c);
    return row;
}

static void tick_cb(lws_sorted_usec_list_t *sul)
{
    struct hush_net *n = lws_container_of(sul, struct hush_net, sul_tick);
    if (n->st == N_ONLINE) {
        flush_receipts(n);
        if (now_ms() >= n->next_rotation_check_ms)
            rotation_check(n);
        if (n->retry_at_ms && now_ms() >= n->retry_at_ms) {
            pump_outbox(n);
        } else if (!n->retry_at_ms && !n->fetching && n->inflight == 0) {
            /* Idle: another process on this database (a one-shot `hush send`, `hush safety
             * --accept`) may have queued a message or decided on an identity: pick that up. */
            if (n->blocked_peer[0] && !identity_pending_for(n->c, n->blocked_peer)) {
                n->blocked_peer[0] = '\0';
                n->pump_cursor = 0;
            }
            reprocess_pending(n);
            pump_outbox(n);
        }
    }
    lws_sul_schedule(n->ctx, 0, &n->sul_tick, tick_cb, 500 * LWS_US_PER_MS);
}

static void handle_wake(struct hush_net *n)
{
    int w = atomic_exchange(&n->wake, 0);
    if (n->st != N_ONLINE)
        return;
    if (w & NET_WAKE_IDENTITY) {
        n->blocked_peer[0] = '\0';
        reprocess_pending(n);
        n->pump_cursor = 0;
    }
    if (w & NET_WAKE_PRESENCE)
        send_presence(n);
    if (w & NET_WAKE_TYPING)
        send_typing(n);
    if (w & (NET_WAKE_OUTBOX | NET_WAKE_IDENTITY))
        pump_outbox(n);
}

static int net_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)user;
    struct lws_context *ctx = lws_get_context(wsi);
    struct hush_net *n = ctx ? lws_context_user(ctx) : NULL;
    if (!n)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED: {
        /* Small frames, pipelined: Nagle + delayed ACK would add ~40 ms stalls. */
        int one = 1, fd = lws_get_socket_fd(wsi);
        if (fd >= 0 && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
            report(n, HUSH_ERR_NETWORK, "could not disable Nagle on the relay connection");
        n->st = N_HELLO;
        struct req *r = add_req(n, R_HELLO);
        Hush__Hello h = HUSH__HELLO__INIT;
        h.min_version = h.max_version = 1;
        h.client = "libhush/" "0.1.0";
        Hush__Frame f = HUSH__FRAME__INIT;
        f.id = r ? r->id : 1;
        f.msg_case = HUSH__FRAME__MSG_HELLO;
        f.hello = &h;
        queue_frame(n, &f);
        break;
    }
    case LWS_CALLBACK_CLIENT_RECEIVE: {
        size_t remaining = lws_remaining_packet_payload(wsi);
        int final = lws_is_final_fragment(wsi) && remaining == 0;
        const uint8_t *msg;
        size_t mlen;
        int rr = hwire_rx_feed(&n->rx, in, len, remaining, final, NET_MAX_FRAME, &msg, &mlen);
        if (rr == HWIRE_RX_TOO_BIG) {
            report(n, HUSH_ERR_RELAY, "the relay sent an oversized frame; reconnecting");
            return -1;
        }
        if (rr == HWIRE_RX_NOMEM)
            return -1;
        if (rr == HWIRE_RX_DONE) {
            handle_frame(n, msg, mlen);
            hwire_rx_consumed(&n->rx);
        }
        break;
    }
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        while (n->out_head) {
            struct nbuf *b = n->out_head;
            if (lws_write(wsi, b->data + LWS_PRE, b->len, LWS_WRITE_BINARY) < (int)b->len)
                return -1;
            n->out_head = b->next;
            if (!n->out_head)
                n->out_tail = NULL;
            free(b);
            if (lws_send_pipe_choked(wsi)) {
                if (n->out_head)
                    lws_callback_on_writable(wsi);
                break;
            }
        }
        break;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if (wsi == n->wsi || !n->wsi) {
            char detail[400];
            describe_connect_error(n, in ? (const char *)in : "", detail, sizeof detail);
            report(n, HUSH_ERR_NETWORK, detail);
            n->connect_error_said = 1;
            connection_lost(n);
        }
        break;
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (wsi == n->wsi)
            connection_lost(n);
        break;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        handle_wake(n);
        break;
    default:
        break;
    }
    return 0;
}

/* The thread's name in debuggers, crash reports and `top -H`; callbacks can tell where they run. */
static void name_this_thread(void)
{
#if defined(__linux__)
    (void)prctl(PR_SET_NAME, "hush-network", 0, 0, 0);
#elif defined(__APPLE__)
    (void)pthread_setname_np("hush-network");
#endif
}

static void *net_main(void *arg)
{
    struct hush_net *n = arg;
    name_this_thread();
    replay_unnotified(n);
    connect_now(n);
    lws_sul_schedule(n->ctx, 0, &n->sul_tick, tick_cb, 500 * LWS_US_PER_MS);
    while (!atomic_load(&n->stop))
        lws_service(n->ctx, 0);
    return NULL;
}

static int parse_url(struct hush_net *n, const char *url)
{
    const char *p;
    if (!strncmp(url, "ws://", 5)) {
        p = url + 5;
        n->tls = 0;
        n->port = 80;
    } else if (!strncmp(url, "wss://", 6)) {
        p = url + 6;
        n->tls = 1;
        n->port = 443;
    } else {
        return -1;
    }
    const char *slash = strchr(p, '/');
    size_t hl = slash ? (size_t)(slash - p) : strlen(p);
    if (hl == 0 || hl >= sizeof n->host)
        return -1;
    char hostport[256];
    memcpy(hostport, p, hl);
    hostport[hl] = '\0';
    char *colon = strrchr(hostport, ':');
    if (colon && !strchr(colon, ']')) {
        char *end = NULL;
        long port = strtol(colon + 1, &end, 10);
        if (!end || *end || port < 1 || port > 65535)
            return -1;
        n->port = (int)port;
        *colon = '\0';
    }
    if (hostport[0] == '[') { /* [::1] */
        size_t l = strlen(hostport);
        if (l < 3 || hostport[l - 1] != ']')
            return -1;
        hostport[l - 1] = '\0';
        memmove(hostport, hostport + 1, l - 1);
    }
    snprintf(n->host, sizeof n->host, "%s", hostport);
    snprintf(n->path, sizeof n->path, "%s", slash ? slash : "/");
    return 0;
}

static void lws_quiet(int level, const char *line)
{
    (void)level;
    (void)line;
}

static void load_meta_text(hush_client *c, const char *key, char *out, size_t cap)
{
    sqlite3_stmt *st;
    int row = 0;
    hsdk_lock(c);
    if (hstore_prepare(c->db, "SELECT bval FROM meta WHERE key = ?1", &st) == HSTORE_OK) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        if (hstore_step(c->db, st, &row) == HSTORE_OK && row) {
            snprintf(out, cap, "%.*s", sqlite3_column_bytes(st, 0), (const char *)sqlite3_column_blob(st, 0));
            sqlite3_reset(st);
        }
    }
    hsdk_unlock(c);
}

static void store_meta_text(hush_client *c, const char *key, const char *val)
{
    sqlite3_stmt *st;
    hsdk_lock(c);
    if (hstore_prepare(c->db, "INSERT INTO meta (key, bval) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET bval = "
                              "excluded.bval", &st) == HSTORE_OK) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, val, (int)strlen(val), SQLITE_TRANSIENT);
        if (hstore_run(c->db, st) != HSTORE_OK) {
            /* not fatal: it is simply not remembered */
        }
    }
    hsdk_unlock(c);
}

static void net_wake(hush_client *c, int flags);

/* How the rest of the SDK reaches this thread (core.c): installed at the first start. */
static const struct hsdk_net_hooks net_hooks = { net_wake, hush_net_stop };

hush_err hush_net_start(hush_client *c, const hush_net_opts *opts, const hush_callbacks *cb)
{
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    char url[300] = "";
    hsdk_lock(c);
    int has = c->has_device;
    sqlite3_stmt *st;
    int row = 0;
    if (opts && opts->relay_url) {
        snprintf(url, sizeof url, "%s", opts->relay_url);
    } else if (hstore_prepare(c->db, "SELECT bval FROM meta WHERE key = 'relay_url'", &st) == HSTORE_OK &&
               hstore_step(c->db, st, &row) == HSTORE_OK && row) {
        snprintf(url, sizeof url, "%.*s", sqlite3_column_bytes(st, 0), (const char *)sqlite3_column_blob(st, 0));
        sqlite3_reset(st);
    }
    hsdk_unlock(c);
    if (!has)
        return HUSH_ERR_NO_DEVICE;
    struct hush_net *n = calloc(1, sizeof *n);
    if (!n)
        return HUSH_ERR_NOMEM;
    n->c = c;
    if (cb)
        n->cb = *cb;
    n->next_id = 1;
    if (!url[0] || parse_url(n, url) != 0) {
        free(n);
        return HUSH_ERR_INVALID_ARG;
    }
    if (opts && opts->invite)
        snprintf(n->invite, sizeof n->invite, "%s", opts->invite);
    if (opts && opts->ca_file)
        snprintf(n->ca_file, sizeof n->ca_file, "%s", opts->ca_file);
    else
        load_meta_text(c, "relay_ca_file", n->ca_file, sizeof n->ca_file);
    n->insecure = opts ? opts->insecure_tls : 0;
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->cv, NULL);
    pthread_mutex_init(&n->typing_mu, NULL);
    /* remember the relay (and the CA file that goes with it) for next time */
    if (opts && opts->ca_file)
        store_meta_text(c, "relay_ca_file", n->ca_file);
    hsdk_lock(c);
    if (hstore_prepare(c->db, "INSERT INTO meta (key, bval) VALUES ('relay_url', ?1) "
                              "ON CONFLICT (key) DO UPDATE SET bval = excluded.bval", &st) == HSTORE_OK) {
        sqlite3_bind_blob(st, 1, url, (int)strlen(url), SQLITE_TRANSIENT);
        if (hstore_run(c->db, st) != HSTORE_OK) {
            /* not fatal: the URL is simply not remembered */
        }
    }
    hsdk_unlock(c);

    lws_set_log_level(LLL_ERR, lws_quiet);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = net_protocols;
    info.user = n;
    info.options = n->tls ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0;
    if (n->ca_file[0])
        info.client_ssl_ca_filepath = n->ca_file;
    info.fd_limit_per_thread = 64;
    /* libwebsockets sets SIGPIPE to SIG_IGN in every new context. A library must not take over a
     * process-wide signal the app (or its runtime: the JVM installs its own SIGPIPE handler) set
     * up: keep theirs; only a SIGPIPE left at its default stays ignored (a write to a dropped TLS
     * socket would otherwise kill the app). */
    struct sigaction old_pipe;
    int have_old_pipe = sigaction(SIGPIPE, NULL, &old_pipe) == 0;
    n->ctx = lws_create_context(&info);
    if (have_old_pipe && old_pipe.sa_handler != SIG_DFL)
        sigaction(SIGPIPE, &old_pipe, NULL);
    if (!n->ctx) {
        pthread_mutex_destroy(&n->mu);
        pthread_cond_destroy(&n->cv);
        pthread_mutex_destroy(&n->typing_mu);
        free(n);
        return HUSH_ERR_NETWORK;
    }
    pthread_mutex_lock(&c->net_mu);
    if (c->net) {
        pthread_mutex_unlock(&c->net_mu);
        lws_context_destroy(n->ctx);
        free(n);
        return HUSH_ERR_INVALID_ARG; /* already running */
    }
    c->net = n;
    c->net_hooks = &net_hooks;
    pthread_mutex_unlock(&c->net_mu);
    if (pthread_create(&n->th, NULL, net_main, n) != 0) {
        pthread_mutex_lock(&c->net_mu);
        c->net = NULL;
        pthread_mutex_unlock(&c->net_mu);
        lws_context_destroy(n->ctx);
        free(n);
        return HUSH_ERR_NETWORK;
    }
    return HUSH_OK;
}

void hush_net_stop(hush_client *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->net_mu);
    struct hush_net *n = c->net;
    if (n && pthread_equal(pthread_self(), n->th)) {
        /* From a callback: joining this very thread cannot work, and going on would free the
         * client under the running network loop. A bug in the app: stop here, loudly. */
        fputs("libhush: hush_net_stop or hush_client_close called from a callback on the network "
              "thread (see hush.h, \"Online\"): aborting\n", stderr);
        fflush(stderr);
        abort();
    }
    c->net = NULL;
    pthread_mutex_unlock(&c->net_mu);
    if (!n)
        return;
    atomic_store(&n->stop, 1);
    lws_cancel_service(n->ctx);
    pthread_join(n->th, NULL);
    lws_context_destroy(n->ctx);
    pthread_mutex_lock(&n->mu);
    n->conn = HUSH_CONN_STOPPED;
    pthread_cond_broadcast(&n->cv);
    /* threads blocked in hush_net_wait_online/_flush return HUSH_ERR_NOT_RUNNING; wait for them */
    while (atomic_load(&n->waiters) > 0)
        pthread_cond_wait(&n->cv, &n->mu);
    pthread_mutex_unlock(&n->mu);
    if (n->cb.on_connection)
        n->cb.on_connection(n->cb.ctx, HUSH_CONN_STOPPED, HUSH_OK);
    while (n->out_head) {
        struct nbuf *b = n->out_head->next;
        free(n->out_head);
        n->out_head = b;
    }
    batch_clear(n);
    forget_offers(n);
    hwire_rx_free(&n->rx);
    pthread_mutex_destroy(&n->mu);
    pthread_cond_destroy(&n->cv);
    pthread_mutex_destroy(&n->typing_mu);
    free(n);
}

static void net_wake(hush_client *c, int flags)
{
    pthread_mutex_lock(&c->net_mu);
    if (c->net) {
        atomic_fetch_or(&c->net->wake, flags);
        lws_cancel_service(c->net->ctx);
    }
    pthread_mutex_unlock(&c->net_mu);
}

hush_conn_state hush_net_state(hush_client *c, hush_err *last_error)
{
    hush_conn_state s = HUSH_CONN_STOPPED;
    if (last_error)
        *last_error = HUSH_OK;
    if (!c)
        return s;
    pthread_mutex_lock(&c->net_mu);
    if (c->net) {
        pthread_mutex_lock(&c->net->mu);
        s = c->net->conn;
        if (last_error)
            *last_error = c->net->last_err;
        pthread_mutex_unlock(&c->net->mu);
    }
    pthread_mutex_unlock(&c->net_mu);
    return s;
}

/* Waits on the network's condition variable until pred() holds; shared by the two waits. */
static hush_err wait_until(hush_client *c, int timeout_ms, int (*pred)(hush_client *, struct hush_net *, hush_err *))
{
    struct timespec deadline;
    hwire_deadline(&deadline, timeout_ms);
    /* Counted in under net_mu, so hush_net_stop (which unhooks c->net under net_mu) either sees
     * this waiter and waits for it to leave, or the waiter sees no network at all. */
    pthread_mutex_lock(&c->net_mu);
    struct hush_net *n = c->net;
    if (n)
        atomic_fetch_add(&n->waiters, 1);
    pthread_mutex_unlock(&c->net_mu);
    if (!n)
        return HUSH_ERR_NOT_RUNNING;
    hush_err result = HUSH_ERR_TIMEOUT;
    pthread_mutex_lock(&n->mu);
    for (;;) {
        if (n->conn == HUSH_CONN_STOPPED) {
            result = HUSH_ERR_NOT_RUNNING;
            break;
        }
        hush_err e = HUSH_OK;
        pthread_mutex_unlock(&n->mu);
        int done = pred(c, n, &e);
        pthread_mutex_lock(&n->mu);
        if (done) {
            result = e;
            break;
        }
        if (pthread_cond_timedwait(&n->cv, &n->mu, &deadline) == ETIMEDOUT) {
            pthread_mutex_unlock(&n->mu);
            done = pred(c, n, &e);
            pthread_mutex_lock(&n->mu);
            result = done ? e : HUSH_ERR_TIMEOUT;
            break;
        }
    }
    atomic_fetch_sub(&n->waiters, 1);
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
    return result;
}

static int pred_online(hush_client *c, struct hush_net *n, hush_err *e)
{
    (void)c;
    pthread_mutex_lock(&n->mu);
    hush_conn_state s = n->conn;
    hush_err le = n->last_err;
    pthread_mutex_unlock(&n->mu);
    if (s == HUSH_CONN_ONLINE) {
        *e = HUSH_OK;
        return 1;
    }
    if (s == HUSH_CONN_FAILED) {
        *e = le ? le : HUSH_ERR_RELAY;
        return 1;
    }
    return 0;
}

static int pred_flushed(hush_client *c, struct hush_net *n, hush_err *e)
{
    if (pred_online(c, n, e) && *e)
        return 1; /* failed for good */
    *e = HUSH_OK;
    int empty = 0;
    hsdk_lock(c);
    sqlite3_stmt *st;
    int row = 0;
    /* O(1), not count(*): this runs on every acknowledgement while a backlog drains */
    hstore_err se = hstore_prepare(c->db, "SELECT NOT EXISTS (SELECT 1 FROM outbox)", &st);
    if (!se)
        se = hstore_step(c->db, st, &row);
    if (!se && row) {
        empty = sqlite3_column_int(st, 0);
        sqlite3_reset(st);
    }
    hsdk_unlock(c);
    if (se)
        *e = hsdk_from_store(se);
    return *e || empty;
}

hush_err hush_net_wait_online(hush_client *c, int timeout_ms)
{
    if (!c || timeout_ms < 0)
        return HUSH_ERR_INVALID_ARG;
    return wait_until(c, timeout_ms, pred_online);
}

hush_err hush_net_flush(hush_client *c, int timeout_ms)
{
    if (!c || timeout_ms < 0)
        return HUSH_ERR_INVALID_ARG;
    return wait_until(c, timeout_ms, pred_flushed);
}
