/*
 * devices.c - the end of devices, for the storage thread: removal on request (the device itself,
 * or the user's first device), idle expiry, and the old devices of a user who recovered the
 * account. A device's rows live in two owners' tables (accounts.c: the device and its keys;
 * mailbox.c: its waiting messages); this file removes both in the job's transaction, closes the
 * device's connection and tells the user's other devices.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs.h"
#include "relay.h"

/* One device gone: its mailbox too; its connection is closed; the user's other devices told. */
static void remove_one(struct jctx *x, const char *user, uint32_t dev, int *removed)
{
    CHECK_SE(accounts_delete_device(senv.db, user, dev, removed));
    if (!*removed)
        return;
    CHECK_SE(mailbox_delete_for(senv.db, user, dev));
    x->deleted += hstore_changes(senv.db);
    x->ndeltas = -1; /* the quota cache forgets: reloaded from the table */
    struct dir_entry d;
    if (directory_lookup(user, dev, &d)) {
        struct event *k = event_new(EV_KICK, d.conn);
        if (k) {
            k->code = HUSH__ERROR_CODE__DEVICE_REMOVED;
            jctx_post(x, d.loop, k);
        }
    }
    accounts_tell_device_list_changed(x, user, dev);
    rlog(RLOG_INFO, "device_removed", "user=%s device=%u", user, dev);
}

void devices_remove(struct jctx *x, const struct job *j)
{
    uint32_t target = j->frame->remove_device->device_id;
    uint32_t devs[16];
    size_t n = 0;
    CHECK_SE(accounts_user_devices(j->username, devs, 16, &n));
    int exists = 0;
    for (size_t i = 0; i < n; i++)
        exists |= devs[i] == target;
    if (!exists) {
        jctx_fail(x, j, HUSH__ERROR_CODE__UNKNOWN_RECIPIENT, "no such device");
        return;
    }
    /* itself, or any other from the user's first (lowest-numbered) device */
    if (target != j->device_id && (n == 0 || devs[0] != j->device_id)) {
        jctx_fail(x, j, HUSH__ERROR_CODE__AUTH_FAILED, "only the account's first device removes other devices");
        return;
    }
    if (n == 1) {
        jctx_fail(x, j, HUSH__ERROR_CODE__BAD_REQUEST, "a user's last device cannot be removed");
        return;
    }
    int removed = 0;
    remove_one(x, j->username, target, &removed);
    if (x->store_err)
        return;
    jctx_reply_code(x, j, HUSH__ERROR_CODE__OK, "");
}

/* accounts_each_device's callback for removing several devices: all but `keep`, and, for idle
 * expiry, none that is connected (last_seen is written at login and logout, so a device connected
 * all along looks idle). */
struct removal {
    struct jctx *x;
    uint32_t keep;
    int skip_connected;
    int n;
};

static void remove_listed(void *ctx, const char *user, uint32_t dev, uint64_t created_ms, uint64_t last_seen_ms)
{
    (void)created_ms;
    (void)last_seen_ms;
    struct removal *rm = ctx;
    struct dir_entry d;
    if (rm->x->store_err || dev == rm->keep || (rm->skip_connected && directory_lookup(user, dev, &d)))
        return;
    int removed = 0;
    remove_one(rm->x, user, dev, &removed);
    rm->n += removed;
}

void devices_expire_idle(struct jctx *x)
{
    if (!senv.cfg->device_idle_days)
        return;
    uint64_t cutoff = relay_now_ms() - (uint64_t)senv.cfg->device_idle_days * 86400000ull;
    struct removal rm = { x, 0, 1, 0 };
    CHECK_SE(accounts_each_device(senv.db, NULL, cutoff, remove_listed, &rm));
    if (rm.n)
        rlog(RLOG_INFO, "idle_devices_removed", "count=%d days=%u", rm.n, senv.cfg->device_idle_days);
}

void devices_recover_register(struct jctx *x, const struct job *j)
{
    /* the new device first (its proof, keys and the recovery key checked there); then, in the same
     * transaction, every other device of the user goes */
    x->registered = 0;
    accounts_register(x, j);
    if (!x->registered || x->rollback || x->store_err)
        return;
    struct removal rm = { x, j->device_id, 0, 0 };
    CHECK_SE(accounts_each_device(senv.db, j->username, 0, remove_listed, &rm));
    rlog(RLOG_INFO, "recovered", "user=%s device=%u", j->username, j->device_id);
}
