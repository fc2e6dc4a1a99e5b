/*
 * mailbox.c - the storage jobs about stored mail: send (per-device quotas, the share one sender may
 * fill, duplicates by client message id), fetch in seq order, ack, expiry. Owns the tables mailbox
 * and payloads, the in-memory quota cache and the messages waiting unwritten for their ack (early
 * delivery).
 *
 * Room messages. A send with a shared envelope stores it once (table payloads) and one row per
 * recipient device pointing at it (with that device's own pairwise part, often empty); a payload
 * goes when no row points at it any more (ack, expiry, device removal). Online recipients get it
 * early like any message (below): their waiting rows share one copy of the envelope in memory
 * (struct shared), written as a payload row only when the first of them has to be written.
 *
 * Early delivery. A message for a device that is online is delivered at once, before anything is
 * written, and waits in memory (struct pend) for early_delivery_ms. Its sender is answered when
 * every recipient device acknowledged it (each device's SDK acknowledges only after its own
 * commit, so the message is then on a disk: the recipient's) or when the rows still waiting were
 * written and committed, whichever comes first. A message acknowledged before it was due is never
 * written: no insert, no delete. Seqs come from a counter in memory that only grows, so a seq
 * handed out and never written (a crash, a failed commit) is never given to another message.
 * Whatever reads the mailbox or changes its rows other than sends and acks (fetch, expiry,
 * disconnect, device removal, ...) runs after every waiting message was written (storage.c).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "hmap.h"
#include "jobs.h"
#include "relay.h"

struct quota {
    int64_t count;
    int64_t bytes;
};

static struct hmap quota_map; /* user\0dev -> struct quota* (cache; cleared when unsure) */

/* A send answered only when its waiting rows are resolved (acknowledged or committed). */
struct sendwait {
    int loop;
    uint64_t conn, req_id;
    size_t n;
    uint64_t *seqs;  /* every recipient's seq, for the Result */
    int remaining;   /* rows not yet resolved */
    int failed;      /* a row's write failed: STORAGE_FAILED */
    int answered;    /* answered already (its batch failed): resolve silently */
    uint64_t batch;  /* the batch whose job made it */
};

/* A room message's shared envelope, held once for its waiting rows. row: its payloads row once one
 * was written for them (checked again before use: acks of written rows may have dropped it), and
 * the batch that wrote it (a failed batch did not). */
struct shared {
    int refs;
    int64_t row;
    uint64_t row_batch;
    size_t len;
    uint8_t data[];
};
/* A message delivered and waiting, unwritten, for its ack. */
struct pend {
    struct pend *prev, *next; /* in seq order */
    struct pend *job_next;    /* the job's list (jctx.new_pending) until the job succeeded */
    uint64_t seq, due_ms, received_at, expires_at;
    char recipient[RELAY_USERNAME_MAX + 1], sender[RELAY_USERNAME_MAX + 1];
    uint32_t rdev, sdev;
    uint8_t cmid[HWIRE_CLIENT_MSG_ID_BYTES];
    struct sendwait *w;
    int write_now;            /* a retry of it came: written in this batch */
    int non_urgent;           /* SendRequest.non_urgent */
    struct shared *sh;        /* a room message's shared envelope (NULL: none) */
    size_t len;               /* env's length (the device's own part) */
    uint8_t env[];
};

static struct {
    struct pend *head, *tail;
    struct hmap by_seq;    /* seq (8 bytes) -> pend */
    struct hmap by_msg;    /* recipient\0dev sender\0dev cmid -> pend (a retry finds it) */
    size_t n, bytes;
    uint64_t next_seq;
    struct sendwait **at_commit; /* one entry per row written in this batch */
    size_t nat, capat;
    size_t nflagged;       /* waiting rows a retry asked to be written in this batch */
    uint64_t batch;        /* the current batch's number */
} P;

#define PEND_MAX_ROWS 100000
#define PEND_MAX_BYTES (64u << 20)

int mailbox_init(char *err, size_t errlen)
{
    hmap_init(&quota_map, 1024);
    hmap_init(&P.by_seq, 1024);
    hmap_init(&P.by_msg, 1024);
    /* seqs continue after the highest ever given (AUTOINCREMENT keeps it in sqlite_sequence) */
    sqlite3_stmt *sq = NULL;
    int64_t hi = 0;
    if (hstore_prepare(senv.db, "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'mailbox'), 0), "
                                "coalesce((SELECT max(seq) FROM mailbox), 0))", &sq) != HSTORE_OK) {
        snprintf(err, errlen, "mailbox: %s", hstore_errmsg(senv.db));
        return -1;
    }
    int srow = 0;
    if (hstore_step(senv.db, sq, &srow) != HSTORE_OK) {
        snprintf(err, errlen, "mailbox: %s", hstore_errmsg(senv.db));
        return -1;
    }
    if (srow) {
        hi = sqlite3_column_int64(sq, 0);
        sqlite3_reset(sq);
    }
    P.next_seq = (uint64_t)hi + 1;
    int64_t depth = 0;
    sqlite3_stmt *st = NULL;
    if (hstore_prepare(senv.db, "SELECT count(*) FROM mailbox", &st) == HSTORE_OK) {
        int row = 0;
        if (hstore_step(senv.db, st, &row) == HSTORE_OK && row) {
            depth = sqlite3_column_int64(st, 0);
            sqlite3_reset(st);
        }
    }
    atomic_store(&g_metrics.mailbox_depth, depth);
    return 0;
}

static void wait_free(struct sendwait *w)
{
    if (w) {
        free(w->seqs);
        free(w);
    }
}

