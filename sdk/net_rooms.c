/*
 * net_rooms.c - sending a room's outbox rows (addressed "#<room>", rooms.c). A change goes once
 * to every device of every user it concerns (the members, and those it removes) and to our own
 * other devices: encrypted under a fresh key as the shared envelope, the key pairwise to each
 * device in the same send. A message goes as one shared envelope, encrypted once with this device's
 * sender key for the room, to every device of every member; a device that lacks our current key
 * gets it pairwise in the same send, processed before the shared envelope. Every envelope is
 * stored before the first attempt (with the record of which device was handed which key by which
 * send), so a retry sends the same bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>
#include <sodium.h>

#include "net.h"

#define SHARED_NAME "#" /* the outbox envelope of a room message's shared part: (mid, "#", 0) */

struct rdev {
    char name[HUSH_USERNAME_MAX + 1];
    uint32_t dev;
};

int hnet_user_gone(const struct hush_net *n, const char *user)
{
    for (int i = 0; i < n->ngone; i++)
        if (!strcmp(n->gone[i], user))
            return 1;
    return 0;
}

void hnet_mark_gone(struct hush_net *n, const char *user)
{
    if (hnet_user_gone(n, user) || !hsdk_valid_username(user))
        return;
    if (n->ngone == NET_MAX_GONE)
        memmove(n->gone[0], n->gone[1], sizeof n->gone[0] * (NET_MAX_GONE - 1)), n->ngone--;
    snprintf(n->gone[n->ngone++], sizeof n->gone[0], "%s", user);
}

/* Every device of `users` (ours: our other devices) with a session. 1 when all are known; 0 when
 * a fetch was started or the row must wait (a member whose identity change is undecided). */
static int collect(struct hush_net *n, char **users, size_t nu, struct rdev **out, size_t *nout)
{
    hush_client *c = n->c;
    struct rdev *v = malloc((nu + 1) * MAX_DEVS * sizeof *v);
    size_t k = 0;
    if (!v)
        return 0;
    for (size_t u = 0; u <= nu; u++) {
        const char *name = u < nu ? users[u] : c->username;
        uint32_t devs[MAX_DEVS];
        int nd;
        if (u < nu && (!strcmp(name, c->username) || hnet_user_gone(n, name)))
            continue; /* ours come last; a user the relay does not know is skipped */
        if (u < nu && !strcmp(n->blocked_peer, name)) {
            free(v);
            return 0; /* waits for the user's decision about that member's key */
        }
        if (u == nu) {
            nd = hnet_own_other_devices(c, devs, MAX_DEVS);
            if (nd < 0) {
                free(v);
                hnet_request_fetch(n, c->username);
                return 0;
            }
        } else {
            nd = hsdk_peers_list(c, name, devs, MAX_DEVS);
        }
        int missing = u < nu && nd == 0;
        for (int i = 0; i < nd && !missing; i++)
            missing = !hush_has_session(c, name, devs[i]);
        if (missing) {
            free(v);
            hnet_request_fetch(n, name);
            return 0;
        }
        for (int i = 0; i < nd; i++) {
            snprintf(v[k].name, sizeof v[k].name, "%s", name);
            v[k++].dev = devs[i];
        }
    }
    *out = v;
    *nout = k;
    return 1;
}

/* The stored envelope for (mid, name, dev), or NULL (malloc'd). Caller holds the lock. */
static uint8_t *stored(hush_client *c, const uint8_t mid[16], const char *name, uint32_t dev, size_t *len)
{
    return hsdk_envelope_get(c, mid, name, dev, len);
}

/* The envelopes of a change, sent once to all: the change encrypted under a fresh key (the shared
 * envelope, CIPHER_ROOM_CHANGE), and for each device that key with the shared envelope's digest,
 * pairwise (CONTENT_ROOM_CHANGE_KEY). A device without its part (the device set changed) has
 * everything made again under a new key. Caller holds the lock, inside the pump's transaction. */
