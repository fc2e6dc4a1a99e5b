/*
 * storage.c - the storage thread: owns the database, runs every job the loops submit, and commits
 * a whole batch of them in one transaction (group commit): one fsync per batch, not per message.
 * Results (replies, live deliveries) are posted to the loops only after the COMMIT succeeded, so a
 * sender is never acknowledged for a message that is not on disk. If the COMMIT fails, every job of
 * the batch is answered STORAGE_FAILED and nothing is delivered.
 *
 * Each job runs inside its own savepoint: a job that fails (unknown recipient, quota, bad keys)
 * leaves no trace and does not disturb the others in the batch.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include <curve.h>
#include <signal_protocol.h>

#include "hmap.h"
#include "relay.h"

#define MAX_STOCK RELAY_MAX_STORED_PREKEYS
#define EXPIRE_EVERY_MS 60000
#define RATE_MAP_MAX 100000

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
};

struct quota {
    int64_t count;
    int64_t bytes;
};

struct bucket {
    double tokens;
    uint64_t last_ms;
    uint64_t full_at_ms; /* when it will be full again: from then on it can be forgotten */
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
    hstore *db;
    const struct relay_config *cfg;
    signal_context *sg;
    struct hmap quota; /* user\0dev -> struct quota* (cache; cleared when unsure) */
    struct hmap rate;  /* requester\0target (or requester\0 for all its fetches) -> struct bucket* */
    struct hmap lowpush; /* user\0dev -> uint64_t* ms of the last PreKeysLow push */
    uint8_t dummy_key[crypto_sign_PUBLICKEYBYTES]; /* what an unknown device's proof is checked against */
    uint64_t next_expire_ms;
} S = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .idle_cv = PTHREAD_COND_INITIALIZER };

/* An event and the loop it goes to, held until the batch commits. */
struct posting {
    struct posting *next;
    int loop;
    struct event *ev;
};

/* Per-job context: what to post and what to apply once the job's savepoint is released. */
#define MAX_DELTAS 1100
struct delta {
    char user[RELAY_USERNAME_MAX + 1];
    uint32_t dev;
    int64_t count, bytes;
};
struct jctx {
    struct posting *posts; /* posted after COMMIT, newest first */
    int rollback;          /* the job's writes must be undone (a logical error) */
    const char *auth_why;  /* a failed proof's reason, when it says nothing about the account */
    hstore_err store_err;  /* a storage failure inside the job */
    int64_t inserted, deleted, expired;
    Hush__SetPresenceAllowRequest *allow_apply;
    char allow_owner[RELAY_USERNAME_MAX + 1];
    int ndeltas;           /* -1: too many to track, clear the quota cache */
    struct delta deltas[MAX_DELTAS]; /* last: not cleared between jobs */
};


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

