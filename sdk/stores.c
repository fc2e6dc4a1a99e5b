/*
 * stores.c - the client schema and libsignal's five stores (identity, pre-key, signed pre-key,
 * session, sender key) on SQLite, every secret sealed (seal.c).
 *
 * Contracts honoured (docs/LIBSIGNAL-NOTES.md §2): inputs are copied (SQLITE_TRANSIENT); returned buffers are
 * fresh signal_buffers; load_* return 1/0 or SG_SUCCESS/SG_ERR_INVALID_KEY_ID exactly as the
 * library expects; remove_pre_key returns 0 when the key is already gone; names are keyed by
 * their exact bytes. The callers (session.c, group.c) wrap every library call in a savepoint, so a
 * failing call leaves no trace.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <curve.h>
#include <ratchet.h>
#include <session_record.h>

#include "internal.h"
#include "signal_record.pb-c.h"

/* Rows whose removal or rollback must be noticed: every write of these tables passes its old and
 * new row through a keyed tag into one sealed digest in meta (seal.c), and the client recomputes
 * the digest at open (hsdk_rowdigest_verify). The column lists, with a prefix ("OLD.", "NEW." or
 * ""), are shared by the triggers and the check so the two cannot drift apart. */
#define COLS_LOCAL_DEVICE(p)                                                                           \
    p "id, " p "username, " p "device_id, " p "registration_id, " p "identity_public, " p            \
      "identity_private, " p "auth_public, " p "auth_secret, " p "created_at"
#define COLS_IDENTITIES(p) p "name, " p "device_id, " p "key, " p "updated_at"
#define COLS_SESSIONS(p) p "name, " p "device_id, " p "record, " p "user_record"
#define COLS_PRE_KEYS(p) p "id, " p "record, " p "exported"
#define COLS_SIGNED_PRE_KEYS(p) p "id, " p "record, " p "created_at, " p "retired_at"
#define COLS_SENDER_KEYS(p) p "group_id, " p "name, " p "device_id, " p "record, " p "user_record"
#define COLS_ROOMS(p) p "id, " p "version, " p "member, " p "change, " p "key_since"
#define TAG(t, COLS, p) "hush_row_tag('" t "', " COLS(p) ")"
#define STEP(tags) "UPDATE meta SET bval = hush_digest_step(bval, " tags ") WHERE key = 'rowdigest'; END"
#define TRIG_INS(t, COLS) "CREATE TRIGGER " t "_tag_ins AFTER INSERT ON " t " BEGIN " STEP(TAG(t, COLS, "NEW."))
#define TRIG_DEL(t, COLS) "CREATE TRIGGER " t "_tag_del AFTER DELETE ON " t " BEGIN " STEP(TAG(t, COLS, "OLD."))
#define TRIG_UPD(t, COLS)                                                                              \
    "CREATE TRIGGER " t "_tag_upd AFTER UPDATE ON " t " BEGIN " STEP(TAG(t, COLS, "OLD.") ", " TAG(t, COLS, "NEW."))
#define TRIGGERS(t, COLS) TRIG_INS(t, COLS) ";" TRIG_DEL(t, COLS) ";" TRIG_UPD(t, COLS) ";"
#define TRIGGER_LIST(t, COLS) TRIG_INS(t, COLS), TRIG_DEL(t, COLS), TRIG_UPD(t, COLS)

/* Every trigger and view the schema may hold, exactly as created (SQLite keeps the text). */
static const char *const schema_triggers[] = {
    TRIGGER_LIST("local_device", COLS_LOCAL_DEVICE), TRIGGER_LIST("identities", COLS_IDENTITIES),
    TRIGGER_LIST("sessions", COLS_SESSIONS),         TRIGGER_LIST("pre_keys", COLS_PRE_KEYS),
    TRIGGER_LIST("signed_pre_keys", COLS_SIGNED_PRE_KEYS), TRIGGER_LIST("sender_keys", COLS_SENDER_KEYS),
    TRIGGER_LIST("rooms", COLS_ROOMS),
};

const char *const hsdk_migrations[] = {
    /* 0 -> 1: initial schema */
    "CREATE TABLE meta ("
    "  key TEXT PRIMARY KEY, ival INTEGER, bval BLOB) WITHOUT ROWID;"
    "CREATE TABLE local_device ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  username TEXT NOT NULL, device_id INTEGER NOT NULL, registration_id INTEGER NOT NULL,"
    "  identity_public BLOB NOT NULL, identity_private BLOB NOT NULL,"
    "  auth_public BLOB NOT NULL, auth_secret BLOB NOT NULL, created_at INTEGER NOT NULL);"
    "CREATE TABLE identities ("
    "  name BLOB NOT NULL, device_id INTEGER NOT NULL, key BLOB NOT NULL, updated_at INTEGER NOT NULL,"
    "  PRIMARY KEY (name, device_id)) WITHOUT ROWID;"
    "CREATE TABLE pending_identities ("
    "  name BLOB NOT NULL, device_id INTEGER NOT NULL, key BLOB NOT NULL, created_at INTEGER NOT NULL,"
    "  PRIMARY KEY (name, device_id)) WITHOUT ROWID;"
    "CREATE TABLE sessions ("
    "  name BLOB NOT NULL, device_id INTEGER NOT NULL, record BLOB NOT NULL, user_record BLOB,"
    "  PRIMARY KEY (name, device_id)) WITHOUT ROWID;"
    "CREATE TABLE pre_keys ("
    "  id INTEGER PRIMARY KEY, record BLOB NOT NULL, exported INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE signed_pre_keys ("
    "  id INTEGER PRIMARY KEY, record BLOB NOT NULL, created_at INTEGER NOT NULL, retired_at INTEGER);"
    "CREATE TABLE sender_keys ("
    "  group_id BLOB NOT NULL, name BLOB NOT NULL, device_id INTEGER NOT NULL,"
    "  record BLOB NOT NULL, user_record BLOB,"
    "  PRIMARY KEY (group_id, name, device_id)) WITHOUT ROWID;"
    "CREATE TABLE history ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  peer TEXT NOT NULL, peer_device INTEGER NOT NULL, outgoing INTEGER NOT NULL,"
    "  message_id BLOB NOT NULL, kind INTEGER NOT NULL, group_id TEXT NOT NULL DEFAULT '',"
    "  sent_at INTEGER NOT NULL, received_at INTEGER NOT NULL, read INTEGER NOT NULL DEFAULT 0,"
    "  body BLOB NOT NULL,"
    "  UNIQUE (peer, peer_device, outgoing, group_id, message_id));"
    "CREATE INDEX history_by_peer ON history (peer, group_id, id);"
    "CREATE TABLE outbox ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  peer TEXT NOT NULL, message_id BLOB NOT NULL UNIQUE, created_at INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0, body BLOB NOT NULL);",
    /* 1 -> 2: the networked SDK */
    "ALTER TABLE history ADD COLUMN state INTEGER NOT NULL DEFAULT 0;"  /* outgoing: 0 queued .. 3 read, -1 failed */
    "ALTER TABLE history ADD COLUMN notified INTEGER NOT NULL DEFAULT 1;" /* incoming: app callback done */
    "CREATE INDEX history_unnotified ON history (id) WHERE notified = 0;"
    /* states are updated by message id (acks, receipts): without this each one scans the history */
    "CREATE INDEX history_by_message_id ON history (message_id);"
    "ALTER TABLE outbox ADD COLUMN kind INTEGER NOT NULL DEFAULT 1;"
    /* ciphertexts made for an outbox message, so a retry resends the same bytes */
    "CREATE TABLE outbox_envelopes ("
    "  message_id BLOB NOT NULL, device_id INTEGER NOT NULL, envelope BLOB NOT NULL,"
    "  PRIMARY KEY (message_id, device_id)) WITHOUT ROWID;"
    "CREATE TABLE peer_devices ("
    "  peer TEXT NOT NULL, device_id INTEGER NOT NULL, fetched_at INTEGER NOT NULL,"
    "  PRIMARY KEY (peer, device_id)) WITHOUT ROWID;"
    /* envelopes held until the user decides about a changed identity */
    "CREATE TABLE pending_inbox ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT, peer TEXT NOT NULL, device_id INTEGER NOT NULL,"
    "  envelope BLOB NOT NULL, received_at INTEGER NOT NULL);"
    "CREATE TABLE presence_prefs ("
    "  kind INTEGER NOT NULL, username TEXT NOT NULL, PRIMARY KEY (kind, username)) WITHOUT ROWID;"
    /* receipts owed to peers, sent in batches (one encrypted receipt carries up to 256 ids) */
    "CREATE TABLE pending_receipts ("
    "  peer TEXT NOT NULL, state INTEGER NOT NULL, message_id BLOB NOT NULL, created_at INTEGER NOT NULL,"
    "  PRIMARY KEY (peer, state, message_id)) WITHOUT ROWID;",
    /* 2 -> 3: every key that claimed a device while a decision is pending is kept (numbered), so
     * accepting is bound to the safety number the user compared, not to whichever key came last */
    "CREATE TABLE pending_identities_v3 ("
    "  name BLOB NOT NULL, device_id INTEGER NOT NULL, candidate INTEGER NOT NULL, key BLOB NOT NULL,"
    "  created_at INTEGER NOT NULL, PRIMARY KEY (name, device_id, candidate)) WITHOUT ROWID;"
    "INSERT INTO pending_identities_v3 SELECT name, device_id, 0, key, created_at FROM pending_identities;"
    "DROP TABLE pending_identities;"
    "ALTER TABLE pending_identities_v3 RENAME TO pending_identities;",
    /* 3 -> 4: linked devices. An outbox message also goes to our own other devices, so its
     * stored envelopes are keyed by (name, device). The old rows are dropped: a queued message is
     * encrypted again (a copy the relay already stored is recognised by its message id). */
    "DROP TABLE outbox_envelopes;"
    "CREATE TABLE outbox_envelopes ("
    "  message_id BLOB NOT NULL, name TEXT NOT NULL, device_id INTEGER NOT NULL, envelope BLOB NOT NULL,"
    "  PRIMARY KEY (message_id, name, device_id)) WITHOUT ROWID;",
    /* 4 -> 5: the row digest (see the column lists above). The digest itself is written by the
     * client right after (it needs the key): until then the triggers update no row. */
    TRIGGERS("local_device", COLS_LOCAL_DEVICE) TRIGGERS("identities", COLS_IDENTITIES)
    TRIGGERS("sessions", COLS_SESSIONS) TRIGGERS("pre_keys", COLS_PRE_KEYS)
    TRIGGERS("signed_pre_keys", COLS_SIGNED_PRE_KEYS) TRIGGERS("sender_keys", COLS_SENDER_KEYS),
    /* 5 -> 6: files sent and received (attach.c); the pointer (key, digest, name) is sealed */
    "CREATE TABLE attachments ("
    "  message_id BLOB PRIMARY KEY, outgoing INTEGER NOT NULL, peer TEXT NOT NULL, state INTEGER NOT NULL,"
    "  done INTEGER NOT NULL DEFAULT 0, error INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL,"
    "  pointer BLOB NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX attachments_active ON attachments (created_at) WHERE state IN (1, 4);",
    /* 6 -> 7: rooms (rooms.c): each room's last accepted change (sealed), and which devices were
     * handed this device's sender key for it by which send. A room's row is in the row digest: a
     * rolled-back room would let a removed member's change through again. */
    "CREATE TABLE rooms ("
    "  id BLOB PRIMARY KEY, version INTEGER NOT NULL, member INTEGER NOT NULL, change BLOB NOT NULL,"
    "  key_since INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE room_keys ("
    "  room BLOB NOT NULL, name TEXT NOT NULL, device_id INTEGER NOT NULL, key_id INTEGER NOT NULL,"
    "  message_id BLOB NOT NULL, PRIMARY KEY (room, name, device_id)) WITHOUT ROWID;"
    "CREATE INDEX room_keys_by_message ON room_keys (message_id);"
    "CREATE INDEX history_by_group ON history (group_id, id) WHERE group_id != '';"
    "CREATE TABLE room_receipts ("
    "  message_id BLOB NOT NULL, member TEXT NOT NULL, state INTEGER NOT NULL,"
    "  PRIMARY KEY (message_id, member)) WITHOUT ROWID;"
    TRIGGERS("rooms", COLS_ROOMS),
    /* 7 -> 8: rooms this user shares its presence with (rooms.c), and when that was last decided
     * (on this device or, told by a room message, on another of ours: the later decision wins) */
    "CREATE TABLE room_presence ("
    "  room BLOB PRIMARY KEY, share INTEGER NOT NULL, decided_at INTEGER NOT NULL) WITHOUT ROWID;",
};
const int hsdk_nmigrations = (int)(sizeof hsdk_migrations / sizeof hsdk_migrations[0]);

