/*
 * trust.c - safety numbers, and the user's decisions about changed identity keys (pending,
 * accept bound to the number the user compared, reject).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <curve.h>
#include <fingerprint.h>

#include "internal.h"
#include "net.h"

static hush_err make_fingerprint(hush_client *c, const char *peer, const uint8_t remote_key[33], fingerprint **fp)
{
    ratchet_identity_key_pair *ikp = NULL;
    ec_public_key *remote = NULL;
    fingerprint_generator *gen = NULL;
    hush_err e = hsdk_local_identity(c, &ikp);
    if (e)
        return e;
    e = HUSH_ERR_INTERNAL;
    if (curve_decode_point(&remote, remote_key, 33, c->sg) != 0)
        goto out;
    if (fingerprint_generator_create(&gen, HUSH_SAFETY_ITERATIONS, 1, c->sg) != 0)
        goto out;
    if (fingerprint_generator_create_for(gen, c->username, ratchet_identity_key_pair_get_public(ikp), peer, remote, fp) != 0)
        goto out;
    e = HUSH_OK;
out:
    fingerprint_generator_free(gen);
    SIGNAL_UNREF(remote);
    SIGNAL_UNREF(ikp);
    return e;
}

static hush_err display_for_key(hush_client *c, const char *peer, const uint8_t key[33], char out[HUSH_SAFETY_NUMBER_LEN + 1])
{
    fingerprint *fp = NULL;
    hush_err e = make_fingerprint(c, peer, key, &fp);
    if (e)
        return e;
    const char *text = displayable_fingerprint_text(fingerprint_get_displayable(fp));
    if (text && strlen(text) == HUSH_SAFETY_NUMBER_LEN)
        memcpy(out, text, HUSH_SAFETY_NUMBER_LEN + 1);
    else
        e = HUSH_ERR_INTERNAL;
    SIGNAL_UNREF(fp);
    return e;
}

static hush_err known_key(hush_client *c, const char *peer, uint32_t dev, uint8_t key[33])
{
    int found = 0;
    hush_err e = hsdk_peer_identity(c, peer, dev, key, &found);
    if (e)
        return e;
    return found ? HUSH_OK : HUSH_ERR_NOT_FOUND;
}

#define SAFETY_PROLOGUE                                                                  \
    if (!c || !hsdk_valid_username(peer) || !hsdk_valid_device(device_id))                  \
        return HUSH_ERR_INVALID_ARG;                                                     \
    hsdk_lock(c);                                                                       \
    hush_err e = c->has_device ? HUSH_OK : HUSH_ERR_NO_DEVICE;                           \
    uint8_t key[33];                                                                     \
    if (e == HUSH_OK)                                                                    \
        e = known_key(c, peer, device_id, key);

hush_err hush_safety_number(hush_client *c, const char *peer, uint32_t device_id, char out[HUSH_SAFETY_NUMBER_LEN + 1])
{
    if (!out)
        return HUSH_ERR_INVALID_ARG;
    out[0] = '\0';
    SAFETY_PROLOGUE
    if (e == HUSH_OK)
        e = display_for_key(c, peer, key, out);
    hsdk_unlock(c);
    return e;
}

hush_err hush_safety_scannable(hush_client *c, const char *peer, uint32_t device_id, uint8_t **out, size_t *out_len)
{
    if (!out || !out_len)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    *out_len = 0;
    SAFETY_PROLOGUE
    fingerprint *fp = NULL;
    signal_buffer *ser = NULL;
    if (e == HUSH_OK)
        e = make_fingerprint(c, peer, key, &fp);
    if (e == HUSH_OK && scannable_fingerprint_serialize(&ser, fingerprint_get_scannable(fp)) != 0)
        e = HUSH_ERR_NOMEM;
    if (e == HUSH_OK) {
        *out = hsdk_alloc(signal_buffer_len(ser));
        if (*out) {
            memcpy(*out, signal_buffer_data(ser), signal_buffer_len(ser));
            *out_len = signal_buffer_len(ser);
        } else {
            e = HUSH_ERR_NOMEM;
        }
    }
    signal_buffer_free(ser);
    SIGNAL_UNREF(fp);
    hsdk_unlock(c);
    return e;
}

hush_err hush_safety_compare(hush_client *c, const char *peer, uint32_t device_id, const uint8_t *scanned, size_t len)
{
    if (!scanned || len == 0 || len > 1024)
        return HUSH_ERR_INVALID_ARG;
    SAFETY_PROLOGUE
    fingerprint *fp = NULL;
    scannable_fingerprint *theirs = NULL;
    if (e == HUSH_OK)
        e = make_fingerprint(c, peer, key, &fp);
    if (e == HUSH_OK) {
        if (scannable_fingerprint_deserialize(&theirs, scanned, len, c->sg) != 0)
            e = HUSH_ERR_SAFETY_MISMATCH;
        else if (scannable_fingerprint_compare(fingerprint_get_scannable(fp), theirs) != 1)
            e = HUSH_ERR_SAFETY_MISMATCH;
    }
    SIGNAL_UNREF(theirs);
    SIGNAL_UNREF(fp);
    hsdk_unlock(c);
    return e;
}

/* The newest key waiting for a decision about (peer, dev). */
static hush_err pending_key(hush_client *c, const char *peer, uint32_t dev, uint8_t key[33])
{
    uint8_t keys[HUSH_MAX_PENDING_KEYS][33];
    size_t n = 0;
    hush_err e = hsdk_pending_candidates(c, peer, dev, keys, NULL, HUSH_MAX_PENDING_KEYS, &n);
    if (!e && n == 0)
        e = HUSH_ERR_NOT_FOUND;
    if (!e)
        memcpy(key, keys[n - 1], 33);
    sodium_memzero(keys, sizeof keys);
    return e;
}

