/*
 * net_main.c - libhush's network thread: one libwebsockets client context per hush_client.
 *
 * Everything that talks to the relay happens on this thread; app threads only commit to the
 * database (messaging.c) and wake it. Inbound: decrypt + store + session state in one transaction
 * (hush_decrypt), then the app callback, then "notified", and the ack to the relay only after the
 * commit. Outbound: outbox rows in order; device lists and sessions fetched when missing;
 * ciphertexts stored before the first attempt so every retry resends the same bytes under the same
 * client message id.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>

#include <libwebsockets.h>
#include <openssl/ssl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <sys/socket.h>
#if defined(__linux__)
#include <sys/prctl.h>
#elif defined(__APPLE__)
#include <pthread.h>
#endif

#include "hush_wire.h"
#include "net.h"

static int net_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len);

static const struct lws_protocols net_protocols[] = {
    { "hush.v1", net_callback, 0, 4096, 0, NULL, 0 },
    { NULL, NULL, 0, 0, 0, NULL, 0 },
};

/* ------------------------------------------------------------------------------------------ */
/* status */

/* ------------------------------------------------------------------------------------------ */
/* sending frames */

/* ------------------------------------------------------------------------------------------ */
/* one-time prekeys offered to the relay
 *
 * hush_prekey_upload marks the keys it puts in an upload as handed out. If the relay refuses the
 * request (a refusal stores nothing) they are put back, so a refused upload or registration does
 * not use them up. Without an answer (the connection went) they stay handed out: the relay may
 * have stored them, and a one-time key must never be published twice. */

/* ------------------------------------------------------------------------------------------ */
/* storage helpers (each takes the client lock) */

/* ------------------------------------------------------------------------------------------ */
/* the outbox pump */

/* ------------------------------------------------------------------------------------------ */
/* inbound */

/* ------------------------------------------------------------------------------------------ */
/* login, keys, presence */

static void went_online(struct hush_net *n)
{
    n->st = N_ONLINE;
    n->backoff_ms = 0;
    hnet_set_conn(n, HUSH_CONN_ONLINE, HUSH_OK);
    hnet_send_presence(n, 0);
    hnet_send_push(n);
    hnet_rotation_check(n);
    hnet_reprocess_pending(n);
    n->unflushed_receipts = 1; /* receipts owed from before a restart */
    hnet_flush_receipts(n);
    hnet_pump_outbox(n);
    hnet_files_pump(n);
    hnet_link_start(n); /* a hush_device_link that waited for the connection */
    hnet_remove_start(n);
    hnet_list_start(n);
}

/* ------------------------------------------------------------------------------------------ */
/* results and pushes */

