/*
 * server.c - the event loops. Each loop thread runs its own libwebsockets context listening on the
 * shared port (SO_REUSEPORT), so the kernel spreads connections over the loops. Each connection is
 * an actor owned by its loop; other threads reach it only through loop_post().
 *
 * libwebsockets rules kept here: a connection is never freed inside its own callback (we ask lws
 * to close it by returning -1 from a callback about that connection, and free our state in
 * LWS_CALLBACK_CLOSED); we write only on SERVER_WRITEABLE; every inbound message is capped before
 * we buffer it, with a tighter cap before authentication.
 */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>
#include <openssl/ssl.h>
#include <sodium.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hmap.h"
#include "relay.h"
#include "server.h"
#include "webpush.h"

/* ST_CLOSING: authentication failed; whatever else arrives before the close is dropped (the
 * challenge is spent, so nothing may be checked against it again). */
/* ST_PROVISIONING: a device to be linked waits (unauthenticated) for its link box, then registers.
 * ST_RECOVERING: the user's recovery key was proven; the new device's registration follows. */
enum conn_state { ST_HELLO, ST_AUTH_WAIT, ST_PROVISIONING, ST_RECOVERING, ST_AUTH_PENDING, ST_AUTHED, ST_CLOSING };

struct conn {
    uint64_t id;
    struct lws *wsi;
    struct loop *loop;
    enum conn_state state;
    uint8_t challenge[HWIRE_CHALLENGE_BYTES];
    char username[RELAY_USERNAME_MAX + 1];
    uint32_t device_id;
    char prov_addr[HWIRE_PROVISION_ADDRESS_LEN + 1]; /* ST_PROVISIONING: the address it waits at */
    /* inbound message being assembled */
    struct hwire_rx rx;          /* a message arriving in pieces */
    /* outbound queue */
    struct outbuf *out_head, *out_tail;
    size_t out_count;
    size_t out_bytes;
    int rx_paused;               /* the peer is not reading its answers: stop reading its requests */
    int rx_off;                  /* reading is switched off (rx_paused or the gate's pause) */
    struct jobgate *gate;        /* storage work in flight for this connection */
    int blob_inflight;           /* file requests handed to the blob thread, not yet answered */
    size_t rx_frame_len;         /* wire size of the request being handled */
    int closing;                 /* close once the queue is flushed */
    int close_code;
    /* mailbox delivery */
    uint64_t cursor;             /* highest seq handed to this connection */
    uint64_t *inflight;          /* delivered, not yet acked (window slots) */
    uint32_t ninflight;
    int fetch_outstanding;
    int need_fetch;
    int drained;
    int sent_queue_empty;
    /* live deliveries that came while the window was full, in seq order, delivered as acks free
     * it (beyond BACKLOG_MAX_*: dropped, and fetched from the mailbox instead) */
    struct outbuf *bl_head, *bl_tail;
    size_t bl_count, bl_bytes;
    /* send rate limit */
    double tokens;
    uint64_t tokens_ms;
    /* deadlines, checked by the loop's sweep once a second (a timer per connection made every
     * timer insertion walk a list as long as the loop's connections) */
    uint64_t deadline_ms;        /* hello / authentication / provisioning must be done by then (0: none) */
    uint64_t last_rx_ms;         /* the last frame or pong from the peer */
    uint64_t ping_sent_ms;
    int ping_due;                /* write a ping at the next WRITEABLE */
};

struct pss {
    struct conn *c;
};

struct loop {
    int idx;
    pthread_t th;
    struct lws_context *ctx;
    struct lws_vhost *vh;
    int listen_fd;
    struct hmap conns;           /* conn id -> struct conn* (loop thread only) */
    int shutting_down;
    int done;
    uint64_t shutdown_deadline_ms;
    lws_sorted_usec_list_t sul_sweep; /* deadlines and keepalive of every connection, once a second */
};

static struct loop g_loops[RELAY_MAX_LOOPS];
static int g_nloops;
/* No lws validity timers (they would be re-armed, one sorted insertion each, on every frame): the
 * loop's sweep pings and closes idle connections instead. Without a policy of its own a vhost gets
 * lws's default one, so this zero policy is set explicitly. */
static const lws_retry_bo_t g_no_validity;
static const struct relay_config *g_cfg;
static atomic_ullong g_next_conn_id = 1;

#define OUTQ_PAUSE 512
#define OUTQ_RESUME 64
/* ...and by bytes: file chunks are up to 256 KiB each, so 512 of them would be 128 MiB held for a
 * client that asks and never reads */
#define OUTQ_BYTES_PAUSE (4u << 20)
#define OUTQ_BYTES_RESUME (1u << 20)
#define WRITES_PER_CALLBACK 32

/* An inbox's wake-up: called with the inbox's lock held, never after inbox_close. */
static void wake_loop(void *arg)
{
    struct loop *l = arg;
    lws_cancel_service(l->ctx);
}

/* ------------------------------------------------------------------------------------------ */
/* output */

/* Reading a connection's socket is off while it does not read its answers (output queue over
 * OUTQ_PAUSE) or while its storage work in flight is over the gate's marks. */
static void rx_update(struct conn *c)
{
    int off = c->rx_paused || atomic_load(&c->gate->paused) || c->blob_inflight >= RELAY_BLOB_CONN_INFLIGHT;
    if (off != c->rx_off) {
        lws_rx_flow_control(c->wsi, !off);
        c->rx_off = off;
    }
}

static void enqueue(struct conn *c, struct outbuf *o)
{
    if (!o)
        return;
    o->next = NULL;
    if (c->out_tail)
        c->out_tail->next = o;
    else
        c->out_head = o;
    c->out_tail = o;
    c->out_count++;
    c->out_bytes += o->len;
    if ((c->out_count > OUTQ_PAUSE || c->out_bytes > OUTQ_BYTES_PAUSE) && !c->rx_paused) {
        /* The peer is not reading: stop reading its requests until it catches up. */
        c->rx_paused = 1;
        rx_update(c);
    }
    lws_callback_on_writable(c->wsi);
}

static void enqueue_frame(struct conn *c, const Hush__Frame *f)
{
    enqueue(c, outbuf_from_frame(f, 0));
}

static void reply(struct conn *c, uint64_t id, Hush__ErrorCode code, const char *msg)
{
    enqueue(c, outbuf_result(id, code, msg));
}

/* Sends a Closing push (when code != 0), then closes once everything queued is written. */
static void close_after_flush(struct conn *c, Hush__ErrorCode code, const char *msg, int ws_status)
{
    if (c->closing)
        return;
    if (code) {
        Hush__Closing cl = HUSH__CLOSING__INIT;
        cl.code = code;
        cl.message = (char *)msg;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.msg_case = HUSH__FRAME__MSG_CLOSING;
        f.closing = &cl;
        enqueue_frame(c, &f);
        metrics_error(code);
    }
    c->closing = 1;
    c->close_code = ws_status;
    lws_callback_on_writable(c->wsi);
}

/* ------------------------------------------------------------------------------------------ */
/* mailbox delivery */

/* Queues a storage job for this connection, charged to its gate: reading stops while the
 * connection's work in flight is over the marks (EV_RESUME turns it back on). */
static void submit(struct conn *c, struct job *j)
{
    j->cost = c->rx_frame_len + sizeof *j;
    atomic_fetch_add(&c->gate->refs, 1);
    j->gate = c->gate;
    if (gate_charge(c->gate, j->cost))
        rx_update(c);
    storage_submit(j);
}

