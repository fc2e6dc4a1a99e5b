/*
 * net_keys.c - logging in and registering (the proof), uploading and replenishing one-time
 * prekeys (offered keys are put back when the relay refuses them), rotating the signed prekey,
 * and the presence lists sent at every login.
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

static void forget_offer(struct offered *o)
{
    free(o->ids);
    o->ids = NULL;
    o->n = 0;
}

void hnet_forget_offers(struct hush_net *n)
{
    for (int i = 0; i < NET_MAX_OFFERED; i++)
        forget_offer(&n->offered[i]);
}

static void put_back(struct hush_net *n, const uint32_t *ids, size_t cnt)
{
    hsdk_lock(n->c);
    hush_err e = hsdk_unpublish_pre_keys(n->c, ids, cnt);
    hsdk_unlock(n->c);
    if (e)
        hnet_report(n, e, "could not put back prekeys the relay refused");
}

static void offer_keys(struct hush_net *n, uint64_t req_id, const Hush__PreKeyUpload *up)
{
    if (!up || !up->n_one_time_pre_keys)
        return;
    struct offered *o = NULL;
    for (int i = 0; i < NET_MAX_OFFERED && !o; i++)
        if (!n->offered[i].ids)
            o = &n->offered[i];
    if (!o) { /* full: the oldest stays handed out, as if its answer never came */
        forget_offer(&n->offered[0]);
        memmove(&n->offered[0], &n->offered[1], (NET_MAX_OFFERED - 1) * sizeof n->offered[0]);
        o = &n->offered[NET_MAX_OFFERED - 1];
        o->ids = NULL;
    }
    o->ids = malloc(up->n_one_time_pre_keys * sizeof *o->ids);
    if (!o->ids)
        return;
    for (size_t i = 0; i < up->n_one_time_pre_keys; i++)
        o->ids[i] = up->one_time_pre_keys[i]->id;
    o->n = up->n_one_time_pre_keys;
    o->req_id = req_id;
}

/* The relay answered request req_id: its keys are published (OK) or put back (refused). */
void hnet_settle_offer(struct hush_net *n, uint64_t req_id, int refused)
{
    for (int i = 0; i < NET_MAX_OFFERED; i++) {
        struct offered *o = &n->offered[i];
        if (!o->ids || o->req_id != req_id)
            continue;
        if (refused)
            put_back(n, o->ids, o->n);
        forget_offer(o);
    }
}

void hnet_send_presence(struct hush_net *n, int only_allow)
{
    for (int kind = PRESENCE_ALLOW; kind <= (only_allow ? PRESENCE_ALLOW : PRESENCE_SUBSCRIBE); kind++) {
        if (kind == PRESENCE_ALLOW && !n->queue_empty) {
            /* Who may see us is sent once what waited in the mailbox was handled: a room change
             * that removed someone (made on another device while this one was away) must be
             * applied first, or this login would show them our presence again for a moment. */
            n->allow_after_drain = 1;
            continue;
        }
        char *names[1000];
        size_t cnt = 0;
        hsdk_lock(n->c);
        cnt = hsdk_presence_prefs(n->c, kind, names, 1000);
        cnt = hsdk_room_presence_names(n->c, kind == PRESENCE_ALLOW, names, cnt, 1000);
        hsdk_unlock(n->c);
        struct req *r = hnet_add_req(n, R_OTHER);
        if (r && (kind == PRESENCE_ALLOW || cnt > 0)) {
            Hush__Frame f = HUSH__FRAME__INIT;
            f.id = r->id;
            Hush__SetPresenceAllowRequest a = HUSH__SET_PRESENCE_ALLOW_REQUEST__INIT;
            Hush__SubscribePresenceRequest s = HUSH__SUBSCRIBE_PRESENCE_REQUEST__INIT;
            if (kind == PRESENCE_ALLOW) {
                a.usernames = names;
                a.n_usernames = cnt;
                f.msg_case = HUSH__FRAME__MSG_SET_PRESENCE_ALLOW;
                f.set_presence_allow = &a;
            } else {
                s.usernames = names;
                s.n_usernames = cnt;
                f.msg_case = HUSH__FRAME__MSG_SUBSCRIBE_PRESENCE;
                f.subscribe_presence = &s;
            }
            hnet_queue_frame(n, &f);
        } else if (r) {
            n->nreqs--; /* nothing to send */
        }
        for (size_t i = 0; i < cnt; i++)
            free(names[i]);
    }
}

int hnet_upload_in_flight(const struct hush_net *n)
{
    for (int i = 0; i < n->nreqs; i++)
        if (n->reqs[i].type == R_UPLOAD)
            return 1;
    return 0;
}

