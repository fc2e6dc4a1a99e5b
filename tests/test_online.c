/*
 * test_online.c - libhush online: real hushd on loopback, real SDK clients with their own network
 * threads and databases. Conversations, offline delivery, receipts, typing, presence, identity
 * change, relay restarts and kill -9 of the relay mid-stream.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <sodium.h>
#include <sqlite3.h>

#include "relay_util.h"
#include "util.h"
#include "wss.h"

#define MAXREC 4096

struct got {
    char from[33];
    char text[128];
    int64_t local_id;
    int kind;
    char group[HUSH_GROUP_ID_MAX + 1];
};

struct rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct got msgs[MAXREC];
    int nmsgs;
    int dup_local;      /* a local_id reported twice */
    uint8_t receipt_mid[MAXREC][16];
    int receipt_state[MAXREC];
    int nreceipts;
    int typing_on, typing_off;
    char presence_user[33];
    int presence_online, npresence;
    struct { /* every user reported, its last state and how many updates */
        char user[33];
        int online, n;
        uint64_t last_seen;
    } pres[8];
    int npres;
    char id_peer[33];
    char id_old[61], id_new[61];
    int nidentity;
    int online_events;
    int errors;
    char link_code[HUSH_LINK_CODE_MAX + 1];
    int nlink_codes;
    int nsent_elsewhere;
    char elsewhere_to[33];
    char elsewhere_text[128];
    int ndevices_changed;
    int bad_text;
    hush_client *self; /* for callbacks that call back into their own client */
    /* files */
    int nfile_msgs;
    uint8_t file_mid[16];   /* the last file message */
    int nfile_sent, nfile_ready, nfile_failed, nfile_progress;
    hush_err file_err;
    uint64_t file_done;     /* the last progress reported */
    int room_typing_on;     /* on_group_typing(typing = 1) */
    char room_typing_user[33];
    int room_errors;        /* on_error NOT_ALLOWED / GROUP_CONFLICT */
};

static void rec_init(struct rec *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
}