/* ---------------------------------------------------------------------------------------- */
/* helpers */

/* Steps a bound statement expecting at most one row; opens column `col` (sealed) into *pt. */
static hush_err load_sealed(hush_client *c, sqlite3_stmt *st, int col, const char *ad, uint8_t **pt,
                            size_t *len, int *found)
{
    int row = 0;
    *found = 0;
    *pt = NULL;
    *len = 0;
    hstore_err se = hstore_step(c->db, st, &row);
    if (se)
        return hsdk_from_store(se);
    if (!row)
        return HUSH_OK;
    hush_err e = hsdk_open(c, ad, sqlite3_column_blob(st, col), (size_t)sqlite3_column_bytes(st, col), pt, len);
    sqlite3_reset(st);
    if (e == HUSH_OK)
        *found = 1;
    return e;
}

static void wipe_free(uint8_t *p, size_t len)
{
    if (p) {
        sodium_memzero(p, len);
        free(p);
    }
}

static signal_buffer *take_buffer(uint8_t *pt, size_t len)
{
    signal_buffer *b = signal_buffer_create(pt, len);
    sodium_memzero(pt, len);
    free(pt);
    return b;
}

static hush_err bind_sealed(hush_client *c, sqlite3_stmt *st, int idx, const char *ad, const uint8_t *pt,
                            size_t len)
{
    uint8_t *ct = NULL;
    size_t clen = 0;
    hush_err e = hsdk_seal(c, ad, pt, len, &ct, &clen);
    if (e)
        return e;
    /* SQLITE_TRANSIENT: SQLite copies, so we can free now. */
    int rc = sqlite3_bind_blob(st, idx, ct, (int)clen, SQLITE_TRANSIENT);
    free(ct);
    return rc == SQLITE_OK ? HUSH_OK : HUSH_ERR_NOMEM;
}

/* Records why a callback failed (the library only sees a negative number) and returns the code
 * the library expects. The first failure wins. */
static int store_fail(hush_client *c, hush_err e)
{
    if (c->store_err == HUSH_OK)
        c->store_err = e;
    return e == HUSH_ERR_NOMEM ? SG_ERR_NOMEM : SG_ERR_UNKNOWN;
}

hush_err hsdk_meta_get_int(hush_client *c, const char *key, int64_t *out, int *found)
{
    sqlite3_stmt *st;
    *found = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT ival FROM meta WHERE key = ?1", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    int row = 0;
    se = hstore_step(c->db, st, &row);
    if (se)
        return hsdk_from_store(se);
    if (row) {
        *out = sqlite3_column_int64(st, 0);
        *found = 1;
        sqlite3_reset(st);
    }
    return HUSH_OK;
}

/* A blob value of meta: on success *out (malloc, caller frees) and *len, or *out NULL when absent. */
hush_err hsdk_meta_get_blob(hush_client *c, const char *key, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "SELECT bval FROM meta WHERE key = ?1", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    int row = 0;
    se = hstore_step(c->db, st, &row);
    if (se || !row)
        return hsdk_from_store(se);
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    uint8_t *b = malloc(n + 1);
    if (b) {
        if (n)
            memcpy(b, sqlite3_column_blob(st, 0), n);
        b[n] = 0;
    }
    sqlite3_reset(st);
    if (!b)
        return HUSH_ERR_NOMEM;
    *out = b;
    *len = n;
    return HUSH_OK;
}

hush_err hsdk_meta_set_blob(hush_client *c, const char *key, const uint8_t *v, size_t len)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT INTO meta (key, bval) VALUES (?1, ?2) "
                                          "ON CONFLICT (key) DO UPDATE SET bval = excluded.bval", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, v, (int)len, SQLITE_TRANSIENT);
    return hsdk_from_store(hstore_run(c->db, st));
}

hush_err hsdk_meta_get_text(hush_client *c, const char *key, char *out, size_t cap)
{
    uint8_t *b = NULL;
    size_t n = 0;
    out[0] = 0;
    hush_err e = hsdk_meta_get_blob(c, key, &b, &n);
    if (!e && b)
        snprintf(out, cap, "%.*s", (int)n, (const char *)b);
    free(b);
    return e;
}

hush_err hsdk_meta_set_int(hush_client *c, const char *key, int64_t v)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT INTO meta (key, ival) VALUES (?1, ?2) "
                                          "ON CONFLICT (key) DO UPDATE SET ival = excluded.ival", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, v);
    return hsdk_from_store(hstore_run(c->db, st));
}

/* ---------------------------------------------------------------------------------------- */
/* the schema's triggers and the row digest */

