/*
 * decrypt.c - one received envelope: pairwise (Signal session) or group (sender key), stored with
 * the new session state in one transaction, or nothing stored at all.
 *
 * Every libsignal call that writes runs inside a savepoint (hsdk_begin) and is rolled back on
 * failure: save_identity runs before MAC verification, so without this a tampered PreKey message
 * would leave a saved identity and a consumed prekey behind (docs/LIBSIGNAL-NOTES.md §2).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <protocol.h>
#include <session_cipher.h>

#include "internal.h"

void hush_message_free(hush_message *m)
{
    if (!m)
        return;
    if (m->body) {
        sodium_memzero(m->body, m->body_len);
        free(m->body);
    }
    sodium_memzero(m, sizeof *m);
    free(m);
}

static hush_err new_message(const char *peer, uint32_t dev, hush_kind kind, const Hush__Content *content,
                            const uint8_t *body, size_t body_len, const char *group_id, int64_t local_id,
                            hush_message **out)
{
    hush_message *m = calloc(1, sizeof *m);
    if (!m)
        return HUSH_ERR_NOMEM;
    m->body = malloc(body_len + 1);
    if (!m->body) {
        free(m);
        return HUSH_ERR_NOMEM;
    }
    if (body_len)
        memcpy(m->body, body, body_len);
    m->body[body_len] = '\0';
    m->body_len = body_len;
    m->kind = kind;
    snprintf(m->sender, sizeof m->sender, "%s", peer);
    m->sender_device = dev;
    memcpy(m->message_id, content->message_id.data, HUSH_MESSAGE_ID_BYTES);
    m->sent_at_ms = content->sent_at_ms;
    m->received_at_ms = hsdk_now_ms();
    snprintf(m->group_id, sizeof m->group_id, "%s", group_id ? group_id : "");
    m->local_id = local_id;
    *out = m;
    return HUSH_OK;
}

static int content_ok(const Hush__Content *ct)
{
    return ct->message_id.len == HUSH_MESSAGE_ID_BYTES && ct->body.len <= HUSH_MAX_BODY;
}

/* Pairwise decrypt inside an open savepoint. On success *plaintext is set. */
static hush_err pairwise_decrypt(hush_client *c, const signal_protocol_address *addr, Hush__CipherType type,
                                 const uint8_t *ct, size_t len, signal_buffer **plaintext)
{
    session_cipher *cipher = NULL;
    int rc = session_cipher_create(&cipher, c->sc, addr, c->sg);
    if (rc != 0)
        return hsdk_from_signal(rc);
    if (type == HUSH__CIPHER_TYPE__CIPHER_PREKEY) {
        c->new_session = 1; /* a new session from the peer archives the current one */
        pre_key_signal_message *m = NULL;
        rc = pre_key_signal_message_deserialize(&m, ct, len, c->sg);
        if (rc == 0)
            rc = session_cipher_decrypt_pre_key_signal_message(cipher, m, NULL, plaintext);
        SIGNAL_UNREF(m);
    } else {
        signal_message *m = NULL;
        rc = signal_message_deserialize(&m, ct, len, c->sg);
        if (rc == 0)
            rc = session_cipher_decrypt_signal_message(cipher, m, NULL, plaintext);
        SIGNAL_UNREF(m);
    }
    session_cipher_free(cipher);
    if (rc == 0)
        return HUSH_OK;
    if (rc == SG_ERR_UNTRUSTED_IDENTITY)
        return HUSH_ERR_IDENTITY_CHANGED;
    if (c->store_err)
        return c->store_err;
    return hsdk_from_signal(rc);
}

/* A room change sent once to all: the pairwise RoomChangeKey opens the shared envelope (after its
 * digest is checked). *change is the RoomChange's bytes (malloc'd, the caller frees). */
