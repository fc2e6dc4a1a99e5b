/*
 * storage.c - the storage thread: owns the database, runs every job the loops submit, and commits
 * a whole batch of them in one transaction (group commit): one fsync per batch, not per message.
 * Results (replies, live deliveries) are posted to the loops only after the COMMIT succeeded, so a
 * sender is never acknowledged for a message that is not on disk. If the COMMIT fails, every job of
 * the batch is answered STORAGE_FAILED and nothing is delivered.
 *
 * Each job runs inside its own savepoint: a job that fails (unknown recipient, quota, bad keys)
 * leaves no trace and does not disturb the others in the batch. The jobs themselves are handled
 * by the owners of their tables (accounts.c, mailbox.c, presence.c: jobs.h); this file is the
 * queue, the batch loop and the schema.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "hmap.h"
#include "jobs.h"
#include "relay.h"

#define EXPIRE_EVERY_MS 60000

static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE users (username TEXT PRIMARY KEY, created_at INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE devices ("
    "  username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,"
    "  device_id INTEGER NOT NULL,"
    "  auth_key BLOB NOT NULL, identity_key BLOB NOT NULL, registration_id INTEGER NOT NULL,"
    "  spk_id INTEGER NOT NULL, spk_public BLOB NOT NULL, spk_signature BLOB NOT NULL, spk_timestamp INTEGER NOT NULL,"
    "  last_resort_id INTEGER, last_resort_public BLOB,"
    "  prekeys_low_pending INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL, last_seen INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (username, device_id)) WITHOUT ROWID;"
    "CREATE TABLE one_time_prekeys ("
    "  username TEXT NOT NULL, device_id INTEGER NOT NULL, key_id INTEGER NOT NULL, public_key BLOB NOT NULL,"
    "  PRIMARY KEY (username, device_id, key_id),"
    "  FOREIGN KEY (username, device_id) REFERENCES devices (username, device_id) ON DELETE CASCADE) WITHOUT ROWID;"
    "CREATE TABLE mailbox ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  recipient TEXT NOT NULL, recipient_device INTEGER NOT NULL,"
    "  sender TEXT NOT NULL, sender_device INTEGER NOT NULL, client_msg_id BLOB NOT NULL,"
    "  envelope BLOB NOT NULL, received_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,"
    "  UNIQUE (recipient, recipient_device, sender, sender_device, client_msg_id));"
    "CREATE INDEX mailbox_by_device ON mailbox (recipient, recipient_device, seq);"
    "CREATE INDEX mailbox_by_expiry ON mailbox (expires_at);"
    "CREATE TABLE invites ("
    "  token_hash BLOB PRIMARY KEY, created_at INTEGER NOT NULL, used_at INTEGER, used_by TEXT) WITHOUT ROWID;"
    "CREATE TABLE presence_allow ("
    "  owner TEXT NOT NULL, allowed TEXT NOT NULL, PRIMARY KEY (owner, allowed)) WITHOUT ROWID;",
    /* 1 -> 2: expiry walks the mailbox in seq order (do_expire); the index on expires_at cost a
     * tenth of the relay's CPU per message (every insert and every ack updated it) */
    "DROP INDEX IF EXISTS mailbox_by_expiry;",
    /* 2 -> 3: linked devices. A link token reserves the user's next device id (ids are never
     * reused, so a removed device's id cannot be taken over by another). */
    "ALTER TABLE users ADD COLUMN next_device_id INTEGER NOT NULL DEFAULT 2;"
    "CREATE TABLE link_tokens ("
    "  token_hash BLOB PRIMARY KEY,"
    "  username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,"
    "  device_id INTEGER NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,"
    "  used_at INTEGER) WITHOUT ROWID;"
    "CREATE INDEX link_tokens_by_user ON link_tokens (username, created_at);",
    /* 3 -> 4: recovery: the public key of each user's recovery code (NULL: none was set) */
    "ALTER TABLE users ADD COLUMN recovery_key BLOB;",
    /* 4 -> 5: each device's name, sealed by its user's devices (opaque here) */
    "ALTER TABLE devices ADD COLUMN name BLOB;",
    /* 5 -> 6: each device's Web Push endpoint (push.c); it goes with its device. gone: the push
     * service said it no longer exists (kept so that the device is told when it sends it again) */
    "CREATE TABLE push_endpoints ("
    "  username TEXT NOT NULL, device_id INTEGER NOT NULL,"
    "  url TEXT NOT NULL, p256dh BLOB NOT NULL, auth BLOB NOT NULL, created_at INTEGER NOT NULL,"
    "  gone INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (username, device_id),"
    "  FOREIGN KEY (username, device_id) REFERENCES devices (username, device_id) ON DELETE CASCADE) WITHOUT ROWID;"
    /* and whether each waiting message was sent non-urgent (a device that leaves with mail waiting
     * is woken as its most urgent message asks) */
    "ALTER TABLE mailbox ADD COLUMN non_urgent INTEGER NOT NULL DEFAULT 0;",
    /* 6 -> 7: files (blobs.c): one row per uploaded file, the bytes under blob_dir. Files belong
     * to no device row: they stay until they expire, whatever happens to their uploader. */
    "CREATE TABLE blobs ("
    "  id BLOB PRIMARY KEY, owner TEXT NOT NULL, owner_device INTEGER NOT NULL, size INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, complete INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
    "CREATE INDEX blobs_by_owner ON blobs (owner, expires_at);"
    "CREATE INDEX blobs_by_expiry ON blobs (expires_at);",
    /* 7 -> 8: room messages (mailbox.c): the envelope every recipient shares is stored once, and
     * each recipient's row points at it; it goes with the last row pointing at it. */
    "CREATE TABLE payloads (id INTEGER PRIMARY KEY, data BLOB NOT NULL);"
    "ALTER TABLE mailbox ADD COLUMN payload INTEGER;"
    "ALTER TABLE mailbox ADD COLUMN payload_len INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX mailbox_by_payload ON mailbox (payload) WHERE payload IS NOT NULL;",
};

