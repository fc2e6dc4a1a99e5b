/*
 * client.c - opening and closing a client, the local device, bundles.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include <curve.h>
#include <key_helper.h>
#include <ratchet.h>
#include <session_builder.h>
#include <session_pre_key.h>

#include "hush_wire.h"
#include "internal.h"

#define KEYCHECK_PLAINTEXT "hush database key check v1"
#define KEYCHECK_AD "hush1|meta|keycheck"

static void sg_lock(void *ud) { hsdk_lock(ud); }
static void sg_unlock(void *ud) { hsdk_unlock(ud); }

/* ---------------------------------------------------------------------------------------- */
/* open / close */

static hush_err load_device(hush_client *c)
{
    int found = 0;
    hush_err e = hsdk_device_load(c, c->username, &c->device_id, &c->registration_id, &found);
    if (!e && found)
        c->has_device = 1;
    return e;
}

/* This database's id (meta 'db_id'): on a new database or the upgrade, a fresh random one. */
static hush_err load_db_id(hush_client *c, int make)
{
    if (make) {
        randombytes_buf(c->db_id, sizeof c->db_id);
        return hsdk_meta_set_blob(c, "db_id", c->db_id, sizeof c->db_id);
    }
    uint8_t *b = NULL;
    size_t n = 0;
    hush_err e = hsdk_meta_get_blob(c, "db_id", &b, &n);
    if (!e && (!b || n != sizeof c->db_id))
        e = HUSH_ERR_DB_KEY; /* no value can open without it */
    if (!e)
        memcpy(c->db_id, b, sizeof c->db_id);
    free(b);
    return e;
}

static hush_err write_key_check(hush_client *c)
{
    uint8_t *ct = NULL;
    size_t clen = 0;
    hush_err e = hsdk_seal(c, KEYCHECK_AD, (const uint8_t *)KEYCHECK_PLAINTEXT, strlen(KEYCHECK_PLAINTEXT), &ct,
                           &clen);
    if (!e)
        e = hsdk_meta_set_blob(c, "keycheck", ct, clen);
    free(ct);
    return e;
}

static hush_err open_key_check(hush_client *c)
{
    uint8_t *check = NULL, *pt = NULL;
    size_t check_len = 0, len = 0;
    hush_err e = hsdk_meta_get_blob(c, "keycheck", &check, &check_len);
    if (!e)
        e = hsdk_open(c, KEYCHECK_AD, check, check_len, &pt, &len);
    free(check);
    if (!e && (len != strlen(KEYCHECK_PLAINTEXT) || memcmp(pt, KEYCHECK_PLAINTEXT, len) != 0))
        e = HUSH_ERR_DB_KEY;
    free(pt);
    return e;
}

/* Verifies the database key against a sealed check value and the tracked rows against their
 * sealed digest, all in one transaction (another process may be writing). A new database gets
 * its id, check value and digest; one written before the database id existed is sealed again
 * under it (the check value fails first when the key is wrong, and nothing is changed). */
static hush_err check_key_locked(hush_client *c)
{
    uint8_t *check = NULL;
    size_t check_len = 0;
    hush_err e = hsdk_meta_get_blob(c, "keycheck", &check, &check_len);
    if (e)
        return e;
    int version = check ? hsdk_seal_version(check, check_len) : 0;
    free(check);
    if (version == 2) {
        if ((e = load_db_id(c, 0)) || (e = open_key_check(c)) || (e = hsdk_schema_check(c)))
            return e;
        return hsdk_rowdigest_verify(c);
    }
    if (version == 1) {
        if ((e = load_db_id(c, 1)) || (e = hsdk_stores_reseal_v1(c)) || (e = hsdk_history_reseal_v1(c)) ||
            (e = open_key_check(c)) || (e = hsdk_schema_check(c)))
            return e;
        return hsdk_rowdigest_reset(c);
    }
    if (check)
        return HUSH_ERR_DB_KEY; /* a format this version does not know */
    /* No check value: a new database — unless sealed data is already there, which means the check
     * row was deleted (to make a wrong key "work" and write a new check under it). The one query
     * that reads other files' tables, and only counts their rows. */
    int64_t sealed_rows = 0;
    e = hsdk_query_int(c, "SELECT (SELECT count(*) FROM local_device) + (SELECT count(*) FROM identities) + "
                          "(SELECT count(*) FROM sessions) + (SELECT count(*) FROM history)", NULL, &sealed_rows);
    if (e)
        return e;
    if (sealed_rows > 0)
        return HUSH_ERR_DB_KEY;
    if ((e = load_db_id(c, 1)) || (e = write_key_check(c)) || (e = hsdk_schema_check(c)))
        return e;
    return hsdk_rowdigest_reset(c);
}