static hush_err open_room_change(const ProtobufCBinaryData *body, const Hush__Envelope *shared, uint8_t **change,
                                 size_t *len)
{
    *change = NULL;
    if (!shared || shared->type != HUSH__CIPHER_TYPE__CIPHER_ROOM_CHANGE)
        return HUSH_ERR_BAD_MESSAGE;
    const ProtobufCBinaryData *ct = &shared->ciphertext;
    size_t overhead = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + crypto_aead_xchacha20poly1305_ietf_ABYTES;
    if (ct->len <= overhead || ct->len > HSDK_ROOM_CHANGE_MAX + overhead)
        return HUSH_ERR_BAD_MESSAGE;
    Hush__RoomChangeKey *k = hush__room_change_key__unpack(&hsdk_wiping_allocator, body->len, body->data);
    hush_err e = HUSH_ERR_BAD_MESSAGE;
    uint8_t digest[32];
    if (!k || k->key.len != crypto_aead_xchacha20poly1305_ietf_KEYBYTES || k->digest.len != sizeof digest)
        goto out;
    crypto_hash_sha256(digest, ct->data, ct->len);
    if (sodium_memcmp(digest, k->digest.data, sizeof digest) != 0)
        goto out;
    uint8_t *pt = malloc(ct->len);
    unsigned long long n = 0;
    if (!pt) {
        e = HUSH_ERR_NOMEM;
        goto out;
    }
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(pt, &n, NULL, ct->data + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
                                                   ct->len - crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
                                                   (const uint8_t *)HSDK_ROOM_CHANGE_AD, sizeof HSDK_ROOM_CHANGE_AD - 1,
                                                   ct->data, k->key.data) != 0) {
        free(pt);
        goto out;
    }
    *change = pt;
    *len = (size_t)n;
    e = HUSH_OK;
out:
    if (k)
        hush__room_change_key__free_unpacked(k, &hsdk_wiping_allocator);
    return e;
}

/* A text or a file to room gid from (peer, dev) (own: from another device of ours: stored as sent
 * by us), as its Content says: the sender must be a member. Inside the caller's savepoint. */
static hush_err room_message(hush_client *c, const char *peer, uint32_t dev, int own, const char *gid,
                             const Hush__Content *ct, hush_kind *kind, int64_t *local_id, int *dup,
                             Hush__AttachmentPointer **file)
{
    hush_err e = hsdk_room_message_allowed(c, gid, peer);
    if (e)
        return e;
    const char *who = own ? c->username : peer;
    uint32_t wdev = own ? 0 : dev;
    const uint8_t *mid = ct->message_id.data;
    if (ct->kind == HUSH__CONTENT_KIND__CONTENT_ATTACHMENT) {
        if (!(*file = hsdk_pointer_parse(ct->body.data, ct->body.len)))
            return HUSH_ERR_BAD_MESSAGE;
        *kind = HUSH_KIND_FILE;
        e = hsdk_history_insert(c, who, wdev, own, mid, HUSH_KIND_FILE, gid, ct->sent_at_ms,
                                (const uint8_t *)(*file)->file_name, strlen((*file)->file_name), local_id, dup);
        if (!e && !*dup)
            e = hsdk_file_insert(c, mid, own, peer, HUSH_FILE_REMOTE, *file, NULL);
    } else if (ct->kind == HUSH__CONTENT_KIND__CONTENT_TEXT) {
        *kind = own ? HUSH_KIND_SENT_ELSEWHERE : HUSH_KIND_GROUP_TEXT;
        e = hsdk_history_insert(c, who, wdev, own, mid, HUSH_KIND_GROUP_TEXT, gid, ct->sent_at_ms, ct->body.data,
                                ct->body.len, local_id, dup);
    } else {
        return HUSH_ERR_BAD_MESSAGE;
    }
    if (!e && !*dup && own)
        e = hsdk_set_message_state(c, mid, HUSH_MSG_SENT);
    return e;
}

/* How long a room message of ours can be sent again to a member that could not decrypt it. */
#define ROOM_RESEND_MAX_AGE_MS (7ull * 24 * 3600 * 1000)

/* A member (peer, dev) could not decrypt room messages of ours: each one named that this user sent
 * in the last seven days goes to that user again, pairwise (CONTENT_ROOM_RESEND, through the
 * outbox), and the device gets this device's key again with the next message. Requests from
 * someone outside the room are refused. Inside the caller's savepoint. */