static void handle_frame(struct hush_net *n, const uint8_t *data, size_t len)
{
    Hush__Frame *f = hush__frame__unpack(NULL, len, data);
    if (!f) {
        hnet_report(n, HUSH_ERR_RELAY, "the relay sent an undecodable frame");
        return;
    }
    /* deliveries gathered so far go first: everything else is handled in arrival order after them */
    if (f->msg_case != HUSH__FRAME__MSG_DELIVER && n->nbatch)
        hnet_process_batch(n);
    struct req r;
    char txt[128];
    switch (f->msg_case) {
    case HUSH__FRAME__MSG_WELCOME:
        if (n->st == N_HELLO && hnet_take_req(n, f->id, &r) && f->welcome->challenge.len == 32 && f->welcome->version == 1) {
            memcpy(n->challenge, f->welcome->challenge.data, 32);
            n->st = N_AUTH;
            hnet_on_push_key(n, f->welcome->push_key.data, f->welcome->push_key.len);
            hnet_files_on_welcome(n, f->welcome->limits);
            hsdk_lock(n->c);
            int has = n->c->has_device;
            hsdk_unlock(n->c);
            if (n->link_mode && !has)
                hnet_link_provision(n); /* a device to be linked: wait for the link box first */
            else if (n->recover_mode && !has)
                hnet_recover_request(n); /* an account to recover: prove the code first */
            else
                hnet_send_auth(n);
        } else {
            hnet_report(n, HUSH_ERR_RELAY, "unexpected welcome");
        }
        break;
    case HUSH__FRAME__MSG_RESULT:
        if (!hnet_take_req(n, f->id, &r)) {
            if (f->result->code)
                hnet_report(n, HUSH_ERR_RELAY, hnet_relay_text(txt, sizeof txt, f->result->message));
            break;
        }
        if (r.type == R_AUTH || r.type == R_UPLOAD)
            hnet_settle_offer(n, r.id, f->result->code != HUSH__ERROR_CODE__OK);
        if (r.type == R_AUTH) {
            if (f->result->code == HUSH__ERROR_CODE__OK) {
                hsdk_lock(n->c);
                if (hsdk_meta_set_int(n->c, "registered", 1) != HUSH_OK || hsdk_link_token_clear(n->c) != HUSH_OK)
                    hnet_report(n, HUSH_ERR_STORAGE, "could not record the registration");
                hsdk_unlock(n->c);
                went_online(n);
            } else {
                hush_err fe = hnet_fatal_for(f->result->code);
                if (fe) {
                    if (f->result->message && *f->result->message)
                        hnet_report(n, fe, hnet_relay_text(txt, sizeof txt, f->result->message)); /* the relay's reason */
                    hnet_fail_for_good(n, fe);
                } else
                    hnet_report(n, HUSH_ERR_RELAY, hnet_relay_text(txt, sizeof txt, f->result->message));
            }
        } else if (r.type == R_SEND) {
            hnet_on_send_result(n, &r, f->result);
            hnet_schedule_send_pass(n); /* after the other results read in this pass */
        } else if (r.type == R_FETCH) {
            hnet_on_fetch_result(n, &r, f->result);
            hnet_pump_outbox(n);
        } else if (r.type == R_UPLOAD && f->result->code) {
            hnet_report(n, HUSH_ERR_RELAY, "prekey upload refused");
        } else if (r.type == R_PROVISION) {
            hnet_on_provision_result(n, f->result);
        } else if (r.type == R_LINK_TOKEN) {
            hnet_on_link_token_result(n, f->result);
        } else if (r.type == R_PROVISION_SEND) {
            hnet_on_provision_send_result(n, f->result);
        } else if (r.type == R_REMOVE) {
            hnet_on_remove_result(n, f->result);
        } else if (r.type == R_RECOVER) {
            hnet_on_recover_result(n, f->result);
        } else if (r.type == R_LIST_DEVICES) {
            hnet_on_list_result(n, f->result);
        } else if (r.type == R_PUSH) {
            hnet_on_push_result(n, &r, f->result);
        } else if (r.type == R_BLOB) {
            hnet_files_on_result(n, &r, f->result);
        }
        break;
    case HUSH__FRAME__MSG_PROVISIONED:
        hnet_on_provisioned(n, f->provisioned);
        break;
    case HUSH__FRAME__MSG_DEVICE_LIST_CHANGED:
        /* a device was linked or removed: that user's list is fetched again before the next send */
        if (n->st == N_ONLINE && hsdk_valid_username(f->device_list_changed->username)) {
            hsdk_lock(n->c);
            hsdk_peers_forget(n->c, f->device_list_changed->username);
            hsdk_unlock(n->c);
            if (n->cb.on_devices_changed)
                n->cb.on_devices_changed(n->cb.ctx, f->device_list_changed->username);
        }
        break;
    case HUSH__FRAME__MSG_DELIVER: {
        const Hush__Deliver *d = f->deliver;
        if (!hsdk_valid_username(d->from_username) || d->from_device == 0) {
            hnet_report(n, HUSH_ERR_RELAY, "delivery with a bad sender");
            uint64_t seq = d->seq;
            hnet_send_acks(n, &seq, seq ? 1 : 0);
            break;
        }
        struct inbound *in = &n->batch[n->nbatch];
        memset(in, 0, sizeof *in);
        in->env = malloc(d->envelope.len ? d->envelope.len : 1);
        if (!in->env) {
            hnet_report(n, HUSH_ERR_NOMEM, "no memory for a delivery; the relay will deliver it again");
            break;
        }
        if (d->envelope.len) /* empty beside a shared envelope (a room message): data is NULL */
            memcpy(in->env, d->envelope.data, d->envelope.len);
        in->len = d->envelope.len;
        if (d->shared_envelope.len) {
            in->shared = malloc(d->shared_envelope.len);
            if (!in->shared) {
                free(in->env);
                in->env = NULL;
                hnet_report(n, HUSH_ERR_NOMEM, "no memory for a delivery; the relay will deliver it again");
                break;
            }
            memcpy(in->shared, d->shared_envelope.data, d->shared_envelope.len);
            in->shared_len = d->shared_envelope.len;
        }
        snprintf(in->from, sizeof in->from, "%s", d->from_username);
        in->dev = d->from_device;
        in->seq = d->seq;
        if (d->client_msg_id.len == sizeof in->cmid) {
            memcpy(in->cmid, d->client_msg_id.data, sizeof in->cmid);
            in->has_cmid = 1;
        }
        n->nbatch++;
        if (n->nbatch == NET_BATCH_MAX) {
            hnet_process_batch(n);
        } else if (!n->batch_scheduled) {
            /* after the frames already read in this pass of the event loop */
            n->batch_scheduled = 1;
            lws_sul_schedule(n->ctx, 0, &n->sul_batch, hnet_batch_cb, 1);
        }
        break;
    }
    case HUSH__FRAME__MSG_PRE_KEYS_LOW: {
        if (n->st != N_ONLINE)
            break; /* a relay sends it after login only; an upload before it would be refused */
        /* However often it is said: one upload at a time, keys made only when none are waiting
         * to be published, and never more than HUSH_MAX_LOCAL_PREKEYS stored. */
        if (hnet_upload_in_flight(n))
            break;
        uint32_t unpublished = 0, total = 0;
        hsdk_lock(n->c);
        hush_err e = hsdk_prekey_stock(n->c, &unpublished, &total);
        if (!e && unpublished == 0 && total + PREKEY_BATCH <= HUSH_MAX_LOCAL_PREKEYS)
            e = hsdk_generate_pre_keys(n->c, PREKEY_BATCH);
        hsdk_unlock(n->c);
        if (e)
            hnet_report(n, e, "could not generate prekeys");
        else
            hnet_upload_keys(n, PREKEY_BATCH);
        break;
    }
    case HUSH__FRAME__MSG_PRESENCE:
        if (n->cb.on_presence && hsdk_valid_username(f->presence->username))
            n->cb.on_presence(n->cb.ctx, f->presence->username, f->presence->online, f->presence->last_seen_ms);
        break;
    case HUSH__FRAME__MSG_CLOSING:
        if (f->closing->code == HUSH__ERROR_CODE__SESSION_REPLACED) {
            hnet_report(n, HUSH_ERR_SESSION_REPLACED, "another connection logged in as this device; not reconnecting");
            hnet_fail_for_good(n, HUSH_ERR_SESSION_REPLACED);
        } else if (f->closing->code == HUSH__ERROR_CODE__DEVICE_REMOVED) {
            hnet_report(n, HUSH_ERR_DEVICE_REMOVED, "this device was removed from its account; not reconnecting");
            hnet_remove_finish(n, HUSH_OK); /* it removed itself */
            hnet_fail_for_good(n, HUSH_ERR_DEVICE_REMOVED);
        }
        break;
    case HUSH__FRAME__MSG_QUEUE_EMPTY:
        hnet_flush_receipts(n);
        /* the deliveries before it were processed above (any other frame processes the batch) */
        pthread_mutex_lock(&n->mu);
        n->queue_empty = n->nretry == 0; /* retries still waiting are not handled yet */
        pthread_mutex_unlock(&n->mu);
        if (n->queue_empty && n->allow_after_drain) {
            n->allow_after_drain = 0;
            hnet_send_presence(n, 1);
        }
        hnet_signal_progress(n);
        break;
    default:
        break;
    }
    hush__frame__free_unpacked(f, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* typing */

/* ------------------------------------------------------------------------------------------ */
/* connection management */

static void connect_now(struct hush_net *n);

static void reconnect_cb(lws_sorted_usec_list_t *sul)
{
    struct hush_net *n = lws_container_of(sul, struct hush_net, sul_reconnect);
    connect_now(n);
}

static void schedule_reconnect(struct hush_net *n)
{
    if (atomic_load(&n->stop) || n->fatal)
        return;
    n->backoff_ms = n->backoff_ms ? n->backoff_ms * 2 : NET_BACKOFF_MIN_MS;
    if (n->backoff_ms > NET_BACKOFF_MAX_MS)
        n->backoff_ms = NET_BACKOFF_MAX_MS;
    /* jitter: 75%..125% so that clients of a restarted relay do not come back in lockstep */
    uint32_t span = (uint32_t)n->backoff_ms / 2;
    uint32_t delay = (uint32_t)n->backoff_ms * 3 / 4 + (span ? randombytes_uniform(span + 1) : 0);
    lws_sul_schedule(n->ctx, 0, &n->sul_reconnect, reconnect_cb, (lws_usec_t)delay * 1000);
}

static void connection_lost(struct hush_net *n)
{
    pthread_mutex_lock(&n->mu);
    n->queue_empty = 0;
    pthread_mutex_unlock(&n->mu);
    hnet_record_sent(n, 1); /* the relay acknowledged them before the connection went */
    n->wsi = NULL;
    hnet_batch_clear(n); /* not acknowledged: the relay delivers them again */
    hnet_retry_clear(n);
    hnet_files_reset(n);
    n->st = N_IDLE;
    while (n->out_head) {
        struct nbuf *b = n->out_head->next;
        free(n->out_head);
        n->out_head = b;
    }
    n->out_tail = NULL;
    hwire_rx_reset(&n->rx);
    n->nreqs = 0;
    hnet_forget_offers(n); /* unanswered: the relay may have stored them */
    n->inflight = 0;
    n->fetching = 0;
    n->pump_cursor = 0;
    pthread_mutex_lock(&n->mu);
    int linking = n->link_step == LINK_TOKEN_ASKED || n->link_step == LINK_BOX_SENT;
    pthread_mutex_unlock(&n->mu);
    if (linking)
        hnet_link_finish(n, HUSH_ERR_NETWORK); /* the other device is not linked: start again */
    pthread_mutex_lock(&n->mu);
    int removing = n->rm_step == LINK_TOKEN_ASKED, listing = n->ls_step == LINK_TOKEN_ASKED;
    pthread_mutex_unlock(&n->mu);
    if (removing)
        hnet_remove_finish(n, HUSH_ERR_NETWORK); /* not known whether it was done: the app may ask again */
    if (listing)
        hnet_list_finish(n, HUSH_ERR_NETWORK);
    if (!n->fatal && !atomic_load(&n->stop))
        hnet_set_conn(n, HUSH_CONN_OFFLINE, HUSH_ERR_NETWORK);
    schedule_reconnect(n);
}

static void connect_now(struct hush_net *n)
{
    if (atomic_load(&n->stop) || n->fatal || n->wsi)
        return;
    hnet_set_conn(n, HUSH_CONN_CONNECTING, HUSH_OK);
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = n->ctx;
    ci.address = n->host;
    ci.port = n->port;
    ci.path = n->path;
    ci.host = n->host;
    ci.origin = n->host;
    ci.protocol = "hush.v1";
    ci.pwsi = &n->wsi;
    if (n->tls)
        ci.ssl_connection = LCCSCF_USE_SSL | (n->insecure ? (LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                                                              LCCSCF_ALLOW_INSECURE | LCCSCF_ALLOW_EXPIRED)
                                                           : 0);
    n->st = N_CONNECTING;
    n->connect_error_said = 0;
    if (!lws_client_connect_via_info(&ci)) {
        if (!n->connect_error_said) { /* failed before any callback: most often the name did not resolve */
            char detail[400];
            hnet_describe_connect_error(n, "", detail, sizeof detail);
            hnet_report(n, HUSH_ERR_NETWORK, detail);
        }
        n->wsi = NULL;
        n->st = N_IDLE;
        hnet_set_conn(n, HUSH_CONN_OFFLINE, HUSH_ERR_NETWORK);
        schedule_reconnect(n);
    }
}

static int identity_pending_for(hush_client *c, const char *peer)
{
    hsdk_lock(c);
    int any = 1; /* when unsure, keep waiting */
    if (hsdk_pending_any(c, peer, &any) != HUSH_OK)
        any = 1;
    hsdk_unlock(c);
    return any;
}

static void tick_cb(lws_sorted_usec_list_t *sul)
{
    struct hush_net *n = lws_container_of(sul, struct hush_net, sul_tick);
    if (n->st == N_ONLINE) {
        hnet_retry_due(n);
        hnet_flush_receipts(n);
        if (now_ms() >= n->next_rotation_check_ms)
            hnet_rotation_check(n);
        hnet_files_pump(n); /* nothing when one runs; else a retry that is due, or one another process queued */
        if (n->retry_at_ms && now_ms() >= n->retry_at_ms) {
            hnet_pump_outbox(n);
        } else if (!n->retry_at_ms && !n->fetching && n->inflight == 0) {
            /* Idle: another process on this database (a one-shot `hush send`, `hush safety
             * --accept`) may have queued a message or decided on an identity: pick that up. */
            if (n->blocked_peer[0] && !identity_pending_for(n->c, n->blocked_peer)) {
                n->blocked_peer[0] = '\0';
                n->pump_cursor = 0;
            }
            hnet_reprocess_pending(n);
            hnet_pump_outbox(n);
        }
    }
    lws_sul_schedule(n->ctx, 0, &n->sul_tick, tick_cb, 500 * LWS_US_PER_MS);
}

static void handle_wake(struct hush_net *n)
{
    int w = atomic_exchange(&n->wake, 0);
    if (n->st != N_ONLINE)
        return;
    if (w & NET_WAKE_IDENTITY) {
        n->blocked_peer[0] = '\0';
        hnet_reprocess_pending(n);
        n->pump_cursor = 0;
    }
    if (w & NET_WAKE_PRESENCE)
        hnet_send_presence(n, 0);
    if (w & NET_WAKE_PUSH)
        hnet_send_push(n);
    if (w & NET_WAKE_TYPING)
        hnet_send_typing(n);
    if (w & (NET_WAKE_OUTBOX | NET_WAKE_IDENTITY))
        hnet_pump_outbox(n);
    if (w & NET_WAKE_FILES)
        hnet_files_pump(n);
    if (w & NET_WAKE_LINK) {
        hnet_link_start(n);
        hnet_remove_start(n);
        hnet_list_start(n);
    }
}

static int net_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)user;
    struct lws_context *ctx = lws_get_context(wsi);
    struct hush_net *n = ctx ? lws_context_user(ctx) : NULL;
    if (!n)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED: {
        /* Small frames, pipelined: Nagle + delayed ACK would add ~40 ms stalls. */
        int one = 1, fd = lws_get_socket_fd(wsi);
        if (fd >= 0 && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
            hnet_report(n, HUSH_ERR_NETWORK, "could not disable Nagle on the relay connection");
        n->st = N_HELLO;
        struct req *r = hnet_add_req(n, R_HELLO);
        Hush__Hello h = HUSH__HELLO__INIT;
        h.min_version = h.max_version = 1;
        h.client = "libhush/" "0.1.0";
        Hush__Frame f = HUSH__FRAME__INIT;
        f.id = r ? r->id : 1;
        f.msg_case = HUSH__FRAME__MSG_HELLO;
        f.hello = &h;
        hnet_queue_frame(n, &f);
        break;
    }
    case LWS_CALLBACK_CLIENT_RECEIVE: {
        size_t remaining = lws_remaining_packet_payload(wsi);
        int final = lws_is_final_fragment(wsi) && remaining == 0;
        const uint8_t *msg;
        size_t mlen;
        int rr = hwire_rx_feed(&n->rx, in, len, remaining, final, NET_MAX_FRAME, &msg, &mlen);
        if (rr == HWIRE_RX_TOO_BIG) {
            hnet_report(n, HUSH_ERR_RELAY, "the relay sent an oversized frame; reconnecting");
            return -1;
        }
        if (rr == HWIRE_RX_NOMEM)
            return -1;
        if (rr == HWIRE_RX_DONE) {
            handle_frame(n, msg, mlen);
            hwire_rx_consumed(&n->rx);
        }
        break;
    }
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        while (n->out_head) {
            struct nbuf *b = n->out_head;
            if (lws_write(wsi, b->data + LWS_PRE, b->len, LWS_WRITE_BINARY) < (int)b->len)
                return -1;
            n->out_head = b->next;
            if (!n->out_head)
                n->out_tail = NULL;
            free(b);
            if (lws_send_pipe_choked(wsi)) {
                if (n->out_head)
                    lws_callback_on_writable(wsi);
                break;
            }
        }
        break;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if (wsi == n->wsi || !n->wsi) {
            char detail[400];
            hnet_describe_connect_error(n, in ? (const char *)in : "", detail, sizeof detail);
            hnet_report(n, HUSH_ERR_NETWORK, detail);
            n->connect_error_said = 1;
            connection_lost(n);
        }
        break;
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (wsi == n->wsi)
            connection_lost(n);
        break;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        handle_wake(n);
        break;
    default:
        break;
    }
    return 0;
}

