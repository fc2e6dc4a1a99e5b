/*
 * net_recv.c - the receive path: deliveries read together are decrypted and stored in one
 * transaction, acknowledged after the commit, then reported to the app and marked notified;
 * envelopes held for an identity decision; receipts owed to senders.
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

/* Inside the caller's transaction: the message is marked notified, and its sender is owed a
 * delivery receipt (pairwise texts). */
static hush_err mark_notified(hush_client *c, const hush_message *m)
{
    hsdk_history_set_notified(c, m->local_id);
    /* pairwise texts and files, and a room's when it is small enough for receipts */
    int owed = (m->kind == HUSH_KIND_TEXT || m->kind == HUSH_KIND_FILE || m->kind == HUSH_KIND_GROUP_TEXT) &&
               (!m->group_id[0] || hsdk_room_wants_receipts(c, m->group_id));
    return owed ? hsdk_queue_receipt(c, m->sender, HUSH_MSG_DELIVERED, m->message_id) : HUSH_OK;
}

/* After the app has been told: mark the message notified and owe its sender a delivery receipt,
 * in one transaction. Receipts go out in batches (flush_receipts). */
static void notify_and_mark(struct hush_net *n, const hush_message *m)
{
    if (n->cb.on_message)
        n->cb.on_message(n->cb.ctx, m);
    hush_client *c = n->c;
    hsdk_lock(c);
    if (hsdk_begin(c) == HUSH_OK) {
        hush_err e = mark_notified(c, m);
        e = hsdk_end(c, e);
        if (e)
            hnet_report(n, e, "could not record a delivery receipt");
    }
    hsdk_unlock(c);
    n->unflushed_receipts++;
}

void hnet_flush_receipts(struct hush_net *n)
{
    if (!n->unflushed_receipts)
        return;
    int queued = 0;
    hsdk_lock(n->c);
    hush_err e = hsdk_flush_receipts(n->c, &queued);
    hsdk_unlock(n->c);
    if (e)
        hnet_report(n, e, "could not queue receipts");
    n->unflushed_receipts = 0;
    if (queued)
        hnet_pump_outbox(n);
}

/* Phase 1 of an inbound envelope, inside the caller's transaction when there is one: decrypt and
 * store it (hush_decrypt), or keep it aside when its sender's identity changed. */
int (*hnet_test_store_fault)(const char *from, uint32_t dev);

static void inbound_store(struct hush_net *n, struct inbound *in, int from_pending)
{
    in->m = NULL;
    if (hnet_test_store_fault && hnet_test_store_fault(in->from, in->dev)) {
        in->e = HUSH_ERR_STORAGE;
        return;
    }
    if (in->shared) /* a room send: this device's own part and the shared envelope together */
        in->e = hsdk_decrypt_shared(n->c, in->from, in->dev, in->env, in->len, in->shared, in->shared_len, &in->m);
    else
        in->e = hush_decrypt(n->c, in->from, in->dev, in->env, in->len, &in->m);
    if (in->e == HUSH_ERR_IDENTITY_CHANGED && !from_pending) {
        /* keep the envelope until the user decides, and let the relay forget it */
        hsdk_lock(n->c);
        int64_t peer_count = 0, peer_bytes = 0, dev_count = 0;
        hush_err se = hsdk_held_stats(n->c, in->from, in->dev, &peer_count, &peer_bytes, &dev_count);
        in->held_first = dev_count == 0;
        if (!se && (peer_count >= HELD_MAX_PER_PEER || peer_bytes + (int64_t)in->len > (int64_t)HELD_BYTES_PER_PEER)) {
            hsdk_unlock(n->c);
            in->held_dropped = 1; /* acknowledged and dropped: the sender keeps its own copy */
            return;
        }
        if (!se)
            se = hsdk_held_put(n->c, in->from, in->dev, in->env, in->len, now_ms());
        hsdk_unlock(n->c);
        if (se)
            in->e = HUSH_ERR_STORAGE; /* not kept: the relay must deliver it again */
        else
            in->e = HUSH_ERR_IDENTITY_CHANGED;
    }
}

/* Phase 2, once phase 1 is committed: tell the app. Texts are reported by the caller (they are
 * marked notified in a batch). Returns 1 if the envelope may be acknowledged to the relay. */