static void maybe_fetch(struct conn *c)
{
    if (c->state != ST_AUTHED || c->closing || c->fetch_outstanding)
        return;
    if (c->drained && !c->need_fetch)
        return;
    if (c->ninflight >= g_cfg->delivery_window)
        return;
    struct job *j = job_new(JOB_FETCH_MAIL, c->loop->idx, c->id, 0);
    if (!j)
        return;
    snprintf(j->username, sizeof j->username, "%s", c->username);
    j->device_id = c->device_id;
    j->after_seq = c->cursor;
    j->limit = g_cfg->delivery_window - c->ninflight;
    c->fetch_outstanding = 1;
    c->need_fetch = 0;
    storage_submit(j); /* one at a time per connection: not charged to the gate */
}

static void deliver(struct conn *c, struct outbuf *o)
{
    c->cursor = o->seq;
    c->inflight[c->ninflight++] = o->seq;
    enqueue(c, o);
}

/* A room of a few members whose writers keep many messages in flight can put more deliveries on
 * a device than its window: they wait here, in memory, rather than going through the mailbox (a
 * fetch writes every message still waiting for its ack first). */
#define BACKLOG_MAX_FRAMES 1024
#define BACKLOG_MAX_BYTES (2u << 20)

static void backlog_drop(struct conn *c)
{
    while (c->bl_head) {
        struct outbuf *n = c->bl_head->next;
        free(c->bl_head);
        c->bl_head = n;
    }
    c->bl_tail = NULL;
    c->bl_count = c->bl_bytes = 0;
}

/* Delivers what waits while the window has room. */
static void backlog_drain(struct conn *c)
{
    while (c->bl_head && c->ninflight < g_cfg->delivery_window) {
        struct outbuf *o = c->bl_head;
        c->bl_head = o->next;
        if (!c->bl_head)
            c->bl_tail = NULL;
        c->bl_count--;
        c->bl_bytes -= o->len;
        o->next = NULL;
        deliver(c, o);
    }
}

static void on_mail(struct conn *c, struct event *e)
{
    c->fetch_outstanding = 0;
    if (!e->ok && !e->mail && !e->drained) {
        /* storage failed: try again in a second */
        c->need_fetch = 1;
        lws_set_timer_usecs(c->wsi, 1000000);
        return;
    }
    while (e->mail) {
        struct outbuf *o = e->mail;
        e->mail = o->next;
        if (o->seq > c->cursor && c->ninflight < g_cfg->delivery_window)
            deliver(c, o);
        else
            free(o);
    }
    if (e->drained) {
        c->drained = 1;
        if (!c->sent_queue_empty) {
            Hush__QueueEmpty qe = HUSH__QUEUE_EMPTY__INIT;
            Hush__Frame f = HUSH__FRAME__INIT;
            f.msg_case = HUSH__FRAME__MSG_QUEUE_EMPTY;
            f.queue_empty = &qe;
            enqueue_frame(c, &f);
            c->sent_queue_empty = 1;
        }
    } else {
        c->need_fetch = 1;
    }
    maybe_fetch(c);
}

static void on_live(struct conn *c, struct event *e)
{
    struct outbuf *o = e->out;
    if (c->state != ST_AUTHED || !o || o->seq <= c->cursor)
        return;
    if (c->drained && !c->fetch_outstanding && !c->need_fetch) {
        if (!c->bl_head && c->ninflight < g_cfg->delivery_window) {
            e->out = NULL;
            deliver(c, o);
            return;
        }
        if (c->bl_count < BACKLOG_MAX_FRAMES && c->bl_bytes + o->len <= BACKLOG_MAX_BYTES) {
            e->out = NULL;
            o->next = NULL;
            if (c->bl_tail)
                c->bl_tail->next = o;
            else
                c->bl_head = o;
            c->bl_tail = o;
            c->bl_count++;
            c->bl_bytes += o->len;
            return;
        }
        backlog_drop(c); /* too much: the mailbox has all of it (a fetch writes what waits first) */
    }
    c->need_fetch = 1; /* it is in the database: fetch it in order when there is room */
    maybe_fetch(c);
}

/* ------------------------------------------------------------------------------------------ */
/* requests */

static int take_token(struct conn *c)
{
    uint64_t now = relay_now_ms();
    c->tokens += (double)(now - c->tokens_ms) * g_cfg->send_refill_per_s / 1000.0;
    if (c->tokens > g_cfg->send_burst)
        c->tokens = g_cfg->send_burst;
    c->tokens_ms = now;
    if (c->tokens < 1.0)
        return 0;
    c->tokens -= 1.0;
    return 1;
}

static void reply_retry(struct conn *c, uint64_t id, Hush__ErrorCode code, const char *msg, uint32_t retry_ms)
{
    Hush__Result r = HUSH__RESULT__INIT;
    r.code = code;
    r.message = (char *)msg;
    r.retry_after_ms = retry_ms;
    Hush__Frame out = HUSH__FRAME__INIT;
    out.id = id;
    out.msg_case = HUSH__FRAME__MSG_RESULT;
    out.result = &r;
    enqueue_frame(c, &out);
    metrics_error(code);
}

static void reply_busy(struct conn *c, uint64_t id)
{
    reply_retry(c, id, HUSH__ERROR_CODE__RATE_LIMITED, "relay busy", 200);
}

static struct job *job_for(struct conn *c, enum job_type t, uint64_t id, Hush__Frame **f)
{
    struct job *j = job_new(t, c->loop->idx, c->id, id);
    if (!j)
        return NULL;
    j->frame = *f;
    *f = NULL; /* the job owns the frame now */
    snprintf(j->username, sizeof j->username, "%s", c->username);
    j->device_id = c->device_id;
    return j;
}

