/*
 * history.c - local message history and outbox, bodies sealed at rest.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "internal.h"

#define HISTORY_PAGE_MAX 500

static void history_ad(char *ad, size_t cap, const char *peer, uint32_t dev, int outgoing, const char *group_id,
                       const uint8_t mid[16])
{
    char hex[33];
    sodium_bin2hex(hex, sizeof hex, mid, 16);
    char name[HUSH_USERNAME_MAX + HUSH_GROUP_ID_MAX + 48];
    int n = snprintf(name, sizeof name, "%s/%s/%s", peer, group_id, hex);
    hsdk_ad(ad, cap, "history", name, (size_t)n, dev, outgoing);
}

/* The one-time upgrade of version-1 bodies: the same associated data as above, from the row. */
static void history_row_ad(char *ad, size_t cap, sqlite3_stmt *st, const char *label)
{
    (void)label;
    uint8_t mid[16] = {0};
    if (sqlite3_column_bytes(st, 5) == 16)
        memcpy(mid, sqlite3_column_blob(st, 5), 16);
    const char *peer = (const char *)sqlite3_column_text(st, 1), *group = (const char *)sqlite3_column_text(st, 4);
    history_ad(ad, cap, peer ? peer : "", (uint32_t)sqlite3_column_int64(st, 2), (int)sqlite3_column_int64(st, 3),
               group ? group : "", mid);
}

static void outbox_row_ad(char *ad, size_t cap, sqlite3_stmt *st, const char *label)
{
    (void)label;
    uint8_t mid[16] = {0};
    if (sqlite3_column_bytes(st, 2) == 16)
        memcpy(mid, sqlite3_column_blob(st, 2), 16);
    const char *peer = (const char *)sqlite3_column_text(st, 1);
    hsdk_outbox_ad(ad, cap, peer ? peer : "", mid);
}

hush_err hsdk_history_reseal_v1(hush_client *c)
{
    /* The key (id) first; the other columns only feed the associated data. */
    hush_err e = hsdk_reseal_column(c, "SELECT id, peer, peer_device, outgoing, group_id, message_id, body FROM history",
                                    "UPDATE history SET body = ?1 WHERE id = ?2", 1, history_row_ad, "history");
    if (!e)
        e = hsdk_reseal_column(c, "SELECT id, peer, message_id, body FROM outbox",
                               "UPDATE outbox SET body = ?1 WHERE id = ?2", 1, outbox_row_ad, "outbox");
    return e;
}

hush_err hsdk_history_insert(hush_client *c, const char *peer, uint32_t peer_dev, int outgoing, const uint8_t msg_id[16],
                              int kind, const char *group_id, uint64_t sent_at, const uint8_t *body, size_t len,
                              int64_t *local_id, int *duplicate)
{
    sqlite3_stmt *st;
    if (duplicate)
        *duplicate = 0;
    /* Incoming rows start not yet notified (the networked SDK calls the app, then marks them). */
    hstore_err se = hstore_prepare(c->db, "INSERT INTO history (peer, peer_device, outgoing, message_id, kind, group_id, "
                                          "sent_at, received_at, body, notified) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?3) "
                                          "ON CONFLICT DO NOTHING", &st);
    if (se)
        return hsdk_from_store(se);
    char ad[256];
    history_ad(ad, sizeof ad, peer, peer_dev, outgoing, group_id, msg_id);
    uint8_t *ct = NULL;
    size_t clen = 0;
    hush_err e = hsdk_seal(c, ad, body, len, &ct, &clen);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, peer_dev);
    sqlite3_bind_int(st, 3, outgoing);
    sqlite3_bind_blob(st, 4, msg_id, 16, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 5, kind);
    sqlite3_bind_text(st, 6, group_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 7, (int64_t)sent_at);
    sqlite3_bind_int64(st, 8, (int64_t)hsdk_now_ms());
    sqlite3_bind_blob(st, 9, ct, (int)clen, SQLITE_TRANSIENT);
    free(ct);
    se = hstore_run(c->db, st);
    if (se)
        return hsdk_from_store(se);
    if (hstore_changes(c->db) == 0) {
        if (duplicate)
            *duplicate = 1;
    } else if (local_id) {
        *local_id = hstore_last_insert_rowid(c->db);
    }
    return HUSH_OK;
}

