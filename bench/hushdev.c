/* hushdev.c - see hushdev.h. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <curve.h>
#include <key_helper.h>
#include <ratchet.h>
#include <session_pre_key.h>

#include "../tests/wsc.h"
#include "common.h"
#include "hush.pb-c.h"
#include "hush_wire.h"
#include "hushdev.h"
#include "internal.h"

#define die bench_die


static signal_context *g_sg;
static ratchet_identity_key_pair *g_ikp; /* one identity for all bench devices: the relay never checks */
static session_signed_pre_key *g_spk;
static signal_buffer *g_idpub, *g_spkpub;

void hdev_keys_init(void)
{
    if (signal_context_create(&g_sg, NULL) || hsdk_provider_install(g_sg) ||
        signal_protocol_key_helper_generate_identity_key_pair(&g_ikp, g_sg) ||
        signal_protocol_key_helper_generate_signed_pre_key(&g_spk, g_ikp, 1, 0, g_sg) ||
        ec_public_key_serialize(&g_idpub, ratchet_identity_key_pair_get_public(g_ikp)) ||
        ec_public_key_serialize(&g_spkpub, ec_key_pair_get_public(session_signed_pre_key_get_key_pair(g_spk))))
        die("keys");
}

void hdev_send_frame(struct dev *d, Hush__Frame *f)
{
    uint8_t stackbuf[2048];
    size_t n = hush__frame__get_packed_size(f);
    uint8_t *b = n <= sizeof stackbuf ? stackbuf : malloc(n);
    hush__frame__pack(f, b);
    if (wsc_send(d->ws, b, n) != 0)
        die("send");
    if (b != stackbuf)
        free(b);
}

Hush__Frame *hdev_recv_frame(struct dev *d, int timeout_ms)
{
    uint8_t *data;
    size_t len;
    if (wsc_recv(d->ws, &data, &len, timeout_ms) != 1)
        return NULL;
    Hush__Frame *f = hush__frame__unpack(NULL, len, data);
    free(data);
    return f;
}

void hdev_send_hello(struct dev *d)
{
    Hush__Hello h = HUSH__HELLO__INIT;
    h.min_version = h.max_version = 1;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = d->next_id++;
    f.msg_case = HUSH__FRAME__MSG_HELLO;
    f.hello = &h;
    hdev_send_frame(d, &f);
}

void hdev_read_welcome(struct dev *d)
{
    Hush__Frame *f = hdev_recv_frame(d, 30000);
    if (!f || f->msg_case != HUSH__FRAME__MSG_WELCOME)
        die("welcome");
    memcpy(d->challenge, f->welcome->challenge.data, 32);
    hush__frame__free_unpacked(f, NULL);
}

void hdev_send_register(struct dev *d)
{
    uint8_t msg[HWIRE_AUTH_MESSAGE_MAX], sig[64], digest[HWIRE_REGISTER_DIGEST_BYTES];
    char origin[HWIRE_ORIGIN_MAX + 1];
    if (hwire_origin(origin, sizeof origin, 0, "127.0.0.1", d->port) != 0)
        die("origin");
    Hush__SignedPreKey s = HUSH__SIGNED_PRE_KEY__INIT;
    s.id = 1;
    s.public_key.data = signal_buffer_data(g_spkpub);
    s.public_key.len = 33;
    s.signature.data = (uint8_t *)session_signed_pre_key_get_signature(g_spk);
    s.signature.len = 64;
    Hush__PreKeyUpload up = HUSH__PRE_KEY_UPLOAD__INIT;
    up.signed_pre_key = &s;
    Hush__RegisterRequest r = HUSH__REGISTER_REQUEST__INIT;
    r.username = d->user;
    r.device_id = 1;
    r.auth_key.data = d->pk;
    r.auth_key.len = 32;
    r.signature.data = sig;
    r.signature.len = 64;
    r.identity_key.data = signal_buffer_data(g_idpub);
    r.identity_key.len = 33;
    r.registration_id = 1;
    r.keys = &up;
    r.origin = origin;
    if (hwire_register_digest(&r, digest) != 0)
        die("digest");
    size_t n = hwire_auth_message(msg, sizeof msg, HWIRE_PURPOSE_REGISTER, origin, NULL, 0, d->challenge, d->user, 1,
                                  digest);
    crypto_sign_detached(sig, NULL, msg, n, d->sk);
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = d->next_id++;
    f.msg_case = HUSH__FRAME__MSG_REGISTER;
    f.register_ = &r;
    hdev_send_frame(d, &f);
}