static void on_hello(struct conn *c, const Hush__Frame *f)
{
    const Hush__Hello *h = f->hello;
    if (h->min_version > HWIRE_VERSION || h->max_version < HWIRE_VERSION || h->min_version > h->max_version) {
        reply(c, f->id, HUSH__ERROR_CODE__UNSUPPORTED_VERSION, "this relay speaks protocol version 1");
        close_after_flush(c, 0, NULL, LWS_CLOSE_STATUS_POLICY_VIOLATION);
        return;
    }
    randombytes_buf(c->challenge, sizeof c->challenge);
    Hush__Limits lim = HUSH__LIMITS__INIT;
    lim.max_frame_unauthenticated = g_cfg->max_frame_unauth;
    lim.max_frame = g_cfg->max_frame;
    lim.max_envelope = g_cfg->max_envelope;
    lim.max_recipients = g_cfg->max_recipients;
    lim.max_room_recipients = g_cfg->max_room_recipients;
    lim.max_pre_keys_per_upload = g_cfg->max_prekeys_per_upload;
    lim.delivery_window = g_cfg->delivery_window;
    lim.auth_timeout_s = g_cfg->auth_timeout_s;
    lim.ping_interval_s = g_cfg->ping_interval_s;
    lim.idle_timeout_s = g_cfg->idle_timeout_s;
    lim.quota_messages = g_cfg->quota_messages;
    lim.quota_bytes = g_cfg->quota_bytes;
    lim.sender_share_percent = g_cfg->sender_share_percent;
    lim.ttl_seconds = g_cfg->ttl_seconds ? g_cfg->ttl_seconds : g_cfg->ttl_days * 86400u;
    lim.send_burst = g_cfg->send_burst;
    lim.send_refill_per_s = g_cfg->send_refill_per_s;
    lim.fetch_burst = g_cfg->fetch_burst;
    lim.fetch_refill_per_min = g_cfg->fetch_refill_per_min;
    lim.fetch_total_burst = g_cfg->fetch_total_burst;
    lim.fetch_total_per_min = g_cfg->fetch_total_per_min;
    lim.max_seqs_per_ack = RELAY_MAX_SEQS_PER_ACK;
    lim.max_stored_pre_keys = RELAY_MAX_STORED_PREKEYS;
    lim.max_jobs_in_flight = GATE_JOBS_PAUSE;
    lim.max_devices = g_cfg->max_devices;
    lim.provision_timeout_s = g_cfg->provision_timeout_s;
    lim.link_token_ttl_s = g_cfg->link_token_ttl_s;
    lim.max_link_box = HWIRE_MAX_LINK_BOX;
    lim.max_push_endpoint = pusher_enabled() ? PUSH_MAX_ENDPOINT : 0;
    if (blobs_enabled()) {
        lim.max_blob_bytes = g_cfg->max_blob_bytes;
        lim.max_blob_chunk = blobs_chunk_max();
        lim.blob_quota_bytes = g_cfg->blob_quota_bytes;
        lim.blob_uploads_per_hour = g_cfg->blob_uploads_per_hour;
        lim.blob_ttl_seconds = (uint32_t)blobs_ttl_seconds();
    }
    Hush__Welcome w = HUSH__WELCOME__INIT;
    uint8_t push_key[65];
    if (pusher_enabled()) {
        pusher_public_key(push_key);
        w.push_key.data = push_key;
        w.push_key.len = sizeof push_key;
    }
    w.version = HWIRE_VERSION;
    w.challenge.data = c->challenge;
    w.challenge.len = sizeof c->challenge;
    w.server_time_ms = relay_now_ms();
    w.limits = &lim;
    static const char *pol[] = { "open", "invite", "closed" };
    w.registration = (char *)pol[g_cfg->registration];
    Hush__Frame out = HUSH__FRAME__INIT;
    out.id = f->id;
    out.msg_case = HUSH__FRAME__MSG_WELCOME;
    out.welcome = &w;
    enqueue_frame(c, &out);
    c->state = ST_AUTH_WAIT;
}

/* Provisioning addresses handed out relay-wide: a token bucket of provisions_per_min. */
static struct {
    pthread_mutex_t mu;
    double tokens;
    uint64_t last_ms;
    int init;
} g_prov = { .mu = PTHREAD_MUTEX_INITIALIZER };

static int provision_token(void)
{
    pthread_mutex_lock(&g_prov.mu);
    uint64_t now = relay_now_ms();
    double cap = g_cfg->provisions_per_min;
    if (!g_prov.init) {
        g_prov.tokens = cap;
        g_prov.init = 1;
    } else {
        g_prov.tokens += (double)(now - g_prov.last_ms) * cap / 60000.0;
        if (g_prov.tokens > cap)
            g_prov.tokens = cap;
    }
    g_prov.last_ms = now;
    int ok = g_prov.tokens >= 1.0;
    if (ok)
        g_prov.tokens -= 1.0;
    pthread_mutex_unlock(&g_prov.mu);
    return ok;
}

/* A device to be linked: it gets a random address to wait at, for at most provision_timeout_s. */
static void on_provision(struct conn *c, const Hush__Frame *f)
{
    if (!f->id || !provision_token()) {
        reply_retry(c, f->id, HUSH__ERROR_CODE__RATE_LIMITED, "too many devices being linked; try again later", 10000);
        close_after_flush(c, 0, NULL, LWS_CLOSE_STATUS_POLICY_VIOLATION);
        c->state = ST_CLOSING;
        return;
    }
    uint8_t raw[HWIRE_PROVISION_ADDRESS_LEN / 2];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(c->prov_addr, sizeof c->prov_addr, raw, sizeof raw);
    if (directory_provision_put(c->prov_addr, c->loop->idx, c->id) != 0) {
        c->prov_addr[0] = '\0';
        reply(c, f->id, HUSH__ERROR_CODE__INTERNAL, "out of memory");
        close_after_flush(c, 0, NULL, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION);
        c->state = ST_CLOSING;
        return;
    }
    c->state = ST_PROVISIONING;
    c->deadline_ms = relay_now_ms() + (uint64_t)g_cfg->provision_timeout_s * 1000;
    Hush__Result r = HUSH__RESULT__INIT;
    r.message = "";
    r.provision_address = c->prov_addr;
    Hush__Frame out = HUSH__FRAME__INIT;
    out.id = f->id;
    out.msg_case = HUSH__FRAME__MSG_RESULT;
    out.result = &r;
    enqueue_frame(c, &out);
    rlog(RLOG_INFO, "provision", "conn=%llu", (unsigned long long)c->id);
}

/* An existing device hands the link box to the connection waiting at the address (single use). */
static void on_provision_send(struct conn *c, const Hush__Frame *f)
{
    const Hush__ProvisionSend *p = f->provision_send;
    if (!p->address || strlen(p->address) != HWIRE_PROVISION_ADDRESS_LEN || p->box.len == 0) {
        reply(c, f->id, HUSH__ERROR_CODE__BAD_REQUEST, "address and box required");
        return;
    }
    if (p->box.len > HWIRE_MAX_LINK_BOX) {
        reply(c, f->id, HUSH__ERROR_CODE__TOO_LARGE, "link box too large");
        return;
    }
    struct dir_entry d;
    if (!directory_provision_take(p->address, &d)) {
        metrics_error(HUSH__ERROR_CODE__ADDRESS_GONE);
        reply(c, f->id, HUSH__ERROR_CODE__ADDRESS_GONE, "no device waits at that address (expired or already linked)");
        return;
    }
    Hush__Provisioned pv = HUSH__PROVISIONED__INIT;
    pv.box = p->box;
    Hush__Frame out = HUSH__FRAME__INIT;
    out.msg_case = HUSH__FRAME__MSG_PROVISIONED;
    out.provisioned = &pv;
    struct event *e = event_new(EV_PROVISIONED, d.conn);
    if (!e) {
        reply(c, f->id, HUSH__ERROR_CODE__INTERNAL, "out of memory");
        return;
    }
    e->out = outbuf_from_frame(&out, 0);
    loop_post(d.loop, e);
    rlog(RLOG_INFO, "provision_send", "conn=%llu user=%s device=%u", (unsigned long long)c->id, c->username, c->device_id);
    reply(c, f->id, HUSH__ERROR_CODE__OK, "");
}

/* The recovery key was proven (or not). On success the connection gets a fresh challenge for the
 * registration of the device id the relay reserved, and nothing else. */
static void on_recover_done(struct conn *c, struct event *e)
{
    if (c->state != ST_AUTH_PENDING)
        return;
    if (!e->ok) {
        if (e->out) {
            enqueue(c, e->out);
            e->out = NULL;
        }
        close_after_flush(c, 0, NULL, LWS_CLOSE_STATUS_POLICY_VIOLATION);
        c->state = ST_CLOSING;
        return;
    }
    c->state = ST_RECOVERING;
    snprintf(c->username, sizeof c->username, "%s", e->username);
    c->device_id = e->device_id;
    randombytes_buf(c->challenge, sizeof c->challenge);
    Hush__Result r = HUSH__RESULT__INIT;
    r.message = "";
    r.link_device_id = e->device_id;
    r.challenge.data = c->challenge;
    r.challenge.len = sizeof c->challenge;
    Hush__Frame out = HUSH__FRAME__INIT;
    out.id = e->req_id;
    out.msg_case = HUSH__FRAME__MSG_RESULT;
    out.result = &r;
    enqueue_frame(c, &out);
    c->deadline_ms = relay_now_ms() + (uint64_t)g_cfg->auth_timeout_s * 1000;
}

