/*
 * group.c - sender-key groups. Distribution messages travel inside pairwise sessions, so the
 * sender of a group key is the authenticated pairwise address. Already-seen distribution messages
 * are skipped: re-processing one resets the chain and lets an old group message decrypt twice
 * (docs/LIBSIGNAL-NOTES.md §4).
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <group_cipher.h>
#include <group_session_builder.h>
#include <protocol.h>
#include <sender_key_record.h>
#include <sender_key_state.h>

#include "internal.h"

static signal_protocol_sender_key_name skn_of(const char *group_id, const char *name, uint32_t dev)
{
    signal_protocol_sender_key_name n = { group_id, strlen(group_id), { name, strlen(name), (int32_t)dev } };
    return n;
}

hush_err hsdk_process_skdm(hush_client *c, const char *peer, uint32_t dev, const char *group_id, const uint8_t *skdm,
                            size_t len)
{
    sender_key_distribution_message *m = NULL;
    sender_key_record *rec = NULL;
    group_session_builder *b = NULL;
    signal_protocol_sender_key_name skn = skn_of(group_id, peer, dev);
    hush_err e = HUSH_OK;
    if (sender_key_distribution_message_deserialize(&m, skdm, len, c->sg) != 0)
        return HUSH_ERR_BAD_MESSAGE;
    if (signal_protocol_sender_key_load_key(c->sc, &rec, &skn) != 0) {
        e = c->store_err ? c->store_err : HUSH_ERR_STORAGE;
        goto out;
    }
    sender_key_state *state = NULL;
    if (sender_key_record_get_sender_key_state_by_id(rec, &state, sender_key_distribution_message_get_id(m)) == 0)
        goto out; /* already have this key: skip (no replay window reopened) */
    int rc = group_session_builder_create(&b, c->sc, c->sg);
    if (rc == 0)
        rc = group_session_builder_process_session(b, &skn, m);
    if (rc != 0)
        e = c->store_err ? c->store_err : hsdk_from_signal(rc);
out:
    group_session_builder_free(b);
    SIGNAL_UNREF(rec);
    SIGNAL_UNREF(m);
    return e;
}

hush_err hsdk_group_decrypt(hush_client *c, const char *peer, uint32_t dev, const char *group_id, const uint8_t *ct,
                             size_t len, signal_buffer **plaintext)
{
    sender_key_message *m = NULL;
    group_cipher *gc = NULL;
    signal_protocol_sender_key_name skn = skn_of(group_id, peer, dev);
    int rc = sender_key_message_deserialize(&m, ct, len, c->sg);
    if (rc != 0)
        return HUSH_ERR_BAD_MESSAGE;
    /* Not the key it was encrypted with (libsignal would call that a malformed message): the
     * sender replaced its key and this device was not given the new one. */
    sender_key_record *rec = NULL;
    sender_key_state *state = NULL;
    if (signal_protocol_sender_key_load_key(c->sc, &rec, &skn) != 0) {
        SIGNAL_UNREF(m);
        return c->store_err ? c->store_err : HUSH_ERR_STORAGE;
    }
    int known = !sender_key_record_is_empty(rec) &&
                sender_key_record_get_sender_key_state_by_id(rec, &state, sender_key_message_get_key_id(m)) == 0;
    SIGNAL_UNREF(rec);
    if (!known) {
        SIGNAL_UNREF(m);
        return HUSH_ERR_NO_GROUP_SESSION;
    }
    rc = group_cipher_create(&gc, c->sc, &skn, c->sg);
    if (rc == 0)
        rc = group_cipher_decrypt(gc, m, NULL, plaintext);
    group_cipher_free(gc);
    SIGNAL_UNREF(m);
    if (rc == 0)
        return HUSH_OK;
    if (c->store_err)
        return c->store_err;
    if (rc == SG_ERR_NO_SESSION)
        return HUSH_ERR_NO_GROUP_SESSION;
    return hsdk_from_signal(rc);
}

