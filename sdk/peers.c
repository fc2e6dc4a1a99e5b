/*
 * peers.c - the table peer_devices: which device ids each contact has, as the relay last listed
 * them. The network code fills it after a directory fetch and reads it to fan a message out;
 * accepting a changed identity forgets it, so the next send fetches the list again.
 */
#include "internal.h"

int hsdk_peers_list(hush_client *c, const char *peer, uint32_t *devs, int max)
{
    hsdk_lock(c);
    sqlite3_stmt *st;
    int n = 0, row = 0;
    if (hstore_prepare(c->db, "SELECT device_id FROM peer_devices WHERE peer = ?1 ORDER BY device_id", &st) == HSTORE_OK) {
        sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
        while (n < max && hstore_step(c->db, st, &row) == HSTORE_OK && row)
            devs[n++] = (uint32_t)sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    hsdk_unlock(c);
    return n;
}

void hsdk_peers_forget(hush_client *c, const char *peer)
{
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "DELETE FROM peer_devices WHERE peer = ?1", &st) != HSTORE_OK)
        return;
    sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
    if (hstore_run(c->db, st) != HSTORE_OK) {
        /* best effort: a stale list costs a redundant fetch or a resend later */
    }
}

hush_err hsdk_peers_add(hush_client *c, const char *peer, uint32_t dev, uint64_t now_ms)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT OR REPLACE INTO peer_devices (peer, device_id, fetched_at) "
                                          "VALUES (?1, ?2, ?3)", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    sqlite3_bind_int64(st, 3, (int64_t)now_ms);
    return hsdk_from_store(hstore_run(c->db, st));
}