static hush_err answer_key_request(hush_client *c, const char *peer, uint32_t dev, const uint8_t *body, size_t len)
{
    if (len > 4096)
        return HUSH_ERR_BAD_MESSAGE;
    Hush__RoomKeyRequest *rq = hush__room_key_request__unpack(NULL, len, body);
    hush_err e = HUSH_ERR_BAD_MESSAGE;
    if (!rq || !hsdk_room_is_id(rq->group_id) || rq->n_message_ids < 1 || rq->n_message_ids > 32)
        goto out;
    if ((e = hsdk_room_message_allowed(c, rq->group_id, peer)) ||
        (e = hsdk_room_key_forget_device(c, rq->group_id, peer, dev)))
        goto out;
    uint64_t now = hsdk_now_ms();
    for (size_t i = 0; i < rq->n_message_ids && !e; i++) {
        if (rq->message_ids[i].len != HUSH_MESSAGE_ID_BYTES)
            continue;
        const uint8_t *mid = rq->message_ids[i].data;
        int kind = 0;
        uint64_t sent_at = 0;
        uint8_t *text = NULL, *packed = NULL;
        size_t tlen = 0, plen = 0;
        hush_err fe = hsdk_history_sent_to_group(c, rq->group_id, mid, &kind, &sent_at, &text, &tlen);
        if (fe == HUSH_ERR_NOT_FOUND || (!fe && now - sent_at > ROOM_RESEND_MAX_AGE_MS)) {
            free(text);
            continue; /* not ours, or too old to send again */
        }
        if ((e = fe))
            break;
        Hush__Content ct = HUSH__CONTENT__INIT;
        ct.message_id.data = (uint8_t *)mid;
        ct.message_id.len = HUSH_MESSAGE_ID_BYTES;
        ct.sent_at_ms = sent_at;
        ct.group_id = rq->group_id;
        ct.kind = HUSH__CONTENT_KIND__CONTENT_TEXT;
        ct.body.data = text;
        ct.body.len = tlen;
        struct hsdk_file f;
        int have_file = 0;
        if (kind == HUSH_KIND_FILE) {
            /* a file: its pointer (the key, the blob), not just the name the history holds */
            if (hsdk_file_load(c, mid, &f) != HUSH_OK) {
                sodium_memzero(text, tlen);
                free(text);
                continue;
            }
            have_file = 1;
            size_t pl = hush__attachment_pointer__get_packed_size(f.p);
            uint8_t *pb = malloc(pl ? pl : 1);
            if (pb)
                hush__attachment_pointer__pack(f.p, pb);
            sodium_memzero(text, tlen);
            free(text);
            text = pb;
            tlen = pl;
            ct.kind = HUSH__CONTENT_KIND__CONTENT_ATTACHMENT;
            ct.body.data = text;
            ct.body.len = tlen;
        }
        if (!text)
            e = HUSH_ERR_NOMEM;
        plen = e ? 0 : hush__content__get_packed_size(&ct);
        if (!e && !(packed = malloc(plen ? plen : 1)))
            e = HUSH_ERR_NOMEM;
        if (!e) {
            hush__content__pack(&ct, packed);
            uint8_t omid[HUSH_MESSAGE_ID_BYTES];
            randombytes_buf(omid, sizeof omid);
            e = hsdk_outbox_insert(c, peer, HUSH__CONTENT_KIND__CONTENT_ROOM_RESEND, omid, packed, plen);
        }
        if (have_file)
            hsdk_file_release(&f);
        if (text) {
            sodium_memzero(text, tlen);
            free(text);
        }
        if (packed) {
            sodium_memzero(packed, plen);
            free(packed);
        }
    }
out:
    if (rq)
        hush__room_key_request__free_unpacked(rq, NULL);
    return e;
}

