/*
 * jobs.h - the storage thread's job handlers and what they share (internal to relay/): the job
 * context they answer through (jobctx.c), the handlers by table owner (accounts.c, mailbox.c,
 * presence.c), and the environment the batch loop (storage.c) sets up. Handlers run on the storage
 * thread only, inside the batch's transaction; they never commit and never post directly.
 */
#ifndef HUSH_RELAY_JOBS_H
#define HUSH_RELAY_JOBS_H

#include "relay.h"

/* What the batch loop opened for the handlers (set before the storage thread starts). */
struct storage_env {
    hstore *db;
    const struct relay_config *cfg;
};
extern struct storage_env senv;

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
struct sendwait;
struct pend;
/* Work to finish once the job's batch committed (committed = 1), or to drop when the job or its
 * batch was undone (0). */
struct commit_hook {
    struct commit_hook *next;
    void (*fn)(void *arg, int committed);
    void *arg;
};
struct jctx {
    struct commit_hook *hooks; /* the job's, newest first */
    struct posting *posts; /* posted after COMMIT, newest first */
    struct posting *now;   /* posted as soon as the job succeeded, before the COMMIT, newest first */
    struct pend *new_pending; /* messages the job left waiting for their ack (undone if it fails) */
    struct sendwait *commit_wait; /* the job's send answered once its written rows commit... */
    int commit_rows;       /* ...that many of them */
    int rollback;          /* the job's writes must be undone (a logical error) */
    const char *auth_why;  /* a failed proof's reason, when it says nothing about the account */
    hstore_err store_err;  /* a storage failure inside the job */
    int64_t inserted, deleted, expired;
    int64_t written, unwritten; /* early delivery: waiting rows written / acknowledged before */
    int registered;        /* accounts_register stored a device (for devices_recover_register) */
    Hush__SetPresenceAllowRequest *allow_apply;
    char allow_owner[RELAY_USERNAME_MAX + 1];
    int ndeltas;           /* -1: too many to track, clear the quota cache */
    struct delta deltas[MAX_DELTAS]; /* last: not cleared between jobs */
};

/* Runs fn(arg, 1) after the batch's COMMIT, or fn(arg, 0) if the job or the batch is undone (fn
 * frees arg either way). Without memory for the hook, fn(arg, 0) runs at once. */
void jctx_on_commit(struct jctx *x, void (*fn)(void *arg, int committed), void *arg);
/* Runs and frees a list of hooks, oldest first. */
void jctx_run_hooks(struct commit_hook *list, int committed);

/* Queues an event for `loop`, posted after COMMIT (dropped on rollback). Takes ownership of e. */
void jctx_post(struct jctx *x, int loop, struct event *e);
/* The same, posted as soon as the job's savepoint is released, before the COMMIT: only for what may
 * be seen before it is durable (a delivery whose sender is not yet answered, an answer made
 * durable elsewhere). */
void jctx_post_now(struct jctx *x, int loop, struct event *e);
/* A Result for request req_id of connection conn on loop (nothing when req_id is 0), posted after
 * the COMMIT, or before it when `now` (jctx_post_now's rule). */
void jctx_result_to(struct jctx *x, int loop, uint64_t conn, uint64_t req_id, Hush__Result *r, int now);
/* The request's Result (nothing when the job has no request id). */
void jctx_reply(struct jctx *x, const struct job *j, Hush__Result *r);
void jctx_reply_code(struct jctx *x, const struct job *j, Hush__ErrorCode code, const char *msg);
/* A logical error: the job's writes are undone and it is answered with `code`. */
void jctx_fail(struct jctx *x, const struct job *j, Hush__ErrorCode code, const char *msg);

/* Inside a handler: a storage error ends the job (the batch loop answers STORAGE_FAILED). */
#define CHECK_SE(expr)                \
    do {                              \
        hstore_err _se = (expr);      \
        if (_se) {                    \
            x->store_err = _se;       \
            return;                   \
        }                             \
    } while (0)

/* accounts.c: users, devices, one_time_prekeys, invites, link_tokens */
int accounts_init(char *err, size_t errlen);
void accounts_free(void);
void accounts_register(struct jctx *x, const struct job *j);
void accounts_login(struct jctx *x, const struct job *j);
void accounts_upload(struct jctx *x, const struct job *j);
void accounts_fetch_bundles(struct jctx *x, const struct job *j);
void accounts_disconnect(struct jctx *x, const struct job *j);
/* ListDevicesRequest: the requester's user's devices (id, created, last seen, sealed name, online). */
void accounts_list_devices(struct jctx *x, const struct job *j);
/* RecoverRequest: the proof by the user's recovery key (the same answer and work for an unknown
 * user or one without a key); reserves the next device id. */
void accounts_recover(struct jctx *x, const struct job *j);
/* A link token for the job's user, reserving its next device id (TOO_MANY_DEVICES, RATE_LIMITED). */
void accounts_link_token(struct jctx *x, const struct job *j);
/* Deletes link tokens a day past their expiry. */
void accounts_expire(struct jctx *x);
/* The devices `user` has, in id order: *n of them (at most max; 0 for an unknown user). */
hstore_err accounts_user_devices(const char *user, uint32_t *devs, size_t max, size_t *n);
hstore_err accounts_add_invite(hstore *db, const uint8_t token_hash[32]);
/* DeviceListChanged to `user`'s connected devices other than `except` (after COMMIT). */
void accounts_tell_device_list_changed(struct jctx *x, const char *user, uint32_t except);
/* Deletes one device (its prekeys with it) / a user (devices, prekeys, link tokens with it);
 * *deleted = 1 when there was one. Any database handle (hushd's or `hushd user`'s). */