static hush_err change_envelopes(hush_client *c, const struct orow *o, const struct rdev *d, size_t nd)
{
    size_t slen = 0;
    uint8_t *shared = stored(c, o->mid, SHARED_NAME, 0, &slen);
    int complete = shared != NULL;
    for (size_t i = 0; i < nd && complete; i++) {
        size_t len = 0;
        uint8_t *env = stored(c, o->mid, d[i].name, d[i].dev, &len);
        complete = env != NULL;
        free(env);
    }
    free(shared);
    if (complete)
        return HUSH_OK;
    hush_err e = hsdk_begin(c);
    if (e)
        return e;
    hsdk_envelopes_forget(c, o->mid);
    uint8_t key[crypto_aead_xchacha20poly1305_ietf_KEYBYTES], digest[32];
    size_t nb = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, clen = nb + o->len + crypto_aead_xchacha20poly1305_ietf_ABYTES;
    uint8_t *ct = malloc(clen), *senv = NULL;
    if (!ct) {
        e = HUSH_ERR_NOMEM;
        goto out;
    }
    crypto_aead_xchacha20poly1305_ietf_keygen(key);
    randombytes_buf(ct, nb);
    crypto_aead_xchacha20poly1305_ietf_encrypt(ct + nb, NULL, o->body, o->len, (const uint8_t *)HSDK_ROOM_CHANGE_AD,
                                               sizeof HSDK_ROOM_CHANGE_AD - 1, NULL, ct, key);
    crypto_hash_sha256(digest, ct, clen);
    Hush__Envelope ev = HUSH__ENVELOPE__INIT;
    ev.type = HUSH__CIPHER_TYPE__CIPHER_ROOM_CHANGE;
    ev.ciphertext.data = ct;
    ev.ciphertext.len = clen;
    slen = hush__envelope__get_packed_size(&ev);
    if (!(senv = malloc(slen))) {
        e = HUSH_ERR_NOMEM;
        goto out;
    }
    hush__envelope__pack(&ev, senv);
    e = hsdk_envelope_put(c, o->mid, SHARED_NAME, 0, senv, slen);
    Hush__RoomChangeKey rk = HUSH__ROOM_CHANGE_KEY__INIT;
    rk.key.data = key;
    rk.key.len = sizeof key;
    rk.digest.data = digest;
    rk.digest.len = sizeof digest;
    uint8_t body[128];
    size_t blen = hush__room_change_key__pack(&rk, body);
    for (size_t i = 0; i < nd && !e; i++) {
        uint8_t *env = NULL;
        size_t len = 0;
        e = hsdk_encrypt_kind(c, d[i].name, d[i].dev, HUSH__CONTENT_KIND__CONTENT_ROOM_CHANGE_KEY, body, blen, o->mid, 0,
                              &env, &len);
        if (!e)
            e = hsdk_envelope_put(c, o->mid, d[i].name, d[i].dev, env, len);
        hush_free(env);
    }
    sodium_memzero(body, sizeof body);
out:
    sodium_memzero(key, sizeof key);
    free(ct);
    free(senv);
    return hsdk_end(c, e);
}

/* The envelopes of a message: our key to each device that lacks it, then the shared envelope.
 * Caller holds the lock, inside the pump's transaction. */
