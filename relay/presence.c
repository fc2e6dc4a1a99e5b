/*
 * presence.c - who may see whose presence, who subscribed, and who is online.
 *
 * A subscriber learns a target's state only if the target's allow-list names the subscriber. For
 * anything else - not allowed, unknown user - nothing is sent at all, so the two cannot be told
 * apart. State lives in memory (allow-lists and last-seen are loaded from the database at start
 * and persisted by the storage thread).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hmap.h"
#include "jobs.h"
#include "relay.h"

#define MAX_ALLOW 1000
#define MAX_SUBS_PER_CONN 1000

struct sub {
    int loop;
    uint64_t conn;
    char subscriber[RELAY_USERNAME_MAX + 1];
};

struct sublist {
    struct sub *v;
    size_t n, cap;
};

struct targets {
    char (*v)[RELAY_USERNAME_MAX + 1];
    size_t n;
};

struct pstate {
    int online;
    uint64_t last_seen;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct hmap g_allow;     /* owner -> struct hmap* (set of usernames) */
static struct hmap g_subs;      /* target -> struct sublist* */
static struct hmap g_conn_subs; /* conn id -> struct targets* */
static struct hmap g_state;     /* user -> struct pstate* */

static void free_set(void *p)
{
    hmap_free(p, NULL);
    free(p);
}

static void free_sublist(void *p)
{
    struct sublist *s = p;
    free(s->v);
    free(s);
}

static void free_targets(void *p)
{
    struct targets *t = p;
    free(t->v);
    free(t);
}

void presence_init(void)
{
    hmap_init(&g_allow, 256);
    hmap_init(&g_subs, 256);
    hmap_init(&g_conn_subs, 256);
    hmap_init(&g_state, 256);
}

void presence_free(void)
{
    hmap_free(&g_allow, free_set);
    hmap_free(&g_subs, free_sublist);
    hmap_free(&g_conn_subs, free_targets);
    hmap_free(&g_state, free);
}

static int allowed(const char *owner, const char *who)
{
    struct hmap *set = hmap_gets(&g_allow, owner);
    return set && hmap_gets(set, who) != NULL;
}

static struct pstate *state_of(const char *user, int create)
{
    struct pstate *s = hmap_gets(&g_state, user);
    if (!s && create) {
        s = calloc(1, sizeof *s);
        int err = 0;
        if (s) {
            hmap_put(&g_state, user, strlen(user), s, &err);
            if (err) {
                free(s);
                s = NULL;
            }
        }
    }
    return s;
}

static void push(const struct sub *s, const char *user, const struct pstate *st)
{
    Hush__PresenceUpdate pu = HUSH__PRESENCE_UPDATE__INIT;
    pu.username = (char *)user;
    pu.online = st ? st->online : 0;
    pu.last_seen_ms = st ? st->last_seen : 0;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_PRESENCE;
    f.presence = &pu;
    struct event *e = event_new(EV_SEND_FRAME, s->conn);
    if (!e)
        return;
    e->out = outbuf_from_frame(&f, 0);
    if (!e->out) {
        event_free(e);
        return;
    }
    loop_post(s->loop, e);
}

void presence_set_allow(const char *owner, char *const *users, size_t n)
{
    if (n > MAX_ALLOW)
        n = MAX_ALLOW;
    struct hmap *set = calloc(1, sizeof *set);
    if (!set || hmap_init(set, n * 2 + 16)) {
        free(set);
        return;
    }
    int err = 0;
    for (size_t i = 0; i < n; i++)
        hmap_put(set, users[i], strlen(users[i]), (void *)1, &err);
    pthread_mutex_lock(&g_mu);
    struct hmap *old = hmap_put(&g_allow, owner, strlen(owner), set, &err);
    /* Subscribers who just became allowed get the current state now; those who just stopped being
     * allowed get "offline, never seen" once, so what they last saw does not stay on their screen
     * (they knew of the user already; afterwards nothing more is sent to them). */
    struct sublist *sl = hmap_gets(&g_subs, owner);
    if (sl) {
        struct pstate *st = state_of(owner, 0);
        for (size_t i = 0; i < sl->n; i++) {
            int was = old && hmap_gets(old, sl->v[i].subscriber);
            int is = hmap_gets(set, sl->v[i].subscriber) != NULL;
            if (!was && is)
                push(&sl->v[i], owner, st);
            else if (was && !is)
                push(&sl->v[i], owner, NULL);
        }
    }
    pthread_mutex_unlock(&g_mu);
    if (old)
        free_set(old);
}

void presence_subscribe(int loop, uint64_t conn, const char *subscriber, char *const *targets, size_t n)
{
    pthread_mutex_lock(&g_mu);
    struct targets *t = hmap_get(&g_conn_subs, &conn, sizeof conn);
    if (!t) {
        t = calloc(1, sizeof *t);
        int err = 0;
        if (t)
            hmap_put(&g_conn_subs, &conn, sizeof conn, t, &err);
    }
    for (size_t i = 0; t && i < n && t->n < MAX_SUBS_PER_CONN; i++) {
        const char *target = targets[i];
        int dup = 0;
        for (size_t j = 0; j < t->n && !dup; j++)
            dup = !strcmp(t->v[j], target);
        if (dup)
            continue;
        void *nv = realloc(t->v, (t->n + 1) * sizeof *t->v);
        if (!nv)
            break;
        t->v = nv;
        snprintf(t->v[t->n++], RELAY_USERNAME_MAX + 1, "%s", target);
        struct sublist *sl = hmap_gets(&g_subs, target);
        if (!sl) {
            sl = calloc(1, sizeof *sl);
            int err = 0;
            if (!sl)
                break;
            hmap_put(&g_subs, target, strlen(target), sl, &err);
        }
        if (sl->n == sl->cap) {
            size_t nc = sl->cap ? sl->cap * 2 : 4;
            void *nvv = realloc(sl->v, nc * sizeof *sl->v);
            if (!nvv)
                break;
            sl->v = nvv;
            sl->cap = nc;
        }
        struct sub *s = &sl->v[sl->n++];
        s->loop = loop;
        s->conn = conn;
        snprintf(s->subscriber, sizeof s->subscriber, "%s", subscriber);
        if (allowed(target, subscriber))
            push(s, target, state_of(target, 0));
    }
    pthread_mutex_unlock(&g_mu);
}

