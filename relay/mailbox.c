/*
 * mailbox.c - the storage jobs about stored mail: send (per-device quotas, the share one sender may
 * fill, duplicates by client message id), fetch in seq order, ack, expiry. Owns the table mailbox
 * and the in-memory quota cache.
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

int mailbox_init(char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    hmap_init(&quota_map, 1024);
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

void mailbox_free(void) { hmap_free(&quota_map, free); }

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
    if ((*e = hstore_prepare(senv.db, "SELECT count(*), coalesce(sum(length(envelope)), 0) FROM mailbox "
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
static hstore_err over_sender_share(const struct quota *q, const char *sender, const Hush__Recipient *rc, int *over)
{
    *over = 0;
    if (senv.cfg->sender_share_percent >= 100 || !q)
        return HSTORE_OK;
    int64_t max_count = (int64_t)((uint64_t)senv.cfg->quota_messages * senv.cfg->sender_share_percent / 100);
    int64_t max_bytes = (int64_t)(senv.cfg->quota_bytes * senv.cfg->sender_share_percent / 100);
    int64_t len = (int64_t)rc->envelope.len;
    if (q->count + 1 <= max_count && q->bytes + len <= max_bytes)
        return HSTORE_OK;
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(senv.db, "SELECT count(*), coalesce(sum(length(envelope)), 0) FROM mailbox "
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
 * the set matches; 0 when the job was answered or a storage error was set. */
struct match_user {
    const char *name;
    uint32_t missing[16], extra[16];
};

static int devices_match(struct jctx *x, const struct job *j)
{
    const Hush__SendRequest *s = j->frame->send;
    size_t cap = s->n_recipients + 1;
    const char **users = malloc(cap * sizeof *users);
    Hush__DeviceMismatch *mm = malloc(cap * sizeof *mm);
    Hush__DeviceMismatch **mp = malloc(cap * sizeof *mp);
    struct match_user *mu = malloc(cap * sizeof *mu);
    int ok = 0;
    if (!users || !mm || !mp || !mu) {
        jctx_fail(x, j, HUSH__ERROR_CODE__INTERNAL, "out of memory");
        goto out;
    }
    size_t nu = 0;
    users[nu++] = j->username;
    for (size_t i = 0; i < s->n_recipients; i++) {
        size_t k = 0;
        while (k < nu && strcmp(users[k], s->recipients[i]->username) != 0)
            k++;
        if (k == nu)
            users[nu++] = s->recipients[i]->username;
    }
    size_t nm = 0;
    for (size_t u = 0; u < nu; u++) {
        uint32_t devs[16];
        size_t nd = 0;
        hstore_err e = accounts_user_devices(users[u], devs, 16, &nd);
        if (e) {
            x->store_err = e;
            goto out;
        }
        uint32_t *missing = mu[nm].missing, *extra = mu[nm].extra;
        int self = u == 0;
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
                goto out;
            }
        }
        hush__device_mismatch__init(&mm[nm]);
        size_t nmiss = 0, nextra = 0;
        for (size_t d = 0; d < nd; d++) {
            if (self && devs[d] == j->device_id)
                continue;
            int named = 0;
            for (size_t i = 0; i < s->n_recipients && !named; i++)
                named = s->recipients[i]->device_id == devs[d] && !strcmp(s->recipients[i]->username, users[u]);
            if (!named)
                missing[nmiss++] = devs[d];
        }
        for (size_t i = 0; i < s->n_recipients; i++) {
            const Hush__Recipient *rc = s->recipients[i];
            if (strcmp(rc->username, users[u]) != 0)
                continue;
            int have = !(self && rc->device_id == j->device_id);
            int found = 0;
            for (size_t d = 0; d < nd && !found; d++)
                found = devs[d] == rc->device_id;
            if ((!found || !have) && nextra < 16) {
                size_t k = 0;
                while (k < nextra && extra[k] != rc->device_id)
                    k++;
                if (k == nextra)
                    extra[nextra++] = rc->device_id;
            }
        }
        if (!nmiss && !nextra)
            continue;
        if (!self && nd == 0 && !nmiss) {
            /* nobody by that name at all */
            jctx_fail(x, j, HUSH__ERROR_CODE__UNKNOWN_RECIPIENT, users[u]);
            goto out;
        }
        mm[nm].username = (char *)users[u];
        mm[nm].missing = missing;
        mm[nm].n_missing = nmiss;
        mm[nm].extra = extra;
        mm[nm].n_extra = nextra;
        mp[nm] = &mm[nm];
        nm++;
    }
    if (!nm) {
        ok = 1;
        goto out;
    }
    Hush__Result r = HUSH__RESULT__INIT;
    r.code = HUSH__ERROR_CODE__DEVICE_MISMATCH;
    r.message = "the send does not name every device of its users";
    r.n_mismatches = nm;
    r.mismatches = mp;
    x->rollback = 1;
    metrics_error(r.code);
    jctx_reply(x, j, &r);
out:
    free(users);
    free(mm);
    free(mp);
    free(mu);
    return ok;
}

