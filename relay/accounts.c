/*
 * accounts.c - the storage jobs about who is who: registration (invites), login proofs, prekey
 * uploads and directory fetches (rate-limited, PreKeysLow pushes), link tokens for new devices,
 * last-seen on disconnect. Owns the tables users, devices, one_time_prekeys, invites and
 * link_tokens: nobody else writes their SQL.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <curve.h>
#include <signal_protocol.h>

#include "hmap.h"
#include "jobs.h"
#include "relay.h"

#define MAX_STOCK RELAY_MAX_STORED_PREKEYS
#define RATE_MAP_MAX 100000

struct bucket {
    double tokens;
    uint64_t last_ms;
    uint64_t full_at_ms; /* when it will be full again: from then on it can be forgotten */
};

static struct {
    signal_context *sg;
    struct hmap rate;    /* requester\0target (or requester\0 for all its fetches) -> struct bucket* */
    struct hmap lowpush; /* user\0dev -> uint64_t* ms of the last PreKeysLow push */
    uint8_t dummy_key[crypto_sign_PUBLICKEYBYTES]; /* what an unknown device's proof is checked against */
} A;

int accounts_init(char *err, size_t errlen)
{
    uint8_t sk[crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair(A.dummy_key, sk);
    sodium_memzero(sk, sizeof sk);
    if (signal_context_create(&A.sg, NULL) != 0) {
        snprintf(err, errlen, "libsignal context");
        return -1;
    }
    hmap_init(&A.rate, 1024);
    hmap_init(&A.lowpush, 1024);
    return 0;
}

void accounts_free(void)
{
    hmap_free(&A.rate, free);
    hmap_free(&A.lowpush, free);
    signal_context_destroy(A.sg);
    A.sg = NULL;
}

hstore_err accounts_user_devices(const char *user, uint32_t *devs, size_t max, size_t *n)
{
    sqlite3_stmt *st;
    *n = 0;
    hstore_err e = hstore_prepare(senv.db, "SELECT device_id FROM devices WHERE username = ?1 ORDER BY device_id", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    int row = 0;
    while ((e = hstore_step(senv.db, st, &row)) == HSTORE_OK && row) {
        if (*n < max)
            devs[(*n)++] = (uint32_t)sqlite3_column_int64(st, 0);
    }
    return e;
}

hstore_err accounts_delete_device(hstore *db, const char *user, uint32_t dev, int *deleted)
{
    sqlite3_stmt *st;
    *deleted = 0;
    hstore_err e = hstore_prepare(db, "DELETE FROM devices WHERE username = ?1 AND device_id = ?2", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    if ((e = hstore_run(db, st)))
        return e;
    *deleted = hstore_changes(db) == 1; /* its one-time prekeys go with it (ON DELETE CASCADE) */
    return HSTORE_OK;
}

hstore_err accounts_delete_user(hstore *db, const char *user, int *deleted)
{
    /* child rows first: the hardened connection allows one level of cascade only */
    static const char *const sql[] = {
        "DELETE FROM one_time_prekeys WHERE username = ?1",
        "DELETE FROM link_tokens WHERE username = ?1",
        "DELETE FROM devices WHERE username = ?1",
        "DELETE FROM users WHERE username = ?1",
    };
    *deleted = 0;
    for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++) {
        sqlite3_stmt *st;
        hstore_err e = hstore_prepare(db, sql[i], &st);
        if (e)
            return e;
        sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
        if ((e = hstore_run(db, st)))
            return e;
    }
    *deleted = hstore_changes(db) == 1;
    return HSTORE_OK;
}

hstore_err accounts_each_device(hstore *db, const char *user, uint64_t idle_before_ms,
                                void (*fn)(void *ctx, const char *user, uint32_t dev, uint64_t created_ms, uint64_t last_seen_ms),
                                void *ctx)
{
    /* user NULL: every device whose last sight is before idle_before_ms, except each user's most
     * recently seen one (ties: the highest id stays) */
    sqlite3_stmt *st;
    hstore_err e = user ? hstore_prepare(db, "SELECT username, device_id, created_at, last_seen FROM devices "
                                             "WHERE username = ?1 ORDER BY device_id", &st)
                        : hstore_prepare(db, "SELECT username, device_id, created_at, last_seen FROM devices d "
                                             "WHERE max(last_seen, created_at) < ?2 AND EXISTS (SELECT 1 FROM devices o "
                                             "WHERE o.username = d.username AND (max(o.last_seen, o.created_at) > "
                                             "max(d.last_seen, d.created_at) OR (max(o.last_seen, o.created_at) = "
                                             "max(d.last_seen, d.created_at) AND o.device_id > d.device_id))) "
                                             "ORDER BY username, device_id LIMIT 1000", &st);
    if (e)
        return e;
    if (user)
        sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_int64(st, 2, (int64_t)idle_before_ms);
    /* collected first: fn may change the table */
    struct row {
        char user[RELAY_USERNAME_MAX + 1];
        uint32_t dev;
        uint64_t created, seen;
    } *rows = NULL;
    size_t n = 0, cap = 0;
    int has = 0;
    while ((e = hstore_step(db, st, &has)) == HSTORE_OK && has) {
        const char *u = (const char *)sqlite3_column_text(st, 0);
        if (!relay_valid_username(u))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            struct row *r = realloc(rows, cap * sizeof *rows);
            if (!r) {
                sqlite3_reset(st);
                free(rows);
                return HSTORE_ERR_NOMEM;
            }
            rows = r;
        }
        snprintf(rows[n].user, sizeof rows[n].user, "%s", u);
        rows[n].dev = (uint32_t)sqlite3_column_int64(st, 1);
        rows[n].created = (uint64_t)sqlite3_column_int64(st, 2);
        rows[n].seen = (uint64_t)sqlite3_column_int64(st, 3);
        n++;
    }
    for (size_t i = 0; !e && i < n; i++)
        fn(ctx, rows[i].user, rows[i].dev, rows[i].created, rows[i].seen);
    free(rows);
    return e;
}

void accounts_each_last_seen(hstore *db, void (*fn)(const char *user, uint64_t last_seen_ms, void *ctx), void *ctx)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(hstore_handle(db), "SELECT username, max(last_seen) FROM devices GROUP BY username", -1, &st,
                           NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *u = (const char *)sqlite3_column_text(st, 0);
            if (relay_valid_username(u))
                fn(u, (uint64_t)sqlite3_column_int64(st, 1), ctx);
        }
    }
    sqlite3_finalize(st);
}