/* shared: the shared envelope that came with env (a room send), or NULL. */
static hush_err decrypt_locked(hush_client *c, const char *peer, uint32_t dev, const Hush__Envelope *env,
                               const Hush__Envelope *shared, hush_message **out)
{
    uint8_t *opened = NULL; /* a room change sent once to all, opened */
    size_t opened_len = 0;
    Hush__Content *inner = NULL; /* a room message sent again (CONTENT_ROOM_RESEND) */
    signal_protocol_address addr = { peer, strlen(peer), (int32_t)dev };
    signal_buffer *pt = NULL;
    Hush__Content *content = NULL;
    Hush__AttachmentPointer *file = NULL;
    hush_err e;
    int is_group = env->type == HUSH__CIPHER_TYPE__CIPHER_SENDER_KEY;

    if (is_group && !hsdk_valid_group_id(env->group_id))
        return HUSH_ERR_BAD_MESSAGE;
    if ((e = hsdk_begin(c)))
        return e;
    if (is_group)
        e = hsdk_group_decrypt(c, peer, dev, env->group_id, env->ciphertext.data, env->ciphertext.len, &pt);
    else
        e = pairwise_decrypt(c, &addr, env->type, env->ciphertext.data, env->ciphertext.len, &pt);
    if (e)
        goto fail;
    content = hush__content__unpack(&hsdk_wiping_allocator, signal_buffer_len(pt), signal_buffer_data(pt));
    if (!content || !content_ok(content)) {
        e = HUSH_ERR_BAD_MESSAGE;
        goto fail;
    }
    int64_t local_id = 0;
    int dup = 0;
    hush_kind kind;
    int own = !strcmp(peer, c->username);
    int sync = content->sync_peer && *content->sync_peer;
    int room = is_group || content->kind == HUSH__CONTENT_KIND__CONTENT_SENDER_KEY ||
               content->kind == HUSH__CONTENT_KIND__CONTENT_ROOM_CHANGE ||
               content->kind == HUSH__CONTENT_KIND__CONTENT_ROOM_CHANGE_KEY ||

               (content->kind == HUSH__CONTENT_KIND__CONTENT_TYPING && content->group_id[0]);
    struct hsdk_room_event ev;
    const uint8_t *shown = content->body.data; /* what the app is shown: the body, or words */
    const Hush__Content *shown_ct = content;   /* whose id and time the app is shown */
    size_t shown_len = content->body.len;
    /* Copies from our own other devices, and only those, name their conversation; group traffic
     * (messages, sender keys, room changes) never does: the group is the conversation. */
    if ((room ? sync : own != sync) || (sync && (!hsdk_valid_username(content->sync_peer) ||
                                                 !strcmp(content->sync_peer, c->username)))) {
        e = HUSH_ERR_BAD_MESSAGE;
        goto fail;
    }
    if (is_group && (content->kind == HUSH__CONTENT_KIND__CONTENT_TEXT ||
                     content->kind == HUSH__CONTENT_KIND__CONTENT_ATTACHMENT)) {
        /* a room's text or file: it must name the group its envelope claims */
        if (strcmp(content->group_id, env->group_id) != 0) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto fail;
        }
        e = room_message(c, peer, dev, own, env->group_id, content, &kind, &local_id, &dup, &file);
    } else if (is_group && content->kind == HUSH__CONTENT_KIND__CONTENT_ROOM_PRESENCE) {
        /* a member shares its presence with the room, or stops: what our other devices decide is
         * ours; the other members' choices need nothing here (the relay shows us what they allow) */
        if (strcmp(content->group_id, env->group_id) != 0 || content->body.len != 1 || content->body.data[0] > 1) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto fail;
        }
        if ((e = hsdk_room_message_allowed(c, env->group_id, peer)))
            goto fail;
        kind = HUSH_KIND_GROUP_KEY; /* nothing to show */
        if (own)
            e = hsdk_room_presence_told(c, env->group_id, content->body.data[0], content->sent_at_ms);
    } else if (content->kind == HUSH__CONTENT_KIND__CONTENT_ROOM_RESEND && !is_group && !sync) {
        /* a room message again, pairwise, because this device asked (it lacked the key) */
        if (content->body.len > HUSH_MAX_BODY + 1024 ||
                   !(inner = hush__content__unpack(&hsdk_wiping_allocator, content->body.len, content->body.data)) ||
                   !content_ok(inner) || !hsdk_room_is_id(inner->group_id)) {
            e = HUSH_ERR_BAD_MESSAGE;
        } else {
            e = room_message(c, peer, dev, 0, inner->group_id, inner, &kind, &local_id, &dup, &file);
            shown_ct = inner;
            shown = inner->body.data;
            shown_len = inner->body.len;
        }
    } else if (content->kind == HUSH__CONTENT_KIND__CONTENT_KEY_REQUEST && !is_group && !sync) {
        /* a member could not decrypt messages of ours: they go to it again, pairwise */
        kind = HUSH_KIND_GROUP_KEY; /* nothing to show */
        e = answer_key_request(c, peer, dev, content->body.data, content->body.len);
        if (!e)
            hsdk_net_wake(c, NET_WAKE_OUTBOX); /* the answers go out without waiting for other traffic */
    } else if (sync && (content->kind == HUSH__CONTENT_KIND__CONTENT_KEY_REQUEST ||
                        content->kind == HUSH__CONTENT_KIND__CONTENT_ROOM_RESEND)) {
        kind = HUSH_KIND_GROUP_KEY; /* copies of our own requests and answers: nothing to do here */
    } else if (content->kind == HUSH__CONTENT_KIND__CONTENT_ATTACHMENT && !is_group) {
        /* a file: from the peer, or one another of our devices sent (stored as ours, state SENT) */
        file = hsdk_pointer_parse(content->body.data, content->body.len);
        if (!file) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto fail;
        }
        kind = HUSH_KIND_FILE;
        const char *conv = sync ? content->sync_peer : peer;
        e = hsdk_history_insert(c, conv, sync ? 0 : dev, sync, content->message_id.data, HUSH_KIND_FILE, "",
                                content->sent_at_ms, (const uint8_t *)file->file_name, strlen(file->file_name), &local_id,
                                &dup);
        if (!e && !dup)
            e = hsdk_file_insert(c, content->message_id.data, sync, conv, HUSH_FILE_REMOTE, file, NULL);
        if (!e && !dup && sync)
            e = hsdk_set_message_state(c, content->message_id.data, HUSH_MSG_SENT);
    } else if (sync && content->kind == HUSH__CONTENT_KIND__CONTENT_TEXT) {
        /* sent from another of our devices: our history shows it as sent by us */
        kind = HUSH_KIND_SENT_ELSEWHERE;
        e = hsdk_history_insert(c, content->sync_peer, 0, 1, content->message_id.data, HUSH_KIND_TEXT, "",
                                 content->sent_at_ms, content->body.data, content->body.len, &local_id, &dup);
        if (!e && !dup)
            e = hsdk_set_message_state(c, content->message_id.data, HUSH_MSG_SENT);
    } else if (sync && content->kind == HUSH__CONTENT_KIND__CONTENT_RECEIPT) {
        /* receipts another of our devices sent: its read marks become ours */
        size_t n = content->body.len;
        if (n < 1 + HUSH_MESSAGE_ID_BYTES || (n - 1) % HUSH_MESSAGE_ID_BYTES != 0 || (n - 1) / HUSH_MESSAGE_ID_BYTES > 256) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto fail;
        }
        kind = HUSH_KIND_READ_ELSEWHERE;
        if (content->body.data[0] == 3)
            e = hsdk_history_sync_read(c, content->sync_peer, content->body.data + 1, (n - 1) / HUSH_MESSAGE_ID_BYTES);
    } else if (sync) {
        e = HUSH_ERR_BAD_MESSAGE;
    } else if (content->kind == HUSH__CONTENT_KIND__CONTENT_TEXT && !is_group) {
        kind = HUSH_KIND_TEXT;
        e = hsdk_history_insert(c, peer, dev, 0, content->message_id.data, kind, "", content->sent_at_ms,
                                content->body.data, content->body.len, &local_id, &dup);
    } else if ((content->kind == HUSH__CONTENT_KIND__CONTENT_ROOM_CHANGE ||
                content->kind == HUSH__CONTENT_KIND__CONTENT_ROOM_CHANGE_KEY) && !is_group) {
        /* the change itself, or (sent once to all) the key to the shared envelope holding it */
        const uint8_t *chg = content->body.data;
        size_t chg_len = content->body.len;
        if (content->kind == HUSH__CONTENT_KIND__CONTENT_ROOM_CHANGE_KEY) {
            if ((e = open_room_change(&content->body, shared, &opened, &opened_len)))
                goto fail;
            chg = opened;
            chg_len = opened_len;
        }
        kind = HUSH_KIND_GROUP_CHANGE;
        e = hsdk_room_receive(c, peer, dev, chg, chg_len, &ev);
        if (e == HUSH_ERR_DUPLICATE) {
            dup = 1; /* the state it makes is the one held: keep the session's step, show nothing */
            e = HUSH_OK;
        } else if (!e) {
            shown = (const uint8_t *)ev.text;
            shown_len = strlen(ev.text);
            e = hsdk_history_insert(c, own ? c->username : peer, own ? 0 : dev, own, content->message_id.data,
                                    HUSH_KIND_GROUP_CHANGE, ev.hex, content->sent_at_ms, shown, shown_len, &local_id,
                                    &dup);
        }
    } else if (content->kind == HUSH__CONTENT_KIND__CONTENT_SENDER_KEY && !is_group) {
        if (!hsdk_valid_group_id(content->group_id)) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto fail;
        }
        if ((e = hsdk_room_message_allowed(c, content->group_id, peer)))
            goto fail;
        kind = HUSH_KIND_GROUP_KEY;
        e = hsdk_process_skdm(c, peer, dev, content->group_id, content->body.data, content->body.len);
    } else if (content->kind == HUSH__CONTENT_KIND__CONTENT_RECEIPT && !is_group) {
        /* body: state (1 byte: 2 delivered, 3 read) then 1..256 message ids of ours */
        size_t n = content->body.len;
        if (n < 1 + HUSH_MESSAGE_ID_BYTES || (n - 1) % HUSH_MESSAGE_ID_BYTES != 0 || (n - 1) / HUSH_MESSAGE_ID_BYTES > 256 ||
            (content->body.data[0] != 2 && content->body.data[0] != 3)) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto fail;
        }
        kind = HUSH_KIND_RECEIPT;
        /* our messages to peer, and our messages in rooms peer is in (kept per member there) */
        const uint8_t *ids = content->body.data + 1;
        for (size_t i = 0; i < (n - 1) / HUSH_MESSAGE_ID_BYTES && !e; i++) {
            const uint8_t *id = ids + i * HUSH_MESSAGE_ID_BYTES;
            char group[HUSH_GROUP_ID_MAX + 1];
            int moved = 0;
            if (hsdk_history_room_of_sent(c, id, group))
                e = hsdk_room_receipt(c, group, peer, content->body.data[0], id, &moved);
            else
                e = hsdk_apply_receipt(c, peer, content->body.data[0], id, 1);
        }
    } else if (content->kind == HUSH__CONTENT_KIND__CONTENT_TYPING) {
        /* to a room: under the sender's key, or pairwise naming the room (before its first message) */
        int in_room = is_group || content->group_id[0];
        if (content->body.len != 1 || (is_group && strcmp(content->group_id, env->group_id) != 0) ||
            (in_room && !hsdk_room_is_id(content->group_id))) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto fail;
        }
        if (in_room && (e = hsdk_room_message_allowed(c, content->group_id, peer)))
            goto fail;
        kind = HUSH_KIND_TYPING;
    } else {
        e = HUSH_ERR_BAD_MESSAGE; /* kinds this version does not handle: refuse, state untouched */
    }
    if (e)
        goto fail;
    /* Session state and plaintext become durable together. */
    if ((e = hsdk_commit(c)))
        goto done;
    if (dup) {
        e = HUSH_ERR_DUPLICATE; /* the app already has this message: same id from the same device */
        goto done;
    }
    const uint8_t *body = file ? (const uint8_t *)file->file_name : shown;
    size_t body_len = file ? strlen(file->file_name) : shown_len;
    const char *group = kind == HUSH_KIND_GROUP_KEY ? content->group_id
                        : kind == HUSH_KIND_GROUP_CHANGE ? ev.hex
                        : inner ? inner->group_id
                        : is_group ? env->group_id
                        : kind == HUSH_KIND_TYPING ? content->group_id : "";
    e = new_message(peer, dev, kind, shown_ct, body, body_len, group, local_id, out);
    if (e == HUSH_OK)
        snprintf((*out)->conversation, sizeof (*out)->conversation, "%s", sync ? content->sync_peer : peer);
    if (kind == HUSH_KIND_GROUP_KEY && e == HUSH_OK)
        (*out)->body_len = 0, (*out)->body[0] = '\0'; /* key material never leaves the SDK */
    goto done;