static struct {
    pthread_t th;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_cond_t idle_cv;
    int busy;
    struct job *head, *tail;
    int stop;
    uint64_t next_expire_ms;
} S = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .idle_cv = PTHREAD_COND_INITIALIZER };

/* ------------------------------------------------------------------------------------------ */

struct job *job_new(enum job_type t, int loop, uint64_t conn, uint64_t req_id)
{
    struct job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->type = t;
    j->loop = loop;
    j->conn = conn;
    j->req_id = req_id;
    return j;
}

/* queued work, relay-wide (storage_busy) */
static atomic_long g_queued_jobs, g_queued_bytes;
/* messages waiting unwritten for their ack (mailbox.c), as of the last batch: storage_quiesce */
static atomic_long g_pending_rows;

struct jobgate *gate_new(int loop, uint64_t conn)
{
    struct jobgate *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    atomic_init(&g->refs, 1);
    g->loop = loop;
    g->conn = conn;
    return g;
}

void gate_unref(struct jobgate *g)
{
    if (g && atomic_fetch_sub(&g->refs, 1) == 1)
        free(g);
}

int gate_charge(struct jobgate *g, size_t bytes)
{
    int jobs = atomic_fetch_add(&g->jobs, 1) + 1;
    long b = atomic_fetch_add(&g->bytes, (long)bytes) + (long)bytes;
    if (jobs < GATE_JOBS_PAUSE && b < (long)GATE_BYTES_PAUSE)
        return 0;
    if (atomic_exchange(&g->paused, 1))
        return 0; /* already paused */
    /* The storage thread may have finished everything between the add and the pause: if the
     * work is already under the resume marks, take the pause back ourselves. */
    if (atomic_load(&g->jobs) <= GATE_JOBS_RESUME && atomic_load(&g->bytes) <= (long)GATE_BYTES_RESUME &&
        atomic_exchange(&g->paused, 0))
        return 0;
    return 1;
}

/* A job is done (answered or dropped): release its share of the gate, and wake the connection's
 * reading when this brought it under the resume marks. */