void hush_history_free(hush_history_entry *entries, size_t count)
{
    if (!entries)
        return;
    for (size_t i = 0; i < count; i++) {
        if (entries[i].body) {
            sodium_memzero(entries[i].body, entries[i].body_len);
            free(entries[i].body);
        }
    }
    sodium_memzero(entries, count * sizeof *entries);
    free(entries);
}

/* A page of one conversation: with `peer` (group NULL; pairwise rows only) or of a group (peer
 * NULL; each row's peer is who wrote it). */
static hush_err history_page(hush_client *c, const char *peer, const char *group, int64_t before_local_id, int limit,
                             hush_history_entry **out, size_t *count)
{
    if (!out || !count)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    *count = 0;
    if (!c || limit < 1 || limit > HISTORY_PAGE_MAX || before_local_id < 0)
        return HUSH_ERR_INVALID_ARG;
    hush_history_entry *v = calloc((size_t)limit, sizeof *v);
    if (!v)
        return HUSH_ERR_NOMEM;
    size_t n = 0;
    hsdk_lock(c);
    sqlite3_stmt *st;
    hstore_err se = group ? hstore_prepare(c->db, "SELECT id, peer_device, outgoing, message_id, sent_at, received_at, read, "
                                                  "body, kind, peer FROM history WHERE group_id = ?1 AND (?2 = 0 OR id < ?2) "
                                                  "ORDER BY id DESC LIMIT ?3", &st)
                          : hstore_prepare(c->db, "SELECT id, peer_device, outgoing, message_id, sent_at, received_at, read, "
                                                  "body, kind, peer FROM history WHERE peer = ?1 AND group_id = '' AND "
                                                  "(?2 = 0 OR id < ?2) ORDER BY id DESC LIMIT ?3", &st);
    hush_err e = hsdk_from_store(se);
    if (!e) {
        sqlite3_bind_text(st, 1, group ? group : peer, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, before_local_id);
        sqlite3_bind_int(st, 3, limit);
        int row = 0;
        while (!e && (se = hstore_step(c->db, st, &row)) == HSTORE_OK && row) {
            hush_history_entry *h = &v[n];
            h->local_id = sqlite3_column_int64(st, 0);
            h->peer_device = (uint32_t)sqlite3_column_int64(st, 1);
            h->outgoing = sqlite3_column_int(st, 2);
            if (sqlite3_column_bytes(st, 3) != 16) {
                e = HUSH_ERR_DB_CORRUPT;
                break;
            }
            memcpy(h->message_id, sqlite3_column_blob(st, 3), 16);
            h->sent_at_ms = (uint64_t)sqlite3_column_int64(st, 4);
            h->received_at_ms = (uint64_t)sqlite3_column_int64(st, 5);
            h->read = sqlite3_column_int(st, 6);
            int kind = sqlite3_column_int(st, 8);
            if (group)
                h->kind = kind == HUSH_KIND_GROUP_CHANGE || kind == HUSH_KIND_FILE ? kind : HUSH_KIND_GROUP_TEXT;
            else
                h->kind = kind == HUSH_KIND_FILE ? HUSH_KIND_FILE : HUSH_KIND_TEXT;
            const char *who = (const char *)sqlite3_column_text(st, 9);
            snprintf(h->peer, sizeof h->peer, "%s", who ? who : "");
            char ad[256];
            history_ad(ad, sizeof ad, h->peer, h->peer_device, h->outgoing, group ? group : "", h->message_id);
            uint8_t *pt = NULL;
            size_t len = 0;
            e = hsdk_open(c, ad, sqlite3_column_blob(st, 7), (size_t)sqlite3_column_bytes(st, 7), &pt, &len);
            if (e)
                break;
            h->body = hsdk_grow_plaintext(pt, len);
            if (!h->body) {
                e = HUSH_ERR_NOMEM;
                break;
            }
            h->body[len] = '\0';
            h->body_len = len;
            n++;
        }
        sqlite3_reset(st);
        if (!e && se)
            e = hsdk_from_store(se);
    }
    hsdk_unlock(c);
    if (e) {
        hush_history_free(v, n);
        return e;
    }
    *out = v;
    *count = n;
    return HUSH_OK;
}

hush_err hush_history_list(hush_client *c, const char *peer, int64_t before_local_id, int limit,
                           hush_history_entry **out, size_t *count)
{
    if (!hsdk_valid_username(peer)) {
        if (out)
            *out = NULL;
        if (count)
            *count = 0;
        return HUSH_ERR_INVALID_ARG;
    }
    return history_page(c, peer, NULL, before_local_id, limit, out, count);
}