hstore_err accounts_add_invite(hstore *db, const uint8_t token_hash[32])
{
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(db, "INSERT INTO invites (token_hash, created_at) VALUES (?1, ?2)", &st);
    if (e)
        return e;
    sqlite3_bind_blob(st, 1, token_hash, 32, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, (int64_t)relay_now_ms());
    return hstore_run(db, st);
}

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
    if (curve_decode_point(&idk, identity, ilen, A.sg) != 0)
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
    if (curve_decode_point(&pk, k->public_key.data, k->public_key.len, A.sg) != 0)
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
    hstore_err e = hstore_prepare(senv.db, "SELECT count(*) FROM one_time_prekeys WHERE username = ?1 AND device_id = ?2", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    int row = 0;
    e = hstore_step(senv.db, st, &row);
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
        if ((e = hstore_prepare(senv.db, "INSERT OR REPLACE INTO one_time_prekeys (username, device_id, key_id, public_key) "
                                      "VALUES (?1, ?2, ?3, ?4)", &st)))
            return e;
        sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        sqlite3_bind_int64(st, 3, k->id);
        sqlite3_bind_blob(st, 4, k->public_key.data, (int)k->public_key.len, SQLITE_TRANSIENT);
        if ((e = hstore_run(senv.db, st)))
            return e;
    }
    if (u && u->last_resort) {
        if ((e = hstore_prepare(senv.db, "UPDATE devices SET last_resort_id = ?3, last_resort_public = ?4 "
                                      "WHERE username = ?1 AND device_id = ?2", &st)))
            return e;
        sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        sqlite3_bind_int64(st, 3, u->last_resort->id);
        sqlite3_bind_blob(st, 4, u->last_resort->public_key.data, (int)u->last_resort->public_key.len, SQLITE_TRANSIENT);
        if ((e = hstore_run(senv.db, st)))
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
    jctx_post(x, j->loop, e);
}

/* The proof of a login or registration: signed by `key` over the transcript that names this relay
 * (an origin it answers to), this connection (its TLS channel binding) and, for a registration,
 * what is registered (hwire_register_digest). A wrong origin still costs a verification against
 * the key, so the work does not depend on which check fails. */