static void gate_release(struct job *j)
{
    struct jobgate *g = j->gate;
    if (!g)
        return;
    int jobs = atomic_fetch_sub(&g->jobs, 1) - 1;
    long b = atomic_fetch_sub(&g->bytes, (long)j->cost) - (long)j->cost;
    if (jobs <= GATE_JOBS_RESUME && b <= (long)GATE_BYTES_RESUME && atomic_load(&g->paused) &&
        atomic_exchange(&g->paused, 0)) {
        struct event *e = event_new(EV_RESUME, g->conn);
        if (e)
            loop_post(g->loop, e);
    }
    j->gate = NULL;
    gate_unref(g);
}

int storage_busy(void)
{
    return atomic_load(&g_queued_jobs) >= STORAGE_MAX_QUEUED_JOBS ||
           atomic_load(&g_queued_bytes) >= (long)STORAGE_MAX_QUEUED_BYTES;
}

void job_free(struct job *j)
{
    if (!j)
        return;
    if (j->counted) {
        atomic_fetch_sub(&g_queued_jobs, 1);
        atomic_fetch_sub(&g_queued_bytes, (long)j->cost);
    }
    gate_release(j);
    if (j->frame)
        hush__frame__free_unpacked(j->frame, NULL);
    sodium_memzero(j->challenge, sizeof j->challenge);
    free(j);
}

void storage_submit(struct job *j)
{
    j->counted = 1;
    atomic_fetch_add(&g_queued_jobs, 1);
    atomic_fetch_add(&g_queued_bytes, (long)j->cost);
    pthread_mutex_lock(&S.mu);
    if (S.tail)
        S.tail->next = j;
    else
        S.head = j;
    S.tail = j;
    pthread_cond_signal(&S.cv);
    pthread_mutex_unlock(&S.mu);
}

void storage_push_gone(const char *user, uint32_t dev, const char *url)
{
    /* the job carries the URL in a PushRegisterRequest, as a client's would (packed and unpacked:
     * the job owns an unpacked frame) */
    Hush__PushRegisterRequest pr = HUSH__PUSH_REGISTER_REQUEST__INIT;
    pr.endpoint = (char *)url;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_PUSH_REGISTER;
    f.push_register = &pr;
    size_t n = hush__frame__get_packed_size(&f);
    uint8_t *buf = malloc(n ? n : 1);
    struct job *j = buf ? job_new(JOB_PUSH_GONE, -1, 0, 0) : NULL;
    if (j) {
        hush__frame__pack(&f, buf);
        j->frame = hush__frame__unpack(NULL, n, buf);
        snprintf(j->username, sizeof j->username, "%s", user);
        j->device_id = dev;
    }
    free(buf);
    if (j && j->frame)
        storage_submit(j);
    else
        job_free(j);
}