hush_err hush_group_history(hush_client *c, const char *group, int64_t before_local_id, int limit,
                            hush_history_entry **out, size_t *count)
{
    if (!hsdk_room_is_id(group)) {
        if (out)
            *out = NULL;
        if (count)
            *count = 0;
        return HUSH_ERR_INVALID_ARG;
    }
    return history_page(c, NULL, group, before_local_id, limit, out, count);
}

static hush_err update_one(hush_client *c, const char *sql, int64_t id)
{
    hsdk_lock(c);
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, sql, &st);
    if (!se) {
        sqlite3_bind_int64(st, 1, id);
        se = hstore_run(c->db, st);
    }
    hush_err e = hsdk_from_store(se);
    if (!e && hstore_changes(c->db) == 0)
        e = HUSH_ERR_NOT_FOUND;
    hsdk_unlock(c);
    return e;
}

hush_err hush_history_mark_read(hush_client *c, int64_t local_id)
{
    if (!c || local_id <= 0)
        return HUSH_ERR_INVALID_ARG;
    return update_one(c, "UPDATE history SET read = 1 WHERE id = ?1", local_id);
}

hush_err hsdk_history_delete(hush_client *c, int64_t local_id, uint8_t mid[16], int *found)
{
    *found = 0;
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "SELECT message_id FROM history WHERE id = ?1", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_int64(st, 1, local_id);
    int row = 0;
    if ((se = hstore_step(c->db, st, &row)))
        return hsdk_from_store(se);
    if (!row)
        return HUSH_ERR_NOT_FOUND;
    if (sqlite3_column_bytes(st, 0) == 16)
        memcpy(mid, sqlite3_column_blob(st, 0), 16), *found = 1;
    sqlite3_reset(st);
    /* The row's message id is kept out of reach of resurrection by the same UNIQUE key only while
     * the row exists; deleting a message locally is the user's choice, and a redelivery of the
     * same ciphertext is still a libsignal duplicate. */
    if ((se = hstore_prepare(c->db, "DELETE FROM history WHERE id = ?1", &st)))
        return hsdk_from_store(se);
    sqlite3_bind_int64(st, 1, local_id);
    return hsdk_from_store(hstore_run(c->db, st));
}

int hsdk_history_has_message(hush_client *c, const uint8_t mid[16])
{
    sqlite3_stmt *st;
    int row = 1; /* when unsure, it is there */
    if (hstore_prepare(c->db, "SELECT 1 FROM history WHERE message_id = ?1 LIMIT 1", &st) == HSTORE_OK) {
        sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
        if (hstore_step(c->db, st, &row) != HSTORE_OK)
            row = 1;
        else if (row)
            sqlite3_reset(st);
    }
    return row;
}

void hsdk_truncate_wal(hush_client *c)
{
    /* secure_delete zeroed deleted rows in the database; the WAL still holds the pages as they were */
    if (hstore_truncate_wal(c->db) != HSTORE_OK) {
        /* best effort: another reader keeps the frames; the next checkpoint truncates them */
    }
}

/* ---------------------------------------------------------------------------------------- */
/* outbox */

void hsdk_outbox_ad(char *ad, size_t cap, const char *peer, const uint8_t mid[16])
{
    char hex[33];
    sodium_bin2hex(hex, sizeof hex, mid, 16);
    char name[HUSH_USERNAME_MAX + 40];
    int n = snprintf(name, sizeof name, "%s/%s", peer, hex);
    hsdk_ad(ad, cap, "outbox", name, (size_t)n, 0, 0);
}

/* Inserts a sealed outbox row. Caller holds the lock (and a savepoint if it needs atomicity). */
hush_err hsdk_outbox_insert(hush_client *c, const char *peer, int kind, const uint8_t mid[16], const uint8_t *body,
                             size_t len)
{
    char ad[160];
    hsdk_outbox_ad(ad, sizeof ad, peer, mid);
    uint8_t *ct = NULL;
    size_t clen = 0;
    hush_err e = hsdk_seal(c, ad, body, len, &ct, &clen);
    if (e)
        return e;
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT INTO outbox (peer, message_id, created_at, body, kind) VALUES (?1, ?2, ?3, ?4, ?5)", &st);
    if (!se) {
        sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 2, mid, 16, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, (int64_t)hsdk_now_ms());
        sqlite3_bind_blob(st, 4, ct, (int)clen, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 5, kind);
        se = hstore_run(c->db, st);
    }
    free(ct);
    return hsdk_from_store(se);
}