static void cb_message(void *ctx, const hush_message *m)
{
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (m->kind == HUSH_KIND_FILE) {
        memcpy(r->file_mid, m->message_id, 16);
        r->nfile_msgs++;
    }
    if (m->kind == HUSH_KIND_SENT_ELSEWHERE) {
        r->nsent_elsewhere++;
        snprintf(r->elsewhere_to, sizeof r->elsewhere_to, "%s", m->conversation);
        snprintf(r->elsewhere_text, sizeof r->elsewhere_text, "%.*s", (int)m->body_len, (const char *)m->body);
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        return;
    }
    for (int i = 0; i < r->nmsgs; i++)
        if (r->msgs[i].local_id == m->local_id)
            r->dup_local++;
    if (r->nmsgs < MAXREC) {
        struct got *g = &r->msgs[r->nmsgs++];
        snprintf(g->from, sizeof g->from, "%s", m->sender);
        snprintf(g->text, sizeof g->text, "%.*s", (int)m->body_len, (const char *)m->body);
        g->local_id = m->local_id;
        g->kind = m->kind;
        snprintf(g->group, sizeof g->group, "%s", m->group_id);
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void cb_receipt(void *ctx, const char *peer, const uint8_t mid[16], hush_msg_state st)
{
    (void)peer;
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (r->nreceipts < MAXREC) {
        memcpy(r->receipt_mid[r->nreceipts], mid, 16);
        r->receipt_state[r->nreceipts++] = st;
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void cb_typing(void *ctx, const char *peer, uint32_t dev, int typing)
{
    (void)peer;
    (void)dev;
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (typing)
        r->typing_on++;
    else
        r->typing_off++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void cb_group_typing(void *ctx, const char *group, const char *user, uint32_t dev, int typing)
{
    (void)group;
    (void)dev;
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (typing) {
        r->room_typing_on++;
        snprintf(r->room_typing_user, sizeof r->room_typing_user, "%s", user);
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void cb_presence(void *ctx, const char *user, int online, uint64_t last_seen)
{
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    snprintf(r->presence_user, sizeof r->presence_user, "%s", user);
    r->presence_online = online;
    r->npresence++;
    int k = 0;
    while (k < r->npres && strcmp(r->pres[k].user, user) != 0)
        k++;
    if (k < 8) {
        if (k == r->npres) {
            snprintf(r->pres[k].user, sizeof r->pres[k].user, "%s", user);
            r->npres++;
        }
        r->pres[k].online = online;
        r->pres[k].last_seen = last_seen;
        r->pres[k].n++;
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void cb_identity(void *ctx, const char *peer, uint32_t dev, const char *old_sn, const char *new_sn)
{
    (void)dev;
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    snprintf(r->id_peer, sizeof r->id_peer, "%s", peer);
    snprintf(r->id_old, sizeof r->id_old, "%s", old_sn);
    snprintf(r->id_new, sizeof r->id_new, "%s", new_sn);
    r->nidentity++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void cb_connection(void *ctx, hush_conn_state st, hush_err e)
{
    (void)e;
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (st == HUSH_CONN_ONLINE)
        r->online_events++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void cb_error(void *ctx, hush_err e, const char *detail)
{
    if (getenv("HUSH_TEST_VERBOSE"))
        fprintf(stderr, "cb_error: %s: %s\n", hush_strerror(e), detail);
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->errors++;
    for (const char *p = detail; p && *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            r->bad_text++; /* a relay's bytes reached the app unfiltered */
    pthread_mutex_unlock(&r->mu);
}

static void cb_link_code(void *ctx, const char *code)
{
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    snprintf(r->link_code, sizeof r->link_code, "%s", code);
    r->nlink_codes++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void cb_devices_changed(void *ctx, const char *user)
{
    (void)user;
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->ndevices_changed++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void cb_file(void *ctx, const uint8_t mid[16], int state, uint64_t done, uint64_t total, hush_err err)
{
    (void)mid;
    (void)total;
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (state == HUSH_FILE_SENT)
        r->nfile_sent++;
    else if (state == HUSH_FILE_READY)
        r->nfile_ready++;
    else if (state == HUSH_FILE_FAILED) {
        r->nfile_failed++;
        r->file_err = err;
    } else {
        r->nfile_progress++;
        r->file_done = done;
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Waits until *field >= want (read under the lock), at most ms. */
static int wait_count(struct rec *r, const int *field, int want, int ms)
{
    struct timespec dl;
    hwire_deadline(&dl, ms);
    pthread_mutex_lock(&r->mu);
    while (*field < want)
        if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) != 0)
            break;
    int ok = *field >= want;
    pthread_mutex_unlock(&r->mu);
    return ok;
}

struct user {
    hush_client *c;
    struct rec r;
    char name[33];
};

static hush_callbacks user_callbacks(struct user *u)
{
    hush_callbacks cb = { &u->r, cb_message, cb_receipt, cb_typing, cb_presence, cb_identity, cb_connection, cb_error,
                          cb_link_code, cb_devices_changed, cb_file, cb_group_typing };
    return cb;
}

/* A user whose database `dbname` holds no device yet (to be linked or recovered). */
static struct user *user_blank(const char *dbname, const char *name)
{
    struct user *u = calloc(1, sizeof *u);
    rec_init(&u->r);
    snprintf(u->name, sizeof u->name, "%s", name);
    uint8_t key[HUSH_DB_KEY_BYTES];
    test_key(dbname, key);
    char file[64];
    snprintf(file, sizeof file, "%s.db", dbname);
    assert_int_equal(hush_client_open(tpath(file), key, NULL, &u->c), HUSH_OK);
    return u;
}

static void user_start(struct user *u, const struct relay_proc *relay)
{
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", relay->port);
    hush_callbacks cb = user_callbacks(u);
    hush_net_opts o = { url, NULL, NULL, 0 };
    assert_int_equal(hush_net_start(u->c, &o, &cb), HUSH_OK);
    hush_err e = hush_net_wait_online(u->c, 15000);
    if (e)
        fail_msg("%s: not online: %s", u->name, hush_strerror(e));
}

static struct user *user_new(const struct relay_proc *relay, const char *name)
{
    struct user *u = calloc(1, sizeof *u);
    rec_init(&u->r);
    snprintf(u->name, sizeof u->name, "%s", name);
    u->c = open_client(name, 1, HUSH_DURABILITY_NORMAL);
    user_start(u, relay);
    return u;
}

static void user_free(struct user *u)
{
    hush_client_close(u->c);
    free(u);
}

static void send_text(struct user *u, const char *to, const char *text, uint8_t mid[16])
{
    hush_err e = hush_send(u->c, to, (const uint8_t *)text, strlen(text), mid);
    if (e)
        fail_msg("hush_send: %s", hush_strerror(e));
}

static int state_of(struct user *u, const uint8_t mid[16])
{
    hush_msg_state s = HUSH_MSG_QUEUED;
    if (hush_message_state(u->c, mid, &s) != HUSH_OK)
        return -9;
    return (int)s;
}

static int wait_state(struct user *u, const uint8_t mid[16], int want, int ms)
{
    for (int i = 0; i < ms / 20; i++) {
        if (state_of(u, mid) >= want)
            return 1;
        struct timespec ts = { 0, 20000000L };
        nanosleep(&ts, NULL);
    }
    return state_of(u, mid) >= want;
}

/* ------------------------------------------------------------------------------------------ */

static void test_three_users(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "three", NULL);
    struct user *a = user_new(&relay, "amy"), *b = user_new(&relay, "bob"), *c = user_new(&relay, "cat");
    uint8_t m1[16], m2[16], m3[16];
    send_text(a, "bob", "hello bob", m1);
    send_text(a, "cat", "hello cat", m2);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 1, 10000));
    assert_true(wait_count(&c->r, &c->r.nmsgs, 1, 10000));
    assert_string_equal(b->r.msgs[0].text, "hello bob");
    assert_string_equal(b->r.msgs[0].from, "amy");
    assert_string_equal(c->r.msgs[0].text, "hello cat");
    send_text(b, "amy", "hi amy, bob here", m3);
    send_text(c, "amy", "hi amy, cat here", NULL);
    assert_true(wait_count(&a->r, &a->r.nmsgs, 2, 10000));
    /* a conversation of 20 round trips among the three */
    for (int i = 0; i < 20; i++) {
        char t[64];
        snprintf(t, sizeof t, "round %d", i);
        send_text(a, "bob", t, NULL);
        send_text(b, "cat", t, NULL);
        send_text(c, "amy", t, NULL);
    }
    assert_true(wait_count(&a->r, &a->r.nmsgs, 22, 20000));
    assert_true(wait_count(&b->r, &b->r.nmsgs, 21, 20000));
    assert_true(wait_count(&c->r, &c->r.nmsgs, 21, 20000));
    /* order per sender is kept */
    int last = -1;
    for (int i = 0; i < b->r.nmsgs; i++) {
        int k;
        if (sscanf(b->r.msgs[i].text, "round %d", &k) == 1) {
            assert_true(k > last);
            last = k;
        }
    }
    /* states: SENT, then DELIVERED (receipt), then READ after the recipient marks it */
    assert_true(wait_state(a, m1, HUSH_MSG_DELIVERED, 10000));
    assert_int_equal(hush_mark_read(b->c, b->r.msgs[0].local_id), HUSH_OK);
    assert_true(wait_state(a, m1, HUSH_MSG_READ, 10000));
    assert_true(wait_state(b, m3, HUSH_MSG_DELIVERED, 10000));
    assert_int_equal(a->r.dup_local + b->r.dup_local + c->r.dup_local, 0);
    assert_int_equal(hush_net_flush(a->c, 10000), HUSH_OK);
    user_free(a);
    user_free(b);
    user_free(c);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

static void test_offline_1000(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "offline", NULL);
    struct user *a = user_new(&relay, "dan"), *b = user_new(&relay, "eve");
    hush_net_stop(b->c); /* eve goes offline */
    enum { N = 1000 };
    for (int i = 0; i < N; i++) {
        char t[32];
        snprintf(t, sizeof t, "msg %04d", i);
        send_text(a, "eve", t, NULL);
    }
    assert_int_equal(hush_net_flush(a->c, 60000), HUSH_OK); /* all acknowledged by the relay */
    user_start(b, &relay);
    assert_true(wait_count(&b->r, &b->r.nmsgs, N, 60000));
    for (int i = 0; i < N; i++) {
        char t[32];
        snprintf(t, sizeof t, "msg %04d", i);
        assert_string_equal(b->r.msgs[i].text, t); /* in order, each once */
    }
    assert_int_equal(b->r.dup_local, 0);
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

static void test_typing_presence(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "typing", NULL);
    struct user *a = user_new(&relay, "fay"), *b = user_new(&relay, "gus");
    send_text(a, "gus", "hi", NULL);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 1, 10000));
    assert_int_equal(hush_typing(a->c, "gus", 1), HUSH_OK);
    assert_true(wait_count(&b->r, &b->r.typing_on, 1, 5000));
    /* throttled: a second "typing" within 3 s is not sent */
    assert_int_equal(hush_typing(a->c, "gus", 1), HUSH_OK);
    assert_int_equal(hush_typing(a->c, "gus", 0), HUSH_OK);
    assert_true(wait_count(&b->r, &b->r.typing_off, 1, 5000));
    assert_int_equal(b->r.typing_on, 1);
    /* presence: gus allows fay; fay follows gus */
    const char *allow[] = { "fay" };
    assert_int_equal(hush_presence_allow(b->c, allow, 1), HUSH_OK);
    const char *follow[] = { "gus" };
    assert_int_equal(hush_presence_subscribe(a->c, follow, 1), HUSH_OK);
    assert_true(wait_count(&a->r, &a->r.npresence, 1, 5000));
    assert_string_equal(a->r.presence_user, "gus");
    assert_int_equal(a->r.presence_online, 1);
    int before = a->r.npresence;
    hush_net_stop(b->c);
    assert_true(wait_count(&a->r, &a->r.npresence, before + 1, 5000));
    assert_int_equal(a->r.presence_online, 0);
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* The relay operator adds a device "iggy/2" with keys it holds to iggy's directory entry (an edit
 * of its database between runs). hope, who knows iggy/1, must not trust it silently: a message from
 * it is held and reported as an identity change, nothing hal sends goes to it, and a bundle of it
 * is refused until hope accepts. */
/* One count from the relay database: `sql` with ?1 = user and, when it has one, ?2 = dev. */
static long relay_count(const char *db, const char *sql, const char *user, uint32_t dev)
{
    sqlite3 *h = NULL;
    long n = -1;
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK) {
            sqlite3_bind_text(st, 1, user, -1, SQLITE_STATIC);
            if (sqlite3_bind_parameter_count(st) > 1)
                sqlite3_bind_int64(st, 2, dev);
            if (sqlite3_step(st) == SQLITE_ROW)
                n = sqlite3_column_int64(st, 0);
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(h);
    return n;
}

static long mailbox_rows_for(const char *db, const char *user, uint32_t dev)
{
    return relay_count(db, "SELECT count(*) FROM mailbox WHERE recipient = ?1 AND recipient_device = ?2", user, dev);
}

/* Writes `ghost`'s device into the relay database as an operator could. */
static void inject_device(const char *db, hush_client *ghost, const char *user, uint32_t dev)
{
    uint8_t *b = NULL, auth[32];
    size_t blen = 0;
    assert_int_equal(hush_bundle_export(ghost, &b, &blen), HUSH_OK);
    assert_int_equal(hush_device_auth_key(ghost, auth), HUSH_OK);
    Hush__KeyBundle *kb = hush__key_bundle__unpack(NULL, blen, b);
    assert_non_null(kb);
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(h, "INSERT INTO devices (username, device_id, auth_key, identity_key, "
                                           "registration_id, spk_id, spk_public, spk_signature, spk_timestamp, created_at) "
                                           "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, "
                                           "CAST(strftime('%s', 'now') AS INTEGER) * 1000)", -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, user, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, dev);
    sqlite3_bind_blob(st, 3, auth, 32, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, kb->identity_key.data, (int)kb->identity_key.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, kb->registration_id);
    sqlite3_bind_int64(st, 6, kb->signed_pre_key->id);
    sqlite3_bind_blob(st, 7, kb->signed_pre_key->public_key.data, (int)kb->signed_pre_key->public_key.len, SQLITE_STATIC);
    sqlite3_bind_blob(st, 8, kb->signed_pre_key->signature.data, (int)kb->signed_pre_key->signature.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 9, (int64_t)kb->signed_pre_key->timestamp_ms);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(h);
    hush__key_bundle__free_unpacked(kb, NULL);
    hush_free(b);
}

/* The ghost device (iggy/2) writes to hope as a real device would: the relay wants iggy's other
 * device named too, so iggy/1 gets an envelope it cannot read. */
static int ghost_send(struct tclient *ghost, const uint8_t *env, size_t len, const uint8_t mid[16])
{
    uint8_t junk[64];
    randombytes_buf(junk, sizeof junk);
    Hush__Recipient r1 = HUSH__RECIPIENT__INIT, r2 = HUSH__RECIPIENT__INIT, *rp[2] = { &r1, &r2 };
    r1.username = "hope";
    r1.device_id = 1;
    r1.envelope.data = (uint8_t *)env;
    r1.envelope.len = len;
    r2.username = "iggy";
    r2.device_id = 1;
    r2.envelope.data = junk;
    r2.envelope.len = sizeof junk;
    Hush__SendRequest sr = HUSH__SEND_REQUEST__INIT;
    sr.client_msg_id.data = (uint8_t *)mid;
    sr.client_msg_id.len = 16;
    sr.n_recipients = 2;
    sr.recipients = rp;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_SEND;
    f.send = &sr;
    Hush__Frame *res = tc_request(ghost, &f, 10000);
    int code = res && res->msg_case == HUSH__FRAME__MSG_RESULT ? (int)res->result->code : -1;
    if (res)
        hush__frame__free_unpacked(res, NULL);
    return code;
}

static void test_ghost_device(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "ghost", NULL);
    struct user *a = user_new(&relay, "hope"), *b = user_new(&relay, "iggy");
    send_text(b, "hope", "hello from the real ida", NULL);
    assert_true(wait_count(&a->r, &a->r.nmsgs, 1, 10000));
    char iggy_sn[HUSH_SAFETY_NUMBER_LEN + 1];
    assert_int_equal(hush_safety_number(a->c, "iggy", 1, iggy_sn), HUSH_OK);

    /* the operator's device: its own keys under ida's name */
    uint8_t key[HUSH_DB_KEY_BYTES];
    test_key("ghost", key);
    hush_client *g = NULL;
    assert_int_equal(hush_client_open(tpath("ghost.db"), key, NULL, &g), HUSH_OK);
    assert_int_equal(hush_device_create(g, "iggy", 2), HUSH_OK);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
    inject_device(relay.db, g, "iggy", 2);
    relay_restart(&relay);
    assert_true(wait_count(&a->r, &a->r.online_events, 2, 15000));

    /* a bundle of the ghost device is not imported silently */
    uint8_t *gb = NULL;
    size_t gblen = 0;
    assert_int_equal(hush_bundle_export(g, &gb, &gblen), HUSH_OK);
    assert_int_equal(hush_bundle_import(a->c, gb, gblen, NULL, NULL), HUSH_ERR_IDENTITY_CHANGED);
    assert_false(hush_has_session(a->c, "iggy", 2));
    char old_sn[HUSH_SAFETY_NUMBER_LEN + 1], new_sn[HUSH_SAFETY_NUMBER_LEN + 1];
    assert_int_equal(hush_identity_pending(a->c, "iggy", 2, old_sn, new_sn), HUSH_OK);
    assert_string_equal(old_sn, iggy_sn); /* what hope verified for iggy */
    assert_string_not_equal(old_sn, new_sn);
    assert_int_equal(hush_identity_reject(a->c, "iggy", 2), HUSH_OK);
    hush_free(gb);

    /* the ghost writes to hope as "iggy" (logged in with the key the operator holds): held,
     * reported, not shown */
    struct tclient ghost;
    memset(&ghost, 0, sizeof ghost);
    ghost.sdk = g;
    ghost.relay = &relay;
    ghost.next_id = 1;
    ghost.dev = 2;
    snprintf(ghost.user, sizeof ghost.user, "iggy");
    assert_int_equal(tc_reconnect(&ghost), 0);
    assert_int_equal(tc_login(&ghost), 0);
    assert_int_equal(tc_start_session(&ghost, "hope"), 0);
    uint8_t *env = NULL, gmid[16];
    size_t envlen = 0;
    assert_int_equal(hush_encrypt(g, "hope", 1, (const uint8_t *)"send me your password", 21, NULL, gmid, &env, &envlen),
                     HUSH_OK);
    assert_int_equal(ghost_send(&ghost, env, envlen, gmid), 0);
    hush_free(env);
    /* and 250 more: held up to a cap, reported once */
    for (int i = 0; i < 250; i++) {
        assert_int_equal(hush_encrypt(g, "hope", 1, (const uint8_t *)"again", 5, NULL, gmid, &env, &envlen), HUSH_OK);
        assert_int_equal(ghost_send(&ghost, env, envlen, gmid), 0);
        hush_free(env);
    }
    tc_disconnect(&ghost);
    assert_true(wait_count(&a->r, &a->r.nidentity, 1, 10000));
    assert_string_equal(a->r.id_peer, "iggy");
    assert_string_equal(a->r.id_old, iggy_sn);
    /* hope writes to iggy: the relay takes a send only when it names every device iggy has, and
     * hope's client sends nothing to a device without iggy's identity key: the message waits for
     * hope's decision, reported again; neither the ghost nor the real iggy gets it */
    uint8_t mid[16];
    send_text(a, "iggy", "still only you?", mid);
    assert_true(wait_count(&a->r, &a->r.nidentity, 2, 10000));
    struct timespec half = { 0, 500000000L };
    nanosleep(&half, NULL);
    nanosleep(&half, NULL);
    assert_int_equal(state_of(a, mid), HUSH_MSG_QUEUED);
    assert_int_equal(a->r.nmsgs, 1); /* the ghost's messages are not shown */
    assert_false(hush_has_session(a->c, "iggy", 2));
    char o2[HUSH_SAFETY_NUMBER_LEN + 1], n2[HUSH_SAFETY_NUMBER_LEN + 1];
    assert_int_equal(hush_identity_pending(a->c, "iggy", 2, o2, n2), HUSH_OK);
    assert_string_equal(o2, iggy_sn);
    pthread_mutex_lock(&a->r.mu);
    int nid = a->r.nidentity;
    pthread_mutex_unlock(&a->r.mu);
    sqlite3 *hdb = NULL;
    assert_int_equal(sqlite3_open_v2(tpath("hope.db"), &hdb, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *hst = NULL;
    assert_int_equal(sqlite3_prepare_v2(hdb, "SELECT count(*) FROM pending_inbox", -1, &hst, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(hst), SQLITE_ROW);
    long held = sqlite3_column_int64(hst, 0);
    sqlite3_finalize(hst);
    sqlite3_close(hdb);
    print_message("ghost device: 251 messages sent to hope, %ld held, %d identity report(s); hope's message to iggy "
                  "waits\n", held, nid);
    assert_true(held >= 1 && held <= 200);
    /* rejecting the ghost's key does not make the message go to iggy alone either */
    assert_int_equal(hush_identity_reject(a->c, "iggy", 2), HUSH_OK);
    assert_true(wait_count(&a->r, &a->r.nidentity, 3, 10000));
    nanosleep(&half, NULL);
    assert_int_equal(state_of(a, mid), HUSH_MSG_QUEUED);
    pthread_mutex_lock(&b->r.mu);
    int iggy_got = b->r.nmsgs;
    pthread_mutex_unlock(&b->r.mu);
    assert_int_equal(iggy_got, 0);
    hush_client_close(g);
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
    assert_int_equal(mailbox_rows_for(relay.db, "iggy", 2), 0);
}

/* A new device of an existing user on database `dbname`, linked by `from` (running). */
static struct user *user_link(const struct relay_proc *relay, struct user *from, const char *dbname, uint32_t *dev,
                              hush_err *link_err)
{
    struct user *u = user_blank(dbname, from->name);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", relay->port);
    hush_callbacks cb = user_callbacks(u);
    hush_net_opts o = { url, NULL, NULL, 0 };
    assert_int_equal(hush_net_start(u->c, &o, &cb), HUSH_ERR_NO_DEVICE);
    assert_int_equal(hush_net_start_link(u->c, &o, &cb), HUSH_OK);
    assert_true(wait_count(&u->r, &u->r.nlink_codes, 1, 10000));
    pthread_mutex_lock(&u->r.mu);
    char code[HUSH_LINK_CODE_MAX + 1];
    snprintf(code, sizeof code, "%s", u->r.link_code);
    pthread_mutex_unlock(&u->r.mu);
    assert_true(strncmp(code, "hush-link-1:", 12) == 0);
    *link_err = hush_device_link(from->c, code, 15000, dev);
    if (*link_err == HUSH_OK)
        assert_int_equal(hush_net_wait_online(u->c, 15000), HUSH_OK);
    return u;
}

static int texts_from(struct user *u, const char *from, const char *text)
{
    int n = 0;
    pthread_mutex_lock(&u->r.mu);
    for (int i = 0; i < u->r.nmsgs; i++)
        if (!strcmp(u->r.msgs[i].from, from) && !strcmp(u->r.msgs[i].text, text))
            n++;
    pthread_mutex_unlock(&u->r.mu);
    return n;
}

/* Linked devices: a second device shares the account's identity (contacts see no change and the
 * same safety number), gets what is sent to the user, and each device's sends show up on the
 * other as sent; the relay's device limit and a used link code are refused. */
static void test_linked_devices(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "linked", "max_devices = 3\n");
    struct user *a = user_new(&relay, "alma"), *b = user_new(&relay, "bert");
    uint8_t mid[16];
    send_text(a, "bert", "hello from the phone", mid);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 1, 10000));
    char sn_before[HUSH_SAFETY_NUMBER_LEN + 1];
    assert_int_equal(hush_safety_number(b->c, "alma", 1, sn_before), HUSH_OK);

    uint32_t dev = 0;
    hush_err le = HUSH_OK;
    struct user *a2 = user_link(&relay, a, "alma-laptop", &dev, &le);
    assert_int_equal(le, HUSH_OK);
    assert_int_equal(dev, 2);
    char name[HUSH_USERNAME_MAX + 1];
    uint32_t d2 = 0;
    assert_int_equal(hush_device_info(a2->c, name, &d2, NULL), HUSH_OK);
    assert_string_equal(name, "alma");
    assert_int_equal(d2, 2);
    uint8_t k1[33], k2[33];
    assert_int_equal(hush_device_identity_key(a->c, k1), HUSH_OK);
    assert_int_equal(hush_device_identity_key(a2->c, k2), HUSH_OK);
    assert_memory_equal(k1, k2, 33);
    /* the laptop trusts bert's key as the phone did */
    char sn_laptop[HUSH_SAFETY_NUMBER_LEN + 1], sn_phone[HUSH_SAFETY_NUMBER_LEN + 1];
    assert_int_equal(hush_safety_number(a2->c, "bert", 1, sn_laptop), HUSH_OK);
    assert_int_equal(hush_safety_number(a->c, "bert", 1, sn_phone), HUSH_OK);
    assert_string_equal(sn_laptop, sn_phone);

    /* bert writes to alma: both devices get it, once each; bert sees no identity change */
    send_text(b, "alma", "to both of you", mid);
    assert_true(wait_count(&a->r, &a->r.nmsgs, 1, 15000));
    assert_true(wait_count(&a2->r, &a2->r.nmsgs, 1, 15000));
    assert_int_equal(hush_net_flush(b->c, 10000), HUSH_OK);
    assert_int_equal(state_of(b, mid) >= HUSH_MSG_SENT, 1);
    assert_int_equal(b->r.nidentity, 0);
    char sn_after[HUSH_SAFETY_NUMBER_LEN + 1];
    assert_int_equal(hush_safety_number(b->c, "alma", 2, sn_after), HUSH_OK);
    assert_string_equal(sn_after, sn_before); /* one safety number per user */

    /* the laptop writes to bert: bert gets it; the phone shows it as sent by alma */
    send_text(a2, "bert", "from the laptop", mid);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 2, 15000));
    assert_int_equal(texts_from(b, "alma", "from the laptop"), 1);
    assert_true(wait_count(&a->r, &a->r.nsent_elsewhere, 1, 15000));
    pthread_mutex_lock(&a->r.mu);
    assert_string_equal(a->r.elsewhere_to, "bert");
    assert_string_equal(a->r.elsewhere_text, "from the laptop");
    pthread_mutex_unlock(&a->r.mu);
    hush_history_entry *h = NULL;
    size_t nh = 0;
    assert_int_equal(hush_history_list(a->c, "bert", 0, 10, &h, &nh), HUSH_OK);
    int found = 0;
    for (size_t i = 0; i < nh; i++)
        if (h[i].outgoing && h[i].body_len == 15 && !memcmp(h[i].body, "from the laptop", 15))
            found++;
    hush_history_free(h, nh);
    assert_int_equal(found, 1);
    /* and the phone's message shows up on the laptop */
    send_text(a, "bert", "from the phone again", mid);
    assert_true(wait_count(&a2->r, &a2->r.nsent_elsewhere, 1, 15000));
    assert_true(wait_count(&b->r, &b->r.nmsgs, 3, 15000));

    /* exactly once everywhere */
    struct timespec half = { 0, 500000000L };
    nanosleep(&half, NULL);
    assert_int_equal(texts_from(a, "bert", "to both of you"), 1);
    assert_int_equal(texts_from(a2, "bert", "to both of you"), 1);
    assert_int_equal(a->r.nsent_elsewhere, 1);
    assert_int_equal(a2->r.nsent_elsewhere, 1);
    assert_int_equal(a->r.dup_local + a2->r.dup_local + b->r.dup_local, 0);

    /* a code nobody waits at (or one already used); a code whose key is unusable */
    uint8_t epk[32], esk[32];
    crypto_box_keypair(epk, esk);
    char b64[64], code[HUSH_LINK_CODE_MAX + 1];
    sodium_bin2base64(b64, sizeof b64, epk, 32, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    snprintf(code, sizeof code, "hush-link-1:00000000000000000000000000000000:%s", b64);
    assert_int_equal(hush_device_link(a->c, code, 10000, NULL), HUSH_ERR_LINK_FAILED);
    assert_int_equal(hush_device_link(a->c, "hush-link-1:00000000000000000000000000000000:"
                                            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 10000, NULL),
                     HUSH_ERR_INVALID_ARG);
    /* a third device fills the relay's limit (3 here); a fourth is refused, nothing made */
    struct user *a3 = user_link(&relay, a, "alma-tablet", &dev, &le);
    assert_int_equal(le, HUSH_OK);
    assert_int_equal(dev, 3);
    struct user *a4 = user_link(&relay, a2, "alma-extra", &dev, &le);
    assert_int_equal(le, HUSH_ERR_TOO_MANY_DEVICES);
    assert_int_equal(hush_device_info(a4->c, NULL, NULL, NULL), HUSH_ERR_NO_DEVICE);
    user_free(a4);
    /* bert's next message reaches all three */
    send_text(b, "alma", "three of you", mid);
    assert_true(wait_count(&a3->r, &a3->r.nmsgs, 1, 15000));
    assert_true(wait_count(&a->r, &a->r.nmsgs, 2, 15000));
    assert_true(wait_count(&a2->r, &a2->r.nmsgs, 2, 15000));
    assert_int_equal(texts_from(a3, "bert", "three of you"), 1);

    assert_int_equal(hush_device_link(a->c, "not a code", 1000, NULL), HUSH_ERR_INVALID_ARG);
    user_free(a3);
    user_free(a2);
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

int run(const char *cmd, char *out, size_t cap);

static hush_conn_state conn_of(struct user *u, hush_err *last)
{
    return hush_net_state(u->c, last);
}

static int wait_failed(struct user *u, hush_err want, int ms)
{
    for (int i = 0; i < ms / 50; i++) {
        hush_err last = HUSH_OK;
        if (conn_of(u, &last) == HUSH_CONN_FAILED)
            return last == want;
        struct timespec t = { 0, 50000000L };
        nanosleep(&t, NULL);
    }
    return 0;
}

static long devices_rows(const char *db, const char *user)
{
    return relay_count(db, "SELECT count(*) FROM devices WHERE username = ?1", user, 0);
}

/* Removing devices: only itself or from the first device; removed mid-stream, the remaining
 * devices get every message once; the removed one stops for good; the last device stays; the
 * operator's `hushd user remove-device` while hushd runs; idle devices expire. */
static void test_device_removal(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "removal", NULL);
    struct user *a = user_new(&relay, "romy"), *b = user_new(&relay, "stan");
    uint8_t mid[16];
    send_text(a, "stan", "hi", mid);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 1, 10000));
    uint32_t dev = 0;
    hush_err le = HUSH_OK;
    struct user *a2 = user_link(&relay, a, "romy-2", &dev, &le);
    assert_int_equal(le, HUSH_OK);
    struct user *a3 = user_link(&relay, a, "romy-3", &dev, &le);
    assert_int_equal(le, HUSH_OK);
    assert_int_equal(dev, 3);
    /* device 2 may not remove device 3 */
    assert_int_equal(hush_device_remove(a2->c, 3, 10000), HUSH_ERR_AUTH_FAILED);
    assert_int_equal(hush_device_remove(a->c, 9, 10000), HUSH_ERR_NOT_FOUND);
    /* stan streams while device 1 removes device 3 */
    enum { N = 30 };
    for (int i = 0; i < N; i++) {
        char t[32];
        snprintf(t, sizeof t, "m%d", i);
        send_text(b, "romy", t, mid);
        if (i == N / 2)
            assert_int_equal(hush_device_remove(a->c, 3, 10000), HUSH_OK);
    }
    assert_true(wait_failed(a3, HUSH_ERR_DEVICE_REMOVED, 10000));
    assert_int_equal(hush_net_flush(b->c, 20000), HUSH_OK);
    assert_true(wait_count(&a->r, &a->r.nmsgs, N, 20000));
    assert_true(wait_count(&a2->r, &a2->r.nmsgs, N, 20000));
    for (int i = 0; i < N; i++) {
        char t[32];
        snprintf(t, sizeof t, "m%d", i);
        assert_int_equal(texts_from(a, "stan", t), 1);
        assert_int_equal(texts_from(a2, "stan", t), 1);
    }
    assert_int_equal(mailbox_rows_for(relay.db, "romy", 3), 0);
    /* device 2 removes itself; device 1 is then the last and stays */
    assert_int_equal(hush_device_remove(a2->c, 2, 10000), HUSH_OK);
    assert_true(wait_failed(a2, HUSH_ERR_DEVICE_REMOVED, 10000));
    assert_int_equal(hush_device_remove(a->c, 1, 10000), HUSH_ERR_INVALID_ARG);
    assert_int_equal(devices_rows(relay.db, "romy"), 1);
    send_text(b, "romy", "just you now", mid);
    assert_true(wait_count(&a->r, &a->r.nmsgs, N + 1, 10000));
    assert_int_equal(hush_net_flush(b->c, 10000), HUSH_OK);

    /* the operator removes a connected device while hushd runs: it is closed at its next send */
    struct user *a4 = user_link(&relay, a, "romy-4", &dev, &le);
    assert_int_equal(le, HUSH_OK);
    assert_int_equal(dev, 4);
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "%s user --db %s remove-device romy 4 2>&1", getenv("HUSHD"), relay.db);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "removed romy device 4"));
    send_text(a4, "stan", "am I still here?", mid);
    assert_true(wait_failed(a4, HUSH_ERR_DEVICE_REMOVED, 10000));
    snprintf(cmd, sizeof cmd, "%s user --db %s show romy 2>&1", getenv("HUSHD"), relay.db);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "device 1 "));
    assert_null(strstr(out, "device 4 "));

    /* a device idle for longer than device_idle_days goes at the next expiry pass, never the
     * account's most recently seen one */
    struct user *a5 = user_link(&relay, a, "romy-5", &dev, &le);
    assert_int_equal(le, HUSH_OK);
    user_free(a5);
    hush_net_stop(a->c);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
    snprintf(cmd, sizeof cmd, "sqlite3 %s \"UPDATE devices SET last_seen = 1000, created_at = 1000 WHERE username = "
             "'romy' AND device_id = 5\"", relay.db);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(devices_rows(relay.db, "romy"), 2);
    relay_restart(&relay);
    for (int i = 0; i < 100 && devices_rows(relay.db, "romy") != 1; i++) {
        struct timespec t = { 0, 100000000L };
        nanosleep(&t, NULL);
    }
    assert_int_equal(devices_rows(relay.db, "romy"), 1);
    user_free(a4);
    user_free(a3);
    user_free(a2);
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

static struct user *user_recover(const struct relay_proc *relay, const char *dbname, const char *name, const char *code,
                                 hush_err *err)
{
    struct user *u = user_blank(dbname, name);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", relay->port);
    hush_callbacks cb = user_callbacks(u);
    hush_net_opts o = { url, NULL, NULL, 0 };
    *err = hush_net_start_recover(u->c, &o, &cb, name, code);
    if (*err == HUSH_OK)
        *err = hush_net_wait_online(u->c, 15000);
    return u;
}

/* Recovery: the code from the first registration puts a new device (new identity key) in place of
 * the lost ones, which the relay removes; a wrong or used code is refused; the contact sees an
 * identity change and, once it accepts the new number, its message gets through. */
static void test_recovery(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "recovery", NULL);
    struct user *a = user_new(&relay, "quinn"), *b = user_new(&relay, "ursa");
    char code[HUSH_RECOVERY_CODE_LEN + 1], again[HUSH_RECOVERY_CODE_LEN + 1];
    assert_int_equal(hush_recovery_code(a->c, code), HUSH_OK);
    assert_int_equal(strlen(code), HUSH_RECOVERY_CODE_LEN);
    assert_int_equal(hush_recovery_code_forget(a->c), HUSH_OK);
    assert_int_equal(hush_recovery_code(a->c, again), HUSH_ERR_NOT_FOUND);
    uint8_t mid[16];
    send_text(b, "quinn", "before", mid);
    assert_true(wait_count(&a->r, &a->r.nmsgs, 1, 10000));
    send_text(a, "ursa", "hi ursa", mid);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 1, 10000));
    uint32_t dev = 0;
    hush_err le = HUSH_OK;
    struct user *a2 = user_link(&relay, a, "quinn-2", &dev, &le);
    assert_int_equal(le, HUSH_OK);
    /* a wrong code (or a wrong name) is refused the same way, and nothing is made */
    hush_err re = HUSH_OK;
    struct user *bad = user_recover(&relay, "quinn-bad", "quinn", "0000-0000-0000-0000-0000-0000-0000-0000", &re);
    assert_int_equal(re, HUSH_ERR_AUTH_FAILED);
    assert_int_equal(hush_device_info(bad->c, NULL, NULL, NULL), HUSH_ERR_NO_DEVICE);
    user_free(bad);
    bad = user_recover(&relay, "quinn-bad2", "nobody", code, &re);
    assert_int_equal(re, HUSH_ERR_AUTH_FAILED);
    user_free(bad);
    /* the real code: a new device; both old ones are removed (and closed) */
    struct user *n = user_recover(&relay, "quinn-new", "quinn", code, &re);
    assert_int_equal(re, HUSH_OK);
    char name[HUSH_USERNAME_MAX + 1];
    assert_int_equal(hush_device_info(n->c, name, &dev, NULL), HUSH_OK);
    assert_string_equal(name, "quinn");
    assert_int_equal(dev, 3);
    uint8_t k_old[33], k_new[33];
    assert_int_equal(hush_device_identity_key(a->c, k_old), HUSH_OK);
    assert_int_equal(hush_device_identity_key(n->c, k_new), HUSH_OK);
    assert_memory_not_equal(k_old, k_new, 33);
    assert_true(wait_failed(a, HUSH_ERR_DEVICE_REMOVED, 10000));
    assert_true(wait_failed(a2, HUSH_ERR_DEVICE_REMOVED, 10000));
    assert_int_equal(devices_rows(relay.db, "quinn"), 1);
    /* a new code replaces the used one */
    char newcode[HUSH_RECOVERY_CODE_LEN + 1];
    assert_int_equal(hush_recovery_code(n->c, newcode), HUSH_OK);
    assert_string_not_equal(newcode, code);
    bad = user_recover(&relay, "quinn-bad3", "quinn", code, &re);
    assert_int_equal(re, HUSH_ERR_AUTH_FAILED);
    user_free(bad);
    /* ursa writes: quinn's key changed, so it waits for ursa's decision */
    send_text(b, "quinn", "are you back?", mid);
    assert_true(wait_count(&b->r, &b->r.nidentity, 1, 10000));
    struct timespec half = { 0, 500000000L };
    nanosleep(&half, NULL);
    assert_int_equal(n->r.nmsgs, 0);
    char old_sn[HUSH_SAFETY_NUMBER_LEN + 1], new_sn[HUSH_SAFETY_NUMBER_LEN + 1];
    assert_int_equal(hush_identity_pending(b->c, "quinn", 3, old_sn, new_sn), HUSH_OK);
    assert_string_not_equal(old_sn, new_sn);
    char quinn_side[HUSH_SAFETY_NUMBER_LEN + 1];
    assert_int_equal(hush_safety_number(n->c, "ursa", 1, quinn_side), HUSH_ERR_NOT_FOUND); /* no contacts yet */
    assert_int_equal(hush_identity_accept_number(b->c, "quinn", 3, new_sn), HUSH_OK);
    assert_true(wait_count(&n->r, &n->r.nmsgs, 1, 15000));
    assert_int_equal(texts_from(n, "ursa", "are you back?"), 1);
    user_free(n);
    user_free(a2);
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* Fault injection (libhush, tests only): storing a delivery from this sender fails. */
extern int (*hnet_test_store_fault)(const char *from, uint32_t dev);