void hdev_send_login(struct dev *d)
{
    uint8_t msg[HWIRE_AUTH_MESSAGE_MAX], sig[64];
    char origin[HWIRE_ORIGIN_MAX + 1];
    if (hwire_origin(origin, sizeof origin, 0, "127.0.0.1", d->port) != 0)
        die("origin");
    size_t n = hwire_auth_message(msg, sizeof msg, HWIRE_PURPOSE_LOGIN, origin, NULL, 0, d->challenge, d->user, 1, NULL);
    crypto_sign_detached(sig, NULL, msg, n, d->sk);
    Hush__LoginRequest l = HUSH__LOGIN_REQUEST__INIT;
    l.username = d->user;
    l.device_id = 1;
    l.signature.data = sig;
    l.signature.len = 64;
    l.origin = origin;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = d->next_id++;
    f.msg_case = HUSH__FRAME__MSG_LOGIN;
    f.login = &l;
    hdev_send_frame(d, &f);
}

/* Waits for the Result of the last request, skipping pushes. Returns its code. */
int hdev_read_result(struct dev *d)
{
    for (;;) {
        Hush__Frame *f = hdev_recv_frame(d, 60000);
        if (!f)
            die("no result");
        if (f->msg_case == HUSH__FRAME__MSG_RESULT) {
            int c = (int)f->result->code;
            hush__frame__free_unpacked(f, NULL);
            return c;
        }
        hush__frame__free_unpacked(f, NULL);
    }
}

void hdev_init(struct dev *d, const char *prefix, int i)
{
    memset(d, 0, sizeof *d);
    snprintf(d->user, sizeof d->user, "%s%d", prefix, i);
    /* keys derived from the name: a later run can log the same users in again */
    uint8_t seed[crypto_sign_SEEDBYTES];
    crypto_generichash(seed, sizeof seed, (const uint8_t *)d->user, strlen(d->user), NULL, 0);
    crypto_sign_seed_keypair(d->pk, d->sk, seed);
    d->next_id = 1;
}

/* Connects and authenticates a group of devices, pipelined: every step is sent on all sockets
 * before any answer is read. register != 0 registers them (first time). */
void hdev_connect_all(int port, struct dev *v, int n, int do_register)
{
    for (int i = 0; i < n; i++) {
        v[i].port = port;
        v[i].ws = wsc_connect_start("127.0.0.1", port, 0, 30000);
        if (!v[i].ws)
            die("connect (raise the fd limit?)");
        v[i].next_id = 1;
    }
    for (int i = 0; i < n; i++) {
        if (wsc_connect_finish(v[i].ws, 30000) != 0)
            die("websocket upgrade refused");
        hdev_send_hello(&v[i]);
    }
    for (int i = 0; i < n; i++)
        hdev_read_welcome(&v[i]);
    for (int i = 0; i < n; i++)
        do_register ? hdev_send_register(&v[i]) : hdev_send_login(&v[i]);
    for (int i = 0; i < n; i++) {
        int code = hdev_read_result(&v[i]);
        if (code != 0) {
            fprintf(stderr, "bench: %s %s: relay answered code %d\n", do_register ? "register" : "login", v[i].user, code);
            die("auth");
        }
    }
}

void hdev_close_all(struct dev *v, int n)
{
    for (int i = 0; i < n; i++) {
        wsc_close(v[i].ws);
        v[i].ws = NULL;
    }
}

void hdev_send_msg(struct dev *from, const char *to, uint64_t k, const uint8_t *body, size_t blen)
{
    uint8_t mid[16] = { 0 };
    memcpy(mid, &k, sizeof k);
    Hush__Recipient rc = HUSH__RECIPIENT__INIT;
    rc.username = (char *)to;
    rc.device_id = 1;
    rc.envelope.data = (uint8_t *)body;
    rc.envelope.len = blen;
    Hush__Recipient *rcs[1] = { &rc };
    Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
    s.client_msg_id.data = mid;
    s.client_msg_id.len = 16;
    s.n_recipients = 1;
    s.recipients = rcs;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = from->next_id++;
    f.msg_case = HUSH__FRAME__MSG_SEND;
    f.send = &s;
    hdev_send_frame(from, &f);
}


void hdev_send_room(struct dev *from, char **to, int n, uint64_t k, const uint8_t *body, size_t blen)
{
    uint8_t mid[16] = { 0 };
    memcpy(mid, &k, sizeof k);
    Hush__Recipient *rc = calloc((size_t)n, sizeof *rc), **rp = calloc((size_t)n, sizeof *rp);
    if (!rc || !rp)
        abort();
    for (int i = 0; i < n; i++) {
        hush__recipient__init(&rc[i]);
        rc[i].username = to[i];
        rc[i].device_id = 1;
        rp[i] = &rc[i];
    }
    Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
    s.client_msg_id.data = mid;
    s.client_msg_id.len = 16;
    s.n_recipients = (size_t)n;
    s.recipients = rp;
    s.shared_envelope.data = (uint8_t *)body;
    s.shared_envelope.len = blen;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = from->next_id++;
    f.msg_case = HUSH__FRAME__MSG_SEND;
    f.send = &s;
    hdev_send_frame(from, &f);
    free(rc);
    free(rp);
}