static int verify_proof(struct jctx *x, const char *purpose, const struct job *j, const uint8_t *key, size_t klen,
                        const ProtobufCBinaryData *sig, const char *origin, const uint8_t *digest)
{
    uint8_t msg[HWIRE_AUTH_MESSAGE_MAX];
    int origin_ok = relay_origin_ok(senv.cfg, origin);
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

/* A new device of an existing user: the link token one of its devices got must be unused,
 * unexpired and reserve this device id; the user must have room; and the device must carry the
 * user's identity key (contacts refuse any other, but the relay says so at once). */
static hstore_err link_check(const struct job *j, const Hush__RegisterRequest *r, Hush__ErrorCode *code, const char **why)
{
    *code = HUSH__ERROR_CODE__LINK_INVALID;
    *why = "unknown, used or expired link token";
    if (strlen(r->link_token) > 128)
        return HSTORE_OK;
    uint8_t h[32];
    crypto_generichash(h, sizeof h, (const uint8_t *)r->link_token, strlen(r->link_token), NULL, 0);
    sqlite3_stmt *st;
    uint64_t now = relay_now_ms();
    hstore_err e = hstore_prepare(senv.db, "UPDATE link_tokens SET used_at = ?4 WHERE token_hash = ?1 AND username = ?2 AND "
                                           "device_id = ?3 AND used_at IS NULL AND expires_at > ?4", &st);
    if (e)
        return e;
    sqlite3_bind_blob(st, 1, h, sizeof h, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, j->device_id);
    sqlite3_bind_int64(st, 4, (int64_t)now);
    if ((e = hstore_run(senv.db, st)))
        return e;
    if (hstore_changes(senv.db) != 1)
        return HSTORE_OK;
    uint32_t devs[16];
    size_t n = 0;
    if ((e = accounts_user_devices(j->username, devs, 16, &n)))
        return e;
    if (n >= senv.cfg->max_devices) {
        *code = HUSH__ERROR_CODE__TOO_MANY_DEVICES;
        *why = "this user has the most devices this relay allows";
        return HSTORE_OK;
    }
    if ((e = hstore_prepare(senv.db, "SELECT identity_key FROM devices WHERE username = ?1 ORDER BY device_id LIMIT 1", &st)))
        return e;
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    int row = 0;
    if ((e = hstore_step(senv.db, st, &row)))
        return e;
    int same = row && sqlite3_column_bytes(st, 0) == (int)r->identity_key.len &&
               memcmp(sqlite3_column_blob(st, 0), r->identity_key.data, r->identity_key.len) == 0;
    if (row)
        sqlite3_reset(st);
    if (!same) {
        *code = HUSH__ERROR_CODE__BAD_KEYS;
        *why = "a linked device must carry its user's identity key";
        return HSTORE_OK;
    }
    *code = HUSH__ERROR_CODE__OK;
    *why = "";
    return HSTORE_OK;
}

void accounts_tell_device_list_changed(struct jctx *x, const char *user, uint32_t except)
{
    uint32_t devs[16];
    size_t n = 0;
    CHECK_SE(accounts_user_devices(user, devs, 16, &n));
    Hush__DeviceListChanged dc = HUSH__DEVICE_LIST_CHANGED__INIT;
    dc.username = (char *)user;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_DEVICE_LIST_CHANGED;
    f.device_list_changed = &dc;
    for (size_t i = 0; i < n; i++) {
        struct dir_entry d;
        if (devs[i] == except || !directory_lookup(user, devs[i], &d))
            continue;
        struct event *e = event_new(EV_SEND_FRAME, d.conn);
        if (!e)
            continue;
        e->out = outbuf_from_frame(&f, 0);
        jctx_post(x, d.loop, e);
    }
}

void accounts_list_devices(struct jctx *x, const struct job *j)
{
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "SELECT device_id, created_at, last_seen, name FROM devices WHERE username = ?1 "
                                  "ORDER BY device_id LIMIT 16", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    Hush__DeviceInfo infos[16], *ip[16];
    uint8_t names[16][HWIRE_MAX_DEVICE_NAME];
    size_t n = 0;
    int row = 0;
    hstore_err se;
    while ((se = hstore_step(senv.db, st, &row)) == HSTORE_OK && row && n < 16) {
        hush__device_info__init(&infos[n]);
        infos[n].device_id = (uint32_t)sqlite3_column_int64(st, 0);
        infos[n].created_ms = (uint64_t)sqlite3_column_int64(st, 1);
        infos[n].last_seen_ms = (uint64_t)sqlite3_column_int64(st, 2);
        int nl = sqlite3_column_bytes(st, 3);
        if (nl > 0 && nl <= HWIRE_MAX_DEVICE_NAME) {
            memcpy(names[n], sqlite3_column_blob(st, 3), (size_t)nl);
            infos[n].name.data = names[n];
            infos[n].name.len = (size_t)nl;
        }
        struct dir_entry d;
        infos[n].online = directory_lookup(j->username, infos[n].device_id, &d);
        ip[n] = &infos[n];
        n++;
    }
    if (row)
        sqlite3_reset(st);
    CHECK_SE(se);
    Hush__Result r = HUSH__RESULT__INIT;
    r.message = "";
    r.n_devices = n;
    r.devices = ip;
    jctx_reply(x, j, &r);
}

/* The user's next device id, reserved for good (ids are never given out twice); 0: no such user. */
static hstore_err reserve_device_id(const char *user, uint32_t *dev)
{
    sqlite3_stmt *st;
    *dev = 0;
    hstore_err e = hstore_prepare(senv.db, "UPDATE users SET next_device_id = next_device_id + 1 WHERE username = ?1 "
                                           "RETURNING next_device_id - 1", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    int row = 0;
    if ((e = hstore_step(senv.db, st, &row)))
        return e;
    if (row)
        *dev = (uint32_t)sqlite3_column_int64(st, 0);
    int more = 0;
    while (row && (e = hstore_step(senv.db, st, &more)) == HSTORE_OK && more) {
    }
    return e;
}

void accounts_recover(struct jctx *x, const struct job *j)
{
    const Hush__RecoverRequest *rq = j->frame->recover;
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "SELECT recovery_key FROM users WHERE username = ?1", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    int row = 0;
    CHECK_SE(hstore_step(senv.db, st, &row));
    uint8_t key[32];
    int found = 0;
    if (row) {
        if (sqlite3_column_bytes(st, 0) == 32) {
            memcpy(key, sqlite3_column_blob(st, 0), 32);
            found = 1;
        }
        sqlite3_reset(st);
    }
    /* unknown user, or no recovery key: checked against the dummy key, the same answer */
    int ok = verify_proof(x, HWIRE_PURPOSE_RECOVER, j, found ? key : A.dummy_key, 32, &rq->signature, rq->origin, NULL) &&
             found;
    struct event *e = event_new(EV_RECOVER_DONE, j->conn);
    if (!ok) {
        x->rollback = 1;
        rlog(RLOG_INFO, "recover_failed", "conn=%llu", (unsigned long long)j->conn);
        if (e) {
            e->ok = 0;
            e->out = outbuf_result(j->req_id, HUSH__ERROR_CODE__AUTH_FAILED,
                                   x->auth_why ? x->auth_why : "authentication failed");
            metrics_error(HUSH__ERROR_CODE__AUTH_FAILED);
            jctx_post(x, j->loop, e);
        }
        return;
    }
    uint32_t dev = 0;
    CHECK_SE(reserve_device_id(j->username, &dev));
    rlog(RLOG_INFO, "recover", "user=%s reserved=%u", j->username, dev);
    if (e) {
        e->ok = dev != 0;
        e->device_id = dev;
        e->req_id = j->req_id; /* the loop answers with a fresh challenge */
        snprintf(e->username, sizeof e->username, "%s", j->username);
        if (!dev)
            e->out = outbuf_result(j->req_id, HUSH__ERROR_CODE__INTERNAL, "no device id");
        jctx_post(x, j->loop, e);
    }
}

#define LINK_TOKENS_PER_HOUR 10

void accounts_link_token(struct jctx *x, const struct job *j)
{
    uint32_t devs[16];
    size_t n = 0;
    CHECK_SE(accounts_user_devices(j->username, devs, 16, &n));
    if (n >= senv.cfg->max_devices) {
        jctx_fail(x, j, HUSH__ERROR_CODE__TOO_MANY_DEVICES, "this user has the most devices this relay allows");
        return;
    }
    uint64_t now = relay_now_ms();
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "SELECT count(*) FROM link_tokens WHERE username = ?1 AND created_at > ?2", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, (int64_t)(now - 3600000));
    int row = 0;
    CHECK_SE(hstore_step(senv.db, st, &row));
    int64_t recent = row ? sqlite3_column_int64(st, 0) : 0;
    if (row)
        sqlite3_reset(st);
    if (recent >= LINK_TOKENS_PER_HOUR) {
        Hush__Result r = HUSH__RESULT__INIT;
        r.code = HUSH__ERROR_CODE__RATE_LIMITED;
        r.message = "too many link tokens this hour";
        r.retry_after_ms = 600000;
        x->rollback = 1;
        metrics_error(r.code);
        jctx_reply(x, j, &r);
        return;
    }
    uint32_t dev = 0;
    CHECK_SE(reserve_device_id(j->username, &dev));
    if (!dev) {
        jctx_fail(x, j, HUSH__ERROR_CODE__UNKNOWN_USER, "no such user");
        return;
    }
    uint8_t raw[32], h[32];
    char token[64];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(token, sizeof token, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
    crypto_generichash(h, sizeof h, (const uint8_t *)token, strlen(token), NULL, 0);
    CHECK_SE(hstore_prepare(senv.db, "INSERT INTO link_tokens (token_hash, username, device_id, created_at, expires_at) "
                                  "VALUES (?1, ?2, ?3, ?4, ?5)", &st));
    sqlite3_bind_blob(st, 1, h, sizeof h, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, dev);
    sqlite3_bind_int64(st, 4, (int64_t)now);
    sqlite3_bind_int64(st, 5, (int64_t)(now + (uint64_t)senv.cfg->link_token_ttl_s * 1000));
    CHECK_SE(hstore_run(senv.db, st));
    rlog(RLOG_INFO, "link_token", "user=%s device=%u reserved=%u", j->username, j->device_id, dev);
    Hush__Result r = HUSH__RESULT__INIT;
    r.message = "";
    r.link_token = token;
    r.link_device_id = dev;
    jctx_reply(x, j, &r);
    sodium_memzero(token, sizeof token);
}

void accounts_expire(struct jctx *x)
{
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "DELETE FROM link_tokens WHERE expires_at < ?1", &st));
    sqlite3_bind_int64(st, 1, (int64_t)(relay_now_ms() - 86400000ull));
    CHECK_SE(hstore_run(senv.db, st));
}