static hush_err check_key(hush_client *c)
{
    hsdk_lock(c);
    hush_err e = hsdk_begin(c);
    if (!e)
        e = hsdk_end(c, check_key_locked(c));
    hsdk_unlock(c);
    return e;
}

hush_err hush_client_open(const char *db_path, const uint8_t db_key[HUSH_DB_KEY_BYTES], const hush_open_opts *opts,
                          hush_client **out)
{
    if (!out)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    if (!db_path || !db_key || strlen(db_path) + 7 >= sizeof ((hush_client *)0)->files_dir)
        return HUSH_ERR_INVALID_ARG;
    hush_err e = hsdk_selftest();
    if (e)
        return e;
    hush_client *c = calloc(1, sizeof *c);
    if (!c)
        return HUSH_ERR_NOMEM;
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    /* Recursive: libsignal's decrypt takes the lock twice (docs/LIBSIGNAL-NOTES.md §6). */
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&c->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    pthread_mutex_init(&c->net_mu, NULL);

    /* Derive the sealing key so the app's key is never used directly. */
    crypto_kdf_derive_from_key(c->seal_key, sizeof c->seal_key, 1, "hushseal", db_key);

    hstore_opts so = {
        .synchronous = (opts && opts->durability == HUSH_DURABILITY_NORMAL) ? HSTORE_SYNC_NORMAL : HSTORE_SYNC_FULL,
        .busy_timeout_ms = 5000,
        .quick_check = 1,
        .read_only = 0,
        .secure_delete = 1,
        .connected = hsdk_seal_functions_install,
        .connected_ctx = c,
    };
    char errbuf[256];
    snprintf(c->files_dir, sizeof c->files_dir, "%s.files", db_path);
    hstore_err se = hstore_open(db_path, &so, hsdk_migrations, hsdk_nmigrations, &c->db, errbuf, sizeof errbuf);
    if (se) {
        e = hsdk_from_store(se);
        goto fail;
    }
    if ((e = check_key(c)))
        goto fail;
    if ((e = load_device(c)))
        goto fail;
    if (signal_context_create(&c->sg, c) != 0 || hsdk_provider_install(c->sg) != 0 ||
        signal_context_set_locking_functions(c->sg, sg_lock, sg_unlock) != 0 || hsdk_stores_install(c) != 0) {
        e = HUSH_ERR_NOMEM;
        goto fail;
    }
    hsdk_files_prune(c); /* what a deleted message or a crash left in the files directory */
    *out = c;
    return HUSH_OK;
fail:
    hush_client_close(c);
    return e;
}

void hush_client_close(hush_client *c)
{
    if (!c)
        return;
    hsdk_net_stop(c); /* the network thread, if it ever started */
    if (c->db && hstore_truncate_wal(c->db) != HSTORE_OK) {
        /* best effort: the WAL is removed at close anyway when no other connection is open */
    }
    if (c->sc)
        signal_protocol_store_context_destroy(c->sc);
    if (c->sg)
        signal_context_destroy(c->sg);
    hstore_close(c->db);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->net_mu);
    sodium_memzero(c, sizeof *c);
    free(c);
}