static int inbound_report(struct hush_net *n, struct inbound *in, int from_pending)
{
    hush_message *m = in->m;
    switch (in->e) {
    case HUSH_OK:
        if (m->kind == HUSH_KIND_RECEIPT && n->cb.on_receipt) {
            int state = m->body[0];
            for (size_t i = 1; i + HUSH_MESSAGE_ID_BYTES <= m->body_len; i += HUSH_MESSAGE_ID_BYTES) {
                /* a room message of ours is reported under its room, once all its members are there */
                char group[HUSH_GROUP_ID_MAX + 1];
                hsdk_lock(n->c);
                int room = hsdk_history_room_of_sent(n->c, m->body + i, group);
                hsdk_unlock(n->c);
                hnet_report_state(n, room ? group : in->from, m->body + i, state);
            }
            hnet_signal_progress(n);
        } else if (m->kind == HUSH_KIND_TYPING && m->group_id[0]) {
            if (n->cb.on_group_typing && strcmp(in->from, n->c->username) != 0)
                n->cb.on_group_typing(n->cb.ctx, m->group_id, in->from, in->dev, m->body[0] != 0);
        } else if (m->kind == HUSH_KIND_TYPING && n->cb.on_typing) {
            n->cb.on_typing(n->cb.ctx, in->from, in->dev, m->body[0] != 0);
        } else if ((m->kind == HUSH_KIND_SENT_ELSEWHERE || (m->kind == HUSH_KIND_FILE && !strcmp(m->sender, n->c->username))) &&
                   n->cb.on_message) {
            n->cb.on_message(n->cb.ctx, m); /* stored as sent: no receipt is owed to ourselves */
        }
        return 1;
    case HUSH_ERR_DUPLICATE:
        return 1; /* already stored (and reported): just drop it */
    case HUSH_ERR_IDENTITY_CHANGED:
        if (!from_pending && in->held_dropped && !n->held_drop_said) {
            char detail[160];
            snprintf(detail, sizeof detail, "too many messages held from %s until its identity is decided: dropping more",
                     in->from);
            hnet_report(n, HUSH_ERR_IDENTITY_CHANGED, detail);
            n->held_drop_said = 1;
        } else if (!from_pending && in->held_first) {
            hnet_on_identity(n, in->from, in->dev); /* once per device, not for every held envelope */
        }
        return 1;
    case HUSH_ERR_STORAGE:
    case HUSH_ERR_NOMEM:
    case HUSH_ERR_DB_KEY:
    case HUSH_ERR_INTERNAL:
        return 0; /* the caller tries it again, or leaves it to the relay */
    case HUSH_ERR_NO_GROUP_SESSION:
        if (in->shared && in->has_cmid) {
            hnet_ask_room_key(n, in); /* the sender sends it again, pairwise */
            return 1;
        }
        goto undecryptable;
    case HUSH_ERR_NOT_ALLOWED:
    case HUSH_ERR_GROUP_CONFLICT: {
        char detail[160];
        snprintf(detail, sizeof detail, "dropped a room message or change from %s/%u: %s", in->from, in->dev,
                 hush_strerror(in->e));
        hnet_report(n, in->e, detail);
        return 1;
    }
    default:
    undecryptable: {
        char detail[128];
        snprintf(detail, sizeof detail, "dropped an undecryptable message from %s/%u: %s", in->from, in->dev,
                 hush_strerror(in->e));
        hnet_report(n, in->e, detail);
        return 1;
    }
    }
}

static int is_text(const struct hush_net *n, const struct inbound *in)
{
    /* texts, room changes, and files from a peer (a file from another of our devices is reported
     * like a text sent elsewhere: no receipt to ourselves) */
    return in->e == HUSH_OK && (in->m->kind == HUSH_KIND_TEXT || in->m->kind == HUSH_KIND_GROUP_TEXT ||
                                in->m->kind == HUSH_KIND_GROUP_CHANGE ||
                                (in->m->kind == HUSH_KIND_FILE && strcmp(in->m->sender, n->c->username) != 0));
}

/* A delivery that failed alone: kept (its envelope taken from the batch) to be tried again. When
 * the table is full it stays unacknowledged, and the relay delivers it again after a reconnect. */
