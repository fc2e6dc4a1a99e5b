/*
 * net_send.c - the send path: the outbox pump (one envelope per device of the peer, stored
 * before the first attempt so every retry sends the same bytes), directory fetches, send results
 * and typing indicators.
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

#include "net.h"

static int next_outbox_row(hush_client *c, int64_t after, const char *skip_peer, struct orow *o)
{
    hsdk_lock(c);
    int found = hsdk_outbox_next_after(c, after, skip_peer, &o->id, o->peer, o->mid, &o->kind, &o->body, &o->len);
    hsdk_unlock(c);
    return found;
}

static void forget_devices(hush_client *c, const char *peer)
{
    hsdk_lock(c);
    hsdk_peers_forget(c, peer);
    hsdk_unlock(c);
}

/* A send's envelopes and, for a room message, the record of the keys they carried: together. */
static void forget_envelopes(hush_client *c, const uint8_t mid[16])
{
    hsdk_lock(c);
    if (hsdk_begin(c) == HUSH_OK) {
        hsdk_envelopes_forget(c, mid);
        hush_err e = hsdk_room_keys_forget_message(c, mid);
        if (hsdk_end(c, e)) {
            /* both stay: the same envelopes are sent again, and what they carry stays recorded */
        }
    }
    hsdk_unlock(c);
}

/* The stored envelope for (mid, name, dev), or NULL. */
static uint8_t *stored_envelope(hush_client *c, const uint8_t mid[16], const char *name, uint32_t dev, size_t *len)
{
    hsdk_lock(c);
    uint8_t *out = hsdk_envelope_get(c, mid, name, dev, len);
    hsdk_unlock(c);
    return out;
}

/* Encrypts for one device and stores the envelope, atomically with the ratchet step: a crash
 * between the two would otherwise leave a state advanced for a ciphertext nobody kept. A device of
 * our own user (name = our username) gets the copy that names the conversation (sync_peer). */
static uint8_t *make_envelope(struct hush_net *n, const struct orow *o, const char *name, uint32_t dev, size_t *len,
                              hush_err *err)
{
    hush_client *c = n->c;
    int own = strcmp(name, o->peer) != 0;
    hsdk_lock(c);
    uint8_t *env = NULL;
    *err = hsdk_begin(c);
    if (!*err) {
        *err = hsdk_encrypt_sync(c, name, dev, o->kind, o->body, o->len, o->mid, 0, own ? o->peer : NULL, &env, len);
        if (!*err)
            *err = hsdk_envelope_put(c, o->mid, name, dev, env, *len);
        if (!*err)
            *err = hsdk_commit(c);
        else
            hsdk_rollback(c);
    }
    hsdk_unlock(c);
    if (*err) {
        hush_free(env);
        return NULL;
    }
    /* hand back a plain malloc copy (hush_free'd buffer) */
    uint8_t *copy = malloc(*len);
    if (copy)
        memcpy(copy, env, *len);
    hush_free(env);
    return copy;
}

/* Sends one outbox row to every device of its peer and every other device of our own user.
 * Returns 1 if sent, 0 if it must wait (fetch started or retry later). */