hush_err hush_outbox_put(hush_client *c, const char *peer, const uint8_t *body, size_t len,
                         uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES])
{
    if (!c || !hsdk_valid_username(peer) || (!body && len))
        return HUSH_ERR_INVALID_ARG;
    if (len > HUSH_MAX_BODY)
        return HUSH_ERR_TOO_BIG;
    uint8_t mid[16];
    randombytes_buf(mid, sizeof mid);
    hsdk_lock(c);
    hush_err e = hsdk_outbox_insert(c, peer, HUSH__CONTENT_KIND__CONTENT_TEXT, mid, body, len);
    hsdk_unlock(c);
    if (!e && message_id_out)
        memcpy(message_id_out, mid, 16);
    return e;
}

void hush_outbox_entry_free(hush_outbox_entry *e)
{
    if (!e)
        return;
    if (e->body) {
        sodium_memzero(e->body, e->body_len);
        free(e->body);
    }
    free(e);
}

hush_err hush_outbox_next(hush_client *c, hush_outbox_entry **out)
{
    if (!out)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    sqlite3_stmt *st;
    int row = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT id, peer, message_id, created_at, attempts, body FROM outbox ORDER BY id LIMIT 1", &st);
    if (!se)
        se = hstore_step(c->db, st, &row);
    hush_err e = hsdk_from_store(se);
    if (!e && !row)
        e = HUSH_ERR_NOT_FOUND;
    if (!e) {
        hush_outbox_entry *o = calloc(1, sizeof *o);
        const char *peer = (const char *)sqlite3_column_text(st, 1);
        uint8_t room[16];
        if (!o) {
            e = HUSH_ERR_NOMEM;
        } else if ((!hsdk_valid_username(peer) && !hsdk_room_outbox_id(peer, room)) || sqlite3_column_bytes(st, 2) != 16) {
            e = HUSH_ERR_DB_CORRUPT;
        } else {
            o->local_id = sqlite3_column_int64(st, 0);
            snprintf(o->peer, sizeof o->peer, "%s", peer);
            memcpy(o->message_id, sqlite3_column_blob(st, 2), 16);
            o->created_at_ms = (uint64_t)sqlite3_column_int64(st, 3);
            o->attempts = (uint32_t)sqlite3_column_int64(st, 4);
            char ad[160];
            hsdk_outbox_ad(ad, sizeof ad, o->peer, o->message_id);
            uint8_t *pt = NULL;
            size_t len = 0;
            e = hsdk_open(c, ad, sqlite3_column_blob(st, 5), (size_t)sqlite3_column_bytes(st, 5), &pt, &len);
            if (!e) {
                o->body = hsdk_grow_plaintext(pt, len);
                if (!o->body) {
                    e = HUSH_ERR_NOMEM;
                } else {
                    o->body[len] = '\0';
                    o->body_len = len;
                }
            }
        }
        sqlite3_reset(st);
        if (e)
            hush_outbox_entry_free(o);
        else
            *out = o;
    }
    hsdk_unlock(c);
    return e;
}

hush_err hush_outbox_count(hush_client *c, uint32_t *count)
{
    if (!c || !count)
        return HUSH_ERR_INVALID_ARG;
    *count = 0;
    hsdk_lock(c);
    int64_t n = 0;
    hush_err e = hsdk_query_int(c, "SELECT count(*) FROM outbox", NULL, &n);
    hsdk_unlock(c);
    if (!e)
        *count = (uint32_t)n;
    return e;
}

static hush_err outbox_by_id(hush_client *c, const char *sql, const uint8_t mid[16])
{
    if (!c || !mid)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, sql, &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
        se = hstore_run(c->db, st);
    }
    hush_err e = hsdk_from_store(se);
    if (!e && hstore_changes(c->db) == 0)
        e = HUSH_ERR_NOT_FOUND;
    hsdk_unlock(c);
    return e;
}

hush_err hush_outbox_attempted(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES])
{
    return outbox_by_id(c, "UPDATE outbox SET attempts = attempts + 1 WHERE message_id = ?1", message_id);
}