hush_err hsdk_schema_check(hush_client *c)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "SELECT sql FROM sqlite_schema WHERE type IN ('trigger', 'view')", &st);
    if (se)
        return hsdk_from_store(se);
    const size_t nexp = sizeof schema_triggers / sizeof schema_triggers[0];
    size_t seen = 0;
    int row = 0, bad = 0;
    while ((se = hstore_step(c->db, st, &row)) == HSTORE_OK && row) {
        const char *sql = (const char *)sqlite3_column_text(st, 0);
        int known = 0;
        for (size_t i = 0; sql && i < nexp && !known; i++)
            known = strcmp(sql, schema_triggers[i]) == 0;
        if (known)
            seen++;
        else
            bad = 1;
    }
    if (se)
        return hsdk_from_store(se);
    sqlite3_reset(st);
    if (bad || seen != nexp)
        return HUSH_ERR_DB_TAMPERED;
    /* hstore opens every connection with triggers off (a file could carry planted ones): these
     * are exactly ours, so they may run now */
    int on = 0;
    if (sqlite3_db_config(hstore_handle(c->db), SQLITE_DBCONFIG_ENABLE_TRIGGER, 1, &on) != SQLITE_OK || !on)
        return HUSH_ERR_STORAGE;
    return HUSH_OK;
}

hush_err hsdk_rowdigest_compute(hush_client *c, uint8_t d[HUSH_ROW_TAG_BYTES])
{
    static const char *const tags[] = {
        "SELECT " TAG("local_device", COLS_LOCAL_DEVICE, "") " FROM local_device",
        "SELECT " TAG("identities", COLS_IDENTITIES, "") " FROM identities",
        "SELECT " TAG("sessions", COLS_SESSIONS, "") " FROM sessions",
        "SELECT " TAG("pre_keys", COLS_PRE_KEYS, "") " FROM pre_keys",
        "SELECT " TAG("signed_pre_keys", COLS_SIGNED_PRE_KEYS, "") " FROM signed_pre_keys",
        "SELECT " TAG("sender_keys", COLS_SENDER_KEYS, "") " FROM sender_keys",
        "SELECT " TAG("rooms", COLS_ROOMS, "") " FROM rooms",
    };
    memset(d, 0, HUSH_ROW_TAG_BYTES);
    for (size_t t = 0; t < sizeof tags / sizeof tags[0]; t++) {
        sqlite3_stmt *st;
        hstore_err se = hstore_prepare(c->db, tags[t], &st);
        int row = 0;
        while (!se && (se = hstore_step(c->db, st, &row)) == HSTORE_OK && row) {
            const uint8_t *tag = sqlite3_column_blob(st, 0);
            if (sqlite3_column_bytes(st, 0) != HUSH_ROW_TAG_BYTES) {
                sqlite3_reset(st);
                return HUSH_ERR_INTERNAL;
            }
            for (size_t k = 0; k < HUSH_ROW_TAG_BYTES; k++)
                d[k] ^= tag[k];
        }
        if (se)
            return hsdk_from_store(se);
    }
    return HUSH_OK;
}

hush_err hsdk_rowdigest_reset(hush_client *c)
{
    uint8_t d[HUSH_ROW_TAG_BYTES], *sealed = NULL;
    size_t len = 0;
    hush_err e = hsdk_rowdigest_compute(c, d);
    if (!e)
        e = hsdk_digest_seal(c, d, &sealed, &len);
    if (!e)
        e = hsdk_meta_set_blob(c, "rowdigest", sealed, len);
    free(sealed);
    return e;
}

hush_err hsdk_rowdigest_verify(hush_client *c)
{
    uint8_t *sealed = NULL;
    size_t len = 0;
    hush_err e = hsdk_meta_get_blob(c, "rowdigest", &sealed, &len);
    if (e)
        return e;
    uint8_t want[HUSH_ROW_TAG_BYTES], have[HUSH_ROW_TAG_BYTES];
    int ok = sealed && hsdk_digest_open(c, sealed, len, want) == HUSH_OK;
    free(sealed);
    if (!ok)
        return HUSH_ERR_DB_TAMPERED;
    if ((e = hsdk_rowdigest_compute(c, have)))
        return e;
    return sodium_memcmp(want, have, sizeof want) == 0 ? HUSH_OK : HUSH_ERR_DB_TAMPERED;
}

/* Associated-data builders of the one-time upgrade: each the same as its table's own code. */
static const char *col_text(sqlite3_stmt *st, int i, size_t *len)
{
    const char *t = (const char *)sqlite3_column_text(st, i);
    *len = t ? (size_t)sqlite3_column_bytes(st, i) : 0;
    return t ? t : "";
}

static void ad_meta(char *ad, size_t cap, sqlite3_stmt *st, const char *label)
{
    size_t n = 0;
    const char *key = col_text(st, 0, &n);
    if (snprintf(ad, cap, "hush1|%s|%s", label, key) >= (int)cap)
        abort();
}

static void ad_fixed(char *ad, size_t cap, sqlite3_stmt *st, const char *label)
{
    (void)st;
    if (snprintf(ad, cap, "hush1|%s", label) >= (int)cap)
        abort();
}

static void ad_name_dev(char *ad, size_t cap, sqlite3_stmt *st, const char *label)
{
    size_t n = 0;
    const char *name = col_text(st, 0, &n);
    hsdk_ad(ad, cap, label, name, strlen(name), sqlite3_column_int64(st, 1), 0);
}

static void ad_name_dev_candidate(char *ad, size_t cap, sqlite3_stmt *st, const char *label)
{
    size_t n = 0;
    const char *name = col_text(st, 0, &n);
    hsdk_ad(ad, cap, label, name, strlen(name), sqlite3_column_int64(st, 1), sqlite3_column_int64(st, 2));
}

static void ad_id(char *ad, size_t cap, sqlite3_stmt *st, const char *label)
{
    hsdk_ad(ad, cap, label, "", 0, sqlite3_column_int64(st, 0), 0);
}

static void skn_ad(char *ad, size_t cap, const char *what, const char *group, const char *name, int32_t dev);

static void ad_sender_key(char *ad, size_t cap, sqlite3_stmt *st, const char *label)
{
    size_t n = 0;
    char group[HUSH_GROUP_ID_MAX + 1], name[HUSH_USERNAME_MAX + 1];
    snprintf(group, sizeof group, "%s", col_text(st, 0, &n));
    snprintf(name, sizeof name, "%s", col_text(st, 1, &n));
    skn_ad(ad, cap, label, group, name, (int32_t)sqlite3_column_int64(st, 2));
}

hush_err hsdk_stores_reseal_v1(hush_client *c)
{
    static const struct {
        const char *select, *update;
        int nkeys;
        hsdk_ad_fn ad;
        const char *label;
    } cols[] = {
        {"SELECT key, bval FROM meta WHERE key IN ('keycheck', 'link_token', 'device_name', 'recovery_secret')",
         "UPDATE meta SET bval = ?1 WHERE key = ?2", 1, ad_meta, "meta"},
        {"SELECT id, identity_private FROM local_device", "UPDATE local_device SET identity_private = ?1 WHERE id = ?2",
         1, ad_fixed, "local_device|identity_private"},
        {"SELECT id, auth_secret FROM local_device", "UPDATE local_device SET auth_secret = ?1 WHERE id = ?2", 1,
         ad_fixed, "local_device|auth_secret"},
        {"SELECT name, device_id, key FROM identities",
         "UPDATE identities SET key = ?1 WHERE name = ?2 AND device_id = ?3", 2, ad_name_dev, "identities"},
        {"SELECT name, device_id, candidate, key FROM pending_identities",
         "UPDATE pending_identities SET key = ?1 WHERE name = ?2 AND device_id = ?3 AND candidate = ?4", 3,
         ad_name_dev_candidate, "pending_identities"},
        {"SELECT name, device_id, record FROM sessions",
         "UPDATE sessions SET record = ?1 WHERE name = ?2 AND device_id = ?3", 2, ad_name_dev, "sessions"},
        {"SELECT name, device_id, user_record FROM sessions",
         "UPDATE sessions SET user_record = ?1 WHERE name = ?2 AND device_id = ?3", 2, ad_name_dev, "sessions.user"},
        {"SELECT id, record FROM pre_keys", "UPDATE pre_keys SET record = ?1 WHERE id = ?2", 1, ad_id, "pre_keys"},
        {"SELECT id, record FROM signed_pre_keys", "UPDATE signed_pre_keys SET record = ?1 WHERE id = ?2", 1, ad_id,
         "signed_pre_keys"},
        {"SELECT group_id, name, device_id, record FROM sender_keys",
         "UPDATE sender_keys SET record = ?1 WHERE group_id = ?2 AND name = ?3 AND device_id = ?4", 3,
         ad_sender_key, "sender_keys"},
        {"SELECT group_id, name, device_id, user_record FROM sender_keys",
         "UPDATE sender_keys SET user_record = ?1 WHERE group_id = ?2 AND name = ?3 AND device_id = ?4", 3,
         ad_sender_key, "sender_keys.user"},
    };
    hush_err e = HUSH_OK;
    for (size_t i = 0; !e && i < sizeof cols / sizeof cols[0]; i++)
        e = hsdk_reseal_column(c, cols[i].select, cols[i].update, cols[i].nkeys, cols[i].ad, cols[i].label);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* identity store */

/* The local device's one row, with the given columns: on HUSH_OK *st is on it (the caller reads
 * and resets it); HUSH_ERR_NO_DEVICE when there is none. */
static hush_err local_device_row(hush_client *c, const char *sql, sqlite3_stmt **st)
{
    int row = 0;
    hstore_err se = hstore_prepare(c->db, sql, st);
    if (!se)
        se = hstore_step(c->db, *st, &row);
    if (se)
        return hsdk_from_store(se);
    return row ? HUSH_OK : HUSH_ERR_NO_DEVICE;
}

hush_err hsdk_local_identity(hush_client *c, ratchet_identity_key_pair **out)
{
    *out = NULL;
    if (!c->has_device)
        return HUSH_ERR_NO_DEVICE;
    sqlite3_stmt *st;
    hush_err e = local_device_row(c, "SELECT identity_public, identity_private FROM local_device WHERE id = 1", &st);
    if (e)
        return e;
    uint8_t *priv = NULL;
    size_t priv_len = 0;
    ec_public_key *pub = NULL;
    ec_private_key *pk = NULL;
    e = hsdk_open(c, "hush1|local_device|identity_private", sqlite3_column_blob(st, 1),
                   (size_t)sqlite3_column_bytes(st, 1), &priv, &priv_len);
    if (e == HUSH_OK) {
        if (curve_decode_point(&pub, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), c->sg) != 0 ||
            curve_decode_private_point(&pk, priv, priv_len, c->sg) != 0 ||
            ratchet_identity_key_pair_create(out, pub, pk) != 0)
            e = HUSH_ERR_DB_KEY;
    }
    sqlite3_reset(st);
    if (priv) {
        sodium_memzero(priv, priv_len);
        free(priv);
    }
    SIGNAL_UNREF(pub);
    SIGNAL_UNREF(pk);
    return e;
}