/* Loads this device's sender-key record for the group; creates the key when there is none (and
 * hands back its distribution message when skdm is not NULL). Caller holds the lock, inside a
 * transaction. */
static hush_err own_key(hush_client *c, const char *group_id, sender_key_distribution_message **skdm)
{
    signal_protocol_sender_key_name self = skn_of(group_id, c->username, c->device_id);
    group_session_builder *b = NULL;
    int rc = group_session_builder_create(&b, c->sc, c->sg);
    sender_key_distribution_message *m = NULL;
    if (rc == 0)
        rc = group_session_builder_create_session(b, &m, &self); /* the existing key, or a new one */
    group_session_builder_free(b);
    if (rc != 0)
        return c->store_err ? c->store_err : hsdk_from_signal(rc);
    if (skdm)
        *skdm = m;
    else
        SIGNAL_UNREF(m);
    return HUSH_OK;
}

hush_err hsdk_group_key_id(hush_client *c, const char *group_id, uint32_t *key_id, int *exists)
{
    signal_protocol_sender_key_name self = skn_of(group_id, c->username, c->device_id);
    sender_key_record *rec = NULL;
    *exists = 0;
    *key_id = 0;
    if (signal_protocol_sender_key_load_key(c->sc, &rec, &self) != 0)
        return c->store_err ? c->store_err : HUSH_ERR_STORAGE;
    sender_key_state *state = NULL;
    if (!sender_key_record_is_empty(rec) && sender_key_record_get_sender_key_state(rec, &state) == 0 && state) {
        *exists = 1;
        *key_id = sender_key_state_get_key_id(state);
    }
    SIGNAL_UNREF(rec);
    return HUSH_OK;
}

hush_err hsdk_group_skdm_envelope(hush_client *c, const char *group_id, const char *member, uint32_t dev,
                                  uint8_t **env, size_t *env_len)
{
    sender_key_distribution_message *skdm = NULL;
    hush_err e = own_key(c, group_id, &skdm);
    if (e)
        return e;
    signal_buffer *ser = ciphertext_message_get_serialized((ciphertext_message *)skdm);
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    randombytes_buf(mid, sizeof mid);
    Hush__Content content = HUSH__CONTENT__INIT;
    content.message_id.data = mid;
    content.message_id.len = sizeof mid;
    content.kind = HUSH__CONTENT_KIND__CONTENT_SENDER_KEY;
    content.body.data = signal_buffer_data(ser);
    content.body.len = signal_buffer_len(ser);
    content.sent_at_ms = hsdk_now_ms();
    content.group_id = (char *)group_id;
    e = hsdk_encrypt_content(c, member, dev, &content, env, env_len);
    SIGNAL_UNREF(skdm);
    return e;
}

hush_err hsdk_group_encrypt_content(hush_client *c, const char *group_id, Hush__Content *content, uint8_t **env,
                                    size_t *env_len)
{
    signal_protocol_sender_key_name self = skn_of(group_id, c->username, c->device_id);
    uint8_t *pt = NULL;
    size_t pt_len = 0;
    group_cipher *gc = NULL;
    ciphertext_message *msg = NULL;
    hush_err e = own_key(c, group_id, NULL);
    if (!e)
        e = hsdk_content_pack(content, &pt, &pt_len);
    if (e)
        goto out;
    int rc = group_cipher_create(&gc, c->sc, &self, c->sg);
    if (rc == 0)
        rc = group_cipher_encrypt(gc, pt, pt_len, &msg);
    if (rc != 0) {
        e = c->store_err ? c->store_err : hsdk_from_signal(rc);
        goto out;
    }
    signal_buffer *ser = ciphertext_message_get_serialized(msg);
    Hush__Envelope ev = HUSH__ENVELOPE__INIT;
    ev.type = HUSH__CIPHER_TYPE__CIPHER_SENDER_KEY;
    ev.ciphertext.data = signal_buffer_data(ser);
    ev.ciphertext.len = signal_buffer_len(ser);
    ev.group_id = (char *)group_id;
    size_t n = hush__envelope__get_packed_size(&ev);
    uint8_t *out = hsdk_alloc(n);
    if (!out) {
        e = HUSH_ERR_NOMEM;
        goto out;
    }
    hush__envelope__pack(&ev, out);
    *env = out;
    *env_len = n;
out:
    if (pt) {
        sodium_memzero(pt, pt_len);
        free(pt);
    }
    SIGNAL_UNREF(msg);
    group_cipher_free(gc);
    return e;
}

