/*
 * net_push.c - this device's push endpoint: kept sealed in meta ('push_endpoint': the URL, the
 * P-256 key and the auth secret the app's push distributor gave it), sent to the relay after
 * every login (so a relay that lost it, or a new one, gets it again) and when it changes. An
 * endpoint removed while offline is removed at the relay at the next login ('push_remove'). One
 * the push service dropped is forgotten when the relay says so, and the app is told.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "net.h"

#define PUSH_META_AD "hush1|meta|push_endpoint"
#define PUSH_URL_MAX 1000
#define PUSH_P256_BYTES 65
#define PUSH_AUTH_BYTES 16

hush_err hush_push_register(hush_client *c, const char *endpoint, const uint8_t *p256dh, size_t p256dh_len,
                            const uint8_t *auth, size_t auth_len)
{
    if (!c || !endpoint || !p256dh || !auth)
        return HUSH_ERR_INVALID_ARG;
    size_t ul = strlen(endpoint);
    /* the relay checks the rest (the scheme it accepts, the key on the curve, the address) */
    if (ul == 0 || ul > PUSH_URL_MAX || (strncmp(endpoint, "https://", 8) && strncmp(endpoint, "http://", 7)) ||
        p256dh_len != PUSH_P256_BYTES || p256dh[0] != 0x04 || auth_len != PUSH_AUTH_BYTES)
        return HUSH_ERR_INVALID_ARG;
    uint8_t pt[PUSH_URL_MAX + PUSH_P256_BYTES + PUSH_AUTH_BYTES];
    memcpy(pt, p256dh, PUSH_P256_BYTES);
    memcpy(pt + PUSH_P256_BYTES, auth, PUSH_AUTH_BYTES);
    memcpy(pt + PUSH_P256_BYTES + PUSH_AUTH_BYTES, endpoint, ul);
    uint8_t *sealed = NULL;
    size_t slen = 0;
    hsdk_lock(c);
    hush_err e = hsdk_seal(c, PUSH_META_AD, pt, PUSH_P256_BYTES + PUSH_AUTH_BYTES + ul, &sealed, &slen);
    sodium_memzero(pt, sizeof pt);
    if (!e)
        e = hsdk_meta_set_blob(c, "push_endpoint", sealed, slen);
    if (!e)
        e = hsdk_meta_set_int(c, "push_remove", 0);
    hsdk_unlock(c);
    free(sealed);
    if (!e)
        hsdk_net_wake(c, NET_WAKE_PUSH);
    return e;
}

hush_err hush_push_unregister(hush_client *c)
{
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = hsdk_meta_set_blob(c, "push_endpoint", (const uint8_t *)"", 0);
    if (!e)
        e = hsdk_meta_set_int(c, "push_remove", 1);
    hsdk_unlock(c);
    if (!e)
        hsdk_net_wake(c, NET_WAKE_PUSH);
    return e;
}

/* The stored endpoint, opened (*pt NULL when there is none; the caller wipes and frees it).
 * Call with the client locked. */
static hush_err stored_endpoint(hush_client *c, uint8_t **pt, size_t *ptl)
{
    uint8_t *b = NULL;
    size_t bl = 0;
    *pt = NULL;
    *ptl = 0;
    hush_err e = hsdk_meta_get_blob(c, "push_endpoint", &b, &bl);
    if (!e && b && bl)
        e = hsdk_open(c, PUSH_META_AD, b, bl, pt, ptl);
    free(b);
    return e;
}

static int endpoint_ok(size_t ptl)
{
    return ptl > PUSH_P256_BYTES + PUSH_AUTH_BYTES && ptl <= PUSH_P256_BYTES + PUSH_AUTH_BYTES + PUSH_URL_MAX;
}

/* Which endpoint a request carried: a hash of its URL, so that a "gone" answer forgets that one
 * only, not one the app registered while the request was in flight. */
static void url_hash(uint8_t out[16], const uint8_t *pt, size_t ptl)
{
    crypto_generichash(out, 16, pt + PUSH_P256_BYTES + PUSH_AUTH_BYTES, ptl - PUSH_P256_BYTES - PUSH_AUTH_BYTES,
                       NULL, 0);
}