hush_err hush_outbox_done(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES])
{
    hush_err e = outbox_by_id(c, "DELETE FROM outbox WHERE message_id = ?1", message_id);
    if (e != HUSH_OK)
        return e;
    /* and the ciphertexts kept for its retries, if it had any */
    e = outbox_by_id(c, "DELETE FROM outbox_envelopes WHERE message_id = ?1", message_id);
    return e == HUSH_ERR_NOT_FOUND ? HUSH_OK : e;
}

/* ---------------------------------------------------------------------------------------- */
/* message states and read marks (the history rows of this device's own messages) */

/* Runs `sql` once per message id: ?1 = peer, ?2 = the id, and ?3 = state when it has a third. */
static hush_err update_by_ids(hush_client *c, const char *sql, const char *peer, int state, const uint8_t *ids, size_t n)
{
    sqlite3_stmt *st;
    for (size_t i = 0; i < n; i++) {
        hstore_err se = hstore_prepare(c->db, sql, &st);
        if (!se) {
            sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
            sqlite3_bind_blob(st, 2, ids + i * HUSH_MESSAGE_ID_BYTES, HUSH_MESSAGE_ID_BYTES, SQLITE_TRANSIENT);
            if (sqlite3_bind_parameter_count(st) >= 3)
                sqlite3_bind_int(st, 3, state);
            se = hstore_run(c->db, st);
        }
        if (se)
            return hsdk_from_store(se);
    }
    return HUSH_OK;
}

hush_err hsdk_apply_receipt(hush_client *c, const char *peer, int state, const uint8_t *ids, size_t n)
{
    /* Only our own messages to that peer move, and only forward. */
    return update_by_ids(c, "UPDATE history SET state = ?3 WHERE peer = ?1 AND outgoing = 1 AND group_id = '' AND "
                            "message_id = ?2 AND state >= 0 AND state < ?3", peer, state, ids, n);
}

hush_err hsdk_history_sync_read(hush_client *c, const char *peer, const uint8_t *ids, size_t n)
{
    /* pairwise messages from peer, and peer's messages in rooms */
    return update_by_ids(c, "UPDATE history SET read = 1 WHERE peer = ?1 AND outgoing = 0 AND message_id = ?2", peer, 0,
                         ids, n);
}

int hsdk_history_room_of_sent(hush_client *c, const uint8_t mid[16], char group[HUSH_GROUP_ID_MAX + 1])
{
    sqlite3_stmt *st;
    int row = 0;
    group[0] = '\0';
    if (hstore_prepare(c->db, "SELECT group_id FROM history WHERE message_id = ?1 AND outgoing = 1 AND peer = ?2 AND "
                              "group_id != '' LIMIT 1", &st) != HSTORE_OK)
        return 0;
    sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, c->username, -1, SQLITE_TRANSIENT);
    if (hstore_step(c->db, st, &row) == HSTORE_OK && row) {
        snprintf(group, HUSH_GROUP_ID_MAX + 1, "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_reset(st);
    }
    return group[0] != '\0';
}

hush_err hsdk_set_message_state(hush_client *c, const uint8_t mid[16], int state)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "UPDATE history SET state = ?2 WHERE outgoing = 1 AND message_id = ?1 AND "
                                          "(state < ?2 OR ?2 < 0)", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 2, state);
        se = hstore_run(c->db, st);
    }
    return hsdk_from_store(se);
}

hush_err hush_message_state(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES], hush_msg_state *state)
{
    if (!c || !message_id || !state)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    sqlite3_stmt *st;
    int row = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT state FROM history WHERE outgoing = 1 AND message_id = ?1 LIMIT 1", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, message_id, 16, SQLITE_TRANSIENT);
        se = hstore_step(c->db, st, &row);
    }
    hush_err e = hsdk_from_store(se);
    if (!e && row) {
        *state = (hush_msg_state)sqlite3_column_int(st, 0);
        sqlite3_reset(st);
    } else if (!e) {
        e = HUSH_ERR_NOT_FOUND;
    }
    hsdk_unlock(c);
    return e;
}