void accounts_register(struct jctx *x, const struct job *j)
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
    /* The same device registering again (its first answer was lost: a crash or a dropped
     * connection after the commit): the proof was made with the registered auth key over this
     * connection's challenge, so it is that device, and it is logged in. */
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "SELECT auth_key, identity_key FROM devices WHERE username = ?1 AND device_id = ?2", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    int again = 0;
    CHECK_SE(hstore_step(senv.db, st, &again));
    if (again) {
        int same = sqlite3_column_bytes(st, 0) == (int)r->auth_key.len && sqlite3_column_bytes(st, 1) == (int)r->identity_key.len &&
                   sodium_memcmp(sqlite3_column_blob(st, 0), r->auth_key.data, r->auth_key.len) == 0 &&
                   sodium_memcmp(sqlite3_column_blob(st, 1), r->identity_key.data, r->identity_key.len) == 0;
        sqlite3_reset(st);
        if (same) {
            uint32_t stock = 0;
            CHECK_SE(count_stock(j->username, j->device_id, &stock));
            rlog(RLOG_INFO, "register_again", "user=%s device=%u", j->username, j->device_id);
            login_done(x, j, 1, HUSH__ERROR_CODE__OK, stock, stock < senv.cfg->prekeys_low_threshold);
            return;
        }
    }
    Hush__ErrorCode code = HUSH__ERROR_CODE__OK;
    const char *why = "";
    int linking = r->link_token && *r->link_token;
    if (r->device_name.len > HWIRE_MAX_DEVICE_NAME) {
        code = HUSH__ERROR_CODE__TOO_LARGE;
        why = "device name too long";
    } else if (r->recovery_key.len && (r->recovery_key.len != 32 || linking)) {
        code = HUSH__ERROR_CODE__BAD_KEYS;
        why = "a recovery key is 32 bytes, and only an account's first or recovering device sets one";
    } else if (j->recovery && r->recovery_key.len != 32) {
        code = HUSH__ERROR_CODE__BAD_KEYS;
        why = "a recovering device sets a new recovery key";
    } else if (senv.cfg->registration == REG_CLOSED && !linking && !j->recovery) {
        code = HUSH__ERROR_CODE__REGISTRATION_CLOSED;
        why = "registration is closed on this relay";
    } else if (r->keys && r->keys->n_one_time_pre_keys > senv.cfg->max_prekeys_per_upload) {
        code = HUSH__ERROR_CODE__TOO_LARGE; /* as for an upload: a limit, not a malformed key */
        why = "too many one-time prekeys in one upload";
    } else if (!valid_pub(&r->identity_key) || r->registration_id == 0 || r->registration_id > 16380 ||
               !upload_ok(r->keys, 1) ||
               !spk_signature_ok(r->identity_key.data, r->identity_key.len, r->keys->signed_pre_key)) {
        code = HUSH__ERROR_CODE__BAD_KEYS;
        why = "malformed key or bad signed prekey signature";
    }
    if (!code && j->recovery) {
        /* the account exists (its recovery key was just proven); the new key replaces the old */
        CHECK_SE(hstore_prepare(senv.db, "UPDATE users SET recovery_key = ?2 WHERE username = ?1", &st));
        sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 2, r->recovery_key.data, (int)r->recovery_key.len, SQLITE_TRANSIENT);
        CHECK_SE(hstore_run(senv.db, st));
        if (hstore_changes(senv.db) != 1) {
            code = HUSH__ERROR_CODE__AUTH_FAILED;
            why = "authentication failed";
        }
    } else if (!code && linking) {
        CHECK_SE(link_check(j, r, &code, &why));
    } else if (!code && senv.cfg->registration == REG_INVITE) {
        if (!r->invite || !*r->invite || strlen(r->invite) > 128) {
            code = HUSH__ERROR_CODE__REGISTRATION_CLOSED;
            why = "this relay needs an invite token";
        } else {
            uint8_t h[32];
            crypto_generichash(h, sizeof h, (const uint8_t *)r->invite, strlen(r->invite), NULL, 0);
            CHECK_SE(hstore_prepare(senv.db, "UPDATE invites SET used_at = ?2, used_by = ?3 WHERE token_hash = ?1 AND used_at IS NULL", &st));
            sqlite3_bind_blob(st, 1, h, sizeof h, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 2, (int64_t)relay_now_ms());
            sqlite3_bind_text(st, 3, j->username, -1, SQLITE_TRANSIENT);
            CHECK_SE(hstore_run(senv.db, st));
            if (hstore_changes(senv.db) != 1) {
                code = HUSH__ERROR_CODE__INVITE_INVALID;
                why = "unknown or already used invite";
            }
        }
    }
    if (!code && !linking && !j->recovery) {
        if (j->device_id != 1) {
            code = HUSH__ERROR_CODE__BAD_REQUEST;
            why = "a new user's first device is device 1; later devices are linked";
        } else {
            CHECK_SE(hstore_prepare(senv.db, "INSERT INTO users (username, created_at, recovery_key) VALUES (?1, ?2, ?3) "
                                          "ON CONFLICT DO NOTHING", &st));
            sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 2, (int64_t)relay_now_ms());
            if (r->recovery_key.len)
                sqlite3_bind_blob(st, 3, r->recovery_key.data, (int)r->recovery_key.len, SQLITE_TRANSIENT);
            else
                sqlite3_bind_null(st, 3);
            CHECK_SE(hstore_run(senv.db, st));
            if (hstore_changes(senv.db) != 1) {
                code = HUSH__ERROR_CODE__USERNAME_TAKEN;
                why = "username taken";
            }
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
            jctx_post(x, j->loop, e);
        }
        return;
    }
    const Hush__SignedPreKey *spk = r->keys->signed_pre_key;
    CHECK_SE(hstore_prepare(senv.db, "INSERT INTO devices (username, device_id, auth_key, identity_key, registration_id, "
                                  "spk_id, spk_public, spk_signature, spk_timestamp, created_at, last_seen, name) "
                                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11)", &st));
    if (r->device_name.len)
        sqlite3_bind_blob(st, 11, r->device_name.data, (int)r->device_name.len, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 11);
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
    CHECK_SE(hstore_run(senv.db, st));
    CHECK_SE(store_keys(j->username, j->device_id, r->keys));
    uint32_t stock = 0;
    CHECK_SE(count_stock(j->username, j->device_id, &stock));
    rlog(RLOG_INFO, "register", "user=%s device=%u prekeys=%u linked=%d recovered=%d", j->username, j->device_id, stock,
         linking, j->recovery);
    x->registered = 1;
    if (linking)
        accounts_tell_device_list_changed(x, j->username, j->device_id);
    login_done(x, j, 1, HUSH__ERROR_CODE__OK, stock, stock < senv.cfg->prekeys_low_threshold);
}