#define MSG_KEY_MAX (2 * (RELAY_USERNAME_MAX + 1 + 4) + HWIRE_CLIENT_MSG_ID_BYTES)
/* The key a retry of the same message to the same device has: recipient, device, sender, device,
 * client message id. */
static size_t msg_key(unsigned char *k, const char *recipient, uint32_t rdev, const char *sender, uint32_t sdev,
                      const uint8_t cmid[HWIRE_CLIENT_MSG_ID_BYTES])
{
    size_t n = relay_dev_key(k, recipient, rdev);
    n += relay_dev_key(k + n, sender, sdev);
    memcpy(k + n, cmid, HWIRE_CLIENT_MSG_ID_BYTES);
    return n + HWIRE_CLIENT_MSG_ID_BYTES;
}

static void pend_unlink(struct pend *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        P.head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        P.tail = p->prev;
    p->prev = p->next = NULL;
    hmap_del(&P.by_seq, &p->seq, sizeof p->seq);
    unsigned char k[MSG_KEY_MAX];
    hmap_del(&P.by_msg, k, msg_key(k, p->recipient, p->rdev, p->sender, p->sdev, p->cmid));
    P.n--;
    P.bytes -= p->len;
}

/* Frees a pend that is unlinked, and its share of the shared envelope. */
static void pend_free(struct pend *p)
{
    if (p->sh && --p->sh->refs == 0) {
        P.bytes -= p->sh->len;
        free(p->sh);
    }
    free(p);
}

/* What the recipient's mailbox counts for a waiting row (its own part and the shared one). */
static int64_t pend_quota_len(const struct pend *p)
{
    return (int64_t)(p->len + (p->sh ? p->sh->len : 0));
}

void mailbox_free(void)
{
    hmap_free(&quota_map, free);
    while (P.head) {
        struct pend *p = P.head;
        pend_unlink(p);
        if (p->w && --p->w->remaining == 0)
            wait_free(p->w);
        pend_free(p);
    }
    hmap_free(&P.by_seq, NULL);
    hmap_free(&P.by_msg, NULL);
    free(P.at_commit);
    P.at_commit = NULL;
    P.nat = P.capat = 0;
}

void mailbox_quota_clear(void)
{
    hmap_free(&quota_map, free);
    hmap_init(&quota_map, 1024);
}

static struct quota *quota_of(const char *user, uint32_t dev, hstore_err *e)
{
    unsigned char k[RELAY_USERNAME_MAX + 8];
    size_t kl = relay_dev_key(k, user, dev);
    *e = HSTORE_OK;
    struct quota *q = hmap_get(&quota_map, k, kl);
    if (q)
        return q;
    sqlite3_stmt *st;
    if ((*e = hstore_prepare(senv.db, "SELECT count(*), coalesce(sum(length(envelope) + payload_len), 0) FROM mailbox "
                                   "WHERE recipient = ?1 AND recipient_device = ?2", &st)))
        return NULL;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    int row = 0;
    if ((*e = hstore_step(senv.db, st, &row)) || !row)
        return NULL;
    q = malloc(sizeof *q);
    if (q) {
        q->count = sqlite3_column_int64(st, 0);
        q->bytes = sqlite3_column_int64(st, 1);
        int err = 0;
        hmap_put(&quota_map, k, kl, q, &err);
        if (err) {
            free(q);
            q = NULL;
        }
    }
    sqlite3_reset(st);
    return q;
}

static void add_delta(struct jctx *x, const char *user, uint32_t dev, int64_t count, int64_t bytes)
{
    if (x->ndeltas >= MAX_DELTAS) {
        x->ndeltas = -1; /* too many: the cache is cleared instead */
        return;
    }
    if (x->ndeltas < 0)
        return;
    struct delta *d = &x->deltas[x->ndeltas++];
    snprintf(d->user, sizeof d->user, "%s", user);
    d->dev = dev;
    d->count = count;
    d->bytes = bytes;
}

/* One sender may fill at most sender_share_percent of a recipient device's quota (count and
 * bytes), so nobody can make a device unreachable for everyone else by filling its mailbox. Only
 * a mailbox already over the share needs the per-sender count (an index range of that sender's
 * rows). */
static hstore_err over_sender_share(const struct quota *q, const char *sender, const Hush__Recipient *rc, int64_t len,
                                     int *over)
{
    *over = 0;
    if (senv.cfg->sender_share_percent >= 100 || !q)
        return HSTORE_OK;
    int64_t max_count = (int64_t)((uint64_t)senv.cfg->quota_messages * senv.cfg->sender_share_percent / 100);
    int64_t max_bytes = (int64_t)(senv.cfg->quota_bytes * senv.cfg->sender_share_percent / 100);
    if (q->count + 1 <= max_count && q->bytes + len <= max_bytes)
        return HSTORE_OK;
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(senv.db, "SELECT count(*), coalesce(sum(length(envelope) + payload_len), 0) FROM mailbox "
                                        "WHERE recipient = ?1 AND recipient_device = ?2 AND sender = ?3", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, rc->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, rc->device_id);
    sqlite3_bind_text(st, 3, sender, -1, SQLITE_TRANSIENT);
    int row = 0;
    if ((e = hstore_step(senv.db, st, &row)))
        return e;
    if (row) {
        *over = sqlite3_column_int64(st, 0) + 1 > max_count || sqlite3_column_int64(st, 1) + len > max_bytes;
        sqlite3_reset(st);
    }
    return HSTORE_OK;
}