hush_err hush_identity_pending(hush_client *c, const char *peer, uint32_t device_id,
                               char old_safety[HUSH_SAFETY_NUMBER_LEN + 1], char new_safety[HUSH_SAFETY_NUMBER_LEN + 1])
{
    if (!old_safety || !new_safety)
        return HUSH_ERR_INVALID_ARG;
    old_safety[0] = new_safety[0] = '\0';
    if (!c || !hsdk_valid_username(peer) || !hsdk_valid_device(device_id))
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = c->has_device ? HUSH_OK : HUSH_ERR_NO_DEVICE;
    uint8_t key[33];
    if (e == HUSH_OK) {
        /* the key on record for this device, or for a device never seen, the user's known one */
        int found = 0;
        e = hsdk_peer_identity(c, peer, device_id, key, &found);
        if (e == HUSH_OK && !found)
            e = hsdk_peer_identity_other(c, peer, device_id, key, &found);
        if (e == HUSH_OK && !found)
            e = HUSH_ERR_NOT_FOUND;
    }
    uint8_t newkey[33];
    if (e == HUSH_OK)
        e = pending_key(c, peer, device_id, newkey);
    if (e == HUSH_OK)
        e = display_for_key(c, peer, key, old_safety);
    if (e == HUSH_OK)
        e = display_for_key(c, peer, newkey, new_safety);
    hsdk_unlock(c);
    return e;
}

/* Trusts one of the pending keys of (peer, device_id): the one whose safety number is `number`
 * (60 digits), or, when number is NULL, the only one. */
static hush_err accept_key(hush_client *c, const char *peer, uint32_t device_id, const char *number)
{
    uint8_t keys[HUSH_MAX_PENDING_KEYS][33], key[33];
    size_t n = 0;
    hush_err e = hsdk_pending_candidates(c, peer, device_id, keys, NULL, HUSH_MAX_PENDING_KEYS, &n);
    if (!e && n == 0)
        e = HUSH_ERR_NOT_FOUND;
    if (!e && !number) {
        if (n == 1)
            memcpy(key, keys[0], 33);
        else
            e = HUSH_ERR_SAFETY_MISMATCH; /* several keys claim the device: say which one was compared */
    } else if (!e) {
        int found = 0;
        for (size_t i = 0; !e && i < n; i++) {
            char sn[HUSH_SAFETY_NUMBER_LEN + 1];
            e = display_for_key(c, peer, keys[i], sn);
            if (!e && sodium_memcmp(sn, number, HUSH_SAFETY_NUMBER_LEN) == 0) {
                memcpy(key, keys[i], 33);
                found = 1;
            }
        }
        if (!e && !found)
            e = HUSH_ERR_SAFETY_MISMATCH;
    }
    sodium_memzero(keys, sizeof keys);
    if (e)
        return e;
    if ((e = hsdk_begin(c)) == HUSH_OK) {
        /* The old sessions stay (archived by the library when the new key's first message or
         * bundle builds a fresh one), so late messages under the old key still decrypt. */
        e = hsdk_save_peer_identity(c, peer, device_id, key, sizeof key);
        if (e == HUSH_OK)
            e = hsdk_pending_delete(c, peer, device_id);
        if (e == HUSH_OK)
            hsdk_peers_forget(c, peer); /* the accepted device joins at the next send */
        e = hsdk_end(c, e);
    }
    sodium_memzero(key, sizeof key);
    return e;
}

hush_err hush_identity_accept(hush_client *c, const char *peer, uint32_t device_id)
{
    if (!c || !hsdk_valid_username(peer) || !hsdk_valid_device(device_id))
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = accept_key(c, peer, device_id, NULL);
    hsdk_unlock(c);
    if (e == HUSH_OK)
        hsdk_net_wake(c, NET_WAKE_IDENTITY); /* held messages are decrypted, held sends resume */
    return e;
}

hush_err hush_identity_accept_number(hush_client *c, const char *peer, uint32_t device_id, const char *safety_number)
{
    if (!c || !hsdk_valid_username(peer) || !hsdk_valid_device(device_id) || !safety_number)
        return HUSH_ERR_INVALID_ARG;
    /* digits only: spaces and other separators the user typed are skipped */
    char digits[HUSH_SAFETY_NUMBER_LEN + 1];
    size_t n = 0;
    for (const char *p = safety_number; *p; p++) {
        if (*p >= '0' && *p <= '9') {
            if (n == HUSH_SAFETY_NUMBER_LEN)
                return HUSH_ERR_SAFETY_MISMATCH;
            digits[n++] = *p;
        }
    }
    digits[n] = '\0';
    if (n != HUSH_SAFETY_NUMBER_LEN)
        return HUSH_ERR_SAFETY_MISMATCH;
    hsdk_lock(c);
    hush_err e = accept_key(c, peer, device_id, digits);
    hsdk_unlock(c);
    if (e == HUSH_OK)
        hsdk_net_wake(c, NET_WAKE_IDENTITY);
    return e;
}

hush_err hush_identity_reject(hush_client *c, const char *peer, uint32_t device_id)
{
    if (!c || !hsdk_valid_username(peer) || !hsdk_valid_device(device_id))
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    uint8_t key[33];
    hush_err e = pending_key(c, peer, device_id, key);
    if (e == HUSH_OK)
        e = hsdk_pending_delete(c, peer, device_id);
    if (e == HUSH_OK) {
        /* messages held under the rejected key are dropped */
        e = hsdk_held_drop(c, peer, device_id);
    }
    hsdk_unlock(c);
    return e;
}
