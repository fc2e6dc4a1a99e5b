/*
 * net_link.c - linking a device over the relay, both sides.
 *
 * The new device (hush_net_start_link) asks for a provisioning address on its unauthenticated
 * connection, shows the link code (address + its ephemeral X25519 key), waits for the link box,
 * opens it into a device (link.c), then registers on the same connection with the link token.
 * The existing device (hush_device_link) asks the relay for a link token (which reserves the
 * new device's id), seals the box to the code's key and hands it to the address.
 * Removing a device (hush_device_remove) is the other request of this file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "net.h"

/* Our own device list changed: it is fetched again before the next send. */
static void forget_own_devices(struct hush_net *n)
{
    hsdk_lock(n->c);
    hsdk_peers_forget(n->c, n->c->username);
    hsdk_unlock(n->c);
}

/* ------------------------------------------------------------------------------------------ */
/* the new device */

void hnet_link_provision(struct hush_net *n)
{
    struct req *r = hnet_add_req(n, R_PROVISION);
    if (!r)
        return;
    Hush__ProvisionRequest pr = HUSH__PROVISION_REQUEST__INIT;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = r->id;
    f.msg_case = HUSH__FRAME__MSG_PROVISION;
    f.provision = &pr;
    hnet_queue_frame(n, &f);
}

void hnet_on_provision_result(struct hush_net *n, const Hush__Result *res)
{
    char txt[128];
    if (res->code != HUSH__ERROR_CODE__OK || !res->provision_address ||
        strlen(res->provision_address) != HWIRE_PROVISION_ADDRESS_LEN) {
        hnet_report(n, HUSH_ERR_RELAY, hnet_relay_text(txt, sizeof txt, res->message)); /* reconnects later */
        return;
    }
    for (const char *p = res->provision_address; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) {
            hnet_report(n, HUSH_ERR_RELAY, "the relay sent a malformed provisioning address");
            return;
        }
    if (hsdk_link_code_format(n->link_code, sizeof n->link_code, res->provision_address, n->link_pk) != 0)
        return;
    if (n->cb.on_link_code)
        n->cb.on_link_code(n->cb.ctx, n->link_code);
    hnet_signal_progress(n);
}

void hnet_on_provisioned(struct hush_net *n, const Hush__Provisioned *p)
{
    if (!n->link_mode || n->st != N_AUTH || hnet_registered(n->c) || !p->box.len)
        return;
    char *const *presence = NULL;
    size_t np = 0;
    hush_err e = hsdk_link_box_open(n->c, p->box.data, p->box.len, n->link_pk, n->link_sk, &presence, &np);
    if (e) {
        hnet_report(n, e == HUSH_ERR_BAD_MESSAGE ? HUSH_ERR_LINK_FAILED : e,
                    "the link box could not be opened; showing a new link code");
        if (n->wsi)
            lws_set_timeout(n->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC); /* reconnect: new address, new code */
        return;
    }
    sodium_memzero(n->link_sk, sizeof n->link_sk);
    n->link_mode = 0;
    if (np && hush_presence_allow(n->c, (const char *const *)presence, np) != HUSH_OK)
        hnet_report(n, HUSH_ERR_STORAGE, "could not keep the presence list of the linked account");
    for (size_t i = 0; i < np; i++)
        free(presence[i]);
    free((void *)presence);
    hnet_send_auth(n); /* registers with the link token, on this connection */
}

/* ------------------------------------------------------------------------------------------ */
/* a database recovering an account */

void hnet_recover_request(struct hush_net *n)
{
    struct req *r = hnet_add_req(n, R_RECOVER);
    if (!r)
        return;
    char origin[HWIRE_ORIGIN_MAX + 1];
    uint8_t binding[HWIRE_BINDING_BYTES], msg[HWIRE_AUTH_MESSAGE_MAX], sig[64];
    size_t blen = 0;
    if (hnet_proof_context(n, origin, binding, &blen) != 0)
        return;
    size_t mlen = hwire_auth_message(msg, sizeof msg, HWIRE_PURPOSE_RECOVER, origin, binding, blen, n->challenge,
                                     n->recover_user, 0, NULL);
    if (!mlen || sodium_is_zero(n->challenge, sizeof n->challenge))
        return; /* never sign an all-zero challenge */
    crypto_sign_detached(sig, NULL, msg, mlen, n->recover_sk);
    Hush__RecoverRequest rq = HUSH__RECOVER_REQUEST__INIT;
    rq.username = n->recover_user;
    rq.signature.data = sig;
    rq.signature.len = sizeof sig;
    rq.origin = origin;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = r->id;
    f.msg_case = HUSH__FRAME__MSG_RECOVER;
    f.recover = &rq;
    hnet_queue_frame(n, &f);
}