/* A stored send must name exactly the current devices of every user it addresses, and every
 * other device of the sender's own user (so each device of both sides gets its copy). Otherwise
 * nothing is stored and the Result lists, per user, the devices missing and extra. Returns 1 when
 * the set matches; 0 when the job was answered or a storage error was set. The recipients are
 * sorted by (user, device) first, so a room send of n devices costs n log n, not n squared. */
struct match_user {
    const char *name;
    uint32_t missing[16], extra[16];
};
struct named {
    const char *name;
    uint32_t dev;
};

static int named_cmp(const void *a, const void *b)
{
    const struct named *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->dev > y->dev) - (x->dev < y->dev);
}

/* One user's devices against the entries v[0..n) naming it: 1 when they match, 0 when mm was
 * filled with the difference, -1 when the job was answered or failed. */
static int user_matches(struct jctx *x, const struct job *j, const char *user, const struct named *v, size_t n,
                        struct match_user *mu, Hush__DeviceMismatch *mm)
{
    uint32_t devs[16];
    size_t nd = 0;
    hstore_err e = accounts_user_devices(user, devs, 16, &nd);
    if (e) {
        x->store_err = e;
        return -1;
    }
    int self = !strcmp(user, j->username);
    if (self) {
        int here = 0;
        for (size_t d = 0; d < nd && !here; d++)
            here = devs[d] == j->device_id;
        if (!here) {
            /* removed while connected (by another device of its user, or by the operator) */
            jctx_fail(x, j, HUSH__ERROR_CODE__DEVICE_REMOVED, "this device was removed");
            struct event *k = event_new(EV_KICK, j->conn);
            if (k) {
                k->code = HUSH__ERROR_CODE__DEVICE_REMOVED;
                jctx_post(x, j->loop, k);
            }
            return -1;
        }
    }
    size_t nmiss = 0, nextra = 0;
    for (size_t d = 0; d < nd; d++) {
        if (self && devs[d] == j->device_id)
            continue;
        int named = 0;
        for (size_t i = 0; i < n && !named; i++)
            named = v[i].dev == devs[d];
        if (!named)
            mu->missing[nmiss++] = devs[d];
    }
    for (size_t i = 0; i < n; i++) {
        if (i && v[i].dev == v[i - 1].dev)
            continue; /* named twice (sorted: next to each other) */
        int found = 0;
        for (size_t d = 0; d < nd && !found; d++)
            found = devs[d] == v[i].dev;
        if ((!found || (self && v[i].dev == j->device_id)) && nextra < 16)
            mu->extra[nextra++] = v[i].dev;
    }
    if (!nmiss && !nextra)
        return 1;
    if (!self && nd == 0 && !nmiss) {
        /* nobody by that name at all */
        jctx_fail(x, j, HUSH__ERROR_CODE__UNKNOWN_RECIPIENT, user);
        return -1;
    }
    hush__device_mismatch__init(mm);
    mm->username = (char *)user;
    mm->missing = mu->missing;
    mm->n_missing = nmiss;
    mm->extra = mu->extra;
    mm->n_extra = nextra;
    return 0;
}

static int devices_match(struct jctx *x, const struct job *j)
{
    const Hush__SendRequest *s = j->frame->send;
    size_t n = s->n_recipients, cap = n + 1;
    struct named *v = malloc((n ? n : 1) * sizeof *v);
    Hush__DeviceMismatch *mm = malloc(cap * sizeof *mm);
    Hush__DeviceMismatch **mp = malloc(cap * sizeof *mp);
    struct match_user *mu = malloc(cap * sizeof *mu);
    int ok = 0;
    if (!v || !mm || !mp || !mu) {
        jctx_fail(x, j, HUSH__ERROR_CODE__INTERNAL, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        v[i].name = s->recipients[i]->username;
        v[i].dev = s->recipients[i]->device_id;
    }
    qsort(v, n, sizeof *v, named_cmp);
    size_t nm = 0;
    /* the sender's own user first (named or not), then every user named */
    size_t self_at = n, self_n = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v[i].name, j->username)) {
            if (self_at == n)
                self_at = i;
            self_n++;
        }
    int r = user_matches(x, j, j->username, v + (self_n ? self_at : 0), self_n, &mu[nm], &mm[nm]);
    if (r < 0)
        goto out;
    if (r == 0) {
        mp[nm] = &mm[nm];
        nm++;
    }
    for (size_t i = 0; i < n;) {
        size_t k = i + 1;
        while (k < n && !strcmp(v[k].name, v[i].name))
            k++;
        if (i != self_at) {
            r = user_matches(x, j, v[i].name, v + i, k - i, &mu[nm], &mm[nm]);
            if (r < 0)
                goto out;
            if (r == 0) {
                mp[nm] = &mm[nm];
                nm++;
            }
        }
        i = k;
    }
    if (!nm) {
        ok = 1;
        goto out;
    }
    Hush__Result res = HUSH__RESULT__INIT;
    res.code = HUSH__ERROR_CODE__DEVICE_MISMATCH;
    res.message = "the send does not name every device of its users";
    res.n_mismatches = nm;
    res.mismatches = mp;
    x->rollback = 1;
    metrics_error(res.code);
    jctx_reply(x, j, &res);
out:
    free(v);
    free(mm);
    free(mp);
    free(mu);
    return ok;
}

/* A room message's shared envelope, stored once: *id its row. */
static hstore_err insert_payload(const uint8_t *data, size_t len, int64_t *id)
{
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(senv.db, "INSERT INTO payloads (data) VALUES (?1)", &st);
    if (e)
        return e;
    sqlite3_bind_blob(st, 1, data, (int)len, SQLITE_STATIC);
    if ((e = hstore_run(senv.db, st)))
        return e;
    *id = sqlite3_last_insert_rowid(hstore_handle(senv.db));
    return HSTORE_OK;
}