static int fail_from_winmal(const char *from, uint32_t dev)
{
    (void)dev;
    return strcmp(from, "winmal") == 0;
}

static int count_from(struct rec *r, const char *from)
{
    pthread_mutex_lock(&r->mu);
    int k = 0;
    for (int i = 0; i < r->nmsgs; i++)
        k += strcmp(r->msgs[i].from, from) == 0;
    pthread_mutex_unlock(&r->mu);
    return k;
}

/* How many messages from `from` arrived, waiting up to ms for `want` of them. */
static int wait_from(struct rec *r, const char *from, int want, int ms)
{
    for (int i = 0; i < ms / 50 && count_from(r, from) < want; i++) {
        struct timespec ts = { 0, 50000000L };
        nanosleep(&ts, NULL);
    }
    return count_from(r, from);
}

/* Messages of one sender that the recipient cannot store (each fails alone, its batch commits)
 * are tried twice more, then acknowledged and dropped with a report: they do not hold the relay's
 * delivery window, so another sender's message still arrives. */
static void test_failing_sender_does_not_hold_window(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "window", "delivery_window = 16");
    struct user *rec = user_new(&relay, "winrec"), *mal = user_new(&relay, "winmal"), *ali = user_new(&relay, "winali");
    hnet_test_store_fault = fail_from_winmal;
    enum { N_MAL = 24 };
    uint8_t mid[N_MAL][16];
    for (int i = 0; i < N_MAL; i++) {
        char text[32];
        snprintf(text, sizeof text, "mal %d", i);
        send_text(mal, "winrec", text, mid[i]);
    }
    for (int i = 0; i < N_MAL; i++)
        assert_true(wait_state(mal, mid[i], HUSH_MSG_SENT, 15000)); /* all stored by the relay */
    uint8_t am[16];
    send_text(ali, "winrec", "ali gets through", am);
    assert_int_equal(wait_from(&rec->r, "winali", 1, 15000), 1);
    assert_true(wait_count(&rec->r, &rec->r.errors, 1, 1000)); /* the drops were reported */
    /* every failing message ends acknowledged: after a reconnect without the fault, none comes back */
    for (int i = 0; i < 200; i++) {
        struct timespec ts = { 0, 50000000L };
        nanosleep(&ts, NULL);
    }
    hnet_test_store_fault = NULL;
    hush_net_stop(rec->c);
    user_start(rec, &relay);
    uint8_t am2[16];
    send_text(ali, "winrec", "after the reconnect", am2);
    assert_int_equal(wait_from(&rec->r, "winali", 2, 15000), 2);
    assert_int_equal(count_from(&rec->r, "winmal"), 0);
    user_free(rec);
    user_free(mal);
    user_free(ali);
    relay_stop(&relay, SIGTERM);
}

/* A message to yourself fails at once; a message to a user whose bundle is refused, or who does
 * not exist, leaves the queue as FAILED and the messages behind it go out; a queued message can be
 * cancelled and is never delivered. */
static void test_undeliverable(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "undeliverable", NULL);
    struct user *a = user_new(&relay, "una"), *b = user_new(&relay, "vic"), *t = user_new(&relay, "tampered");
    uint8_t mid[16];
    assert_int_equal(hush_send(a->c, "una", (const uint8_t *)"note", 4, mid), HUSH_ERR_INVALID_ARG);
    /* the operator breaks tampered's signed prekey signature: its bundle is refused */
    hush_net_stop(t->c);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "sqlite3 %s \"UPDATE devices SET spk_signature = zeroblob(64) WHERE username='tampered'\"",
             relay.db);
    assert_int_equal(WEXITSTATUS(system(cmd)), 0);
    relay_restart(&relay);
    assert_true(wait_count(&a->r, &a->r.online_events, 2, 15000));
    uint8_t m1[16], m2[16], m3[16];
    send_text(a, "tampered", "to a refused bundle", m1);
    send_text(a, "nosuchuser", "to nobody", m2);
    send_text(a, "vic", "behind them", m3);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 1, 10000));
    assert_string_equal(b->r.msgs[0].text, "behind them");
    assert_true(wait_state(a, m1, HUSH_MSG_FAILED, 5000));
    assert_int_equal(state_of(a, m1), HUSH_MSG_FAILED);
    assert_int_equal(state_of(a, m2), HUSH_MSG_FAILED);
    uint32_t left = 99;
    assert_int_equal(hush_outbox_count(a->c, &left), HUSH_OK);
    /* cancel: queued while offline, cancelled, never delivered */
    hush_net_stop(a->c);
    uint8_t m4[16], m5[16];
    send_text(a, "vic", "cancel me", m4);
    send_text(a, "vic", "keep me", m5);
    assert_int_equal(hush_outbox_cancel(a->c, m4), HUSH_OK);
    assert_int_equal(hush_outbox_cancel(a->c, m4), HUSH_ERR_NOT_FOUND);
    assert_int_equal(state_of(a, m4), HUSH_MSG_FAILED);
    user_start(a, &relay);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 2, 10000));
    assert_string_equal(b->r.msgs[1].text, "keep me");
    assert_int_equal(hush_net_flush(a->c, 10000), HUSH_OK);
    assert_int_equal(hush_outbox_cancel(a->c, m5), HUSH_ERR_NOT_FOUND); /* sent already */
    struct timespec half = { 0, 500000000L };
    nanosleep(&half, NULL);
    assert_int_equal(b->r.nmsgs, 2);
    user_free(a);
    user_free(b);
    user_free(t);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* The receiver marks each message read from inside on_message, so its read receipt leaves before
 * the delivery receipt: the sender's callbacks still never go backwards (read, then nothing). */
static void cb_message_mark_read(void *ctx, const hush_message *m)
{
    cb_message(ctx, m);
    struct rec *r = ctx;
    hush_client *self = r->self;
    if (self && hush_mark_read(self, m->local_id) != HUSH_OK)
        r->errors++;
}

static void test_receipts_never_backwards(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "receiptorder", NULL);
    struct user *a = user_new(&relay, "rhea");
    struct user *b = calloc(1, sizeof *b);
    rec_init(&b->r);
    snprintf(b->name, sizeof b->name, "tove");
    b->c = open_client("tove", 1, HUSH_DURABILITY_NORMAL);
    b->r.self = b->c;
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", relay.port);
    hush_callbacks cb = { &b->r, cb_message_mark_read, cb_receipt, cb_typing, cb_presence, cb_identity, cb_connection,
                          cb_error, NULL, NULL, NULL, NULL };
    hush_net_opts o = { url, NULL, NULL, 0 };
    assert_int_equal(hush_net_start(b->c, &o, &cb), HUSH_OK);
    assert_int_equal(hush_net_wait_online(b->c, 15000), HUSH_OK);
    enum { N = 5 };
    uint8_t mids[N][16];
    for (int i = 0; i < N; i++)
        send_text(a, "tove", "read me at once", mids[i]);
    for (int i = 0; i < N; i++)
        assert_true(wait_state(a, mids[i], HUSH_MSG_READ, 10000));
    /* every delivery receipt has arrived too, after the read ones */
    assert_true(wait_count(&b->r, &b->r.nmsgs, N, 10000));
    struct timespec settle = { 1, 500000000L };
    nanosleep(&settle, NULL);
    pthread_mutex_lock(&a->r.mu);
    for (int i = 0; i < N; i++) {
        int last = -2;
        for (int k = 0; k < a->r.nreceipts; k++) {
            if (memcmp(a->r.receipt_mid[k], mids[i], 16) != 0)
                continue;
            if (a->r.receipt_state[k] <= last)
                fail_msg("message %d: state %d reported after %d", i, a->r.receipt_state[k], last);
            last = a->r.receipt_state[k];
        }
        assert_int_equal(last, HUSH_MSG_READ);
    }
    pthread_mutex_unlock(&a->r.mu);
    assert_int_equal(state_of(a, mids[0]), HUSH_MSG_READ);
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

static void test_identity_change_online(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "identity", NULL);
    struct user *a = user_new(&relay, "hal"), *b = user_new(&relay, "ida");
    send_text(b, "hal", "before", NULL);
    assert_true(wait_count(&a->r, &a->r.nmsgs, 1, 10000));
    /* ida reinstalls with a new identity under the same name: the relay refuses the name... */
    hush_client_close(b->c);
    unlink(tpath("ida.db"));
    unlink(tpath("ida.db-wal"));
    unlink(tpath("ida.db-shm"));
    /* ... so simulate the reinstall on the relay side: same device, new keys, registered anew */
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "sqlite3 %s \"DELETE FROM one_time_prekeys WHERE username='ida'; DELETE FROM devices WHERE "
                              "username='ida'; DELETE FROM users WHERE username='ida';\"", relay.db);
    assert_int_equal(WEXITSTATUS(system(cmd)), 0);
    relay_restart(&relay);
    assert_true(wait_count(&a->r, &a->r.online_events, 2, 15000)); /* hal reconnected */
    b->c = open_client("ida", 1, HUSH_DURABILITY_NORMAL);
    rec_init(&b->r);
    user_start(b, &relay);
    send_text(b, "hal", "new phone, same ida", NULL);
    assert_true(wait_count(&a->r, &a->r.nidentity, 1, 10000));
    assert_string_equal(a->r.id_peer, "ida");
    assert_int_not_equal(strcmp(a->r.id_old, a->r.id_new), 0);
    assert_int_equal(a->r.nmsgs, 1); /* held back */
    assert_int_equal(hush_identity_accept(a->c, "ida", 1), HUSH_OK);
    assert_true(wait_count(&a->r, &a->r.nmsgs, 2, 10000));
    assert_string_equal(a->r.msgs[1].text, "new phone, same ida");
    /* and hal can answer the new ida (the old session is replaced from a fresh bundle) */
    uint8_t mid[16];
    send_text(a, "ida", "welcome back", mid);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 1, 10000));
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* The relay restarts (clean, then kill -9) while messages flow: nothing lost, nothing twice. */
static void test_relay_restarts(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "restarts", NULL);
    struct user *a = user_new(&relay, "jon"), *b = user_new(&relay, "kim");
    enum { N = 600 };
    int sent = 0;
    for (int round = 0; round < 6; round++) {
        for (int i = 0; i < N / 6; i++) {
            char t[32];
            snprintf(t, sizeof t, "m%04d", sent++);
            send_text(a, "kim", t, NULL);
        }
        usleep(20000 + (useconds_t)randombytes_uniform(80000));
        relay_stop(&relay, round % 2 ? SIGKILL : SIGTERM);
        relay_restart(&relay);
    }
    assert_int_equal(hush_net_flush(a->c, 60000), HUSH_OK);
    assert_true(wait_count(&b->r, &b->r.nmsgs, N, 60000));
    usleep(300000);
    assert_int_equal(b->r.nmsgs, N);
    for (int i = 0; i < N; i++) {
        char t[32];
        snprintf(t, sizeof t, "m%04d", i);
        assert_string_equal(b->r.msgs[i].text, t);
    }
    assert_int_equal(b->r.dup_local, 0);
    assert_true(a->r.online_events >= 2); /* it reconnected (restarts can outpace the backoff) */
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* The relay's database and log hold no plaintext of anything sent through the SDK. */
static void test_canary_online(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "canary_online", NULL);
    struct user *a = user_new(&relay, "lou"), *b = user_new(&relay, "max");
    const char *canary = "CANARY-online-5d1f0c-never-in-the-relay";
    hush_net_stop(b->c); /* stored, not just relayed */
    for (int i = 0; i < 10; i++)
        send_text(a, "max", canary, NULL);
    assert_int_equal(hush_net_flush(a->c, 20000), HUSH_OK);
    char wal[320];
    snprintf(wal, sizeof wal, "%s-wal", relay.db);
    assert_false(file_contains(relay.db, canary, strlen(canary)));
    assert_false(file_contains(wal, canary, strlen(canary)));
    user_start(b, &relay);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 10, 20000));
    assert_string_equal(b->r.msgs[0].text, canary);
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
    assert_false(file_contains(relay.db, canary, strlen(canary)));
    assert_false(file_contains(relay.log, canary, strlen(canary)));
    assert_true(file_contains(relay.log, "max", 3));
}

static void test_unknown_user_and_bad_url(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "unknown", NULL);
    struct user *a = user_new(&relay, "ned");
    uint8_t mid[16];
    send_text(a, "nobody", "anyone there?", mid);
    assert_true(wait_state(a, mid, -1, 1) || 1);
    for (int i = 0; i < 250 && state_of(a, mid) != HUSH_MSG_FAILED; i++)
        usleep(20000);
    assert_int_equal(state_of(a, mid), HUSH_MSG_FAILED);
    assert_int_equal(hush_net_flush(a->c, 5000), HUSH_OK); /* not stuck in the outbox */
    /* a username already taken: registration fails for good with a clear error */
    hush_client *dup = NULL;
    uint8_t key[32] = { 9 };
    assert_int_equal(hush_client_open(tpath("ned2.db"), key, NULL, &dup), HUSH_OK);
    assert_int_equal(hush_device_create(dup, "ned", 1), HUSH_OK);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", relay.port);
    hush_net_opts o = { url, NULL, NULL, 0 };
    assert_int_equal(hush_net_start(dup, &o, NULL), HUSH_OK);
    assert_int_equal(hush_net_wait_online(dup, 10000), HUSH_ERR_USERNAME_TAKEN);
    hush_client_close(dup);
    /* bad URLs */
    hush_net_opts bad = { "http://x", NULL, NULL, 0 };
    assert_int_equal(hush_net_start(a->c, &bad, NULL), HUSH_ERR_INVALID_ARG);
    user_free(a);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

static char *cli_path(void)
{
    static char p[600];
    snprintf(p, sizeof p, "%s", getenv("HUSHD"));
    char *slash = strrchr(p, '/');
    snprintf(slash + 1, sizeof p - (size_t)(slash + 1 - p), "hush");
    return p;
}

/* Distinct messages shown so far across the listeners' outputs. */
static int count_shown(char outs[][400], int nfiles)
{
    static char seen[100000];
    memset(seen, 0, sizeof seen);
    int distinct = 0;
    for (int k = 0; k < nfiles; k++) {
        FILE *f = fopen(outs[k], "r");
        char buf[512];
        while (f && fgets(buf, sizeof buf, f)) {
            long long lid;
            char from[40], hex[40], text[64];
            if (sscanf(buf, "{\"type\":\"message\",\"local_id\":%lld,\"from\":\"%39[^\"]\",\"device\":%*d,\"id\":\"%39[^\"]\","
                            "\"sent_at_ms\":%*[0-9],\"text\":\"%63[^\"]\"}",
                       &lid, from, hex, text) == 4) {
                int i = atoi(text + 1);
                if (i >= 0 && i < 100000 && !seen[i]) {
                    seen[i] = 1;
                    distinct++;
                }
            }
        }
        if (f)
            fclose(f);
    }
    return distinct;
}