void hnet_on_recover_result(struct hush_net *n, const Hush__Result *res)
{
    if (res->code != HUSH__ERROR_CODE__OK) {
        hush_err e = res->code == HUSH__ERROR_CODE__AUTH_FAILED ? HUSH_ERR_AUTH_FAILED : HUSH_ERR_RELAY;
        char txt[128];
        hnet_report(n, e, res->code == HUSH__ERROR_CODE__AUTH_FAILED ? "the relay refused the name or the recovery code"
                                                                    : hnet_relay_text(txt, sizeof txt, res->message));
        hnet_fail_for_good(n, e);
        return;
    }
    if (res->challenge.len != 32 || !hsdk_valid_device(res->link_device_id)) {
        hnet_report(n, HUSH_ERR_RELAY, "malformed answer to the recovery");
        hnet_fail_for_good(n, HUSH_ERR_RELAY);
        return;
    }
    memcpy(n->challenge, res->challenge.data, 32);
    /* a new device with a new identity: the old key may be what was lost */
    hush_err e = hush_device_create(n->c, n->recover_user, res->link_device_id);
    if (e) {
        hnet_report(n, e, "could not create the recovered device");
        hnet_fail_for_good(n, e);
        return;
    }
    sodium_memzero(n->recover_sk, sizeof n->recover_sk);
    n->recover_mode = 0;
    hnet_send_auth(n); /* registers on this connection; the relay then removes the old devices */
}

/* ------------------------------------------------------------------------------------------ */
/* the existing device */

/* Ends an app thread's request (hush_device_link, hush_device_remove) and wakes its waiter. */
static void finish_request(struct hush_net *n, enum link_step *step, hush_err *result, hush_err e)
{
    pthread_mutex_lock(&n->mu);
    if (*step != LINK_IDLE && *step != LINK_DONE) {
        *step = LINK_DONE;
        *result = e;
        n->progress++;
        pthread_cond_broadcast(&n->cv);
    }
    pthread_mutex_unlock(&n->mu);
}

void hnet_link_finish(struct hush_net *n, hush_err e) { finish_request(n, &n->link_step, &n->link_result, e); }

/* A queued request, once online: its first frame's request slot (the step moves on), or NULL
 * (nothing queued, not online, or no slot: then it ends with HUSH_ERR_NOMEM). */
static struct req *take_request(struct hush_net *n, enum link_step *step, hush_err *result, enum req_type t)
{
    pthread_mutex_lock(&n->mu);
    int go = *step == LINK_QUEUED && n->st == N_ONLINE;
    if (go)
        *step = LINK_TOKEN_ASKED;
    pthread_mutex_unlock(&n->mu);
    if (!go)
        return NULL;
    struct req *r = hnet_add_req(n, t);
    if (!r)
        finish_request(n, step, result, HUSH_ERR_NOMEM);
    return r;
}

void hnet_link_start(struct hush_net *n)
{
    struct req *r = take_request(n, &n->link_step, &n->link_result, R_LINK_TOKEN);
    if (!r)
        return;
    Hush__LinkTokenRequest lt = HUSH__LINK_TOKEN_REQUEST__INIT;
    char addr[HWIRE_PROVISION_ADDRESS_LEN + 1];
    pthread_mutex_lock(&n->mu);
    memcpy(addr, n->link_addr, sizeof addr);
    pthread_mutex_unlock(&n->mu);
    lt.address = addr;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = r->id;
    f.msg_case = HUSH__FRAME__MSG_LINK_TOKEN;
    f.link_token = &lt;
    hnet_queue_frame(n, &f);
}

static hush_err link_error(int code)
{
    switch (code) {
    case HUSH__ERROR_CODE__TOO_MANY_DEVICES: return HUSH_ERR_TOO_MANY_DEVICES;
    case HUSH__ERROR_CODE__ADDRESS_GONE:
    case HUSH__ERROR_CODE__LINK_INVALID: return HUSH_ERR_LINK_FAILED;
    default: return HUSH_ERR_RELAY;
    }
}

void hnet_on_link_token_result(struct hush_net *n, const Hush__Result *res)
{
    if (res->code != HUSH__ERROR_CODE__OK) {
        char txt[128];
        hnet_report(n, link_error(res->code), hnet_relay_text(txt, sizeof txt, res->message));
        hnet_link_finish(n, link_error(res->code));
        return;
    }
    if (!res->link_token || !*res->link_token || strlen(res->link_token) > 128 || !hsdk_valid_device(res->link_device_id)) {
        hnet_link_finish(n, HUSH_ERR_RELAY);
        return;
    }
    char origin[HWIRE_ORIGIN_MAX + 1];
    if (hwire_origin(origin, sizeof origin, n->tls, n->host, n->port) != 0)
        origin[0] = '\0';
    char addr[HWIRE_PROVISION_ADDRESS_LEN + 1];
    uint8_t pk[32];
    pthread_mutex_lock(&n->mu);
    n->link_dev = res->link_device_id;
    memcpy(addr, n->link_addr, sizeof addr);
    memcpy(pk, n->link_peer_pk, sizeof pk);
    pthread_mutex_unlock(&n->mu);
    uint8_t *box = NULL;
    size_t blen = 0;
    hush_err e = hsdk_link_box_make(n->c, res->link_token, res->link_device_id, origin, pk, &box, &blen);
    if (e) {
        hnet_link_finish(n, e);
        return;
    }
    struct req *r = hnet_add_req(n, R_PROVISION_SEND);
    if (r) {
        Hush__ProvisionSend ps = HUSH__PROVISION_SEND__INIT;
        ps.address = addr;
        ps.box.data = box;
        ps.box.len = blen;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.id = r->id;
        f.msg_case = HUSH__FRAME__MSG_PROVISION_SEND;
        f.provision_send = &ps;
        hnet_queue_frame(n, &f);
        pthread_mutex_lock(&n->mu);
        n->link_step = LINK_BOX_SENT;
        pthread_mutex_unlock(&n->mu);
    } else {
        hnet_link_finish(n, HUSH_ERR_NOMEM);
    }
    free(box);
}

