/*
 * session.c - pairwise encrypt / decrypt, identity changes and safety numbers.
 *
 * Every libsignal call that writes runs inside a savepoint (hsdk_begin) and is rolled back on
 * failure: save_identity runs before MAC verification, so without this a tampered PreKey message
 * would leave a saved identity and a consumed prekey behind (docs/LIBSIGNAL-NOTES.md §2).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <curve.h>
#include <fingerprint.h>
#include <protocol.h>
#include <ratchet.h>
#include <session_cipher.h>

#include "internal.h"
#include "net.h"

hush_err hsdk_after_untrusted(hush_client *c);

static int valid_device(uint32_t d) { return d != 0 && d <= INT32_MAX; }

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
    Hush__Content content = HUSH__CONTENT__INIT;
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
    if (!c || !hsdk_valid_username(peer) || !valid_device(device_id) || (!body && len))
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

void hush_message_free(hush_message *m)
{
    if (!m)
        return;
    if (m->body) {
        sodium_memzero(m->body, m->body_len);
        free(m->body);
    }
    sodium_memzero(m, sizeof *m);
    free(m);
}

static hush_err new_message(const char *peer, uint32_t dev, hush_kind kind, const Hush__Content *content,
                            const char *group_id, int64_t local_id, hush_message **out)
{
    hush_message *m = calloc(1, sizeof *m);
    if (!m)
        return HUSH_ERR_NOMEM;
    m->body = malloc(content->body.len + 1);
    if (!m->body) {
        free(m);
        return HUSH_ERR_NOMEM;
    }
    if (content->body.len)
        memcpy(m->body, content->body.data, content->body.len);
    m->body[content->body.len] = '\0';
    m->body_len = content->body.len;
    m->kind = kind;
    snprintf(m->sender, sizeof m->sender, "%s", peer);
    m->sender_device = dev;
    memcpy(m->message_id, content->message_id.data, HUSH_MESSAGE_ID_BYTES);
    m->sent_at_ms = content->sent_at_ms;
    m->received_at_ms = hsdk_now_ms();
    snprintf(m->group_id, sizeof m->group_id, "%s", group_id ? group_id : "");
    m->local_id = local_id;
    *out = m;
    return HUSH_OK;
}

static int content_ok(const Hush__Content *ct)
{
    return ct->message_id.len == HUSH_MESSAGE_ID_BYTES && ct->body.len <= HUSH_MAX_BODY;
}

/* Pairwise decrypt inside an open savepoint. On success *plaintext is set. */
static hush_err pairwise_decrypt(hush_client *c, const signal_protocol_address *addr, Hush__CipherType type,
                                 const uint8_t *ct, size_t len, signal_buffer **plaintext)
{
    session_cipher *cipher = NULL;
    int rc = session_cipher_create(&cipher, c->sc, addr, c->sg);
    if (rc != 0)
        return hsdk_from_signal(rc);
    if (type == HUSH__CIPHER_TYPE__CIPHER_PREKEY) {
        pre_key_signal_message *m = NULL;
        rc = pre_key_signal_message_deserialize(&m, ct, len, c->sg);
        if (rc == 0)
            rc = session_cipher_decrypt_pre_key_signal_message(cipher, m, NULL, plaintext);
        SIGNAL_UNREF(m);
    } else {
        signal_message *m = NULL;
        rc = signal_message_deserialize(&m, ct, len, c->sg);
        if (rc == 0)
            rc = session_cipher_decrypt_signal_message(cipher, m, NULL, plaintext);
        SIGNAL_UNREF(m);
    }
    session_cipher_free(cipher);
    if (rc == 0)
        return HUSH_OK;
    if (rc == SG_ERR_UNTRUSTED_IDENTITY)
        return HUSH_ERR_IDENTITY_CHANGED;
    if (c->store_err)
        return c->store_err;
    return hsdk_from_signal(rc);
}