static hstore_err payload_exists(int64_t id, int *have)
{
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(senv.db, "SELECT 1 FROM payloads WHERE id = ?1", &st);
    if (e)
        return e;
    sqlite3_bind_int64(st, 1, id);
    *have = 0;
    if ((e = hstore_step(senv.db, st, have)))
        return e;
    if (*have)
        sqlite3_reset(st);
    return HSTORE_OK;
}

/* Payloads no row points at any more: one (id) or, with id 0, all of them. */
static hstore_err drop_unreferenced_payloads(hstore *db, int64_t id)
{
    sqlite3_stmt *st;
    hstore_err e = id ? hstore_prepare(db, "DELETE FROM payloads WHERE id = ?1 AND NOT EXISTS "
                                           "(SELECT 1 FROM mailbox WHERE payload = ?1)", &st)
                      : hstore_prepare(db, "DELETE FROM payloads WHERE NOT EXISTS "
                                           "(SELECT 1 FROM mailbox WHERE payload = payloads.id)", &st);
    if (e)
        return e;
    if (id)
        sqlite3_bind_int64(st, 1, id);
    return hstore_run(db, st);
}

/* One stored message (a send written at once, or a waiting one whose wait is over); payload: the
 * row of its shared envelope (0: none) and that envelope's length. */
static hstore_err insert_row(uint64_t seq, const char *recipient, uint32_t rdev, const char *sender, uint32_t sdev,
                             const uint8_t cmid[HWIRE_CLIENT_MSG_ID_BYTES], const uint8_t *env, size_t len,
                             uint64_t received_at, uint64_t expires_at, int non_urgent, int64_t payload,
                             size_t payload_len)
{
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(senv.db, "INSERT INTO mailbox (seq, recipient, recipient_device, sender, sender_device, "
                                           "client_msg_id, envelope, received_at, expires_at, non_urgent, payload, "
                                           "payload_len) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)", &st);
    if (e)
        return e;
    sqlite3_bind_int64(st, 1, (int64_t)seq);
    sqlite3_bind_text(st, 2, recipient, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, rdev);
    sqlite3_bind_text(st, 4, sender, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, sdev);
    sqlite3_bind_blob(st, 6, cmid, HWIRE_CLIENT_MSG_ID_BYTES, SQLITE_STATIC);
    sqlite3_bind_blob(st, 7, len ? (const void *)env : (const void *)"", (int)len, SQLITE_STATIC); /* never NULL */
    sqlite3_bind_int64(st, 8, (int64_t)received_at);
    sqlite3_bind_int64(st, 9, (int64_t)expires_at);
    sqlite3_bind_int(st, 10, non_urgent != 0);
    if (payload)
        sqlite3_bind_int64(st, 11, payload);
    else
        sqlite3_bind_null(st, 11);
    sqlite3_bind_int64(st, 12, (int64_t)payload_len);
    return hstore_run(senv.db, st); /* resets the statement: the static bindings are not kept */
}

static struct pend *pend_new(struct jctx *x, const struct job *j, const Hush__Recipient *rc, uint64_t seq, uint64_t now,
                             uint64_t expires, struct shared **sh);
static void wait_resolved(struct jctx *x, struct sendwait *w, int now);

/* CHECK_SE for mailbox_send, which frees its arrays on the way out */
#define SE_OUT(expr)                  \
    do {                              \
        hstore_err _se = (expr);      \
        if (_se) {                    \
            x->store_err = _se;       \
            goto out;                 \
        }                             \
    } while (0)