hush_err hush_client_check(hush_client *c)
{
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = hsdk_from_store(hstore_integrity_check(c->db));
    hsdk_unlock(c);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* device */

static hush_err store_signed_pre_key(hush_client *c, ratchet_identity_key_pair *ikp, uint32_t id)
{
    session_signed_pre_key *spk = NULL;
    int rc = signal_protocol_key_helper_generate_signed_pre_key(&spk, ikp, id, hsdk_now_ms(), c->sg);
    if (rc)
        return hsdk_from_signal(rc);
    rc = signal_protocol_signed_pre_key_store_key(c->sc, spk);
    SIGNAL_UNREF(spk);
    if (rc)
        return c->store_err ? c->store_err : HUSH_ERR_STORAGE;
    return hsdk_meta_set_int(c, "current_signed_pre_key", id);
}

/* A new device: a fresh identity key pair, or (linking) the account's own (id_pub 33 bytes,
 * id_priv 32 bytes); its own registration id, auth key and prekeys either way. */
static hush_err create_device_locked(hush_client *c, const char *username, uint32_t device_id, const uint8_t *id_pub,
                                     const uint8_t *id_priv)
{
    hush_err e;
    ratchet_identity_key_pair *ikp = NULL;
    signal_buffer *pub = NULL, *priv = NULL;
    signal_protocol_key_helper_pre_key_list_node *head = NULL;
    ec_key_pair *lr_pair = NULL;
    session_pre_key *lr = NULL;
    uint8_t *sealed = NULL, *sealed_auth = NULL;
    size_t sealed_len = 0, sealed_auth_len = 0;
    uint8_t auth_pk[crypto_sign_PUBLICKEYBYTES], auth_sk[crypto_sign_SECRETKEYBYTES];
    uint32_t reg_id = 0;
    int rc;

    if ((e = hsdk_begin(c)))
        return e;
    e = HUSH_ERR_NOMEM;
    if (id_pub) {
        ec_public_key *pk = NULL;
        ec_private_key *sk = NULL;
        rc = curve_decode_point(&pk, id_pub, 33, c->sg);
        if (rc == 0)
            rc = curve_decode_private_point(&sk, id_priv, 32, c->sg);
        if (rc == 0)
            rc = ratchet_identity_key_pair_create(&ikp, pk, sk);
        SIGNAL_UNREF(pk);
        SIGNAL_UNREF(sk);
        if (rc) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto out;
        }
    }
    if ((!id_pub && (rc = signal_protocol_key_helper_generate_identity_key_pair(&ikp, c->sg))) ||
        (rc = signal_protocol_key_helper_generate_registration_id(&reg_id, 0, c->sg)) ||
        (rc = ec_public_key_serialize(&pub, ratchet_identity_key_pair_get_public(ikp))) ||
        (rc = ec_private_key_serialize(&priv, ratchet_identity_key_pair_get_private(ikp)))) {
        e = hsdk_from_signal(rc);
        goto out;
    }
    crypto_sign_keypair(auth_pk, auth_sk);
    if ((e = hsdk_seal(c, "hush1|local_device|identity_private", signal_buffer_data(priv), signal_buffer_len(priv),
                        &sealed, &sealed_len)) ||
        (e = hsdk_seal(c, "hush1|local_device|auth_secret", auth_sk, sizeof auth_sk, &sealed_auth, &sealed_auth_len)))
        goto out;

    if ((e = hsdk_device_insert(c, username, device_id, reg_id, signal_buffer_data(pub), signal_buffer_len(pub), sealed,
                                sealed_len, auth_pk, sealed_auth, sealed_auth_len)))
        goto out;

    /* One-time prekeys 1..100, then the last-resort key, then the signed prekey. */
    if ((rc = signal_protocol_key_helper_generate_pre_keys(&head, 1, HUSH_ONE_TIME_PREKEYS, c->sg))) {
        e = hsdk_from_signal(rc);
        goto out;
    }
    for (signal_protocol_key_helper_pre_key_list_node *n = head; n; n = signal_protocol_key_helper_key_list_next(n)) {
        if (signal_protocol_pre_key_store_key(c->sc, signal_protocol_key_helper_key_list_element(n)) != 0) {
            e = c->store_err ? c->store_err : HUSH_ERR_STORAGE;
            goto out;
        }
    }
    if ((rc = curve_generate_key_pair(c->sg, &lr_pair)) ||
        (rc = session_pre_key_create(&lr, HUSH_LAST_RESORT_PREKEY_ID, lr_pair))) {
        e = hsdk_from_signal(rc);
        goto out;
    }
    if (signal_protocol_pre_key_store_key(c->sc, lr) != 0) {
        e = c->store_err ? c->store_err : HUSH_ERR_STORAGE;
        goto out;
    }
    if ((e = store_signed_pre_key(c, ikp, 1)) || (e = hsdk_meta_set_int(c, "next_pre_key", HUSH_ONE_TIME_PREKEYS + 1)) ||
        (e = hsdk_meta_set_int(c, "next_signed_pre_key", 2)))
        goto out;
    e = hsdk_commit(c);
    if (e == HUSH_OK) {
        snprintf(c->username, sizeof c->username, "%s", username);
        c->device_id = device_id;
        c->registration_id = reg_id;
        c->has_device = 1;
    }
    goto done;
out:
    hsdk_rollback(c);
done:
    sodium_memzero(auth_sk, sizeof auth_sk);
    free(sealed);
    free(sealed_auth);
    signal_buffer_free(pub);
    signal_buffer_bzero_free(priv);
    signal_protocol_key_helper_key_list_free(head);
    SIGNAL_UNREF(lr);
    SIGNAL_UNREF(lr_pair);
    SIGNAL_UNREF(ikp);
    return e;
}