fail:
    hsdk_rollback(c);
    if (e == HUSH_ERR_IDENTITY_CHANGED)
        e = hsdk_after_untrusted(c);
done:
    if (opened)
        sodium_memzero(opened, opened_len);
    free(opened);
    if (inner)
        hush__content__free_unpacked(inner, &hsdk_wiping_allocator);
    hsdk_pointer_free(file);
    if (content)
        hush__content__free_unpacked(content, &hsdk_wiping_allocator);
    signal_buffer_bzero_free(pt);
    return e;
}

hush_err hsdk_decrypt_shared(hush_client *c, const char *peer, uint32_t dev, const uint8_t *own, size_t own_len,
                             const uint8_t *shared, size_t shared_len, hush_message **out)
{
    *out = NULL;
    if (shared_len > HUSH_MAX_ENVELOPE || own_len > HUSH_MAX_ENVELOPE)
        return HUSH_ERR_TOO_BIG;
    Hush__Envelope *sh = hush__envelope__unpack(NULL, shared_len, shared);
    if (!sh)
        return HUSH_ERR_BAD_MESSAGE;
    hush_err e;
    if (sh->type == HUSH__CIPHER_TYPE__CIPHER_ROOM_CHANGE) {
        /* a room change sent once to all: this device's own part holds the key to it */
        Hush__Envelope *env = own_len ? hush__envelope__unpack(NULL, own_len, own) : NULL;
        if (!env || (env->type != HUSH__CIPHER_TYPE__CIPHER_PREKEY && env->type != HUSH__CIPHER_TYPE__CIPHER_SIGNAL) ||
            env->ciphertext.len == 0) {
            e = HUSH_ERR_BAD_MESSAGE;
        } else {
            hsdk_lock(c);
            e = c->has_device ? decrypt_locked(c, peer, dev, env, sh, out) : HUSH_ERR_NO_DEVICE;
            hsdk_unlock(c);
        }
        if (env)
            hush__envelope__free_unpacked(env, NULL);
        hush__envelope__free_unpacked(sh, NULL);
        return e;
    }
    hush__envelope__free_unpacked(sh, NULL);
    /* a room message: the own part first (a sender key this device lacks), then the shared one.
     * The own part failing for good (a duplicate, garbage) does not stop the shared one; failing
     * for now (storage) or held for an identity decision is the outcome. */
    if (own_len) {
        hush_message *km = NULL;
        e = hush_decrypt(c, peer, dev, own, own_len, &km);
        hush_message_free(km);
        if (e == HUSH_ERR_STORAGE || e == HUSH_ERR_NOMEM || e == HUSH_ERR_DB_KEY || e == HUSH_ERR_INTERNAL ||
            e == HUSH_ERR_IDENTITY_CHANGED)
            return e;
    }
    return hush_decrypt(c, peer, dev, shared, shared_len, out);
}