void presence_unsubscribe_conn(uint64_t conn)
{
    pthread_mutex_lock(&g_mu);
    struct targets *t = hmap_del(&g_conn_subs, &conn, sizeof conn);
    for (size_t i = 0; t && i < t->n; i++) {
        struct sublist *sl = hmap_gets(&g_subs, t->v[i]);
        if (!sl)
            continue;
        for (size_t j = 0; j < sl->n;) {
            if (sl->v[j].conn == conn)
                sl->v[j] = sl->v[--sl->n];
            else
                j++;
        }
        if (sl->n == 0)
            free_sublist(hmap_del(&g_subs, t->v[i], strlen(t->v[i])));
    }
    pthread_mutex_unlock(&g_mu);
    if (t)
        free_targets(t);
}

void presence_changed(const char *user, int online, uint64_t last_seen_ms)
{
    pthread_mutex_lock(&g_mu);
    struct pstate *st = state_of(user, 1);
    if (st) {
        st->online = online;
        if (last_seen_ms)
            st->last_seen = last_seen_ms;
        struct sublist *sl = hmap_gets(&g_subs, user);
        for (size_t i = 0; sl && i < sl->n; i++)
            if (allowed(user, sl->v[i].subscriber))
                push(&sl->v[i], user, st);
    }
    pthread_mutex_unlock(&g_mu);
}

static void load_last_seen(const char *user, uint64_t last_seen_ms, void *ctx)
{
    (void)ctx;
    struct pstate *ps = state_of(user, 1);
    if (ps)
        ps->last_seen = last_seen_ms;
}

void presence_load(hstore *db)
{
    sqlite3 *h = hstore_handle(db);
    sqlite3_stmt *st = NULL;
    /* allow-lists */
    if (sqlite3_prepare_v2(h, "SELECT owner, allowed FROM presence_allow ORDER BY owner", -1, &st, NULL) == SQLITE_OK) {
        char owner[RELAY_USERNAME_MAX + 1] = "";
        char **users = NULL;
        size_t n = 0;
        for (;;) {
            int rc = sqlite3_step(st);
            const char *o = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
            const char *a = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 1) : NULL;
            if (rc == SQLITE_ROW && (!relay_valid_username(o) || !relay_valid_username(a))) {
                rlog(RLOG_WARN, "presence_load", "skipping an allow-list row with an invalid name");
                continue; /* a damaged or hand-edited row: never a crash at start */
            }
            if (n && (!o || strcmp(o, owner))) {
                presence_set_allow(owner, users, n);
                for (size_t i = 0; i < n; i++)
                    free(users[i]);
                n = 0;
            }
            if (rc != SQLITE_ROW)
                break;
            snprintf(owner, sizeof owner, "%s", o);
            char **nu = realloc(users, (n + 1) * sizeof *users);
            if (!nu)
                break;
            users = nu;
            users[n] = strdup(a);
            if (users[n])
                n++;
        }
        for (size_t i = 0; i < n; i++)
            free(users[i]);
        free(users);
    }
    sqlite3_finalize(st);
    pthread_mutex_lock(&g_mu);
    accounts_each_last_seen(db, load_last_seen, NULL);
    pthread_mutex_unlock(&g_mu);
}

/* The storage job of SetPresenceAllow: the table presence_allow belongs here (presence_load reads
 * it at start); the in-memory list is replaced after the batch commits (storage.c). */
void presence_job_set_allow(struct jctx *x, const struct job *j)
{
    const Hush__SetPresenceAllowRequest *r = j->frame->set_presence_allow;
    sqlite3_stmt *st;
    CHECK_SE(hstore_prepare(senv.db, "DELETE FROM presence_allow WHERE owner = ?1", &st));
    sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
    CHECK_SE(hstore_run(senv.db, st));
    for (size_t i = 0; i < r->n_usernames; i++) {
        CHECK_SE(hstore_prepare(senv.db, "INSERT OR IGNORE INTO presence_allow (owner, allowed) VALUES (?1, ?2)", &st));
        sqlite3_bind_text(st, 1, j->username, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, r->usernames[i], -1, SQLITE_TRANSIENT);
        CHECK_SE(hstore_run(senv.db, st));
    }
    x->allow_apply = (Hush__SetPresenceAllowRequest *)r;
    snprintf(x->allow_owner, sizeof x->allow_owner, "%s", j->username);
    jctx_reply_code(x, j, HUSH__ERROR_CODE__OK, "");
}

hstore_err presence_delete_user(hstore *db, const char *user)
{
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(db, "DELETE FROM presence_allow WHERE owner = ?1 OR allowed = ?1", &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_TRANSIENT);
    return hstore_run(db, st);
}