static hush_err message_envelopes(hush_client *c, struct hsdk_room *r, const struct orow *o, const struct rdev *d,
                                  size_t nd)
{
    uint32_t key_id = 0;
    int exists = 0;
    hush_err e = hsdk_begin(c);
    if (e)
        return e;
    e = hsdk_room_key_due(c, r, &key_id, &exists);
    size_t slen = 0;
    uint8_t *shared = e ? NULL : stored(c, o->mid, SHARED_NAME, 0, &slen);
    for (int pass = 0; pass < 2 && !e && shared; pass++) {
        /* A device that needs the key and has none stored for this send (the room or a device
         * list changed, or the key was replaced): the shared envelope may be ahead of any key we
         * can hand out now, so everything is made again. */
        int redo = !exists;
        for (size_t i = 0; i < nd && !redo; i++) {
            if (hsdk_room_key_has(c, r, d[i].name, d[i].dev, key_id))
                continue;
            size_t len = 0;
            uint8_t *env = stored(c, o->mid, d[i].name, d[i].dev, &len);
            redo = !env;
            free(env);
        }
        if (!redo)
            break;
        free(shared);
        shared = NULL;
        hsdk_envelopes_forget(c, o->mid);
        e = hsdk_room_keys_forget_message(c, o->mid);
    }
    for (size_t i = 0; i < nd && !e; i++) {
        if (exists && hsdk_room_key_has(c, r, d[i].name, d[i].dev, key_id))
            continue;
        uint8_t *env = NULL;
        size_t len = 0;
        e = hsdk_group_skdm_envelope(c, r->hex, d[i].name, d[i].dev, &env, &len);
        if (!e && !exists) {
            /* the first device handed a key made it: from now on, its id */
            if (!(e = hsdk_group_key_id(c, r->hex, &key_id, &exists)) && !exists)
                e = HUSH_ERR_INTERNAL;
            if (!e)
                e = hsdk_room_key_made(c, r);
        }
        if (!e)
            e = hsdk_envelope_put(c, o->mid, d[i].name, d[i].dev, env, len);
        if (!e)
            e = hsdk_room_key_put(c, r, d[i].name, d[i].dev, key_id, o->mid);
        hush_free(env);
    }
    if (!e && !shared) {
        Hush__Content content = HUSH__CONTENT__INIT;
        content.message_id.data = (uint8_t *)o->mid;
        content.message_id.len = 16;
        content.kind = (Hush__ContentKind)o->kind; /* a text, or a file's pointer */
        content.body.data = o->body;
        content.body.len = o->len;
        content.sent_at_ms = hsdk_now_ms();
        content.group_id = r->hex;
        uint8_t *env = NULL;
        size_t len = 0;
        int had = exists;
        e = hsdk_group_encrypt_content(c, r->hex, &content, &env, &len);
        if (!e && !had)
            e = hsdk_room_key_made(c, r); /* made here: nobody else to hand it to */
        if (!e)
            e = hsdk_envelope_put(c, o->mid, SHARED_NAME, 0, env, len);
        hush_free(env);
    }
    free(shared);
    return hsdk_end(c, e);
}

static void finish(struct hush_net *n, const struct orow *o, int state, hush_err why)
{
    n->room_done.set = 1;
    n->room_done.id = o->id;
    memcpy(n->room_done.mid, o->mid, 16);
    n->room_done.kind = o->kind;
    n->room_done.state = state;
    n->room_done.err = why;
    snprintf(n->room_done.peer, sizeof n->room_done.peer, "%s", o->peer);
}

int hnet_room_done(struct hush_net *n)
{
    if (!n->room_done.set)
        return 0;
    n->room_done.set = 0;
    if (n->room_done.err) {
        hush_err e = n->room_done.err;
        hnet_report(n, e, e == HUSH_ERR_NOT_ALLOWED ? "a message to a room was not sent: this user is no longer in it"
                          : e == HUSH_ERR_NOT_FOUND ? "a message to a room was not sent: no such room here"
                                                    : "a message to a room was not sent");
    }
    hnet_outbox_finished(n, n->room_done.id, n->room_done.mid, n->room_done.kind, n->room_done.state,
                         n->room_done.peer);
    return 1;
}