void accounts_login(struct jctx *x, const struct job *j)
{
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "SELECT auth_key, prekeys_low_pending FROM devices WHERE username = ?1 AND device_id = ?2", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    int row = 0;
    CHECK_SE(hstore_step(senv.db, st, &row));
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
    int ok = verify_proof(x, HWIRE_PURPOSE_LOGIN, j, found ? key : A.dummy_key, 32, &j->frame->login->signature,
                          j->frame->login->origin, NULL) && found;
    if (!ok) {
        x->rollback = 1;
        rlog(RLOG_INFO, "login_failed", "conn=%llu", (unsigned long long)j->conn);
        login_done(x, j, 0, HUSH__ERROR_CODE__AUTH_FAILED, 0, 0);
        return;
    }
    uint32_t stock = 0;
    CHECK_SE(count_stock(j->username, j->device_id, &stock));
    CHECK_SE(hstore_prepare(senv.db, "UPDATE devices SET prekeys_low_pending = 0, last_seen = ?3 WHERE username = ?1 AND device_id = ?2", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    sqlite3_bind_int64(st, 3, (int64_t)relay_now_ms());
    CHECK_SE(hstore_run(senv.db, st));
    push_device_here(j->username, j->device_id); /* it is here: a wake-up still waiting is moot */
    login_done(x, j, 1, HUSH__ERROR_CODE__OK, stock, pending_low || stock < senv.cfg->prekeys_low_threshold);
}

void accounts_upload(struct jctx *x, const struct job *j)
{
    const Hush__PreKeyUpload *u = j->frame->upload_pre_keys;
    if (u->n_one_time_pre_keys > senv.cfg->max_prekeys_per_upload) {
        jctx_fail(x, j, HUSH__ERROR_CODE__TOO_LARGE, "too many one-time prekeys in one upload");
        return;
    }
    if (!upload_ok(u, 0)) {
        jctx_fail(x, j, HUSH__ERROR_CODE__BAD_KEYS, "malformed prekey");
        return;
    }
    sqlite3_stmt *st;
    if (u->signed_pre_key) {
        CHECK_SE(hstore_prepare(senv.db, "SELECT identity_key FROM devices WHERE username = ?1 AND device_id = ?2", &st));
        sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, j->device_id);
        int row = 0;
        CHECK_SE(hstore_step(senv.db, st, &row));
        int ok = row && spk_signature_ok(sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), u->signed_pre_key);
        if (row)
            sqlite3_reset(st);
        if (!ok) {
            jctx_fail(x, j, HUSH__ERROR_CODE__BAD_KEYS, "signed prekey signature does not verify");
            return;
        }
        const Hush__SignedPreKey *spk = u->signed_pre_key;
        CHECK_SE(hstore_prepare(senv.db, "UPDATE devices SET spk_id = ?3, spk_public = ?4, spk_signature = ?5, spk_timestamp = ?6 "
                                      "WHERE username = ?1 AND device_id = ?2", &st));
        sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, j->device_id);
        sqlite3_bind_int64(st, 3, spk->id);
        sqlite3_bind_blob(st, 4, spk->public_key.data, (int)spk->public_key.len, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 5, spk->signature.data, (int)spk->signature.len, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 6, (int64_t)spk->timestamp_ms);
        CHECK_SE(hstore_run(senv.db, st));
    }
    CHECK_SE(store_keys(j->username, j->device_id, u));
    uint32_t stock = 0;
    CHECK_SE(count_stock(j->username, j->device_id, &stock));
    if (stock > MAX_STOCK) {
        jctx_fail(x, j, HUSH__ERROR_CODE__TOO_LARGE, "more than 1000 one-time prekeys stored");
        return;
    }
    CHECK_SE(hstore_prepare(senv.db, "UPDATE devices SET prekeys_low_pending = 0 WHERE username = ?1 AND device_id = ?2", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    CHECK_SE(hstore_run(senv.db, st));
    Hush__Result r = HUSH__RESULT__INIT;
    r.message = "";
    r.pre_keys_remaining = stock;
    jctx_reply(x, j, &r);
}

struct evict_ctx {
    uint64_t now, older_than;
    int full_only;
};


/* Rate-limit buckets. A bucket that would be full by now says nothing a missing one does not, so
 * those are dropped first when the map is over its bound; if that is not enough, the least recently
 * used go (oldest first, by halving the age kept). Nothing is ever forgotten wholesale. */
static void evict_cb(const void *key, size_t klen, void *val, void *ctx)
{
    struct evict_ctx *e = ctx;
    struct bucket *b = val;
    int drop = e->full_only ? b->full_at_ms <= e->now : b->last_ms < e->older_than;
    if (drop)
        free(hmap_del(&A.rate, key, klen));
}

static void rate_evict(uint64_t now)
{
    struct evict_ctx e = { now, 0, 1 };
    hmap_foreach(&A.rate, evict_cb, &e);
    uint64_t age = 3600000; /* an hour, then halving */
    e.full_only = 0;
    while (A.rate.count > RATE_MAP_MAX * 3 / 4 && age > 0) {
        e.older_than = now > age ? now - age : 0;
        hmap_foreach(&A.rate, evict_cb, &e);
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
    struct bucket *b = hmap_get(&A.rate, k, kl);
    if (!b) {
        if (A.rate.count >= RATE_MAP_MAX)
            rate_evict(now);
        b = malloc(sizeof *b);
        int err = 0;
        if (!b)
            return 1000; /* no memory for the bucket: refuse rather than fail open */
        b->tokens = burst;
        b->last_ms = now;
        hmap_put(&A.rate, k, kl, b, &err);
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
        free(hmap_del(&A.lowpush, key, klen));
}

/* 1 when an online device may be told its prekeys run low now: at most once per interval, or
 * every fetch under the threshold would push one (and a client that answers each push with an
 * upload would be driven by anyone who fetches its bundle). */
static int lowpush_due(const char *user, uint32_t dev)
{
    uint64_t now = relay_now_ms(), gap = (uint64_t)senv.cfg->prekeys_low_interval_s * 1000;
    unsigned char k[RELAY_USERNAME_MAX + 8];
    size_t kl = relay_dev_key(k, user, dev);
    uint64_t *last = hmap_get(&A.lowpush, k, kl);
    if (last) {
        if (now - *last < gap)
            return 0;
        *last = now;
        return 1;
    }
    if (A.lowpush.count >= RATE_MAP_MAX) {
        uint64_t older = now > gap ? now - gap : 0;
        hmap_foreach(&A.lowpush, lowpush_evict_cb, &older);
    }
    last = malloc(sizeof *last);
    if (last) {
        int err = 0;
        *last = now;
        hmap_put(&A.lowpush, k, kl, last, &err);
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
            jctx_post(x, d.loop, e);
        }
        return;
    }
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "UPDATE devices SET prekeys_low_pending = 1 WHERE username = ?1 AND device_id = ?2", &st));
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    CHECK_SE(hstore_run(senv.db, st));
}