/* The thread's name in debuggers, crash reports and `top -H`; callbacks can tell where they run. */
static void name_this_thread(void)
{
#if defined(__linux__)
    (void)prctl(PR_SET_NAME, "hush-network", 0, 0, 0);
#elif defined(__APPLE__)
    (void)pthread_setname_np("hush-network");
#endif
}

static void *net_main(void *arg)
{
    struct hush_net *n = arg;
    name_this_thread();
    hnet_replay_unnotified(n);
    connect_now(n);
    lws_sul_schedule(n->ctx, 0, &n->sul_tick, tick_cb, 500 * LWS_US_PER_MS);
    while (!atomic_load(&n->stop))
        lws_service(n->ctx, 0);
    return NULL;
}

static int parse_url(struct hush_net *n, const char *url)
{
    const char *p;
    if (!strncmp(url, "ws://", 5)) {
        p = url + 5;
        n->tls = 0;
        n->port = 80;
    } else if (!strncmp(url, "wss://", 6)) {
        p = url + 6;
        n->tls = 1;
        n->port = 443;
    } else {
        return -1;
    }
    const char *slash = strchr(p, '/');
    size_t hl = slash ? (size_t)(slash - p) : strlen(p);
    if (hl == 0 || hl >= sizeof n->host)
        return -1;
    char hostport[256];
    memcpy(hostport, p, hl);
    hostport[hl] = '\0';
    char *colon = strrchr(hostport, ':');
    if (colon && !strchr(colon, ']')) {
        char *end = NULL;
        long port = strtol(colon + 1, &end, 10);
        if (!end || *end || port < 1 || port > 65535)
            return -1;
        n->port = (int)port;
        *colon = '\0';
    }
    if (hostport[0] == '[') { /* [::1] */
        size_t l = strlen(hostport);
        if (l < 3 || hostport[l - 1] != ']')
            return -1;
        hostport[l - 1] = '\0';
        memmove(hostport, hostport + 1, l - 1);
    }
    snprintf(n->host, sizeof n->host, "%s", hostport);
    snprintf(n->path, sizeof n->path, "%s", slash ? slash : "/");
    return 0;
}