hush_err hush_decrypt(hush_client *c, const char *peer, uint32_t device_id, const uint8_t *envelope, size_t len,
                      hush_message **out)
{
    if (!out)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    if (!c || !hsdk_valid_username(peer) || !hsdk_valid_device(device_id) || (!envelope && len))
        return HUSH_ERR_INVALID_ARG;
    if (len > HUSH_MAX_ENVELOPE)
        return HUSH_ERR_TOO_BIG;
    Hush__Envelope *env = hush__envelope__unpack(NULL, len, envelope);
    if (!env)
        return HUSH_ERR_BAD_MESSAGE;
    hush_err e;
    if ((env->type != HUSH__CIPHER_TYPE__CIPHER_PREKEY && env->type != HUSH__CIPHER_TYPE__CIPHER_SIGNAL &&
         env->type != HUSH__CIPHER_TYPE__CIPHER_SENDER_KEY) ||
        env->ciphertext.len == 0) {
        e = HUSH_ERR_BAD_MESSAGE;
    } else {
        hsdk_lock(c);
        e = c->has_device ? decrypt_locked(c, peer, device_id, env, NULL, out) : HUSH_ERR_NO_DEVICE;
        hsdk_unlock(c);
    }
    hush__envelope__free_unpacked(env, NULL);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* safety numbers and identity changes */