static void on_provisioned(struct conn *c, struct event *e)
{
    if (c->state != ST_PROVISIONING || c->closing)
        return;
    c->prov_addr[0] = '\0'; /* taken by the sender */
    enqueue(c, e->out);
    e->out = NULL;
    /* the registration follows at once */
    c->deadline_ms = relay_now_ms() + (uint64_t)g_cfg->auth_timeout_s * 1000;
}

static void on_auth(struct conn *c, Hush__Frame **fp, int recovery)
{
    Hush__Frame *f = *fp;
    if (storage_busy()) {
        reply_busy(c, f->id);
        close_after_flush(c, 0, NULL, LWS_CLOSE_STATUS_GOINGAWAY);
        return;
    }
    const char *user;
    uint32_t dev;
    enum job_type t;
    if (f->msg_case == HUSH__FRAME__MSG_LOGIN) {
        user = f->login->username;
        dev = f->login->device_id;
        t = JOB_LOGIN;
    } else if (f->msg_case == HUSH__FRAME__MSG_RECOVER) {
        user = f->recover->username;
        dev = 0; /* the proof names no device: the relay reserves one */
        t = JOB_RECOVER;
    } else {
        user = f->register_->username;
        dev = f->register_->device_id;
        t = JOB_REGISTER;
    }
    int bad = !f->id || !relay_valid_username(user) || (t != JOB_RECOVER && (dev == 0 || dev > INT32_MAX));
    /* after a recovery proof: only the registration of the device it reserved, for that user */
    if (recovery && (t != JOB_REGISTER || strcmp(user, c->username) != 0 || dev != c->device_id))
        bad = 1;
    if (bad) {
        reply(c, f->id, HUSH__ERROR_CODE__AUTH_FAILED, "authentication failed");
        close_after_flush(c, 0, NULL, LWS_CLOSE_STATUS_POLICY_VIOLATION);
        sodium_memzero(c->challenge, sizeof c->challenge);
        c->state = ST_CLOSING;
        return;
    }
    struct job *j = job_new(t, c->loop->idx, c->id, f->id);
    if (!j) {
        reply(c, f->id, HUSH__ERROR_CODE__INTERNAL, "out of memory");
        return;
    }
    j->frame = f;
    *fp = NULL;
    snprintf(j->username, sizeof j->username, "%s", user);
    j->device_id = dev;
    j->recovery = recovery;
    memcpy(j->challenge, c->challenge, sizeof c->challenge);
    /* The proof must carry this connection's TLS channel binding: one relayed from another
     * connection (another relay's client) does not. */
    SSL *ssl = lws_get_ssl(c->wsi);
    if (ssl) {
        static const char label[] = "EXPORTER-Channel-Binding";
        if (SSL_export_keying_material(ssl, j->binding, sizeof j->binding, label, sizeof label - 1, NULL, 0, 0) == 1)
            j->binding_len = sizeof j->binding;
        else
            memset(j->binding, 0xff, sizeof j->binding), j->binding_len = sizeof j->binding; /* matches no proof */
    }
    /* Single use: this connection's challenge is spent, whatever the outcome. */
    sodium_memzero(c->challenge, sizeof c->challenge);
    c->state = ST_AUTH_PENDING;
    submit(c, j);
}

/* A recipient's own envelope may be empty only beside a shared one (a room message). */
static int valid_recipient(const Hush__Recipient *r, int shared)
{
    return r && relay_valid_username(r->username) && r->device_id != 0 && r->device_id <= INT32_MAX &&
           (r->envelope.len > 0 || shared) && r->envelope.len <= g_cfg->max_envelope;
}

static void on_send(struct conn *c, Hush__Frame **fp)
{
    Hush__Frame *f = *fp;
    const Hush__SendRequest *s = f->send;
    if (s->client_msg_id.len != HWIRE_CLIENT_MSG_ID_BYTES || s->n_recipients == 0) {
        reply(c, f->id, HUSH__ERROR_CODE__BAD_REQUEST, "client_msg_id must be 16 bytes and recipients non-empty");
        return;
    }
    int shared = s->shared_envelope.len > 0;
    if (s->n_recipients > (shared ? g_cfg->max_room_recipients : g_cfg->max_recipients)) {
        reply(c, f->id, HUSH__ERROR_CODE__TOO_LARGE, "too many recipients");
        return;
    }
    if (s->shared_envelope.len > g_cfg->max_envelope) {
        reply(c, f->id, HUSH__ERROR_CODE__TOO_LARGE, "envelope too large");
        return;
    }
    for (size_t i = 0; i < s->n_recipients; i++) {
        if (!valid_recipient(s->recipients[i], shared)) {
            int big = s->recipients[i] && s->recipients[i]->envelope.len > g_cfg->max_envelope;
            reply(c, f->id, big ? HUSH__ERROR_CODE__TOO_LARGE : HUSH__ERROR_CODE__BAD_REQUEST,
                  big ? "envelope too large" : "bad recipient");
            return;
        }
    }
    if (!take_token(c)) {
        reply_retry(c, f->id, HUSH__ERROR_CODE__RATE_LIMITED, "sending too fast",
                    (uint32_t)(1000 / (g_cfg->send_refill_per_s ? g_cfg->send_refill_per_s : 1)) + 1);
        return;
    }
    if (s->ephemeral) {
        /* Typing indicators and the like: to connected devices only, never stored. */
        for (size_t i = 0; i < s->n_recipients; i++) {
            struct dir_entry d;
            if (!directory_lookup(s->recipients[i]->username, s->recipients[i]->device_id, &d))
                continue;
            Hush__Deliver dv = HUSH__DELIVER__INIT;
            dv.seq = 0;
            dv.from_username = c->username;
            dv.from_device = c->device_id;
            dv.envelope = s->recipients[i]->envelope;
            dv.shared_envelope = s->shared_envelope;
            dv.received_at_ms = relay_now_ms();
            dv.client_msg_id = s->client_msg_id;
            Hush__Frame out = HUSH__FRAME__INIT;
            out.msg_case = HUSH__FRAME__MSG_DELIVER;
            out.deliver = &dv;
            struct event *e = event_new(EV_SEND_FRAME, d.conn);
            if (!e)
                continue;
            e->out = outbuf_from_frame(&out, 0);
            loop_post(d.loop, e);
            atomic_fetch_add(&g_metrics.ephemeral_in, 1);
        }
        reply(c, f->id, HUSH__ERROR_CODE__OK, "");
        return;
    }
    struct job *j = job_for(c, JOB_SEND, f->id, fp);
    if (j)
        submit(c, j);
    else
        reply(c, f->id, HUSH__ERROR_CODE__INTERNAL, "out of memory");
}

static void on_ack(struct conn *c, Hush__Frame **fp)
{
    Hush__Frame *f = *fp;
    const Hush__AckRequest *a = f->ack;
    if (a->n_seqs == 0 || a->n_seqs > RELAY_MAX_SEQS_PER_ACK) {
        if (f->id)
            reply(c, f->id, HUSH__ERROR_CODE__BAD_REQUEST, "1..4096 seqs per ack");
        return;
    }
    for (size_t i = 0; i < a->n_seqs; i++)
        for (uint32_t k = 0; k < c->ninflight; k++)
            if (c->inflight[k] == a->seqs[i]) {
                c->inflight[k] = c->inflight[--c->ninflight];
                break;
            }
    struct job *j = job_for(c, JOB_ACK, f->id, fp);
    if (j)
        submit(c, j);
    backlog_drain(c);
    maybe_fetch(c);
}