static void lws_quiet(int level, const char *line)
{
    (void)level;
    (void)line;
}

static void load_meta_text(hush_client *c, const char *key, char *out, size_t cap)
{
    hsdk_lock(c);
    if (hsdk_meta_get_text(c, key, out, cap) != HUSH_OK)
        out[0] = 0; /* not remembered: as if never stored */
    hsdk_unlock(c);
}

static void store_meta_text(hush_client *c, const char *key, const char *val)
{
    hsdk_lock(c);
    if (hsdk_meta_set_blob(c, key, (const uint8_t *)val, strlen(val)) != HUSH_OK) {
        /* not fatal: it is simply not remembered */
    }
    hsdk_unlock(c);
}

static void net_wake(hush_client *c, int flags);

hush_err hush_relay_set(hush_client *c, const char *relay_url, const char *ca_file)
{
    if (!c || !relay_url || strlen(relay_url) >= 300 || (ca_file && strlen(ca_file) >= 512))
        return HUSH_ERR_INVALID_ARG;
    struct hush_net *probe = calloc(1, sizeof *probe);
    if (!probe)
        return HUSH_ERR_NOMEM;
    int bad = parse_url(probe, relay_url) != 0;
    free(probe);
    if (bad)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = hsdk_begin(c);
    if (!e)
        e = hsdk_meta_set_blob(c, "relay_url", (const uint8_t *)relay_url, strlen(relay_url));
    if (!e && ca_file)
        e = hsdk_meta_set_blob(c, "relay_ca_file", (const uint8_t *)ca_file, strlen(ca_file));
    e = hsdk_end(c, e);
    hsdk_unlock(c);
    return e;
}