static int s_get_identity_key_pair(signal_buffer **public_data, signal_buffer **private_data, void *ud)
{
    hush_client *c = ud;
    ratchet_identity_key_pair *kp = NULL;
    hush_err e = hsdk_local_identity(c, &kp);
    if (e)
        return store_fail(c, e);
    int rc = ec_public_key_serialize(public_data, ratchet_identity_key_pair_get_public(kp));
    if (rc == 0)
        rc = ec_private_key_serialize(private_data, ratchet_identity_key_pair_get_private(kp));
    SIGNAL_UNREF(kp);
    return rc;
}

static int s_get_local_registration_id(void *ud, uint32_t *registration_id)
{
    hush_client *c = ud;
    if (!c->has_device)
        return store_fail(c, HUSH_ERR_STORAGE);
    *registration_id = c->registration_id;
    return 0;
}

/* The identity key of the lowest-numbered device of `name` other than `dev` (0: none known). */
hush_err hsdk_peer_identity_other(hush_client *c, const char *name, uint32_t dev, uint8_t key[33], int *found)
{
    sqlite3_stmt *st;
    *found = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT device_id FROM identities WHERE name = ?1 AND device_id != ?2 "
                                          "ORDER BY device_id LIMIT 1", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, name, (int)strlen(name), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    int row = 0;
    se = hstore_step(c->db, st, &row);
    if (se)
        return hsdk_from_store(se);
    if (!row)
        return HUSH_OK;
    uint32_t other = (uint32_t)sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return hsdk_peer_identity(c, name, other, key, found);
}

hush_err hsdk_peer_identity(hush_client *c, const char *name, uint32_t dev, uint8_t key[33], int *found)
{
    sqlite3_stmt *st;
    *found = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT key FROM identities WHERE name = ?1 AND device_id = ?2", &st);
    if (se)
        return hsdk_from_store(se);
    size_t nlen = strlen(name);
    sqlite3_bind_blob(st, 1, name, (int)nlen, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    char ad[128];
    hsdk_ad(ad, sizeof ad, "identities", name, nlen, dev, 0);
    uint8_t *pt = NULL;
    size_t len = 0;
    int f = 0;
    hush_err e = load_sealed(c, st, 0, ad, &pt, &len, &f);
    if (e)
        return e;
    if (f) {
        if (len != 33) {
            wipe_free(pt, len);
            return HUSH_ERR_DB_KEY;
        }
        memcpy(key, pt, 33);
        wipe_free(pt, len);
        *found = 1;
    }
    return HUSH_OK;
}

hush_err hsdk_identities_each(hush_client *c, int (*fn)(void *ctx, const char *name, uint32_t dev, const uint8_t key[33]),
                              void *ctx)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "SELECT name, device_id FROM identities ORDER BY name, device_id", &st);
    if (se)
        return hsdk_from_store(se);
    /* collected first: the statement is reused by hsdk_peer_identity */
    struct idrow {
        char name[HUSH_USERNAME_MAX + 1];
        uint32_t dev;
    } *rows = NULL;
    size_t n = 0, cap = 0;
    int row = 0;
    hush_err e = HUSH_OK;
    while (!e && (se = hstore_step(c->db, st, &row)) == HSTORE_OK && row) {
        int nl = sqlite3_column_bytes(st, 0);
        if (nl <= 0 || nl > HUSH_USERNAME_MAX)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            struct idrow *r = realloc(rows, cap * sizeof *rows);
            if (!r) {
                e = HUSH_ERR_NOMEM;
                sqlite3_reset(st);
                break;
            }
            rows = r;
        }
        memcpy(rows[n].name, sqlite3_column_blob(st, 0), (size_t)nl);
        rows[n].name[nl] = '\0';
        rows[n].dev = (uint32_t)sqlite3_column_int64(st, 1);
        n++;
    }
    if (!e)
        e = hsdk_from_store(se);
    for (size_t i = 0; !e && i < n; i++) {
        uint8_t key[33];
        int found = 0;
        e = hsdk_peer_identity(c, rows[i].name, rows[i].dev, key, &found);
        if (!e && found && fn(ctx, rows[i].name, rows[i].dev, key) != 0)
            break;
    }
    free(rows);
    return e;
}