void mailbox_send(struct jctx *x, const struct job *j)
{
    const Hush__SendRequest *s = j->frame->send;
    uint64_t seqs[1024];
    uint64_t now = relay_now_ms();
    uint64_t ttl_ms = senv.cfg->ttl_seconds ? (uint64_t)senv.cfg->ttl_seconds * 1000ull : (uint64_t)senv.cfg->ttl_days * 86400000ull;
    uint64_t expires = now + ttl_ms;
    sqlite3_stmt *st;
    struct {
        int live;
        struct dir_entry d;
    } route[1024];
    if (!devices_match(x, j))
        return;
    for (size_t i = 0; i < s->n_recipients; i++) {
        const Hush__Recipient *rc = s->recipients[i];
        route[i].live = 0;
        int row = 0;
        /* A retry of the same client message id is stored once: answer with the first seq. */
        CHECK_SE(hstore_prepare(senv.db, "SELECT seq FROM mailbox WHERE recipient = ?1 AND recipient_device = ?2 AND "
                                      "sender = ?3 AND sender_device = ?4 AND client_msg_id = ?5", &st));
        sqlite3_bind_text(st, 1, rc->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, rc->device_id);
        sqlite3_bind_text(st, 3, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4, j->device_id);
        sqlite3_bind_blob(st, 5, s->client_msg_id.data, (int)s->client_msg_id.len, SQLITE_TRANSIENT);
        CHECK_SE(hstore_step(senv.db, st, &row));
        if (row) {
            seqs[i] = (uint64_t)sqlite3_column_int64(st, 0);
            sqlite3_reset(st);
            continue;
        }
        hstore_err qe;
        struct quota *q = quota_of(rc->username, rc->device_id, &qe);
        CHECK_SE(qe);
        if (q && (q->count + 1 > (int64_t)senv.cfg->quota_messages ||
                  q->bytes + (int64_t)rc->envelope.len > (int64_t)senv.cfg->quota_bytes)) {
            jctx_fail(x, j, HUSH__ERROR_CODE__QUOTA_EXCEEDED, rc->username);
            return;
        }
        int share = 0;
        CHECK_SE(over_sender_share(q, j->username, rc, &share));
        if (share) {
            jctx_fail(x, j, HUSH__ERROR_CODE__QUOTA_EXCEEDED, "your share of this recipient's mailbox is full");
            return;
        }
        CHECK_SE(hstore_prepare(senv.db, "INSERT INTO mailbox (recipient, recipient_device, sender, sender_device, client_msg_id, "
                                      "envelope, received_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)", &st));
        sqlite3_bind_text(st, 1, rc->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, rc->device_id);
        sqlite3_bind_text(st, 3, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4, j->device_id);
        sqlite3_bind_blob(st, 5, s->client_msg_id.data, (int)s->client_msg_id.len, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 6, rc->envelope.data, (int)rc->envelope.len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 7, (int64_t)now);
        sqlite3_bind_int64(st, 8, (int64_t)expires);
        CHECK_SE(hstore_run(senv.db, st));
        seqs[i] = (uint64_t)hstore_last_insert_rowid(senv.db);
        add_delta(x, rc->username, rc->device_id, 1, (int64_t)rc->envelope.len);
        /* a quota entry loaded during this job already counts the row when it was loaded after
         * the insert; entries loaded before it get the delta on release. */
        x->inserted++;
        route[i].live = directory_lookup(rc->username, rc->device_id, &route[i].d);
    }
    Hush__Result r = HUSH__RESULT__INIT;
    r.message = "";
    r.n_seqs = s->n_recipients;
    r.seqs = seqs;
    jctx_reply(x, j, &r);
    for (size_t i = 0; i < s->n_recipients; i++) {
        if (!route[i].live)
            continue;
        const Hush__Recipient *rc = s->recipients[i];
        Hush__Deliver dv = HUSH__DELIVER__INIT;
        dv.seq = seqs[i];
        dv.from_username = (char *)j->username;
        dv.from_device = j->device_id;
        dv.envelope = rc->envelope;
        dv.received_at_ms = now;
        dv.client_msg_id = s->client_msg_id;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.msg_case = HUSH__FRAME__MSG_DELIVER;
        f.deliver = &dv;
        struct event *e = event_new(EV_LIVE, route[i].d.conn);
        if (!e)
            continue;
        e->out = outbuf_from_frame(&f, seqs[i]);
        jctx_post(x, route[i].d.loop, e);
    }
}

void mailbox_fetch(struct jctx *x, const struct job *j)
{
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "SELECT seq, sender, sender_device, client_msg_id, envelope, received_at FROM mailbox "
                                  "WHERE recipient = ?1 AND recipient_device = ?2 AND seq > ?3 AND expires_at > ?4 "
                                  "ORDER BY seq LIMIT ?5", &st));
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
    jctx_post(x, j->loop, e);
}

void mailbox_ack(struct jctx *x, const struct job *j)
{
    const Hush__AckRequest *a = j->frame->ack;
    sqlite3_stmt *st;
    for (size_t i = 0; i < a->n_seqs; i++) {
        /* Only the owner's mailbox: someone else's seq matches nothing. */
        CHECK_SE(hstore_prepare(senv.db, "DELETE FROM mailbox WHERE seq = ?1 AND recipient = ?2 AND recipient_device = ?3 "
                                      "RETURNING length(envelope)", &st));
        sqlite3_bind_int64(st, 1, (int64_t)a->seqs[i]);
        sqlite3_bind_text(st, 2, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, j->device_id);
        int row = 0;
        CHECK_SE(hstore_step(senv.db, st, &row));
        if (row) {
            add_delta(x, j->username, j->device_id, -1, -(int64_t)sqlite3_column_int64(st, 0));
            x->deleted++;
            int more = 0;
            while (hstore_step(senv.db, st, &more) == HSTORE_OK && more) {
            }
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
    if (x->expired)
        x->ndeltas = -1; /* which devices lost rows is not tracked: reload the cache */
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
    return hstore_run(db, st);
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