hush_err hush_device_create(hush_client *c, const char *username, uint32_t device_id)
{
    if (!c || !hsdk_valid_username(username) || device_id == 0 || device_id > INT32_MAX)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = c->has_device ? HUSH_ERR_DEVICE_EXISTS : create_device_locked(c, username, device_id, NULL, NULL);
    hsdk_unlock(c);
    return e;
}

void hsdk_forget_device(hush_client *c)
{
    c->has_device = 0;
    c->username[0] = '\0';
    c->device_id = 0;
    c->registration_id = 0;
}

hush_err hsdk_device_create_linked(hush_client *c, const char *username, uint32_t device_id, const uint8_t id_pub[33],
                                   const uint8_t id_priv[32])
{
    if (!hsdk_valid_username(username) || device_id == 0 || device_id > INT32_MAX)
        return HUSH_ERR_INVALID_ARG;
    return c->has_device ? HUSH_ERR_DEVICE_EXISTS : create_device_locked(c, username, device_id, id_pub, id_priv);
}

hush_err hush_device_info(hush_client *c, char username[HUSH_USERNAME_MAX + 1], uint32_t *device_id,
                          uint32_t *registration_id)
{
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = HUSH_ERR_NO_DEVICE;
    if (c->has_device) {
        if (username)
            memcpy(username, c->username, sizeof c->username);
        if (device_id)
            *device_id = c->device_id;
        if (registration_id)
            *registration_id = c->registration_id;
        e = HUSH_OK;
    }
    hsdk_unlock(c);
    return e;
}

hush_err hush_device_auth_key(hush_client *c, uint8_t pub[32])
{
    if (!c || !pub)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = c->has_device ? hsdk_device_auth_public(c, pub) : HUSH_ERR_NO_DEVICE;
    hsdk_unlock(c);
    return e;
}

hush_err hsdk_auth_sign(hush_client *c, const uint8_t *msg, size_t len, uint8_t sig[64])
{
    if (!c || (!msg && len) || !sig)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = HUSH_ERR_NO_DEVICE;
    if (c->has_device) {
        uint8_t *sk = NULL;
        size_t sk_len = 0;
        e = hsdk_device_auth_secret(c, &sk, &sk_len);
        if (!e && sk_len != crypto_sign_SECRETKEYBYTES)
            e = HUSH_ERR_DB_KEY;
        if (!e)
            crypto_sign_detached(sig, NULL, msg, len, sk);
        if (sk) {
            sodium_memzero(sk, sk_len);
            free(sk);
        }
    }
    hsdk_unlock(c);
    return e;
}