static void retry_later(struct hush_net *n, struct inbound *in)
{
    if (n->nretry >= NET_RETRY_MAX) {
        hnet_report(n, in->e, "could not store an incoming message; the relay will deliver it again");
        return;
    }
    hnet_report(n, in->e, "could not store an incoming message; trying again");
    struct retry *r = &n->retry[n->nretry++];
    r->in = *in;
    r->in.m = NULL;
    r->attempts = 1;
    r->due_ms = now_ms() + 1000;
    in->env = NULL; /* the retry owns them now */
    in->shared = NULL;
}

void hnet_batch_clear(struct hush_net *n)
{
    for (int i = 0; i < n->nbatch; i++) {
        free(n->batch[i].env);
        free(n->batch[i].shared);
        hush_message_free(n->batch[i].m);
    }
    n->nbatch = 0;
}

/* Phase 1 for every delivery of the batch in one transaction (each decrypt is a savepoint inside
 * it, so one bad message rolls back alone), one commit, then the acks (one frame), then the app is
 * told, then everything reported is marked notified in one more transaction. A crash anywhere
 * before the commit loses nothing: nothing was acked, the relay delivers again. */
void hnet_process_batch(struct hush_net *n)
{
    if (!n->nbatch)
        return;
    hush_client *c = n->c;
    hsdk_lock(c);
    int outer = hsdk_begin(c) == HUSH_OK;
    for (int i = 0; i < n->nbatch; i++)
        inbound_store(n, &n->batch[i], 0);
    hush_err ce = outer ? hsdk_commit(c) : HUSH_ERR_STORAGE;
    hsdk_unlock(c);
    if (ce) {
        /* rolled back as a whole: nothing is acknowledged, everything comes again */
        hnet_report(n, ce, "could not store incoming messages; the relay will deliver them again");
        hnet_batch_clear(n);
        return;
    }
    uint64_t seqs[NET_BATCH_MAX];
    size_t nseqs = 0;
    for (int i = 0; i < n->nbatch; i++) {
        if (inbound_report(n, &n->batch[i], 0)) {
            if (n->batch[i].seq)
                seqs[nseqs++] = n->batch[i].seq;
        } else {
            retry_later(n, &n->batch[i]); /* the batch committed: this message failed alone */
        }
    }
    hnet_send_acks(n, seqs, nseqs);
    /* texts: the app first, then one transaction marks them notified and owes receipts */
    int ntexts = 0;
    for (int i = 0; i < n->nbatch; i++)
        if (is_text(n, &n->batch[i])) {
            ntexts++;
            if (n->cb.on_message)
                n->cb.on_message(n->cb.ctx, n->batch[i].m);
        }
    if (ntexts) {
        hsdk_lock(c);
        hush_err e = hsdk_begin(c);
        for (int i = 0; i < n->nbatch && !e; i++)
            if (is_text(n, &n->batch[i]))
                e = mark_notified(c, n->batch[i].m);
        e = hsdk_end(c, e);
        hsdk_unlock(c);
        if (e)
            hnet_report(n, e, "could not record delivery receipts");
        n->unflushed_receipts += ntexts;
        if (n->unflushed_receipts >= 64)
            hnet_flush_receipts(n);
    }
    hnet_batch_clear(n);
}

void hnet_retry_clear(struct hush_net *n)
{
    for (int i = 0; i < n->nretry; i++) {
        free(n->retry[i].in.env);
        free(n->retry[i].in.shared);
    }
    n->nretry = 0;
}

void hnet_retry_due(struct hush_net *n)
{
    uint64_t now = now_ms(), seqs[NET_RETRY_MAX];
    size_t nseqs = 0;
    for (int i = 0; i < n->nretry;) {
        struct retry *r = &n->retry[i];
        if (r->due_ms > now) {
            i++;
            continue;
        }
        struct inbound *in = &r->in;
        hsdk_lock(n->c);
        hush_err e = hsdk_begin(n->c);
        if (!e) {
            inbound_store(n, in, 0);
            e = hsdk_commit(n->c);
        }
        hsdk_unlock(n->c);
        int done = 0;
        if (!e && inbound_report(n, in, 0)) {
            if (is_text(n, in))
                notify_and_mark(n, in->m);
            done = 1;
        } else if (++r->attempts >= NET_RETRY_ATTEMPTS) {
            char detail[160];
            snprintf(detail, sizeof detail, "dropped a message from %s/%u that could not be stored (%d attempts): %s",
                     in->from, in->dev, r->attempts, hush_strerror(e ? e : in->e));
            hnet_report(n, e ? e : in->e, detail);
            done = 1;
        } else {
            r->due_ms = now + 1000u * (uint64_t)r->attempts;
        }
        hush_message_free(in->m);
        in->m = NULL;
        if (!done) {
            i++;
            continue;
        }
        if (in->seq)
            seqs[nseqs++] = in->seq;
        free(in->env);
        free(in->shared);
        n->retry[i] = n->retry[--n->nretry]; /* order does not matter: each is acknowledged alone */
    }
    hnet_send_acks(n, seqs, nseqs);
}