void hnet_upload_keys(struct hush_net *n, uint32_t max_one_time)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    hush_err e = hush_prekey_upload(n->c, max_one_time, &buf, &len, NULL);
    if (e) {
        hnet_report(n, e, "could not prepare a prekey upload");
        return;
    }
    Hush__PreKeyUpload *up = hush__pre_key_upload__unpack(NULL, len, buf);
    hush_free(buf);
    if (!up) {
        hnet_report(n, HUSH_ERR_NOMEM, "could not prepare a prekey upload");
        return;
    }
    struct req *r = hnet_add_req(n, R_UPLOAD);
    if (r) {
        Hush__Frame f = HUSH__FRAME__INIT;
        f.id = r->id;
        f.msg_case = HUSH__FRAME__MSG_UPLOAD_PRE_KEYS;
        f.upload_pre_keys = up;
        hnet_queue_frame(n, &f);
        offer_keys(n, r->id, up);
    } else if (up->n_one_time_pre_keys) { /* never sent: the keys are not used up */
        uint32_t ids[PREKEY_BATCH];
        size_t cnt = 0;
        for (size_t i = 0; i < up->n_one_time_pre_keys && cnt < PREKEY_BATCH; i++)
            ids[cnt++] = up->one_time_pre_keys[i]->id;
        put_back(n, ids, cnt);
    }
    hush__pre_key_upload__free_unpacked(up, NULL);
}

int hnet_registered(hush_client *c)
{
    int64_t v = 0;
    int found = 0;
    hsdk_lock(c);
    hush_err e = hsdk_meta_get_int(c, "registered", &v, &found);
    hsdk_unlock(c);
    return !e && found && v == 1;
}

int hnet_proof_context(struct hush_net *n, char origin[HWIRE_ORIGIN_MAX + 1], uint8_t binding[HWIRE_BINDING_BYTES],
                       size_t *blen)
{
    /* The proof names the relay as we reached it and, on TLS, this very connection: a proof
     * captured by whatever endpoint we reached is refused by any other relay or connection. */
    *blen = 0;
    if (hwire_origin(origin, HWIRE_ORIGIN_MAX + 1, n->tls, n->host, n->port) != 0)
        return -1;
    if (n->tls) {
        SSL *ssl = lws_get_ssl(n->wsi);
        static const char label[] = "EXPORTER-Channel-Binding";
        if (!ssl ||
            SSL_export_keying_material(ssl, binding, HWIRE_BINDING_BYTES, label, sizeof label - 1, NULL, 0, 0) != 1) {
            hnet_report(n, HUSH_ERR_NETWORK, "no TLS channel binding on this connection");
            return -1;
        }
        *blen = HWIRE_BINDING_BYTES;
    }
    return 0;
}