static int send_row(struct hush_net *n, struct orow *o)
{
    hush_client *c = n->c;
    uint32_t devs[MAX_DEVS], own[MAX_DEVS];
    int nd = hsdk_peers_list(c, o->peer, devs, MAX_DEVS);
    int missing = nd == 0;
    for (int i = 0; i < nd && !missing; i++)
        missing = !hush_has_session(c, o->peer, devs[i]);
    if (missing) {
        hnet_request_fetch(n, o->peer);
        return 0;
    }
    int no = hnet_own_other_devices(c, own, MAX_DEVS);
    missing = no < 0;
    for (int i = 0; i < no && !missing; i++)
        missing = !hush_has_session(c, c->username, own[i]);
    if (missing) {
        hnet_request_fetch(n, c->username);
        return 0;
    }
    if (no < 0)
        no = 0;
    int total = nd + no;
    Hush__Recipient rcs[2 * MAX_DEVS], *rp[2 * MAX_DEVS];
    uint8_t *envs[2 * MAX_DEVS] = { 0 };
    int ok = 1;
    for (int i = 0; i < total && ok; i++) {
        const char *name = i < nd ? o->peer : c->username;
        uint32_t dev = i < nd ? devs[i] : own[i - nd];
        size_t len = 0;
        envs[i] = stored_envelope(c, o->mid, name, dev, &len);
        if (!envs[i]) {
            hush_err e = HUSH_OK;
            envs[i] = make_envelope(n, o, name, dev, &len, &e);
            if (!envs[i]) {
                n->pump_err = e; /* reported by the pump once the client lock is released */
                ok = 0;
                break;
            }
        }
        hush__recipient__init(&rcs[i]);
        rcs[i].username = (char *)name;
        rcs[i].device_id = dev;
        rcs[i].envelope.data = envs[i];
        rcs[i].envelope.len = len;
        rp[i] = &rcs[i];
    }
    if (ok) {
        struct req *r = hnet_add_req(n, R_SEND);
        if (!r) {
            ok = 0;
        } else {
            r->outbox_id = o->id;
            r->kind = o->kind;
            memcpy(r->mid, o->mid, 16);
            snprintf(r->peer, sizeof r->peer, "%s", o->peer);
            Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
            s.client_msg_id.data = o->mid;
            s.client_msg_id.len = 16;
            s.n_recipients = (size_t)total;
            s.recipients = rp;
            /* only texts and files wake a sleeping phone at once; receipts and the like may wait */
            s.non_urgent = !hnet_has_state(o->kind);
            Hush__Frame f = HUSH__FRAME__INIT;
            f.id = r->id;
            f.msg_case = HUSH__FRAME__MSG_SEND;
            f.send = &s;
            hnet_queue_frame(n, &f);
            n->inflight++;
        }
    }
    for (int i = 0; i < total; i++)
        free(envs[i]);
    if (!ok)
        n->retry_at_ms = now_ms() + NET_RETRY_MS;
    return ok;
}

/* Frames queued after `mark` (NULL: all of them) are dropped before anything wrote them. */
static void drop_frames_after(struct hush_net *n, struct nbuf *mark)
{
    struct nbuf *b = mark ? mark->next : n->out_head;
    while (b) {
        struct nbuf *next = b->next;
        free(b);
        b = next;
    }
    if (mark)
        mark->next = NULL;
    else
        n->out_head = NULL;
    n->out_tail = mark;
}

/*
 * Sends outbox rows in order, up to NET_MAX_INFLIGHT in flight. The envelopes made here (ratchet
 * step and stored ciphertext each) share one transaction, committed before this returns and so
 * before any of the frames is written (that happens in a later WRITEABLE callback): one commit (one
 * fsync with durability FULL) for a burst instead of one per message. The client lock is held for
 * the burst, so no app thread's own commit (hush_send) lands inside this transaction. If the
 * commit fails, the frames are dropped unwritten and the connection is renewed: nothing goes out
 * that is not on disk, and the rows are sent again.
 */