hush_err hsdk_save_peer_identity(hush_client *c, const char *name, uint32_t dev, const uint8_t *key, size_t len)
{
    sqlite3_stmt *st;
    size_t nlen = strlen(name);
    hstore_err se = hstore_prepare(c->db, "INSERT OR REPLACE INTO identities (name, device_id, key, updated_at) "
                                          "VALUES (?1, ?2, ?3, ?4)", &st);
    if (se)
        return hsdk_from_store(se);
    char ad[128];
    hsdk_ad(ad, sizeof ad, "identities", name, nlen, dev, 0);
    sqlite3_bind_blob(st, 1, name, (int)nlen, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    hush_err e = bind_sealed(c, st, 3, ad, key, len);
    if (e) {
        sqlite3_reset(st);
        return e;
    }
    sqlite3_bind_int64(st, 4, (int64_t)hsdk_now_ms());
    return hsdk_from_store(hstore_run(c->db, st));
}

/* Copies an address name (not NUL-terminated) into a bounded C string. */
static int addr_name(const signal_protocol_address *a, char out[HUSH_USERNAME_MAX + 1])
{
    if (!a || !a->name || a->name_len == 0 || a->name_len > HUSH_USERNAME_MAX)
        return -1;
    memcpy(out, a->name, a->name_len);
    out[a->name_len] = '\0';
    if (strlen(out) != a->name_len)
        return -1; /* embedded NUL */
    return 0;
}

static int s_save_identity(const signal_protocol_address *address, uint8_t *key_data, size_t key_len, void *ud)
{
    hush_client *c = ud;
    char name[HUSH_USERNAME_MAX + 1];
    if (addr_name(address, name) != 0 || address->device_id < 0)
        return SG_ERR_INVAL;
    if (!key_data) {
        sqlite3_stmt *st;
        if (hstore_prepare(c->db, "DELETE FROM identities WHERE name = ?1 AND device_id = ?2", &st))
            return store_fail(c, HUSH_ERR_STORAGE);
        sqlite3_bind_blob(st, 1, name, (int)strlen(name), SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, address->device_id);
        return hstore_run(c->db, st) ? store_fail(c, HUSH_ERR_STORAGE) : 0;
    }
    hush_err e = hsdk_save_peer_identity(c, name, (uint32_t)address->device_id, key_data, key_len);
    return e ? store_fail(c, e) : 0;
}

/* The public half of our identity key (shared by all our devices). */
static hush_err own_identity_public(hush_client *c, uint8_t out[33])
{
    ratchet_identity_key_pair *kp = NULL;
    hush_err e = hsdk_local_identity(c, &kp);
    if (e)
        return e;
    signal_buffer *b = NULL;
    if (ec_public_key_serialize(&b, ratchet_identity_key_pair_get_public(kp)) != 0 || signal_buffer_len(b) != 33)
        e = HUSH_ERR_INTERNAL;
    else
        memcpy(out, signal_buffer_data(b), 33);
    signal_buffer_free(b);
    SIGNAL_UNREF(kp);
    return e;
}

/*
 * Identity is per user: all devices of a user share one identity key. A device of our own user
 * is trusted only with our own key; a device of a known user only with the key we trust for that
 * user (a device never seen with another key is whoever runs the relay listing a device of its own
 * under the name, and is reported like a changed key); a user never seen is trusted on first use.
 */
static int s_is_trusted_identity(const signal_protocol_address *address, uint8_t *key_data, size_t key_len, void *ud)
{
    hush_client *c = ud;
    char name[HUSH_USERNAME_MAX + 1];
    if (addr_name(address, name) != 0 || address->device_id < 0 || !key_data || key_len != 33)
        return SG_ERR_INVAL;
    uint8_t known[33];
    int found = 0;
    hush_err e;
    if (c->has_device && strcmp(name, c->username) == 0) {
        e = own_identity_public(c, known);
        if (e)
            return store_fail(c, e);
        found = 1;
    } else {
        e = hsdk_peer_identity(c, name, (uint32_t)address->device_id, known, &found);
        if (e)
            return store_fail(c, e);
        if (!found) {
            e = hsdk_peer_identity_other(c, name, (uint32_t)address->device_id, known, &found);
            if (e)
                return store_fail(c, e);
            if (!found)
                return 1; /* a user seen for the first time: trust on first use */
        }
    }
    if (sodium_memcmp(known, key_data, 33) == 0)
        return 1;
    /* A different key claims this address: remember it for hush_identity_pending. */
    c->untrusted.set = 1;
    memcpy(c->untrusted.name, name, sizeof name);
    c->untrusted.device_id = (uint32_t)address->device_id;
    memcpy(c->untrusted.key, key_data, 33);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* session store */

static int s_load_session(signal_buffer **record, signal_buffer **user_record, const signal_protocol_address *address,
                          void *ud)
{
    hush_client *c = ud;
    char name[HUSH_USERNAME_MAX + 1];
    if (addr_name(address, name) != 0)
        return 0; /* no session can exist under an invalid name */
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "SELECT record, user_record FROM sessions WHERE name = ?1 AND device_id = ?2", &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    sqlite3_bind_blob(st, 1, name, (int)strlen(name), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, address->device_id);
    int row = 0;
    if (hstore_step(c->db, st, &row))
        return store_fail(c, HUSH_ERR_STORAGE);
    if (!row)
        return 0;
    char ad[128];
    hsdk_ad(ad, sizeof ad, "sessions", name, strlen(name), address->device_id, 0);
    uint8_t *pt = NULL, *upt = NULL;
    size_t len = 0, ulen = 0;
    hush_err e = hsdk_open(c, ad, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), &pt, &len);
    if (e == HUSH_OK && sqlite3_column_type(st, 1) != SQLITE_NULL) {
        hsdk_ad(ad, sizeof ad, "sessions.user", name, strlen(name), address->device_id, 0);
        e = hsdk_open(c, ad, sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1), &upt, &ulen);
    }
    sqlite3_reset(st);
    if (e) { /* a record holds chain keys: wiped on the error path too */
        wipe_free(pt, len);
        wipe_free(upt, ulen);
        return store_fail(c, e);
    }
    *record = take_buffer(pt, len);
    if (upt)
        *user_record = take_buffer(upt, ulen);
    return *record ? 1 : SG_ERR_NOMEM;
}

static int s_get_sub_device_sessions(signal_int_list **sessions, const char *name, size_t name_len, void *ud)
{
    hush_client *c = ud;
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "SELECT device_id FROM sessions WHERE name = ?1 ORDER BY device_id", &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    sqlite3_bind_blob(st, 1, name, (int)name_len, SQLITE_TRANSIENT);
    signal_int_list *list = signal_int_list_alloc();
    if (!list) {
        sqlite3_reset(st);
        return SG_ERR_NOMEM;
    }
    int row = 0, n = 0;
    while (hstore_step(c->db, st, &row) == HSTORE_OK && row) {
        if (signal_int_list_push_back(list, sqlite3_column_int(st, 0)) != 0) {
            sqlite3_reset(st);
            signal_int_list_free(list);
            return SG_ERR_NOMEM;
        }
        n++;
    }
    *sessions = list;
    return n;
}

/* A peer can make its own session record grow (each message that skips ahead stores the keys of
 * the messages it skipped: up to 2000 per chain, 5 chains per state, 40 archived states). Past
 * this size the record is not stored: the decrypt fails as HUSH_ERR_TOO_BIG, nothing changes, and
 * the networked SDK acknowledges and drops that message — only that peer's messages suffer, and
 * the inbox never stalls on a record SQLite would refuse. */
size_t hsdk_max_record = HUSH_MAX_SESSION_RECORD;

static int store_session_row(hush_client *c, const signal_protocol_address *address, const char *name,
                             const uint8_t *record, size_t record_len, const uint8_t *user_record,
                             size_t user_record_len);

/* The record with at most HUSH_MAX_ARCHIVED_STATES earlier sessions (newest first, as libsignal
 * orders them): libsignal keeps 40, each able to hold thousands of skipped message keys that every
 * decrypt loads. *out is NULL when nothing had to go (store the record as given). */
static hush_err trim_archived(hush_client *c, const uint8_t *record, size_t len, signal_buffer **out)
{
    *out = NULL;
    session_record *r = NULL;
    if (session_record_deserialize(&r, record, len, c->sg) != 0)
        return HUSH_ERR_INTERNAL; /* libsignal's own serialization: cannot fail unless memory does */
    int n = 0, trimmed = 0;
    session_record_state_node *node = session_record_get_previous_states_head(r);
    while (node) {
        if (++n > HUSH_MAX_ARCHIVED_STATES) {
            node = session_record_get_previous_states_remove(r, node);
            trimmed = 1;
        } else {
            node = session_record_get_previous_states_next(node);
        }
    }
    hush_err e = HUSH_OK;
    if (trimmed && session_record_serialize(out, r) != 0)
        e = HUSH_ERR_NOMEM;
    SIGNAL_UNREF(r);
    return e;
}

/* A message key takes at least 80 bytes in a record (cipher key, MAC key, IV): a record smaller
 * than this cannot hold more than HUSH_MAX_SKIPPED_KEYS of them, and is stored without parsing. */
#define SKIPPED_CHECK_BYTES ((size_t)HUSH_MAX_SKIPPED_KEYS * 80)

static size_t chain_keys(Hushrec__Session *s)
{
    size_t n = 0;
    for (size_t i = 0; s && i < s->n_receiver_chains; i++)
        n += s->receiver_chains[i]->n_message_keys;
    return n;
}

/* Drops the oldest `*excess` message keys of a state's chains (oldest chain first, oldest key
 * first: libsignal appends both). */
static void drop_oldest_keys(Hushrec__Session *s, size_t *excess)
{
    for (size_t i = 0; s && i < s->n_receiver_chains && *excess; i++) {
        Hushrec__Chain *ch = s->receiver_chains[i];
        size_t drop = ch->n_message_keys < *excess ? ch->n_message_keys : *excess;
        for (size_t k = 0; k < drop; k++)
            hsdk_wiping_allocator.free(hsdk_wiping_allocator.allocator_data, ch->message_keys[k].data);
        memmove(ch->message_keys, ch->message_keys + drop, (ch->n_message_keys - drop) * sizeof *ch->message_keys);
        ch->n_message_keys -= drop;
        *excess -= drop;
    }
}

/* The record with at most HUSH_MAX_SKIPPED_KEYS keys of skipped messages in all. A peer decides
 * how many messages it skips (up to 2000 per chain in libsignal, which keeps 5 chains per state),
 * and every decrypt of its messages loads, parses and seals the whole record: without this a peer
 * could make each of its messages cost tens of milliseconds. libsignal's API cannot list a
 * chain's keys, so the record is read with the part of its format declared in
 * proto/signal_record.proto; everything else passes through untouched. *out is NULL when nothing
 * had to go. */
static hush_err trim_skipped(const uint8_t *record, size_t len, signal_buffer **out)
{
    *out = NULL;
    if (len < SKIPPED_CHECK_BYTES)
        return HUSH_OK;
    Hushrec__Record *r = hushrec__record__unpack(&hsdk_wiping_allocator, len, record);
    if (!r)
        return HUSH_ERR_INTERNAL; /* libsignal's own serialization: cannot fail unless memory does */
    size_t total = chain_keys(r->current_session);
    for (size_t i = 0; i < r->n_previous_sessions; i++)
        total += chain_keys(r->previous_sessions[i]);
    hush_err e = HUSH_OK;
    if (total > HUSH_MAX_SKIPPED_KEYS) {
        size_t excess = total - HUSH_MAX_SKIPPED_KEYS;
        /* the oldest earlier session is the last one (libsignal lists them newest first) */
        for (size_t i = r->n_previous_sessions; i-- > 0 && excess;)
            drop_oldest_keys(r->previous_sessions[i], &excess);
        drop_oldest_keys(r->current_session, &excess);
        size_t n = hushrec__record__get_packed_size(r);
        *out = signal_buffer_alloc(n);
        if (!*out)
            e = HUSH_ERR_NOMEM;
        else
            hushrec__record__pack(r, signal_buffer_data(*out));
    }
    hushrec__record__free_unpacked(r, &hsdk_wiping_allocator);
    return e;
}