void mailbox_send(struct jctx *x, const struct job *j)
{
    const Hush__SendRequest *s = j->frame->send;
    uint64_t now = relay_now_ms();
    uint64_t ttl_ms = senv.cfg->ttl_seconds ? (uint64_t)senv.cfg->ttl_seconds * 1000ull : (uint64_t)senv.cfg->ttl_days * 86400000ull;
    uint64_t expires = now + ttl_ms;
    sqlite3_stmt *st;
    struct route {
        int live;
        struct dir_entry d;
    };
    /* one allocation for the three per-recipient arrays (a room message may name thousands) */
    size_t nr = s->n_recipients;
    void *mem = malloc(nr * (sizeof(uint64_t) + sizeof(struct route) + sizeof(struct pend *)));
    if (!mem) {
        x->store_err = HSTORE_ERR_NOMEM;
        return;
    }
    struct route *route = mem;
    uint64_t *seqs = (uint64_t *)(route + nr);
    struct pend **pend = (struct pend **)(seqs + nr);
    size_t shared_len = s->shared_envelope.len;
    int64_t payload = 0; /* the shared envelope's row, once written */
    struct shared *sh = NULL; /* the shared envelope kept in memory for the rows that wait */
    if (!devices_match(x, j))
        goto out;
    int npend = 0, at_commit = 0; /* rows waiting for their ack / durable at this batch's commit */
    for (size_t i = 0; i < s->n_recipients; i++) {
        const Hush__Recipient *rc = s->recipients[i];
        route[i].live = 0;
        pend[i] = NULL;
        int row = 0;
        /* A retry of the same client message id is stored once: answer with the first seq. */
        SE_OUT(hstore_prepare(senv.db, "SELECT seq FROM mailbox WHERE recipient = ?1 AND recipient_device = ?2 AND "
                                    "sender = ?3 AND sender_device = ?4 AND client_msg_id = ?5", &st));
        sqlite3_bind_text(st, 1, rc->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, rc->device_id);
        sqlite3_bind_text(st, 3, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4, j->device_id);
        sqlite3_bind_blob(st, 5, s->client_msg_id.data, (int)s->client_msg_id.len, SQLITE_TRANSIENT);
        SE_OUT(hstore_step(senv.db, st, &row));
        if (row) {
            seqs[i] = (uint64_t)sqlite3_column_int64(st, 0);
            sqlite3_reset(st);
            continue;
        }
        /* ...or still waiting for its ack unwritten: it is written in this batch, and this send is
         * answered at the commit */
        unsigned char mk[MSG_KEY_MAX];
        struct pend *dup = hmap_get(&P.by_msg, mk, msg_key(mk, rc->username, rc->device_id, j->username, j->device_id,
                                                           s->client_msg_id.data));
        if (dup) {
            seqs[i] = dup->seq;
            if (!dup->write_now) {
                dup->write_now = 1;
                P.nflagged++;
            }
            at_commit++;
            continue;
        }
        hstore_err qe;
        struct quota *q = quota_of(rc->username, rc->device_id, &qe);
        SE_OUT(qe);
        int64_t len = (int64_t)(rc->envelope.len + shared_len); /* what this recipient's mailbox holds */
        if (q && (q->count + 1 > (int64_t)senv.cfg->quota_messages || q->bytes + len > (int64_t)senv.cfg->quota_bytes)) {
            jctx_fail(x, j, HUSH__ERROR_CODE__QUOTA_EXCEEDED, rc->username);
            goto out;
        }
        int share = 0;
        SE_OUT(over_sender_share(q, j->username, rc, len, &share));
        if (share) {
            jctx_fail(x, j, HUSH__ERROR_CODE__QUOTA_EXCEEDED, "your share of this recipient's mailbox is full");
            goto out;
        }
        seqs[i] = P.next_seq++; /* never reused, written or not */
        route[i].live = directory_lookup(rc->username, rc->device_id, &route[i].d);
        add_delta(x, rc->username, rc->device_id, 1, len);
        x->inserted++;
        if (route[i].live && senv.cfg->early_delivery_ms &&
            (pend[i] = pend_new(x, j, rc, seqs[i], now, expires, &sh))) {
            npend++;
            continue;
        }
        if (shared_len && !payload)
            SE_OUT(insert_payload(s->shared_envelope.data, shared_len, &payload));
        SE_OUT(insert_row(seqs[i], rc->username, rc->device_id, j->username, j->device_id, s->client_msg_id.data,
                          rc->envelope.data, rc->envelope.len, now, expires, s->non_urgent, payload, shared_len));
        if (!route[i].live) /* nobody to deliver to: wake the device (push.c decides) */
            push_note_stored(x, rc->username, rc->device_id, !s->non_urgent);
        if (x->store_err)
            goto out;
        /* a quota entry loaded during this job already counts the row when it was loaded after
         * the insert; entries loaded before it get the delta on release. */
        at_commit++;
    }
    /* Rows written in this batch (and retries of waiting rows, written in it too) are durable at
     * its commit: without waiting rows the usual answer after the commit is the right one. */
    if (!npend) {
        Hush__Result r = HUSH__RESULT__INIT;
        r.message = "";
        r.n_seqs = s->n_recipients;
        r.seqs = seqs;
        jctx_reply(x, j, &r);
    } else {
        struct sendwait *w = calloc(1, sizeof *w);
        uint64_t *ws = w ? malloc(s->n_recipients * sizeof *ws) : NULL;
        if (!ws) {
            free(w);
            x->store_err = HSTORE_ERR_NOMEM; /* the batch loop answers it and undoes the waiting rows */
            goto out;
        }
        memcpy(ws, seqs, s->n_recipients * sizeof *ws);
        if (sh && payload) {
            /* rows written now hold the payload: the waiting ones may use it (if it still exists) */
            sh->row = payload;
            sh->row_batch = P.batch;
        }
        w->loop = j->loop;
        w->conn = j->conn;
        w->req_id = j->req_id;
        w->n = s->n_recipients;
        w->seqs = ws;
        w->remaining = npend + (at_commit > 0);
        w->batch = P.batch;
        for (size_t i = 0; i < s->n_recipients; i++)
            if (pend[i])
                pend[i]->w = w;
        x->commit_wait = w;
        x->commit_rows = at_commit > 0;
    }
    for (size_t i = 0; i < s->n_recipients; i++) {
        if (!route[i].live)
            continue;
        const Hush__Recipient *rc = s->recipients[i];
        Hush__Deliver dv = HUSH__DELIVER__INIT;
        dv.seq = seqs[i];
        dv.from_username = (char *)j->username;
        dv.from_device = j->device_id;
        dv.envelope = rc->envelope;
        dv.shared_envelope = s->shared_envelope;
        dv.received_at_ms = now;
        dv.client_msg_id = s->client_msg_id;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.msg_case = HUSH__FRAME__MSG_DELIVER;
        f.deliver = &dv;
        struct event *e = event_new(EV_LIVE, route[i].d.conn);
        if (!e)
            continue;
        e->out = outbuf_from_frame(&f, seqs[i]);
        /* Delivered now, before the commit, whether it waits unwritten or was written: a device
         * then gets its messages in seq order. (Written ones used to go after the commit, and an
         * unwritten one with a higher seq, delivered first, moved the connection's cursor past
         * them: they stayed in the mailbox until the next login.) The sender is answered at the
         * commit or the recipient's ack, as before; a copy delivered from a batch that then fails
         * is sent again by its sender and dropped as a duplicate by the recipient. */
        jctx_post_now(x, route[i].d.loop, e);
    }
out:
    free(mem);
}