static hush_err decrypt_locked(hush_client *c, const char *peer, uint32_t dev, const Hush__Envelope *env,
                               hush_message **out)
{
    signal_protocol_address addr = { peer, strlen(peer), (int32_t)dev };
    signal_buffer *pt = NULL;
    Hush__Content *content = NULL;
    hush_err e;
    int is_group = env->type == HUSH__CIPHER_TYPE__CIPHER_SENDER_KEY;

    if (is_group && !hsdk_valid_group_id(env->group_id))
        return HUSH_ERR_BAD_MESSAGE;
    if ((e = hsdk_begin(c)))
        return e;
    if (is_group)
        e = hsdk_group_decrypt(c, peer, dev, env->group_id, env->ciphertext.data, env->ciphertext.len, &pt);
    else
        e = pairwise_decrypt(c, &addr, env->type, env->ciphertext.data, env->ciphertext.len, &pt);
    if (e)
        goto fail;
    content = hush__content__unpack(&hsdk_wiping_allocator, signal_buffer_len(pt), signal_buffer_data(pt));
    if (!content || !content_ok(content)) {
        e = HUSH_ERR_BAD_MESSAGE;
        goto fail;
    }
    int64_t local_id = 0;
    int dup = 0;
    hush_kind kind;
    if (content->kind == HUSH__CONTENT_KIND__CONTENT_TEXT) {
        const char *gid = is_group ? env->group_id : "";
        /* A group message must name the group its envelope claims. */
        if (is_group && strcmp(content->group_id, env->group_id) != 0) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto fail;
        }
        kind = is_group ? HUSH_KIND_GROUP_TEXT : HUSH_KIND_TEXT;
        e = hsdk_history_insert(c, peer, dev, 0, content->message_id.data, kind, gid, content->sent_at_ms,
                                 content->body.data, content->body.len, &local_id, &dup);
    } else if (content->kind == HUSH__CONTENT_KIND__CONTENT_SENDER_KEY && !is_group) {
        if (!hsdk_valid_group_id(content->group_id)) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto fail;
        }
        kind = HUSH_KIND_GROUP_KEY;
        e = hsdk_process_skdm(c, peer, dev, content->group_id, content->body.data, content->body.len);
    } else if (content->kind == HUSH__CONTENT_KIND__CONTENT_RECEIPT && !is_group) {
        /* body: state (1 byte: 2 delivered, 3 read) then 1..256 message ids of ours */
        size_t n = content->body.len;
        if (n < 1 + HUSH_MESSAGE_ID_BYTES || (n - 1) % HUSH_MESSAGE_ID_BYTES != 0 || (n - 1) / HUSH_MESSAGE_ID_BYTES > 256 ||
            (content->body.data[0] != 2 && content->body.data[0] != 3)) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto fail;
        }
        kind = HUSH_KIND_RECEIPT;
        e = hsdk_apply_receipt(c, peer, content->body.data[0], content->body.data + 1, (n - 1) / HUSH_MESSAGE_ID_BYTES);
    } else if (content->kind == HUSH__CONTENT_KIND__CONTENT_TYPING && !is_group) {
        if (content->body.len != 1) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto fail;
        }
        kind = HUSH_KIND_TYPING;
    } else {
        e = HUSH_ERR_BAD_MESSAGE; /* kinds this version does not handle: refuse, state untouched */
    }
    if (e)
        goto fail;
    /* Session state and plaintext become durable together. */
    if ((e = hsdk_commit(c)))
        goto done;
    if (dup) {
        e = HUSH_ERR_DUPLICATE; /* the app already has this message: same id from the same device */
        goto done;
    }
    e = new_message(peer, dev, kind, content, kind == HUSH_KIND_GROUP_KEY ? content->group_id : (is_group ? env->group_id : ""),
                    local_id, out);
    if (kind == HUSH_KIND_GROUP_KEY && e == HUSH_OK)
        (*out)->body_len = 0, (*out)->body[0] = '\0'; /* key material never leaves the SDK */
    goto done;
fail:
    hsdk_rollback(c);
    if (e == HUSH_ERR_IDENTITY_CHANGED)
        e = hsdk_after_untrusted(c);
done:
    if (content)
        hush__content__free_unpacked(content, &hsdk_wiping_allocator);
    signal_buffer_bzero_free(pt);
    return e;
}