hstore *storage_open_db(const char *path, int durability_full, char *err, size_t errlen)
{
    hstore_opts o = { durability_full ? HSTORE_SYNC_FULL : HSTORE_SYNC_NORMAL, 5000, 1, 0, 0, NULL, NULL }; /* ciphertext only: no secure_delete */
    hstore *db = NULL;
    hstore_err e = hstore_open(path, &o, migrations, (int)(sizeof migrations / sizeof migrations[0]), &db, err, errlen);
    return e == HSTORE_OK ? db : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* the batch loop */

static void run_job(struct jctx *x, struct job *j)
{
    switch (j->type) {
    case JOB_REGISTER:
        if (j->recovery)
            devices_recover_register(x, j);
        else
            accounts_register(x, j);
        break;
    case JOB_RECOVER: accounts_recover(x, j); break;
    case JOB_LIST_DEVICES: accounts_list_devices(x, j); break;
    case JOB_LOGIN: accounts_login(x, j); break;
    case JOB_UPLOAD: accounts_upload(x, j); break;
    case JOB_FETCH_BUNDLES: accounts_fetch_bundles(x, j); break;
    case JOB_SEND: mailbox_send(x, j); break;
    case JOB_FETCH_MAIL: mailbox_fetch(x, j); break;
    case JOB_ACK: mailbox_ack(x, j); break;
    case JOB_SET_ALLOW: presence_job_set_allow(x, j); break;
    case JOB_DISCONNECT:
        accounts_disconnect(x, j);
        /* it left with mail it has not acknowledged (or not yet received): a wake-up brings it back */
        if (!x->store_err)
            mailbox_wake_if_waiting(x, j->username, j->device_id);
        break;
    case JOB_LINK_TOKEN: accounts_link_token(x, j); break;
    case JOB_REMOVE_DEVICE: devices_remove(x, j); break;
    case JOB_EXPIRE:
        mailbox_expire(x);
        if (!x->store_err)
            accounts_expire(x);
        if (!x->store_err)
            devices_expire_idle(x);
        push_expire();
        break;
    case JOB_STOP: break;
    case JOB_FLUSH: break; /* nothing of its own: the batch writes the waiting rows that are due */
    case JOB_PUSH_REGISTER: push_job_register(x, j); break;
    case JOB_PUSH_GONE: push_job_gone(x, j); break;
    }
}

/* Posts a job's before-the-commit events now, in the order they were made. */
static void post_now(struct jctx *x)
{
    struct posting *rev = NULL;
    while (x->now) {
        struct posting *n = x->now->next;
        x->now->next = rev;
        rev = x->now;
        x->now = n;
    }
    while (rev) {
        struct posting *n = rev->next;
        loop_post(rev->loop, rev->ev);
        free(rev);
        rev = n;
    }
}

static void free_postings(struct posting *p)
{
    while (p) {
        struct posting *n = p->next;
        event_free(p->ev);
        free(p);
        p = n;
    }
}

/* The answer a job gets when its work could not be committed. */
static void storage_failed(struct posting **out, struct job *j)
{
    struct jctx x;
    memset(&x, 0, sizeof x);
    if (j->type == JOB_LOGIN || j->type == JOB_REGISTER) {
        struct event *e = event_new(EV_LOGIN_DONE, j->conn);
        if (e) {
            e->ok = 0;
            e->code = HUSH__ERROR_CODE__STORAGE_FAILED;
            Hush__Result r = HUSH__RESULT__INIT;
            r.code = HUSH__ERROR_CODE__STORAGE_FAILED;
            r.message = "storage failed, nothing was stored";
            Hush__Frame f = HUSH__FRAME__INIT;
            f.id = j->req_id;
            f.msg_case = HUSH__FRAME__MSG_RESULT;
            f.result = &r;
            e->out = outbuf_from_frame(&f, 0);
            jctx_post(&x, j->loop, e);
        }
        metrics_error(HUSH__ERROR_CODE__STORAGE_FAILED);
    } else if (j->type == JOB_FETCH_MAIL) {
        struct event *e = event_new(EV_MAIL, j->conn);
        if (e) {
            e->ok = 0; /* fetch failed: the loop retries later */
            jctx_post(&x, j->loop, e);
        }
    } else {
        jctx_reply_code(&x, j, HUSH__ERROR_CODE__STORAGE_FAILED, "storage failed, nothing was stored");
    }
    struct posting *p = x.posts;
    while (p) {
        struct posting *n = p->next;
        p->next = *out;
        *out = p;
        p = n;
    }
}

/* Prepends a job's postings to the batch's list (which is reversed into order before posting). */
static void take_postings(struct posting **posts, struct jctx *x)
{
    struct posting *p = x->posts;
    while (p) {
        struct posting *n = p->next;
        p->next = *posts;
        *posts = p;
        p = n;
    }
    x->posts = NULL;
}

/* Prepends a job's commit hooks (newest first) to the batch's. */
static void take_hooks(struct commit_hook **hooks, struct jctx *x)
{
    if (!x->hooks)
        return;
    struct commit_hook *t = x->hooks;
    while (t->next)
        t = t->next;
    t->next = *hooks;
    *hooks = x->hooks;
    x->hooks = NULL;
}

static void process_batch(struct job *list)
{
    struct posting *posts = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long njobs = 0;
    int64_t inserted = 0, deleted = 0, expired = 0;
    struct jctx *x = malloc(sizeof *x);
    /* allow-lists to apply in memory after the commit (at most one per job) */
    long nlist = 0;
    for (struct job *j = list; j; j = j->next)
        nlist++;
    struct allow_apply {
        Hush__SetPresenceAllowRequest *r;
        char owner[RELAY_USERNAME_MAX + 1];
    } *allows = calloc((size_t)nlist + 1, sizeof *allows);
    int nallows = 0;
    hstore_err be = x ? hstore_savepoint(senv.db) : HSTORE_ERR_NOMEM;
    int64_t written = 0, unwritten = 0;
    struct commit_hook *hooks = NULL; /* of the jobs that succeeded, newest first */
    /* Everything but sends and acks reads or changes rows as they are on disk: the messages
     * waiting unwritten for their ack are written first (mailbox.c, early delivery). */
    int flush_all = 0;
    for (struct job *j = list; j; j = j->next)
        flush_all |= j->type != JOB_SEND && j->type != JOB_ACK && j->type != JOB_FLUSH && j->type != JOB_PUSH_REGISTER &&
                     j->type != JOB_PUSH_GONE; /* push jobs touch no message */
    if (!be && flush_all) {
        memset(x, 0, offsetof(struct jctx, deltas));
        mailbox_flush_pending(x, 1);
        be = x->store_err;
        written += x->written;
    }
    for (struct job *j = list; j; j = j->next) {
        njobs++;
        if (be) {
            storage_failed(&posts, j);
            continue;
        }
        memset(x, 0, offsetof(struct jctx, deltas));
        x->ndeltas = 0;
        if (j->type == JOB_ACK) {
            /* An ack has no logical failure (someone else's seq simply matches nothing), so it
             * needs no savepoint of its own - releasing one per job cost a tenth of the relay's
             * CPU. A storage error fails the whole batch instead (rolled back below). */
            run_job(x, j);
            /* answers for messages acknowledged before they were written: true whatever happens
             * to this batch (the recipient has them) */
            post_now(x);
            unwritten += x->unwritten;
            if (x->store_err) {
                rlog(RLOG_ERROR, "storage_error", "job=%d detail=\"%s\"", (int)j->type, hstore_errmsg(senv.db));
                free_postings(x->posts);
                jctx_run_hooks(x->hooks, 0);
                be = x->store_err;
                continue;
            }
            mailbox_apply_deltas(x);
            deleted += x->deleted;
            take_postings(&posts, x);
            take_hooks(&hooks, x);
            continue;
        }
        hstore_err e = hstore_savepoint(senv.db);
        if (e == HSTORE_OK)
            run_job(x, j);
        else
            x->store_err = e;
        if (!x->store_err && !x->rollback)
            x->store_err = hstore_release(senv.db);
        if (x->store_err || x->rollback) {
            hstore_rollback(senv.db);
            mailbox_job_failed(x);
            free_postings(x->now);
            x->now = NULL;
            jctx_run_hooks(x->hooks, 0);
            x->hooks = NULL;
        } else {
            mailbox_job_done(x);
            post_now(x); /* deliveries of messages waiting for their ack: before the commit */
        }
        if (x->store_err) {
            rlog(RLOG_ERROR, "storage_error", "job=%d detail=\"%s\"", (int)j->type, hstore_errmsg(senv.db));
            free_postings(x->posts);
            storage_failed(&posts, j);
            continue;
        }
        if (!x->rollback) {
            mailbox_apply_deltas(x);
            inserted += x->inserted;
            deleted += x->deleted;
            expired += x->expired;
            if (x->allow_apply && allows) {
                allows[nallows].r = x->allow_apply;
                snprintf(allows[nallows].owner, sizeof allows[nallows].owner, "%s", x->allow_owner);
                nallows++;
            }
        }
        take_postings(&posts, x);
        take_hooks(&hooks, x);
    }
    if (!be) {
        /* the waiting rows that are due (and those a retry asked for) */
        memset(x, 0, offsetof(struct jctx, deltas));
        mailbox_flush_pending(x, 0);
        be = x->store_err;
        written += x->written;
    }
    if (!be)
        be = hstore_release(senv.db); /* COMMIT: the durability point of the whole batch */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long usec = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000;
    if (be) {
        hstore_rollback(senv.db);
        atomic_fetch_add(&g_metrics.commit_failures, 1);
        rlog(RLOG_ERROR, "commit_failed", "jobs=%ld detail=\"%s\"", njobs, hstore_errmsg(senv.db));
        mailbox_quota_clear();
        free_postings(posts);
        posts = NULL;
        for (struct job *j = list; j; j = j->next)
            storage_failed(&posts, j);
        if (x) {
            memset(x, 0, offsetof(struct jctx, deltas));
            mailbox_batch_end(x, 0); /* sends of earlier batches whose rows this one wrote */
            take_postings(&posts, x);
        }
    } else {
        if (x) {
            memset(x, 0, offsetof(struct jctx, deltas));
            mailbox_batch_end(x, 1); /* sends waiting for rows this batch wrote */
            take_postings(&posts, x);
        }
        atomic_fetch_add(&g_metrics.messages_unwritten, unwritten);
        atomic_fetch_add(&g_metrics.messages_written_late, written);
        metrics_commit(njobs, usec);
        atomic_fetch_add(&g_metrics.messages_in, inserted);
        atomic_fetch_add(&g_metrics.messages_acked, deleted);
        atomic_fetch_add(&g_metrics.messages_expired, expired);
        atomic_fetch_add(&g_metrics.mailbox_depth, inserted - deleted - expired);
        for (int i = 0; i < nallows; i++)
            presence_set_allow(allows[i].owner, allows[i].r->usernames, allows[i].r->n_usernames);
    }
    jctx_run_hooks(hooks, !be);
    /* Reverse so events reach each loop in the order they were produced. */
    struct posting *rev = NULL;
    while (posts) {
        struct posting *n = posts->next;
        posts->next = rev;
        rev = posts;
        posts = n;
    }
    while (rev) {
        struct posting *n = rev->next;
        loop_post(rev->loop, rev->ev);
        free(rev);
        rev = n;
    }
    free(allows);
    free(x);
}

static void *storage_main(void *arg)
{
    (void)arg;
    for (;;) {
        uint64_t due = 0;
        size_t npend = mailbox_pending(&due); /* messages waiting unwritten for their ack */
        atomic_store(&g_pending_rows, (long)npend);
        pthread_mutex_lock(&S.mu);
        while (!S.head && !S.stop) {
            uint64_t now = relay_now_ms();
            if (npend && now >= due)
                break;
            uint64_t wait_ms = npend && due - now < 1000 ? due - now : 1000;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += (time_t)(wait_ms / 1000);
            ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&S.cv, &S.mu, &ts);
            if (relay_now_ms() >= S.next_expire_ms)
                break;
        }
        /* Take up to max_batch jobs. */
        struct job *list = S.head, *last = NULL;
        uint32_t n = 0;
        for (struct job *j = S.head; j && n < senv.cfg->max_batch; j = j->next) {
            last = j;
            n++;
        }
        if (last) {
            S.head = last->next;
            if (!S.head)
                S.tail = NULL;
            last->next = NULL;
        } else {
            list = NULL;
        }
        int stop = S.stop && !S.head;
        if (!list && npend && (stop || relay_now_ms() >= due))
            list = job_new(stop ? JOB_STOP : JOB_FLUSH, -1, 0, 0); /* JOB_STOP writes every one */
        else if (list && stop && npend)
            last->next = job_new(JOB_STOP, -1, 0, 0);
        S.busy = list != NULL;
        pthread_mutex_unlock(&S.mu);
        if (relay_now_ms() >= S.next_expire_ms) {
            S.next_expire_ms = relay_now_ms() + EXPIRE_EVERY_MS;
            struct job *ex = job_new(JOB_EXPIRE, -1, 0, 0);
            if (ex) {
                ex->next = list;
                list = ex;
            }
        }
        if (list)
            process_batch(list);
        uint64_t due_after = 0;
        atomic_store(&g_pending_rows, (long)mailbox_pending(&due_after));
        while (list) {
            struct job *nx = list->next;
            job_free(list);
            list = nx;
        }
        pthread_mutex_lock(&S.mu);
        S.busy = 0;
        if (!S.head)
            pthread_cond_broadcast(&S.idle_cv);
        pthread_mutex_unlock(&S.mu);
        if (stop)
            break;
    }
    return NULL;
}