void hnet_send_push(struct hush_net *n)
{
    uint8_t *pt = NULL;
    size_t ptl = 0;
    int64_t remove = 0;
    int found = 0;
    hsdk_lock(n->c);
    hush_err e = stored_endpoint(n->c, &pt, &ptl);
    if (!e && !pt)
        e = hsdk_meta_get_int(n->c, "push_remove", &remove, &found);
    hsdk_unlock(n->c);
    if (e) {
        hnet_report(n, e, "could not read this device's push endpoint");
        return;
    }
    Hush__Frame f = HUSH__FRAME__INIT;
    Hush__PushRegisterRequest pr = HUSH__PUSH_REGISTER_REQUEST__INIT;
    Hush__PushRemoveRequest rm = HUSH__PUSH_REMOVE_REQUEST__INIT;
    char url[PUSH_URL_MAX + 1];
    if (pt && endpoint_ok(ptl)) {
        size_t ul = ptl - PUSH_P256_BYTES - PUSH_AUTH_BYTES;
        memcpy(url, pt + PUSH_P256_BYTES + PUSH_AUTH_BYTES, ul);
        url[ul] = '\0';
        pr.endpoint = url;
        pr.p256dh.data = pt;
        pr.p256dh.len = PUSH_P256_BYTES;
        pr.auth.data = pt + PUSH_P256_BYTES;
        pr.auth.len = PUSH_AUTH_BYTES;
        f.msg_case = HUSH__FRAME__MSG_PUSH_REGISTER;
        f.push_register = &pr;
    } else if (remove) {
        f.msg_case = HUSH__FRAME__MSG_PUSH_REMOVE;
        f.push_remove = &rm;
    }
    if (f.msg_case != HUSH__FRAME__MSG__NOT_SET) {
        struct req *r = hnet_add_req(n, R_PUSH);
        if (r) {
            r->kind = f.msg_case == HUSH__FRAME__MSG_PUSH_REMOVE;
            if (!r->kind)
                url_hash(r->mid, pt, ptl);
            f.id = r->id;
            hnet_queue_frame(n, &f);
        }
    }
    if (pt) {
        sodium_memzero(pt, ptl);
        free(pt);
    }
}

void hnet_on_push_result(struct hush_net *n, const struct req *r, const Hush__Result *res)
{
    if (res->code == HUSH__ERROR_CODE__OK) {
        if (r->kind) { /* removed at the relay: nothing more to tell it */
            hsdk_lock(n->c);
            hush_err e = hsdk_meta_set_int(n->c, "push_remove", 0);
            hsdk_unlock(n->c);
            if (e)
                hnet_report(n, e, "could not record the push endpoint's removal");
        }
        return;
    }
    if (res->code == HUSH__ERROR_CODE__PUSH_ENDPOINT_GONE && !r->kind) {
        /* forget it, unless the app registered another one meanwhile (that one is on its way) */
        uint8_t *pt = NULL;
        size_t ptl = 0;
        uint8_t h[16];
        int same = 0;
        hsdk_lock(n->c);
        hush_err e = stored_endpoint(n->c, &pt, &ptl);
        if (!e && pt && endpoint_ok(ptl)) {
            url_hash(h, pt, ptl);
            same = sodium_memcmp(h, r->mid, sizeof h) == 0;
        }
        if (same)
            e = hsdk_meta_set_blob(n->c, "push_endpoint", (const uint8_t *)"", 0);
        hsdk_unlock(n->c);
        if (pt) {
            sodium_memzero(pt, ptl);
            free(pt);
        }
        if (e)
            hnet_report(n, e, "could not forget the push endpoint the push service dropped");
        else if (same)
            hnet_report(n, HUSH_ERR_PUSH_GONE,
                        "the push service no longer knows this device's push endpoint: register a new one");
        return;
    }
    char txt[128], msg[200];
    snprintf(msg, sizeof msg, "the relay refused this device's push endpoint: %s",
             hnet_relay_text(txt, sizeof txt, res->message));
    hnet_report(n, HUSH_ERR_RELAY, msg);
}

void hnet_on_push_key(struct hush_net *n, const uint8_t *key, size_t len)
{
    if (len != 0 && (len != PUSH_P256_BYTES || key[0] != 0x04))
        len = 0; /* not a key: as if push were off */
    uint8_t *old = NULL;
    size_t ol = 0;
    hsdk_lock(n->c);
    hush_err e = hsdk_meta_get_blob(n->c, "push_vapid", &old, &ol);
    if (!e && (ol != len || (len && memcmp(old, key, len) != 0)))
        e = hsdk_meta_set_blob(n->c, "push_vapid", len ? key : (const uint8_t *)"", len);
    hsdk_unlock(n->c);
    free(old);
    if (e)
        hnet_report(n, e, "could not record the relay's push key");
}

hush_err hush_push_vapid_key(hush_client *c, char *out, size_t outcap)
{
    if (!c || !out || outcap < HUSH_PUSH_VAPID_KEY_LEN + 1)
        return HUSH_ERR_INVALID_ARG;
    uint8_t *k = NULL;
    size_t kl = 0;
    hsdk_lock(c);
    hush_err e = hsdk_meta_get_blob(c, "push_vapid", &k, &kl);
    hsdk_unlock(c);
    if (!e && kl != PUSH_P256_BYTES)
        e = HUSH_ERR_NOT_FOUND;
    if (!e)
        sodium_bin2base64(out, outcap, k, kl, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    free(k);
    return e;
}