static void fetch_limited(struct jctx *x, const struct job *j, uint32_t wait, const char *why)
{
    Hush__Result r = HUSH__RESULT__INIT;
    r.code = HUSH__ERROR_CODE__RATE_LIMITED;
    r.message = (char *)why;
    r.retry_after_ms = wait;
    x->rollback = 1;
    jctx_reply(x, j, &r);
}

#define MAX_DEVICES_PER_FETCH 16
void accounts_fetch_bundles(struct jctx *x, const struct job *j)
{
    const char *target = j->frame->fetch_bundles->username;
    /* Every fetch, of a known user or not, counts against the requester's overall bucket; only a
     * user that exists gets a (requester, target) bucket, so made-up names cannot fill the map. */
    uint32_t wait = bucket_take(j->username, "", senv.cfg->fetch_total_burst, senv.cfg->fetch_total_per_min);
    if (wait) {
        fetch_limited(x, j, wait, "too many bundle fetches");
        return;
    }
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "SELECT device_id, registration_id, identity_key, spk_id, spk_public, spk_signature, "
                                  "spk_timestamp, auth_key, last_resort_id, last_resort_public FROM devices WHERE username = ?1 "
                                  "AND NOT (username = ?3 AND device_id = ?4) ORDER BY device_id LIMIT ?2", &st));
    sqlite3_bind_text(st, 1, target, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, MAX_DEVICES_PER_FETCH);
    /* a device fetching its own user's bundles gets its other devices (not its own keys) */
    sqlite3_bind_text(st, 3, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, j->device_id);
    Hush__KeyBundle bundles[MAX_DEVICES_PER_FETCH], *bp[MAX_DEVICES_PER_FETCH];
    Hush__SignedPreKey spks[MAX_DEVICES_PER_FETCH];
    Hush__PreKey otks[MAX_DEVICES_PER_FETCH];
    uint8_t keybuf[MAX_DEVICES_PER_FETCH][33 + 33 + 64 + 32 + 33];
    uint8_t lastres[MAX_DEVICES_PER_FETCH][33]; /* the last-resort key, served when the stock is out */
    int64_t lastres_id[MAX_DEVICES_PER_FETCH];
    size_t n = 0;
    int row = 0;
    hstore_err se;
    while ((se = hstore_step(senv.db, st, &row)) == HSTORE_OK && row && n < MAX_DEVICES_PER_FETCH) {
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
    if (n == 0 && strcmp(target, j->username) != 0) {
        jctx_fail(x, j, HUSH__ERROR_CODE__UNKNOWN_USER, "no such user");
        return;
    }
    wait = bucket_take(j->username, target, senv.cfg->fetch_burst, senv.cfg->fetch_refill_per_min);
    if (wait) {
        fetch_limited(x, j, wait, "too many bundle fetches for this user");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        /* Hand out the lowest one-time key exactly once: the storage thread is the only writer. */
        CHECK_SE(hstore_prepare(senv.db, "DELETE FROM one_time_prekeys WHERE username = ?1 AND device_id = ?2 AND key_id = "
                                      "(SELECT min(key_id) FROM one_time_prekeys WHERE username = ?1 AND device_id = ?2) "
                                      "RETURNING key_id, public_key", &st));
        sqlite3_bind_text(st, 1, target, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, bundles[i].device_id);
        row = 0;
        CHECK_SE(hstore_step(senv.db, st, &row));
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
            while (hstore_step(senv.db, st, &more) == HSTORE_OK && more) {
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
        if (stock < senv.cfg->prekeys_low_threshold)
            prekeys_low(x, target, bundles[i].device_id, stock);
        if (x->store_err)
            return;
    }
    Hush__Result r = HUSH__RESULT__INIT;
    r.message = "";
    r.n_bundles = n;
    r.bundles = bp;
    jctx_reply(x, j, &r);
}

void accounts_disconnect(struct jctx *x, const struct job *j)
{
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "UPDATE devices SET last_seen = ?3 WHERE username = ?1 AND device_id = ?2", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    sqlite3_bind_int64(st, 3, (int64_t)relay_now_ms());
    CHECK_SE(hstore_run(senv.db, st));
}