static pid_t spawn_listener(const char *db, const char *out)
{
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen(out, "w", stdout);
        (void)f;
        execl(cli_path(), "hush", "listen", "--db", db, "--raw", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* kill -9 of a receiving client (a separate `hush listen` process) in the middle of a stream:
 * every message ends up stored exactly once and shown at least once, with a stable local_id. */
static void test_kill9_receiver(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "kill9rcv", NULL);
    char url[64], db[400], cmd[1200];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", relay.port);
    snprintf(db, sizeof db, "%s", tpath("rcv.db"));
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay %s --user rcv > /dev/null", cli_path(), db, url);
    assert_int_equal(WEXITSTATUS(system(cmd)), 0);
    struct user *a = user_new(&relay, "snd");
    enum { N = 320 };
    int kills = 0, sent = 0;
    char outs[8][400];
    for (int k = 0; k < 8; k++) {
        snprintf(outs[k], sizeof outs[k], "%s.%d", tpath("listen.out"), k);
        pid_t p = spawn_listener(db, outs[k]);
        /* messages keep flowing; this receiver is killed at a random point of the stream */
        int kill_at = k < 7 ? 5 + (int)randombytes_uniform(N / 8 - 5) : -1;
        for (int i = 0; i < N / 8; i++) {
            char t[32];
            snprintf(t, sizeof t, "k%04d", sent++);
            send_text(a, "rcv", t, NULL);
            usleep(8000);
            if (i == kill_at) {
                kill(p, SIGKILL);
                waitpid(p, NULL, 0);
                kills++;
            }
        }
        if (k == 7) {
            /* the last one runs until every message has been shown (at most 30 s) */
            for (int t = 0; t < 300 && count_shown(outs, k + 1) < N; t++)
                usleep(100000);
            usleep(500000);
            kill(p, SIGTERM);
            waitpid(p, NULL, 0);
        }
    }
    assert_int_equal(hush_net_flush(a->c, 30000), HUSH_OK);
    /* what the app was shown, across all runs */
    static int64_t shown_local[N];
    static int shown[N];
    memset(shown, 0, sizeof shown);
    int dup_same = 0;
    for (int k = 0; k < 8; k++) {
        FILE *f = fopen(outs[k], "r");
        char buf[512];
        while (f && fgets(buf, sizeof buf, f)) {
            long long lid;
            char from[40], hex[40], text[64];
            if (sscanf(buf, "{\"type\":\"message\",\"local_id\":%lld,\"from\":\"%39[^\"]\",\"device\":%*d,\"id\":\"%39[^\"]\","
                            "\"sent_at_ms\":%*[0-9],\"text\":\"%63[^\"]\"}",
                       &lid, from, hex, text) != 4)
                continue;
            int i = atoi(text + 1);
            assert_true(i >= 0 && i < N);
            if (shown[i]) {
                assert_int_equal(shown_local[i], lid); /* a repeat is the same stored message */
                dup_same++;
            }
            shown[i]++;
            shown_local[i] = lid;
        }
        if (f)
            fclose(f);
    }
    int missing = 0;
    for (int i = 0; i < N; i++)
        missing += !shown[i];
    /* and what is stored: each exactly once */
    uint8_t key[32];
    char keyf[420];
    snprintf(keyf, sizeof keyf, "%s.key", db);
    FILE *kf = fopen(keyf, "rb");
    assert_non_null(kf);
    assert_int_equal(fread(key, 1, 32, kf), 32);
    fclose(kf);
    hush_client *rc = NULL;
    assert_int_equal(hush_client_open(db, key, NULL, &rc), HUSH_OK);
    hush_history_entry *h = NULL;
    size_t n = 0;
    assert_int_equal(hush_history_list(rc, "snd", 0, 500, &h, &n), HUSH_OK);
    static int stored[N];
    memset(stored, 0, sizeof stored);
    size_t incoming = 0;
    for (size_t i = 0; i < n; i++) {
        if (h[i].outgoing)
            continue;
        incoming++;
        int k = atoi((const char *)h[i].body + 1);
        stored[k]++;
    }
    hush_history_free(h, n);
    hush_client_close(rc);
    print_message("receiver killed %d times: %zu stored, %d shown again after a kill (same local_id), %d missing\n",
                  kills, incoming, dup_same, missing);
    assert_int_equal(incoming, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(stored[i], 1);
    assert_int_equal(missing, 0);
    user_free(a);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* A relay that misbehaves: garbage frames, unknown error codes, oversized frames, dropped
 * sockets. The SDK reports errors, keeps retrying, does not crash, and loses nothing queued. */
struct fake {
    int fd;
    int port;
    int conns;
    volatile int stop;
};

static void *fake_relay(void *arg)
{
    struct fake *fk = arg;
    while (!fk->stop) {
        struct timeval tv = { 0, 200000 };
        fd_set rs;
        FD_ZERO(&rs);
        FD_SET(fk->fd, &rs);
        if (select(fk->fd + 1, &rs, NULL, NULL, &tv) <= 0)
            continue;
        int c = accept(fk->fd, NULL, NULL);
        if (c < 0)
            continue;
        if (wss_accept_upgrade(c, "hush.v1", 2000) != 0) {
            close(c);
            continue;
        }
        usleep(50000);
        int mode = fk->conns++ % 5;
        if (mode == 0) { /* garbage */
            uint8_t junk[64];
            randombytes_buf(junk, sizeof junk);
            (void)wss_send(c, 2, junk, sizeof junk);
        } else if (mode == 1) { /* a Result with an error code nobody knows, for the hello */
            Hush__Result r = HUSH__RESULT__INIT;
            r.code = (Hush__ErrorCode)999;
            r.message = "\xc0\x80\xff\x1b]0;owned\x07 not UTF-8, with escapes";
            Hush__Frame f = HUSH__FRAME__INIT;
            f.id = 1;
            f.msg_case = HUSH__FRAME__MSG_RESULT;
            f.result = &r;
            uint8_t buf[64];
            size_t n = hush__frame__pack(&f, buf);
            (void)wss_send(c, 2, buf, n);
        } else if (mode == 2) { /* a welcome with a short challenge */
            uint8_t ch[5] = { 1, 2, 3, 4, 5 };
            Hush__Welcome w = HUSH__WELCOME__INIT;
            w.version = 1;
            w.challenge.data = ch;
            w.challenge.len = 5;
            Hush__Frame f = HUSH__FRAME__INIT;
            f.id = 1;
            f.msg_case = HUSH__FRAME__MSG_WELCOME;
            f.welcome = &w;
            uint8_t buf[64];
            size_t n = hush__frame__pack(&f, buf);
            (void)wss_send(c, 2, buf, n);
        } else if (mode == 3) { /* an oversized frame */
            size_t n = 2 * 1024 * 1024;
            uint8_t *big = calloc(1, n);
            (void)wss_send(c, 2, big, n);
            free(big);
        } /* mode 4: just drop the socket */
        usleep(100000);
        close(c);
    }
    return NULL;
}

/* Reads one client frame (masked, final, at most 1 MiB) from a fake relay's socket: its payload
 * decoded as a Frame, or NULL. */
static Hush__Frame *fake_read_frame(int fd, int timeout_ms)
{
    struct pollfd pf = { fd, POLLIN, 0 };
    uint8_t h[14];
    size_t have = 0, need = 2;
    while (have < need) {
        if (poll(&pf, 1, timeout_ms) != 1)
            return NULL;
        ssize_t r = read(fd, h + have, need - have);
        if (r <= 0)
            return NULL;
        have += (size_t)r;
        if (have == 2) {
            size_t l7 = h[1] & 0x7f;
            need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + 4;
        }
    }
    uint64_t len = h[1] & 0x7f;
    size_t off = 2;
    if (len == 126) {
        len = ((uint64_t)h[2] << 8) | h[3];
        off = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | h[2 + i];
        off = 10;
    }
    if (len > (1u << 20))
        return NULL;
    uint8_t *p = malloc(len ? len : 1);
    size_t got = 0;
    while (p && got < len) {
        if (poll(&pf, 1, timeout_ms) != 1)
            break;
        ssize_t r = read(fd, p + got, len - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    Hush__Frame *f = NULL;
    if (p && got == len) {
        for (size_t i = 0; i < len; i++)
            p[i] ^= h[off + (i & 3)];
        f = (h[0] & 0x0f) == 2 ? hush__frame__unpack(NULL, len, p) : NULL;
    }
    free(p);
    return f;
}

static void fake_send_frame(int fd, const Hush__Frame *f)
{
    uint8_t buf[512];
    size_t n = hush__frame__get_packed_size(f);
    assert_true(n <= sizeof buf);
    hush__frame__pack(f, buf);
    assert_int_equal(wss_send(fd, 2, buf, n), 0);
}

/* A relay (hostile, or just chatty) says PreKeysLow over and over: the device keeps one upload in
 * flight, makes keys only when none wait to be published, and its stock stays bounded. */
static void test_prekey_storm_bounded(void **state)
{
    (void)state;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t l = sizeof a;
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &l), 0);
    assert_int_equal(listen(lfd, 4), 0);
    struct user *u = calloc(1, sizeof *u);
    rec_init(&u->r);
    snprintf(u->name, sizeof u->name, "storm");
    u->c = open_client("storm", 1, HUSH_DURABILITY_NORMAL);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", ntohs(a.sin_port));
    hush_callbacks cb = { &u->r, cb_message, cb_receipt, cb_typing, cb_presence, cb_identity, cb_connection, cb_error, NULL, NULL, NULL, NULL };
    hush_net_opts o = { url, NULL, NULL, 0 };
    assert_int_equal(hush_net_start(u->c, &o, &cb), HUSH_OK);
    int fd = accept(lfd, NULL, NULL);
    assert_true(fd >= 0);
    assert_int_equal(wss_accept_upgrade(fd, "hush.v1", 5000), 0);
    Hush__Frame *f = fake_read_frame(fd, 5000);
    assert_non_null(f);
    assert_int_equal(f->msg_case, HUSH__FRAME__MSG_HELLO);
    uint8_t ch[32];
    randombytes_buf(ch, sizeof ch);
    Hush__Welcome w = HUSH__WELCOME__INIT;
    w.version = 1;
    w.challenge.data = ch;
    w.challenge.len = 32;
    w.registration = "open";
    Hush__Frame out = HUSH__FRAME__INIT;
    out.id = f->id;
    out.msg_case = HUSH__FRAME__MSG_WELCOME;
    out.welcome = &w;
    fake_send_frame(fd, &out);
    hush__frame__free_unpacked(f, NULL);
    f = fake_read_frame(fd, 5000); /* register (a new device) or login */
    assert_non_null(f);
    Hush__Result ok = HUSH__RESULT__INIT;
    ok.pre_keys_remaining = 100;
    Hush__Frame res = HUSH__FRAME__INIT;
    res.id = f->id;
    res.msg_case = HUSH__FRAME__MSG_RESULT;
    res.result = &ok;
    fake_send_frame(fd, &res);
    hush__frame__free_unpacked(f, NULL);
    assert_int_equal(hush_net_wait_online(u->c, 5000), HUSH_OK);
    int uploads = 0;
    for (int i = 0; i < 50; i++) {
        Hush__PreKeysLow pl = HUSH__PRE_KEYS_LOW__INIT;
        pl.remaining = 3;
        Hush__Frame push = HUSH__FRAME__INIT;
        push.msg_case = HUSH__FRAME__MSG_PRE_KEYS_LOW;
        push.pre_keys_low = &pl;
        fake_send_frame(fd, &push);
        /* what the client sends meanwhile: uploads are left unanswered */
        while ((f = fake_read_frame(fd, 20)) != NULL) {
            uploads += f->msg_case == HUSH__FRAME__MSG_UPLOAD_PRE_KEYS;
            hush__frame__free_unpacked(f, NULL);
        }
    }
    while ((f = fake_read_frame(fd, 500)) != NULL) {
        uploads += f->msg_case == HUSH__FRAME__MSG_UPLOAD_PRE_KEYS;
        hush__frame__free_unpacked(f, NULL);
    }
    hush_net_stop(u->c);
    uint32_t stock = 0;
    assert_int_equal(hush_prekeys_remaining(u->c, &stock), HUSH_OK);
    print_message("prekey storm: 50 PreKeysLow pushes -> %d upload(s), %u one-time keys stored\n", uploads, stock);
    assert_int_equal(uploads, 1);
    assert_true(stock <= 200);
    close(fd);
    close(lfd);
    user_free(u);
}

static void test_bad_relay(void **state)
{
    (void)state;
    struct fake fk = { 0 };
    fk.fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fk.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t l = sizeof a;
    assert_int_equal(bind(fk.fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fk.fd, (struct sockaddr *)&a, &l), 0);
    assert_int_equal(listen(fk.fd, 16), 0);
    fk.port = ntohs(a.sin_port);
    pthread_t th;
    pthread_create(&th, NULL, fake_relay, &fk);
    struct user *u = calloc(1, sizeof *u);
    rec_init(&u->r);
    snprintf(u->name, sizeof u->name, "oli");
    u->c = open_client("oli", 1, HUSH_DURABILITY_NORMAL);
    uint8_t mid[16];
    send_text(u, "pam", "this must not be lost", mid);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", fk.port);
    hush_callbacks cb = { &u->r, cb_message, cb_receipt, cb_typing, cb_presence, cb_identity, cb_connection, cb_error, NULL, NULL, NULL, NULL };
    hush_net_opts o = { url, NULL, NULL, 0 };
    assert_int_equal(hush_net_start(u->c, &o, &cb), HUSH_OK);
    for (int i = 0; i < 300 && fk.conns < 6; i++) /* backoff: 0.25 s doubling, so ~8 s for 6 */
        usleep(100000);
    assert_true(fk.conns >= 6); /* it kept reconnecting through every kind of misbehaviour */
    assert_true(u->r.errors >= 3);
    assert_int_equal(u->r.bad_text, 0);
    assert_int_equal(hush_net_wait_online(u->c, 100), HUSH_ERR_TIMEOUT);
    uint32_t pending = 0;
    assert_int_equal(hush_outbox_count(u->c, &pending), HUSH_OK);
    assert_int_equal(pending, 1);
    assert_int_equal(state_of(u, mid), HUSH_MSG_QUEUED);
    fk.stop = 1;
    pthread_join(th, NULL);
    close(fk.fd);
    user_free(u);
}

int run(const char *cmd, char *out, size_t cap);
int run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The README's quick start, through the CLI: init two users, send while one is offline, read it
 * with chat (piped), see states in history, compare safety numbers. */
static void test_cli_quickstart(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "cli", NULL);
    char cmd[2048], out[8192], a[400], b[400];
    const char *h = cli_path();
    snprintf(a, sizeof a, "%s", tpath("cli-alice.db"));
    snprintf(b, sizeof b, "%s", tpath("cli-bob.db"));
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay ws://127.0.0.1:%d --user alice 2>&1", h, a, relay.port);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "registered alice"));
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay ws://127.0.0.1:%d --user bob 2>&1", h, b, relay.port);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    /* the same name again is refused with a clear message */
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay ws://127.0.0.1:%d --user bob 2>&1", h, tpath("cli-bob2.db"),
             relay.port);
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "username already taken"));
    snprintf(cmd, sizeof cmd, "%s send --db %s bob hello bob, you were offline 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "sent to bob"));
    snprintf(cmd, sizeof cmd, "printf 'hi alice\\nsecond line\\n' | %s chat --db %s alice 2>&1", h, b);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "hello bob, you were offline"));
    snprintf(cmd, sizeof cmd, "%s history --db %s alice 2>&1", h, b);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "bob: hi alice"));
    assert_non_null(strstr(out, "bob: second line"));
    /* alice connects: gets bob's lines, and bob's receipts move her message to read */
    snprintf(cmd, sizeof cmd, "timeout 3 %s listen --db %s --raw 2>&1", h, a);
    run(cmd, out, sizeof out);
    assert_non_null(strstr(out, "{\"type\":\"message\""));
    assert_non_null(strstr(out, "hi alice"));
    snprintf(cmd, sizeof cmd, "%s history --db %s bob 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "hello bob, you were offline  (read)"));
    /* safety numbers match on both sides */
    char sa[512], sb[512];
    snprintf(cmd, sizeof cmd, "%s safety --db %s bob 2>&1 | tr -d ' \\n' | sed 's/.*device1://'", h, a);
    assert_int_equal(run(cmd, sa, sizeof sa), 0);
    snprintf(cmd, sizeof cmd, "%s safety --db %s alice 2>&1 | tr -d ' \\n' | sed 's/.*device1://'", h, b);
    assert_int_equal(run(cmd, sb, sizeof sb), 0);
    assert_int_equal(strlen(sa), 60);
    assert_string_equal(sa, sb);
    snprintf(cmd, sizeof cmd, "%s status --db %s 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "relay:      online"));
    assert_non_null(strstr(out, "outbox:     0"));
    snprintf(cmd, sizeof cmd, "%s send --db %s 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* The README's second walk-through: alice on a phone and a laptop, talking to bob, through the
 * CLI (hush link, hush devices add, hush listen, hush history). */
static void test_cli_two_devices(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "cli2", NULL);
    char cmd[2048], out[8192], phone[400], laptop[400], b[400], linkout[400], url[64];
    const char *h = cli_path();
    snprintf(phone, sizeof phone, "%s", tpath("cli2-phone.db"));
    snprintf(laptop, sizeof laptop, "%s", tpath("cli2-laptop.db"));
    snprintf(b, sizeof b, "%s", tpath("cli2-bob.db"));
    snprintf(linkout, sizeof linkout, "%s", tpath("cli2-link.out"));
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay ws://127.0.0.1:%d --user alice --name 'alice phone' 2>&1", h,
             phone, relay.port);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "recovery code: "));
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay ws://127.0.0.1:%d --user bob 2>&1", h, b, relay.port);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    /* a second device cannot be made with init */
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay ws://127.0.0.1:%d --user alice --device 2 2>&1", h,
             tpath("cli2-x.db"), relay.port);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "hush link"));
    snprintf(cmd, sizeof cmd, "%s send --db %s bob hi bob 2>&1", h, phone);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    /* the laptop shows a code and waits; the phone adds it. A first attempt is killed (-9) while
     * it waits: nothing half-made stays, the same command starts again, the old code is dead */
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", relay.port);
    char code[HUSH_LINK_CODE_MAX + 1] = "", dead[HUSH_LINK_CODE_MAX + 1] = "";
    pid_t pid = -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            int fd = open(linkout, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            dup2(fd, 1);
            dup2(fd, 2);
            execl(h, "hush", "link", "--db", laptop, "--relay", url, "--name", "laptop", (char *)NULL);
            _exit(127);
        }
        code[0] = '\0';
        for (int i = 0; i < 100 && !code[0]; i++) {
            struct timespec t = { 0, 100000000L };
            nanosleep(&t, NULL);
            FILE *f = fopen(linkout, "r");
            char line[256];
            while (f && fgets(line, sizeof line, f))
                if (sscanf(line, "link code: %128s", code) != 1)
                    code[0] = '\0';
            if (f)
                fclose(f);
        }
        if (attempt == 0) {
            assert_true(code[0]);
            snprintf(dead, sizeof dead, "%s", code);
            kill(pid, SIGKILL);
            int st0 = 0;
            waitpid(pid, &st0, 0);
        }
    }
    snprintf(cmd, sizeof cmd, "%s devices --db %s add %s 2>&1", h, phone, dead);
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "expired or was used"));
    assert_true(strncmp(code, "hush-link-1:", 12) == 0);
    /* a person needs a while to type it: hush link waits longer than the 10 s of one-shot commands */
    struct timespec slow = { 11, 0 };
    nanosleep(&slow, NULL);
    snprintf(cmd, sizeof cmd, "%s devices --db %s add %s 2>&1", h, phone, code);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "linked device 2"));
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(file_contains(linkout, "linked alice (device 2)", 23));
    /* bob writes; both of alice's devices get it */
    snprintf(cmd, sizeof cmd, "%s send --db %s alice hello both of you 2>&1", h, b);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    snprintf(cmd, sizeof cmd, "timeout 3 %s listen --db %s 2>&1", h, phone);
    run(cmd, out, sizeof out);
    assert_non_null(strstr(out, "bob: hello both of you"));
    snprintf(cmd, sizeof cmd, "timeout 3 %s listen --db %s 2>&1", h, laptop);
    run(cmd, out, sizeof out);
    assert_non_null(strstr(out, "bob: hello both of you"));
    /* the laptop answers; the phone shows it as sent from device 2 */
    snprintf(cmd, sizeof cmd, "%s send --db %s bob answered from the laptop 2>&1", h, laptop);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    snprintf(cmd, sizeof cmd, "timeout 3 %s listen --db %s 2>&1", h, phone);
    run(cmd, out, sizeof out);
    assert_non_null(strstr(out, "you (device 2) -> bob: answered from the laptop"));
    snprintf(cmd, sizeof cmd, "%s history --db %s bob 2>&1", h, phone);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "alice: answered from the laptop"));
    snprintf(cmd, sizeof cmd, "timeout 3 %s listen --db %s 2>&1", h, b);
    run(cmd, out, sizeof out);
    assert_non_null(strstr(out, "alice: answered from the laptop"));
    /* one safety number for alice, whichever device */
    snprintf(cmd, sizeof cmd, "%s safety --db %s alice 2>&1 | tr -d ' \n'", h, b);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    char *d1 = strstr(out, "device1:"), *d2 = strstr(out, "device2:");
    assert_non_null(d1);
    assert_non_null(d2);
    assert_memory_equal(d1 + 8, d2 + 8, 60);
    /* the relay lists both, by the names only alice's devices can read */
    snprintf(cmd, sizeof cmd, "%s devices --db %s 2>&1", h, phone);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "1  alice phone "));
    assert_non_null(strstr(out, "(this device)"));
    assert_non_null(strstr(out, "2  laptop "));
    assert_non_null(strstr(out, "last seen "));
    char wal[400];
    snprintf(wal, sizeof wal, "%s-wal", relay.db);
    assert_false(file_contains(relay.db, "alice phone", 11));
    assert_false(file_contains(wal, "alice phone", 11));
    assert_false(file_contains(relay.db, "laptop", 6));
    assert_false(file_contains(wal, "laptop", 6));
    /* a code that is not one */
    snprintf(cmd, sizeof cmd, "%s devices --db %s add nonsense 2>&1", h, phone);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    /* the relay "moved": a wrong URL stored, then the right one again */
    snprintf(cmd, sizeof cmd, "%s relay set --db %s ws://127.0.0.1:1 2>&1 && %s status --db %s 2>&1", h, laptop, h, laptop);
    assert_int_equal(run(cmd, out, sizeof out), 1);
    snprintf(cmd, sizeof cmd, "%s relay set --db %s %s 2>&1 && %s status --db %s 2>&1", h, laptop, url, h, laptop);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "relay:      online"));
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

static int file_has_byte(const char *path, unsigned char b)
{
    FILE *f = fopen(path, "rb");
    int c, hit = 0;
    while (f && (c = fgetc(f)) != EOF)
        if (c == b)
            hit = 1;
    if (f)
        fclose(f);
    return hit;
}

/* What a new user runs into, through the CLI: bad URLs and names get a clear error and leave
 * nothing behind; sends from stdin, empty and self messages; peer text that would drive the
 * terminal is shown escaped and --raw is JSON; a one-shot command beside a running `listen` hands
 * its message over instead of kicking it off; status says when the relay is down; per-command
 * help; cancel. */