static int s_store_session(const signal_protocol_address *address, uint8_t *record, size_t record_len,
                           uint8_t *user_record, size_t user_record_len, void *ud)
{
    hush_client *c = ud;
    char name[HUSH_USERNAME_MAX + 1];
    if (addr_name(address, name) != 0 || address->device_id < 0)
        return SG_ERR_INVAL;
    signal_buffer *trimmed = NULL;
    /* Only an operation that may start a session adds an archived state: the others store the
     * record as libsignal gave it, without the cost of parsing it again. */
    hush_err te = c->new_session ? trim_archived(c, record, record_len, &trimmed) : HUSH_OK;
    if (te)
        return store_fail(c, te);
    if (trimmed) {
        record = signal_buffer_data(trimmed);
        record_len = signal_buffer_len(trimmed);
    }
    signal_buffer *fewer = NULL;
    if ((te = trim_skipped(record, record_len, &fewer))) {
        if (trimmed)
            signal_buffer_bzero_free(trimmed);
        return store_fail(c, te);
    }
    if (fewer) {
        record = signal_buffer_data(fewer);
        record_len = signal_buffer_len(fewer);
    }
    int r = store_session_row(c, address, name, record, record_len, user_record, user_record_len);
    if (fewer)
        signal_buffer_bzero_free(fewer);
    if (trimmed)
        signal_buffer_bzero_free(trimmed);
    return r;
}

static int store_session_row(hush_client *c, const signal_protocol_address *address, const char *name,
                             const uint8_t *record, size_t record_len, const uint8_t *user_record,
                             size_t user_record_len)
{
    if (record_len + user_record_len > hsdk_max_record)
        return store_fail(c, HUSH_ERR_TOO_BIG); /* see hsdk_max_record */
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "INSERT OR REPLACE INTO sessions (name, device_id, record, user_record) "
                              "VALUES (?1, ?2, ?3, ?4)", &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    char ad[128];
    sqlite3_bind_blob(st, 1, name, (int)strlen(name), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, address->device_id);
    hsdk_ad(ad, sizeof ad, "sessions", name, strlen(name), address->device_id, 0);
    hush_err e = bind_sealed(c, st, 3, ad, record, record_len);
    if (e == HUSH_OK && user_record) {
        hsdk_ad(ad, sizeof ad, "sessions.user", name, strlen(name), address->device_id, 0);
        e = bind_sealed(c, st, 4, ad, user_record, user_record_len);
    }
    if (e) {
        sqlite3_reset(st);
        return store_fail(c, e);
    }
    return hstore_run(c->db, st) ? store_fail(c, HUSH_ERR_STORAGE) : 0;
}

static int s_contains_session(const signal_protocol_address *address, void *ud)
{
    hush_client *c = ud;
    char name[HUSH_USERNAME_MAX + 1];
    if (addr_name(address, name) != 0)
        return 0;
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "SELECT 1 FROM sessions WHERE name = ?1 AND device_id = ?2", &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    sqlite3_bind_blob(st, 1, name, (int)strlen(name), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, address->device_id);
    int row = 0;
    if (hstore_step(c->db, st, &row))
        return store_fail(c, HUSH_ERR_STORAGE);
    sqlite3_reset(st);
    return row;
}

static int s_delete_session(const signal_protocol_address *address, void *ud)
{
    hush_client *c = ud;
    char name[HUSH_USERNAME_MAX + 1];
    if (addr_name(address, name) != 0)
        return 0;
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "DELETE FROM sessions WHERE name = ?1 AND device_id = ?2", &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    sqlite3_bind_blob(st, 1, name, (int)strlen(name), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, address->device_id);
    if (hstore_run(c->db, st))
        return store_fail(c, HUSH_ERR_STORAGE);
    return hstore_changes(c->db) > 0 ? 1 : 0;
}

static int s_delete_all_sessions(const char *name, size_t name_len, void *ud)
{
    hush_client *c = ud;
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "DELETE FROM sessions WHERE name = ?1", &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    sqlite3_bind_blob(st, 1, name, (int)name_len, SQLITE_TRANSIENT);
    if (hstore_run(c->db, st))
        return store_fail(c, HUSH_ERR_STORAGE);
    return hstore_changes(c->db);
}

/* ---------------------------------------------------------------------------------------- */
/* pre-key and signed pre-key stores (same shape, different tables) */

static int load_key_record(hush_client *c, const char *sql, const char *table, signal_buffer **record, uint32_t id)
{
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, sql, &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    sqlite3_bind_int64(st, 1, id);
    char ad[96];
    hsdk_ad(ad, sizeof ad, table, "", 0, id, 0);
    uint8_t *pt = NULL;
    size_t len = 0;
    int found = 0;
    hush_err e = load_sealed(c, st, 0, ad, &pt, &len, &found);
    if (e)
        return store_fail(c, e);
    if (!found)
        return SG_ERR_INVALID_KEY_ID; /* never 0 without a record: the library would dereference NULL */
    *record = take_buffer(pt, len);
    return *record ? SG_SUCCESS : SG_ERR_NOMEM;
}

static int store_key_record(hush_client *c, const char *sql, const char *table, uint32_t id, const uint8_t *rec,
                            size_t len)
{
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, sql, &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    char ad[96];
    hsdk_ad(ad, sizeof ad, table, "", 0, id, 0);
    sqlite3_bind_int64(st, 1, id);
    hush_err e = bind_sealed(c, st, 2, ad, rec, len);
    if (e) {
        sqlite3_reset(st);
        return store_fail(c, e);
    }
    if (sqlite3_bind_parameter_count(st) >= 3)
        sqlite3_bind_int64(st, 3, (int64_t)hsdk_now_ms());
    return hstore_run(c->db, st) ? store_fail(c, HUSH_ERR_STORAGE) : 0;
}

static int contains_id(hush_client *c, const char *sql, uint32_t id)
{
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, sql, &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    sqlite3_bind_int64(st, 1, id);
    int row = 0;
    if (hstore_step(c->db, st, &row))
        return store_fail(c, HUSH_ERR_STORAGE);
    sqlite3_reset(st);
    return row;
}

static int remove_id(hush_client *c, const char *sql, uint32_t id)
{
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, sql, &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    sqlite3_bind_int64(st, 1, id);
    /* Already gone is success (0); a real storage failure fails the call, and the caller's
     * savepoint then undoes the session the library saved just before. */
    return hstore_run(c->db, st) ? store_fail(c, HUSH_ERR_STORAGE) : 0;
}

static int s_load_pre_key(signal_buffer **record, uint32_t id, void *ud)
{
    return load_key_record(ud, "SELECT record FROM pre_keys WHERE id = ?1", "pre_keys", record, id);
}