void hnet_pump_outbox(struct hush_net *n)
{
    if (n->st != N_ONLINE || n->fetching || (n->retry_at_ms && now_ms() < n->retry_at_ms))
        return;
    n->retry_at_ms = 0;
    hush_client *c = n->c;
    int to_self = 0; /* a row to ourselves (queued by an older version): failed after the burst */
    struct orow self_row;
    n->pump_err = HUSH_OK;
    hsdk_lock(c); /* no app callback runs while it is held: errors are reported after */
    struct nbuf *mark = n->out_tail;
    int outer = hsdk_begin(c) == HUSH_OK;
    while (n->inflight < NET_MAX_INFLIGHT) {
        struct orow o;
        memset(&o, 0, sizeof o);
        if (!next_outbox_row(c, n->pump_cursor, n->blocked_peer, &o))
            break;
        int sent = 0;
        if (o.peer[0] == '#') {
            sent = hnet_send_room_row(n, &o);
        } else if (!strcmp(o.peer, c->username)) {
            self_row = o;
            self_row.body = NULL; /* freed below; not needed to fail it */
            to_self = 1;
        } else {
            sent = send_row(n, &o);
        }
        if (o.body) {
            sodium_memzero(o.body, o.len);
            free(o.body);
        }
        if (!sent)
            break; /* in order: later rows wait for this one */
        n->pump_cursor = o.id;
    }
    hush_err e = outer ? hsdk_commit(c) : HUSH_ERR_STORAGE;
    hsdk_unlock(c);
    if (n->pump_err)
        hnet_report(n, n->pump_err, "encrypting an outgoing message failed; will retry");
    if (!e && hnet_room_done(n))
        hnet_schedule_send_pass(n); /* a room row finished in the burst: recorded now, the pump goes on */
    else if (e)
        n->room_done.set = 0; /* rolled back: it is met again */
    if (to_self && !e) {
        /* nothing to deliver to yet, so it fails; the pump goes on behind it */
        hnet_outbox_finished(n, self_row.id, self_row.mid, self_row.kind, HUSH_MSG_FAILED, self_row.peer);
        n->pump_cursor = self_row.id;
        hnet_schedule_send_pass(n);
    }
    if (e) {
        drop_frames_after(n, mark);
        hnet_report(n, e, "could not store outgoing messages; will retry");
        if (n->wsi)
            lws_set_timeout(n->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC); /* requests forgotten, sent again */
    }
}

void hnet_record_sent(struct hush_net *n, int report)
{
    if (!n->nsent)
        return;
    hush_client *c = n->c;
    hsdk_lock(c);
    if (hsdk_begin(c) == HUSH_OK) {
        for (int i = 0; i < n->nsent; i++) {
            hsdk_outbox_remove(c, n->sent[i].outbox_id, n->sent[i].mid);
            if (hnet_has_state(n->sent[i].kind))
                hsdk_set_message_state(c, n->sent[i].mid, HUSH_MSG_SENT);
        }
        if (hsdk_commit(c)) {
            /* the rows stay: they are resent (same ids, deduplicated by the relay) */
        }
    }
    hsdk_unlock(c);
    for (int i = 0; report && i < n->nsent; i++)
        if (hnet_has_state(n->sent[i].kind))
            hnet_report_state(n, n->sent[i].peer, n->sent[i].mid, HUSH_MSG_SENT);
    n->nsent = 0;
    hnet_signal_progress(n);
}

static void send_pass_cb(lws_sorted_usec_list_t *sul)
{
    struct hush_net *n = lws_container_of(sul, struct hush_net, sul_send_pass);
    n->send_pass_scheduled = 0;
    hnet_record_sent(n, 1);
    hnet_pump_outbox(n);
}

void hnet_schedule_send_pass(struct hush_net *n)
{
    if (n->send_pass_scheduled)
        return;
    n->send_pass_scheduled = 1;
    lws_sul_schedule(n->ctx, 0, &n->sul_send_pass, send_pass_cb, 1);
}

/* Nobody to deliver to: the queued messages to `peer` at the head of the outbox fail (state
 * FAILED), so the rows behind them are not held up. */
static void fail_head_rows(struct hush_net *n, const char *peer)
{
    for (;;) {
        struct orow o;
        memset(&o, 0, sizeof o);
        if (!next_outbox_row(n->c, 0, "", &o))
            break;
        int match = !strcmp(o.peer, peer);
        if (o.body) {
            sodium_memzero(o.body, o.len);
            free(o.body);
        }
        if (!match)
            break;
        hnet_outbox_finished(n, o.id, o.mid, o.kind, HUSH_MSG_FAILED, o.peer);
    }
    n->pump_cursor = 0;
}