hstore *storage_open_db(const char *path, int durability_full, char *err, size_t errlen)
{
    hstore_opts o = { durability_full ? HSTORE_SYNC_FULL : HSTORE_SYNC_NORMAL, 5000, 1, 0, 0 }; /* ciphertext only: no secure_delete */
    hstore *db = NULL;
    hstore_err e = hstore_open(path, &o, migrations, (int)(sizeof migrations / sizeof migrations[0]), &db, err, errlen);
    return e == HSTORE_OK ? db : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* helpers */

static void quota_clear(void)
{
    hmap_free(&S.quota, free);
    hmap_init(&S.quota, 1024);
}

static void add_event(struct jctx *x, int loop, struct event *e)
{
    if (!e)
        return;
    struct posting *p = malloc(sizeof *p);
    if (!p) {
        event_free(e);
        return;
    }
    p->loop = loop;
    p->ev = e;
    p->next = x->posts;
    x->posts = p;
}

static void reply(struct jctx *x, const struct job *j, Hush__Result *r)
{
    if (r->code != HUSH__ERROR_CODE__OK)
        metrics_error(r->code);
    if (!j->req_id)
        return;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = j->req_id;
    f.msg_case = HUSH__FRAME__MSG_RESULT;
    f.result = r;
    struct event *e = event_new(EV_SEND_FRAME, j->conn);
    if (!e)
        return;
    e->out = outbuf_from_frame(&f, 0);
    add_event(x, j->loop, e);
}

static void reply_code(struct jctx *x, const struct job *j, Hush__ErrorCode code, const char *msg)
{
    Hush__Result r = HUSH__RESULT__INIT;
    r.code = code;
    r.message = (char *)(msg ? msg : "");
    reply(x, j, &r);
}

/* A job hit a logical error: undo its writes and answer with `code`. */
static void fail(struct jctx *x, const struct job *j, Hush__ErrorCode code, const char *msg)
{
    x->rollback = 1;
    reply_code(x, j, code, msg);
}

#define CHECK_SE(expr)                \
    do {                              \
        hstore_err _se = (expr);      \
        if (_se) {                    \
            x->store_err = _se;       \
            return;                   \
        }                             \
    } while (0)

static int valid_pub(const ProtobufCBinaryData *b)
{
    return b->len == 33 && b->data && b->data[0] == 0x05;
}

/* XEdDSA signature of a signed prekey by the identity key (libsignal's own verifier). */
static int spk_signature_ok(const uint8_t *identity, size_t ilen, const Hush__SignedPreKey *spk)
{
    if (!spk || !valid_pub(&spk->public_key) || spk->signature.len != 64 || ilen != 33)
        return 0;
    ec_public_key *idk = NULL;
    if (curve_decode_point(&idk, identity, ilen, S.sg) != 0)
        return 0;
    int ok = curve_verify_signature(idk, spk->public_key.data, spk->public_key.len, spk->signature.data,
                                    spk->signature.len) == 1;
    SIGNAL_UNREF(idk);
    return ok;
}

static int prekey_ok(const Hush__PreKey *k)
{
    ec_public_key *pk = NULL;
    if (!k || k->id == 0 || k->id > 0xFFFFFF || !valid_pub(&k->public_key))
        return 0;
    if (curve_decode_point(&pk, k->public_key.data, k->public_key.len, S.sg) != 0)
        return 0;
    SIGNAL_UNREF(pk);
    return 1;
}

static int upload_ok(const Hush__PreKeyUpload *u, int need_spk)
{
    if (!u)
        return !need_spk;
    if (need_spk && !u->signed_pre_key)
        return 0;
    for (size_t i = 0; i < u->n_one_time_pre_keys; i++)
        if (!prekey_ok(u->one_time_pre_keys[i]) || u->one_time_pre_keys[i]->id == 0xFFFFFF)
            return 0;
    if (u->last_resort && !prekey_ok(u->last_resort))
        return 0;
    return 1;
}

static hstore_err count_stock(const char *user, uint32_t dev, uint32_t *out)
{
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(S.db, "SELECT count(*) FROM one_time_prekeys WHERE username = ?1 AND device_id = ?2", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    int row = 0;
    e = hstore_step(S.db, st, &row);
    if (!e && row) {
        *out = (uint32_t)sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    return e;
}

/* Stores the one-time keys and (optionally) the last-resort key of an upload. */
static hstore_err store_keys(const char *user, uint32_t dev, const Hush__PreKeyUpload *u)
{
    sqlite3_stmt *st;
    hstore_err e;
    for (size_t i = 0; u && i < u->n_one_time_pre_keys; i++) {
        const Hush__PreKey *k = u->one_time_pre_keys[i];
        if ((e = hstore_prepare(S.db, "INSERT OR REPLACE INTO one_time_prekeys (username, device_id, key_id, public_key) "
                                      "VALUES (?1, ?2, ?3, ?4)", &st)))
            return e;
        sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        sqlite3_bind_int64(st, 3, k->id);
        sqlite3_bind_blob(st, 4, k->public_key.data, (int)k->public_key.len, SQLITE_TRANSIENT);
        if ((e = hstore_run(S.db, st)))
            return e;
    }
    if (u && u->last_resort) {
        if ((e = hstore_prepare(S.db, "UPDATE devices SET last_resort_id = ?3, last_resort_public = ?4 "
                                      "WHERE username = ?1 AND device_id = ?2", &st)))
            return e;
        sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        sqlite3_bind_int64(st, 3, u->last_resort->id);
        sqlite3_bind_blob(st, 4, u->last_resort->public_key.data, (int)u->last_resort->public_key.len, SQLITE_TRANSIENT);
        if ((e = hstore_run(S.db, st)))
            return e;
    }
    return HSTORE_OK;
}

static void login_done(struct jctx *x, const struct job *j, int ok, Hush__ErrorCode code, uint32_t stock, int low)
{
    struct event *e = event_new(EV_LOGIN_DONE, j->conn);
    if (!e)
        return;
    e->ok = ok;
    e->code = code;
    e->prekeys = stock;
    e->prekeys_low = low;
    e->device_id = j->device_id;
    snprintf(e->username, sizeof e->username, "%s", j->username);
    Hush__Result r = HUSH__RESULT__INIT;
    r.code = code;
    r.message = ok ? "" : (char *)(x->auth_why ? x->auth_why : "authentication failed");
    r.pre_keys_remaining = ok ? stock : 0;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = j->req_id;
    f.msg_case = HUSH__FRAME__MSG_RESULT;
    f.result = &r;
    e->out = outbuf_from_frame(&f, 0);
    if (code)
        metrics_error(code);
    add_event(x, j->loop, e);
}

/* The proof of a login or registration: signed by `key` over the transcript that names this relay
 * (an origin it answers to), this connection (its TLS channel binding) and, for a registration,
 * what is registered (hwire_register_digest). A wrong origin still costs a verification against
 * the key, so the work does not depend on which check fails. */
static int verify_proof(struct jctx *x, const char *purpose, const struct job *j, const uint8_t *key, size_t klen,
                        const ProtobufCBinaryData *sig, const char *origin, const uint8_t *digest)
{
    uint8_t msg[HWIRE_AUTH_MESSAGE_MAX];
    int origin_ok = relay_origin_ok(S.cfg, origin);
    if (!origin_ok)
        x->auth_why = "the proof names another relay: connect with one of this relay's names "
                                       "(its operator lists them as public_url)";
    size_t n = hwire_auth_message(msg, sizeof msg, purpose, origin ? origin : "", j->binding, j->binding_len,
                                  j->challenge, j->username, j->device_id, digest);
    if (!n || klen != crypto_sign_PUBLICKEYBYTES || sig->len != crypto_sign_BYTES)
        return 0;
    if (crypto_core_ed25519_is_valid_point(key))
        atomic_fetch_add(&g_metrics.auth_verifications, 1);
    return crypto_sign_verify_detached(sig->data, msg, n, key) == 0 && origin_ok;
}

/* ------------------------------------------------------------------------------------------ */
/* jobs */

static void do_register(struct jctx *x, const struct job *j)
{
    const Hush__RegisterRequest *r = j->frame->register_;
    /* Same answer for every failure of the proof. The signature is checked first so a forged
     * request cannot consume an invite. */
    uint8_t digest[HWIRE_REGISTER_DIGEST_BYTES];
    if (hwire_register_digest(r, digest) != 0 ||
        !verify_proof(x, HWIRE_PURPOSE_REGISTER, j, r->auth_key.data, r->auth_key.len, &r->signature, r->origin, digest)) {
        x->rollback = 1;
        login_done(x, j, 0, HUSH__ERROR_CODE__AUTH_FAILED, 0, 0);
        return;
    }
    Hush__ErrorCode code = HUSH__ERROR_CODE__OK;
    const char *why = "";
    if (S.cfg->registration == REG_CLOSED) {
        code = HUSH__ERROR_CODE__REGISTRATION_CLOSED;
        why = "registration is closed on this relay";
    } else if (r->keys && r->keys->n_one_time_pre_keys > S.cfg->max_prekeys_per_upload) {
        code = HUSH__ERROR_CODE__TOO_LARGE; /* as for an upload: a limit, not a malformed key */
        why = "too many one-time prekeys in one upload";
    } else if (!valid_pub(&r->identity_key) || r->registration_id == 0 || r->registration_id > 16380 ||
               !upload_ok(r->keys, 1) ||
               !spk_signature_ok(r->identity_key.data, r->identity_key.len, r->keys->signed_pre_key)) {
        code = HUSH__ERROR_CODE__BAD_KEYS;
        why = "malformed key or bad signed prekey signature";
    }
    sqlite3_stmt *st;
    if (!code && S.cfg->registration == REG_INVITE) {
        if (!r->invite || !*r->invite || strlen(r->invite) > 128) {
            code = HUSH__ERROR_CODE__REGISTRATION_CLOSED;
            why = "this relay needs an invite token";
        } else {
            uint8_t h[32];
            crypto_generichash(h, sizeof h, (const uint8_t *)r->invite, strlen(r->invite), NULL, 0);
            CHECK_SE(hstore_prepare(S.db, "UPDATE invites SET used_at = ?2, used_by = ?3 WHERE token_hash = ?1 AND used_at IS NULL", &st));
            sqlite3_bind_blob(st, 1, h, sizeof h, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 2, (int64_t)relay_now_ms());
            sqlite3_bind_text(st, 3, j->username, -1, SQLITE_TRANSIENT);
            CHECK_SE(hstore_run(S.db, st));
            if (hstore_changes(S.db) != 1) {
                code = HUSH__ERROR_CODE__INVITE_INVALID;
                why = "unknown or already used invite";
            }
        }
    }
    if (!code) {
        CHECK_SE(hstore_prepare(S.db, "INSERT INTO users (username, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING", &st));
        sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, (int64_t)relay_now_ms());
        CHECK_SE(hstore_run(S.db, st));
        if (hstore_changes(S.db) != 1) {
            code = HUSH__ERROR_CODE__USERNAME_TAKEN;
            why = "username taken";
        }
    }
    if (code) {
        x->rollback = 1;
        Hush__Result res = HUSH__RESULT__INIT;
        res.code = code;
        res.message = (char *)why;
        /* Not logged in: reply only, the loop closes nothing (the client may retry). */
        struct event *e = event_new(EV_LOGIN_DONE, j->conn);
        if (e) {
            e->ok = 0;
            e->code = code;
            Hush__Frame f = HUSH__FRAME__INIT;
            f.id = j->req_id;
            f.msg_case = HUSH__FRAME__MSG_RESULT;
            f.result = &res;
            e->out = outbuf_from_frame(&f, 0);
            metrics_error(code);
            add_event(x, j->loop, e);
        }
        return;
    }
    const Hush__SignedPreKey *spk = r->keys->signed_pre_key;
    CHECK_SE(hstore_prepare(S.db, "INSERT INTO devices (username, device_id, auth_key, identity_key, registration_id, "
                                  "spk_id, spk_public, spk_signature, spk_timestamp, created_at, last_seen) "
                                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    sqlite3_bind_blob(st, 3, r->auth_key.data, (int)r->auth_key.len, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 4, r->identity_key.data, (int)r->identity_key.len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, r->registration_id);
    sqlite3_bind_int64(st, 6, spk->id);
    sqlite3_bind_blob(st, 7, spk->public_key.data, (int)spk->public_key.len, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 8, spk->signature.data, (int)spk->signature.len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 9, (int64_t)spk->timestamp_ms);
    sqlite3_bind_int64(st, 10, (int64_t)relay_now_ms());
    CHECK_SE(hstore_run(S.db, st));
    CHECK_SE(store_keys(j->username, j->device_id, r->keys));
    uint32_t stock = 0;
    CHECK_SE(count_stock(j->username, j->device_id, &stock));
    rlog(RLOG_INFO, "register", "user=%s device=%u prekeys=%u", j->username, j->device_id, stock);
    login_done(x, j, 1, HUSH__ERROR_CODE__OK, stock, stock < S.cfg->prekeys_low_threshold);
}

static void do_login(struct jctx *x, const struct job *j)
{
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(S.db, "SELECT auth_key, prekeys_low_pending FROM devices WHERE username = ?1 AND device_id = ?2", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    int row = 0;
    CHECK_SE(hstore_step(S.db, st, &row));
    uint8_t key[32];
    int found = 0, pending_low = 0;
    if (row) {
        if (sqlite3_column_bytes(st, 0) == 32) {
            memcpy(key, sqlite3_column_blob(st, 0), 32);
            found = 1;
        }
        pending_low = sqlite3_column_int(st, 1);
        sqlite3_reset(st);
    }
    /* An unknown device is checked against a real public key (made at start, its secret thrown
     * away), so both paths do the same work: libsodium rejects an invalid or small-order key
     * early, and the difference in time told which user/device pairs exist. */
    int ok = verify_proof(x, HWIRE_PURPOSE_LOGIN, j, found ? key : S.dummy_key, 32, &j->frame->login->signature,
                          j->frame->login->origin, NULL) && found;
    if (!ok) {
        x->rollback = 1;
        rlog(RLOG_INFO, "login_failed", "conn=%llu", (unsigned long long)j->conn);
        login_done(x, j, 0, HUSH__ERROR_CODE__AUTH_FAILED, 0, 0);
        return;
    }
    uint32_t stock = 0;
    CHECK_SE(count_stock(j->username, j->device_id, &stock));
    CHECK_SE(hstore_prepare(S.db, "UPDATE devices SET prekeys_low_pending = 0, last_seen = ?3 WHERE username = ?1 AND device_id = ?2", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    sqlite3_bind_int64(st, 3, (int64_t)relay_now_ms());
    CHECK_SE(hstore_run(S.db, st));
    login_done(x, j, 1, HUSH__ERROR_CODE__OK, stock, pending_low || stock < S.cfg->prekeys_low_threshold);
}

static void do_upload(struct jctx *x, const struct job *j)
{
    const Hush__PreKeyUpload *u = j->frame->upload_pre_keys;
    if (u->n_one_time_pre_keys > S.cfg->max_prekeys_per_upload) {
        fail(x, j, HUSH__ERROR_CODE__TOO_LARGE, "too many one-time prekeys in one upload");
        return;
    }
    if (!upload_ok(u, 0)) {
        fail(x, j, HUSH__ERROR_CODE__BAD_KEYS, "malformed prekey");
        return;
    }
    sqlite3_stmt *st;
    if (u->signed_pre_key) {
        CHECK_SE(hstore_prepare(S.db, "SELECT identity_key FROM devices WHERE username = ?1 AND device_id = ?2", &st));
        sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, j->device_id);
        int row = 0;
        CHECK_SE(hstore_step(S.db, st, &row));
        int ok = row && spk_signature_ok(sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), u->signed_pre_key);
        if (row)
            sqlite3_reset(st);
        if (!ok) {
            fail(x, j, HUSH__ERROR_CODE__BAD_KEYS, "signed prekey signature does not verify");
            return;
        }
        const Hush__SignedPreKey *spk = u->signed_pre_key;
        CHECK_SE(hstore_prepare(S.db, "UPDATE devices SET spk_id = ?3, spk_public = ?4, spk_signature = ?5, spk_timestamp = ?6 "
                                      "WHERE username = ?1 AND device_id = ?2", &st));
        sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, j->device_id);
        sqlite3_bind_int64(st, 3, spk->id);
        sqlite3_bind_blob(st, 4, spk->public_key.data, (int)spk->public_key.len, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 5, spk->signature.data, (int)spk->signature.len, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 6, (int64_t)spk->timestamp_ms);
        CHECK_SE(hstore_run(S.db, st));
    }
    CHECK_SE(store_keys(j->username, j->device_id, u));
    uint32_t stock = 0;
    CHECK_SE(count_stock(j->username, j->device_id, &stock));
    if (stock > MAX_STOCK) {
        fail(x, j, HUSH__ERROR_CODE__TOO_LARGE, "more than 1000 one-time prekeys stored");
        return;
    }
    CHECK_SE(hstore_prepare(S.db, "UPDATE devices SET prekeys_low_pending = 0 WHERE username = ?1 AND device_id = ?2", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    CHECK_SE(hstore_run(S.db, st));
    Hush__Result r = HUSH__RESULT__INIT;
    r.message = "";
    r.pre_keys_remaining = stock;
    reply(x, j, &r);
}

/* Rate-limit buckets. A bucket that would be full by now says nothing a missing one does not, so
 * those are dropped first when the map is over its bound; if that is not enough, the least recently
 * used go (oldest first, by halving the age kept). Nothing is ever forgotten wholesale. */
struct evict_ctx {
    uint64_t now, older_than;
    int full_only;
};

static void evict_cb(const void *key, size_t klen, void *val, void *ctx)
{
    struct evict_ctx *e = ctx;
    struct bucket *b = val;
    int drop = e->full_only ? b->full_at_ms <= e->now : b->last_ms < e->older_than;
    if (drop)
        free(hmap_del(&S.rate, key, klen));
}

static void rate_evict(uint64_t now)
{
    struct evict_ctx e = { now, 0, 1 };
    hmap_foreach(&S.rate, evict_cb, &e);
    uint64_t age = 3600000; /* an hour, then halving */
    e.full_only = 0;
    while (S.rate.count > RATE_MAP_MAX * 3 / 4 && age > 0) {
        e.older_than = now > age ? now - age : 0;
        hmap_foreach(&S.rate, evict_cb, &e);
        age /= 2;
    }
}

/* Token bucket for key (requester\0target, or requester\0 alone). Returns 0 when allowed, else
 * the wait in ms. */
static uint32_t bucket_take(const char *requester, const char *target, uint32_t burst, uint32_t per_min)
{
    unsigned char k[2 * RELAY_USERNAME_MAX + 2];
    size_t rl = strnlen(requester, RELAY_USERNAME_MAX), tl = strnlen(target, RELAY_USERNAME_MAX);
    memcpy(k, requester, rl);
    k[rl] = 0;
    memcpy(k + rl + 1, target, tl);
    size_t kl = rl + 1 + tl;
    uint64_t now = relay_now_ms();
    double per_ms = per_min / 60000.0;
    struct bucket *b = hmap_get(&S.rate, k, kl);
    if (!b) {
        if (S.rate.count >= RATE_MAP_MAX)
            rate_evict(now);
        b = malloc(sizeof *b);
        int err = 0;
        if (!b)
            return 1000; /* no memory for the bucket: refuse rather than fail open */
        b->tokens = burst;
        b->last_ms = now;
        hmap_put(&S.rate, k, kl, b, &err);
        if (err) {
            free(b);
            return 1000;
        }
    }
    b->tokens += (double)(now - b->last_ms) * per_ms;
    if (b->tokens > burst)
        b->tokens = burst;
    b->last_ms = now;
    uint32_t wait = 0;
    if (b->tokens >= 1.0)
        b->tokens -= 1.0;
    else
        wait = (uint32_t)((1.0 - b->tokens) / per_ms) + 1;
    b->full_at_ms = now + (uint64_t)((burst - b->tokens) / per_ms) + 1;
    return wait;
}

static void lowpush_evict_cb(const void *key, size_t klen, void *val, void *ctx)
{
    if (*(uint64_t *)val < *(uint64_t *)ctx)
        free(hmap_del(&S.lowpush, key, klen));
}

/* 1 when an online device may be told its prekeys run low now: at most once per interval, or
 * every fetch under the threshold would push one (and a client that answers each push with an
 * upload would be driven by anyone who fetches its bundle). */
static int lowpush_due(const char *user, uint32_t dev)
{
    uint64_t now = relay_now_ms(), gap = (uint64_t)S.cfg->prekeys_low_interval_s * 1000;
    unsigned char k[RELAY_USERNAME_MAX + 8];
    size_t kl = relay_dev_key(k, user, dev);
    uint64_t *last = hmap_get(&S.lowpush, k, kl);
    if (last) {
        if (now - *last < gap)
            return 0;
        *last = now;
        return 1;
    }
    if (S.lowpush.count >= RATE_MAP_MAX) {
        uint64_t older = now > gap ? now - gap : 0;
        hmap_foreach(&S.lowpush, lowpush_evict_cb, &older);
    }
    last = malloc(sizeof *last);
    if (last) {
        int err = 0;
        *last = now;
        hmap_put(&S.lowpush, k, kl, last, &err);
        if (err)
            free(last);
    }
    return 1;
}

static void prekeys_low(struct jctx *x, const char *user, uint32_t dev, uint32_t stock)
{
    struct dir_entry d;
    if (directory_lookup(user, dev, &d)) {
        if (!lowpush_due(user, dev))
            return;
        Hush__PreKeysLow pl = HUSH__PRE_KEYS_LOW__INIT;
        pl.remaining = stock;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.msg_case = HUSH__FRAME__MSG_PRE_KEYS_LOW;
        f.pre_keys_low = &pl;
        struct event *e = event_new(EV_SEND_FRAME, d.conn);
        if (e) {
            e->out = outbuf_from_frame(&f, 0);
            add_event(x, d.loop, e);
        }
        return;
    }
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(S.db, "UPDATE devices SET prekeys_low_pending = 1 WHERE username = ?1 AND device_id = ?2", &st));
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    CHECK_SE(hstore_run(S.db, st));
}

static void fetch_limited(struct jctx *x, const struct job *j, uint32_t wait, const char *why)
{
    Hush__Result r = HUSH__RESULT__INIT;
    r.code = HUSH__ERROR_CODE__RATE_LIMITED;
    r.message = (char *)why;
    r.retry_after_ms = wait;
    x->rollback = 1;
    reply(x, j, &r);
}

#define MAX_DEVICES_PER_FETCH 16
static void do_fetch_bundles(struct jctx *x, const struct job *j)
{
    const char *target = j->frame->fetch_bundles->username;
    /* Every fetch, of a known user or not, counts against the requester's overall bucket; only a
     * user that exists gets a (requester, target) bucket, so made-up names cannot fill the map. */
    uint32_t wait = bucket_take(j->username, "", S.cfg->fetch_total_burst, S.cfg->fetch_total_per_min);
    if (wait) {
        fetch_limited(x, j, wait, "too many bundle fetches");
        return;
    }
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(S.db, "SELECT device_id, registration_id, identity_key, spk_id, spk_public, spk_signature, "
                                  "spk_timestamp, auth_key, last_resort_id, last_resort_public FROM devices WHERE username = ?1 "
                                  "ORDER BY device_id LIMIT ?2", &st));
    sqlite3_bind_text(st, 1, target, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, MAX_DEVICES_PER_FETCH);
    Hush__KeyBundle bundles[MAX_DEVICES_PER_FETCH], *bp[MAX_DEVICES_PER_FETCH];
    Hush__SignedPreKey spks[MAX_DEVICES_PER_FETCH];
    Hush__PreKey otks[MAX_DEVICES_PER_FETCH];
    uint8_t keybuf[MAX_DEVICES_PER_FETCH][33 + 33 + 64 + 32 + 33];
    uint8_t lastres[MAX_DEVICES_PER_FETCH][33]; /* the last-resort key, served when the stock is out */
    int64_t lastres_id[MAX_DEVICES_PER_FETCH];
    size_t n = 0;
    int row = 0;
    hstore_err se;
    while ((se = hstore_step(S.db, st, &row)) == HSTORE_OK && row && n < MAX_DEVICES_PER_FETCH) {
        if (sqlite3_column_bytes(st, 2) != 33 || sqlite3_column_bytes(st, 4) != 33 || sqlite3_column_bytes(st, 5) != 64 ||
            sqlite3_column_bytes(st, 7) != 32)
            continue;
        uint8_t *kb = keybuf[n];
        memcpy(kb, sqlite3_column_blob(st, 2), 33);
        memcpy(kb + 33, sqlite3_column_blob(st, 4), 33);
        memcpy(kb + 66, sqlite3_column_blob(st, 5), 64);
        memcpy(kb + 130, sqlite3_column_blob(st, 7), 32);
        lastres_id[n] = -1;
        if (sqlite3_column_type(st, 8) == SQLITE_INTEGER && sqlite3_column_bytes(st, 9) == 33) {
            lastres_id[n] = sqlite3_column_int64(st, 8);
            memcpy(lastres[n], sqlite3_column_blob(st, 9), 33);
        }
        hush__key_bundle__init(&bundles[n]);
        hush__signed_pre_key__init(&spks[n]);
        bundles[n].username = (char *)target;
        bundles[n].device_id = (uint32_t)sqlite3_column_int64(st, 0);
        bundles[n].registration_id = (uint32_t)sqlite3_column_int64(st, 1);
        bundles[n].identity_key.data = kb;
        bundles[n].identity_key.len = 33;
        spks[n].id = (uint32_t)sqlite3_column_int64(st, 3);
        spks[n].public_key.data = kb + 33;
        spks[n].public_key.len = 33;
        spks[n].signature.data = kb + 66;
        spks[n].signature.len = 64;
        spks[n].timestamp_ms = (uint64_t)sqlite3_column_int64(st, 6);
        bundles[n].signed_pre_key = &spks[n];
        bundles[n].auth_key.data = kb + 130;
        bundles[n].auth_key.len = 32;
        bp[n] = &bundles[n];
        n++;
    }
    sqlite3_reset(st);
    CHECK_SE(se);
    if (n == 0) {
        fail(x, j, HUSH__ERROR_CODE__UNKNOWN_USER, "no such user");
        return;
    }
    wait = bucket_take(j->username, target, S.cfg->fetch_burst, S.cfg->fetch_refill_per_min);
    if (wait) {
        fetch_limited(x, j, wait, "too many bundle fetches for this user");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        /* Hand out the lowest one-time key exactly once: the storage thread is the only writer. */
        CHECK_SE(hstore_prepare(S.db, "DELETE FROM one_time_prekeys WHERE username = ?1 AND device_id = ?2 AND key_id = "
                                      "(SELECT min(key_id) FROM one_time_prekeys WHERE username = ?1 AND device_id = ?2) "
                                      "RETURNING key_id, public_key", &st));
        sqlite3_bind_text(st, 1, target, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, bundles[i].device_id);
        row = 0;
        CHECK_SE(hstore_step(S.db, st, &row));
        if (row && sqlite3_column_bytes(st, 1) == 33) {
            hush__pre_key__init(&otks[i]);
            otks[i].id = (uint32_t)sqlite3_column_int64(st, 0);
            memcpy(keybuf[i] + 162, sqlite3_column_blob(st, 1), 33);
            otks[i].public_key.data = keybuf[i] + 162;
            otks[i].public_key.len = 33;
            bundles[i].one_time_pre_key = &otks[i];
        }
        if (row) {
            int more = 0;
            while (hstore_step(S.db, st, &more) == HSTORE_OK && more) {
            }
        } else if (lastres_id[i] >= 0) {
            /* One-time keys are out: the last-resort key (never deleted, may be handed out again)
             * still lets a session start; the device replaces its stock when told PreKeysLow. */
            hush__pre_key__init(&otks[i]);
            otks[i].id = (uint32_t)lastres_id[i];
            otks[i].public_key.data = lastres[i];
            otks[i].public_key.len = 33;
            bundles[i].one_time_pre_key = &otks[i];
        }
        uint32_t stock = 0;
        CHECK_SE(count_stock(target, bundles[i].device_id, &stock));
        if (stock < S.cfg->prekeys_low_threshold)
            prekeys_low(x, target, bundles[i].device_id, stock);
        if (x->store_err)
            return;
    }
    Hush__Result r = HUSH__RESULT__INIT;
    r.message = "";
    r.n_bundles = n;
    r.bundles = bp;
    reply(x, j, &r);
}

static struct quota *quota_of(const char *user, uint32_t dev, hstore_err *e)
{
    unsigned char k[RELAY_USERNAME_MAX + 8];
    size_t kl = relay_dev_key(k, user, dev);
    *e = HSTORE_OK;
    struct quota *q = hmap_get(&S.quota, k, kl);
    if (q)
        return q;
    sqlite3_stmt *st;
    if ((*e = hstore_prepare(S.db, "SELECT count(*), coalesce(sum(length(envelope)), 0) FROM mailbox "
                                   "WHERE recipient = ?1 AND recipient_device = ?2", &st)))
        return NULL;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    int row = 0;
    if ((*e = hstore_step(S.db, st, &row)) || !row)
        return NULL;
    q = malloc(sizeof *q);
    if (q) {
        q->count = sqlite3_column_int64(st, 0);
        q->bytes = sqlite3_column_int64(st, 1);
        int err = 0;
        hmap_put(&S.quota, k, kl, q, &err);
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
    if (S.cfg->sender_share_percent >= 100 || !q)
        return HSTORE_OK;
    int64_t max_count = (int64_t)((uint64_t)S.cfg->quota_messages * S.cfg->sender_share_percent / 100);
    int64_t max_bytes = (int64_t)(S.cfg->quota_bytes * S.cfg->sender_share_percent / 100);
    int64_t len = (int64_t)rc->envelope.len;
    if (q->count + 1 <= max_count && q->bytes + len <= max_bytes)
        return HSTORE_OK;
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(S.db, "SELECT count(*), coalesce(sum(length(envelope)), 0) FROM mailbox "
                                        "WHERE recipient = ?1 AND recipient_device = ?2 AND sender = ?3", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, rc->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, rc->device_id);
    sqlite3_bind_text(st, 3, sender, -1, SQLITE_TRANSIENT);
    int row = 0;
    if ((e = hstore_step(S.db, st, &row)))
        return e;
    if (row) {
        *over = sqlite3_column_int64(st, 0) + 1 > max_count || sqlite3_column_int64(st, 1) + len > max_bytes;
        sqlite3_reset(st);
    }
    return HSTORE_OK;
}

static void do_send(struct jctx *x, const struct job *j)
{
    const Hush__SendRequest *s = j->frame->send;
    uint64_t seqs[1024];
    uint64_t now = relay_now_ms();
    uint64_t ttl_ms = S.cfg->ttl_seconds ? (uint64_t)S.cfg->ttl_seconds * 1000ull : (uint64_t)S.cfg->ttl_days * 86400000ull;
    uint64_t expires = now + ttl_ms;
    sqlite3_stmt *st;
    struct {
        int live;
        struct dir_entry d;
    } route[1024];
    for (size_t i = 0; i < s->n_recipients; i++) {
        const Hush__Recipient *rc = s->recipients[i];
        route[i].live = 0;
        CHECK_SE(hstore_prepare(S.db, "SELECT 1 FROM devices WHERE username = ?1 AND device_id = ?2", &st));
        sqlite3_bind_text(st, 1, rc->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, rc->device_id);
        int row = 0;
        CHECK_SE(hstore_step(S.db, st, &row));
        if (!row) {
            fail(x, j, HUSH__ERROR_CODE__UNKNOWN_RECIPIENT, rc->username);
            return;
        }
        sqlite3_reset(st);
        /* A retry of the same client message id is stored once: answer with the first seq. */
        CHECK_SE(hstore_prepare(S.db, "SELECT seq FROM mailbox WHERE recipient = ?1 AND recipient_device = ?2 AND "
                                      "sender = ?3 AND sender_device = ?4 AND client_msg_id = ?5", &st));
        sqlite3_bind_text(st, 1, rc->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, rc->device_id);
        sqlite3_bind_text(st, 3, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4, j->device_id);
        sqlite3_bind_blob(st, 5, s->client_msg_id.data, (int)s->client_msg_id.len, SQLITE_TRANSIENT);
        CHECK_SE(hstore_step(S.db, st, &row));
        if (row) {
            seqs[i] = (uint64_t)sqlite3_column_int64(st, 0);
            sqlite3_reset(st);
            continue;
        }
        hstore_err qe;
        struct quota *q = quota_of(rc->username, rc->device_id, &qe);
        CHECK_SE(qe);
        if (q && (q->count + 1 > (int64_t)S.cfg->quota_messages ||
                  q->bytes + (int64_t)rc->envelope.len > (int64_t)S.cfg->quota_bytes)) {
            fail(x, j, HUSH__ERROR_CODE__QUOTA_EXCEEDED, rc->username);
            return;
        }
        int share = 0;
        CHECK_SE(over_sender_share(q, j->username, rc, &share));
        if (share) {
            fail(x, j, HUSH__ERROR_CODE__QUOTA_EXCEEDED, "your share of this recipient's mailbox is full");
            return;
        }
        CHECK_SE(hstore_prepare(S.db, "INSERT INTO mailbox (recipient, recipient_device, sender, sender_device, client_msg_id, "
                                      "envelope, received_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)", &st));
        sqlite3_bind_text(st, 1, rc->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, rc->device_id);
        sqlite3_bind_text(st, 3, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4, j->device_id);
        sqlite3_bind_blob(st, 5, s->client_msg_id.data, (int)s->client_msg_id.len, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 6, rc->envelope.data, (int)rc->envelope.len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 7, (int64_t)now);
        sqlite3_bind_int64(st, 8, (int64_t)expires);
        CHECK_SE(hstore_run(S.db, st));
        seqs[i] = (uint64_t)hstore_last_insert_rowid(S.db);
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
    reply(x, j, &r);
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
        add_event(x, route[i].d.loop, e);
    }
}

static void do_fetch_mail(struct jctx *x, const struct job *j)
{
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(S.db, "SELECT seq, sender, sender_device, client_msg_id, envelope, received_at FROM mailbox "
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
    while ((se = hstore_step(S.db, st, &row)) == HSTORE_OK && row) {
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
    add_event(x, j->loop, e);
}

static void do_ack(struct jctx *x, const struct job *j)
{
    const Hush__AckRequest *a = j->frame->ack;
    sqlite3_stmt *st;
    for (size_t i = 0; i < a->n_seqs; i++) {
        /* Only the owner's mailbox: someone else's seq matches nothing. */
        CHECK_SE(hstore_prepare(S.db, "DELETE FROM mailbox WHERE seq = ?1 AND recipient = ?2 AND recipient_device = ?3 "
                                      "RETURNING length(envelope)", &st));
        sqlite3_bind_int64(st, 1, (int64_t)a->seqs[i]);
        sqlite3_bind_text(st, 2, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, j->device_id);
        int row = 0;
        CHECK_SE(hstore_step(S.db, st, &row));
        if (row) {
            add_delta(x, j->username, j->device_id, -1, -(int64_t)sqlite3_column_int64(st, 0));
            x->deleted++;
            int more = 0;
            while (hstore_step(S.db, st, &more) == HSTORE_OK && more) {
            }
        }
    }
    if (j->req_id)
        reply_code(x, j, HUSH__ERROR_CODE__OK, "");
}

static void do_set_allow(struct jctx *x, const struct job *j)
{
    const Hush__SetPresenceAllowRequest *r = j->frame->set_presence_allow;
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(S.db, "DELETE FROM presence_allow WHERE owner = ?1", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    CHECK_SE(hstore_run(S.db, st));
    for (size_t i = 0; i < r->n_usernames; i++) {
        CHECK_SE(hstore_prepare(S.db, "INSERT OR IGNORE INTO presence_allow (owner, allowed) VALUES (?1, ?2)", &st));
        sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, r->usernames[i], -1, SQLITE_TRANSIENT);
        CHECK_SE(hstore_run(S.db, st));
    }
    x->allow_apply = (Hush__SetPresenceAllowRequest *)r;
    snprintf(x->allow_owner, sizeof x->allow_owner, "%s", j->username);
    reply_code(x, j, HUSH__ERROR_CODE__OK, "");
}

static void do_disconnect(struct jctx *x, const struct job *j)
{
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(S.db, "UPDATE devices SET last_seen = ?3 WHERE username = ?1 AND device_id = ?2", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    sqlite3_bind_int64(st, 3, (int64_t)relay_now_ms());
    CHECK_SE(hstore_run(S.db, st));
}

/* expires_at = received_at + the configured TTL grows with seq, so the expired rows are the oldest
 * ones: find the first row still valid, walking from the oldest (cost: the expired rows + 1), and
 * delete everything before it by seq. After the TTL is lowered, a newer row can expire before older
 * ones; it then goes when they go. Fetches never hand out an expired row either way. */
static void do_expire(struct jctx *x)
{
    sqlite3_stmt *st;
    int64_t now = (int64_t)relay_now_ms();
    CHECK_SE(hstore_prepare(S.db, "SELECT seq FROM mailbox WHERE expires_at > ?1 ORDER BY seq LIMIT 1", &st));
    sqlite3_bind_int64(st, 1, now);
    int row = 0;
    CHECK_SE(hstore_step(S.db, st, &row));
    int64_t first_valid = row ? sqlite3_column_int64(st, 0) : INT64_MAX;
    sqlite3_reset(st);
    CHECK_SE(hstore_prepare(S.db, "DELETE FROM mailbox WHERE seq < ?1", &st));
    sqlite3_bind_int64(st, 1, first_valid);
    CHECK_SE(hstore_run(S.db, st));
    x->expired = hstore_changes(S.db);
    if (x->expired)
        x->ndeltas = -1; /* which devices lost rows is not tracked: reload the cache */
}

/* ------------------------------------------------------------------------------------------ */
/* the batch loop */

static void run_job(struct jctx *x, struct job *j)
{
    switch (j->type) {
    case JOB_REGISTER: do_register(x, j); break;
    case JOB_LOGIN: do_login(x, j); break;
    case JOB_UPLOAD: do_upload(x, j); break;
    case JOB_FETCH_BUNDLES: do_fetch_bundles(x, j); break;
    case JOB_SEND: do_send(x, j); break;
    case JOB_FETCH_MAIL: do_fetch_mail(x, j); break;
    case JOB_ACK: do_ack(x, j); break;
    case JOB_SET_ALLOW: do_set_allow(x, j); break;
    case JOB_DISCONNECT: do_disconnect(x, j); break;
    case JOB_EXPIRE: do_expire(x); break;
    case JOB_STOP: break;
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
            add_event(&x, j->loop, e);
        }
        metrics_error(HUSH__ERROR_CODE__STORAGE_FAILED);
    } else if (j->type == JOB_FETCH_MAIL) {
        struct event *e = event_new(EV_MAIL, j->conn);
        if (e) {
            e->ok = 0; /* fetch failed: the loop retries later */
            add_event(&x, j->loop, e);
        }
    } else {
        reply_code(&x, j, HUSH__ERROR_CODE__STORAGE_FAILED, "storage failed, nothing was stored");
    }
    struct posting *p = x.posts;
    while (p) {
        struct posting *n = p->next;
        p->next = *out;
        *out = p;
        p = n;
    }
}

static void apply_deltas(struct jctx *x)
{
    if (x->ndeltas < 0) {
        quota_clear();
        return;
    }
    for (int i = 0; i < x->ndeltas; i++) {
        unsigned char k[RELAY_USERNAME_MAX + 8];
        size_t kl = relay_dev_key(k, x->deltas[i].user, x->deltas[i].dev);
        struct quota *q = hmap_get(&S.quota, k, kl);
        if (q) {
            q->count += x->deltas[i].count;
            q->bytes += x->deltas[i].bytes;
        }
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
    hstore_err be = x ? hstore_savepoint(S.db) : HSTORE_ERR_NOMEM;
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
            if (x->store_err) {
                rlog(RLOG_ERROR, "storage_error", "job=%d detail=\"%s\"", (int)j->type, hstore_errmsg(S.db));
                free_postings(x->posts);
                be = x->store_err;
                continue;
            }
            apply_deltas(x);
            deleted += x->deleted;
            take_postings(&posts, x);
            continue;
        }
        hstore_err e = hstore_savepoint(S.db);
        if (e == HSTORE_OK)
            run_job(x, j);
        else
            x->store_err = e;
        if (!x->store_err && !x->rollback)
            x->store_err = hstore_release(S.db);
        if (x->store_err || x->rollback)
            hstore_rollback(S.db);
        if (x->store_err) {
            rlog(RLOG_ERROR, "storage_error", "job=%d detail=\"%s\"", (int)j->type, hstore_errmsg(S.db));
            free_postings(x->posts);
            storage_failed(&posts, j);
            continue;
        }
        if (!x->rollback) {
            apply_deltas(x);
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
    }
    if (!be)
        be = hstore_release(S.db); /* COMMIT: the durability point of the whole batch */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long usec = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000;
    if (be) {
        hstore_rollback(S.db);
        atomic_fetch_add(&g_metrics.commit_failures, 1);
        rlog(RLOG_ERROR, "commit_failed", "jobs=%ld detail=\"%s\"", njobs, hstore_errmsg(S.db));
        quota_clear();
        free_postings(posts);
        posts = NULL;
        for (struct job *j = list; j; j = j->next)
            storage_failed(&posts, j);
    } else {
        metrics_commit(njobs, usec);
        atomic_fetch_add(&g_metrics.messages_in, inserted);
        atomic_fetch_add(&g_metrics.messages_acked, deleted);
        atomic_fetch_add(&g_metrics.messages_expired, expired);
        atomic_fetch_add(&g_metrics.mailbox_depth, inserted - deleted - expired);
        for (int i = 0; i < nallows; i++)
            presence_set_allow(allows[i].owner, allows[i].r->usernames, allows[i].r->n_usernames);
    }
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
        pthread_mutex_lock(&S.mu);
        while (!S.head && !S.stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&S.cv, &S.mu, &ts);
            if (relay_now_ms() >= S.next_expire_ms)
                break;
        }
        /* Take up to max_batch jobs. */
        struct job *list = S.head, *last = NULL;
        uint32_t n = 0;
        for (struct job *j = S.head; j && n < S.cfg->max_batch; j = j->next) {
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

int storage_start(const struct relay_config *cfg, char *err, size_t errlen)
{
    S.cfg = cfg;
    uint8_t sk[crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair(S.dummy_key, sk);
    sodium_memzero(sk, sizeof sk);
    S.db = storage_open_db(cfg->db_path, cfg->durability_full, err, errlen);
    if (!S.db)
        return -1;
    if (signal_context_create(&S.sg, NULL) != 0) {
        snprintf(err, errlen, "libsignal context");
        return -1;
    }
    hmap_init(&S.quota, 1024);
    hmap_init(&S.rate, 1024);
    hmap_init(&S.lowpush, 1024);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(hstore_handle(S.db), "SELECT count(*) FROM mailbox", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        atomic_store(&g_metrics.mailbox_depth, sqlite3_column_int64(st, 0));
    sqlite3_finalize(st);
    presence_load(S.db);
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
    while ((S.head || S.busy) && S.started)
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
    hmap_free(&S.quota, free);
    hmap_free(&S.rate, free);
    hmap_free(&S.lowpush, free);
    signal_context_destroy(S.sg);
    S.sg = NULL;
    hstore_close(S.db);
    S.db = NULL;
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
        sqlite3_stmt *st;
        if (hstore_prepare(db, "INSERT INTO invites (token_hash, created_at) VALUES (?1, ?2)", &st)) {
            r = -1;
            break;
        }
        sqlite3_bind_blob(st, 1, h, sizeof h, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, (int64_t)relay_now_ms());
        if (hstore_run(db, st))
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