hstore_err accounts_delete_device(hstore *db, const char *user, uint32_t dev, int *deleted);
hstore_err accounts_delete_user(hstore *db, const char *user, int *deleted);
/* Calls fn for each device of `user`; with user NULL, for each device not seen since
 * idle_before_ms that is not its user's most recently seen one (at most 1000 a call). */
hstore_err accounts_each_device(hstore *db, const char *user, uint64_t idle_before_ms,
                                void (*fn)(void *ctx, const char *user, uint32_t dev, uint64_t created_ms, uint64_t last_seen_ms),
                                void *ctx);
/* At start: each user's last-seen time (the newest of its devices), for presence. */
void accounts_each_last_seen(hstore *db, void (*fn)(const char *user, uint64_t last_seen_ms, void *ctx), void *ctx);

/* push.c: push_endpoints, and which devices have a wake-up pending */
int push_init(char *err, size_t errlen);
void push_free(void);
/* PushRegisterRequest / PushRemoveRequest of the job's device. */
void push_job_register(struct jctx *x, const struct job *j);
/* JOB_PUSH_GONE: deletes the device's endpoint if it is still the one named. */
void push_job_gone(struct jctx *x, const struct job *j);
/* A message for (user, dev), which has no live connection, is being stored by this job: a wake-up
 * goes after the commit unless one is pending. */
void push_note_stored(struct jctx *x, const char *user, uint32_t dev, int urgent);
/* Whether a wake-up could go to the device (push on, a live endpoint, nothing pending yet): asked
 * before looking at its mailbox, so a device without an endpoint costs one indexed read. */
int push_could_wake(struct jctx *x, const char *user, uint32_t dev);
/* The device logged in or drained its mailbox: nothing pending any more. */
void push_device_here(const char *user, uint32_t dev);
/* Forgets pending marks older than a day (with the expiry job). */
void push_expire(void);
/* Every endpoint not gone, as a wake-up to copy (fn must not keep w); and a wake-up handed over
 * now, its device marked (for mail already on disk: at start, storage.c wakes every device with an
 * endpoint and mail waiting, since a wake-up queued when the relay stopped or crashed was lost). */
hstore_err push_each_endpoint(hstore *db, void (*fn)(void *ctx, const struct push_wake *w), void *ctx);
void push_wake_now(const struct push_wake *w, int urgent);
/* For `hushd user show`: "none", the endpoint's host, or the host and " (gone)". */
hstore_err push_describe(hstore *db, const char *user, uint32_t dev, char *out, size_t cap);

/* mailbox.c: mailbox */
int mailbox_init(char *err, size_t errlen);
void mailbox_free(void);
void mailbox_send(struct jctx *x, const struct job *j);
void mailbox_fetch(struct jctx *x, const struct job *j);
void mailbox_ack(struct jctx *x, const struct job *j);
void mailbox_expire(struct jctx *x);
/* Deletes the mailbox of (user, dev), or of all the user's devices when dev is 0. */
hstore_err mailbox_delete_for(hstore *db, const char *user, uint32_t dev);
/* Messages waiting in (user, dev)'s mailbox. */
hstore_err mailbox_count_for(hstore *db, const char *user, uint32_t dev, int64_t *count);
/* After a job's savepoint was released: its quota changes reach the cache. */
void mailbox_apply_deltas(struct jctx *x);
/* Early delivery (see mailbox.c). A job failed or was rolled back: the messages it left waiting
 * are forgotten. A job succeeded: its send's written rows are answered at this batch's COMMIT. */
void mailbox_job_failed(struct jctx *x);
void mailbox_job_done(struct jctx *x);
/* Writes the waiting messages that are due (all of them when `all`), inside the batch. */
void mailbox_flush_pending(struct jctx *x, int all);
/* After the batch's COMMIT (ok) or its failure: the sends waiting on written rows are answered
 * (their postings go to x), and the rows written in a failed batch are forgotten. */
void mailbox_batch_end(struct jctx *x, int ok);
/* A device left: when mail waits for it (unacknowledged, or not yet handed over) and it has no
 * other connection, it is woken (push.c decides whether and how). */
void mailbox_wake_if_waiting(struct jctx *x, const char *user, uint32_t dev);
/* Whether unexpired mail waits for (user, dev), and whether any of it was sent urgent. */
hstore_err mailbox_waiting_for(hstore *db, const char *user, uint32_t dev, int *waiting, int *urgent);
/* Messages waiting for their ack unwritten, and when the first is due (ms; 0: none). */
size_t mailbox_pending(uint64_t *due_ms);
/* Forgets the quota cache (after a failed commit: it is rebuilt from the table). */
void mailbox_quota_clear(void);

/* devices.c: removing devices (no table of its own: accounts.c's and mailbox.c's rows) */
/* RemoveDeviceRequest: the device, its prekeys and its mailbox go; its connection is closed
 * (DEVICE_REMOVED) and the user's other devices told (DeviceListChanged). */
void devices_remove(struct jctx *x, const struct job *j);
/* Removes devices idle for device_idle_days (never a user's most recently seen one). */
void devices_expire_idle(struct jctx *x);
/* A recovering user's registration (accounts_register), then every other device of the user goes. */
void devices_recover_register(struct jctx *x, const struct job *j);

/* presence.c: presence_allow */
void presence_job_set_allow(struct jctx *x, const struct job *j);
/* A deleted user: its allow-list and its place in others' (the in-memory lists of a running relay
 * keep the name until restart: it has no device to be online with). */
hstore_err presence_delete_user(hstore *db, const char *user);

#endif