void mailbox_fetch(struct jctx *x, const struct job *j)
{
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "SELECT m.seq, m.sender, m.sender_device, m.client_msg_id, m.envelope, m.received_at, "
                                  "p.data FROM mailbox m LEFT JOIN payloads p ON p.id = m.payload "
                                  "WHERE m.recipient = ?1 AND m.recipient_device = ?2 AND m.seq > ?3 AND m.expires_at > ?4 "
                                  "ORDER BY m.seq LIMIT ?5", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    sqlite3_bind_int64(st, 3, (int64_t)j->after_seq);
    sqlite3_bind_int64(st, 4, (int64_t)relay_now_ms());
    sqlite3_bind_int64(st, 5, j->limit);
    struct event *e = event_new(EV_MAIL, j->conn);
    if (!e)
        return;
    struct outbuf **tail = &e->mail;
    uint32_t n = 0;
    int row = 0;
    hstore_err se;
    while ((se = hstore_step(senv.db, st, &row)) == HSTORE_OK && row) {
        Hush__Deliver dv = HUSH__DELIVER__INIT;
        dv.seq = (uint64_t)sqlite3_column_int64(st, 0);
        dv.from_username = (char *)sqlite3_column_text(st, 1);
        dv.from_device = (uint32_t)sqlite3_column_int64(st, 2);
        dv.client_msg_id.data = (uint8_t *)sqlite3_column_blob(st, 3);
        dv.client_msg_id.len = (size_t)sqlite3_column_bytes(st, 3);
        dv.envelope.data = (uint8_t *)sqlite3_column_blob(st, 4);
        dv.envelope.len = (size_t)sqlite3_column_bytes(st, 4);
        dv.received_at_ms = (uint64_t)sqlite3_column_int64(st, 5);
        dv.shared_envelope.data = (uint8_t *)sqlite3_column_blob(st, 6);
        dv.shared_envelope.len = (size_t)sqlite3_column_bytes(st, 6);
        Hush__Frame f = HUSH__FRAME__INIT;
        f.msg_case = HUSH__FRAME__MSG_DELIVER;
        f.deliver = &dv;
        struct outbuf *o = outbuf_from_frame(&f, dv.seq);
        if (!o)
            break;
        *tail = o;
        tail = &o->next;
        n++;
    }
    sqlite3_reset(st);
    if (se) {
        event_free(e);
        x->store_err = se;
        return;
    }
    e->drained = n < j->limit;
    if (e->drained)
        push_device_here(j->username, j->device_id); /* it has all its mail: no wake-up pending */
    jctx_post(x, j->loop, e);
}

void mailbox_ack(struct jctx *x, const struct job *j)
{
    const Hush__AckRequest *a = j->frame->ack;
    sqlite3_stmt *st;
    for (size_t i = 0; i < a->n_seqs; i++) {
        /* Waiting unwritten: the recipient has it on its own disk now, so it is never written and
         * its sender may be answered at once. */
        uint64_t seq = a->seqs[i];
        struct pend *p = hmap_get(&P.by_seq, &seq, sizeof seq);
        if (p && p->rdev == j->device_id && !strcmp(p->recipient, j->username)) {
            add_delta(x, j->username, j->device_id, -1, -pend_quota_len(p));
            x->deleted++;
            x->unwritten++;
            if (p->write_now)
                P.nflagged--;
            pend_unlink(p);
            wait_resolved(x, p->w, 1);
            pend_free(p);
            continue;
        }
        /* Only the owner's mailbox: someone else's seq matches nothing. */
        CHECK_SE(hstore_prepare(senv.db, "DELETE FROM mailbox WHERE seq = ?1 AND recipient = ?2 AND recipient_device = ?3 "
                                      "RETURNING length(envelope) + payload_len, coalesce(payload, 0)", &st));
        sqlite3_bind_int64(st, 1, (int64_t)a->seqs[i]);
        sqlite3_bind_text(st, 2, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, j->device_id);
        int row = 0;
        CHECK_SE(hstore_step(senv.db, st, &row));
        if (row) {
            add_delta(x, j->username, j->device_id, -1, -(int64_t)sqlite3_column_int64(st, 0));
            int64_t payload = sqlite3_column_int64(st, 1);
            x->deleted++;
            int more = 0;
            while (hstore_step(senv.db, st, &more) == HSTORE_OK && more) {
            }
            if (payload)
                CHECK_SE(drop_unreferenced_payloads(senv.db, payload));
        }
    }
    if (j->req_id)
        jctx_reply_code(x, j, HUSH__ERROR_CODE__OK, "");
}

/* expires_at = received_at + the configured TTL grows with seq, so the expired rows are the oldest
 * ones: find the first row still valid, walking from the oldest (cost: the expired rows + 1), and
 * delete everything before it by seq. After the TTL is lowered, a newer row can expire before older
 * ones; it then goes when they go. Fetches never hand out an expired row either way. */
void mailbox_expire(struct jctx *x)
{
    sqlite3_stmt *st;
    int64_t now = (int64_t)relay_now_ms();
    CHECK_SE(hstore_prepare(senv.db, "SELECT seq FROM mailbox WHERE expires_at > ?1 ORDER BY seq LIMIT 1", &st));
    sqlite3_bind_int64(st, 1, now);
    int row = 0;
    CHECK_SE(hstore_step(senv.db, st, &row));
    int64_t first_valid = row ? sqlite3_column_int64(st, 0) : INT64_MAX;
    sqlite3_reset(st);
    CHECK_SE(hstore_prepare(senv.db, "DELETE FROM mailbox WHERE seq < ?1", &st));
    sqlite3_bind_int64(st, 1, first_valid);
    CHECK_SE(hstore_run(senv.db, st));
    x->expired = hstore_changes(senv.db);
    if (x->expired) {
        x->ndeltas = -1; /* which devices lost rows is not tracked: reload the cache */
        CHECK_SE(drop_unreferenced_payloads(senv.db, 0));
    }
}