hush_err hsdk_history_received(hush_client *c, int64_t local_id, char peer[HUSH_USERNAME_MAX + 1], uint8_t mid[16],
                               int *read, char group[HUSH_GROUP_ID_MAX + 1])
{
    sqlite3_stmt *st;
    int row = 0;
    *read = 0;
    group[0] = '\0';
    hstore_err se = hstore_prepare(c->db, "SELECT peer, message_id, read, group_id FROM history WHERE id = ?1 AND "
                                          "outgoing = 0", &st);
    if (!se) {
        sqlite3_bind_int64(st, 1, local_id);
        se = hstore_step(c->db, st, &row);
    }
    hush_err e = hsdk_from_store(se);
    if (!e && row) {
        snprintf(peer, HUSH_USERNAME_MAX + 1, "%s", (const char *)sqlite3_column_text(st, 0));
        if (sqlite3_column_bytes(st, 1) == 16)
            memcpy(mid, sqlite3_column_blob(st, 1), 16);
        else
            e = HUSH_ERR_DB_CORRUPT;
        *read = sqlite3_column_int(st, 2);
        snprintf(group, HUSH_GROUP_ID_MAX + 1, "%s", (const char *)sqlite3_column_text(st, 3));
        sqlite3_reset(st);
    } else if (!e) {
        e = HUSH_ERR_NOT_FOUND;
    }
    return e;
}

hush_err hsdk_history_set_read(hush_client *c, int64_t local_id)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "UPDATE history SET read = 1 WHERE id = ?1", &st);
    if (!se) {
        sqlite3_bind_int64(st, 1, local_id);
        se = hstore_run(c->db, st);
    }
    return hsdk_from_store(se);
}

void hsdk_history_set_notified(hush_client *c, int64_t local_id)
{
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "UPDATE history SET notified = 1 WHERE id = ?1", &st) != HSTORE_OK)
        return;
    sqlite3_bind_int64(st, 1, local_id);
    if (hstore_run(c->db, st) != HSTORE_OK) {
        /* best effort: the message is reported once more after a restart (same local_id) */
    }
}

hush_err hsdk_history_sent_to_group(hush_client *c, const char *group, const uint8_t mid[16], int *kind,
                                    uint64_t *sent_at, uint8_t **body, size_t *len)
{
    *body = NULL;
    *len = 0;
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "SELECT kind, sent_at, body FROM history WHERE peer = ?1 AND peer_device = 0 AND "
                                          "outgoing = 1 AND group_id = ?2 AND message_id = ?3", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_text(st, 1, c->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, group, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, mid, 16, SQLITE_TRANSIENT);
    int row = 0;
    if ((se = hstore_step(c->db, st, &row)) || !row)
        return se ? hsdk_from_store(se) : HUSH_ERR_NOT_FOUND;
    *kind = sqlite3_column_int(st, 0);
    *sent_at = (uint64_t)sqlite3_column_int64(st, 1);
    char ad[256];
    history_ad(ad, sizeof ad, c->username, 0, 1, group, mid);
    hush_err e = hsdk_open(c, ad, sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2), body, len);
    sqlite3_reset(st);
    return e;
}

int64_t hsdk_history_next_unnotified(hush_client *c, char peer[HUSH_USERNAME_MAX + 1],
                                     char group[HUSH_GROUP_ID_MAX + 1])
{
    sqlite3_stmt *st;
    int row = 0;
    int64_t id = 0;
    peer[0] = 0;
    group[0] = 0;
    if (hstore_prepare(c->db, "SELECT id, peer, group_id FROM history WHERE notified = 0 ORDER BY id LIMIT 1", &st) ==
            HSTORE_OK &&
        hstore_step(c->db, st, &row) == HSTORE_OK && row) {
        id = sqlite3_column_int64(st, 0);
        snprintf(peer, HUSH_USERNAME_MAX + 1, "%s", (const char *)sqlite3_column_text(st, 1));
        snprintf(group, HUSH_GROUP_ID_MAX + 1, "%s", (const char *)sqlite3_column_text(st, 2));
        sqlite3_reset(st);
    }
    return id;
}

/* ---------------------------------------------------------------------------------------- */
/* the outbox as the network thread walks it, and the envelopes made for each row */