void hnet_on_provision_send_result(struct hush_net *n, const Hush__Result *res)
{
    if (res->code != HUSH__ERROR_CODE__OK) {
        hnet_link_finish(n, link_error(res->code));
        return;
    }
    forget_own_devices(n); /* the new device registers next */
    hnet_link_finish(n, HUSH_OK);
}

/* ------------------------------------------------------------------------------------------ */
/* removing a device */

void hnet_remove_finish(struct hush_net *n, hush_err e) { finish_request(n, &n->rm_step, &n->rm_result, e); }

void hnet_remove_start(struct hush_net *n)
{
    struct req *r = take_request(n, &n->rm_step, &n->rm_result, R_REMOVE);
    if (!r)
        return;
    pthread_mutex_lock(&n->mu);
    uint32_t dev = n->rm_dev;
    pthread_mutex_unlock(&n->mu);
    Hush__RemoveDeviceRequest rd = HUSH__REMOVE_DEVICE_REQUEST__INIT;
    rd.device_id = dev;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = r->id;
    f.msg_case = HUSH__FRAME__MSG_REMOVE_DEVICE;
    f.remove_device = &rd;
    hnet_queue_frame(n, &f);
}

void hnet_on_remove_result(struct hush_net *n, const Hush__Result *res)
{
    hush_err e;
    switch (res->code) {
    case HUSH__ERROR_CODE__OK: e = HUSH_OK; break;
    case HUSH__ERROR_CODE__UNKNOWN_RECIPIENT: e = HUSH_ERR_NOT_FOUND; break;
    case HUSH__ERROR_CODE__AUTH_FAILED: e = HUSH_ERR_AUTH_FAILED; break;
    case HUSH__ERROR_CODE__BAD_REQUEST: e = HUSH_ERR_INVALID_ARG; break;
    default: e = HUSH_ERR_RELAY; break;
    }
    if (e == HUSH_OK)
        forget_own_devices(n);
    hnet_remove_finish(n, e);
}

/* ------------------------------------------------------------------------------------------ */
/* listing this account's devices */

void hnet_list_finish(struct hush_net *n, hush_err e) { finish_request(n, &n->ls_step, &n->ls_result, e); }

void hnet_list_start(struct hush_net *n)
{
    struct req *r = take_request(n, &n->ls_step, &n->ls_result, R_LIST_DEVICES);
    if (!r)
        return;
    Hush__ListDevicesRequest ld = HUSH__LIST_DEVICES_REQUEST__INIT;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = r->id;
    f.msg_case = HUSH__FRAME__MSG_LIST_DEVICES;
    f.list_devices = &ld;
    hnet_queue_frame(n, &f);
}

void hnet_on_list_result(struct hush_net *n, const Hush__Result *res)
{
    if (res->code != HUSH__ERROR_CODE__OK) {
        hnet_list_finish(n, HUSH_ERR_RELAY);
        return;
    }
    size_t cnt = res->n_devices > 16 ? 16 : res->n_devices;
    hush_device_entry *out = calloc(cnt ? cnt : 1, sizeof *out);
    if (!out) {
        hnet_list_finish(n, HUSH_ERR_NOMEM);
        return;
    }
    size_t k = 0;
    hsdk_lock(n->c);
    for (size_t i = 0; i < cnt; i++) {
        const Hush__DeviceInfo *d = res->devices[i];
        if (!hsdk_valid_device(d->device_id))
            continue;
        out[k].device_id = d->device_id;
        hsdk_device_name_open(n->c, d->name.data, d->name.len, out[k].name);
        out[k].created_ms = d->created_ms;
        out[k].last_seen_ms = d->last_seen_ms;
        out[k].online = d->online;
        out[k].this_device = d->device_id == n->c->device_id;
        k++;
    }
    hsdk_unlock(n->c);
    pthread_mutex_lock(&n->mu);
    free(n->ls_out);
    n->ls_out = out;
    n->ls_count = k;
    pthread_mutex_unlock(&n->mu);
    hnet_list_finish(n, HUSH_OK);
}