hush_err hush_prekeys_remaining(hush_client *c, uint32_t *count)
{
    if (!c || !count)
        return HUSH_ERR_INVALID_ARG;
    *count = 0;
    hsdk_lock(c);
    uint32_t unpublished = 0;
    hush_err e = hsdk_prekey_stock(c, &unpublished, count);
    hsdk_unlock(c);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* bundles */

static hush_err pick_pre_key(hush_client *c, uint32_t *id)
{
    size_t n = 0;
    hush_err e = hsdk_prekeys_unexported(c, id, 1, &n);
    if (e)
        return e;
    if (n == 0) {
        *id = HUSH_LAST_RESORT_PREKEY_ID;
        return HUSH_OK;
    }
    return hsdk_prekey_mark_exported(c, *id, 1);
}

hush_err hsdk_current_signed_pre_key(hush_client *c, session_signed_pre_key **spk, signal_buffer **pub,
                                      Hush__SignedPreKey *out)
{
    int64_t id = 0;
    int found = 0;
    *spk = NULL;
    *pub = NULL;
    hush_err e = hsdk_meta_get_int(c, "current_signed_pre_key", &id, &found);
    if (e)
        return e;
    if (!found)
        return HUSH_ERR_NO_DEVICE;
    if (signal_protocol_signed_pre_key_load_key(c->sc, spk, (uint32_t)id) != 0)
        return c->store_err ? c->store_err : HUSH_ERR_STORAGE;
    if (ec_public_key_serialize(pub, ec_key_pair_get_public(session_signed_pre_key_get_key_pair(*spk))) != 0) {
        SIGNAL_UNREF(*spk);
        *spk = NULL;
        return HUSH_ERR_NOMEM;
    }
    hush__signed_pre_key__init(out);
    out->id = (uint32_t)id;
    out->public_key.data = signal_buffer_data(*pub);
    out->public_key.len = signal_buffer_len(*pub);
    out->signature.data = (uint8_t *)session_signed_pre_key_get_signature(*spk);
    out->signature.len = session_signed_pre_key_get_signature_len(*spk);
    out->timestamp_ms = session_signed_pre_key_get_timestamp(*spk);
    return HUSH_OK;
}

static hush_err export_locked(hush_client *c, uint8_t **out, size_t *out_len)
{
    hush_err e;
    uint32_t pk_id = 0;
    session_pre_key *pk = NULL;
    session_signed_pre_key *spk = NULL;
    ratchet_identity_key_pair *ikp = NULL;
    signal_buffer *pk_pub = NULL, *spk_pub = NULL, *id_pub = NULL;
    uint8_t auth[32];
    Hush__SignedPreKey s;

    if ((e = hsdk_begin(c)))
        return e;
    if ((e = hsdk_current_signed_pre_key(c, &spk, &spk_pub, &s)) || (e = pick_pre_key(c, &pk_id)) ||
        (e = hsdk_local_identity(c, &ikp)) || (e = hush_device_auth_key(c, auth)))
        goto out;
    if (signal_protocol_pre_key_load_key(c->sc, &pk, pk_id) != 0) {
        e = c->store_err ? c->store_err : HUSH_ERR_STORAGE;
        goto out;
    }
    if (ec_public_key_serialize(&pk_pub, ec_key_pair_get_public(session_pre_key_get_key_pair(pk))) != 0 ||
        ec_public_key_serialize(&id_pub, ratchet_identity_key_pair_get_public(ikp)) != 0) {
        e = HUSH_ERR_NOMEM;
        goto out;
    }
    Hush__KeyBundle b = HUSH__KEY_BUNDLE__INIT;
    Hush__PreKey p = HUSH__PRE_KEY__INIT;
    b.username = c->username;
    b.device_id = c->device_id;
    b.registration_id = c->registration_id;
    b.identity_key.data = signal_buffer_data(id_pub);
    b.identity_key.len = signal_buffer_len(id_pub);
    b.signed_pre_key = &s;
    p.id = pk_id;
    p.public_key.data = signal_buffer_data(pk_pub);
    p.public_key.len = signal_buffer_len(pk_pub);
    b.one_time_pre_key = &p;
    b.auth_key.data = auth;
    b.auth_key.len = sizeof auth;
    size_t n = hush__key_bundle__get_packed_size(&b);
    uint8_t *buf = hsdk_alloc(n);
    if (!buf) {
        e = HUSH_ERR_NOMEM;
        goto out;
    }
    hush__key_bundle__pack(&b, buf);
    if ((e = hsdk_commit(c))) {
        hush_free(buf);
        goto done;
    }
    *out = buf;
    *out_len = n;
    goto done;
out:
    hsdk_rollback(c);
done:
    SIGNAL_UNREF(pk);
    SIGNAL_UNREF(spk);
    SIGNAL_UNREF(ikp);
    signal_buffer_free(pk_pub);
    signal_buffer_free(spk_pub);
    signal_buffer_free(id_pub);
    return e;
}

hush_err hush_bundle_export(hush_client *c, uint8_t **out, size_t *out_len)
{
    if (!out || !out_len)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    *out_len = 0;
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = c->has_device ? export_locked(c, out, out_len) : HUSH_ERR_NO_DEVICE;
    hsdk_unlock(c);
    return e;
}

static int valid_pub(const ProtobufCBinaryData *b)
{
    return b->len == 33 && b->data && b->data[0] == 0x05;
}

static hush_err import_locked(hush_client *c, const Hush__KeyBundle *b)
{
    hush_err e;
    ec_public_key *idk = NULL, *spk = NULL, *otk = NULL;
    session_pre_key_bundle *bundle = NULL;
    session_builder *builder = NULL;

    if (strcmp(b->username, c->username) == 0 && b->device_id == c->device_id)
        return HUSH_ERR_INVALID_ARG; /* a session with ourselves is meaningless */
    if (curve_decode_point(&idk, b->identity_key.data, b->identity_key.len, c->sg) != 0 ||
        curve_decode_point(&spk, b->signed_pre_key->public_key.data, b->signed_pre_key->public_key.len, c->sg) != 0 ||
        (b->one_time_pre_key &&
         curve_decode_point(&otk, b->one_time_pre_key->public_key.data, b->one_time_pre_key->public_key.len, c->sg) != 0)) {
        e = HUSH_ERR_BAD_BUNDLE;
        goto done;
    }
    /* Verify here: the library segfaults on an empty signature (docs/LIBSIGNAL-NOTES.md §3). */
    if (curve_verify_signature(idk, b->signed_pre_key->public_key.data, b->signed_pre_key->public_key.len,
                               b->signed_pre_key->signature.data, b->signed_pre_key->signature.len) != 1) {
        e = HUSH_ERR_BAD_SIGNATURE;
        goto done;
    }
    if (session_pre_key_bundle_create(&bundle, b->registration_id, (int)b->device_id,
                                      otk ? b->one_time_pre_key->id : 0, otk, b->signed_pre_key->id, spk,
                                      b->signed_pre_key->signature.data, b->signed_pre_key->signature.len, idk) != 0) {
        e = HUSH_ERR_BAD_BUNDLE;
        goto done;
    }
    signal_protocol_address addr = { b->username, strlen(b->username), (int32_t)b->device_id };
    if ((e = hsdk_begin(c)))
        goto done;
    c->new_session = 1; /* the current session, if any, is archived */
    int rc = session_builder_create(&builder, c->sc, &addr, c->sg);
    if (rc == 0)
        rc = session_builder_process_pre_key_bundle(builder, bundle);
    if (rc != 0) {
        hsdk_rollback(c);
        if (rc == SG_ERR_UNTRUSTED_IDENTITY)
            e = hsdk_after_untrusted(c);
        else if (c->store_err)
            e = c->store_err;
        else
            e = rc == SG_ERR_INVALID_KEY ? HUSH_ERR_BAD_SIGNATURE : HUSH_ERR_BAD_BUNDLE;
        goto done;
    }
    e = hsdk_commit(c);
done:
    session_builder_free(builder);
    SIGNAL_UNREF(bundle);
    SIGNAL_UNREF(idk);
    SIGNAL_UNREF(spk);
    SIGNAL_UNREF(otk);
    return e;
}

hush_err hush_bundle_import(hush_client *c, const uint8_t *data, size_t len, char peer[HUSH_USERNAME_MAX + 1],
                            uint32_t *device_id)
{
    if (peer)
        peer[0] = '\0';
    if (device_id)
        *device_id = 0;
    if (!c || (!data && len))
        return HUSH_ERR_INVALID_ARG;
    if (len > HUSH_MAX_BUNDLE)
        return HUSH_ERR_TOO_BIG; /* cap before the decoder allocates */
    Hush__KeyBundle *b = hush__key_bundle__unpack(NULL, len, data);
    if (!b)
        return HUSH_ERR_BAD_BUNDLE;
    hush_err e;
    if (!hsdk_valid_username(b->username) || b->device_id == 0 || b->device_id > INT32_MAX ||
        b->registration_id == 0 || b->registration_id > 16380 || !valid_pub(&b->identity_key) ||
        !b->signed_pre_key || !valid_pub(&b->signed_pre_key->public_key) ||
        (b->one_time_pre_key && (!valid_pub(&b->one_time_pre_key->public_key) || b->one_time_pre_key->id == 0 ||
                                 b->one_time_pre_key->id > HUSH_LAST_RESORT_PREKEY_ID)) ||
        (b->auth_key.len != 0 && b->auth_key.len != 32)) {
        e = HUSH_ERR_BAD_BUNDLE;
    } else if (b->signed_pre_key->signature.len != 64) {
        e = HUSH_ERR_BAD_SIGNATURE; /* empty or short signatures never reach the library */
    } else {
        hsdk_lock(c);
        e = c->has_device ? import_locked(c, b) : HUSH_ERR_NO_DEVICE;
        hsdk_unlock(c);
    }
    if (e == HUSH_OK || e == HUSH_ERR_IDENTITY_CHANGED) {
        if (peer)
            snprintf(peer, HUSH_USERNAME_MAX + 1, "%s", b->username);
        if (device_id)
            *device_id = b->device_id;
    }
    hush__key_bundle__free_unpacked(b, NULL);
    return e;
}

int hush_has_session(hush_client *c, const char *peer, uint32_t device_id)
{
    if (!c || !hsdk_valid_username(peer) || device_id == 0 || device_id > INT32_MAX)
        return 0;
    signal_protocol_address addr = { peer, strlen(peer), (int32_t)device_id };
    hsdk_lock(c);
    int r = signal_protocol_session_contains_session(c->sc, &addr);
    hsdk_unlock(c);
    return r == 1;
}