static int s_store_pre_key(uint32_t id, uint8_t *record, size_t len, void *ud)
{
    return store_key_record(ud, "INSERT INTO pre_keys (id, record) VALUES (?1, ?2) "
                                "ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                            "pre_keys", id, record, len);
}

static int s_contains_pre_key(uint32_t id, void *ud)
{
    return contains_id(ud, "SELECT 1 FROM pre_keys WHERE id = ?1", id);
}

static int s_remove_pre_key(uint32_t id, void *ud)
{
    return remove_id(ud, "DELETE FROM pre_keys WHERE id = ?1", id);
}

static int s_load_signed_pre_key(signal_buffer **record, uint32_t id, void *ud)
{
    return load_key_record(ud, "SELECT record FROM signed_pre_keys WHERE id = ?1", "signed_pre_keys", record, id);
}

static int s_store_signed_pre_key(uint32_t id, uint8_t *record, size_t len, void *ud)
{
    return store_key_record(ud, "INSERT INTO signed_pre_keys (id, record, created_at) VALUES (?1, ?2, ?3) "
                                "ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                            "signed_pre_keys", id, record, len);
}

static int s_contains_signed_pre_key(uint32_t id, void *ud)
{
    return contains_id(ud, "SELECT 1 FROM signed_pre_keys WHERE id = ?1", id);
}

static int s_remove_signed_pre_key(uint32_t id, void *ud)
{
    return remove_id(ud, "DELETE FROM signed_pre_keys WHERE id = ?1", id);
}

/* ---------------------------------------------------------------------------------------- */
/* sender key store */

static int skn_parts(const signal_protocol_sender_key_name *n, char group[HUSH_GROUP_ID_MAX + 1],
                     char name[HUSH_USERNAME_MAX + 1])
{
    if (!n || !n->group_id || n->group_id_len == 0 || n->group_id_len > HUSH_GROUP_ID_MAX)
        return -1;
    memcpy(group, n->group_id, n->group_id_len);
    group[n->group_id_len] = '\0';
    if (strlen(group) != n->group_id_len)
        return -1;
    return addr_name(&n->sender, name);
}

static void skn_ad(char *ad, size_t cap, const char *what, const char *group, const char *name, int32_t dev)
{
    char both[HUSH_GROUP_ID_MAX + HUSH_USERNAME_MAX + 8];
    int n = snprintf(both, sizeof both, "%zu:%s/%s", strlen(group), group, name);
    hsdk_ad(ad, cap, what, both, (size_t)n, dev, 0);
}

static int s_store_sender_key(const signal_protocol_sender_key_name *skn, uint8_t *record, size_t record_len,
                              uint8_t *user_record, size_t user_record_len, void *ud)
{
    hush_client *c = ud;
    char group[HUSH_GROUP_ID_MAX + 1], name[HUSH_USERNAME_MAX + 1];
    if (skn_parts(skn, group, name) != 0)
        return SG_ERR_INVAL;
    if (record_len + user_record_len > hsdk_max_record)
        return store_fail(c, HUSH_ERR_TOO_BIG);
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "INSERT OR REPLACE INTO sender_keys (group_id, name, device_id, record, user_record) "
                              "VALUES (?1, ?2, ?3, ?4, ?5)", &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    char ad[192];
    sqlite3_bind_blob(st, 1, group, (int)strlen(group), SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, name, (int)strlen(name), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, skn->sender.device_id);
    skn_ad(ad, sizeof ad, "sender_keys", group, name, skn->sender.device_id);
    hush_err e = bind_sealed(c, st, 4, ad, record, record_len);
    if (e == HUSH_OK && user_record) {
        skn_ad(ad, sizeof ad, "sender_keys.user", group, name, skn->sender.device_id);
        e = bind_sealed(c, st, 5, ad, user_record, user_record_len);
    }
    if (e) {
        sqlite3_reset(st);
        return store_fail(c, e);
    }
    return hstore_run(c->db, st) ? store_fail(c, HUSH_ERR_STORAGE) : 0;
}

static int s_load_sender_key(signal_buffer **record, signal_buffer **user_record,
                             const signal_protocol_sender_key_name *skn, void *ud)
{
    hush_client *c = ud;
    char group[HUSH_GROUP_ID_MAX + 1], name[HUSH_USERNAME_MAX + 1];
    if (skn_parts(skn, group, name) != 0)
        return 0;
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "SELECT record, user_record FROM sender_keys "
                              "WHERE group_id = ?1 AND name = ?2 AND device_id = ?3", &st))
        return store_fail(c, HUSH_ERR_STORAGE);
    sqlite3_bind_blob(st, 1, group, (int)strlen(group), SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, name, (int)strlen(name), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, skn->sender.device_id);
    int row = 0;
    if (hstore_step(c->db, st, &row))
        return store_fail(c, HUSH_ERR_STORAGE);
    if (!row)
        return 0;
    char ad[192];
    skn_ad(ad, sizeof ad, "sender_keys", group, name, skn->sender.device_id);
    uint8_t *pt = NULL, *upt = NULL;
    size_t len = 0, ulen = 0;
    hush_err e = hsdk_open(c, ad, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), &pt, &len);
    if (e == HUSH_OK && sqlite3_column_type(st, 1) != SQLITE_NULL) {
        skn_ad(ad, sizeof ad, "sender_keys.user", group, name, skn->sender.device_id);
        e = hsdk_open(c, ad, sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1), &upt, &ulen);
    }
    sqlite3_reset(st);
    if (e) { /* a record holds chain keys: wiped on the error path too */
        wipe_free(pt, len);
        wipe_free(upt, ulen);
        return store_fail(c, e);
    }
    *record = take_buffer(pt, len);
    if (upt)
        *user_record = take_buffer(upt, ulen);
    return *record ? 1 : SG_ERR_NOMEM;
}

/* ---------------------------------------------------------------------------------------- */

int hsdk_stores_install(hush_client *c)
{
    /* Every store shares the client's one connection; destroy_func stays NULL so nothing is
     * closed twice (the client closes the database itself). */
    signal_protocol_session_store ss = {
        .load_session_func = s_load_session,
        .get_sub_device_sessions_func = s_get_sub_device_sessions,
        .store_session_func = s_store_session,
        .contains_session_func = s_contains_session,
        .delete_session_func = s_delete_session,
        .delete_all_sessions_func = s_delete_all_sessions,
        .destroy_func = NULL,
        .user_data = c,
    };
    signal_protocol_pre_key_store ps = {
        .load_pre_key = s_load_pre_key,
        .store_pre_key = s_store_pre_key,
        .contains_pre_key = s_contains_pre_key,
        .remove_pre_key = s_remove_pre_key,
        .destroy_func = NULL,
        .user_data = c,
    };
    signal_protocol_signed_pre_key_store sps = {
        .load_signed_pre_key = s_load_signed_pre_key,
        .store_signed_pre_key = s_store_signed_pre_key,
        .contains_signed_pre_key = s_contains_signed_pre_key,
        .remove_signed_pre_key = s_remove_signed_pre_key,
        .destroy_func = NULL,
        .user_data = c,
    };
    signal_protocol_identity_key_store is = {
        .get_identity_key_pair = s_get_identity_key_pair,
        .get_local_registration_id = s_get_local_registration_id,
        .save_identity = s_save_identity,
        .is_trusted_identity = s_is_trusted_identity,
        .destroy_func = NULL,
        .user_data = c,
    };
    signal_protocol_sender_key_store sks = {
        .store_sender_key = s_store_sender_key,
        .load_sender_key = s_load_sender_key,
        .destroy_func = NULL,
        .user_data = c,
    };
    if (signal_protocol_store_context_create(&c->sc, c->sg) != 0)
        return -1;
    if (signal_protocol_store_context_set_session_store(c->sc, &ss) != 0 ||
        signal_protocol_store_context_set_pre_key_store(c->sc, &ps) != 0 ||
        signal_protocol_store_context_set_signed_pre_key_store(c->sc, &sps) != 0 ||
        signal_protocol_store_context_set_identity_key_store(c->sc, &is) != 0 ||
        signal_protocol_store_context_set_sender_key_store(c->sc, &sks) != 0)
        return -1;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* pending identities: keys waiting for the user's decision */

hush_err hsdk_pending_candidates(hush_client *c, const char *name, uint32_t dev, uint8_t (*keys)[33], int64_t *cand,
                                  size_t max, size_t *n)
{
    *n = 0;
    sqlite3_stmt *st;
    int row = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT candidate, key FROM pending_identities WHERE name = ?1 AND "
                                          "device_id = ?2 ORDER BY candidate", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, name, (int)strlen(name), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    hush_err e = HUSH_OK;
    while (!e && *n < max && (se = hstore_step(c->db, st, &row)) == HSTORE_OK && row) {
        int64_t k = sqlite3_column_int64(st, 0);
        char ad[128];
        hsdk_ad(ad, sizeof ad, "pending_identities", name, strlen(name), dev, k);
        uint8_t *pt = NULL;
        size_t len = 0;
        e = hsdk_open(c, ad, sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1), &pt, &len);
        if (!e && len != 33)
            e = HUSH_ERR_DB_KEY;
        if (!e) {
            memcpy(keys[*n], pt, 33);
            if (cand)
                cand[*n] = k;
            (*n)++;
        }
        if (pt) {
            sodium_memzero(pt, len);
            free(pt);
        }
    }
    sqlite3_reset(st);
    return e ? e : hsdk_from_store(se);
}

hush_err hsdk_pending_delete(hush_client *c, const char *peer, uint32_t dev)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "DELETE FROM pending_identities WHERE name = ?1 AND device_id = ?2", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, peer, (int)strlen(peer), SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        se = hstore_run(c->db, st);
    }
    return hsdk_from_store(se);
}

/* Records a key that claimed an address already bound to another key (outside any savepoint
 * that is rolled back), so hush_identity_pending can show it. Every distinct key is kept as its own
 * candidate (up to HUSH_MAX_PENDING_KEYS per device), so a key injected after the user compared a
 * safety number cannot take that number's place. */