int hnet_send_room_row(struct hush_net *n, struct orow *o)
{
    hush_client *c = n->c;
    uint8_t id[16];
    struct hsdk_room r, ch;
    int found = 0, sent = 0, is_change = o->kind == HUSH__CONTENT_KIND__CONTENT_ROOM_CHANGE;
    memset(&r, 0, sizeof r);
    memset(&ch, 0, sizeof ch);
    hush_err e = hsdk_room_outbox_id(o->peer, id) ? HUSH_OK : HUSH_ERR_INTERNAL;
    if (!e)
        e = hsdk_room_load(c, id, &r, &found);
    if (!e && !found)
        e = HUSH_ERR_NOT_FOUND;
    if (!e && is_change)
        e = hsdk_room_parse(o->body, o->len, &ch);
    if (!e && !is_change && !r.member)
        e = HUSH_ERR_NOT_ALLOWED; /* removed since it was queued */
    if (e) {
        if (found)
            hsdk_room_release(&r);
        finish(n, o, HUSH_MSG_FAILED, e);
        return 0;
    }
    /* who it goes to: a change, everyone it concerns; a message, the members now */
    const Hush__RoomState *who = is_change ? ch.st : r.st;
    size_t nu = who->n_members + (is_change ? who->n_removed : 0);
    char **users = malloc((nu + 1) * sizeof *users);
    struct rdev *devs = NULL;
    size_t nd = 0;
    if (users) {
        memcpy(users, who->members, who->n_members * sizeof *users);
        if (is_change && who->n_removed) /* removed is NULL when empty */
            memcpy(users + who->n_members, who->removed, who->n_removed * sizeof *users);
    }
    if (!users || !collect(n, users, nu, &devs, &nd))
        goto out;
    if (nd == 0) {
        finish(n, o, HUSH_MSG_SENT, HUSH_OK); /* a room of ours alone: nobody to send to */
        goto out;
    }
    e = is_change ? change_envelopes(c, o, devs, nd) : message_envelopes(c, &r, o, devs, nd);
    if (e) {
        n->pump_err = e; /* reported by the pump once the client lock is released */
        n->retry_at_ms = now_ms() + NET_RETRY_MS;
        goto out;
    }
    Hush__Recipient *rcs = calloc(nd, sizeof *rcs);
    Hush__Recipient **rp = calloc(nd, sizeof *rp);
    uint8_t **envs = calloc(nd, sizeof *envs);
    size_t slen = 0;
    uint8_t *shared = stored(c, o->mid, SHARED_NAME, 0, &slen);
    int ok = rcs && rp && envs && shared;
    for (size_t i = 0; i < nd && ok; i++) {
        size_t len = 0;
        envs[i] = stored(c, o->mid, devs[i].name, devs[i].dev, &len);
        ok = envs[i] || !is_change; /* a message's own part is often empty */
        hush__recipient__init(&rcs[i]);
        rcs[i].username = devs[i].name;
        rcs[i].device_id = devs[i].dev;
        rcs[i].envelope.data = envs[i];
        rcs[i].envelope.len = len;
        rp[i] = &rcs[i];
    }
    struct req *q = ok ? hnet_add_req(n, R_SEND) : NULL;
    if (q) {
        q->outbox_id = o->id;
        q->kind = o->kind;
        memcpy(q->mid, o->mid, 16);
        snprintf(q->peer, sizeof q->peer, "%s", o->peer);
        Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
        s.client_msg_id.data = o->mid;
        s.client_msg_id.len = 16;
        s.n_recipients = nd;
        s.recipients = rp;
        s.non_urgent = is_change;
        s.shared_envelope.data = shared;
        s.shared_envelope.len = slen;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.id = q->id;
        f.msg_case = HUSH__FRAME__MSG_SEND;
        f.send = &s;
        hnet_queue_frame(n, &f);
        n->inflight++;
        sent = 1;
    } else {
        n->retry_at_ms = now_ms() + NET_RETRY_MS;
    }
    for (size_t i = 0; envs && i < nd; i++)
        free(envs[i]);
    free(envs);
    free(rcs);
    free(rp);
    free(shared);
out:
    free(users);
    free(devs);
    hsdk_room_release(&r);
    hsdk_room_release(&ch);
    return sent;
}