void mailbox_apply_deltas(struct jctx *x)
{
    if (x->ndeltas < 0) {
        mailbox_quota_clear();
        return;
    }
    for (int i = 0; i < x->ndeltas; i++) {
        unsigned char k[RELAY_USERNAME_MAX + 8];
        size_t kl = relay_dev_key(k, x->deltas[i].user, x->deltas[i].dev);
        struct quota *q = hmap_get(&quota_map, k, kl);
        if (q) {
            q->count += x->deltas[i].count;
            q->bytes += x->deltas[i].bytes;
        }
    }
}

hstore_err mailbox_delete_for(hstore *db, const char *user, uint32_t dev)
{
    sqlite3_stmt *st;
    hstore_err e = dev ? hstore_prepare(db, "DELETE FROM mailbox WHERE recipient = ?1 AND recipient_device = ?2", &st)
                       : hstore_prepare(db, "DELETE FROM mailbox WHERE recipient = ?1", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    if (dev)
        sqlite3_bind_int64(st, 2, dev);
    if ((e = hstore_run(db, st)))
        return e;
    return hstore_changes(db) ? drop_unreferenced_payloads(db, 0) : HSTORE_OK;
}

hstore_err mailbox_count_for(hstore *db, const char *user, uint32_t dev, int64_t *count)
{
    sqlite3_stmt *st;
    *count = 0;
    hstore_err e = hstore_prepare(db, "SELECT count(*) FROM mailbox WHERE recipient = ?1 AND recipient_device = ?2", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    int row = 0;
    if ((e = hstore_step(db, st, &row)))
        return e;
    if (row) {
        *count = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    return HSTORE_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* early delivery: messages waiting unwritten for their ack */

static void post_wait_reply(struct jctx *x, struct sendwait *w, int now)
{
    Hush__Result r = HUSH__RESULT__INIT;
    if (w->failed) {
        r.code = HUSH__ERROR_CODE__STORAGE_FAILED;
        r.message = "storage failed, nothing was stored";
    } else {
        r.message = "";
        r.n_seqs = w->n;
        r.seqs = w->seqs;
    }
    jctx_result_to(x, w->loop, w->conn, w->req_id, &r, now);
}

/* One of w's rows is resolved (acknowledged, committed or failed): the last one answers. */
static void wait_resolved(struct jctx *x, struct sendwait *w, int now)
{
    if (!w || --w->remaining > 0)
        return;
    if (!w->answered)
        post_wait_reply(x, w, now);
    wait_free(w);
}

static int at_commit_push(struct sendwait *w)
{
    if (P.nat == P.capat) {
        size_t cap = P.capat ? 2 * P.capat : 256;
        struct sendwait **a = realloc(P.at_commit, cap * sizeof *a);
        if (!a)
            return -1;
        P.at_commit = a;
        P.capat = cap;
    }
    P.at_commit[P.nat++] = w;
    return 0;
}

/* A message to (rc->username, rc->device_id), delivered now and waiting for its ack. NULL when
 * memory (or the waiting bounds) say write it at once instead. */
static struct pend *pend_new(struct jctx *x, const struct job *j, const Hush__Recipient *rc, uint64_t seq, uint64_t now,
                             uint64_t expires, struct shared **sh)
{
    const ProtobufCBinaryData *se = &j->frame->send->shared_envelope;
    size_t shared_new = se->len && !*sh ? se->len : 0;
    if (P.n >= PEND_MAX_ROWS || P.bytes + rc->envelope.len + shared_new > PEND_MAX_BYTES)
        return NULL;
    struct pend *p = malloc(sizeof *p + rc->envelope.len);
    if (!p)
        return NULL;
    memset(p, 0, sizeof *p);
    if (shared_new) {
        /* the first waiting row of this room send: the envelope is kept once for all of them */
        if (!(*sh = malloc(sizeof **sh + se->len))) {
            free(p);
            return NULL;
        }
        memset(*sh, 0, sizeof **sh);
        (*sh)->len = se->len;
        memcpy((*sh)->data, se->data, se->len);
        P.bytes += se->len;
    }
    if (*sh) {
        p->sh = *sh;
        (*sh)->refs++;
    }
    p->seq = seq;
    p->due_ms = now + senv.cfg->early_delivery_ms;
    p->received_at = now;
    p->expires_at = expires;
    snprintf(p->recipient, sizeof p->recipient, "%s", rc->username);
    snprintf(p->sender, sizeof p->sender, "%s", j->username);
    p->rdev = rc->device_id;
    p->sdev = j->device_id;
    memcpy(p->cmid, j->frame->send->client_msg_id.data, HWIRE_CLIENT_MSG_ID_BYTES);
    p->non_urgent = j->frame->send->non_urgent;
    p->len = rc->envelope.len;
    if (p->len) /* a room message's own part is often empty (data NULL) */
        memcpy(p->env, rc->envelope.data, p->len);
    int e1 = 0, e2 = 0;
    unsigned char k[MSG_KEY_MAX];
    hmap_put(&P.by_seq, &p->seq, sizeof p->seq, p, &e1);
    hmap_put(&P.by_msg, k, msg_key(k, p->recipient, p->rdev, p->sender, p->sdev, p->cmid), p, &e2);
    if (e1 || e2) {
        hmap_del(&P.by_seq, &p->seq, sizeof p->seq);
        hmap_del(&P.by_msg, k, msg_key(k, p->recipient, p->rdev, p->sender, p->sdev, p->cmid));
        if (p->sh && p->sh->refs == 1)
            *sh = NULL; /* freed with p: the next row makes it again */
        pend_free(p);
        return NULL;
    }
    p->prev = P.tail;
    if (P.tail)
        P.tail->next = p;
    else
        P.head = p;
    P.tail = p;
    P.n++;
    P.bytes += p->len;
    p->job_next = x->new_pending;
    x->new_pending = p;
    return p;
}

void mailbox_job_failed(struct jctx *x)
{
    struct sendwait *w = x->commit_wait;
    while (x->new_pending) {
        struct pend *p = x->new_pending;
        x->new_pending = p->job_next;
        if (p->w)
            w = p->w;
        if (p->write_now)
            P.nflagged--;
        pend_unlink(p);
        pend_free(p);
    }
    wait_free(w);
    x->commit_wait = NULL;
    x->commit_rows = 0;
}

void mailbox_job_done(struct jctx *x)
{
    x->new_pending = NULL;
    for (int i = 0; i < x->commit_rows; i++)
        if (at_commit_push(x->commit_wait) != 0) {
            /* cannot track it: answer as failed rather than never (the sender retries) */
            x->commit_wait->failed = 1;
            wait_resolved(x, x->commit_wait, 0);
        }
    x->commit_wait = NULL;
    x->commit_rows = 0;
}

void mailbox_flush_pending(struct jctx *x, int all)
{
    uint64_t now = relay_now_ms();
    struct pend *p = P.head;
    while (p) {
        struct pend *next = p->next;
        if (!all && !p->write_now && p->due_ms > now) {
            if (!P.nflagged)
                break; /* in seq order, so due in order too */
            p = next;
            continue;
        }
        struct shared *sh = p->sh;
        if (sh && sh->row) {
            int have = 0;
            CHECK_SE(payload_exists(sh->row, &have));
            if (!have)
                sh->row = 0; /* the rows written with it were all acknowledged since */
        }
        if (sh && !sh->row) {
            CHECK_SE(insert_payload(sh->data, sh->len, &sh->row));
            sh->row_batch = P.batch;
        }
        CHECK_SE(insert_row(p->seq, p->recipient, p->rdev, p->sender, p->sdev, p->cmid, p->env, p->len, p->received_at,
                            p->expires_at, p->non_urgent, sh ? sh->row : 0, sh ? sh->len : 0));
        if (p->write_now)
            P.nflagged--;
        pend_unlink(p);
        if (p->w && at_commit_push(p->w) != 0) {
            p->w->failed = 1;
            wait_resolved(x, p->w, 0);
        }
        x->written++;
        pend_free(p);
        p = next;
    }
}

void mailbox_batch_end(struct jctx *x, int ok)
{
    if (!ok) {
        /* the batch's jobs are all answered STORAGE_FAILED by the caller: their waiting rows go
         * (they were delivered; the senders retry, the recipients' SDKs drop what they have) */
        struct pend *p = P.head;
        while (p) {
            struct pend *next = p->next;
            if (p->w && p->w->batch == P.batch) {
                p->w->answered = 1;
                if (p->write_now)
                    P.nflagged--;
                pend_unlink(p);
                wait_resolved(x, p->w, 0);
                pend_free(p);
            } else if (p->sh && p->sh->row && p->sh->row_batch == P.batch) {
                p->sh->row = 0; /* written by this batch: rolled back with it */
            }
            p = next;
        }
    }
    for (size_t i = 0; i < P.nat; i++) {
        struct sendwait *w = P.at_commit[i];
        if (!ok) {
            w->failed = 1;
            if (w->batch == P.batch)
                w->answered = 1;
        }
        wait_resolved(x, w, 0);
    }
    P.nat = 0;
    P.batch++;
}

size_t mailbox_pending(uint64_t *due_ms)
{
    *due_ms = P.head ? (P.nflagged ? relay_now_ms() : P.head->due_ms) : 0;
    return P.n;
}

hstore_err mailbox_waiting_for(hstore *db, const char *user, uint32_t dev, int *waiting, int *urgent)
{
    sqlite3_stmt *st;
    *waiting = *urgent = 0;
    hstore_err e = hstore_prepare(db, "SELECT min(non_urgent) FROM mailbox WHERE recipient = ?1 AND "
                                      "recipient_device = ?2 AND expires_at > ?3", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    sqlite3_bind_int64(st, 3, (int64_t)relay_now_ms());
    int row = 0;
    e = hstore_step(db, st, &row);
    if (!e && row && sqlite3_column_type(st, 0) != SQLITE_NULL) {
        *waiting = 1;
        *urgent = sqlite3_column_int(st, 0) == 0;
    }
    sqlite3_reset(st);
    return e;
}

void mailbox_wake_if_waiting(struct jctx *x, const char *user, uint32_t dev)
{
    struct dir_entry d;
    if (directory_lookup(user, dev, &d) || !push_could_wake(x, user, dev))
        return;
    int waiting = 0, urgent = 0;
    CHECK_SE(mailbox_waiting_for(senv.db, user, dev, &waiting, &urgent));
    /* (the batch that runs this job wrote every copy still waiting for its ack first, so those
     * count.) Urgent when any of them is */
    if (waiting)
        push_note_stored(x, user, dev, urgent);
}