static void test_cli_hardening(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "clihard", NULL);
    char cmd[2048], out[16384], a[400], b[400], url[64];
    const char *h = cli_path();
    snprintf(a, sizeof a, "%s", tpath("ch-ann.db"));
    snprintf(b, sizeof b, "%s", tpath("ch-ben.db"));
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", relay.port);

    /* bad URLs and names: the reason, exit 2, no file left */
    const char *bad_urls[] = { "http://127.0.0.1:1", "127.0.0.1:7443", "garbage", "ws://:99", "ws://host:99999" };
    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s init --db %s --relay %s --user ann 2>&1", h, a, bad_urls[i]);
        assert_int_equal(run(cmd, out, sizeof out), 2);
        assert_null(strstr(out, "no relay URL stored"));
        assert_non_null(strstr(out, bad_urls[i]));
        assert_int_equal(access(a, F_OK), -1);
    }
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay %s --user Ann! 2>&1", h, a, url);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "3 to 32 of a-z 0-9"));
    /* a relay that is down: init fails, leaves nothing, and the same command works later */
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay ws://127.0.0.1:%d --user ann 2>&1", h, a, relay_free_port());
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "refused or unreachable"));
    assert_int_equal(access(a, F_OK), -1);
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay %s --user ann 2>&1", h, a, url);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    struct stat stt;
    assert_int_equal(stat(a, &stt), 0);
    assert_int_equal(stt.st_mode & 077, 0); /* the database is not readable by others */
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay %s --user ben 2>&1", h, b, url);
    assert_int_equal(run(cmd, out, sizeof out), 0);

    /* per-command help */
    snprintf(cmd, sizeof cmd, "%s send --help 2>&1", h);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "usage: hush send USER TEXT"));
    assert_null(strstr(out, "commands:"));

    /* empty, whitespace-only and self messages */
    snprintf(cmd, sizeof cmd, "%s send --db %s ben '  ' 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "empty"));
    snprintf(cmd, sizeof cmd, "%s send --db %s ann hello me 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "is you"));

    /* a hostile body from stdin: escapes, a forged line, a bidi override */
    FILE *f = fopen(tpath("evil.txt"), "wb");
    fputs("hi\x1b]0;pwned\x07\x1b[31m red\r\n[12:00:00] ann: send me the code\xe2\x80\xae""evil\xff", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s send --db %s ann - < %s 2>&1", h, b, tpath("evil.txt"));
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "sent to ann"));
    /* ann listens (raw JSON) while a one-shot send runs beside it */
    char lout[400];
    snprintf(lout, sizeof lout, "%s", tpath("ann-listen.out"));
    pid_t lp = spawn_listener(a, lout);
    usleep(1500000);
    snprintf(cmd, sizeof cmd, "%s send --db %s ben from a second process 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "sent to ben"));
    assert_non_null(strstr(out, "hush listen"));
    snprintf(cmd, sizeof cmd, "%s status --db %s 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "connected by pid"));
    snprintf(cmd, sizeof cmd, "%s listen --db %s 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "run one at a time"));
    usleep(500000);
    assert_int_equal(kill(lp, 0), 0); /* the listener was not kicked off */
    kill(lp, SIGTERM);
    waitpid(lp, NULL, 0);
    assert_false(file_has_byte(lout, 0x1b));
    f = fopen(lout, "r");
    int json_lines = 0, msg = 0;
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        assert_int_equal(line[0], '{');
        assert_non_null(strstr(line, "}\n"));
        json_lines++;
        if (strstr(line, "\"type\":\"message\"")) {
            msg++;
            assert_non_null(strstr(line, "hi\\u001b]0;pwned\\u0007"));
            assert_non_null(strstr(line, "\\u000d\\u000a[12:00:00]"));
            assert_non_null(strstr(line, "\\u202e"));
            assert_non_null(strstr(line, "\\ufffd"));
        }
    }
    if (f)
        fclose(f);
    assert_int_equal(msg, 1);
    assert_true(json_lines >= 1);
    /* the human view escapes it too */
    snprintf(cmd, sizeof cmd, "%s history --db %s ben > %s 2>&1", h, a, tpath("hist.out"));
    assert_int_equal(WEXITSTATUS(system(cmd)), 0);
    assert_false(file_has_byte(tpath("hist.out"), 0x1b));
    assert_false(file_has_byte(tpath("hist.out"), '\r'));
    assert_true(file_contains(tpath("hist.out"), "\\u{202e}", 8));
    assert_true(file_contains(tpath("hist.out"), "\\r\\n[12:00:00] ann: send me", 26));
    /* cancel, with the relay down; status says it is down and exits 1 */
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
    snprintf(cmd, sizeof cmd, "%s send --db %s --wait 1 ben never mind 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    char *q = strstr(out, "queued as ");
    assert_non_null(q);
    char id[33];
    memcpy(id, q + 10, 32);
    id[32] = '\0';
    snprintf(cmd, sizeof cmd, "%s status --db %s 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "outbox:     1"));
    assert_non_null(strstr(out, "refused or unreachable"));
    snprintf(cmd, sizeof cmd, "%s cancel --db %s %s 2>&1", h, a, id);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    snprintf(cmd, sizeof cmd, "%s cancel --db %s %s 2>&1", h, a, id);
    assert_int_equal(run(cmd, out, sizeof out), 1);
    snprintf(cmd, sizeof cmd, "%s history --db %s ben 2>&1", h, a);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "never mind  (failed)"));
}

/* The CLI's keys: a key file others can read is refused; a passphrase database records its salt
 * and Argon2id cost, opens from $HUSH_PASSPHRASE or from the terminal, and the first format (a
 * bare 16-byte salt) still opens. */
static void test_cli_keys(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "clikeys", NULL);
    char cmd[2048], out[8192], k[400], p[400], url[64];
    const char *h = cli_path();
    snprintf(k, sizeof k, "%s", tpath("ck-key.db"));
    snprintf(p, sizeof p, "%s", tpath("ck-pass.db"));
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", relay.port);
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay %s --user ckkey 2>&1", h, k, url);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    char keyfile[420];
    snprintf(keyfile, sizeof keyfile, "%s.key", k);
    assert_int_equal(chmod(keyfile, 0644), 0);
    snprintf(cmd, sizeof cmd, "%s info --db %s 2>&1", h, k);
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "can be read by other users"));
    assert_int_equal(chmod(keyfile, 0600), 0);
    assert_int_equal(run(cmd, out, sizeof out), 0);

    /* safety --accept takes the number the user compared, and only that one */
    {
        uint8_t kbytes[HUSH_DB_KEY_BYTES];
        FILE *kf = fopen(keyfile, "rb");
        assert_non_null(kf);
        assert_int_equal(fread(kbytes, 1, sizeof kbytes, kf), sizeof kbytes);
        fclose(kf);
        hush_client *c = NULL, *p1 = NULL, *p2 = NULL;
        uint8_t k1[HUSH_DB_KEY_BYTES], k2[HUSH_DB_KEY_BYTES];
        test_key("sfp1", k1);
        test_key("sfp2", k2);
        assert_int_equal(hush_client_open(tpath("sfp1.db"), k1, NULL, &p1), HUSH_OK);
        assert_int_equal(hush_device_create(p1, "sfpeer", 1), HUSH_OK);
        assert_int_equal(hush_client_open(tpath("sfp2.db"), k2, NULL, &p2), HUSH_OK);
        assert_int_equal(hush_device_create(p2, "sfpeer", 1), HUSH_OK);
        assert_int_equal(hush_client_open(k, kbytes, NULL, &c), HUSH_OK);
        uint8_t *bb = NULL;
        size_t bl = 0;
        assert_int_equal(hush_bundle_export(p1, &bb, &bl), HUSH_OK);
        assert_int_equal(hush_bundle_import(c, bb, bl, NULL, NULL), HUSH_OK);
        hush_free(bb);
        assert_int_equal(hush_bundle_export(p2, &bb, &bl), HUSH_OK);
        assert_int_equal(hush_bundle_import(c, bb, bl, NULL, NULL), HUSH_ERR_IDENTITY_CHANGED);
        hush_free(bb);
        char osn[61], nsn[61];
        assert_int_equal(hush_identity_pending(c, "sfpeer", 1, osn, nsn), HUSH_OK);
        hush_client_close(c);
        hush_client_close(p1);
        hush_client_close(p2);
        char wrong[61];
        memcpy(wrong, nsn, sizeof wrong);
        wrong[59] = wrong[59] == '0' ? '1' : '0';
        snprintf(cmd, sizeof cmd, "%s safety --db %s sfpeer --accept %s < /dev/null 2>&1", h, k, wrong);
        assert_int_equal(run(cmd, out, sizeof out), 1);
        assert_non_null(strstr(out, "nothing accepted"));
        snprintf(cmd, sizeof cmd, "%s safety --db %s sfpeer --accept %.30s %.30s < /dev/null 2>&1", h, k, nsn, nsn + 30);
        assert_int_equal(run(cmd, out, sizeof out), 0);
        assert_non_null(strstr(out, "accepted: that key is trusted"));
        snprintf(cmd, sizeof cmd, "%s safety --db %s sfpeer 2>&1 | tr -d ' \n'", h, k);
        assert_int_equal(run(cmd, out, sizeof out), 0);
        assert_non_null(strstr(out, nsn));
    }

    snprintf(cmd, sizeof cmd, "HUSH_PASSPHRASE=sesame %s init --db %s --relay %s --user ckpass 2>&1", h, p, url);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    char saltfile[420];
    snprintf(saltfile, sizeof saltfile, "%s.salt", p);
    assert_true(file_contains(saltfile, "hush-argon2id v1 ops=", 21));
    snprintf(cmd, sizeof cmd, "HUSH_PASSPHRASE=wrong %s info --db %s 2>&1", h, p);
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "wrong key or passphrase"));
    /* on a terminal (a pseudo-terminal made by script(1)), asked without echo */
    snprintf(cmd, sizeof cmd, "printf 'sesame\\n' | script -qec '%s info --db %s' /dev/null 2>&1", h, p);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "Passphrase for the database:"));
    assert_non_null(strstr(out, "device:           ckpass/1"));
    /* the first format: the same salt, 16 raw bytes, MODERATE cost */
    FILE *f = fopen(saltfile, "r");
    char line[128], hex[64];
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof line, f));
    assert_int_equal(fscanf(f, "%63s", hex), 1);
    fclose(f);
    assert_non_null(strstr(line, "ops=3 mem=268435456"));
    uint8_t salt[16];
    size_t got = 0;
    assert_int_equal(sodium_hex2bin(salt, sizeof salt, hex, strlen(hex), NULL, &got, NULL), 0);
    assert_int_equal(got, 16);
    f = fopen(saltfile, "wb");
    assert_int_equal(fwrite(salt, 1, 16, f), 16);
    fclose(f);
    snprintf(cmd, sizeof cmd, "HUSH_PASSPHRASE=sesame %s info --db %s 2>&1", h, p);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* A TCP proxy that records every byte both ways (a traffic capture of the SDK <-> relay link). */
struct proxy {
    int lfd, port, target;
    FILE *cap;
    volatile int stop;
    pthread_mutex_t mu;
};

static void *proxy_pump(void *arg)
{
    struct proxy *px = arg;
    while (!px->stop) {
        struct timeval tv = { 0, 200000 };
        fd_set rs;
        FD_ZERO(&rs);
        FD_SET(px->lfd, &rs);
        if (select(px->lfd + 1, &rs, NULL, NULL, &tv) <= 0)
            continue;
        int c = accept(px->lfd, NULL, NULL);
        if (c < 0)
            continue;
        int s = wsc_tcp_connect("127.0.0.1", px->target, 2000);
        if (s < 0) {
            close(c);
            continue;
        }
        char buf[65536];
        for (int open_ = 1; open_ && !px->stop;) {
            fd_set r2;
            FD_ZERO(&r2);
            FD_SET(c, &r2);
            FD_SET(s, &r2);
            struct timeval t2 = { 0, 200000 };
            if (select((c > s ? c : s) + 1, &r2, NULL, NULL, &t2) <= 0)
                continue;
            int from[2] = { c, s }, to[2] = { s, c };
            for (int d = 0; d < 2; d++) {
                if (!FD_ISSET(from[d], &r2))
                    continue;
                ssize_t n = recv(from[d], buf, sizeof buf, 0);
                if (n <= 0) {
                    open_ = 0;
                    break;
                }
                pthread_mutex_lock(&px->mu);
                fwrite(buf, 1, (size_t)n, px->cap);
                pthread_mutex_unlock(&px->mu);
                if (send(to[d], buf, (size_t)n, MSG_NOSIGNAL) != n) {
                    open_ = 0;
                    break;
                }
            }
        }
        close(c);
        close(s);
    }
    return NULL;
}

/* The canary on the wire between a real SDK client and the relay. Relay -> client frames are not
 * masked, so a plaintext in a Deliver would be found as is; client -> relay frames are masked by
 * the WebSocket layer, so that direction is checked at the relay's end (database, log) instead. */
static void test_canary_traffic(void **state)
{
    (void)state;
    struct relay_proc relay;
    struct proxy px = { 0 };
    pthread_mutex_init(&px.mu, NULL);
    px.cap = fopen(tpath("wire.bin"), "wb");
    px.lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(px.lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(px.lfd, (struct sockaddr *)&sa, &sl), 0);
    assert_int_equal(listen(px.lfd, 4), 0);
    px.port = ntohs(sa.sin_port);
    /* the proxy is a second public address of the relay (as a reverse proxy would be) */
    char extra[96];
    snprintf(extra, sizeof extra, "public_url = ws://127.0.0.1:%d", px.port);
    relay_start(&relay, "canary_wire", extra);
    px.target = relay.port;
    pthread_t th;
    pthread_create(&th, NULL, proxy_pump, &px);
    struct relay_proc via = relay;
    via.port = px.port; /* the receiver connects through the proxy */
    struct user *a = user_new(&relay, "quin");
    struct user *b = user_new(&via, "rosa");
    const char *canary = "CANARY-wire-77e0aa-never-on-the-wire";
    for (int i = 0; i < 5; i++)
        send_text(a, "rosa", canary, NULL);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 5, 10000));
    assert_string_equal(b->r.msgs[0].text, canary);
    user_free(a);
    user_free(b);
    px.stop = 1;
    pthread_join(th, NULL);
    close(px.lfd);
    fclose(px.cap);
    assert_false(file_contains(tpath("wire.bin"), canary, strlen(canary)));
    assert_true(file_contains(tpath("wire.bin"), "quin", 4)); /* the capture holds the Deliver frames */
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
    assert_false(file_contains(relay.db, canary, strlen(canary)));
    assert_false(file_contains(relay.log, canary, strlen(canary)));
}

/* The relay says the stock is low: the SDK makes and uploads new one-time prekeys. */
static void test_prekey_replenish(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "replenish", "prekeys_low_threshold = 100");
    struct user *u = user_new(&relay, "sam");
    struct tclient *t = tc_registered(&relay, "tess", 1);
    Hush__Frame *r = tc_fetch(t, "sam"); /* 100 -> 99: below the threshold */
    assert_non_null(r);
    hush__frame__free_unpacked(r, NULL);
    char cmd[600], out[64];
    int stock = 0;
    for (int i = 0; i < 100 && stock < 150; i++) {
        usleep(100000);
        snprintf(cmd, sizeof cmd, "sqlite3 %s \"SELECT count(*) FROM one_time_prekeys WHERE username='sam'\"", relay.db);
        if (run(cmd, out, sizeof out) == 0)
            stock = atoi(out);
    }
    assert_true(stock >= 150); /* 99 + 100 new ones */
    /* the new keys work: tess starts a session from one and sam reads her message */
    assert_int_equal(tc_start_session(t, "sam"), 0);
    uint8_t *env = NULL, mid[16];
    size_t len;
    assert_int_equal(hush_encrypt(t->sdk, "sam", 1, (const uint8_t *)"fresh key", 9, NULL, mid, &env, &len), HUSH_OK);
    assert_int_equal(tc_send(t, "sam", 1, env, len, mid, NULL), 0);
    hush_free(env);
    assert_true(wait_count(&u->r, &u->r.nmsgs, 1, 10000));
    assert_string_equal(u->r.msgs[0].text, "fresh key");
    tc_free(t);
    user_free(u);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* A thread blocked in hush_net_wait_online / hush_net_flush while another stops the network (what
 * a binding's close() does): the waiters return HUSH_ERR_NOT_RUNNING at once and nothing is used
 * after it is freed (ASan run). */
struct waiter_arg {
    hush_client *c;
    int flush;
    hush_err result;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void *waiter_main(void *p)
{
    struct waiter_arg *w = p;
    w->result = w->flush ? hush_net_flush(w->c, 30000) : hush_net_wait_online(w->c, 30000);
    return NULL;
}

/* The network thread carries the name "hush-network" (debuggers, crash reports, `top -H`), and a
 * callback that calls hush_net_stop on its own client - which would join the thread it runs on and
 * free the client under the running loop - aborts the process with a message instead. */
struct selfstop {
    hush_client *c;
    char thread_name[32];
    int stop_now;
};

static void selfstop_connection(void *ctx, hush_conn_state s, hush_err e)
{
    (void)e;
    struct selfstop *t = ctx;
    if (s != HUSH_CONN_ONLINE)
        return;
    FILE *f = fopen("/proc/thread-self/comm", "r");
    if (f) {
        if (!fgets(t->thread_name, sizeof t->thread_name, f))
            t->thread_name[0] = 0;
        t->thread_name[strcspn(t->thread_name, "\n")] = 0;
        fclose(f);
    }
    if (t->stop_now)
        hush_net_stop(t->c);
}

static void test_callback_thread_and_self_stop(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "selfstop", NULL);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", relay.port);
    hush_net_opts o = { url, NULL, NULL, 0 };

    struct selfstop t = { open_client("selfname", 1, HUSH_DURABILITY_NORMAL), "", 0 };
    hush_callbacks cb = { .ctx = &t, .on_connection = selfstop_connection };
    assert_int_equal(hush_net_start(t.c, &o, &cb), HUSH_OK);
    assert_int_equal(hush_net_wait_online(t.c, 15000), HUSH_OK);
    for (int i = 0; i < 100 && !t.thread_name[0]; i++)
        usleep(10000);
    assert_string_equal(t.thread_name, "hush-network");
    hush_client_close(t.c);

    char err_path[400];
    snprintf(err_path, sizeof err_path, "%s", tpath("selfstop.err"));
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen(err_path, "w", stderr))
            _exit(3);
        struct selfstop k = { open_client("selfstop", 1, HUSH_DURABILITY_NORMAL), "", 1 };
        hush_callbacks kcb = { .ctx = &k, .on_connection = selfstop_connection };
        if (hush_net_start(k.c, &o, &kcb) != HUSH_OK)
            _exit(4);
        sleep(20);
        _exit(0); /* not reached: the callback aborts */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
    char msg[512] = "";
    FILE *f = fopen(err_path, "r");
    assert_non_null(f);
    size_t n = fread(msg, 1, sizeof msg - 1, f);
    msg[n] = 0;
    fclose(f);
    assert_non_null(strstr(msg, "called from a callback on the network thread"));
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

struct busy_sender {
    hush_client *c;
    atomic_int stop;
};

static void *busy_sender_main(void *p)
{
    struct busy_sender *b = p;
    while (!atomic_load(&b->stop))
        if (hush_send(b->c, "nobody", (const uint8_t *)"busy", 4, NULL) != HUSH_OK)
            break;
    return NULL;
}

static void test_stop_while_waiting(void **state)
{
    (void)state;
    hush_client *c = open_client("wes", 1, HUSH_DURABILITY_NORMAL);
    /* nothing listens on port 1: the client stays offline, retrying */
    hush_net_opts o = { "ws://127.0.0.1:1", NULL, NULL, 0 };
    hush_callbacks cb = { 0 };
    assert_int_equal(hush_net_start(c, &o, &cb), HUSH_OK);
    assert_int_equal(hush_send(c, "nobody", (const uint8_t *)"x", 1, NULL), HUSH_OK);
    struct waiter_arg w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct waiter_arg){ c, i & 1, HUSH_OK };
        assert_int_equal(pthread_create(&th[i], NULL, waiter_main, &w[i]), 0);
    }
    struct timespec ts = { 0, 300000000L };
    nanosleep(&ts, NULL);
    uint64_t t0 = mono_ms();
    hush_net_stop(c);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].result, HUSH_ERR_NOT_RUNNING);
    }
    assert_true(mono_ms() - t0 < 10000);
    assert_int_equal(hush_net_wait_online(c, 10), HUSH_ERR_NOT_RUNNING);
    hush_net_stop(c); /* twice is harmless */

    /* The stop may come while a waiter is looking at its condition (outside the lock, the outbox
     * query of a flush): it must still see the stop, not sleep on until its own timeout. Many
     * rounds, stopped 0-4 ms after the waiters start, while another thread keeps the client busy
     * sending (so a flush's look at the outbox waits for it): some stops land in that window. */
    struct busy_sender busy = { c, 0 };
    pthread_t busy_th;
    assert_int_equal(pthread_create(&busy_th, NULL, busy_sender_main, &busy), 0);
    for (int round = 0; round < 25; round++) {
        assert_int_equal(hush_net_start(c, &o, &cb), HUSH_OK);
        struct waiter_arg wr[8];
        pthread_t tr[8];
        for (int i = 0; i < 8; i++) {
            wr[i] = (struct waiter_arg){ c, (i + round) & 1, HUSH_OK };
            assert_int_equal(pthread_create(&tr[i], NULL, waiter_main, &wr[i]), 0);
        }
        struct timespec d = { 0, (round % 5) * 1000000L };
        nanosleep(&d, NULL);
        t0 = mono_ms();
        hush_net_stop(c);
        for (int i = 0; i < 8; i++) {
            pthread_join(tr[i], NULL);
            assert_int_equal(wr[i].result, HUSH_ERR_NOT_RUNNING);
        }
        assert_true(mono_ms() - t0 < 10000);
    }
    atomic_store(&busy.stop, 1);
    pthread_join(busy_th, NULL);
    hush_client_close(c);
}

/* libwebsockets sets SIGPIPE to SIG_IGN in every context; libhush must keep a handler the app (or
 * its runtime: the JVM, ART) installed, and may only ignore a SIGPIPE left at its default. */
static void app_sigpipe(int sig)
{
    (void)sig;
}

static void test_sigpipe_handler_kept(void **state)
{
    (void)state;
    struct sigaction sa, now, saved;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = app_sigpipe;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGPIPE, &sa, &saved), 0);
    hush_client *c = open_client("sig", 1, HUSH_DURABILITY_NORMAL);
    hush_net_opts o = { "ws://127.0.0.1:1", NULL, NULL, 0 };
    hush_callbacks cb = { 0 };
    assert_int_equal(hush_net_start(c, &o, &cb), HUSH_OK);
    assert_int_equal(sigaction(SIGPIPE, NULL, &now), 0);
    assert_true(now.sa_handler == app_sigpipe);
    hush_net_stop(c);
    /* left at the default: ignored, so a write to a dropped TLS socket cannot kill the app */
    signal(SIGPIPE, SIG_DFL);
    assert_int_equal(hush_net_start(c, &o, &cb), HUSH_OK);
    assert_int_equal(sigaction(SIGPIPE, NULL, &now), 0);
    assert_true(now.sa_handler == SIG_IGN);
    hush_client_close(c);
    sigaction(SIGPIPE, &saved, NULL);
}