void hnet_on_fetch_result(struct hush_net *n, const struct req *r, const Hush__Result *res)
{
    n->fetching = 0;
    if (res->code == HUSH__ERROR_CODE__UNKNOWN_USER) {
        hnet_mark_gone(n, r->peer); /* a room's sends go on without that member */
        fail_head_rows(n, r->peer);
        hnet_report(n, HUSH_ERR_UNKNOWN_USER, r->peer);
        return;
    }
    if (res->code != HUSH__ERROR_CODE__OK) {
        n->retry_at_ms = now_ms() + (res->retry_after_ms ? res->retry_after_ms : NET_RETRY_MS);
        return;
    }
    hush_client *c = n->c;
    hsdk_lock(c);
    hsdk_peers_forget(c, r->peer);
    hsdk_unlock(c);
    for (size_t i = 0; i < res->n_bundles; i++) {
        const Hush__KeyBundle *b = res->bundles[i];
        if (strcmp(b->username, r->peer) != 0)
            continue;
        uint32_t dev = b->device_id;
        if (!hush_has_session(c, r->peer, dev)) {
            size_t len = hush__key_bundle__get_packed_size(b);
            uint8_t *buf = malloc(len);
            if (!buf)
                continue;
            hush__key_bundle__pack(b, buf);
            hush_err e = hush_bundle_import(c, buf, len, NULL, NULL);
            free(buf);
            if (e == HUSH_ERR_IDENTITY_CHANGED && !strcmp(r->peer, c->username)) {
                /* listed under our name without our identity key: never one of ours */
                char detail[160];
                snprintf(detail, sizeof detail, "the relay lists a device %s/%u without this account's identity key: "
                         "nothing is sent to it", r->peer, dev);
                hnet_report(n, e, detail);
                continue;
            }
            if (e == HUSH_ERR_IDENTITY_CHANGED) {
                /* A device whose key is not the one trusted for its user (a changed key, or a
                 * device the relay lists with keys of its own) holds every send to this user
                 * until the user decides: nothing goes to it, and nothing goes without it, since
                 * the relay takes a send only when it names every device of the user. */
                snprintf(n->blocked_peer, sizeof n->blocked_peer, "%s", r->peer);
                hnet_on_identity(n, r->peer, dev);
                continue;
            }
            if (e) {
                char detail[96];
                snprintf(detail, sizeof detail, "a key bundle of %s/%u was refused", r->peer, dev);
                hnet_report(n, e, detail);
                continue;
            }
        }
        hsdk_lock(c);
        if (hsdk_peers_add(c, r->peer, dev, now_ms()) != HUSH_OK)
            hnet_report(n, HUSH_ERR_STORAGE, "could not record a contact's devices");
        hsdk_unlock(c);
    }
    if (!strcmp(r->peer, c->username)) {
        /* our own list always holds this device: it tells "fetched, no other device" from
         * "never fetched" */
        hsdk_lock(c);
        if (hsdk_peers_add(c, c->username, c->device_id, now_ms()) != HUSH_OK)
            hnet_report(n, HUSH_ERR_STORAGE, "could not record this account's devices");
        hsdk_unlock(c);
    }
    uint32_t devs[1];
    if (hsdk_peers_list(c, r->peer, devs, 1) == 0 && strcmp(n->blocked_peer, r->peer) != 0) {
        /* not one usable device (every bundle refused, or none listed): the messages fail now
         * rather than block the outbox with fetches that cannot succeed */
        hnet_mark_gone(n, r->peer);
        fail_head_rows(n, r->peer);
        return;
    }
    n->pump_cursor = 0; /* resume from the oldest row not yet acknowledged */
    n->inflight = 0;
    for (int i = 0; i < n->nreqs; i++)
        if (n->reqs[i].type == R_SEND)
            n->inflight++;
}

