/*
 * net_io.c - the network thread's bottom layer: connection status and what the app is told, the
 * queue of outgoing frames and the table of requests waiting for their Result.
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

/* Text from the relay (Result.message) on its way to the app: printable ASCII only, at most cap-1
 * bytes. A relay is not trusted to send valid UTF-8 (JNI's NewStringUTF aborts on invalid Modified
 * UTF-8) or harmless bytes (terminal escapes). */
const char *hnet_relay_text(char *buf, size_t cap, const char *s)
{
    size_t n = 0;
    for (; s && *s && n + 1 < cap; s++)
        buf[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    buf[n] = '\0';
    return buf;
}

/* Why a connection attempt failed, in words a user can act on: the host name does not resolve,
 * nothing listens there, TLS failed (an untrusted certificate, or a port without TLS), or what
 * answered is not a WebSocket relay. libwebsockets' own text is kept at the end. */
void hnet_describe_connect_error(struct hush_net *n, const char *why, char *out, size_t cap)
{
    char lws[96];
    hnet_relay_text(lws, sizeof lws, why);
    if (strstr(why, "SSL") || strstr(why, "ssl") || strstr(why, "TLS") || strstr(why, "tls") || strstr(why, "cert")) {
        snprintf(out, cap, "TLS with %.64s:%d failed: its certificate is not trusted (a self-signed relay needs "
                           "its CA file: --ca-file) or that port does not speak TLS [%s]", n->host, n->port, lws);
    } else if (strstr(why, "HS:") || strstr(why, "101") || strstr(why, "upgrade")) {
        snprintf(out, cap, "%.64s:%d answered, but not as a Hush relay (the WebSocket upgrade was refused: wrong "
                           "port or path?) [%s]", n->host, n->port, lws);
    } else {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        int rc = getaddrinfo(n->host, NULL, &hints, &res);
        if (res)
            freeaddrinfo(res);
        if (rc != 0)
            snprintf(out, cap, "unknown host %.64s: %s", n->host, gai_strerror(rc));
        else
            snprintf(out, cap, "cannot connect to %.64s:%d: refused or unreachable (is hushd running there?) [%s]",
                     n->host, n->port, lws[0] ? lws : "no answer");
    }
}

void hnet_set_conn(struct hush_net *n, hush_conn_state s, hush_err err)
{
    pthread_mutex_lock(&n->mu);
    int changed = n->conn != s;
    n->conn = s;
    if (err)
        n->last_err = err;
    n->progress++;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
    if (changed && n->cb.on_connection)
        n->cb.on_connection(n->cb.ctx, s, err);
}

void hnet_report(struct hush_net *n, hush_err e, const char *detail)
{
    if (n->cb.on_error)
        n->cb.on_error(n->cb.ctx, e, detail);
}

void hnet_signal_progress(struct hush_net *n)
{
    pthread_mutex_lock(&n->mu);
    n->progress++;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

void hnet_queue_frame(struct hush_net *n, Hush__Frame *f)
{
    if (!n->wsi)
        return;
    size_t len = hush__frame__get_packed_size(f);
    struct nbuf *b = malloc(sizeof *b + LWS_PRE + len);
    if (!b)
        return;
    b->next = NULL;
    b->len = len;
    hush__frame__pack(f, b->data + LWS_PRE);
    if (n->out_tail)
        n->out_tail->next = b;
    else
        n->out_head = b;
    n->out_tail = b;
    lws_callback_on_writable(n->wsi);
}

struct req *hnet_add_req(struct hush_net *n, enum req_type t)
{
    if (n->nreqs == NET_MAX_REQS)
        return NULL;
    struct req *r = &n->reqs[n->nreqs++];
    memset(r, 0, sizeof *r);
    r->id = n->next_id++;
    r->type = t;
    return r;
}

int hnet_take_req(struct hush_net *n, uint64_t id, struct req *out)
{
    for (int i = 0; i < n->nreqs; i++) {
        if (n->reqs[i].id == id) {
            *out = n->reqs[i];
            n->reqs[i] = n->reqs[--n->nreqs];
            return 1;
        }
    }
    return 0;
}

void hnet_send_acks(struct hush_net *n, uint64_t *seqs, size_t count)
{
    if (!count)
        return;
    Hush__AckRequest a = HUSH__ACK_REQUEST__INIT;
    a.n_seqs = count;
    a.seqs = seqs;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_ACK;
    f.ack = &a;
    hnet_queue_frame(n, &f);
}

/* Tells the app a message's new state, unless a later state was already recorded (receipts can
 * arrive out of order: a read receipt before the delivery one, or before the relay's answer to
 * the send). What the app sees never goes backwards. */
void hnet_report_state(struct hush_net *n, const char *peer, const uint8_t mid[16], int state)
{
    if (!n->cb.on_receipt)
        return;
    hush_msg_state cur = HUSH_MSG_QUEUED;
    if (hush_message_state(n->c, mid, &cur) == HUSH_OK && (int)cur != state)
        return;
    uint8_t id[16];
    char room[HUSH_ROOM_ID_LEN + 1];
    if (hsdk_room_outbox_id(peer, id)) {
        sodium_bin2hex(room, sizeof room, id, 16); /* a room's message: the room's id */
        peer = room;
    }
    n->cb.on_receipt(n->cb.ctx, peer, mid, (hush_msg_state)state);
}

void hnet_on_identity(struct hush_net *n, const char *peer, uint32_t dev)
{
    char old_sn[HUSH_SAFETY_NUMBER_LEN + 1], new_sn[HUSH_SAFETY_NUMBER_LEN + 1];
    if (hush_identity_pending(n->c, peer, dev, old_sn, new_sn) == HUSH_OK && n->cb.on_identity_changed)
        n->cb.on_identity_changed(n->cb.ctx, peer, dev, old_sn, new_sn);
}