/* How the rest of the SDK reaches this thread (core.c): installed at the first start. */
static const struct hsdk_net_hooks net_hooks = { net_wake, hush_net_stop };

enum start_mode { START_NORMAL, START_LINK, START_RECOVER };

static hush_err start_net(hush_client *c, const hush_net_opts *opts, const hush_callbacks *cb, enum start_mode mode,
                          const char *user, const uint8_t recover_sk[64])
{
    int link = mode != START_NORMAL;
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    char url[300] = "";
    hsdk_lock(c);
    int has = c->has_device;
    hsdk_unlock(c);
    if (opts && opts->relay_url)
        snprintf(url, sizeof url, "%s", opts->relay_url);
    else
        load_meta_text(c, "relay_url", url, sizeof url);
    if (!has && !link)
        return HUSH_ERR_NO_DEVICE;
    if (has && link)
        return HUSH_ERR_DEVICE_EXISTS;
    struct hush_net *n = calloc(1, sizeof *n);
    if (n)
        n->xfer.fd = -1;
    if (!n)
        return HUSH_ERR_NOMEM;
    n->c = c;
    if (mode == START_LINK) {
        n->link_mode = 1;
        crypto_box_keypair(n->link_pk, n->link_sk);
    } else if (mode == START_RECOVER) {
        n->recover_mode = 1;
        snprintf(n->recover_user, sizeof n->recover_user, "%s", user);
        memcpy(n->recover_sk, recover_sk, sizeof n->recover_sk);
    }
    if (cb)
        n->cb = *cb;
    n->next_id = 1;
    if (!url[0] || parse_url(n, url) != 0) {
        sodium_memzero(n, sizeof *n); /* the link or recovery key */
        free(n);
        return HUSH_ERR_INVALID_ARG;
    }
    if (opts && opts->invite)
        snprintf(n->invite, sizeof n->invite, "%s", opts->invite);
    if (opts && opts->ca_file)
        snprintf(n->ca_file, sizeof n->ca_file, "%s", opts->ca_file);
    else
        load_meta_text(c, "relay_ca_file", n->ca_file, sizeof n->ca_file);
    n->insecure = opts ? opts->insecure_tls : 0;
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->cv, NULL);
    pthread_mutex_init(&n->typing_mu, NULL);
    /* remember the relay (and the CA file that goes with it) for next time */
    if (opts && opts->ca_file)
        store_meta_text(c, "relay_ca_file", n->ca_file);
    store_meta_text(c, "relay_url", url);

    lws_set_log_level(LLL_ERR, lws_quiet);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = net_protocols;
    info.user = n;
    info.options = n->tls ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0;
    if (n->ca_file[0])
        info.client_ssl_ca_filepath = n->ca_file;
    info.fd_limit_per_thread = 64;
    /* libwebsockets sets SIGPIPE to SIG_IGN in every new context. A library must not take over a
     * process-wide signal the app (or its runtime: the JVM installs its own SIGPIPE handler) set
     * up: keep theirs; only a SIGPIPE left at its default stays ignored (a write to a dropped TLS
     * socket would otherwise kill the app). */
    struct sigaction old_pipe;
    int have_old_pipe = sigaction(SIGPIPE, NULL, &old_pipe) == 0;
    n->ctx = lws_create_context(&info);
    if (have_old_pipe && old_pipe.sa_handler != SIG_DFL)
        sigaction(SIGPIPE, &old_pipe, NULL);
    if (!n->ctx) {
        pthread_mutex_destroy(&n->mu);
        pthread_cond_destroy(&n->cv);
        pthread_mutex_destroy(&n->typing_mu);
        sodium_memzero(n, sizeof *n); /* the link or recovery key */
        free(n);
        return HUSH_ERR_NETWORK;
    }
    pthread_mutex_lock(&c->net_mu);
    if (c->net) {
        pthread_mutex_unlock(&c->net_mu);
        lws_context_destroy(n->ctx);
        sodium_memzero(n, sizeof *n); /* the link or recovery key */
        free(n);
        return HUSH_ERR_INVALID_ARG; /* already running */
    }
    c->net = n;
    c->net_hooks = &net_hooks;
    pthread_mutex_unlock(&c->net_mu);
    if (pthread_create(&n->th, NULL, net_main, n) != 0) {
        pthread_mutex_lock(&c->net_mu);
        c->net = NULL;
        pthread_mutex_unlock(&c->net_mu);
        lws_context_destroy(n->ctx);
        sodium_memzero(n, sizeof *n); /* the link or recovery key */
        free(n);
        return HUSH_ERR_NETWORK;
    }
    return HUSH_OK;
}

