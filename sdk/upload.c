/*
 * upload.c - what a device hands the relay: its identity key, login proofs and prekey uploads.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <curve.h>
#include <ratchet.h>
#include <session_pre_key.h>

#include "hush_wire.h"
#include "internal.h"

hush_err hush_device_identity_key(hush_client *c, uint8_t out[33])
{
    if (!c || !out)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    ratchet_identity_key_pair *ikp = NULL;
    signal_buffer *pub = NULL;
    hush_err e = hsdk_local_identity(c, &ikp);
    if (!e && ec_public_key_serialize(&pub, ratchet_identity_key_pair_get_public(ikp)) != 0)
        e = HUSH_ERR_NOMEM;
    if (!e && signal_buffer_len(pub) == 33)
        memcpy(out, signal_buffer_data(pub), 33);
    else if (!e)
        e = HUSH_ERR_INTERNAL;
    signal_buffer_free(pub);
    SIGNAL_UNREF(ikp);
    hsdk_unlock(c);
    return e;
}

hush_err hush_auth_proof(hush_client *c, const char *purpose, const char *origin, const uint8_t *binding,
                         size_t binding_len, const uint8_t *register_digest, const uint8_t challenge[32], uint8_t sig[64])
{
    if (!c || !purpose || !origin || !*origin || !challenge || !sig || (binding_len && !binding) ||
        (binding_len != 0 && binding_len != HWIRE_BINDING_BYTES) ||
        (strcmp(purpose, HWIRE_PURPOSE_LOGIN) != 0 && strcmp(purpose, HWIRE_PURPOSE_REGISTER) != 0) ||
        (!strcmp(purpose, HWIRE_PURPOSE_REGISTER) != (register_digest != NULL)))
        return HUSH_ERR_INVALID_ARG;
    if (sodium_is_zero(challenge, HWIRE_CHALLENGE_BYTES))
        return HUSH_ERR_INVALID_ARG; /* a relay makes 32 random bytes; all zeros is a trick */
    hsdk_lock(c);
    hush_err e = HUSH_ERR_NO_DEVICE;
    if (c->has_device) {
        uint8_t msg[HWIRE_AUTH_MESSAGE_MAX];
        size_t n = hwire_auth_message(msg, sizeof msg, purpose, origin, binding, binding_len, challenge, c->username,
                                      c->device_id, register_digest);
        e = n ? hsdk_auth_sign(c, msg, n, sig) : HUSH_ERR_INVALID_ARG;
    }
    hsdk_unlock(c);
    return e;
}

/* Loads a prekey's public half into a PreKey message (public_key points into *buf). */
static hush_err load_pre_key_pub(hush_client *c, uint32_t id, Hush__PreKey *pk, signal_buffer **buf)
{
    session_pre_key *k = NULL;
    if (signal_protocol_pre_key_load_key(c->sc, &k, id) != 0)
        return c->store_err ? c->store_err : HUSH_ERR_STORAGE;
    int rc = ec_public_key_serialize(buf, ec_key_pair_get_public(session_pre_key_get_key_pair(k)));
    SIGNAL_UNREF(k);
    if (rc)
        return HUSH_ERR_NOMEM;
    hush__pre_key__init(pk);
    pk->id = id;
    pk->public_key.data = signal_buffer_data(*buf);
    pk->public_key.len = signal_buffer_len(*buf);
    return HUSH_OK;
}

static hush_err upload_locked(hush_client *c, uint32_t max_one_time, uint8_t **out, size_t *out_len, uint32_t *count)
{
    hush_err e;
    Hush__SignedPreKey s;
    session_signed_pre_key *spk = NULL;
    signal_buffer *spk_pub = NULL, *lr_buf = NULL;
    uint32_t *ids = NULL;
    size_t nids = 0;
    Hush__PreKey *keys = NULL, **key_ptrs = NULL;
    signal_buffer **bufs = NULL;

    if ((e = hsdk_begin(c)))
        return e;
    if ((e = hsdk_current_signed_pre_key(c, &spk, &spk_pub, &s)))
        goto fail;
    ids = calloc(max_one_time ? max_one_time : 1, sizeof *ids);
    if (!ids) {
        e = HUSH_ERR_NOMEM;
        goto fail;
    }
    if ((e = hsdk_prekeys_unexported(c, ids, max_one_time, &nids)))
        goto fail;
    keys = calloc(nids ? nids : 1, sizeof *keys);
    key_ptrs = calloc(nids ? nids : 1, sizeof *key_ptrs);
    bufs = calloc(nids ? nids : 1, sizeof *bufs);
    if (!keys || !key_ptrs || !bufs) {
        e = HUSH_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < nids; i++) {
        if ((e = load_pre_key_pub(c, ids[i], &keys[i], &bufs[i])))
            goto fail;
        key_ptrs[i] = &keys[i];
        if ((e = hsdk_prekey_mark_exported(c, ids[i], 1)))
            goto fail;
    }
    Hush__PreKey lr;
    if ((e = load_pre_key_pub(c, HUSH_LAST_RESORT_PREKEY_ID, &lr, &lr_buf)))
        goto fail;
    Hush__PreKeyUpload up = HUSH__PRE_KEY_UPLOAD__INIT;
    up.signed_pre_key = &s;
    up.n_one_time_pre_keys = nids;
    up.one_time_pre_keys = key_ptrs;
    up.last_resort = &lr;
    size_t n = hush__pre_key_upload__get_packed_size(&up);
    uint8_t *buf = hsdk_alloc(n);
    if (!buf) {
        e = HUSH_ERR_NOMEM;
        goto fail;
    }
    hush__pre_key_upload__pack(&up, buf);
    if ((e = hsdk_commit(c))) {
        hush_free(buf);
        goto done;
    }
    *out = buf;
    *out_len = n;
    if (count)
        *count = (uint32_t)nids;
    goto done;
fail:
    hsdk_rollback(c);
done:
    for (size_t i = 0; bufs && i < nids; i++)
        signal_buffer_free(bufs[i]);
    free(bufs);
    free(keys);
    free(key_ptrs);
    free(ids);
    signal_buffer_free(lr_buf);
    signal_buffer_free(spk_pub);
    SIGNAL_UNREF(spk);
    return e;
}

hush_err hush_prekey_upload(hush_client *c, uint32_t max_one_time, uint8_t **out, size_t *out_len, uint32_t *count)
{
    if (!out || !out_len)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    *out_len = 0;
    if (count)
        *count = 0;
    if (!c || max_one_time > 1000)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = c->has_device ? upload_locked(c, max_one_time, out, out_len, count) : HUSH_ERR_NO_DEVICE;
    hsdk_unlock(c);
    return e;
}
