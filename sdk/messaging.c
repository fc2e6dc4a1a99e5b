/*
 * messaging.c - the durable side of being online: hush_send through the outbox, message states,
 * receipts, read marks, presence preferences. Everything here commits locally and then wakes the
 * network thread (net_main.c), which does the talking.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "internal.h"
#include "net.h"

#define RECEIPT_DELIVERED 2
#define RECEIPT_READ 3

hush_err hsdk_queue_receipt(hush_client *c, const char *peer, int state, const uint8_t mid[16])
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT OR IGNORE INTO pending_receipts (peer, state, message_id, created_at) "
                                          "VALUES (?1, ?2, ?3, ?4)", &st);
    if (!se) {
        sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 2, state);
        sqlite3_bind_blob(st, 3, mid, 16, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4, (int64_t)hsdk_now_ms());
        se = hstore_run(c->db, st);
    }
    return hsdk_from_store(se);
}

#define RECEIPT_BATCH 256

hush_err hsdk_flush_receipts(hush_client *c, int *queued)
{
    *queued = 0;
    for (;;) {
        char peer[HUSH_USERNAME_MAX + 1] = "";
        int state = 0;
        uint8_t body[1 + RECEIPT_BATCH * HUSH_MESSAGE_ID_BYTES];
        size_t n = 0;
        sqlite3_stmt *st;
        int row = 0;
        hstore_err se = hstore_prepare(c->db, "SELECT peer, state FROM pending_receipts LIMIT 1", &st);
        if (!se)
            se = hstore_step(c->db, st, &row);
        if (se)
            return hsdk_from_store(se);
        if (!row)
            return HUSH_OK;
        snprintf(peer, sizeof peer, "%s", (const char *)sqlite3_column_text(st, 0));
        state = sqlite3_column_int(st, 1);
        sqlite3_reset(st);
        hush_err e = hsdk_begin(c);
        if (e)
            return e;
        se = hstore_prepare(c->db, "SELECT message_id FROM pending_receipts WHERE peer = ?1 AND state = ?2 LIMIT ?3", &st);
        if (!se) {
            sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int(st, 2, state);
            sqlite3_bind_int(st, 3, RECEIPT_BATCH);
            while ((se = hstore_step(c->db, st, &row)) == HSTORE_OK && row) {
                if (sqlite3_column_bytes(st, 0) == HUSH_MESSAGE_ID_BYTES && n < RECEIPT_BATCH)
                    memcpy(body + 1 + n++ * HUSH_MESSAGE_ID_BYTES, sqlite3_column_blob(st, 0), HUSH_MESSAGE_ID_BYTES);
            }
        }
        for (size_t i = 0; !se && i < n; i++) {
            se = hstore_prepare(c->db, "DELETE FROM pending_receipts WHERE peer = ?1 AND state = ?2 AND message_id = ?3", &st);
            if (!se) {
                sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
                sqlite3_bind_int(st, 2, state);
                sqlite3_bind_blob(st, 3, body + 1 + i * HUSH_MESSAGE_ID_BYTES, HUSH_MESSAGE_ID_BYTES, SQLITE_TRANSIENT);
                se = hstore_run(c->db, st);
            }
        }
        e = hsdk_from_store(se);
        if (!e && n && hsdk_valid_username(peer)) {
            body[0] = (uint8_t)state;
            uint8_t rid[16];
            randombytes_buf(rid, sizeof rid);
            e = hsdk_outbox_insert(c, peer, HUSH__CONTENT_KIND__CONTENT_RECEIPT, rid, body,
                                    1 + n * HUSH_MESSAGE_ID_BYTES);
        }
        e = hsdk_end(c, e);
        if (e)
            return e;
        (*queued)++;
    }
}

hush_err hush_send(hush_client *c, const char *peer, const uint8_t *text, size_t len,
                   uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES])
{
    if (!c || !hsdk_valid_username(peer) || (!text && len))
        return HUSH_ERR_INVALID_ARG;
    if (len > HUSH_MAX_BODY)
        return HUSH_ERR_TOO_BIG;
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    randombytes_buf(mid, sizeof mid);
    hsdk_lock(c);
    hush_err e = c->has_device ? HUSH_OK : HUSH_ERR_NO_DEVICE;
    if (!e && !strcmp(peer, c->username))
        e = HUSH_ERR_INVALID_ARG; /* to yourself: there is no other device of yours to deliver to */
    if (!e)
        e = hsdk_begin(c);
    if (!e) {
        /* Outbox row and history row (QUEUED) in one transaction, before anything leaves. */
        e = hsdk_outbox_insert(c, peer, HUSH__CONTENT_KIND__CONTENT_TEXT, mid, text, len);
        if (!e)
            e = hsdk_history_insert(c, peer, 0, 1, mid, HUSH_KIND_TEXT, "", hsdk_now_ms(), text, len, NULL, NULL);
        e = hsdk_end(c, e);
    }
    hsdk_unlock(c);
    if (e)
        return e;
    if (message_id_out)
        memcpy(message_id_out, mid, sizeof mid);
    hsdk_net_wake(c, NET_WAKE_OUTBOX);
    return HUSH_OK;
}