hush_err hush_net_start(hush_client *c, const hush_net_opts *opts, const hush_callbacks *cb)
{
    return start_net(c, opts, cb, START_NORMAL, NULL, NULL);
}

hush_err hush_net_start_link(hush_client *c, const hush_net_opts *opts, const hush_callbacks *cb)
{
    return start_net(c, opts, cb, START_LINK, NULL, NULL);
}

hush_err hush_net_start_recover(hush_client *c, const hush_net_opts *opts, const hush_callbacks *cb,
                                const char *username, const char *recovery_code)
{
    uint8_t secret[16], pk[32], sk[64];
    if (!c || !hsdk_valid_username(username) || hsdk_recovery_code_parse(recovery_code, secret) != HUSH_OK)
        return HUSH_ERR_INVALID_ARG;
    hsdk_recovery_keys(secret, pk, sk);
    hush_err e = start_net(c, opts, cb, START_RECOVER, username, sk);
    sodium_memzero(secret, sizeof secret);
    sodium_memzero(sk, sizeof sk);
    return e;
}

void hush_net_stop(hush_client *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->net_mu);
    struct hush_net *n = c->net;
    if (n && pthread_equal(pthread_self(), n->th)) {
        /* From a callback: joining this very thread cannot work, and going on would free the
         * client under the running network loop. A bug in the app: stop here, loudly. */
        fputs("libhush: hush_net_stop or hush_client_close called from a callback on the network "
              "thread (see hush.h, \"Online\"): aborting\n", stderr);
        fflush(stderr);
        abort();
    }
    c->net = NULL;
    pthread_mutex_unlock(&c->net_mu);
    if (!n)
        return;
    atomic_store(&n->stop, 1);
    lws_cancel_service(n->ctx);
    pthread_join(n->th, NULL);
    hnet_record_sent(n, 0); /* acknowledged but not yet recorded: recorded, without callbacks now */
    lws_context_destroy(n->ctx);
    pthread_mutex_lock(&n->mu);
    n->conn = HUSH_CONN_STOPPED;
    n->progress++;
    pthread_cond_broadcast(&n->cv);
    /* threads blocked in hush_net_wait_online/_flush return HUSH_ERR_NOT_RUNNING; wait for them */
    while (atomic_load(&n->waiters) > 0)
        pthread_cond_wait(&n->cv, &n->mu);
    pthread_mutex_unlock(&n->mu);
    if (n->cb.on_connection)
        n->cb.on_connection(n->cb.ctx, HUSH_CONN_STOPPED, HUSH_OK);
    while (n->out_head) {
        struct nbuf *b = n->out_head->next;
        free(n->out_head);
        n->out_head = b;
    }
    hnet_batch_clear(n);
    hnet_retry_clear(n);
    hnet_files_reset(n);
    hnet_forget_offers(n);
    hwire_rx_free(&n->rx);
    pthread_mutex_destroy(&n->mu);
    pthread_cond_destroy(&n->cv);
    pthread_mutex_destroy(&n->typing_mu);
    sodium_memzero(n->link_sk, sizeof n->link_sk);
    sodium_memzero(n->recover_sk, sizeof n->recover_sk);
    free(n->ls_out);
    free(n);
}

static void net_wake(hush_client *c, int flags)
{
    pthread_mutex_lock(&c->net_mu);
    if (c->net) {
        atomic_fetch_or(&c->net->wake, flags);
        lws_cancel_service(c->net->ctx);
    }
    pthread_mutex_unlock(&c->net_mu);
}

hush_conn_state hush_net_state(hush_client *c, hush_err *last_error)
{
    hush_conn_state s = HUSH_CONN_STOPPED;
    if (last_error)
        *last_error = HUSH_OK;
    if (!c)
        return s;
    pthread_mutex_lock(&c->net_mu);
    if (c->net) {
        pthread_mutex_lock(&c->net->mu);
        s = c->net->conn;
        if (last_error)
            *last_error = c->net->last_err;
        pthread_mutex_unlock(&c->net->mu);
    }
    pthread_mutex_unlock(&c->net_mu);
    return s;
}

