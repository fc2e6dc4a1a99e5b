/*
 * net_outbox.c - what the two senders of the outbox (pairwise rows in net_send.c, room rows in
 * net_rooms.c) share: asking the relay for a user's devices, our own other devices as last
 * listed, and an outbox row finished (removed, its state set and reported).
 */
#include <stdio.h>
#include <string.h>

#include <libwebsockets.h>

#include "net.h"

/* Messages with a state the app follows (QUEUED, SENT, DELIVERED, READ): texts and files. */
int hnet_has_state(int kind)
{
    return kind == HUSH__CONTENT_KIND__CONTENT_TEXT || kind == HUSH__CONTENT_KIND__CONTENT_ATTACHMENT;
}

void hnet_outbox_finished(struct hush_net *n, int64_t outbox_id, const uint8_t mid[16], int kind, int state,
                            const char *peer)
{
    hush_client *c = n->c;
    hsdk_lock(c);
    if (hsdk_begin(c) == HUSH_OK) {
        hsdk_outbox_remove(c, outbox_id, mid);
        if (hnet_has_state(kind))
            hsdk_set_message_state(c, mid, state);
        if (hsdk_commit(c)) {
            /* the row stays: it is resent (same id, deduplicated by the relay) */
        }
    }
    hsdk_unlock(c);
    if (hnet_has_state(kind))
        hnet_report_state(n, peer, mid, state);
    hnet_signal_progress(n);
}

void hnet_request_fetch(struct hush_net *n, const char *peer)
{
    struct req *r = hnet_add_req(n, R_FETCH);
    if (!r)
        return;
    snprintf(r->peer, sizeof r->peer, "%s", peer);
    Hush__FetchBundlesRequest fb = HUSH__FETCH_BUNDLES_REQUEST__INIT;
    fb.username = r->peer;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = r->id;
    f.msg_case = HUSH__FRAME__MSG_FETCH_BUNDLES;
    f.fetch_bundles = &fb;
    hnet_queue_frame(n, &f);
    n->fetching = 1;
    snprintf(n->fetch_peer, sizeof n->fetch_peer, "%s", peer);
}

/* Our own user's other devices, as last fetched. Returns -1 when the list was never fetched (the
 * list always holds our own device once fetched), else the number of other devices in devs. */
int hnet_own_other_devices(hush_client *c, uint32_t *devs, int max)
{
    uint32_t all[MAX_DEVS];
    int na = hsdk_peers_list(c, c->username, all, MAX_DEVS);
    if (na == 0)
        return -1;
    int n = 0;
    for (int i = 0; i < na; i++)
        if (all[i] != c->device_id && n < max)
            devs[n++] = all[i];
    return n;
}
