/*
 * held.c - the table pending_inbox: envelopes held while their sender's identity change waits for
 * the user's decision. libsignal refuses such a message before checking any MAC, so nothing
 * vouches for these bytes: the receive path caps them per peer (count and bytes) before keeping
 * one, and they are reprocessed, in arrival order, once the decision is made.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

hush_err hsdk_held_stats(hush_client *c, const char *peer, uint32_t dev, int64_t *peer_count, int64_t *peer_bytes,
                         int64_t *dev_count)
{
    *peer_count = *peer_bytes = *dev_count = 0;
    sqlite3_stmt *st;
    int row = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT count(*), coalesce(sum(length(envelope)), 0), "
                                          "coalesce(sum(device_id = ?2), 0) FROM pending_inbox WHERE peer = ?1", &st);
    if (!se) {
        sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        se = hstore_step(c->db, st, &row);
        if (!se && row) {
            *peer_count = sqlite3_column_int64(st, 0);
            *peer_bytes = sqlite3_column_int64(st, 1);
            *dev_count = sqlite3_column_int64(st, 2);
            sqlite3_reset(st);
        }
    }
    return hsdk_from_store(se);
}

hush_err hsdk_held_put(hush_client *c, const char *peer, uint32_t dev, const uint8_t *env, size_t len, uint64_t now_ms)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT INTO pending_inbox (peer, device_id, envelope, received_at) "
                                          "VALUES (?1, ?2, ?3, ?4)", &st);
    if (!se) {
        sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        sqlite3_bind_blob(st, 3, env, (int)len, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4, (int64_t)now_ms);
        se = hstore_run(c->db, st);
    }
    return hsdk_from_store(se);
}

/* The join reads pending_identities (stores.c's) without writing it: one query instead of a
 * lookup per held envelope on every tick. */
int64_t hsdk_held_next_released(hush_client *c, char peer[HUSH_USERNAME_MAX + 1], uint32_t *dev, uint8_t **env,
                                size_t *len)
{
    sqlite3_stmt *st;
    int row = 0;
    int64_t id = 0;
    *env = NULL;
    *len = 0;
    peer[0] = 0;
    if (hstore_prepare(c->db, "SELECT p.id, p.peer, p.device_id, p.envelope FROM pending_inbox p WHERE NOT EXISTS "
                              "(SELECT 1 FROM pending_identities i WHERE i.name = CAST(p.peer AS BLOB) AND "
                              "i.device_id = p.device_id) ORDER BY p.id LIMIT 1", &st) == HSTORE_OK &&
        hstore_step(c->db, st, &row) == HSTORE_OK && row) {
        id = sqlite3_column_int64(st, 0);
        snprintf(peer, HUSH_USERNAME_MAX + 1, "%s", (const char *)sqlite3_column_text(st, 1));
        *dev = (uint32_t)sqlite3_column_int64(st, 2);
        *len = (size_t)sqlite3_column_bytes(st, 3);
        *env = malloc(*len ? *len : 1);
        if (*env)
            memcpy(*env, sqlite3_column_blob(st, 3), *len);
        sqlite3_reset(st);
    }
    return id;
}

void hsdk_held_delete(hush_client *c, int64_t id)
{
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "DELETE FROM pending_inbox WHERE id = ?1", &st) != HSTORE_OK)
        return;
    sqlite3_bind_int64(st, 1, id);
    if (hstore_run(c->db, st) != HSTORE_OK) {
        /* best effort: it is tried again and recognised as a duplicate */
    }
}

hush_err hsdk_held_drop(hush_client *c, const char *peer, uint32_t dev)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "DELETE FROM pending_inbox WHERE peer = ?1 AND device_id = ?2", &st);
    if (!se) {
        sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        se = hstore_run(c->db, st);
    }
    return hsdk_from_store(se);
}
