/*
 * push.c - push endpoints, on the storage thread: the push_endpoints table (one Web Push endpoint
 * per device, deleted with the device), and the decision to wake a device. A message committed
 * for a device with no live connection and an endpoint, and no wake-up pending for it, hands one
 * wake-up to the push thread (pusher.c) after the commit; the mark clears when the device logs in
 * or drains its mailbox, or after PENDING_FORGET_MS (a phone that never came back is woken again
 * by newer mail a day later). Non-urgent mail marks a lower level, which urgent mail raises.
 * An endpoint the push service calls gone (404/410) is marked so and never tried again; the device
 * is told (PUSH_ENDPOINT_GONE) when it sends that endpoint again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <sodium.h>

#include "hmap.h"
#include "jobs.h"
#include "relay.h"

#define PENDING_FORGET_MS (24ull * 3600 * 1000)

struct pending {
    int level;        /* 1: a non-urgent wake-up went, 2: an urgent one */
    uint64_t at_ms;
};

static struct hmap pending; /* user\0dev -> struct pending* (storage thread only) */

int push_init(char *err, size_t errlen)
{
    if (hmap_init(&pending, 1024) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

void push_free(void) { hmap_free(&pending, free); }

static int pending_level(const char *user, uint32_t dev, uint64_t now)
{
    unsigned char k[RELAY_USERNAME_MAX + 5];
    struct pending *p = hmap_get(&pending, k, relay_dev_key(k, user, dev));
    return p && now - p->at_ms < PENDING_FORGET_MS ? p->level : 0;
}

void push_device_here(const char *user, uint32_t dev)
{
    unsigned char k[RELAY_USERNAME_MAX + 5];
    struct pending *p = hmap_del(&pending, k, relay_dev_key(k, user, dev));
    if (p) {
        free(p);
        pusher_cancel(user, dev);
    }
}

static void forget_old(const void *key, size_t klen, void *val, void *ctx)
{
    struct pending *p = val;
    if (*(const uint64_t *)ctx - p->at_ms >= PENDING_FORGET_MS) {
        hmap_del(&pending, key, klen);
        free(p);
    }
}

void push_expire(void)
{
    uint64_t now = relay_now_ms();
    hmap_foreach(&pending, forget_old, &now);
}

/* After the commit: mark the device and hand the wake-up over; on a rollback, forget it. */
static void wake_commit(void *arg, int committed)
{
    struct push_wake *w = arg;
    uint64_t now = relay_now_ms();
    int want = w->urgent ? 2 : 1;
    if (!committed || pending_level(w->user, w->dev, now) >= want) {
        sodium_memzero(w->auth, sizeof w->auth);
        free(w);
        return;
    }
    unsigned char k[RELAY_USERNAME_MAX + 5];
    size_t kl = relay_dev_key(k, w->user, w->dev);
    struct pending *p = hmap_get(&pending, k, kl);
    if (!p) {
        int err = 0;
        p = malloc(sizeof *p);
        if (p)
            hmap_put(&pending, k, kl, p, &err);
        if (!p || err) {
            free(p);
            p = NULL; /* no memory: wake it anyway, unmarked */
        }
    }
    if (p) {
        p->level = want;
        p->at_ms = now;
    }
    pusher_submit(w);
}

/* A row's url, p256dh and auth (columns c, c+1, c+2) into w; 0 when they are not well formed. */
static int wake_from_row(sqlite3_stmt *st, int c, struct push_wake *w)
{
    if (sqlite3_column_bytes(st, c) > PUSH_MAX_ENDPOINT || sqlite3_column_bytes(st, c + 1) != (int)sizeof w->p256dh ||
        sqlite3_column_bytes(st, c + 2) != (int)sizeof w->auth)
        return 0;
    snprintf(w->url, sizeof w->url, "%s", (const char *)sqlite3_column_text(st, c));
    memcpy(w->p256dh, sqlite3_column_blob(st, c + 1), sizeof w->p256dh);
    memcpy(w->auth, sqlite3_column_blob(st, c + 2), sizeof w->auth);
    return 1;
}

/* The device's live endpoint as a wake-up (*w NULL when it has none), unless a wake-up at least
 * as urgent is pending already. */
static hstore_err endpoint_wake(const char *user, uint32_t dev, int urgent, struct push_wake **w)
{
    *w = NULL;
    if (!pusher_enabled() || pending_level(user, dev, relay_now_ms()) >= (urgent ? 2 : 1))
        return HSTORE_OK;
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(senv.db, "SELECT url, p256dh, auth FROM push_endpoints WHERE username = ?1 AND "
                                            "device_id = ?2 AND gone = 0", &st);
    if (se)
        return se;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    int row = 0;
    se = hstore_step(senv.db, st, &row);
    if (!se && row && (*w = calloc(1, sizeof **w)) != NULL) {
        snprintf((*w)->user, sizeof (*w)->user, "%s", user);
        (*w)->dev = dev;
        (*w)->urgent = urgent;
        if (!wake_from_row(st, 0, *w)) {
            free(*w);
            *w = NULL;
        }
    }
    sqlite3_reset(st);
    return se;
}

void push_note_stored(struct jctx *x, const char *user, uint32_t dev, int urgent)
{
    struct push_wake *w;
    CHECK_SE(endpoint_wake(user, dev, urgent, &w));
    if (w)
        jctx_on_commit(x, wake_commit, w);
}

int push_could_wake(struct jctx *x, const char *user, uint32_t dev)
{
    struct push_wake *w = NULL;
    hstore_err se = endpoint_wake(user, dev, 1, &w);
    if (se)
        x->store_err = se;
    int could = w != NULL;
    if (w) {
        sodium_memzero(w->auth, sizeof w->auth);
        free(w);
    }
    return could;
}

void push_job_register(struct jctx *x, const struct job *j)
{
    sqlite3_stmt *st;
    if (j->frame->msg_case == HUSH__FRAME__MSG_PUSH_REMOVE) {
        CHECK_SE(hstore_prepare(senv.db, "DELETE FROM push_endpoints WHERE username = ?1 AND device_id = ?2", &st));
        sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, j->device_id);
        CHECK_SE(hstore_run(senv.db, st));
        rlog(RLOG_INFO, "push_endpoint_removed", "user=%s device=%u", j->username, j->device_id);
    } else {
        /* checked on the loop (webpush_endpoint_check) */
        const Hush__PushRegisterRequest *r = j->frame->push_register;
        /* the endpoint the push service said is gone, sent again (after a login): the device is
         * told, so that its app asks its distributor for a new one; the row stays as it is */
        CHECK_SE(hstore_prepare(senv.db, "SELECT 1 FROM push_endpoints WHERE username = ?1 AND device_id = ?2 AND "
                                      "url = ?3 AND gone = 1", &st));
        sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, j->device_id);
        sqlite3_bind_text(st, 3, r->endpoint, -1, SQLITE_TRANSIENT);
        int row = 0;
        hstore_err se = hstore_step(senv.db, st, &row);
        sqlite3_reset(st);
        CHECK_SE(se);
        if (row) {
            jctx_reply_code(x, j, HUSH__ERROR_CODE__PUSH_ENDPOINT_GONE,
                            "the push service said this endpoint no longer exists: get a new one");
            return;
        }
        CHECK_SE(hstore_prepare(senv.db, "INSERT OR REPLACE INTO push_endpoints (username, device_id, url, p256dh, auth, "
                                      "created_at, gone) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)", &st));
        sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, j->device_id);
        sqlite3_bind_text(st, 3, r->endpoint, -1, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 4, r->p256dh.data, (int)r->p256dh.len, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 5, r->auth.data, (int)r->auth.len, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 6, (int64_t)relay_now_ms());
        CHECK_SE(hstore_run(senv.db, st));
        rlog(RLOG_INFO, "push_endpoint_set", "user=%s device=%u", j->username, j->device_id);
    }
    /* a new endpoint (or none) starts without a pending wake-up */
    push_device_here(j->username, j->device_id);
    jctx_reply_code(x, j, HUSH__ERROR_CODE__OK, "");
}