void hnet_send_room_typing(struct hush_net *n, const char *peer, int typing)
{
    hush_client *c = n->c;
    uint8_t id[16], mid[16], body = (uint8_t)(typing ? 1 : 0);
    struct hsdk_room r;
    int found = 0;
    if (!hsdk_room_outbox_id(peer, id))
        return;
    hsdk_lock(c);
    if (hsdk_room_load(c, id, &r, &found) || !found) {
        hsdk_unlock(c);
        return;
    }
    uint32_t key_id = 0;
    int exists = 0;
    Hush__Recipient *rcs = NULL, **rp = NULL;
    size_t cnt = 0;
    uint8_t *env = NULL;
    size_t len = 0;
    if (!r.member || hsdk_group_key_id(c, r.hex, &key_id, &exists))
        goto out;
    rcs = calloc((r.st->n_members + 1) * MAX_DEVS, sizeof *rcs);
    rp = calloc((r.st->n_members + 1) * MAX_DEVS, sizeof *rp);
    if (!rcs || !rp)
        goto out;
    for (size_t u = 0; u <= r.st->n_members; u++) {
        const char *name = u < r.st->n_members ? r.st->members[u] : c->username;
        if (u < r.st->n_members && !strcmp(name, c->username))
            continue;
        uint32_t devs[MAX_DEVS];
        int nd = hsdk_peers_list(c, name, devs, MAX_DEVS);
        size_t known = 0;
        if (nd == 0 && !exists && hush_peer_devices(c, name, devs, MAX_DEVS, &known) == HUSH_OK)
            nd = (int)(known < MAX_DEVS ? known : MAX_DEVS); /* never fetched: the devices it has sessions with */
        for (int i = 0; i < nd; i++) {
            if (u == r.st->n_members && devs[i] == c->device_id)
                continue;
            /* with a key: the devices that hold it; before the first message (no key yet), a
             * small room's devices with a session, each its own pairwise copy */
            if (exists ? !hsdk_room_key_has(c, &r, name, devs[i], key_id)
                       : (cnt >= NET_ROOM_TYPING_PAIRWISE || !hush_has_session(c, name, devs[i])))
                continue;
            hush__recipient__init(&rcs[cnt]);
            rcs[cnt].username = (char *)name;
            rcs[cnt].device_id = devs[i];
            rp[cnt] = &rcs[cnt];
            cnt++;
        }
    }
    if (!cnt)
        goto out;
    randombytes_buf(mid, sizeof mid);
    Hush__Content content = HUSH__CONTENT__INIT;
    content.message_id.data = mid;
    content.message_id.len = sizeof mid;
    content.kind = HUSH__CONTENT_KIND__CONTENT_TYPING;
    content.body.data = &body;
    content.body.len = 1;
    content.sent_at_ms = hsdk_now_ms();
    content.group_id = r.hex;
    if (hsdk_begin(c))
        goto out;
    hush_err e = HUSH_OK;
    if (exists) {
        e = hsdk_group_encrypt_content(c, r.hex, &content, &env, &len);
    } else {
        /* each in its own savepoint: a device that cannot be written to (an identity change
         * waiting for a decision) is left out, the others still get theirs */
        size_t k = 0;
        for (size_t i = 0; i < cnt && !e; i++) {
            uint8_t *pe = NULL;
            size_t pl = 0;
            if ((e = hsdk_begin(c)))
                break;
            hush_err one = hsdk_encrypt_content(c, rcs[i].username, rcs[i].device_id, &content, &pe, &pl);
            if (hsdk_end(c, one) != HUSH_OK) {
                hush_free(pe);
                continue;
            }
            rcs[k] = rcs[i];
            rcs[k].envelope.data = pe;
            rcs[k].envelope.len = pl;
            rp[k] = &rcs[k];
            k++;
        }
        cnt = k;
    }
    if (hsdk_end(c, e))
        goto out;
    struct req *q = cnt ? hnet_add_req(n, R_OTHER) : NULL;
    if (q) {
        Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
        s.client_msg_id.data = mid;
        s.client_msg_id.len = 16;
        s.n_recipients = cnt;
        s.recipients = rp;
        s.ephemeral = 1;
        s.shared_envelope.data = env; /* NULL with pairwise copies */
        s.shared_envelope.len = len;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.id = q->id;
        f.msg_case = HUSH__FRAME__MSG_SEND;
        f.send = &s;
        hnet_queue_frame(n, &f);
    }
out:
    hush_free(env);
    for (size_t i = 0; rcs && i < cnt; i++)
        hush_free(rcs[i].envelope.data);
    free(rcs);
    free(rp);
    hsdk_room_release(&r);
    hsdk_unlock(c);
}

