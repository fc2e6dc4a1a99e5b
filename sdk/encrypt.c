/*
 * encrypt.c - pairwise encryption: a Content message sealed for one device of a peer with its
 * Signal session, as an Envelope. The new session state (and, for a text, the history row) is
 * committed before the envelope is handed out, so a ciphertext never leaves with a state that
 * could roll back.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <protocol.h>
#include <session_cipher.h>

#include "internal.h"

hush_err hsdk_content_pack(Hush__Content *content, uint8_t **out, size_t *len)
{
    /* Pad to a multiple of 32 bytes (approximately: the padding field's own header counts). */
    static const uint8_t zeros[64];
    content->padding.data = NULL;
    content->padding.len = 0;
    size_t n = hush__content__get_packed_size(content);
    size_t pad = (32 - ((n + 2) % 32)) % 32;
    if (pad == 0)
        pad = 32; /* an empty padding field is not encoded at all: the size would stay 30 mod 32 */
    content->padding.data = (uint8_t *)zeros;
    content->padding.len = pad;
    n = hush__content__get_packed_size(content);
    uint8_t *buf = malloc(n);
    if (!buf)
        return HUSH_ERR_NOMEM;
    hush__content__pack(content, buf);
    *out = buf;
    *len = n;
    return HUSH_OK;
}

static hush_err pack_envelope(Hush__CipherType type, const uint8_t *ct, size_t ct_len, const char *group_id,
                              uint8_t **out, size_t *out_len)
{
    Hush__Envelope env = HUSH__ENVELOPE__INIT;
    env.type = type;
    env.ciphertext.data = (uint8_t *)ct;
    env.ciphertext.len = ct_len;
    if (group_id)
        env.group_id = (char *)group_id;
    size_t n = hush__envelope__get_packed_size(&env);
    uint8_t *buf = hsdk_alloc(n);
    if (!buf)
        return HUSH_ERR_NOMEM;
    hush__envelope__pack(&env, buf);
    *out = buf;
    *out_len = n;
    return HUSH_OK;
}

/* Encrypts a Content for (peer, dev). Caller holds the lock and an open savepoint. */
hush_err hsdk_encrypt_content(hush_client *c, const char *peer, uint32_t dev, Hush__Content *content, uint8_t **env,
                               size_t *env_len)
{
    signal_protocol_address addr = { peer, strlen(peer), (int32_t)dev };
    int has = signal_protocol_session_contains_session(c->sc, &addr);
    if (has < 0)
        return c->store_err ? c->store_err : HUSH_ERR_STORAGE;
    if (has == 0)
        return HUSH_ERR_NO_SESSION; /* the library would say SG_ERR_UNKNOWN (docs/LIBSIGNAL-NOTES.md §3) */
    uint8_t *pt = NULL;
    size_t pt_len = 0;
    hush_err e = hsdk_content_pack(content, &pt, &pt_len);
    if (e)
        return e;
    session_cipher *cipher = NULL;
    ciphertext_message *msg = NULL;
    int rc = session_cipher_create(&cipher, c->sc, &addr, c->sg);
    if (rc == 0)
        rc = session_cipher_encrypt(cipher, pt, pt_len, &msg);
    sodium_memzero(pt, pt_len);
    free(pt);
    if (rc != 0) {
        e = c->store_err ? c->store_err : hsdk_from_signal(rc);
        goto out;
    }
    int type = ciphertext_message_get_type(msg);
    signal_buffer *ser = ciphertext_message_get_serialized(msg);
    e = pack_envelope(type == CIPHERTEXT_PREKEY_TYPE ? HUSH__CIPHER_TYPE__CIPHER_PREKEY : HUSH__CIPHER_TYPE__CIPHER_SIGNAL,
                      signal_buffer_data(ser), signal_buffer_len(ser), NULL, env, env_len);
out:
    SIGNAL_UNREF(msg);
    session_cipher_free(cipher);
    return e;
}

/* Encrypts a Content of `kind` for one device and commits the new session state (and, when
 * `history` is set, the outgoing history row) before returning the envelope. Caller holds the lock. */
hush_err hsdk_encrypt_kind(hush_client *c, const char *peer, uint32_t device_id, int kind, const uint8_t *body,
                            size_t len, const uint8_t mid[HUSH_MESSAGE_ID_BYTES], int history, uint8_t **envelope,
                            size_t *envelope_len)
{
    return hsdk_encrypt_sync(c, peer, device_id, kind, body, len, mid, history, NULL, envelope, envelope_len);
}

hush_err hsdk_encrypt_sync(hush_client *c, const char *peer, uint32_t device_id, int kind, const uint8_t *body,
                            size_t len, const uint8_t mid[HUSH_MESSAGE_ID_BYTES], int history, const char *sync_peer,
                            uint8_t **envelope, size_t *envelope_len)
{
    Hush__Content content = HUSH__CONTENT__INIT;
    if (sync_peer)
        content.sync_peer = (char *)sync_peer;
    content.message_id.data = (uint8_t *)mid;
    content.message_id.len = HUSH_MESSAGE_ID_BYTES;
    content.kind = (Hush__ContentKind)kind;
    content.body.data = (uint8_t *)body;
    content.body.len = len;
    content.sent_at_ms = hsdk_now_ms();
    uint8_t *env = NULL;
    size_t env_len = 0;
    hush_err e;
    if (!c->has_device)
        return HUSH_ERR_NO_DEVICE;
    if ((e = hsdk_begin(c)))
        return e;
    e = hsdk_encrypt_content(c, peer, device_id, &content, &env, &env_len);
    if (e == HUSH_OK && history)
        e = hsdk_history_insert(c, peer, 0, 1, mid, HUSH_KIND_TEXT, "", content.sent_at_ms, body, len, NULL, NULL);
    if (e) {
        hsdk_rollback(c);
        hush_free(env);
        return e;
    }
    /* The new ratchet state is durable before the ciphertext exists for the caller. */
    if ((e = hsdk_commit(c))) {
        hush_free(env);
        return e;
    }
    *envelope = env;
    *envelope_len = env_len;
    return HUSH_OK;
}

hush_err hush_encrypt(hush_client *c, const char *peer, uint32_t device_id, const uint8_t *body, size_t len,
                      const uint8_t message_id[HUSH_MESSAGE_ID_BYTES], uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES],
                      uint8_t **envelope, size_t *envelope_len)
{
    if (!envelope || !envelope_len)
        return HUSH_ERR_INVALID_ARG;
    *envelope = NULL;
    *envelope_len = 0;
    if (!c || !hsdk_valid_username(peer) || !hsdk_valid_device(device_id) || (!body && len))
        return HUSH_ERR_INVALID_ARG;
    if (len > HUSH_MAX_BODY)
        return HUSH_ERR_TOO_BIG;
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    if (message_id)
        memcpy(mid, message_id, sizeof mid);
    else
        randombytes_buf(mid, sizeof mid);
    hsdk_lock(c);
    hush_err e = hsdk_encrypt_kind(c, peer, device_id, HUSH__CONTENT_KIND__CONTENT_TEXT, body, len, mid, 1, envelope,
                                    envelope_len);
    hsdk_unlock(c);
    if (e == HUSH_OK && message_id_out)
        memcpy(message_id_out, mid, sizeof mid);
    return e;
}