void push_job_gone(struct jctx *x, const struct job *j)
{
    sqlite3_stmt *st;
    /* only if it is still the endpoint the push service refused (not one registered since); kept,
     * marked gone, so that the device hears of it when it sends the same endpoint again */
    CHECK_SE(hstore_prepare(senv.db, "UPDATE push_endpoints SET gone = 1 WHERE username = ?1 AND device_id = ?2 AND "
                                  "url = ?3 AND gone = 0", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->device_id);
    sqlite3_bind_text(st, 3, j->frame->push_register->endpoint, -1, SQLITE_TRANSIENT);
    CHECK_SE(hstore_run(senv.db, st));
    if (hstore_changes(senv.db))
        rlog(RLOG_INFO, "push_endpoint_dropped", "user=%s device=%u", j->username, j->device_id);
}

hstore_err push_describe(hstore *db, const char *user, uint32_t dev, char *out, size_t cap)
{
    sqlite3_stmt *st;
    snprintf(out, cap, "none");
    hstore_err e = hstore_prepare(db, "SELECT url, gone FROM push_endpoints WHERE username = ?1 AND device_id = ?2", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    int row = 0;
    if ((e = hstore_step(db, st, &row)))
        return e;
    if (row) {
        /* the host only: the rest of the URL is the device's token at its push service */
        char *host = NULL;
        CURLU *u = curl_url();
        if (u && curl_url_set(u, CURLUPART_URL, (const char *)sqlite3_column_text(st, 0), 0) == CURLUE_OK)
            curl_url_get(u, CURLUPART_HOST, &host, 0);
        snprintf(out, cap, "%s%s", host ? host : "(unreadable URL)", sqlite3_column_int(st, 1) ? " (gone)" : "");
        curl_free(host);
        curl_url_cleanup(u);
        sqlite3_reset(st);
    }
    return HSTORE_OK;
}

hstore_err push_each_endpoint(hstore *db, void (*fn)(void *ctx, const struct push_wake *w), void *ctx)
{
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(db, "SELECT username, device_id, url, p256dh, auth FROM push_endpoints WHERE gone = 0",
                                  &st);
    if (e)
        return e;
    struct push_wake *w = calloc(1, sizeof *w);
    if (!w) {
        sqlite3_reset(st);
        return HSTORE_ERR_NOMEM;
    }
    int row = 0;
    while ((e = hstore_step(db, st, &row)) == HSTORE_OK && row) {
        const char *user = (const char *)sqlite3_column_text(st, 0);
        if (!user || strlen(user) > RELAY_USERNAME_MAX || !wake_from_row(st, 2, w))
            continue;
        snprintf(w->user, sizeof w->user, "%s", user);
        w->dev = (uint32_t)sqlite3_column_int64(st, 1);
        fn(ctx, w);
    }
    sqlite3_reset(st);
    sodium_memzero(w->auth, sizeof w->auth);
    free(w);
    return e;
}

void push_wake_now(const struct push_wake *w, int urgent)
{
    struct push_wake *c = malloc(sizeof *c);
    if (!c)
        return;
    *c = *w;
    c->next = NULL;
    c->urgent = urgent;
    wake_commit(c, 1); /* marks the device and hands the wake-up over */
}