static int usernames_ok(char **v, size_t n, size_t max)
{
    if (n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!relay_valid_username(v[i]))
            return 0;
    return 1;
}

static void on_authed_request(struct conn *c, Hush__Frame **fp)
{
    Hush__Frame *f = *fp;
    if (storage_busy() && f->msg_case != HUSH__FRAME__MSG_SUBSCRIBE_PRESENCE) {
        /* The relay-wide queue is full: answer at once and queue nothing (an ack without an id is
         * dropped; the messages it named are delivered again). */
        if (f->id)
            reply_busy(c, f->id);
        return;
    }
    if (f->msg_case == HUSH__FRAME__MSG_ACK) {
        on_ack(c, fp);
        return;
    }
    if (!f->id) {
        reply(c, 0, HUSH__ERROR_CODE__BAD_REQUEST, "requests need a non-zero id");
        return;
    }
    switch (f->msg_case) {
    case HUSH__FRAME__MSG_SEND:
        on_send(c, fp);
        break;
    case HUSH__FRAME__MSG_UPLOAD_PRE_KEYS: {
        struct job *j = job_for(c, JOB_UPLOAD, f->id, fp);
        if (j)
            submit(c, j);
        break;
    }
    case HUSH__FRAME__MSG_FETCH_BUNDLES:
        if (!relay_valid_username(f->fetch_bundles->username)) {
            reply(c, f->id, HUSH__ERROR_CODE__BAD_REQUEST, "bad username");
        } else {
            struct job *j = job_for(c, JOB_FETCH_BUNDLES, f->id, fp);
            if (j)
                submit(c, j);
        }
        break;
    case HUSH__FRAME__MSG_SET_PRESENCE_ALLOW:
        if (!usernames_ok(f->set_presence_allow->usernames, f->set_presence_allow->n_usernames, 1000)) {
            reply(c, f->id, HUSH__ERROR_CODE__BAD_REQUEST, "1000 valid usernames at most");
        } else {
            struct job *j = job_for(c, JOB_SET_ALLOW, f->id, fp);
            if (j)
                submit(c, j);
        }
        break;
    case HUSH__FRAME__MSG_LINK_TOKEN:
        if (f->link_token->address && *f->link_token->address && !directory_provision_waiting(f->link_token->address)) {
            metrics_error(HUSH__ERROR_CODE__ADDRESS_GONE);
            reply(c, f->id, HUSH__ERROR_CODE__ADDRESS_GONE, "no device waits at that address (expired or already linked)");
        } else {
            struct job *j = job_for(c, JOB_LINK_TOKEN, f->id, fp);
            if (j)
                submit(c, j);
        }
        break;
    case HUSH__FRAME__MSG_PROVISION_SEND:
        on_provision_send(c, f);
        break;
    case HUSH__FRAME__MSG_REMOVE_DEVICE:
    case HUSH__FRAME__MSG_LIST_DEVICES: {
        struct job *j =
            job_for(c, f->msg_case == HUSH__FRAME__MSG_REMOVE_DEVICE ? JOB_REMOVE_DEVICE : JOB_LIST_DEVICES, f->id, fp);
        if (j)
            submit(c, j);
        break;
    }
    case HUSH__FRAME__MSG_PUSH_REGISTER:
    case HUSH__FRAME__MSG_PUSH_REMOVE: {
        const char *why = NULL;
        const Hush__PushRegisterRequest *pr = f->push_register;
        if (!pusher_enabled())
            why = "push wake-ups are off on this relay";
        else if (f->msg_case == HUSH__FRAME__MSG_PUSH_REGISTER)
            webpush_endpoint_check(pr->endpoint, g_cfg->push_allow_http, g_cfg->push_allow_private, pr->p256dh.data,
                                   pr->p256dh.len, pr->auth.len, NULL, 0, NULL, 0, &why);
        if (why) {
            int big = f->msg_case == HUSH__FRAME__MSG_PUSH_REGISTER && strlen(pr->endpoint) > PUSH_MAX_ENDPOINT;
            reply(c, f->id, big ? HUSH__ERROR_CODE__TOO_LARGE : HUSH__ERROR_CODE__BAD_REQUEST, why);
        } else {
            struct job *j = job_for(c, JOB_PUSH_REGISTER, f->id, fp);
            if (j)
                submit(c, j);
        }
        break;
    }
    case HUSH__FRAME__MSG_BLOB_CREATE:
    case HUSH__FRAME__MSG_BLOB_PUT:
    case HUSH__FRAME__MSG_BLOB_STATUS:
    case HUSH__FRAME__MSG_BLOB_GET:
        if (!blobs_enabled()) {
            reply(c, f->id, HUSH__ERROR_CODE__BAD_REQUEST, "files are off on this relay");
        } else if (blobs_submit(c->loop->idx, c->id, c->username, c->device_id, f, c->rx_frame_len + 256) != 0) {
            reply_busy(c, f->id);
        } else {
            *fp = NULL; /* the blob thread owns the frame now */
            c->blob_inflight++;
            rx_update(c);
        }
        break;
    case HUSH__FRAME__MSG_SUBSCRIBE_PRESENCE:
        if (!usernames_ok(f->subscribe_presence->usernames, f->subscribe_presence->n_usernames, 1000)) {
            reply(c, f->id, HUSH__ERROR_CODE__BAD_REQUEST, "1000 valid usernames at most");
        } else {
            reply(c, f->id, HUSH__ERROR_CODE__OK, "");
            presence_subscribe(c->loop->idx, c->id, c->username, f->subscribe_presence->usernames,
                               f->subscribe_presence->n_usernames);
        }
        break;
    default:
        reply(c, f->id, HUSH__ERROR_CODE__BAD_REQUEST, "unexpected frame");
        break;
    }
}