hush_err hush_group_distribution(hush_client *c, const char *group_id, const char *member, uint32_t device_id,
                                 uint8_t **envelope, size_t *envelope_len)
{
    if (!envelope || !envelope_len)
        return HUSH_ERR_INVALID_ARG;
    *envelope = NULL;
    *envelope_len = 0;
    if (!c || !hsdk_valid_group_id(group_id) || !hsdk_valid_username(member) || !hsdk_valid_device(device_id))
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = HUSH_ERR_NO_DEVICE;
    if (c->has_device && !(e = hsdk_begin(c))) {
        e = hsdk_group_skdm_envelope(c, group_id, member, device_id, envelope, envelope_len);
        e = hsdk_end(c, e);
        if (e) {
            hush_free(*envelope);
            *envelope = NULL;
            *envelope_len = 0;
        }
    }
    hsdk_unlock(c);
    return e;
}

hush_err hush_group_rotate(hush_client *c, const char *group_id)
{
    if (!c || !hsdk_valid_group_id(group_id))
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = HUSH_ERR_NO_DEVICE;
    if (c->has_device) {
        /* libsignal has no sender-key delete callback (docs/LIBSIGNAL-NOTES.md §2): delete our own row, so the
         * next create_session makes a new key with a new id. */
        e = hsdk_sender_key_forget(c, group_id, c->username, c->device_id);
    }
    hsdk_unlock(c);
    return e;
}

hush_err hush_group_encrypt(hush_client *c, const char *group_id, const uint8_t *body, size_t len,
                            uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES], uint8_t **envelope, size_t *envelope_len)
{
    if (!envelope || !envelope_len)
        return HUSH_ERR_INVALID_ARG;
    *envelope = NULL;
    *envelope_len = 0;
    if (!c || !hsdk_valid_group_id(group_id) || (!body && len))
        return HUSH_ERR_INVALID_ARG;
    if (len > HUSH_MAX_BODY)
        return HUSH_ERR_TOO_BIG;
    hsdk_lock(c);
    hush_err e = HUSH_ERR_NO_DEVICE;
    if (!c->has_device || (e = hsdk_begin(c)))
        goto unlock;
    uint32_t key_id = 0;
    int exists = 0;
    e = hsdk_group_key_id(c, group_id, &key_id, &exists);
    if (!e && !exists)
        e = HUSH_ERR_NO_GROUP_SESSION; /* distribute first */
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    randombytes_buf(mid, sizeof mid);
    Hush__Content content = HUSH__CONTENT__INIT;
    content.message_id.data = mid;
    content.message_id.len = sizeof mid;
    content.kind = HUSH__CONTENT_KIND__CONTENT_TEXT;
    content.body.data = (uint8_t *)body;
    content.body.len = len;
    content.sent_at_ms = hsdk_now_ms();
    content.group_id = (char *)group_id;
    if (!e)
        e = hsdk_history_insert(c, group_id, 0, 1, mid, HUSH_KIND_GROUP_TEXT, group_id, content.sent_at_ms, body, len,
                                NULL, NULL);
    if (!e)
        e = hsdk_group_encrypt_content(c, group_id, &content, envelope, envelope_len);
    e = hsdk_end(c, e);
    if (e) {
        hush_free(*envelope);
        *envelope = NULL;
        *envelope_len = 0;
    } else if (message_id_out) {
        memcpy(message_id_out, mid, sizeof mid);
    }
unlock:
    hsdk_unlock(c);
    return e;
}