void hnet_on_send_result(struct hush_net *n, const struct req *r, const Hush__Result *res)
{
    n->inflight--;
    switch (res->code) {
    case HUSH__ERROR_CODE__OK: {
        /* recorded with the others acknowledged in this pass (hnet_schedule_send_pass) */
        if (n->nsent == NET_MAX_INFLIGHT)
            hnet_record_sent(n, 1);
        struct sent_row *sr = &n->sent[n->nsent++];
        sr->outbox_id = r->outbox_id;
        memcpy(sr->mid, r->mid, 16);
        sr->kind = r->kind;
        snprintf(sr->peer, sizeof sr->peer, "%s", r->peer);
        break;
    }
    case HUSH__ERROR_CODE__UNKNOWN_RECIPIENT:
        /* the device list changed: forget it and this message's ciphertexts, fetch again (a room
         * member the relay does not know at all, named in the message, is left out from now on) */
        if (r->peer[0] == '#' && res->message && hsdk_valid_username(res->message))
            hnet_mark_gone(n, res->message);
        forget_devices(n->c, r->peer);
        forget_envelopes(n->c, r->mid);
        n->pump_cursor = 0;
        n->inflight = 0;
        break;
    case HUSH__ERROR_CODE__DEVICE_MISMATCH:
        /* A device was added or removed (the contact's or ours): forget the lists named, fetch
         * them again and send the same message (same id) to the new set. A relay that keeps
         * refusing every set we can trust fails the message after a few rounds. */
        if (memcmp(n->mismatch_mid, r->mid, 16) != 0) {
            memcpy(n->mismatch_mid, r->mid, 16);
            n->mismatch_rounds = 0;
        }
        if (++n->mismatch_rounds > NET_MAX_MISMATCH_ROUNDS) {
            char detail[160];
            snprintf(detail, sizeof detail, "the relay refused every device list for a message to %s; it was not sent",
                     r->peer);
            hnet_report(n, HUSH_ERR_RELAY, detail);
            hnet_outbox_finished(n, r->outbox_id, r->mid, r->kind, HUSH_MSG_FAILED, r->peer);
            n->mismatch_rounds = 0;
        } else {
            for (size_t i = 0; i < res->n_mismatches; i++)
                if (res->mismatches[i]->username && hsdk_valid_username(res->mismatches[i]->username))
                    forget_devices(n->c, res->mismatches[i]->username);
            forget_envelopes(n->c, r->mid);
        }
        n->pump_cursor = 0;
        n->inflight = 0;
        break;
    default:
        /* rate limit, quota, storage trouble at the relay: the row stays, try again later */
        n->retry_at_ms = now_ms() + (res->retry_after_ms ? res->retry_after_ms : NET_RETRY_MS);
        n->pump_cursor = 0;
        n->inflight = 0;
        if (res->code == HUSH__ERROR_CODE__QUOTA_EXCEEDED)
            hnet_report(n, HUSH_ERR_RELAY, "the recipient's mailbox is full; will retry");
        break;
    }
}