hush_err hush_outbox_cancel(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES])
{
    if (!c || !message_id)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = hsdk_begin(c);
    if (!e) {
        e = hsdk_outbox_remove_text(c, message_id); /* HUSH_ERR_NOT_FOUND: sent already, or unknown */
        if (!e)
            e = hsdk_set_message_state(c, message_id, HUSH_MSG_FAILED);
        e = hsdk_end(c, e);
    }
    hsdk_unlock(c);
    if (!e)
        hsdk_net_wake(c, NET_WAKE_OUTBOX);
    return e;
}

hush_err hush_mark_read(hush_client *c, int64_t local_id)
{
    if (!c || local_id <= 0)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    char peer[HUSH_USERNAME_MAX + 1] = "", group[HUSH_GROUP_ID_MAX + 1];
    uint8_t mid[16];
    int already = 0;
    hush_err e = hsdk_history_received(c, local_id, peer, mid, &already, group);
    if (!e && !already && (e = hsdk_begin(c)) == HUSH_OK) {
        e = hsdk_history_set_read(c, local_id);
        /* pairwise, and in rooms small enough for receipts */
        if (!e && hsdk_valid_username(peer) && (!group[0] || hsdk_room_wants_receipts(c, group)))
            e = hsdk_queue_receipt(c, peer, RECEIPT_READ, mid);
        if (!e) {
            int queued = 0;
            e = hsdk_flush_receipts(c, &queued); /* a read receipt goes out now, not on the next tick */
        }
        e = hsdk_end(c, e);
    }
    hsdk_unlock(c);
    if (!e && !already)
        hsdk_net_wake(c, NET_WAKE_OUTBOX);
    return e;
}

static hush_err set_prefs(hush_client *c, int kind, const char *const *users, size_t n)
{
    if (!c || (!users && n) || n > 1000)
        return HUSH_ERR_INVALID_ARG;
    for (size_t i = 0; i < n; i++)
        if (!hsdk_valid_username(users[i]))
            return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = hsdk_begin(c);
    sqlite3_stmt *st;
    if (!e) {
        hstore_err se = hstore_prepare(c->db, "DELETE FROM presence_prefs WHERE kind = ?1", &st);
        if (!se) {
            sqlite3_bind_int(st, 1, kind);
            se = hstore_run(c->db, st);
        }
        for (size_t i = 0; !se && i < n; i++) {
            se = hstore_prepare(c->db, "INSERT OR IGNORE INTO presence_prefs (kind, username) VALUES (?1, ?2)", &st);
            if (!se) {
                sqlite3_bind_int(st, 1, kind);
                sqlite3_bind_text(st, 2, users[i], -1, SQLITE_TRANSIENT);
                se = hstore_run(c->db, st);
            }
        }
        e = hsdk_from_store(se);
        e = hsdk_end(c, e);
    }
    hsdk_unlock(c);
    if (!e)
        hsdk_net_wake(c, NET_WAKE_PRESENCE);
    return e;
}

hush_err hush_presence_allow(hush_client *c, const char *const *users, size_t n)
{
    return set_prefs(c, PRESENCE_ALLOW, users, n);
}

hush_err hush_presence_subscribe(hush_client *c, const char *const *users, size_t n)
{
    return set_prefs(c, PRESENCE_SUBSCRIBE, users, n);
}

size_t hsdk_presence_prefs(hush_client *c, int kind, char **names, size_t max)
{
    sqlite3_stmt *st;
    int row = 0;
    size_t cnt = 0;
    if (hstore_prepare(c->db, "SELECT username FROM presence_prefs WHERE kind = ?1 ORDER BY username", &st) == HSTORE_OK) {
        sqlite3_bind_int(st, 1, kind);
        while (cnt < max && hstore_step(c->db, st, &row) == HSTORE_OK && row) {
            names[cnt] = strdup((const char *)sqlite3_column_text(st, 0));
            if (names[cnt])
                cnt++;
        }
        sqlite3_reset(st);
    }
    return cnt;
}