/* ------------------------------------------------------------------------------------------ */
/* files */

/* A file of `size` bytes whose content is the canary repeated (so a plaintext leak is findable). */
static void make_file(const char *path, size_t size, const char *canary)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    size_t cl = strlen(canary);
    for (size_t i = 0; i < size; i++)
        fputc(i % 4096 < cl ? canary[i % 4096] : (int)(i * 2654435761u >> 24), f);
    fclose(f);
}

static int same_file(const char *a, const char *b)
{
    uint8_t da[32], db[32];
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    if (!fa || !fb) {
        if (fa)
            fclose(fa);
        if (fb)
            fclose(fb);
        return 0;
    }
    crypto_hash_sha256_state sa, sb;
    crypto_hash_sha256_init(&sa);
    crypto_hash_sha256_init(&sb);
    static uint8_t buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, fa)) > 0)
        crypto_hash_sha256_update(&sa, buf, n);
    while ((n = fread(buf, 1, sizeof buf, fb)) > 0)
        crypto_hash_sha256_update(&sb, buf, n);
    fclose(fa);
    fclose(fb);
    crypto_hash_sha256_final(&sa, da);
    crypto_hash_sha256_final(&sb, db);
    return !memcmp(da, db, 32);
}

/* 1 if any file directly in dir contains the needle. */
static int dir_contains(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *de;
    int found = 0;
    while (!found && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        found = file_contains(p, needle, strlen(needle));
    }
    closedir(d);
    return found;
}

static int file_state(struct user *u, const uint8_t mid[16])
{
    hush_attachment *a = NULL;
    if (hush_attachment_get(u->c, mid, &a) != HUSH_OK)
        return -9;
    int st = a->state;
    hush_attachment_free(a);
    return st;
}

/* Downloads the file message mid on u, then saves it to out. */
static void fetch_and_save(struct user *u, const uint8_t mid[16], const char *out, int ms)
{
    assert_int_equal(hush_attachment_download(u->c, mid), HUSH_OK);
    assert_true(wait_count(&u->r, &u->r.nfile_ready, 1, ms));
    assert_int_equal(file_state(u, mid), HUSH_FILE_READY);
    assert_int_equal(hush_attachment_save(u->c, mid, out), HUSH_OK);
}

/* A 50 MiB file to a user with two devices; the relay is killed (-9) at 60% of the upload, and it
 * resumes from where the relay's copy ends. Both devices get it once and save the same bytes.
 * Neither the relay's files, its database nor its log hold the content or the name. */
static void test_file_two_devices_relay_killed(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "files", "max_devices = 3\n");
    struct user *a = user_new(&relay, "fia"), *b = user_new(&relay, "gil");
    uint32_t dev = 0;
    hush_err le = HUSH_OK;
    struct user *b2 = user_link(&relay, b, "gil-laptop", &dev, &le);
    assert_int_equal(le, HUSH_OK);
    const char *canary = "CANARY-file-9c2e-plaintext-never-on-the-relay";
    char src[400];
    snprintf(src, sizeof src, "%s", tpath("big.bin"));
    size_t size = 50u << 20;
    make_file(src, size, canary);
    uint8_t mid[16];
    assert_int_equal(hush_send_file(a->c, "gil", src, "canary-name-7f3a.bin", "application/x-test", (const uint8_t *)"thumb", 5,
                                    mid),
                     HUSH_OK);
    assert_int_equal(state_of(a, mid), HUSH_MSG_QUEUED);
    /* kill the relay once 60% is up */
    hush_attachment *att = NULL;
    assert_int_equal(hush_attachment_get(a->c, mid, &att), HUSH_OK);
    uint64_t total = att->total;
    assert_true(total > size && total < size + size / 8 + 4096); /* padded, and each chunk's tag */
    hush_attachment_free(att);
    for (int i = 0; i < 3000; i++) {
        pthread_mutex_lock(&a->r.mu);
        uint64_t done = a->r.file_done;
        pthread_mutex_unlock(&a->r.mu);
        if (done >= total * 6 / 10)
            break;
        struct timespec ts = { 0, 10000000L };
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&a->r.mu);
    uint64_t at_kill = a->r.file_done;
    pthread_mutex_unlock(&a->r.mu);
    assert_true(at_kill >= total * 6 / 10 && at_kill < total);
    relay_stop(&relay, SIGKILL);
    relay_restart(&relay);
    assert_true(wait_count(&a->r, &a->r.nfile_sent, 1, 120000));
    assert_true(wait_state(a, mid, HUSH_MSG_SENT, 30000));
    /* resumed, not started over: the relay received about one file's worth in all */
    long in = relay_metric(&relay, "hush_blob_bytes_in_total"); /* since the restart */
    assert_true(in > 0 && (uint64_t)in <= total - at_kill + 8u * 256 * 1024);
    /* both of gus's devices get the message once, with its details */
    assert_true(wait_count(&b->r, &b->r.nfile_msgs, 1, 30000));
    assert_true(wait_count(&b2->r, &b2->r.nfile_msgs, 1, 30000));
    assert_memory_equal(b->r.file_mid, mid, 16);
    assert_int_equal(hush_attachment_get(b->c, mid, &att), HUSH_OK);
    assert_string_equal(att->file_name, "canary-name-7f3a.bin");
    assert_string_equal(att->content_type, "application/x-test");
    assert_int_equal(att->size, size);
    assert_int_equal(att->state, HUSH_FILE_REMOTE);
    assert_int_equal(att->thumbnail_len, 5);
    assert_memory_equal(att->thumbnail, "thumb", 5);
    hush_attachment_free(att);
    /* nothing to save before it is downloaded */
    assert_int_equal(hush_attachment_save(b->c, mid, tpath("early.bin")), HUSH_ERR_NOT_FOUND);
    fetch_and_save(b, mid, tpath("got1.bin"), 120000);
    fetch_and_save(b2, mid, tpath("got2.bin"), 120000);
    assert_true(same_file(src, tpath("got1.bin")));
    assert_true(same_file(src, tpath("got2.bin")));
    /* the sender sees it delivered; the history shows a file */
    assert_true(wait_state(a, mid, HUSH_MSG_DELIVERED, 20000));
    /* a file gus sends from his laptop shows on his phone as his own, and can be fetched there */
    char small[400];
    snprintf(small, sizeof small, "%s", tpath("from-laptop.txt"));
    make_file(small, 5000, "from the laptop");
    uint8_t mid2[16];
    int before = b->r.nfile_msgs;
    assert_int_equal(hush_send_file(b2->c, "fia", small, NULL, "text/plain", NULL, 0, mid2), HUSH_OK);
    assert_true(wait_count(&b->r, &b->r.nfile_msgs, before + 1, 30000));
    assert_memory_equal(b->r.file_mid, mid2, 16);
    hush_attachment *mine = NULL;
    assert_int_equal(hush_attachment_get(b->c, mid2, &mine), HUSH_OK);
    assert_true(mine->outgoing);
    assert_string_equal(mine->peer, "fia");
    hush_attachment_free(mine);
    b->r.nfile_ready = 0;
    fetch_and_save(b, mid2, tpath("own.txt"), 30000);
    assert_true(same_file(small, tpath("own.txt")));
    hush_history_entry *h = NULL;
    size_t nh = 0;
    assert_int_equal(hush_history_list(b->c, "fia", 0, 10, &h, &nh), HUSH_OK);
    assert_int_equal(nh, 2); /* newest first: the laptop's file (as sent), then fay's */
    assert_int_equal(h[0].kind, HUSH_KIND_FILE);
    assert_true(h[0].outgoing);
    assert_string_equal((const char *)h[0].body, "from-laptop.txt");
    assert_int_equal(h[1].kind, HUSH_KIND_FILE);
    assert_false(h[1].outgoing);
    assert_string_equal((const char *)h[1].body, "canary-name-7f3a.bin");
    hush_history_free(h, nh);
    /* the canary: not in the relay's files, database or log; but in the client's sealed copy? no */
    char blobdir[400], wal[400];
    snprintf(blobdir, sizeof blobdir, "%s.blobs", relay.db);
    snprintf(wal, sizeof wal, "%s-wal", relay.db);
    user_free(a);
    user_free(b);
    user_free(b2);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
    assert_false(dir_contains(blobdir, canary));
    assert_false(dir_contains(blobdir, "canary-name-7f3a"));
    assert_false(file_contains(relay.db, "canary-name-7f3a", 16));
    assert_false(file_contains(wal, "canary-name-7f3a", 16));
    assert_false(file_contains(relay.log, "canary-name-7f3a", 16));
    assert_false(file_contains(relay.log, canary, strlen(canary)));
    /* the receivers keep the file encrypted beside their database */
    char files[400];
    snprintf(files, sizeof files, "%s.files", tpath("gil.db"));
    assert_false(dir_contains(files, canary));
}

/* A file changed on the relay's disk is refused by the receiver (digest), a local copy changed
 * after download does not decrypt, a file over the relay's limit fails the message, and an
 * expired one fails the download: each with its own error, nothing written. */
static void test_file_tamper_limits_expiry(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "files_bad", "max_blob_bytes = 1m\nttl_seconds = 6\n");
    struct user *a = user_new(&relay, "hob"), *b = user_new(&relay, "isa");
    char src[400]; /* tpath's buffers rotate */
    snprintf(src, sizeof src, "%s", tpath("small.bin"));
    make_file(src, 300000, "small-file");
    uint8_t mid[16];
    assert_int_equal(hush_send_file(a->c, "isa", src, NULL, NULL, NULL, 0, mid), HUSH_OK);
    assert_true(wait_count(&b->r, &b->r.nfile_msgs, 1, 20000));
    /* flip one byte of the relay's copy */
    char blobdir[400];
    snprintf(blobdir, sizeof blobdir, "%s.blobs", relay.db);
    DIR *d = opendir(blobdir);
    assert_non_null(d);
    struct dirent *de;
    char victim[700] = "";
    while ((de = readdir(d)) != NULL)
        if (strlen(de->d_name) == 32)
            snprintf(victim, sizeof victim, "%s/%s", blobdir, de->d_name);
    closedir(d);
    assert_true(victim[0] != '\0');
    FILE *f = fopen(victim, "r+b");
    assert_non_null(f);
    fseek(f, 1000, SEEK_SET);
    int ch = fgetc(f);
    fseek(f, 1000, SEEK_SET);
    fputc(ch ^ 0x40, f);
    fclose(f);
    assert_int_equal(hush_attachment_download(b->c, mid), HUSH_OK);
    assert_true(wait_count(&b->r, &b->r.nfile_failed, 1, 20000));
    assert_int_equal(b->r.file_err, HUSH_ERR_BAD_MESSAGE);
    assert_int_equal(file_state(b, mid), HUSH_FILE_FAILED);
    assert_int_equal(hush_attachment_save(b->c, mid, tpath("bad.bin")), HUSH_ERR_NOT_FOUND);
    assert_int_equal(access(tpath("bad.bin"), F_OK), -1);
    /* put the byte back: the download can be tried again and works */
    f = fopen(victim, "r+b");
    fseek(f, 1000, SEEK_SET);
    fputc(ch, f);
    fclose(f);
    fetch_and_save(b, mid, tpath("good.bin"), 20000);
    assert_true(same_file(src, tpath("good.bin")));
    /* the local encrypted copy changed: it does not decrypt, and nothing is written */
    char local[600];
    snprintf(local, sizeof local, "%s.files", tpath("isa.db"));
    char hex[33];
    sodium_bin2hex(hex, sizeof hex, mid, 16);
    char lp[1200];
    snprintf(lp, sizeof lp, "%s/%s", local, hex);
    f = fopen(lp, "r+b");
    assert_non_null(f);
    fseek(f, 70000, SEEK_SET);
    ch = fgetc(f);
    fseek(f, 70000, SEEK_SET);
    fputc(ch ^ 1, f);
    fclose(f);
    assert_int_equal(hush_attachment_save(b->c, mid, tpath("bad2.bin")), HUSH_ERR_BAD_MESSAGE);
    assert_int_equal(access(tpath("bad2.bin"), F_OK), -1);
    /* over the relay's limit: the message fails, with the reason */
    char big[400];
    snprintf(big, sizeof big, "%s", tpath("over.bin"));
    make_file(big, 2u << 20, "over");
    uint8_t mid2[16];
    assert_int_equal(hush_send_file(a->c, "isa", big, NULL, NULL, NULL, 0, mid2), HUSH_OK);
    assert_true(wait_count(&a->r, &a->r.nfile_failed, 1, 20000));
    assert_int_equal(a->r.file_err, HUSH_ERR_TOO_BIG);
    assert_true(wait_state(a, mid2, HUSH_MSG_FAILED, 5000) || state_of(a, mid2) == HUSH_MSG_FAILED);
    assert_int_equal(state_of(a, mid2), HUSH_MSG_FAILED);
    /* expired on the relay before it was fetched */
    uint8_t mid3[16];
    b->r.nfile_failed = 0;
    int before = b->r.nfile_msgs;
    assert_int_equal(hush_send_file(a->c, "isa", src, "later.bin", NULL, NULL, 0, mid3), HUSH_OK);
    assert_true(wait_count(&b->r, &b->r.nfile_msgs, before + 1, 20000));
    sleep(7);
    assert_int_equal(hush_attachment_download(b->c, mid3), HUSH_OK);
    assert_true(wait_count(&b->r, &b->r.nfile_failed, 1, 20000));
    assert_int_equal(b->r.file_err, HUSH_ERR_NOT_FOUND);
    /* cancelled while uploading: the message fails; cancelled while downloading: back to remote */
    char slow[400];
    snprintf(slow, sizeof slow, "%s", tpath("slow.bin"));
    make_file(slow, 900000, "slow");
    uint8_t mid4[16];
    hush_net_stop(a->c); /* so that the upload cannot finish before the cancel */
    assert_int_equal(hush_send_file(a->c, "isa", slow, NULL, NULL, NULL, 0, mid4), HUSH_OK);
    assert_int_equal(file_state(a, mid4), HUSH_FILE_UPLOADING);
    assert_int_equal(hush_attachment_cancel(a->c, mid4), HUSH_OK);
    assert_int_equal(file_state(a, mid4), HUSH_FILE_FAILED);
    assert_int_equal(state_of(a, mid4), HUSH_MSG_FAILED);
    assert_int_equal(hush_attachment_cancel(a->c, mid4), HUSH_ERR_NOT_FOUND);
    char upfile[400];
    snprintf(upfile, sizeof upfile, "%s.files", tpath("hob.db"));
    sodium_bin2hex(hex, sizeof hex, mid4, 16);
    snprintf(lp, sizeof lp, "%s/%s.up", upfile, hex);
    assert_int_equal(access(lp, F_OK), -1); /* the encrypted copy is gone */
    user_start(a, &relay);
    hush_net_stop(b->c);
    assert_int_equal(hush_attachment_download(b->c, mid3), HUSH_OK);
    assert_int_equal(file_state(b, mid3), HUSH_FILE_DOWNLOADING);
    assert_int_equal(hush_attachment_cancel(b->c, mid3), HUSH_OK);
    assert_int_equal(file_state(b, mid3), HUSH_FILE_REMOTE);
    user_start(b, &relay);
    /* bad arguments */
    assert_int_equal(hush_send_file(a->c, "isa", tpath("does-not-exist"), NULL, NULL, NULL, 0, NULL), HUSH_ERR_INVALID_ARG);
    assert_int_equal(hush_send_file(a->c, "isa", src, "a/b", NULL, NULL, 0, NULL), HUSH_ERR_INVALID_ARG);
    assert_int_equal(hush_send_file(a->c, "isa", src, NULL, NULL, (const uint8_t *)src, HUSH_MAX_THUMBNAIL + 1, NULL),
                     HUSH_ERR_TOO_BIG);
    assert_int_equal(hush_send_file(a->c, "hob", src, NULL, NULL, NULL, 0, NULL), HUSH_ERR_INVALID_ARG);
    /* deleting a file message deletes the file: its key and its local copy */
    hush_history_entry *h = NULL;
    size_t nh = 0;
    int64_t row = 0;
    assert_int_equal(hush_history_list(b->c, "hob", 0, 50, &h, &nh), HUSH_OK);
    for (size_t i = 0; i < nh; i++)
        if (!memcmp(h[i].message_id, mid, 16))
            row = h[i].local_id;
    hush_history_free(h, nh);
    assert_true(row > 0);
    sodium_bin2hex(hex, sizeof hex, mid, 16);
    snprintf(lp, sizeof lp, "%s/%s", local, hex);
    assert_int_equal(access(lp, F_OK), 0);
    assert_int_equal(hush_history_delete(b->c, row), HUSH_OK);
    assert_int_equal(access(lp, F_OK), -1);
    hush_attachment *gone = NULL;
    assert_int_equal(hush_attachment_get(b->c, mid, &gone), HUSH_ERR_NOT_FOUND);
    /* what a crash leaves in the files directory goes at the next open: a half-written encrypted
     * copy, a file no message knows */
    snprintf(lp, sizeof lp, "%s/00112233445566778899aabbccddeeff.up.tmp", upfile);
    FILE *stray = fopen(lp, "w");
    assert_non_null(stray);
    fclose(stray);
    char lp2[1200];
    snprintf(lp2, sizeof lp2, "%s/ffeeddccbbaa99887766554433221100", upfile);
    stray = fopen(lp2, "w");
    assert_non_null(stray);
    fclose(stray);
    hush_net_stop(a->c);
    a->c = reopen_client(a->c, "hob", HUSH_DURABILITY_NORMAL);
    assert_int_equal(access(lp, F_OK), -1);
    assert_int_equal(access(lp2, F_OK), -1);
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* The CLI: `hush send --file` killed at 60% resumes when hush connects again; `hush listen
 * --files DIR` saves what arrives; `hush get ID --out PATH` downloads one; a second empty file
 * and a cancelled one. */