void hnet_send_auth(struct hush_net *n)
{
    hush_client *c = n->c;
    struct req *r = hnet_add_req(n, R_AUTH);
    if (!r)
        return;
    uint8_t sig[64];
    char user[HUSH_USERNAME_MAX + 1];
    uint32_t dev = 0, reg = 0;
    if (hush_device_info(c, user, &dev, &reg) != HUSH_OK)
        return;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = r->id;
    char origin[HWIRE_ORIGIN_MAX + 1];
    uint8_t binding[HWIRE_BINDING_BYTES];
    size_t blen = 0;
    if (hnet_proof_context(n, origin, binding, &blen) != 0)
        return;
    if (hnet_registered(c)) {
        if (hush_auth_proof(c, HWIRE_PURPOSE_LOGIN, origin, binding, blen, NULL, n->challenge, sig) != HUSH_OK)
            return;
        Hush__LoginRequest l = HUSH__LOGIN_REQUEST__INIT;
        l.username = user;
        l.device_id = dev;
        l.signature.data = sig;
        l.signature.len = 64;
        l.origin = origin;
        f.msg_case = HUSH__FRAME__MSG_LOGIN;
        f.login = &l;
        hnet_queue_frame(n, &f);
        return;
    }
    uint8_t auth[32], idk[33], *up = NULL;
    size_t uplen = 0;
    if (hush_device_auth_key(c, auth) != HUSH_OK || hush_device_identity_key(c, idk) != HUSH_OK)
        return;
    /* A failed earlier attempt may have marked keys as handed out: make sure some are left. */
    uint32_t stock = 0;
    if (hush_prekeys_remaining(c, &stock) == HUSH_OK && stock < PREKEY_BATCH / 2) {
        hsdk_lock(c);
        if (hsdk_generate_pre_keys(c, PREKEY_BATCH) != HUSH_OK)
            hnet_report(n, HUSH_ERR_STORAGE, "could not generate prekeys");
        hsdk_unlock(c);
    }
    if (hush_prekey_upload(c, PREKEY_BATCH, &up, &uplen, NULL) != HUSH_OK)
        return;
    Hush__PreKeyUpload *keys = hush__pre_key_upload__unpack(NULL, uplen, up);
    hush_free(up);
    if (!keys)
        return;
    Hush__RegisterRequest rr = HUSH__REGISTER_REQUEST__INIT;
    rr.username = user;
    rr.device_id = dev;
    rr.auth_key.data = auth;
    rr.auth_key.len = 32;
    rr.signature.data = sig;
    rr.signature.len = 64;
    rr.identity_key.data = idk;
    rr.identity_key.len = 33;
    rr.registration_id = reg;
    rr.keys = keys;
    rr.invite = n->invite;
    rr.origin = origin;
    char token[129];
    hsdk_lock(c);
    if (hsdk_link_token(c, token) != HUSH_OK)
        token[0] = '\0';
    hsdk_unlock(c);
    uint8_t rpk[32], dname[HWIRE_MAX_DEVICE_NAME];
    size_t dlen = 0;
    hsdk_lock(c);
    if (hsdk_device_name_sealed(c, dname, &dlen) != HUSH_OK)
        dlen = 0; /* registered without a name rather than not at all */
    hsdk_unlock(c);
    rr.device_name.data = dname;
    rr.device_name.len = dlen;
    if (token[0]) {
        rr.link_token = token; /* a linked device: the token its account's other device got */
    } else {
        /* a new account's first device, or a recovering one: the recovery code's public key */
        hsdk_lock(c);
        hush_err re = hsdk_recovery_public_key(c, rpk);
        hsdk_unlock(c);
        if (re) {
            hnet_report(n, re, "could not make the recovery code");
            hush__pre_key_upload__free_unpacked(keys, NULL);
            return;
        }
        rr.recovery_key.data = rpk;
        rr.recovery_key.len = sizeof rpk;
    }
    uint8_t digest[HWIRE_REGISTER_DIGEST_BYTES];
    if (hwire_register_digest(&rr, digest) != 0 ||
        hush_auth_proof(c, HWIRE_PURPOSE_REGISTER, origin, binding, blen, digest, n->challenge, sig) != HUSH_OK) {
        uint32_t ids[PREKEY_BATCH]; /* never sent: the keys are not used up */
        size_t cnt = 0;
        for (size_t i = 0; i < keys->n_one_time_pre_keys && cnt < PREKEY_BATCH; i++)
            ids[cnt++] = keys->one_time_pre_keys[i]->id;
        put_back(n, ids, cnt);
        hush__pre_key_upload__free_unpacked(keys, NULL);
        return;
    }
    f.msg_case = HUSH__FRAME__MSG_REGISTER;
    f.register_ = &rr;
    hnet_queue_frame(n, &f);
    offer_keys(n, f.id, keys);
    hush__pre_key_upload__free_unpacked(keys, NULL);
}

/* Rotates the signed prekey when it is due (and uploads the new one); at login and hourly. */
void hnet_rotation_check(struct hush_net *n)
{
    n->next_rotation_check_ms = now_ms() + 3600ull * 1000;
    int rotated = 0;
    hsdk_lock(n->c);
    hush_err e = hsdk_rotate_signed_pre_key(n->c, SPK_MAX_AGE_MS, SPK_GRACE_MS, &rotated);
    hsdk_unlock(n->c);
    if (e)
        hnet_report(n, e, "signed prekey rotation failed; will retry");
    else if (rotated)
        hnet_upload_keys(n, 0);
}

hush_err hnet_fatal_for(int code)
{
    switch (code) {
    case HUSH__ERROR_CODE__AUTH_FAILED: return HUSH_ERR_AUTH_FAILED;
    case HUSH__ERROR_CODE__USERNAME_TAKEN: return HUSH_ERR_USERNAME_TAKEN;
    case HUSH__ERROR_CODE__REGISTRATION_CLOSED:
    case HUSH__ERROR_CODE__INVITE_INVALID: return HUSH_ERR_REGISTRATION_REFUSED;
    case HUSH__ERROR_CODE__BAD_KEYS:
    case HUSH__ERROR_CODE__UNSUPPORTED_VERSION: return HUSH_ERR_RELAY;
    case HUSH__ERROR_CODE__TOO_MANY_DEVICES: return HUSH_ERR_TOO_MANY_DEVICES;
    case HUSH__ERROR_CODE__LINK_INVALID: return HUSH_ERR_LINK_FAILED;
    case HUSH__ERROR_CODE__DEVICE_REMOVED: return HUSH_ERR_DEVICE_REMOVED;
    default: return HUSH_OK;
    }
}

void hnet_fail_for_good(struct hush_net *n, hush_err e)
{
    n->fatal = 1;
    hnet_set_conn(n, HUSH_CONN_FAILED, e);
    if (n->wsi)
        lws_set_timeout(n->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}