static hush_err save_pending_identity(hush_client *c)
{
    if (!c->untrusted.set)
        return HUSH_OK;
    c->untrusted.set = 0;
    const char *name = c->untrusted.name;
    uint32_t dev = c->untrusted.device_id;
    uint8_t keys[HUSH_MAX_PENDING_KEYS][33];
    int64_t cand[HUSH_MAX_PENDING_KEYS];
    size_t n = 0;
    hush_err e = hsdk_pending_candidates(c, name, dev, keys, cand, HUSH_MAX_PENDING_KEYS, &n);
    int known = 0;
    int64_t next = 0;
    for (size_t i = 0; !e && i < n; i++) {
        known |= sodium_memcmp(keys[i], c->untrusted.key, 33) == 0;
        if (cand[i] >= next)
            next = cand[i] + 1;
    }
    sodium_memzero(keys, sizeof keys);
    if (e || known || n >= HUSH_MAX_PENDING_KEYS)
        return e; /* already a candidate, or too many: nothing new to keep */
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT INTO pending_identities (name, device_id, candidate, key, created_at) "
                                          "VALUES (?1, ?2, ?3, ?4, ?5)", &st);
    if (se)
        return hsdk_from_store(se);
    char ad[128];
    hsdk_ad(ad, sizeof ad, "pending_identities", name, strlen(name), dev, next);
    uint8_t *ct = NULL;
    size_t clen = 0;
    e = hsdk_seal(c, ad, c->untrusted.key, sizeof c->untrusted.key, &ct, &clen);
    if (e)
        return e;
    sqlite3_bind_blob(st, 1, name, (int)strlen(name), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    sqlite3_bind_int64(st, 3, next);
    sqlite3_bind_blob(st, 4, ct, (int)clen, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, (int64_t)hsdk_now_ms());
    free(ct);
    return hsdk_from_store(hstore_run(c->db, st));
}

hush_err hsdk_after_untrusted(hush_client *c)
{
    hush_err e = save_pending_identity(c);
    return e ? e : HUSH_ERR_IDENTITY_CHANGED;
}

hush_err hsdk_pending_any(hush_client *c, const char *name, int *any)
{
    sqlite3_stmt *st;
    int row = 0;
    *any = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT 1 FROM pending_identities WHERE name = ?1 LIMIT 1", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, name, (int)strlen(name), SQLITE_TRANSIENT);
        se = hstore_step(c->db, st, &row);
        if (!se && row)
            sqlite3_reset(st);
    }
    *any = row;
    return hsdk_from_store(se);
}

hush_err hush_peer_devices(hush_client *c, const char *peer, uint32_t *out, size_t max, size_t *count)
{
    if (!count)
        return HUSH_ERR_INVALID_ARG;
    *count = 0;
    if (!c || !hsdk_valid_username(peer) || (!out && max))
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    sqlite3_stmt *st;
    int row = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT device_id FROM identities WHERE name = ?1 UNION "
                                          "SELECT device_id FROM pending_identities WHERE name = ?1 ORDER BY 1", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, peer, (int)strlen(peer), SQLITE_TRANSIENT);
        while ((se = hstore_step(c->db, st, &row)) == HSTORE_OK && row) {
            if (*count < max)
                out[*count] = (uint32_t)sqlite3_column_int64(st, 0);
            (*count)++;
        }
    }
    hsdk_unlock(c);
    if (*count > max)
        *count = max;
    return hsdk_from_store(se);
}

/* ---------------------------------------------------------------------------------------- */
/* the local device (table local_device): one row, written once */

hush_err hsdk_device_load(hush_client *c, char username[HUSH_USERNAME_MAX + 1], uint32_t *device_id,
                          uint32_t *registration_id, int *found)
{
    sqlite3_stmt *st;
    *found = 0;
    hush_err e = local_device_row(c, "SELECT username, device_id, registration_id FROM local_device WHERE id = 1", &st);
    if (e == HUSH_ERR_NO_DEVICE)
        return HUSH_OK; /* a new database */
    if (e)
        return e;
    const char *u = (const char *)sqlite3_column_text(st, 0);
    if (!hsdk_valid_username(u)) {
        sqlite3_reset(st);
        return HUSH_ERR_DB_CORRUPT;
    }
    snprintf(username, HUSH_USERNAME_MAX + 1, "%s", u);
    *device_id = (uint32_t)sqlite3_column_int64(st, 1);
    *registration_id = (uint32_t)sqlite3_column_int64(st, 2);
    *found = 1;
    sqlite3_reset(st);
    return HUSH_OK;
}

hush_err hsdk_device_insert(hush_client *c, const char *username, uint32_t device_id, uint32_t registration_id,
                            const uint8_t *identity_pub, size_t identity_pub_len, const uint8_t *sealed_identity_priv,
                            size_t sealed_identity_priv_len, const uint8_t auth_pub[32], const uint8_t *sealed_auth,
                            size_t sealed_auth_len)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT INTO local_device (id, username, device_id, registration_id, "
                                          "identity_public, identity_private, auth_public, auth_secret, created_at) "
                                          "VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_text(st, 1, username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, device_id);
    sqlite3_bind_int64(st, 3, registration_id);
    sqlite3_bind_blob(st, 4, identity_pub, (int)identity_pub_len, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 5, sealed_identity_priv, (int)sealed_identity_priv_len, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 6, auth_pub, 32, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 7, sealed_auth, (int)sealed_auth_len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 8, (int64_t)hsdk_now_ms());
    return hsdk_from_store(hstore_run(c->db, st));
}

hush_err hsdk_device_auth_public(hush_client *c, uint8_t pub[32])
{
    sqlite3_stmt *st;
    hush_err e = local_device_row(c, "SELECT auth_public FROM local_device WHERE id = 1", &st);
    if (e)
        return e;
    if (sqlite3_column_bytes(st, 0) == 32)
        memcpy(pub, sqlite3_column_blob(st, 0), 32);
    else
        e = HUSH_ERR_DB_CORRUPT;
    sqlite3_reset(st);
    return e;
}

hush_err hsdk_device_auth_secret(hush_client *c, uint8_t **sk, size_t *len)
{
    sqlite3_stmt *st;
    *sk = NULL;
    *len = 0;
    hush_err e = local_device_row(c, "SELECT auth_secret FROM local_device WHERE id = 1", &st);
    if (e)
        return e;
    e = hsdk_open(c, "hush1|local_device|auth_secret", sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0),
                  sk, len);
    sqlite3_reset(st);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* prekey bookkeeping beyond libsignal's store interface */

hush_err hsdk_prekey_stock(hush_client *c, uint32_t *unpublished, uint32_t *total)
{
    sqlite3_stmt *st;
    int row = 0;
    *unpublished = *total = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT count(*), coalesce(sum(exported = 0), 0) FROM pre_keys WHERE id != ?1",
                                   &st);
    if (!se) {
        sqlite3_bind_int64(st, 1, HUSH_LAST_RESORT_PREKEY_ID);
        se = hstore_step(c->db, st, &row);
    }
    if (!se && row) {
        *total = (uint32_t)sqlite3_column_int64(st, 0);
        *unpublished = (uint32_t)sqlite3_column_int64(st, 1);
        sqlite3_reset(st);
    }
    return hsdk_from_store(se);
}

hush_err hsdk_prekeys_unexported(hush_client *c, uint32_t *ids, size_t max, size_t *n)
{
    sqlite3_stmt *st;
    *n = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT id FROM pre_keys WHERE exported = 0 AND id != ?1 ORDER BY id LIMIT ?2", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_int64(st, 1, HUSH_LAST_RESORT_PREKEY_ID);
    sqlite3_bind_int64(st, 2, (int64_t)max);
    int row = 0;
    while (*n < max && (se = hstore_step(c->db, st, &row)) == HSTORE_OK && row)
        ids[(*n)++] = (uint32_t)sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return hsdk_from_store(se);
}

hush_err hsdk_prekey_mark_exported(hush_client *c, uint32_t id, int exported)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "UPDATE pre_keys SET exported = ?2 WHERE id = ?1", &st);
    if (!se) {
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int(st, 2, exported ? 1 : 0);
        se = hstore_run(c->db, st);
    }
    return hsdk_from_store(se);
}

hush_err hsdk_signed_prekey_created(hush_client *c, uint32_t id, int64_t *created_at, int *found)
{
    sqlite3_stmt *st;
    int row = 0;
    *found = 0;
    *created_at = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT created_at FROM signed_pre_keys WHERE id = ?1", &st);
    if (!se) {
        sqlite3_bind_int64(st, 1, id);
        se = hstore_step(c->db, st, &row);
    }
    if (!se && row) {
        *created_at = sqlite3_column_int64(st, 0);
        *found = 1;
        sqlite3_reset(st);
    }
    return hsdk_from_store(se);
}

hush_err hsdk_signed_prekeys_retire(hush_client *c, uint32_t keep_id, uint64_t older_than_ms)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "DELETE FROM signed_pre_keys WHERE id != ?1 AND created_at < ?2", &st);
    if (!se) {
        sqlite3_bind_int64(st, 1, keep_id);
        sqlite3_bind_int64(st, 2, (int64_t)older_than_ms);
        se = hstore_run(c->db, st);
    }
    return hsdk_from_store(se);
}

/* libsignal has no sender-key delete callback (docs/LIBSIGNAL-NOTES.md §2). */
hush_err hsdk_sender_key_forget(hush_client *c, const char *group_id, const char *name, uint32_t dev)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "DELETE FROM sender_keys WHERE group_id = ?1 AND name = ?2 AND device_id = ?3", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, group_id, (int)strlen(group_id), SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 2, name, (int)strlen(name), SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, dev);
        se = hstore_run(c->db, st);
    }
    return hsdk_from_store(se);
}