/* At start: a device with an endpoint and mail waiting is woken (a wake-up queued when the relay
 * stopped or crashed went with it). */
static void wake_if_waiting(void *ctx, const struct push_wake *w)
{
    int waiting = 0, urgent = 0;
    if (mailbox_waiting_for(senv.db, w->user, w->dev, &waiting, &urgent) == HSTORE_OK && waiting) {
        push_wake_now(w, urgent);
        (*(long *)ctx)++;
    }
}

int storage_start(const struct relay_config *cfg, char *err, size_t errlen)
{
    senv.cfg = cfg;
    senv.db = storage_open_db(cfg->db_path, cfg->durability_full, err, errlen);
    if (!senv.db)
        return -1;
    if (accounts_init(err, errlen) != 0 || mailbox_init(err, errlen) != 0 || push_init(err, errlen) != 0)
        return -1;
    presence_load(senv.db);
    long woken = 0;
    if (pusher_enabled() && push_each_endpoint(senv.db, wake_if_waiting, &woken) != HSTORE_OK)
        rlog(RLOG_WARN, "push_wake_at_start", "could not read the push endpoints");
    if (woken)
        rlog(RLOG_INFO, "push_wake_at_start", "devices=%ld", woken);
    S.next_expire_ms = 0; /* expire once at start */
    if (pthread_create(&S.th, NULL, storage_main, NULL) != 0) {
        snprintf(err, errlen, "cannot start storage thread");
        return -1;
    }
    S.started = 1;
    return 0;
}