/* One complete inbound message. Returns -1 to drop the connection at once. */
static int on_message(struct conn *c, const uint8_t *data, size_t len)
{
    atomic_fetch_add(&g_metrics.frames_in, 1);
    c->rx_frame_len = len;
    Hush__Frame *f = hush__frame__unpack(NULL, len, data);
    if (!f) {
        if (c->state != ST_AUTHED) { /* garbage before authentication: close at once */
            lws_close_reason(c->wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, NULL, 0);
            return -1;
        }
        reply(c, 0, HUSH__ERROR_CODE__BAD_REQUEST, "undecodable frame");
        return 0;
    }
    if (atomic_load(&g_stopping) && c->state == ST_AUTHED) {
        reply(c, f->id, HUSH__ERROR_CODE__SHUTTING_DOWN, "relay is stopping");
        hush__frame__free_unpacked(f, NULL);
        return 0;
    }
    switch (c->state) {
    case ST_HELLO:
        if (f->msg_case != HUSH__FRAME__MSG_HELLO) {
            reply(c, f->id, HUSH__ERROR_CODE__BAD_REQUEST, "expected hello");
            close_after_flush(c, 0, NULL, LWS_CLOSE_STATUS_POLICY_VIOLATION);
        } else {
            on_hello(c, f);
        }
        break;
    case ST_AUTH_WAIT:
        if (f->msg_case == HUSH__FRAME__MSG_LOGIN || f->msg_case == HUSH__FRAME__MSG_REGISTER ||
            f->msg_case == HUSH__FRAME__MSG_RECOVER) {
            on_auth(c, &f, 0);
        } else if (f->msg_case == HUSH__FRAME__MSG_PROVISION) {
            on_provision(c, f);
        } else {
            reply(c, f->id, HUSH__ERROR_CODE__AUTH_REQUIRED, "log in first");
            close_after_flush(c, 0, NULL, LWS_CLOSE_STATUS_POLICY_VIOLATION);
        }
        break;
    case ST_PROVISIONING:
        /* only the registration of the linked device (its challenge is the Welcome's) */
        if (f->msg_case == HUSH__FRAME__MSG_REGISTER) {
            if (c->prov_addr[0]) {
                directory_provision_drop(c->prov_addr, c->id);
                c->prov_addr[0] = '\0';
            }
            on_auth(c, &f, 0);
        } else {
            reply(c, f->id, HUSH__ERROR_CODE__AUTH_REQUIRED, "waiting for the link box, then a registration");
            close_after_flush(c, 0, NULL, LWS_CLOSE_STATUS_POLICY_VIOLATION);
            c->state = ST_CLOSING;
        }
        break;
    case ST_RECOVERING:
        on_auth(c, &f, 1); /* anything but the reserved device's registration closes */
        break;
    case ST_AUTH_PENDING:
        reply(c, f->id, HUSH__ERROR_CODE__AUTH_REQUIRED, "authentication in progress");
        break;
    case ST_AUTHED:
        on_authed_request(c, &f);
        break;
    case ST_CLOSING:
        break;
    }
    if (f)
        hush__frame__free_unpacked(f, NULL);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* events from other threads */

static void on_login_done(struct conn *c, struct event *e)
{
    if (c->state != ST_AUTH_PENDING)
        return;
    if (e->out) {
        enqueue(c, e->out);
        e->out = NULL;
    }
    if (!e->ok) {
        /* The challenge is spent: the client reconnects for another attempt. */
        close_after_flush(c, 0, NULL, LWS_CLOSE_STATUS_POLICY_VIOLATION);
        c->state = ST_CLOSING;
        return;
    }
    c->state = ST_AUTHED;
    snprintf(c->username, sizeof c->username, "%s", e->username);
    c->device_id = e->device_id;
    c->inflight = calloc(g_cfg->delivery_window, sizeof *c->inflight);
    if (!c->inflight) {
        close_after_flush(c, HUSH__ERROR_CODE__INTERNAL, "out of memory", LWS_CLOSE_STATUS_UNEXPECTED_CONDITION);
        return;
    }
    c->deadline_ms = 0;
    atomic_fetch_add(&g_metrics.authenticated, 1);
    struct dir_entry old;
    int online = 0;
    int r = directory_register(c->username, c->device_id, c->loop->idx, c->id, &old, &online);
    if (r == 1) {
        struct event *k = event_new(EV_KICK, old.conn);
        if (k) {
            k->code = HUSH__ERROR_CODE__SESSION_REPLACED;
            loop_post(old.loop, k);
        }
    }
    if (online)
        presence_changed(c->username, 1, 0);
    rlog(RLOG_INFO, "login", "conn=%llu user=%s device=%u replaced=%d", (unsigned long long)c->id, c->username,
         c->device_id, r == 1);
    if (e->prekeys_low) {
        Hush__PreKeysLow pl = HUSH__PRE_KEYS_LOW__INIT;
        pl.remaining = e->prekeys;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.msg_case = HUSH__FRAME__MSG_PRE_KEYS_LOW;
        f.pre_keys_low = &pl;
        enqueue_frame(c, &f);
    }
    maybe_fetch(c);
}

static void handle_event(struct loop *l, struct event *e)
{
    if (e->type == EV_SHUTDOWN) {
        l->shutting_down = 1;
        l->shutdown_deadline_ms = relay_now_ms() + 5000;
        return;
    }
    struct conn *c = hmap_get(&l->conns, &e->conn, sizeof e->conn);
    if (!c)
        return; /* the connection is gone: a stored message stays in the mailbox */
    switch (e->type) {
    case EV_SEND_FRAME:
        if (!c->closing) {
            enqueue(c, e->out);
            e->out = NULL;
        }
        break;
    case EV_LOGIN_DONE:
        on_login_done(c, e);
        break;
    case EV_MAIL:
        on_mail(c, e);
        break;
    case EV_LIVE:
        on_live(c, e);
        break;
    case EV_KICK:
        if (e->code == HUSH__ERROR_CODE__DEVICE_REMOVED) {
            rlog(RLOG_INFO, "device_removed_closed", "conn=%llu user=%s device=%u", (unsigned long long)c->id,
                 c->username, c->device_id);
            close_after_flush(c, HUSH__ERROR_CODE__DEVICE_REMOVED, "this device was removed from its account",
                              LWS_CLOSE_STATUS_POLICY_VIOLATION);
            break;
        }
        rlog(RLOG_INFO, "session_replaced", "conn=%llu user=%s device=%u", (unsigned long long)c->id, c->username,
             c->device_id);
        close_after_flush(c, HUSH__ERROR_CODE__SESSION_REPLACED, "another connection logged in as this device",
                          LWS_CLOSE_STATUS_POLICY_VIOLATION);
        break;
    case EV_PROVISIONED:
        on_provisioned(c, e);
        break;
    case EV_RECOVER_DONE:
        on_recover_done(c, e);
        break;
    case EV_RESUME:
        rx_update(c);
        break;
    case EV_BLOB_DONE:
        if (c->blob_inflight > 0)
            c->blob_inflight--;
        if (!c->closing) {
            enqueue(c, e->out);
            e->out = NULL;
        }
        rx_update(c);
        break;
    case EV_SHUTDOWN:
        break;
    }
}

static void close_all_cb(const void *key, size_t klen, void *val, void *ctx)
{
    (void)key;
    (void)klen;
    (void)ctx;
    close_after_flush(val, HUSH__ERROR_CODE__SHUTTING_DOWN, "relay is stopping", LWS_CLOSE_STATUS_GOINGAWAY);
}

static void drain_inbox(struct loop *l)
{
    struct event *e = inbox_take(l->idx);
    int was_shutting = l->shutting_down;
    while (e) {
        struct event *n = e->next;
        handle_event(l, e);
        event_free(e);
        e = n;
    }
    if (l->shutting_down && !was_shutting)
        hmap_foreach(&l->conns, close_all_cb, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* the lws protocol callback */

static void conn_free(struct conn *c)
{
    while (c->out_head) {
        struct outbuf *n = c->out_head->next;
        free(c->out_head);
        c->out_head = n;
    }
    hwire_rx_free(&c->rx);
    backlog_drop(c);
    free(c->inflight);
    gate_unref(c->gate);
    sodium_memzero(c, sizeof *c);
    free(c);
}

/* Several frames for one socket in a row: cork it, so the kernel sends them as few segments
 * instead of pushing each through the TCP stack on its own (measured: a quarter of the relay's
 * CPU under load went to per-frame transmits). */
static int write_frames(struct conn *c);

static void cork(struct conn *c, int on)
{
    int fd = (int)lws_get_socket_fd(c->wsi);
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on);
}

static int write_some(struct conn *c)
{
    if (c->ping_due && !lws_partial_buffered(c->wsi)) {
        /* libwebsockets 4.1 sends no ping with an empty payload: four bytes */
        uint8_t ping[LWS_PRE + 4];
        memcpy(ping + LWS_PRE, "hush", 4);
        c->ping_due = 0;
        if (lws_write(c->wsi, ping + LWS_PRE, 4, LWS_WRITE_PING) < 0)
            return -1;
    }
    int corked = c->out_count >= 3;
    if (corked)
        cork(c, 1);
    int rc = write_frames(c);
    if (corked)
        cork(c, 0);
    return rc;
}

static int write_frames(struct conn *c)
{
    for (int i = 0; i < WRITES_PER_CALLBACK && c->out_head; i++) {
        /* lws keeps what the socket did not take of a write and sends it on the next WRITEABLE;
         * no further write may be issued until that is flushed, so one large frame ends this
         * callback and the rest waits for the next one. */
        if (lws_partial_buffered(c->wsi))
            break;
        struct outbuf *o = c->out_head;
        int n = lws_write(c->wsi, o->data + LWS_PRE, o->len, LWS_WRITE_BINARY);
        if (n < 0)
            return -1;
        c->out_head = o->next;
        if (!c->out_head)
            c->out_tail = NULL;
        c->out_count--;
        c->out_bytes -= o->len;
        atomic_fetch_add(&g_metrics.frames_out, 1);
        if (o->seq)
            atomic_fetch_add(&g_metrics.messages_out, 1);
        free(o);
        /* lws_send_pipe_choked costs a select(): ask every 16 frames (a write that the socket
         * could not take whole is kept by lws and later writes queue behind it) */
        if ((i & 15) == 15 && lws_send_pipe_choked(c->wsi))
            break;
    }
    if (c->rx_paused && c->out_count < OUTQ_RESUME && c->out_bytes < OUTQ_BYTES_RESUME) {
        c->rx_paused = 0;
        rx_update(c);
    }
    if (c->out_head) {
        lws_callback_on_writable(c->wsi);
        return 0;
    }
    if (c->closing && lws_partial_buffered(c->wsi)) {
        lws_callback_on_writable(c->wsi); /* the last frame is still going out */
        return 0;
    }
    if (c->closing) {
        lws_close_reason(c->wsi, (enum lws_close_status)c->close_code, NULL, 0);
        return -1;
    }
    return 0;
}

static int callback_hush(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct pss *pss = user;
    struct loop *l = lws_context_user(lws_get_context(wsi));
    struct conn *c = pss ? pss->c : NULL;

    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED: {
        if (atomic_load(&g_stopping) || l->shutting_down ||
            atomic_load(&g_metrics.connections) >= (long)g_cfg->max_connections)
            return -1;
        c = calloc(1, sizeof *c);
        if (!c)
            return -1;
        c->id = atomic_fetch_add(&g_next_conn_id, 1);
        c->wsi = wsi;
        c->loop = l;
        c->state = ST_HELLO;
        c->tokens = g_cfg->send_burst;
        c->tokens_ms = relay_now_ms();
        c->gate = gate_new(l->idx, c->id);
        if (!c->gate) {
            free(c);
            return -1;
        }
        int err = 0;
        hmap_put(&l->conns, &c->id, sizeof c->id, c, &err);
        if (err) {
            gate_unref(c->gate);
            free(c);
            return -1;
        }
        pss->c = c;
        atomic_fetch_add(&g_metrics.connections, 1);
        atomic_fetch_add(&g_metrics.connections_total, 1);
        /* Hello and authentication must complete within the deadline, or the sweep closes it. */
        c->last_rx_ms = relay_now_ms();
        c->deadline_ms = c->last_rx_ms + (uint64_t)g_cfg->auth_timeout_s * 1000;
        rlog(RLOG_DEBUG, "connect", "conn=%llu loop=%d", (unsigned long long)c->id, l->idx);
        break;
    }
    case LWS_CALLBACK_RECEIVE_PONG:
        if (c)
            c->last_rx_ms = relay_now_ms();
        break;
    case LWS_CALLBACK_RECEIVE: {
        if (!c || c->closing)
            return 0;
        c->last_rx_ms = relay_now_ms();
        /* lws reports the opcode of each frame: a continuation fragment of a binary message is
         * not itself "binary", so the type is checked on the message's first fragment only. */
        if (!hwire_rx_partial(&c->rx) && lws_is_first_fragment(wsi) && !lws_frame_is_binary(wsi)) {
            rlog(RLOG_DEBUG, "drop", "conn=%llu reason=text_frame", (unsigned long long)c->id);
            lws_close_reason(wsi, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE, NULL, 0);
            return -1;
        }
        size_t cap = c->state == ST_AUTHED ? g_cfg->max_frame : g_cfg->max_frame_unauth;
        size_t remaining = lws_remaining_packet_payload(wsi);
        int final = lws_is_final_fragment(wsi) && remaining == 0;
        const uint8_t *msg;
        size_t mlen;
        int rr = hwire_rx_feed(&c->rx, in, len, remaining, final, cap, &msg, &mlen);
        if (rr == HWIRE_RX_TOO_BIG) {
            rlog(RLOG_INFO, "drop", "conn=%llu reason=frame_too_large cap=%zu", (unsigned long long)c->id, cap);
            metrics_error(HUSH__ERROR_CODE__TOO_LARGE);
            lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, NULL, 0);
            return -1;
        }
        if (rr == HWIRE_RX_NOMEM)
            return -1;
        if (rr == HWIRE_RX_DONE) {
            int r = on_message(c, msg, mlen);
            hwire_rx_consumed(&c->rx);
            return r;
        }
        break;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (!c)
            return 0;
        return write_some(c);
    case LWS_CALLBACK_TIMER:
        if (c)
            maybe_fetch(c);
        break;
    case LWS_CALLBACK_CLOSED:
        if (!c)
            break;
        hmap_del(&l->conns, &c->id, sizeof c->id);
        atomic_fetch_sub(&g_metrics.connections, 1);
        if (c->prov_addr[0])
            directory_provision_drop(c->prov_addr, c->id);
        if (c->state == ST_AUTHED) {
            atomic_fetch_sub(&g_metrics.authenticated, 1);
            int offline = 0;
            directory_unregister(c->username, c->device_id, c->id, &offline);
            presence_unsubscribe_conn(c->id);
            if (offline)
                presence_changed(c->username, 0, relay_now_ms());
            struct job *j = job_new(JOB_DISCONNECT, -1, c->id, 0);
            if (j) {
                snprintf(j->username, sizeof j->username, "%s", c->username);
                j->device_id = c->device_id;
                storage_submit(j);
            }
            rlog(RLOG_INFO, "disconnect", "conn=%llu user=%s device=%u", (unsigned long long)c->id, c->username,
                 c->device_id);
        }
        pss->c = NULL;
        conn_free(c);
        break;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        drain_inbox(l);
        break;
    default:
        break;
    }
    return 0;
}

/*
 * Accepting. libwebsockets 4.1 as packaged (LWS_MAX_SMP 1) sets SO_REUSEPORT only for contexts
 * with several service threads, so its own listener cannot be shared between our per-loop
 * contexts. Each loop therefore owns a SO_REUSEPORT listen socket, adopted into its context as a
 * raw descriptor; accepted sockets are handed to the WebSocket vhost with lws_adopt_socket_vhost
 * (HTTP upgrade and TLS handled by lws exactly as for its own listener).
 */
static int callback_listen(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)user;
    (void)in;
    (void)len;
    if (reason != LWS_CALLBACK_RAW_RX_FILE)
        return 0;
    struct loop *l = lws_context_user(lws_get_context(wsi));
    for (int i = 0; i < 256; i++) {
        int fd = accept4(l->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break; /* EAGAIN: drained; other errors (EMFILE...) retried on the next readiness */
        if (atomic_load(&g_stopping) || atomic_load(&g_metrics.connections) >= (long)g_cfg->max_connections) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (!lws_adopt_socket_vhost(l->vh, fd))
            rlog(RLOG_WARN, "accept", "lws could not adopt a connection");
    }
    return 0;
}

static const struct lws_protocols ws_protocols[] = {
    { "hush.v1", callback_hush, sizeof(struct pss), 4096, 0, NULL, 0 },
    { "hush-listen", callback_listen, 0, 0, 0, NULL, 0 },
    { NULL, NULL, 0, 0, 0, NULL, 0 },
};

int relay_open_listener(const char *host, int port, int shared, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "listen address %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (shared && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s:%d: %s%s", host, port, strerror(e),
                 e == EADDRINUSE ? " (another hushd, or another program, is already listening there)" : "");
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}