void hnet_send_typing(struct hush_net *n)
{
    for (;;) {
        char peer[HUSH_USERNAME_MAX + 1] = "";
        int typing = 0;
        pthread_mutex_lock(&n->typing_mu);
        for (int i = 0; i < n->ntyping && !peer[0]; i++) {
            if (n->typing[i].pending) {
                n->typing[i].pending = 0;
                snprintf(peer, sizeof peer, "%s", n->typing[i].peer);
                typing = n->typing[i].typing;
            }
        }
        pthread_mutex_unlock(&n->typing_mu);
        if (!peer[0] || n->st != N_ONLINE)
            return;
        if (peer[0] == '#') {
            hnet_send_room_typing(n, peer, typing);
            continue;
        }
        uint32_t devs[MAX_DEVS];
        int nd = hsdk_peers_list(n->c, peer, devs, MAX_DEVS);
        Hush__Recipient rcs[MAX_DEVS], *rp[MAX_DEVS];
        uint8_t *envs[MAX_DEVS] = { 0 };
        int cnt = 0;
        uint8_t mid[16], body = (uint8_t)(typing ? 1 : 0);
        randombytes_buf(mid, sizeof mid);
        for (int i = 0; i < nd; i++) {
            size_t len = 0;
            hsdk_lock(n->c);
            hush_err e = hsdk_encrypt_kind(n->c, peer, devs[i], HUSH__CONTENT_KIND__CONTENT_TYPING, &body, 1, mid, 0,
                                            &envs[cnt], &len);
            hsdk_unlock(n->c);
            if (e)
                continue;
            hush__recipient__init(&rcs[cnt]);
            rcs[cnt].username = peer;
            rcs[cnt].device_id = devs[i];
            rcs[cnt].envelope.data = envs[cnt];
            rcs[cnt].envelope.len = len;
            rp[cnt] = &rcs[cnt];
            cnt++;
        }
        if (cnt) {
            struct req *r = hnet_add_req(n, R_OTHER);
            if (r) {
                Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
                s.client_msg_id.data = mid;
                s.client_msg_id.len = 16;
                s.n_recipients = (size_t)cnt;
                s.recipients = rp;
                s.ephemeral = 1;
                Hush__Frame f = HUSH__FRAME__INIT;
                f.id = r->id;
                f.msg_case = HUSH__FRAME__MSG_SEND;
                f.send = &s;
                hnet_queue_frame(n, &f);
            }
        }
        for (int i = 0; i < cnt; i++)
            hush_free(envs[i]);
    }
}

static hush_err typing_request(hush_client *c, const char *peer, int typing);

hush_err hush_typing(hush_client *c, const char *peer, int typing)
{
    if (!c || !hsdk_valid_username(peer))
        return HUSH_ERR_INVALID_ARG;
    return typing_request(c, peer, typing);
}

hush_err hush_group_typing(hush_client *c, const char *group, int typing)
{
    uint8_t id[16];
    size_t n = 0;
    if (!c || !hsdk_room_is_id(group) || sodium_hex2bin(id, sizeof id, group, HUSH_ROOM_ID_LEN, NULL, &n, NULL) != 0)
        return HUSH_ERR_INVALID_ARG;
    char peer[HUSH_USERNAME_MAX + 1];
    hsdk_room_outbox_peer(id, peer); /* the room, as the network thread names it */
    return typing_request(c, peer, typing);
}

/* Queues a typing indicator for a user, or a room ("#..."), at most every NET_TYPING_EVERY_MS
 * while typing goes on. */
static hush_err typing_request(hush_client *c, const char *peer, int typing)
{
    pthread_mutex_lock(&c->net_mu);
    struct hush_net *n = c->net;
    hush_err e = HUSH_ERR_NOT_RUNNING;
    if (n) {
        e = HUSH_OK;
        pthread_mutex_lock(&n->typing_mu);
        struct typing_req *t = NULL;
        for (int i = 0; i < n->ntyping && !t; i++)
            if (!strcmp(n->typing[i].peer, peer))
                t = &n->typing[i];
        if (!t && n->ntyping < NET_MAX_TYPING) {
            t = &n->typing[n->ntyping++];
            memset(t, 0, sizeof *t);
            snprintf(t->peer, sizeof t->peer, "%s", peer);
        }
        uint64_t now = now_ms();
        int send = 0;
        if (t && (!typing || t->typing != typing || now - t->last_sent_ms >= NET_TYPING_EVERY_MS)) {
            t->typing = typing ? 1 : 0;
            t->pending = 1;
            t->last_sent_ms = now;
            send = 1;
        }
        pthread_mutex_unlock(&n->typing_mu);
        if (send) {
            atomic_fetch_or(&n->wake, NET_WAKE_TYPING);
            lws_cancel_service(n->ctx);
        }
    }
    pthread_mutex_unlock(&c->net_mu);
    return e;
}