void storage_quiesce(int timeout_ms)
{
    struct timespec ts;
    hwire_deadline(&ts, timeout_ms);
    pthread_mutex_lock(&S.mu);
    while ((S.head || S.busy || atomic_load(&g_pending_rows) > 0) && S.started)
        if (pthread_cond_timedwait(&S.idle_cv, &S.mu, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&S.mu);
}

void storage_stop(void)
{
    if (!S.started)
        return;
    pthread_mutex_lock(&S.mu);
    S.stop = 1;
    pthread_cond_signal(&S.cv);
    pthread_mutex_unlock(&S.mu);
    pthread_join(S.th, NULL);
    S.started = 0;
    mailbox_free();
    push_free();
    accounts_free();
    hstore_close(senv.db);
    senv.db = NULL;
}

int storage_mint_invites(const char *db_path, int n, FILE *out, char *err, size_t errlen)
{
    hstore *db = storage_open_db(db_path, 1, err, errlen);
    if (!db)
        return -1;
    int r = 0;
    if (hstore_savepoint(db)) {
        snprintf(err, errlen, "%s", hstore_errmsg(db));
        hstore_close(db);
        return -1;
    }
    char tokens[100][40];
    for (int i = 0; i < n && !r; i++) {
        uint8_t raw[16];
        randombytes_buf(raw, sizeof raw);
        sodium_bin2hex(tokens[i], sizeof tokens[i], raw, sizeof raw);
        uint8_t h[32];
        crypto_generichash(h, sizeof h, (const uint8_t *)tokens[i], strlen(tokens[i]), NULL, 0);
        if (accounts_add_invite(db, h) != HSTORE_OK)
            r = -1;
    }
    if (!r && hstore_release(db))
        r = -1;
    if (r) {
        snprintf(err, errlen, "%s", hstore_errmsg(db));
        hstore_rollback(db);
    } else {
        for (int i = 0; i < n; i++)
            fprintf(out, "%s\n", tokens[i]);
    }
    hstore_close(db);
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* hushd user ... */

struct admin {
    hstore *db;
    FILE *out;
    hstore_err e;
    int n;
    uint32_t devs[64];
};

static void stamp_ms(char *buf, size_t cap, uint64_t ms)
{
    if (!ms) {
        snprintf(buf, cap, "never");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

static void admin_count(void *ctx, const char *user, uint32_t dev, uint64_t created, uint64_t seen)
{
    (void)user;
    (void)created;
    (void)seen;
    struct admin *a = ctx;
    if (a->n < 64)
        a->devs[a->n] = dev;
    a->n++;
}

static void admin_list_user(const char *user, uint64_t last_seen, void *ctx)
{
    struct admin *a = ctx;
    struct admin one = { a->db, NULL, HSTORE_OK, 0, { 0 } };
    if (!a->e)
        a->e = accounts_each_device(a->db, user, 0, admin_count, &one);
    char ts[40];
    stamp_ms(ts, sizeof ts, last_seen);
    fprintf(a->out, "%-32s devices %d  last seen %s\n", user, one.n, ts);
    a->n++;
}

static void admin_show_device(void *ctx, const char *user, uint32_t dev, uint64_t created, uint64_t seen)
{
    struct admin *a = ctx;
    int64_t waiting = 0;
    if (!a->e)
        a->e = mailbox_count_for(a->db, user, dev, &waiting);
    char c[40], s[40], push[300];
    if (!a->e)
        a->e = push_describe(a->db, user, dev, push, sizeof push);
    stamp_ms(c, sizeof c, created);
    stamp_ms(s, sizeof s, seen);
    fprintf(a->out, "device %u  created %s  last seen %s  waiting %lld  push %s\n", dev, c, s, (long long)waiting,
            a->e ? "?" : push);
    a->n++;
}

int storage_user_admin(const char *db_path, const char *op, const char *user, uint32_t dev, FILE *out, char *err,
                       size_t errlen)
{
    hstore *db = storage_open_db(db_path, 1, err, errlen);
    if (!db)
        return -1;
    struct admin a = { db, out, HSTORE_OK, 0, { 0 } };
    int r = 0;
    if (!strcmp(op, "list")) {
        accounts_each_last_seen(db, admin_list_user, &a);
        if (!a.e && a.n == 0)
            fprintf(out, "(no users)\n");
    } else if (!strcmp(op, "show")) {
        a.e = accounts_each_device(db, user, 0, admin_show_device, &a);
        if (!a.e && a.n == 0) {
            snprintf(err, errlen, "no user %s", user);
            r = 1;
        }
    } else if (hstore_savepoint(db) != HSTORE_OK) {
        a.e = HSTORE_ERR_IO;
    } else {
        /* one transaction: the relay, running or not, sees all of it or none */
        int deleted = 0;
        if (!strcmp(op, "delete")) {
            a.e = mailbox_delete_for(db, user, 0);
            if (!a.e)
                a.e = presence_delete_user(db, user);
            if (!a.e)
                a.e = accounts_delete_user(db, user, &deleted);
            if (!a.e && !deleted) {
                snprintf(err, errlen, "no user %s", user);
                r = 1;
            }
        } else {
            a.e = accounts_each_device(db, user, 0, admin_count, &a);
            int has = 0;
            for (int i = 0; i < a.n && i < 64; i++)
                has |= a.devs[i] == dev;
            if (!a.e && !has) {
                snprintf(err, errlen, "%s has no device %u", user, dev);
                r = 1;
            } else if (!a.e && a.n == 1) {
                snprintf(err, errlen, "device %u is %s's last device: `hushd user delete %s` removes the account", dev,
                         user, user);
                r = 1;
            }
            if (!a.e && !r)
                a.e = mailbox_delete_for(db, user, dev);
            if (!a.e && !r)
                a.e = accounts_delete_device(db, user, dev, &deleted);
        }
        if (a.e || r || hstore_release(db) != HSTORE_OK) {
            if (!a.e && !r)
                a.e = HSTORE_ERR_IO;
            hstore_rollback(db);
        } else if (!strcmp(op, "delete")) {
            fprintf(out, "deleted %s\n", user);
        } else {
            fprintf(out, "removed %s device %u\n", user, dev);
        }
    }
    if (a.e) {
        snprintf(err, errlen, "%s", hstore_errmsg(db));
        r = -1;
    }
    hstore_close(db);
    return r;
}