static void test_cli_files(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "cli_files", NULL);
    char cmd[4096], out[8192], a[400], b[400], dir[400];
    const char *h = cli_path();
    snprintf(a, sizeof a, "%s", tpath("cf-alice.db"));
    snprintf(b, sizeof b, "%s", tpath("cf-bob.db"));
    snprintf(dir, sizeof dir, "%s", tpath("inbox"));
    mkdir(dir, 0700);
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay ws://127.0.0.1:%d --user alice > /dev/null 2>&1", h, a, relay.port);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    snprintf(cmd, sizeof cmd, "%s init --db %s --relay ws://127.0.0.1:%d --user bob > /dev/null 2>&1", h, b, relay.port);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    char src[400];
    snprintf(src, sizeof src, "%s", tpath("report.pdf"));
    size_t size = 50u << 20;
    make_file(src, size, "cli-file");
    /* the sender is killed once 60% is on the relay */
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(h, "hush", "send", "--db", a, "bob", "--file", src, "--type", "application/pdf", (char *)NULL);
        _exit(127);
    }
    uint64_t total = size + size / 8 + 4096; /* at most: the padding and the chunks' tags */
    int killed = 0;
    for (int i = 0; i < 6000 && !killed; i++) {
        long in = relay_metric(&relay, "hush_blob_bytes_in_total");
        if (in >= (long)(size * 6 / 10)) {
            kill(pid, SIGKILL);
            killed = 1;
        } else {
            struct timespec ts = { 0, 5000000L };
            nanosleep(&ts, NULL);
        }
    }
    int st = 0;
    waitpid(pid, &st, 0);
    assert_true(killed);
    assert_true(WIFSIGNALED(st));
    long at_kill = relay_metric(&relay, "hush_blob_bytes_in_total");
    assert_true(at_kill < (long)total);
    /* bob listens with --files; alice connects again (listen) and the upload resumes */
    pid_t lb = fork();
    if (lb == 0) {
        char logp[400];
        snprintf(logp, sizeof logp, "%s", tpath("bob-listen.log"));
        int fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(h, "hush", "listen", "--db", b, "--files", dir, (char *)NULL);
        _exit(127);
    }
    snprintf(cmd, sizeof cmd, "timeout 60 %s listen --db %s > %s 2>&1 &", h, a, tpath("alice-listen.log"));
    assert_int_equal(system(cmd), 0);
    char saved[500];
    snprintf(saved, sizeof saved, "%s/report.pdf", dir);
    int ok = 0;
    for (int i = 0; i < 1200 && !ok; i++) {
        ok = access(saved, F_OK) == 0 && same_file(src, saved);
        if (!ok) {
            struct timespec ts = { 0, 50000000L };
            nanosleep(&ts, NULL);
        }
    }
    assert_true(ok);
    assert_true(relay_metric(&relay, "hush_blob_bytes_in_total") <= (long)total + 8L * 256 * 1024);
    kill(lb, SIGTERM);
    waitpid(lb, &st, 0);
    snprintf(cmd, sizeof cmd, "pkill -f 'listen --db %s' ; sleep 0.5", a);
    if (system(cmd)) {
    }
    assert_true(file_contains(tpath("bob-listen.log"), "[file] report.pdf", 17));
    assert_true(file_contains(tpath("bob-listen.log"), "saved ", 6));
    /* history shows the file with its id; get downloads it again to another path */
    snprintf(cmd, sizeof cmd, "%s history --db %s alice 2>&1 | grep -o 'id [0-9a-f]*' | head -1 | cut -c4-", h, b);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    out[strcspn(out, "\n")] = '\0';
    assert_int_equal(strlen(out), 32);
    char id[40];
    snprintf(id, sizeof id, "%s", out);
    snprintf(cmd, sizeof cmd, "%s get --db %s %s --out %s 2>&1", h, b, id, tpath("again.pdf"));
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "saved "));
    assert_true(same_file(src, tpath("again.pdf")));
    /* alice's own copy (she has none: it was deleted once uploaded): a download killed midway
     * resumes where its partial file ends */
    long out0 = relay_metric(&relay, "hush_blob_bytes_out_total");
    pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(h, "hush", "get", "--db", a, id, "--out", tpath("alice-copy.pdf"), (char *)NULL);
        _exit(127);
    }
    killed = 0;
    for (int i = 0; i < 6000 && !killed; i++) {
        if (relay_metric(&relay, "hush_blob_bytes_out_total") - out0 >= (long)(size / 2)) {
            kill(pid, SIGKILL);
            killed = 1;
        } else {
            struct timespec ts = { 0, 5000000L };
            nanosleep(&ts, NULL);
        }
    }
    waitpid(pid, &st, 0);
    assert_true(killed);
    char copy[400];
    snprintf(copy, sizeof copy, "%s", tpath("alice-copy.pdf"));
    assert_int_equal(access(copy, F_OK), -1); /* nothing half-written where the user asked */
    snprintf(cmd, sizeof cmd, "%s get --db %s %s --out %s 2>&1", h, a, id, copy);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_true(same_file(src, copy));
    assert_true(relay_metric(&relay, "hush_blob_bytes_out_total") - out0 <= (long)total + 8L * 256 * 1024);
    /* never over an existing file */
    snprintf(cmd, sizeof cmd, "%s get --db %s %s --out %s 2>&1", h, b, id, tpath("again.pdf"));
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "exists"));
    snprintf(cmd, sizeof cmd, "%s get --db %s 0123 2>&1", h, b);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    /* an empty file goes too; a one-shot send waits for its upload */
    char empty[400];
    snprintf(empty, sizeof empty, "%s", tpath("empty.txt"));
    FILE *f = fopen(empty, "w");
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s send --db %s bob --file %s 2>&1", h, a, empty);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "sent "));
    snprintf(cmd, sizeof cmd, "timeout 5 %s listen --db %s --raw --files %s 2>&1", h, b, dir);
    run(cmd, out, sizeof out);
    assert_non_null(strstr(out, "\"type\":\"file\""));
    assert_non_null(strstr(out, "\"type\":\"file_saved\""));
    struct stat sb;
    snprintf(saved, sizeof saved, "%s/empty.txt", dir);
    assert_int_equal(stat(saved, &sb), 0);
    assert_int_equal(sb.st_size, 0);
    snprintf(cmd, sizeof cmd, "%s send --db %s bob --file %s 2>&1", h, a, tpath("no-such-file"));
    assert_int_equal(run(cmd, out, sizeof out), 2);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* rooms */

/* Messages of `kind` in room `group` from `from` (text NULL: any text, else containing it). */
static int room_count(struct user *u, int kind, const char *group, const char *from, const char *text)
{
    int n = 0;
    pthread_mutex_lock(&u->r.mu);
    for (int i = 0; i < u->r.nmsgs; i++) {
        const struct got *g = &u->r.msgs[i];
        if (g->kind == kind && !strcmp(g->group, group) && !strcmp(g->from, from) && (!text || strstr(g->text, text)))
            n++;
    }
    pthread_mutex_unlock(&u->r.mu);
    return n;
}

static int wait_room(struct user *u, int kind, const char *group, const char *from, const char *text, int want, int ms)
{
    for (int i = 0; i < ms / 20; i++) {
        if (room_count(u, kind, group, from, text) >= want)
            return 1;
        struct timespec ts = { 0, 20000000L };
        nanosleep(&ts, NULL);
    }
    return room_count(u, kind, group, from, text) >= want;
}

static void copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    assert_non_null(b);
    if (a) {
        char buf[65536];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, a)) > 0)
            assert_int_equal(fwrite(buf, 1, n, b), n);
        fclose(a);
    }
    fclose(b);
}

/* Rooms over the relay: three users, one with two devices. Everyone learns the room and its
 * messages (each device once); a member's other device sees its sends; non-admins cannot change
 * it; a removed member gets nothing more, and a copy of its database made before the removal
 * (every old key kept) cannot read what comes after; a member offline during three changes
 * catches up in order; a re-added member reads again; typing reaches the room. */
static void test_rooms_online(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "roomsnet", NULL);
    struct user *a = user_new(&relay, "roma"), *b = user_new(&relay, "remy"), *c = user_new(&relay, "ruby");
    uint32_t dev2 = 0;
    hush_err le = HUSH_OK;
    struct user *b2 = user_link(&relay, b, "remy2", &dev2, &le);
    assert_int_equal(le, HUSH_OK);
    const char *members[] = { "remy", "ruby" };
    char id[HUSH_ROOM_ID_LEN + 1];
    assert_int_equal(hush_group_create(a->c, "team", members, 2, id), HUSH_OK);
    assert_true(wait_room(b, HUSH_KIND_GROUP_CHANGE, id, "roma", "created the room", 1, 15000));
    assert_true(wait_room(b2, HUSH_KIND_GROUP_CHANGE, id, "roma", "created the room", 1, 15000));
    assert_true(wait_room(c, HUSH_KIND_GROUP_CHANGE, id, "roma", "created the room", 1, 15000));
    hush_group_state *g = NULL;
    assert_int_equal(hush_group_info(c->c, id, &g), HUSH_OK);
    assert_string_equal(g->name, "team");
    assert_int_equal(g->n_members, 3);
    assert_true(g->is_member);
    assert_false(g->is_admin);
    hush_group_state_free(g, 1);

    /* a message reaches every member device once; the sender sees it SENT */
    uint8_t mid[16];
    assert_int_equal(hush_group_send(a->c, id, (const uint8_t *)"hello room", 10, mid), HUSH_OK);
    assert_true(wait_room(b, HUSH_KIND_GROUP_TEXT, id, "roma", "hello room", 1, 15000));
    assert_true(wait_room(b2, HUSH_KIND_GROUP_TEXT, id, "roma", "hello room", 1, 15000));
    assert_true(wait_room(c, HUSH_KIND_GROUP_TEXT, id, "roma", "hello room", 1, 15000));
    assert_true(wait_state(a, mid, HUSH_MSG_SENT, 15000));
    /* delivered once every member's device has it; read once every member read it */
    assert_true(wait_state(a, mid, HUSH_MSG_DELIVERED, 15000));
    int64_t lb = 0, lc = 0;
    pthread_mutex_lock(&b->r.mu);
    for (int i = 0; i < b->r.nmsgs; i++)
        if (!strcmp(b->r.msgs[i].text, "hello room"))
            lb = b->r.msgs[i].local_id;
    pthread_mutex_unlock(&b->r.mu);
    pthread_mutex_lock(&c->r.mu);
    for (int i = 0; i < c->r.nmsgs; i++)
        if (!strcmp(c->r.msgs[i].text, "hello room"))
            lc = c->r.msgs[i].local_id;
    pthread_mutex_unlock(&c->r.mu);
    assert_int_equal(hush_mark_read(b->c, lb), HUSH_OK);
    usleep(500000);
    assert_int_equal(state_of(a, mid), HUSH_MSG_DELIVERED); /* one of two members read it */
    assert_int_equal(hush_mark_read(c->c, lc), HUSH_OK);
    assert_true(wait_state(a, mid, HUSH_MSG_READ, 15000));
    pthread_mutex_lock(&a->r.mu);
    int read_reported = 0;
    for (int i = 0; i < a->r.nreceipts; i++)
        read_reported += !memcmp(a->r.receipt_mid[i], mid, 16) && a->r.receipt_state[i] == HUSH_MSG_READ;
    pthread_mutex_unlock(&a->r.mu);
    assert_int_equal(read_reported, 1);
    hush_group_receipt *gr = NULL;
    size_t ngr = 0;
    assert_int_equal(hush_group_receipts(a->c, mid, &gr, &ngr), HUSH_OK);
    assert_int_equal(ngr, 2);
    for (size_t i = 0; i < ngr; i++)
        assert_int_equal(gr[i].state, HUSH_MSG_READ);
    hush_free(gr);
    /* from a member with two devices: the other device shows it as sent */
    assert_int_equal(hush_group_send(b->c, id, (const uint8_t *)"from remy", 9, NULL), HUSH_OK);
    assert_true(wait_room(a, HUSH_KIND_GROUP_TEXT, id, "remy", "from remy", 1, 15000));
    assert_true(wait_room(c, HUSH_KIND_GROUP_TEXT, id, "remy", "from remy", 1, 15000));
    assert_true(wait_count(&b2->r, &b2->r.nsent_elsewhere, 1, 15000));
    /* typing reaches the room's members whose devices are online */
    assert_int_equal(hush_group_typing(b->c, id, 1), HUSH_OK);
    assert_true(wait_count(&a->r, &a->r.room_typing_on, 1, 15000));
    assert_string_equal(a->r.room_typing_user, "remy");
    /* non-admins cannot change it */
    const char *x[] = { "roma" };
    assert_int_equal(hush_group_add(c->c, id, x, 1), HUSH_ERR_NOT_ALLOWED);
    assert_int_equal(hush_group_remove(c->c, id, "remy"), HUSH_ERR_NOT_ALLOWED);

    /* ruby keeps a copy of her database as it is now, every key in it */
    hush_client_close(c->c);
    static const char *const sfx[] = { ".db", ".db-wal", ".db-shm" };
    for (int i = 0; i < 3; i++) {
        char f1[64], f2[64], p1[600];
        snprintf(f1, sizeof f1, "ruby%s", sfx[i]);
        snprintf(f2, sizeof f2, "rubyold%s", sfx[i]);
        snprintf(p1, sizeof p1, "%s", tpath(f1));
        copy_file(p1, tpath(f2));
    }
    c->c = open_client("ruby", 1, HUSH_DURABILITY_NORMAL);
    user_start(c, &relay);
    /* removed: she is told, and nothing after reaches her */
    assert_int_equal(hush_group_remove(a->c, id, "ruby"), HUSH_OK);
    assert_true(wait_room(c, HUSH_KIND_GROUP_CHANGE, id, "roma", "removed ruby", 1, 15000));
    assert_true(wait_room(b, HUSH_KIND_GROUP_CHANGE, id, "roma", "removed ruby", 1, 15000));
    assert_true(wait_room(b2, HUSH_KIND_GROUP_CHANGE, id, "roma", "removed ruby", 1, 15000));
    assert_int_equal(hush_group_info(c->c, id, &g), HUSH_OK);
    assert_false(g->is_member);
    hush_group_state_free(g, 1);
    assert_int_equal(hush_group_send(c->c, id, (const uint8_t *)"still here?", 11, NULL), HUSH_ERR_NOT_ALLOWED);
    hush_net_stop(b2->c); /* so the next message waits at the relay for it */
    assert_int_equal(hush_group_send(a->c, id, (const uint8_t *)"after removal", 13, mid), HUSH_OK);
    assert_true(wait_room(b, HUSH_KIND_GROUP_TEXT, id, "roma", "after removal", 1, 15000));
    assert_true(wait_state(a, mid, HUSH_MSG_SENT, 15000));
    /* the ciphertext as the relay holds it (stored once, for remy's offline device) */
    char dbp[600];
    snprintf(dbp, sizeof dbp, "%s", relay.db);
    sqlite3 *rdb = NULL;
    assert_int_equal(sqlite3_open_v2(dbp, &rdb, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(rdb, "SELECT data FROM payloads ORDER BY id DESC LIMIT 1", -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    size_t plen = (size_t)sqlite3_column_bytes(q, 0);
    uint8_t *payload = malloc(plen);
    memcpy(payload, sqlite3_column_blob(q, 0), plen);
    sqlite3_finalize(q);
    sqlite3_close(rdb);
    uint8_t okey[HUSH_DB_KEY_BYTES];
    test_key("ruby", okey);
    hush_client *old = NULL;
    assert_int_equal(hush_client_open(tpath("rubyold.db"), okey, NULL, &old), HUSH_OK);
    hush_message *m = NULL;
    hush_err de = hush_decrypt(old, "roma", 1, payload, plen, &m);
    assert_int_equal(de, HUSH_ERR_NO_GROUP_SESSION); /* roma's key was replaced at the removal */
    assert_null(m);
    hush_client_close(old);
    free(payload);
    assert_int_equal(room_count(c, HUSH_KIND_GROUP_TEXT, id, "roma", "after removal"), 0);
    user_start(b2, &relay);
    assert_true(wait_room(b2, HUSH_KIND_GROUP_TEXT, id, "roma", "after removal", 1, 15000));

    /* remy's first device is offline during three changes, then catches up in order */
    hush_net_stop(b->c);
    assert_int_equal(hush_group_rename(a->c, id, "team2"), HUSH_OK);
    const char *back[] = { "ruby" };
    assert_int_equal(hush_group_add(a->c, id, back, 1), HUSH_OK);
    assert_int_equal(hush_group_promote(a->c, id, "remy"), HUSH_OK);
    assert_int_equal(hush_net_flush(a->c, 15000), HUSH_OK);
    user_start(b, &relay);
    assert_true(wait_room(b, HUSH_KIND_GROUP_CHANGE, id, "roma", "is now an admin", 1, 15000));
    assert_int_equal(room_count(b, HUSH_KIND_GROUP_CHANGE, id, "roma", "renamed"), 1);
    assert_int_equal(room_count(b, HUSH_KIND_GROUP_CHANGE, id, "roma", "added ruby"), 1);
    assert_int_equal(hush_group_info(b->c, id, &g), HUSH_OK);
    assert_string_equal(g->name, "team2");
    assert_int_equal(g->version, 5);
    assert_int_equal(g->n_members, 3);
    assert_true(g->is_admin);
    hush_group_state_free(g, 1);
    /* ruby is back and reads what comes now */
    assert_true(wait_room(c, HUSH_KIND_GROUP_CHANGE, id, "roma", "added ruby", 1, 15000));
    assert_int_equal(hush_group_send(a->c, id, (const uint8_t *)"welcome back", 12, NULL), HUSH_OK);
    assert_true(wait_room(c, HUSH_KIND_GROUP_TEXT, id, "roma", "welcome back", 1, 15000));
    /* she leaves: the others see it */
    assert_int_equal(hush_group_leave(c->c, id), HUSH_OK);
    assert_true(wait_room(a, HUSH_KIND_GROUP_CHANGE, id, "ruby", "ruby left", 1, 15000));
    assert_int_equal(hush_group_info(a->c, id, &g), HUSH_OK);
    assert_int_equal(g->n_members, 2);
    hush_group_state_free(g, 1);
    /* nothing was reported twice, and the history holds the room as it went */
    assert_int_equal(a->r.dup_local + b->r.dup_local + b2->r.dup_local + c->r.dup_local, 0);
    assert_int_equal(room_count(b2, HUSH_KIND_GROUP_TEXT, id, "roma", "hello room"), 1);
    hush_history_entry *h = NULL;
    size_t n = 0;
    assert_int_equal(hush_group_history(b->c, id, 0, 100, &h, &n), HUSH_OK);
    int texts = 0, changes = 0;
    for (size_t i = 0; i < n; i++) {
        texts += h[i].kind == HUSH_KIND_GROUP_TEXT;
        changes += h[i].kind == HUSH_KIND_GROUP_CHANGE;
    }
    assert_int_equal(texts, 4);   /* hello room, from remy (ours), after removal, welcome back */
    assert_int_equal(changes, 6); /* created, removed, renamed, added, promoted, left */
    hush_history_free(h, n);
    user_free(a);
    user_free(b);
    user_free(b2);
    user_free(c);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* kill -9 (and SIGTERM) of the relay while two members write to a room: every member's devices
 * get every message exactly once, in each sender's order. */
static void test_room_relay_kill(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "roomkill", NULL);
    struct user *u[4];
    const char *names[4] = { "kata", "kirk", "kobe", "kyra" };
    for (int i = 0; i < 4; i++)
        u[i] = user_new(&relay, names[i]);
    char id[HUSH_ROOM_ID_LEN + 1];
    assert_int_equal(hush_group_create(u[0]->c, "k", names + 1, 3, id), HUSH_OK);
    for (int i = 1; i < 4; i++)
        assert_true(wait_room(u[i], HUSH_KIND_GROUP_CHANGE, id, "kata", NULL, 1, 15000));
    enum { PER = 60, ROUNDS = 6 };
    int sent = 0;
    for (int round = 0; round < ROUNDS; round++) {
        for (int k = 0; k < PER / ROUNDS; k++, sent++) {
            char t[32];
            snprintf(t, sizeof t, "a%03d", sent);
            assert_int_equal(hush_group_send(u[0]->c, id, (const uint8_t *)t, strlen(t), NULL), HUSH_OK);
            snprintf(t, sizeof t, "b%03d", sent);
            assert_int_equal(hush_group_send(u[1]->c, id, (const uint8_t *)t, strlen(t), NULL), HUSH_OK);
        }
        usleep(20000 + (useconds_t)randombytes_uniform(80000));
        relay_stop(&relay, round % 2 ? SIGTERM : SIGKILL);
        relay_restart(&relay);
    }
    assert_int_equal(hush_net_flush(u[0]->c, 60000), HUSH_OK);
    assert_int_equal(hush_net_flush(u[1]->c, 60000), HUSH_OK);
    for (int i = 0; i < 4; i++) {
        int want = ((i == 0 || i == 1) ? PER : 2 * PER) + (i == 0 ? 0 : 1); /* not its own; the room */
        if (!wait_count(&u[i]->r, &u[i]->r.nmsgs, want, 60000)) {
            for (int k = 0; k < 4; k++) {
                int na = 0, nb = 0, firstb = -1, lastb = -1;
                pthread_mutex_lock(&u[k]->r.mu);
                for (int j = 0; j < u[k]->r.nmsgs; j++) {
                    na += u[k]->r.msgs[j].text[0] == 'a';
                    if (u[k]->r.msgs[j].text[0] == 'b') {
                        int v = atoi(u[k]->r.msgs[j].text + 1);
                        if (firstb < 0)
                            firstb = v;
                        lastb = v;
                        nb++;
                    }
                }
                pthread_mutex_unlock(&u[k]->r.mu);
                print_message("%s: %d from kata, %d from kirk (b%03d..b%03d)\n", names[k], na, nb, firstb, lastb);
            }
            hush_err le = HUSH_OK;
            hush_conn_state cs = hush_net_state(u[i]->c, &le);
            print_message("%s: connection %d (%s), %ld waiting at the relay\n", names[i], (int)cs, hush_strerror(le),
                          relay_count(relay.db, "SELECT count(*) FROM mailbox WHERE recipient = ?1 AND recipient_device = ?2",
                                      names[i], 1));
            fail_msg("%s got %d of %d messages", names[i], u[i]->r.nmsgs, want);
        }
    }
    usleep(300000);
    for (int i = 0; i < 4; i++) {
        int next_a = 0, next_b = 0;
        pthread_mutex_lock(&u[i]->r.mu);
        for (int k = 0; k < u[i]->r.nmsgs; k++) {
            const struct got *g = &u[i]->r.msgs[k];
            if (g->kind != HUSH_KIND_GROUP_TEXT)
                continue;
            char t[32];
            if (g->text[0] == 'a') {
                snprintf(t, sizeof t, "a%03d", next_a++);
                assert_string_equal(g->text, t); /* in order, each once */
            } else {
                snprintf(t, sizeof t, "b%03d", next_b++);
                assert_string_equal(g->text, t);
            }
        }
        pthread_mutex_unlock(&u[i]->r.mu);
        assert_int_equal(next_a, i == 0 ? 0 : PER);
        assert_int_equal(next_b, i == 1 ? 0 : PER);
        assert_int_equal(u[i]->r.dup_local, 0);
    }
    for (int i = 0; i < 4; i++)
        user_free(u[i]);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* A room of twenty users with two devices each: every device gets every other user's message
 * once, and its own user's as sent from the other device. */
static void test_room_of_twenty(void **state)
{
    (void)state;
    enum { N = 20 };
    struct relay_proc relay;
    relay_start(&relay, "roomtwenty", NULL);
    struct user *d1[N], *d2[N];
    char names[N][16];
    const char *others[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "tw%02d", i);
        d1[i] = user_new(&relay, names[i]);
        char db[24];
        snprintf(db, sizeof db, "tw%02d-b", i);
        uint32_t dev = 0;
        hush_err le = HUSH_OK;
        d2[i] = user_link(&relay, d1[i], db, &dev, &le);
        assert_int_equal(le, HUSH_OK);
        others[i] = names[i];
    }
    char id[HUSH_ROOM_ID_LEN + 1];
    assert_int_equal(hush_group_create(d1[0]->c, "twenty", others + 1, N - 1, id), HUSH_OK);
    for (int i = 1; i < N; i++) {
        assert_true(wait_room(d1[i], HUSH_KIND_GROUP_CHANGE, id, "tw00", NULL, 1, 30000));
        assert_true(wait_room(d2[i], HUSH_KIND_GROUP_CHANGE, id, "tw00", NULL, 1, 30000));
    }
    for (int i = 0; i < N; i++) {
        char t[64];
        snprintf(t, sizeof t, "hello from %.15s", names[i]);
        assert_int_equal(hush_group_send(d1[i]->c, id, (const uint8_t *)t, strlen(t), NULL), HUSH_OK);
    }
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < N; j++) {
            if (i == j)
                continue;
            char t[64];
            snprintf(t, sizeof t, "hello from %.15s", names[j]);
            assert_true(wait_room(d1[i], HUSH_KIND_GROUP_TEXT, id, names[j], t, 1, 60000));
            assert_true(wait_room(d2[i], HUSH_KIND_GROUP_TEXT, id, names[j], t, 1, 60000));
        }
        assert_true(wait_count(&d2[i]->r, &d2[i]->r.nsent_elsewhere, 1, 30000));
    }
    usleep(300000);
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < N; j++) {
            char t[64];
            snprintf(t, sizeof t, "hello from %.15s", names[j]);
            int want = i == j ? 0 : 1;
            assert_int_equal(room_count(d1[i], HUSH_KIND_GROUP_TEXT, id, names[j], t), want);
            assert_int_equal(room_count(d2[i], HUSH_KIND_GROUP_TEXT, id, names[j], t), want);
        }
        assert_int_equal(d1[i]->r.dup_local + d2[i]->r.dup_local, 0);
    }
    for (int i = 0; i < N; i++) {
        user_free(d1[i]);
        user_free(d2[i]);
    }
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* Three users, the first with a second device (linked), in a room the first creates: every
 * member's device (and the second one) has learned it. names: the three users, then the second
 * device's database. */