int hsdk_outbox_next_after(hush_client *c, int64_t after, const char *skip_peer, int64_t *id,
                           char peer[HUSH_USERNAME_MAX + 1], uint8_t mid[16], int *kind, uint8_t **body, size_t *len)
{
    sqlite3_stmt *st;
    int row = 0, found = 0;
    if (hstore_prepare(c->db, "SELECT id, peer, message_id, kind, body FROM outbox WHERE id > ?1 AND peer != ?2 "
                              "ORDER BY id LIMIT 1", &st) == HSTORE_OK) {
        sqlite3_bind_int64(st, 1, after);
        sqlite3_bind_text(st, 2, skip_peer, -1, SQLITE_TRANSIENT);
        if (hstore_step(c->db, st, &row) == HSTORE_OK && row) {
            const char *p = (const char *)sqlite3_column_text(st, 1);
            *id = sqlite3_column_int64(st, 0);
            snprintf(peer, HUSH_USERNAME_MAX + 1, "%s", p ? p : "");
            if (sqlite3_column_bytes(st, 2) == 16)
                memcpy(mid, sqlite3_column_blob(st, 2), 16);
            *kind = sqlite3_column_int(st, 3);
            char ad[160];
            hsdk_outbox_ad(ad, sizeof ad, peer, mid);
            found = hsdk_open(c, ad, sqlite3_column_blob(st, 4), (size_t)sqlite3_column_bytes(st, 4), body, len) ==
                    HUSH_OK;
            sqlite3_reset(st);
        }
    }
    return found;
}

hush_err hsdk_outbox_empty(hush_client *c, int *empty)
{
    int64_t v = 0;
    /* O(1), not count(*): this runs on every acknowledgement while a backlog drains */
    hush_err e = hsdk_query_int(c, "SELECT NOT EXISTS (SELECT 1 FROM outbox)", NULL, &v);
    *empty = (int)v;
    return e;
}

static hstore_err delete_by_mid(hush_client *c, const char *sql, const uint8_t mid[16], int kind)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, sql, &st);
    if (se)
        return se;
    sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
    if (kind >= 0)
        sqlite3_bind_int(st, 2, kind);
    return hstore_run(c->db, st);
}

hush_err hsdk_outbox_remove_text(hush_client *c, const uint8_t mid[16])
{
    hstore_err se = delete_by_mid(c, "DELETE FROM outbox WHERE message_id = ?1 AND kind = ?2", mid,
                                  HUSH__CONTENT_KIND__CONTENT_TEXT);
    if (se)
        return hsdk_from_store(se);
    if (hstore_changes(c->db) == 0)
        return HUSH_ERR_NOT_FOUND;
    return hsdk_from_store(delete_by_mid(c, "DELETE FROM outbox_envelopes WHERE message_id = ?1", mid, -1));
}

void hsdk_outbox_remove(hush_client *c, int64_t outbox_id, const uint8_t mid[16])
{
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "DELETE FROM outbox WHERE id = ?1", &st) == HSTORE_OK) {
        sqlite3_bind_int64(st, 1, outbox_id);
        if (hstore_run(c->db, st) != HSTORE_OK) {
            /* the caller's commit fails too, and the row is resent (same id, deduplicated) */
        }
    }
    hsdk_envelopes_forget(c, mid);
}

void hsdk_envelopes_forget(hush_client *c, const uint8_t mid[16])
{
    if (delete_by_mid(c, "DELETE FROM outbox_envelopes WHERE message_id = ?1", mid, -1) != HSTORE_OK) {
        /* best effort: a stale envelope is only resent, never shown twice */
    }
}

uint8_t *hsdk_envelope_get(hush_client *c, const uint8_t mid[16], const char *name, uint32_t dev, size_t *len)
{
    sqlite3_stmt *st;
    int row = 0;
    uint8_t *out = NULL;
    if (hstore_prepare(c->db, "SELECT envelope FROM outbox_envelopes WHERE message_id = ?1 AND name = ?3 AND device_id = ?2",
                       &st) == HSTORE_OK) {
        sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        sqlite3_bind_text(st, 3, name, -1, SQLITE_TRANSIENT);
        if (hstore_step(c->db, st, &row) == HSTORE_OK && row) {
            *len = (size_t)sqlite3_column_bytes(st, 0);
            out = malloc(*len ? *len : 1);
            if (out)
                memcpy(out, sqlite3_column_blob(st, 0), *len);
            sqlite3_reset(st);
        }
    }
    return out;
}

hush_err hsdk_envelope_put(hush_client *c, const uint8_t mid[16], const char *name, uint32_t dev, const uint8_t *env,
                           size_t len)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT OR REPLACE INTO outbox_envelopes (message_id, name, device_id, envelope) "
                                          "VALUES (?1, ?4, ?2, ?3)", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        sqlite3_bind_blob(st, 3, env, (int)len, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 4, name, -1, SQLITE_TRANSIENT);
        se = hstore_run(c->db, st);
    }
    return hsdk_from_store(se);
}