hush_err hush_decrypt(hush_client *c, const char *peer, uint32_t device_id, const uint8_t *envelope, size_t len,
                      hush_message **out)
{
    if (!out)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    if (!c || !hsdk_valid_username(peer) || !valid_device(device_id) || (!envelope && len))
        return HUSH_ERR_INVALID_ARG;
    if (len > HUSH_MAX_ENVELOPE)
        return HUSH_ERR_TOO_BIG;
    Hush__Envelope *env = hush__envelope__unpack(NULL, len, envelope);
    if (!env)
        return HUSH_ERR_BAD_MESSAGE;
    hush_err e;
    if ((env->type != HUSH__CIPHER_TYPE__CIPHER_PREKEY && env->type != HUSH__CIPHER_TYPE__CIPHER_SIGNAL &&
         env->type != HUSH__CIPHER_TYPE__CIPHER_SENDER_KEY) ||
        env->ciphertext.len == 0) {
        e = HUSH_ERR_BAD_MESSAGE;
    } else {
        hsdk_lock(c);
        e = c->has_device ? decrypt_locked(c, peer, device_id, env, out) : HUSH_ERR_NO_DEVICE;
        hsdk_unlock(c);
    }
    hush__envelope__free_unpacked(env, NULL);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* safety numbers and identity changes */

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
    if (!c || !hsdk_valid_username(peer) || !valid_device(device_id))                  \
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

hush_err hsdk_pending_candidates(hush_client *c, const char *name, uint32_t dev, uint8_t (*keys)[33], int64_t *cand,
                                  size_t max, size_t *n)
{
    *n = 0;
    sqlite3_stmt *st;
    int row = 0;
    hstore_err se = hstore_prepare(c->db, "SELECT candidate, key FROM pending_identities WHERE name = ?1 AND "
                                          "device_id = ?2 ORDER BY candidate", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, name, (int)strlen(name), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, dev);
    hush_err e = HUSH_OK;
    while (!e && *n < max && (se = hstore_step(c->db, st, &row)) == HSTORE_OK && row) {
        int64_t k = sqlite3_column_int64(st, 0);
        char ad[128];
        hsdk_ad(ad, sizeof ad, "pending_identities", name, strlen(name), dev, k);
        uint8_t *pt = NULL;
        size_t len = 0;
        e = hsdk_open(c, ad, sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1), &pt, &len);
        if (!e && len != 33)
            e = HUSH_ERR_DB_KEY;
        if (!e) {
            memcpy(keys[*n], pt, 33);
            if (cand)
                cand[*n] = k;
            (*n)++;
        }
        if (pt) {
            sodium_memzero(pt, len);
            free(pt);
        }
    }
    sqlite3_reset(st);
    return e ? e : hsdk_from_store(se);
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

static hush_err delete_pending(hush_client *c, const char *peer, uint32_t dev)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "DELETE FROM pending_identities WHERE name = ?1 AND device_id = ?2", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, peer, (int)strlen(peer), SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, dev);
        se = hstore_run(c->db, st);
    }
    return hsdk_from_store(se);
}

hush_err hush_identity_pending(hush_client *c, const char *peer, uint32_t device_id,
                               char old_safety[HUSH_SAFETY_NUMBER_LEN + 1], char new_safety[HUSH_SAFETY_NUMBER_LEN + 1])
{
    if (!old_safety || !new_safety)
        return HUSH_ERR_INVALID_ARG;
    old_safety[0] = new_safety[0] = '\0';
    if (!c || !hsdk_valid_username(peer) || !valid_device(device_id))
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
            e = delete_pending(c, peer, device_id);
        if (e == HUSH_OK)
            hsdk_forget_peer_devices(c, peer); /* the accepted device joins at the next send */
        e = hsdk_end(c, e);
    }
    sodium_memzero(key, sizeof key);
    return e;
}

hush_err hush_identity_accept(hush_client *c, const char *peer, uint32_t device_id)
{
    if (!c || !hsdk_valid_username(peer) || !valid_device(device_id))
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
    if (!c || !hsdk_valid_username(peer) || !valid_device(device_id) || !safety_number)
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
    if (!c || !hsdk_valid_username(peer) || !valid_device(device_id))
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    uint8_t key[33];
    hush_err e = pending_key(c, peer, device_id, key);
    if (e == HUSH_OK)
        e = delete_pending(c, peer, device_id);
    if (e == HUSH_OK) {
        /* messages held under the rejected key are dropped */
        sqlite3_stmt *st;
        hstore_err se = hstore_prepare(c->db, "DELETE FROM pending_inbox WHERE peer = ?1 AND device_id = ?2", &st);
        if (!se) {
            sqlite3_bind_text(st, 1, peer, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 2, device_id);
            se = hstore_run(c->db, st);
        }
        e = hsdk_from_store(se);
    }
    hsdk_unlock(c);
    return e;
}