/* Waits on the network's condition variable until pred() holds; shared by the two waits. */
static hush_err wait_until(hush_client *c, int timeout_ms, int (*pred)(hush_client *, struct hush_net *, hush_err *))
{
    struct timespec deadline;
    hwire_deadline(&deadline, timeout_ms);
    /* Counted in under net_mu, so hush_net_stop (which unhooks c->net under net_mu) either sees
     * this waiter and waits for it to leave, or the waiter sees no network at all. */
    pthread_mutex_lock(&c->net_mu);
    struct hush_net *n = c->net;
    if (n)
        atomic_fetch_add(&n->waiters, 1);
    pthread_mutex_unlock(&c->net_mu);
    if (!n)
        return HUSH_ERR_NOT_RUNNING;
    hush_err result = HUSH_ERR_TIMEOUT;
    pthread_mutex_lock(&n->mu);
    for (;;) {
        if (n->conn == HUSH_CONN_STOPPED) {
            result = HUSH_ERR_NOT_RUNNING;
            break;
        }
        hush_err e = HUSH_OK;
        unsigned long seen = n->progress;
        pthread_mutex_unlock(&n->mu);
        int done = pred(c, n, &e);
        pthread_mutex_lock(&n->mu);
        if (done) {
            result = e;
            break;
        }
        if (n->progress != seen)
            continue; /* news (or hush_net_stop) came while pred ran: look again before sleeping */
        if (pthread_cond_timedwait(&n->cv, &n->mu, &deadline) == ETIMEDOUT) {
            pthread_mutex_unlock(&n->mu);
            done = pred(c, n, &e);
            pthread_mutex_lock(&n->mu);
            result = done ? e : HUSH_ERR_TIMEOUT;
            break;
        }
    }
    atomic_fetch_sub(&n->waiters, 1);
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
    return result;
}

static int pred_online(hush_client *c, struct hush_net *n, hush_err *e)
{
    (void)c;
    pthread_mutex_lock(&n->mu);
    hush_conn_state s = n->conn;
    hush_err le = n->last_err;
    pthread_mutex_unlock(&n->mu);
    if (s == HUSH_CONN_ONLINE) {
        *e = HUSH_OK;
        return 1;
    }
    if (s == HUSH_CONN_FAILED) {
        *e = le ? le : HUSH_ERR_RELAY;
        return 1;
    }
    return 0;
}

static int pred_flushed(hush_client *c, struct hush_net *n, hush_err *e)
{
    if (pred_online(c, n, e) && *e)
        return 1; /* failed for good */
    *e = HUSH_OK;
    int empty = 0;
    hsdk_lock(c);
    *e = hsdk_outbox_empty(c, &empty);
    hsdk_unlock(c);
    return *e || empty;
}

hush_err hush_net_wait_online(hush_client *c, int timeout_ms)
{
    if (!c || timeout_ms < 0)
        return HUSH_ERR_INVALID_ARG;
    return wait_until(c, timeout_ms, pred_online);
}

hush_err hush_net_flush(hush_client *c, int timeout_ms)
{
    if (!c || timeout_ms < 0)
        return HUSH_ERR_INVALID_ARG;
    return wait_until(c, timeout_ms, pred_flushed);
}

static int pred_drained(hush_client *c, struct hush_net *n, hush_err *e)
{
    if (pred_online(c, n, e) && *e)
        return 1; /* failed for good */
    pthread_mutex_lock(&n->mu);
    int drained = n->conn == HUSH_CONN_ONLINE && n->queue_empty;
    pthread_mutex_unlock(&n->mu);
    if (!drained)
        return 0;
    return pred_flushed(c, n, e); /* and what it queued (receipts, replies) reached the relay */
}

hush_err hush_net_wait_drained(hush_client *c, int timeout_ms)
{
    if (!c || timeout_ms < 0)
        return HUSH_ERR_INVALID_ARG;
    return wait_until(c, timeout_ms, pred_drained);
}

hush_err hush_net_wake(hush_client *c, const hush_net_opts *opts, const hush_callbacks *cb, int timeout_ms)
{
    if (!c || timeout_ms < 0)
        return HUSH_ERR_INVALID_ARG;
    pthread_mutex_lock(&c->net_mu);
    int running = c->net != NULL;
    pthread_mutex_unlock(&c->net_mu);
    if (!running) {
        hush_err e = hush_net_start(c, opts, cb);
        if (e)
            return e;
    }
    hush_err e = hush_net_wait_drained(c, timeout_ms);
    if (!running)
        hush_net_stop(c); /* the app's own start (it is in the foreground) keeps running */
    return e;
}

/* Requests an app thread hands to the network thread and waits for (hush_device_link,
 * hush_device_remove): the step and result live in struct hush_net under mu; `set` fills the
 * request's arguments there. Only one of each kind at a time. */
struct app_request {
    enum link_step *(*step)(struct hush_net *n);
    hush_err *(*result)(struct hush_net *n);
    void (*set)(struct hush_net *n, const void *arg);
    void (*take)(struct hush_net *n, void *out); /* the answer, on success (may be NULL) */
};

static int pred_request(hush_client *c, struct hush_net *n, hush_err *e, const struct app_request *rq)
{
    pthread_mutex_lock(&n->mu);
    int done = *rq->step(n) == LINK_DONE;
    *e = *rq->result(n);
    pthread_mutex_unlock(&n->mu);
    if (done)
        return 1;
    return pred_online(c, n, e) && *e; /* failed for good */
}

static enum link_step *link_step_of(struct hush_net *n) { return &n->link_step; }
static hush_err *link_result_of(struct hush_net *n) { return &n->link_result; }
static enum link_step *rm_step_of(struct hush_net *n) { return &n->rm_step; }
static hush_err *rm_result_of(struct hush_net *n) { return &n->rm_result; }