struct trio {
    struct user *a, *a2, *b, *c;
    char id[HUSH_ROOM_ID_LEN + 1];
};

static void trio_start(struct trio *t, const struct relay_proc *relay, const char *const names[4], const char *room)
{
    t->a = user_new(relay, names[0]);
    t->b = user_new(relay, names[1]);
    t->c = user_new(relay, names[2]);
    uint32_t dev2 = 0;
    hush_err le = HUSH_OK;
    t->a2 = user_link(relay, t->a, names[3], &dev2, &le);
    assert_int_equal(le, HUSH_OK);
    const char *members[] = { names[1], names[2] };
    assert_int_equal(hush_group_create(t->a->c, room, members, 2, t->id), HUSH_OK);
    struct user *who[] = { t->b, t->c, t->a2 };
    for (int i = 0; i < 3; i++)
        assert_true(wait_room(who[i], HUSH_KIND_GROUP_CHANGE, t->id, names[0], NULL, 1, 15000));
}

static void trio_free(struct trio *t)
{
    user_free(t->a);
    user_free(t->a2);
    user_free(t->b);
    user_free(t->c);
}

/* A file to a room: uploaded once, its pointer to every member's devices as a room message; each
 * downloads and saves the same bytes; the sender's other device sees it as sent. */
static void test_room_file(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "roomfile", NULL);
    struct trio t;
    const char *const names[] = { "fran", "fred2", "fynn", "fran2" };
    trio_start(&t, &relay, names, "files");
    struct user *a = t.a, *a2 = t.a2, *b = t.b, *c = t.c;
    const char *id = t.id;
    enum { SIZE = 300 * 1024 + 7 };
    uint8_t *content = malloc(SIZE);
    randombytes_buf(content, SIZE);
    char src[600];
    snprintf(src, sizeof src, "%s", tpath("room-photo.jpg"));
    FILE *f = fopen(src, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, SIZE, f), SIZE);
    fclose(f);
    uint8_t mid[16];
    assert_int_equal(hush_group_send_file(a->c, id, src, NULL, "image/jpeg", NULL, 0, mid), HUSH_OK);
    assert_true(wait_room(b, HUSH_KIND_FILE, id, "fran", "room-photo.jpg", 1, 30000));
    assert_true(wait_room(c, HUSH_KIND_FILE, id, "fran", "room-photo.jpg", 1, 30000));
    assert_true(wait_state(a, mid, HUSH_MSG_SENT, 30000));
    assert_true(wait_count(&a2->r, &a2->r.nfile_msgs, 1, 30000)); /* ours, from the other device */
    struct user *who[] = { b, c };
    for (int i = 0; i < 2; i++) {
        char out[600];
        snprintf(out, sizeof out, "%s", tpath(i ? "room-c.jpg" : "room-b.jpg"));
        fetch_and_save(who[i], mid, out, 30000);
        FILE *g = fopen(out, "rb");
        assert_non_null(g);
        uint8_t *got = malloc(SIZE + 1);
        assert_int_equal(fread(got, 1, SIZE + 1, g), SIZE);
        fclose(g);
        assert_memory_equal(got, content, SIZE);
        free(got);
    }
    /* the room's history shows it as a file; a member who left cannot send one */
    hush_history_entry *h = NULL;
    size_t n = 0;
    assert_int_equal(hush_group_history(b->c, id, 0, 10, &h, &n), HUSH_OK);
    int files = 0;
    for (size_t i = 0; i < n; i++)
        files += h[i].kind == HUSH_KIND_FILE && !strcmp(h[i].peer, "fran");
    assert_int_equal(files, 1);
    hush_history_free(h, n);
    assert_int_equal(hush_group_leave(c->c, id), HUSH_OK);
    assert_int_equal(hush_group_send_file(c->c, id, src, NULL, NULL, NULL, 0, NULL), HUSH_ERR_NOT_ALLOWED);
    free(content);
    trio_free(&t);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* What u was last told of who's presence: *online and the number of updates so far (0: none). */
static int presence_of(struct user *u, const char *who, int *online, uint64_t *last_seen)
{
    int n = 0;
    pthread_mutex_lock(&u->r.mu);
    for (int k = 0; k < u->r.npres; k++)
        if (!strcmp(u->r.pres[k].user, who)) {
            n = u->r.pres[k].n;
            if (online)
                *online = u->r.pres[k].online;
            if (last_seen)
                *last_seen = u->r.pres[k].last_seen;
        }
    pthread_mutex_unlock(&u->r.mu);
    return n;
}

/* Waits until u's last word on who's presence is `online` (and came after `after` updates). */
static int wait_presence(struct user *u, const char *who, int online, int after, int ms)
{
    for (int i = 0; i < ms / 20; i++) {
        int on = -1;
        if (presence_of(u, who, &on, NULL) > after && on == online)
            return 1;
        struct timespec ts = { 0, 20000000L };
        nanosleep(&ts, NULL);
    }
    return 0;
}

static int shares_presence(struct user *u, const char *id)
{
    hush_group_state *g = NULL;
    if (hush_group_info(u->c, id, &g) != HUSH_OK)
        return -1;
    int v = g->shares_presence;
    hush_group_state_free(g, 1);
    return v;
}

/* Presence shared with a room: nobody follows anyone by hand. Members see the sharer's presence
 * (and only once it is shared), the sharer's other device takes the decision over (its own
 * logins keep it shared), a removed member is told "offline" once and nothing after, and turning
 * it off does the same for everyone. */
static void test_room_presence(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "roompres", NULL);
    struct trio t;
    const char *const names[] = { "pia", "pete", "polly", "pia2" };
    trio_start(&t, &relay, names, "lobby");
    struct user *a = t.a, *a2 = t.a2, *b = t.b, *c = t.c;
    const char *id = t.id;
    /* a message through the room, so every member's subscriptions have been sent */
    assert_int_equal(hush_group_send(a->c, id, (const uint8_t *)"hi", 2, NULL), HUSH_OK);
    assert_true(wait_room(b, HUSH_KIND_GROUP_TEXT, id, "pia", "hi", 1, 15000));
    assert_true(wait_room(c, HUSH_KIND_GROUP_TEXT, id, "pia", "hi", 1, 15000));
    usleep(300000);
    assert_int_equal(presence_of(b, "pia", NULL, NULL), 0); /* not shared: nothing */
    assert_int_equal(shares_presence(a, id), 0);

    assert_int_equal(hush_group_share_presence(a->c, id, 1), HUSH_OK);
    assert_int_equal(shares_presence(a, id), 1);
    assert_true(wait_presence(b, "pia", 1, 0, 15000));
    assert_true(wait_presence(c, "pia", 1, 0, 15000));
    /* the other device of pia learns the choice, and its own logins keep it */
    for (int i = 0; i < 750 && shares_presence(a2, id) != 1; i++)
        usleep(20000);
    assert_int_equal(shares_presence(a2, id), 1);
    hush_net_stop(a->c);
    hush_net_stop(a2->c);
    assert_true(wait_presence(b, "pia", 0, 1, 15000)); /* both devices gone: offline */
    int nb = presence_of(b, "pia", NULL, NULL);
    user_start(a2, &relay); /* only the second device comes back: it sends the lists itself */
    assert_true(wait_presence(b, "pia", 1, nb, 15000));
    send_text(a2, "pete", "still here", NULL);
    assert_true(wait_count(&b->r, &b->r.nmsgs, 1, 15000));
    usleep(500000);
    int on = -1;
    presence_of(b, "pia", &on, NULL);
    assert_int_equal(on, 1); /* a2's lists did not take the room back out */

    /* polly removed (by the other device, while the first one is away and has mail waiting): told
     * "offline, never seen" once, then nothing more, not even when the first device comes back */
    int nc = presence_of(c, "pia", NULL, NULL);
    for (int i = 0; i < 40; i++)
        send_text(b, "pia", "while you were away", NULL);
    assert_true(hush_net_flush(b->c, 30000) == HUSH_OK);
    assert_int_equal(hush_group_remove(a2->c, id, "polly"), HUSH_OK);
    assert_true(wait_room(c, HUSH_KIND_GROUP_CHANGE, id, "pia", NULL, 2, 15000));
    assert_true(wait_presence(c, "pia", 0, nc, 15000));
    uint64_t seen = 1;
    presence_of(c, "pia", NULL, &seen);
    assert_int_equal(seen, 0);
    nc = presence_of(c, "pia", NULL, NULL);
    nb = presence_of(b, "pia", NULL, NULL);
    user_start(a, &relay);
    hush_net_stop(a2->c);
    hush_net_stop(a->c);
    assert_true(wait_presence(b, "pia", 0, nb, 15000)); /* pete still follows every change */
    usleep(500000);
    assert_int_equal(presence_of(c, "pia", NULL, NULL), nc); /* polly: nothing */

    /* off (while pia is offline: sent at the next login), and pete is told once */
    user_start(a, &relay);
    assert_true(wait_presence(b, "pia", 1, nb + 1, 15000));
    nb = presence_of(b, "pia", NULL, NULL);
    assert_int_equal(hush_group_share_presence(a->c, id, 0), HUSH_OK);
    assert_true(wait_presence(b, "pia", 0, nb, 15000));
    presence_of(b, "pia", NULL, &seen);
    assert_int_equal(seen, 0);
    /* a member who is not in the room may not share with it; turning it off is always accepted */
    assert_int_equal(hush_group_share_presence(c->c, id, 1), HUSH_ERR_NOT_ALLOWED);
    assert_int_equal(hush_group_share_presence(c->c, id, 0), HUSH_OK);
    trio_free(&t);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* Runs a hush command line (printf-style, stderr joined to stdout) into out; asserts its exit
 * status when want >= 0. */
static void cli_run(char *out, size_t cap, int want, const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    strncat(cmd, " 2>&1", sizeof cmd - strlen(cmd) - 1);
    int rc = run(cmd, out, cap);
    if (want >= 0 && rc != want)
        fail_msg("%s: exit %d, wanted %d: %s", cmd, rc, want, out);
}

/* The README's room walk-through through the CLI, and presence shared with the room. */
static void test_cli_rooms(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "clirooms", NULL);
    char out[8192], db[3][400];
    const char *h = cli_path(), *names[] = { "rhea", "rolf", "rosa" };
    for (int i = 0; i < 3; i++) {
        snprintf(db[i], sizeof db[i], "%s", tpath(names[i]));
        cli_run(out, sizeof out, 0, "%s init --db %s --relay ws://127.0.0.1:%d --user %s", h, db[i], relay.port, names[i]);
    }
    cli_run(out, sizeof out, 0, "%s group create --db %s team rolf rosa", h, db[0]);
    assert_non_null(strstr(out, "created #team (id "));
    cli_run(out, sizeof out, 0, "%s send --db %s '#team' hello both", h, db[0]);
    assert_non_null(strstr(out, "sent to #team"));
    cli_run(out, sizeof out, 0, "%s group presence --db %s '#team' on", h, db[0]);
    assert_non_null(strstr(out, "your presence is shared with the room"));
    cli_run(out, sizeof out, 0, "%s group info --db %s '#team'", h, db[0]);
    assert_non_null(strstr(out, "3 member(s)  (you are an admin)  (your presence is shared)"));
    /* rolf sees the room, its message, and rhea's presence without following her by hand */
    cli_run(out, sizeof out, -1, "timeout 4 %s listen --db %s --raw", h, db[1]);
    assert_non_null(strstr(out, "hello both"));
    assert_non_null(strstr(out, "{\"type\":\"presence\",\"user\":\"rhea\",\"state\":\"offline\",\"last_seen_ms\":"));
    cli_run(out, sizeof out, 0, "%s group list --db %s", h, db[1]);
    assert_non_null(strstr(out, "#team  id "));
    assert_non_null(strstr(out, "3 member(s)"));
    cli_run(out, sizeof out, 0, "%s group remove --db %s '#team' rosa", h, db[0]);
    assert_non_null(strstr(out, "remove: done"));
    /* rosa learns it, sees no presence of rhea's, and can no longer share with the room */
    cli_run(out, sizeof out, -1, "timeout 4 %s listen --db %s --raw", h, db[2]);
    assert_non_null(strstr(out, "hello both"));
    assert_null(strstr(out, "\"presence\""));
    cli_run(out, sizeof out, 0, "%s history --db %s '#team'", h, db[2]);
    assert_non_null(strstr(out, "* rhea removed rosa"));
    cli_run(out, sizeof out, 1, "%s group presence --db %s '#team' on", h, db[2]);
    assert_non_null(strstr(out, "you are no longer in that room"));
    cli_run(out, sizeof out, 2, "%s group presence --db %s '#team' maybe", h, db[0]);
    cli_run(out, sizeof out, 0, "%s group presence --db %s '#team' off", h, db[0]);
    assert_non_null(strstr(out, "your presence is no longer shared with the room"));
    /* rolf no longer hears of rhea */
    cli_run(out, sizeof out, -1, "timeout 4 %s listen --db %s --raw", h, db[1]);
    assert_null(strstr(out, "\"presence\""));
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

/* A relay that drops a member's copy of the sender's key (the pairwise part of the first room
 * message): the member cannot decrypt, asks the sender, gets the message again pairwise (once),
 * and reads what follows. */
static void test_room_lost_key_recovered(void **state)
{
    (void)state;
    struct relay_proc relay;
    relay_start(&relay, "roomkey", NULL);
    struct user *a = user_new(&relay, "lena"), *b = user_new(&relay, "lior");
    send_text(b, "lena", "hi", NULL); /* sessions both ways */
    assert_true(wait_count(&a->r, &a->r.nmsgs, 1, 15000));
    hush_net_stop(b->c);
    const char *members[] = { "lior" };
    char id[HUSH_ROOM_ID_LEN + 1];
    assert_int_equal(hush_group_create(a->c, "keys", members, 1, id), HUSH_OK);
    uint8_t mid[16];
    assert_int_equal(hush_group_send(a->c, id, (const uint8_t *)"first", 5, mid), HUSH_OK);
    assert_true(wait_state(a, mid, HUSH_MSG_SENT, 15000));
    /* the relay loses lior's copy of lena's key */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(relay.db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, "UPDATE mailbox SET envelope = X'' WHERE seq = (SELECT max(seq) FROM mailbox "
                                  "WHERE recipient = 'lior')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_changes(db), 1);
    sqlite3_close(db);
    user_start(b, &relay);
    assert_true(wait_room(b, HUSH_KIND_GROUP_CHANGE, id, "lena", NULL, 1, 15000));
    assert_true(wait_room(b, HUSH_KIND_GROUP_TEXT, id, "lena", "first", 1, 20000)); /* sent again */
    assert_true(b->r.errors >= 1); /* it was told the message waited for its key */
    assert_int_equal(hush_group_send(a->c, id, (const uint8_t *)"second", 6, NULL), HUSH_OK);
    assert_true(wait_room(b, HUSH_KIND_GROUP_TEXT, id, "lena", "second", 1, 20000));
    usleep(300000);
    assert_int_equal(room_count(b, HUSH_KIND_GROUP_TEXT, id, "lena", "first"), 1);
    assert_int_equal(room_count(b, HUSH_KIND_GROUP_TEXT, id, "lena", "second"), 1);
    assert_int_equal(b->r.dup_local, 0);
    /* its history has the message once, under the room */
    hush_history_entry *h = NULL;
    size_t n = 0;
    assert_int_equal(hush_group_history(b->c, id, 0, 10, &h, &n), HUSH_OK);
    int firsts = 0;
    for (size_t i = 0; i < n; i++)
        firsts += h[i].kind == HUSH_KIND_GROUP_TEXT && h[i].body_len == 5 && !memcmp(h[i].body, "first", 5);
    assert_int_equal(firsts, 1);
    hush_history_free(h, n);
    user_free(a);
    user_free(b);
    assert_int_equal(relay_stop(&relay, SIGTERM), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_users),
        cmocka_unit_test(test_offline_1000),
        cmocka_unit_test(test_typing_presence),
        cmocka_unit_test(test_identity_change_online),
        cmocka_unit_test(test_ghost_device),
        cmocka_unit_test(test_undeliverable),
        cmocka_unit_test(test_failing_sender_does_not_hold_window),
        cmocka_unit_test(test_receipts_never_backwards),
        cmocka_unit_test(test_relay_restarts),
        cmocka_unit_test(test_canary_online),
        cmocka_unit_test(test_file_two_devices_relay_killed),
        cmocka_unit_test(test_file_tamper_limits_expiry),
        cmocka_unit_test(test_cli_files),
        cmocka_unit_test(test_unknown_user_and_bad_url),
        cmocka_unit_test(test_kill9_receiver),
        cmocka_unit_test(test_bad_relay),
        cmocka_unit_test(test_prekey_storm_bounded),
        cmocka_unit_test(test_cli_quickstart),
        cmocka_unit_test(test_cli_hardening),
        cmocka_unit_test(test_cli_keys),
        cmocka_unit_test(test_canary_traffic),
        cmocka_unit_test(test_prekey_replenish),
        cmocka_unit_test(test_stop_while_waiting),
        cmocka_unit_test(test_callback_thread_and_self_stop),
        cmocka_unit_test(test_sigpipe_handler_kept),
        cmocka_unit_test(test_linked_devices),
        cmocka_unit_test(test_rooms_online),
        cmocka_unit_test(test_room_relay_kill),
        cmocka_unit_test(test_room_of_twenty),
        cmocka_unit_test(test_room_file),
        cmocka_unit_test(test_room_lost_key_recovered),
        cmocka_unit_test(test_room_presence),
        cmocka_unit_test(test_cli_rooms),
        cmocka_unit_test(test_cli_two_devices),
        cmocka_unit_test(test_device_removal),
        cmocka_unit_test(test_recovery),
    };
    if (getenv("HUSH_TEST_ONLY"))
        cmocka_set_test_filter(getenv("HUSH_TEST_ONLY")); /* one test by name, while working on it */
    return cmocka_run_group_tests_name("online", tests, NULL, NULL);
}