void hnet_ask_room_key(struct hush_net *n, const struct inbound *in)
{
    Hush__Envelope *env = hush__envelope__unpack(NULL, in->shared_len, in->shared);
    if (!env || env->type != HUSH__CIPHER_TYPE__CIPHER_SENDER_KEY || !hsdk_room_is_id(env->group_id)) {
        if (env)
            hush__envelope__free_unpacked(env, NULL);
        hnet_report(n, HUSH_ERR_NO_GROUP_SESSION, "dropped an undecryptable room message");
        return;
    }
    uint64_t now = now_ms();
    struct keyreq *k = NULL, *oldest = &n->keyreq[0];
    for (int i = 0; i < NET_MAX_KEYREQ && !k; i++) {
        if (!strcmp(n->keyreq[i].room, env->group_id) && !strcmp(n->keyreq[i].from, in->from))
            k = &n->keyreq[i];
        else if (n->keyreq[i].since_ms < oldest->since_ms)
            oldest = &n->keyreq[i];
    }
    if (!k) {
        k = oldest;
        memset(k, 0, sizeof *k);
        snprintf(k->room, sizeof k->room, "%s", env->group_id);
        snprintf(k->from, sizeof k->from, "%s", in->from);
    }
    if (now - k->since_ms > 3600 * 1000ull) {
        k->since_ms = now;
        k->count = 0;
    }
    char detail[200];
    if (k->count >= NET_KEYREQ_PER_HOUR) {
        snprintf(detail, sizeof detail, "a room message from %s/%u could not be decrypted (this device lacks its key); "
                 "%s was asked too often this hour: the message is lost here", in->from, in->dev, in->from);
        hnet_report(n, HUSH_ERR_NO_GROUP_SESSION, detail);
        hush__envelope__free_unpacked(env, NULL);
        return;
    }
    k->count++;
    Hush__RoomKeyRequest rq = HUSH__ROOM_KEY_REQUEST__INIT;
    ProtobufCBinaryData ids[1] = { { sizeof in->cmid, (uint8_t *)in->cmid } };
    rq.group_id = env->group_id;
    rq.message_ids = ids;
    rq.n_message_ids = 1;
    uint8_t body[128], mid[16];
    size_t len = hush__room_key_request__pack(&rq, body);
    randombytes_buf(mid, sizeof mid);
    hush_client *c = n->c;
    hsdk_lock(c);
    hush_err e = hsdk_begin(c);
    if (!e) {
        e = hsdk_outbox_insert(c, in->from, HUSH__CONTENT_KIND__CONTENT_KEY_REQUEST, mid, body, len);
        e = hsdk_end(c, e);
    }
    hsdk_unlock(c);
    if (e)
        snprintf(detail, sizeof detail, "a room message from %s/%u could not be decrypted, and asking for it again "
                 "failed: %s", in->from, in->dev, hush_strerror(e));
    else
        snprintf(detail, sizeof detail, "a room message from %s/%u could not be decrypted yet (this device lacks its "
                 "key): %s was asked to send it again", in->from, in->dev, in->from);
    hnet_report(n, HUSH_ERR_NO_GROUP_SESSION, detail);
    hsdk_net_wake(c, NET_WAKE_OUTBOX);
    hush__envelope__free_unpacked(env, NULL);
}