struct link_arg {
    char addr[HWIRE_PROVISION_ADDRESS_LEN + 1];
    uint8_t pk[32];
};

static void set_link(struct hush_net *n, const void *arg)
{
    const struct link_arg *a = arg;
    memcpy(n->link_addr, a->addr, sizeof a->addr);
    memcpy(n->link_peer_pk, a->pk, sizeof a->pk);
}

static void set_remove(struct hush_net *n, const void *arg) { n->rm_dev = *(const uint32_t *)arg; }

static void take_link(struct hush_net *n, void *out)
{
    if (out)
        *(uint32_t *)out = n->link_dev;
}

struct list_out {
    hush_device_entry *v;
    size_t n;
};

static void take_list(struct hush_net *n, void *out)
{
    struct list_out *lo = out;
    lo->v = n->ls_out;
    lo->n = n->ls_count;
    n->ls_out = NULL;
    n->ls_count = 0;
}

static enum link_step *ls_step_of(struct hush_net *n) { return &n->ls_step; }
static hush_err *ls_result_of(struct hush_net *n) { return &n->ls_result; }
static void set_list(struct hush_net *n, const void *arg)
{
    (void)arg;
    free(n->ls_out);
    n->ls_out = NULL;
    n->ls_count = 0;
}

static const struct app_request link_request = { link_step_of, link_result_of, set_link, take_link };
static const struct app_request list_request = { ls_step_of, ls_result_of, set_list, take_list };
static const struct app_request remove_request = { rm_step_of, rm_result_of, set_remove, NULL };

static int pred_linked(hush_client *c, struct hush_net *n, hush_err *e) { return pred_request(c, n, e, &link_request); }
static int pred_removed(hush_client *c, struct hush_net *n, hush_err *e) { return pred_request(c, n, e, &remove_request); }
static int pred_listed(hush_client *c, struct hush_net *n, hush_err *e) { return pred_request(c, n, e, &list_request); }

/* Queues the request, wakes the network thread, waits; on success rq->take fills *out. */
static hush_err app_request_run(hush_client *c, const struct app_request *rq, const void *arg, int timeout_ms,
                                int (*pred)(hush_client *, struct hush_net *, hush_err *), void *out)
{
    pthread_mutex_lock(&c->net_mu);
    struct hush_net *n = c->net;
    hush_err e = n ? HUSH_OK : HUSH_ERR_NOT_RUNNING;
    if (n) {
        pthread_mutex_lock(&n->mu);
        enum link_step *step = rq->step(n);
        if (*step != LINK_IDLE && *step != LINK_DONE) {
            e = HUSH_ERR_INVALID_ARG; /* one at a time */
        } else {
            *step = LINK_QUEUED;
            *rq->result(n) = HUSH_ERR_TIMEOUT;
            rq->set(n, arg);
        }
        pthread_mutex_unlock(&n->mu);
    }
    pthread_mutex_unlock(&c->net_mu);
    if (e)
        return e;
    net_wake(c, NET_WAKE_LINK);
    e = wait_until(c, timeout_ms, pred);
    pthread_mutex_lock(&c->net_mu);
    if ((n = c->net) != NULL) {
        pthread_mutex_lock(&n->mu);
        enum link_step *step = rq->step(n);
        if (*step == LINK_QUEUED || *step == LINK_DONE)
            *step = LINK_IDLE; /* done, or timed out before it started (it will not start now) */
        if (e == HUSH_OK && rq->take)
            rq->take(n, out);
        pthread_mutex_unlock(&n->mu);
    }
    pthread_mutex_unlock(&c->net_mu);
    return e;
}

hush_err hush_device_link(hush_client *c, const char *code, int timeout_ms, uint32_t *device_id)
{
    if (device_id)
        *device_id = 0;
    struct link_arg a;
    if (!c || timeout_ms < 0 || hsdk_link_code_parse(code, a.addr, a.pk) != HUSH_OK)
        return HUSH_ERR_INVALID_ARG;
    /* a key nothing can be sealed to (e.g. of small order) is refused before the relay reserves
     * a device id for it */
    uint8_t probe[crypto_box_SEALBYTES + 1];
    if (crypto_box_seal(probe, (const uint8_t *)"", 1, a.pk) != 0)
        return HUSH_ERR_INVALID_ARG;
    return app_request_run(c, &link_request, &a, timeout_ms, pred_linked, device_id);
}

hush_err hush_device_remove(hush_client *c, uint32_t device_id, int timeout_ms)
{
    if (!c || timeout_ms < 0 || !hsdk_valid_device(device_id))
        return HUSH_ERR_INVALID_ARG;
    hush_err e = app_request_run(c, &remove_request, &device_id, timeout_ms, pred_removed, NULL);
    return e == HUSH_ERR_DEVICE_REMOVED ? HUSH_OK : e; /* it removed itself: done */
}

hush_err hush_devices(hush_client *c, int timeout_ms, hush_device_entry **out, size_t *count)
{
    if (out)
        *out = NULL;
    if (count)
        *count = 0;
    if (!c || timeout_ms < 0 || !out || !count)
        return HUSH_ERR_INVALID_ARG;
    struct list_out lo = { NULL, 0 };
    hush_err e = app_request_run(c, &list_request, NULL, timeout_ms, pred_listed, &lo);
    if (e)
        return e;
    if (!lo.v)
        return HUSH_ERR_NOT_RUNNING; /* stopped meanwhile */
    *out = lo.v;
    *count = lo.n;
    return HUSH_OK;
}

void hush_devices_free(hush_device_entry *entries) { free(entries); }
