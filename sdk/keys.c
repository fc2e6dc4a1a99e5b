/*
 * keys.c - keeping a device's keys fresh: new one-time prekeys when the relay says the stock is low,
 * a new signed prekey on a schedule (the old ones are kept for a grace period, so a peer that
 * fetched an older bundle can still start a session, then deleted).
 */
#include <stdlib.h>

#include <key_helper.h>
#include <ratchet.h>
#include <session_pre_key.h>

#include "net.h"

#define MAX_PREKEY_ID 0xFFFFFEu

hush_err hsdk_generate_pre_keys(hush_client *c, uint32_t n)
{
    if (!c->has_device)
        return HUSH_ERR_NO_DEVICE;
    int64_t next = 1;
    int found = 0;
    hush_err e = hsdk_begin(c);
    if (e)
        return e;
    if ((e = hsdk_meta_get_int(c, "next_pre_key", &next, &found)))
        goto fail;
    if (!found || next < 1 || next > (int64_t)MAX_PREKEY_ID)
        next = 1;
    /* Ids are never reused while a key with that id could still be around: they wrap modulo
     * 0xFFFFFE (the library does the same), far beyond any realistic stock. */
    signal_protocol_key_helper_pre_key_list_node *head = NULL;
    int rc = signal_protocol_key_helper_generate_pre_keys(&head, (unsigned int)next, n, c->sg);
    if (rc) {
        e = hsdk_from_signal(rc);
        goto fail;
    }
    for (signal_protocol_key_helper_pre_key_list_node *p = head; p; p = signal_protocol_key_helper_key_list_next(p)) {
        if (signal_protocol_pre_key_store_key(c->sc, signal_protocol_key_helper_key_list_element(p)) != 0) {
            e = c->store_err ? c->store_err : HUSH_ERR_STORAGE;
            break;
        }
    }
    signal_protocol_key_helper_key_list_free(head);
    if (e)
        goto fail;
    int64_t after = next + n;
    if (after > (int64_t)MAX_PREKEY_ID)
        after = after - MAX_PREKEY_ID;
    if ((e = hsdk_meta_set_int(c, "next_pre_key", after)))
        goto fail;
    return hsdk_commit(c);
fail:
    hsdk_rollback(c);
    return e;
}

hush_err hsdk_unpublish_pre_keys(hush_client *c, const uint32_t *ids, size_t n)
{
    hush_err e = hsdk_begin(c);
    if (e)
        return e;
    for (size_t i = 0; i < n && !e; i++)
        e = hsdk_prekey_mark_exported(c, ids[i], 0);
    return hsdk_end(c, e);
}

hush_err hsdk_rotate_signed_pre_key(hush_client *c, uint64_t max_age_ms, uint64_t grace_ms, int *rotated)
{
    *rotated = 0;
    if (!c->has_device)
        return HUSH_ERR_NO_DEVICE;
    hush_err e = hsdk_begin(c);
    if (e)
        return e;
    int64_t cur = 0, next = 0;
    int found = 0, found2 = 0;
    ratchet_identity_key_pair *ikp = NULL;
    session_signed_pre_key *spk = NULL;
    uint64_t now = hsdk_now_ms();
    if ((e = hsdk_meta_get_int(c, "current_signed_pre_key", &cur, &found)) ||
        (e = hsdk_meta_get_int(c, "next_signed_pre_key", &next, &found2)))
        goto fail;
    int64_t created = 0;
    int row = 0;
    if ((e = hsdk_signed_prekey_created(c, (uint32_t)cur, &created, &row)))
        goto fail;
    if (!found || !row || now - (uint64_t)created >= max_age_ms) {
        if (!found2 || next < 1 || next > (int64_t)MAX_PREKEY_ID)
            next = cur + 1;
        if ((e = hsdk_local_identity(c, &ikp)))
            goto fail;
        int rc = signal_protocol_key_helper_generate_signed_pre_key(&spk, ikp, (uint32_t)next, now, c->sg);
        if (rc) {
            e = hsdk_from_signal(rc);
            goto fail;
        }
        if (signal_protocol_signed_pre_key_store_key(c->sc, spk) != 0) {
            e = c->store_err ? c->store_err : HUSH_ERR_STORAGE;
            goto fail;
        }
        if ((e = hsdk_meta_set_int(c, "current_signed_pre_key", next)) ||
            (e = hsdk_meta_set_int(c, "next_signed_pre_key", next + 1 > (int64_t)MAX_PREKEY_ID ? 1 : next + 1)))
            goto fail;
        cur = next;
        *rotated = 1;
    }
    /* retire: the current key stays; older ones go after the grace period */
    if ((e = hsdk_signed_prekeys_retire(c, (uint32_t)cur, now - grace_ms)))
        goto fail;
    SIGNAL_UNREF(spk);
    SIGNAL_UNREF(ikp);
    return hsdk_commit(c);
fail:
    SIGNAL_UNREF(spk);
    SIGNAL_UNREF(ikp);
    hsdk_rollback(c);
    *rotated = 0;
    return e;
}