void hnet_batch_cb(lws_sorted_usec_list_t *sul)
{
    struct hush_net *n = lws_container_of(sul, struct hush_net, sul_batch);
    n->batch_scheduled = 0;
    hnet_process_batch(n);
}

/* Envelopes held for an identity decision: reprocess those whose peer is no longer pending. */
void hnet_reprocess_pending(struct hush_net *n)
{
    for (;;) {
        char peer[HUSH_USERNAME_MAX + 1];
        uint32_t dev = 0;
        uint8_t *env = NULL;
        size_t len = 0;
        hsdk_lock(n->c);
        int64_t id = hsdk_held_next_released(n->c, peer, &dev, &env, &len);
        hsdk_unlock(n->c);
        if (!id || !env) {
            free(env);
            return;
        }
        struct inbound in;
        memset(&in, 0, sizeof in);
        snprintf(in.from, sizeof in.from, "%s", peer);
        in.dev = dev;
        in.env = env;
        in.len = len;
        inbound_store(n, &in, 1);
        hush_err e = in.e;
        if (e == HUSH_OK) {
            /* receipts and typing indicators held back too are reported like fresh ones */
            inbound_report(n, &in, 1);
            if (is_text(n, &in))
                notify_and_mark(n, in.m);
            hush_message_free(in.m);
        } else if (e == HUSH_ERR_IDENTITY_CHANGED) {
            free(env);
            return; /* rejected and still different: keep waiting for an accept */
        } else if (e == HUSH_ERR_STORAGE || e == HUSH_ERR_NOMEM) {
            free(env);
            return;
        }
        free(env);
        hsdk_lock(n->c);
        hsdk_held_delete(n->c, id);
        hsdk_unlock(n->c);
    }
}

/* Messages stored before a crash but never reported: report them now (same local_id). */
void hnet_replay_unnotified(struct hush_net *n)
{
    for (;;) {
        char peer[HUSH_USERNAME_MAX + 1], group[HUSH_GROUP_ID_MAX + 1];
        hsdk_lock(n->c);
        int64_t id = hsdk_history_next_unnotified(n->c, peer, group);
        hsdk_unlock(n->c);
        if (!id)
            return;
        hush_history_entry *h = NULL;
        size_t cnt = 0;
        hush_message m;
        memset(&m, 0, sizeof m);
        int found = 0;
        hush_err le = group[0] ? hush_group_history(n->c, group, id + 1, 1, &h, &cnt)
                               : hush_history_list(n->c, peer, id + 1, 1, &h, &cnt);
        if (hsdk_valid_username(peer) && le == HUSH_OK && cnt == 1 && h[0].local_id == id) {
            m.kind = h[0].kind;
            snprintf(m.sender, sizeof m.sender, "%s", peer);
            snprintf(m.conversation, sizeof m.conversation, "%s", peer);
            snprintf(m.group_id, sizeof m.group_id, "%s", group);
            m.sender_device = h[0].peer_device;
            memcpy(m.message_id, h[0].message_id, 16);
            m.sent_at_ms = h[0].sent_at_ms;
            m.received_at_ms = h[0].received_at_ms;
            m.local_id = id;
            m.body = h[0].body;
            m.body_len = h[0].body_len;
            found = 1;
        }
        if (found) {
            notify_and_mark(n, &m);
        } else {
            hsdk_lock(n->c);
            hsdk_history_set_notified(n->c, id);
            hsdk_unlock(n->c);
        }
        hush_history_free(h, cnt);
    }
}