/* ------------------------------------------------------------------------------------------ */

/* Once a second: every connection's deadline and keepalive. A connection that missed its hello,
 * authentication or provisioning deadline, or sent nothing (not even a pong) for idle_timeout, is
 * closed; one quiet for ping_interval is pinged. Closing goes through lws's asynchronous kill, so
 * no connection is freed outside its own callbacks. */
static void sweep_conn(const void *key, size_t klen, void *val, void *ctx)
{
    (void)key;
    (void)klen;
    struct conn *c = val;
    uint64_t now = *(const uint64_t *)ctx;
    if (c->deadline_ms && now >= c->deadline_ms) {
        c->deadline_ms = 0;
        rlog(RLOG_INFO, "drop", "conn=%llu reason=deadline", (unsigned long long)c->id);
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    if (c->state != ST_AUTHED)
        return;
    uint64_t quiet = now - c->last_rx_ms;
    if (quiet >= (uint64_t)g_cfg->idle_timeout_s * 1000) {
        rlog(RLOG_INFO, "drop", "conn=%llu reason=idle", (unsigned long long)c->id);
        c->last_rx_ms = now; /* once */
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    } else if (quiet >= (uint64_t)g_cfg->ping_interval_s * 1000 && c->ping_sent_ms <= c->last_rx_ms) {
        c->ping_sent_ms = now;
        c->ping_due = 1;
        lws_callback_on_writable(c->wsi);
    }
}

static void sweep_cb(lws_sorted_usec_list_t *sul)
{
    struct loop *l = lws_container_of(sul, struct loop, sul_sweep);
    uint64_t now = relay_now_ms();
    hmap_foreach(&l->conns, sweep_conn, &now);
    lws_sul_schedule(l->ctx, 0, &l->sul_sweep, sweep_cb, LWS_US_PER_SEC);
}

static void *loop_main(void *arg)
{
    struct loop *l = arg;
    lws_sul_schedule(l->ctx, 0, &l->sul_sweep, sweep_cb, LWS_US_PER_SEC);
    while (!l->done) {
        lws_service(l->ctx, 0);
        if (l->shutting_down) {
            int empty = l->conns.count == 0;
            if (empty || relay_now_ms() > l->shutdown_deadline_ms) {
                inbox_close(l->idx); /* nobody wakes this context any more */
                l->done = 1;
            }
        }
    }
    return NULL;
}

static void lws_log_bridge(int level, const char *line)
{
    size_t n = strlen(line);
    char buf[512];
    snprintf(buf, sizeof buf, "%.*s", (int)(n && line[n - 1] == '\n' ? n - 1 : n), line);
    rlog(level == LLL_ERR ? RLOG_ERROR : RLOG_WARN, "lws", "%s", buf);
}

int server_start(const struct relay_config *cfg, char *err, size_t errlen)
{
    g_cfg = cfg;
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_bridge);
    int n = cfg->workers;
    if (n <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus > 0 ? (int)cpus : 1;
    }
    if (n > RELAY_MAX_LOOPS)
        n = RELAY_MAX_LOOPS;
    int tls = cfg->tls_cert[0] != 0;
    for (int i = 0; i < n; i++) {
        struct loop *l = &g_loops[i];
        memset(l, 0, sizeof *l);
        l->idx = i;
        hmap_init(&l->conns, 1024);
        struct lws_context_creation_info info;
        memset(&info, 0, sizeof info);
        info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | (tls ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0);
        info.user = l;
        info.timeout_secs = 10;
        info.timeout_secs_ah_idle = 5;
        info.max_http_header_pool = 1024;
        info.fd_limit_per_thread = cfg->max_connections / (unsigned)n + 64;
        l->ctx = lws_create_context(&info);
        if (!l->ctx) {
            snprintf(err, errlen, "cannot create event loop %d", i);
            return -1;
        }
        struct lws_context_creation_info vi;
        memset(&vi, 0, sizeof vi);
        vi.vhost_name = "hush";
        vi.port = CONTEXT_PORT_NO_LISTEN_SERVER;
        vi.protocols = ws_protocols;
        vi.retry_and_idle_policy = &g_no_validity;
        vi.keepalive_timeout = 5;
        vi.timeout_secs_ah_idle = 5;
        if (tls) {
            vi.ssl_cert_filepath = cfg->tls_cert;
            vi.ssl_private_key_filepath = cfg->tls_key;
            vi.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        }
        l->listen_fd = -1;
        l->vh = lws_create_vhost(l->ctx, &vi);
        if (!l->vh) {
            snprintf(err, errlen, "cannot set up the WebSocket service%s", tls ? " (TLS certificate or key unusable?)" : "");
            lws_context_destroy(l->ctx);
            l->ctx = NULL;
            return -1;
        }
        if (i == 0) {
            /* SO_REUSEPORT would let a second hushd (even one with another database) join this
             * port and the kernel would split the clients between the two: first bind the
             * address alone, which fails while anyone listens there, then share it between our
             * own loops only. */
            int probe = relay_open_listener(cfg->listen_host, cfg->listen_port, 0, err, errlen);
            if (probe < 0) {
                lws_context_destroy(l->ctx);
                l->ctx = NULL;
                return -1;
            }
            close(probe);
        }
        l->listen_fd = relay_open_listener(cfg->listen_host, cfg->listen_port, 1, err, errlen);
        if (l->listen_fd < 0) {
            lws_context_destroy(l->ctx);
            l->ctx = NULL;
            return -1;
        }
        lws_sock_file_fd_type lfd;
        lfd.filefd = l->listen_fd;
        if (!lws_adopt_descriptor_vhost(l->vh, LWS_ADOPT_RAW_FILE_DESC, lfd, "hush-listen", NULL)) {
            snprintf(err, errlen, "cannot watch the listen socket");
            lws_context_destroy(l->ctx);
            l->ctx = NULL;
            return -1;
        }
        g_nloops = i + 1;
        inbox_open(i, wake_loop, l);
    }
    for (int i = 0; i < g_nloops; i++) {
        if (pthread_create(&g_loops[i].th, NULL, loop_main, &g_loops[i]) != 0) {
            snprintf(err, errlen, "cannot start loop thread");
            return -1;
        }
    }
    rlog(RLOG_INFO, "listening", "addr=%s:%d tls=%d loops=%d", cfg->listen_host, cfg->listen_port, tls, g_nloops);
    return 0;
}

void server_shutdown(void)
{
    for (int i = 0; i < g_nloops; i++) {
        struct event *e = event_new(EV_SHUTDOWN, 0);
        if (e)
            loop_post(i, e);
    }
    for (int i = 0; i < g_nloops; i++)
        pthread_join(g_loops[i].th, NULL);
}

void server_free(void)
{
    for (int i = 0; i < g_nloops; i++) {
        struct loop *l = &g_loops[i];
        if (l->ctx)
            lws_context_destroy(l->ctx); /* closes what is left; CLOSED frees each conn */
        l->ctx = NULL;
        hmap_free(&l->conns, NULL);
    }
    inbox_free_all();
    g_nloops = 0;
}
