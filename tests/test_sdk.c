/*
 * test_sdk.c - libhush core: provider, device, bundles, pairwise sessions, identity changes,
 * safety numbers, sealing, history and outbox. Each trap from docs/LIBSIGNAL-NOTES.md
 * has a regression test here (named trap_*).
 */
#define _GNU_SOURCE /* memmem */
#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>
#include <sqlite3.h>

#include <curve.h>
#include <protocol.h>
#include <ratchet.h>

#include "hush_wire.h"
#include "internal.h"
#include "signal_record.pb-c.h"
#include "net.h"
#include "util.h"

#define N HUSH_DURABILITY_NORMAL

static hush_message *recv_ok(hush_client *c, const char *from, uint32_t dev, const uint8_t *env, size_t len)
{
    hush_message *m = NULL;
    hush_err e = hush_decrypt(c, from, dev, env, len, &m);
    if (e)
        fail_msg("decrypt from %s: %s", from, hush_strerror(e));
    return m;
}

static uint8_t *send_text(hush_client *c, const char *to, uint32_t dev, const char *text, size_t *len)
{
    uint8_t *env = NULL;
    hush_err e = hush_encrypt(c, to, dev, (const uint8_t *)text, strlen(text), NULL, NULL, &env, len);
    if (e)
        fail_msg("encrypt to %s: %s", to, hush_strerror(e));
    return env;
}

static void test_open_errors(void **state)
{
    (void)state;
    uint8_t key[32] = { 1 }, other[32] = { 2 };
    hush_client *c = NULL;
    assert_int_equal(hush_client_open(NULL, key, NULL, &c), HUSH_ERR_INVALID_ARG);
    assert_int_equal(hush_client_open(tpath("k.db"), key, NULL, &c), HUSH_OK);
    assert_int_equal(hush_device_info(c, NULL, NULL, NULL), HUSH_ERR_NO_DEVICE);
    assert_int_equal(hush_device_create(c, "Bad Name", 1), HUSH_ERR_INVALID_ARG);
    assert_int_equal(hush_device_create(c, "ab", 1), HUSH_ERR_INVALID_ARG);
    assert_int_equal(hush_device_create(c, "alice", 0), HUSH_ERR_INVALID_ARG);
    assert_int_equal(hush_device_create(c, "alice", 1), HUSH_OK);
    assert_int_equal(hush_device_create(c, "alice", 1), HUSH_ERR_DEVICE_EXISTS);
    uint32_t n = 0;
    assert_int_equal(hush_prekeys_remaining(c, &n), HUSH_OK);
    assert_int_equal(n, HUSH_ONE_TIME_PREKEYS);
    hush_client_close(c);

    c = NULL;
    assert_int_equal(hush_client_open(tpath("k.db"), other, NULL, &c), HUSH_ERR_DB_KEY);
    assert_null(c);
    assert_int_equal(hush_client_open(tpath("k.db"), key, NULL, &c), HUSH_OK);
    char user[HUSH_USERNAME_MAX + 1];
    uint32_t dev = 0, reg = 0;
    assert_int_equal(hush_device_info(c, user, &dev, &reg), HUSH_OK);
    assert_string_equal(user, "alice");
    assert_int_equal(dev, 1);
    assert_true(reg >= 1 && reg <= 16380);
    hush_client_close(c);

    /* Garbage and truncated files: clear errors, no crash. */
    FILE *f = fopen(tpath("junk.db"), "wb");
    for (int i = 0; i < 5000; i++)
        fputc(i * 31, f);
    fclose(f);
    assert_int_equal(hush_client_open(tpath("junk.db"), key, NULL, &c), HUSH_ERR_DB_CORRUPT);
    assert_null(c);
    assert_string_equal(hush_strerror(HUSH_ERR_DB_CORRUPT), "database file is corrupt, truncated or not a database");
    for (int e = 0; e <= HUSH_ERR_LAST; e++)
        assert_non_null(hush_strerror((hush_err)e));
    assert_string_equal(hush_strerror((hush_err)999), "unknown error");
}

static void test_selftest_and_provider(void **state)
{
    (void)state;
    assert_int_equal(hsdk_selftest(), HUSH_OK);
}

static void test_basic_conversation(void **state)
{
    (void)state;
    hush_client *a = open_client("alice", 1, N), *b = open_client("bob", 7, N);
    assert_false(hush_has_session(a, "bob", 7));
    size_t len;
    uint8_t *env = NULL;
    assert_int_equal(hush_encrypt(a, "bob", 7, (const uint8_t *)"x", 1, NULL, NULL, &env, &len), HUSH_ERR_NO_SESSION);
    start_session(a, b);
    assert_true(hush_has_session(a, "bob", 7));

    env = send_text(a, "bob", 7, "hello bob", &len);
    hush_message *m = recv_ok(b, "alice", 1, env, len);
    assert_int_equal(m->kind, HUSH_KIND_TEXT);
    assert_string_equal((char *)m->body, "hello bob");
    assert_string_equal(m->sender, "alice");
    assert_int_equal(m->sender_device, 1);
    assert_true(m->local_id > 0);
    hush_message_free(m);

    /* A duplicate is dropped: the app never sees it twice. */
    assert_int_equal(hush_decrypt(b, "alice", 1, env, len, &m), HUSH_ERR_DUPLICATE);
    assert_null(m);
    hush_free(env);

    /* Reply, then more, out of order. */
    env = send_text(b, "alice", 1, "hi alice", &len);
    m = recv_ok(a, "bob", 7, env, len);
    hush_message_free(m);
    hush_free(env);

    uint8_t *e1, *e2, *e3;
    size_t l1, l2, l3;
    e1 = send_text(a, "bob", 7, "one", &l1);
    e2 = send_text(a, "bob", 7, "two", &l2);
    e3 = send_text(a, "bob", 7, "three", &l3);
    m = recv_ok(b, "alice", 1, e3, l3);
    assert_string_equal((char *)m->body, "three");
    hush_message_free(m);
    m = recv_ok(b, "alice", 1, e1, l1);
    assert_string_equal((char *)m->body, "one");
    hush_message_free(m);
    m = recv_ok(b, "alice", 1, e2, l2);
    assert_string_equal((char *)m->body, "two");
    hush_message_free(m);
    assert_int_equal(hush_decrypt(b, "alice", 1, e2, l2, &m), HUSH_ERR_DUPLICATE);

    /* Same envelope claimed by another sender address: rejected, nothing stored. */
    assert_int_not_equal(hush_decrypt(b, "mallory", 1, e1, l1, &m), HUSH_OK);
    hush_free(e1);
    hush_free(e2);
    hush_free(e3);

    /* Garbage envelopes. */
    static const uint8_t junk[] = { 0x08, 0x03, 0x12, 0x04, 1, 2, 3, 4 };
    assert_int_equal(hush_decrypt(b, "alice", 1, junk, sizeof junk, &m), HUSH_ERR_BAD_MESSAGE);
    assert_int_equal(hush_decrypt(b, "alice", 1, junk, 3, &m), HUSH_ERR_BAD_MESSAGE);
    assert_int_equal(hush_decrypt(b, "alice", 1, (const uint8_t *)"", 0, &m), HUSH_ERR_BAD_MESSAGE);
    uint8_t *big = calloc(1, HUSH_MAX_ENVELOPE + 1);
    assert_int_equal(hush_decrypt(b, "alice", 1, big, HUSH_MAX_ENVELOPE + 1, &m), HUSH_ERR_TOO_BIG);
    assert_int_equal(hush_encrypt(a, "bob", 7, big, HUSH_MAX_BODY + 1, NULL, NULL, &env, &len), HUSH_ERR_TOO_BIG);
    free(big);

    /* History: both sides, newest first, paging. */
    hush_history_entry *h = NULL;
    size_t count = 0;
    assert_int_equal(hush_history_list(b, "alice", 0, 2, &h, &count), HUSH_OK);
    assert_int_equal(count, 2);
    assert_true(h[0].local_id > h[1].local_id);
    int64_t before = h[1].local_id;
    hush_history_free(h, count);
    assert_int_equal(hush_history_list(b, "alice", before, 100, &h, &count), HUSH_OK);
    assert_int_equal(count, 3); /* hello bob, three, one ... paged below */
    hush_history_free(h, count);
    assert_int_equal(hush_history_list(a, "bob", 0, 100, &h, &count), HUSH_OK);
    assert_int_equal(count, 5); /* 4 sent + 1 received */
    int outgoing = 0;
    for (size_t i = 0; i < count; i++)
        outgoing += h[i].outgoing;
    assert_int_equal(outgoing, 4);
    assert_int_equal(hush_history_mark_read(a, h[0].local_id), HUSH_OK);
    assert_int_equal(hush_history_delete(a, h[1].local_id), HUSH_OK);
    assert_int_equal(hush_history_delete(a, h[1].local_id), HUSH_ERR_NOT_FOUND);
    hush_history_free(h, count);
    assert_int_equal(hush_history_list(a, "bob", 0, 100, &h, &count), HUSH_OK);
    assert_int_equal(count, 4);
    assert_int_equal(h[0].read, 1);
    hush_history_free(h, count);

    assert_int_equal(hush_client_check(a), HUSH_OK);
    hush_client_close(a);
    hush_client_close(b);
}

/* Trap: an empty or short signature must never reach the library (empty segfaults it). */
static void trap_bundle_signatures(void **state)
{
    (void)state;
    hush_client *a = open_client("carol", 1, N), *b = open_client("dave", 2, N);
    uint8_t *bundle = NULL;
    size_t len = 0;
    assert_int_equal(hush_bundle_export(b, &bundle, &len), HUSH_OK);
    Hush__KeyBundle *kb = hush__key_bundle__unpack(NULL, len, bundle);
    assert_non_null(kb);
    uint8_t out[2048];
    size_t n;

    /* empty signature */
    ProtobufCBinaryData sig = kb->signed_pre_key->signature;
    kb->signed_pre_key->signature.len = 0;
    n = hush__key_bundle__pack(kb, out);
    assert_int_equal(hush_bundle_import(a, out, n, NULL, NULL), HUSH_ERR_BAD_SIGNATURE);
    /* 63-byte signature */
    kb->signed_pre_key->signature.len = 63;
    n = hush__key_bundle__pack(kb, out);
    assert_int_equal(hush_bundle_import(a, out, n, NULL, NULL), HUSH_ERR_BAD_SIGNATURE);
    /* one flipped bit */
    kb->signed_pre_key->signature = sig;
    sig.data[10] ^= 1;
    n = hush__key_bundle__pack(kb, out);
    assert_int_equal(hush_bundle_import(a, out, n, NULL, NULL), HUSH_ERR_BAD_SIGNATURE);
    sig.data[10] ^= 1;
    /* missing signed prekey */
    Hush__SignedPreKey *spk = kb->signed_pre_key;
    kb->signed_pre_key = NULL;
    n = hush__key_bundle__pack(kb, out);
    assert_int_equal(hush_bundle_import(a, out, n, NULL, NULL), HUSH_ERR_BAD_BUNDLE);
    kb->signed_pre_key = spk;
    /* short identity key */
    kb->identity_key.len = 32;
    n = hush__key_bundle__pack(kb, out);
    assert_int_equal(hush_bundle_import(a, out, n, NULL, NULL), HUSH_ERR_BAD_BUNDLE);
    kb->identity_key.len = 33;
    /* bad key type byte */
    kb->identity_key.data[0] = 0x06;
    n = hush__key_bundle__pack(kb, out);
    assert_int_equal(hush_bundle_import(a, out, n, NULL, NULL), HUSH_ERR_BAD_BUNDLE);
    kb->identity_key.data[0] = 0x05;
    /* bad username */
    char *u = kb->username;
    kb->username = "Not Valid";
    n = hush__key_bundle__pack(kb, out);
    assert_int_equal(hush_bundle_import(a, out, n, NULL, NULL), HUSH_ERR_BAD_BUNDLE);
    kb->username = u;
    /* garbage and oversize */
    assert_int_equal(hush_bundle_import(a, (const uint8_t *)"\xff\xff\xff", 3, NULL, NULL), HUSH_ERR_BAD_BUNDLE);
    assert_int_equal(hush_bundle_import(a, out, HUSH_MAX_BUNDLE + 1, NULL, NULL), HUSH_ERR_TOO_BIG);
    assert_false(hush_has_session(a, "dave", 2));

    /* A bundle without a one-time prekey still works (signed prekey only). */
    Hush__PreKey *otk = kb->one_time_pre_key;
    kb->one_time_pre_key = NULL;
    n = hush__key_bundle__pack(kb, out);
    kb->one_time_pre_key = otk; /* restored so free_unpacked releases it */
    char peer[HUSH_USERNAME_MAX + 1];
    uint32_t dev = 0;
    assert_int_equal(hush_bundle_import(a, out, n, peer, &dev), HUSH_OK);
    assert_string_equal(peer, "dave");
    assert_int_equal(dev, 2);
    size_t el;
    uint8_t *env = send_text(a, "dave", 2, "no one-time key", &el);
    hush_message *m = recv_ok(b, "carol", 1, env, el);
    assert_string_equal((char *)m->body, "no one-time key");
    hush_message_free(m);
    hush_free(env);

    hush__key_bundle__free_unpacked(kb, NULL);
    hush_free(bundle);
    hush_client_close(a);
    hush_client_close(b);
}

/* Bundle exports hand out distinct one-time prekeys, then the last-resort key. */
static void test_bundle_prekey_rotation(void **state)
{
    (void)state;
    hush_client *b = open_client("erin", 1, N);
    uint32_t seen[HUSH_ONE_TIME_PREKEYS + 3];
    for (int i = 0; i < HUSH_ONE_TIME_PREKEYS + 3; i++) {
        uint8_t *bundle = NULL;
        size_t len = 0;
        assert_int_equal(hush_bundle_export(b, &bundle, &len), HUSH_OK);
        Hush__KeyBundle *kb = hush__key_bundle__unpack(NULL, len, bundle);
        assert_non_null(kb);
        assert_non_null(kb->one_time_pre_key);
        seen[i] = kb->one_time_pre_key->id;
        assert_int_equal(kb->auth_key.len, 32);
        hush__key_bundle__free_unpacked(kb, NULL);
        hush_free(bundle);
        for (int j = 0; j < i && i < HUSH_ONE_TIME_PREKEYS; j++)
            assert_int_not_equal(seen[i], seen[j]);
        if (i >= HUSH_ONE_TIME_PREKEYS)
            assert_int_equal(seen[i], HUSH_LAST_RESORT_PREKEY_ID);
    }
    hush_client_close(b);
}

/* Trap: save_identity runs before MAC verification. A tampered PreKey message must leave no
 * saved identity and no consumed prekey. */
static void trap_tampered_prekey_message(void **state)
{
    (void)state;
    hush_client *a = open_client("frank", 1, N), *b = open_client("grace", 1, N);
    start_session(a, b);
    size_t len;
    uint8_t *env = send_text(a, "grace", 1, "first", &len);
    uint32_t before = 0, after = 0;
    assert_int_equal(hush_prekeys_remaining(b, &before), HUSH_OK);
    /* Flip the last byte of the inner SignalMessage (its MAC). The outer PreKey fields are not
     * all authenticated (the registration id is informative only), so aim at the MAC itself. */
    Hush__Envelope *pe = hush__envelope__unpack(NULL, len, env);
    assert_non_null(pe);
    pre_key_signal_message *pkm = NULL;
    assert_int_equal(pre_key_signal_message_deserialize(&pkm, pe->ciphertext.data, pe->ciphertext.len, b->sg), 0);
    signal_buffer *inner = ciphertext_message_get_serialized((ciphertext_message *)pre_key_signal_message_get_signal_message(pkm));
    uint8_t *at = memmem(env, len, signal_buffer_data(inner), signal_buffer_len(inner));
    assert_non_null(at);
    size_t mac_off = (size_t)(at - env) + signal_buffer_len(inner) - 1;
    SIGNAL_UNREF(pkm);
    hush__envelope__free_unpacked(pe, NULL);
    uint8_t *bad = malloc(len);
    memcpy(bad, env, len);
    bad[mac_off] ^= 0x20;
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(b, "frank", 1, bad, len, &m), HUSH_ERR_BAD_MESSAGE);
    free(bad);
    assert_int_equal(hush_prekeys_remaining(b, &after), HUSH_OK);
    assert_int_equal(before, after);
    uint8_t key[33];
    int found = 1;
    assert_int_equal(hsdk_peer_identity(b, "frank", 1, key, &found), HUSH_OK);
    assert_int_equal(found, 0);
    assert_false(hush_has_session(b, "frank", 1));
    /* The genuine message still decrypts and consumes exactly one prekey. */
    m = recv_ok(b, "frank", 1, env, len);
    hush_message_free(m);
    assert_int_equal(hush_prekeys_remaining(b, &after), HUSH_OK);
    assert_int_equal(after, before - 1);
    hush_free(env);
    hush_client_close(a);
    hush_client_close(b);
}

/* A message claiming to be 2000+ ahead is refused and the session goes on. */
static void test_too_far_ahead(void **state)
{
    (void)state;
    hush_client *a = open_client("heidi", 1, N), *b = open_client("ivan", 1, N);
    start_session(a, b);
    size_t len;
    uint8_t *env = send_text(a, "ivan", 1, "hello", &len);
    hush_message_free(recv_ok(b, "heidi", 1, env, len));
    hush_free(env);
    env = send_text(b, "heidi", 1, "hi", &len);
    hush_message_free(recv_ok(a, "ivan", 1, env, len));
    hush_free(env);
    for (int i = 0; i < 2001; i++) {
        env = send_text(a, "ivan", 1, "skipped", &len);
        hush_free(env);
    }
    env = send_text(a, "ivan", 1, "too far", &len);
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(b, "heidi", 1, env, len, &m), HUSH_ERR_BAD_MESSAGE);
    hush_free(env);
    /* Ivan can still talk; heidi's next reply chain works. */
    env = send_text(b, "heidi", 1, "still here", &len);
    hush_message_free(recv_ok(a, "ivan", 1, env, len));
    hush_free(env);
    hush_client_close(a);
    hush_client_close(b);
}

/* Identity change: reported with both safety numbers; the app accepts or rejects. */
static void test_identity_change(void **state)
{
    (void)state;
    hush_client *a = open_client("judy", 1, N), *b = open_client("ken", 1, N);
    start_session(a, b);
    size_t len;
    uint8_t *env = send_text(a, "ken", 1, "before", &len);
    hush_message_free(recv_ok(b, "judy", 1, env, len));
    hush_free(env);
    char before[61];
    assert_int_equal(hush_safety_number(b, "judy", 1, before), HUSH_OK);

    /* judy reinstalls: new database, new identity, same address. */
    hush_client_close(a);
    assert_int_equal(unlink(tpath("judy.db")), 0);
    unlink(tpath("judy.db-wal"));
    unlink(tpath("judy.db-shm"));
    a = open_client("judy", 1, N);
    start_session(a, b);
    env = send_text(a, "ken", 1, "after reinstall", &len);
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(b, "judy", 1, env, len, &m), HUSH_ERR_IDENTITY_CHANGED);
    char old_sn[61], new_sn[61];
    assert_int_equal(hush_identity_pending(b, "judy", 1, old_sn, new_sn), HUSH_OK);
    assert_string_equal(old_sn, before);
    assert_int_not_equal(strcmp(old_sn, new_sn), 0);
    assert_int_equal(strlen(new_sn), 60);
    char expect_new[61];
    memcpy(expect_new, new_sn, sizeof expect_new);
    /* Reject: still refused, pending gone; the old safety number stands. */
    assert_int_equal(hush_identity_reject(b, "judy", 1), HUSH_OK);
    assert_int_equal(hush_identity_pending(b, "judy", 1, old_sn, new_sn), HUSH_ERR_NOT_FOUND);
    char still[61];
    assert_int_equal(hush_safety_number(b, "judy", 1, still), HUSH_OK);
    assert_string_equal(still, before);
    assert_int_equal(hush_decrypt(b, "judy", 1, env, len, &m), HUSH_ERR_IDENTITY_CHANGED);
    /* Accept: the same message now decrypts, and the safety number is the new one. */
    assert_int_equal(hush_identity_accept(b, "judy", 1), HUSH_OK);
    m = recv_ok(b, "judy", 1, env, len);
    assert_string_equal((char *)m->body, "after reinstall");
    hush_message_free(m);
    hush_free(env);
    char now[61];
    assert_int_equal(hush_safety_number(b, "judy", 1, now), HUSH_OK);
    assert_string_equal(now, expect_new);
    /* And the reply direction works. */
    env = send_text(b, "judy", 1, "welcome back", &len);
    hush_message_free(recv_ok(a, "ken", 1, env, len));
    hush_free(env);

    /* Outgoing: ken's bundle seen by a third party who knew an older ken. */
    hush_client_close(a);
    hush_client_close(b);
}

static void test_safety_numbers(void **state)
{
    (void)state;
    hush_client *a = open_client("leo", 1, N), *b = open_client("mia", 1, N), *c = open_client("ned", 1, N);
    start_session(a, b);
    start_session(b, a);
    start_session(c, a);
    char sa[61], sb[61], sc[61];
    assert_int_equal(hush_safety_number(a, "mia", 1, sa), HUSH_OK);
    assert_int_equal(hush_safety_number(b, "leo", 1, sb), HUSH_OK);
    assert_string_equal(sa, sb);
    assert_int_equal(strlen(sa), HUSH_SAFETY_NUMBER_LEN);
    assert_int_equal(hush_safety_number(c, "leo", 1, sc), HUSH_OK);
    assert_int_not_equal(strcmp(sa, sc), 0);
    assert_int_equal(hush_safety_number(a, "nobody", 1, sc), HUSH_ERR_NOT_FOUND);

    uint8_t *qa = NULL, *qc = NULL;
    size_t la, lc;
    assert_int_equal(hush_safety_scannable(a, "mia", 1, &qa, &la), HUSH_OK);
    assert_int_equal(hush_safety_scannable(c, "leo", 1, &qc, &lc), HUSH_OK);
    assert_int_equal(hush_safety_compare(b, "leo", 1, qa, la), HUSH_OK);
    assert_int_equal(hush_safety_compare(b, "leo", 1, qc, lc), HUSH_ERR_SAFETY_MISMATCH);
    qa[la / 2] ^= 1;
    assert_int_equal(hush_safety_compare(b, "leo", 1, qa, la), HUSH_ERR_SAFETY_MISMATCH);
    assert_int_equal(hush_safety_compare(b, "leo", 1, (const uint8_t *)"junk", 4), HUSH_ERR_SAFETY_MISMATCH);
    hush_free(qa);
    hush_free(qc);
    hush_client_close(a);
    hush_client_close(b);
    hush_client_close(c);
}

/* The raw database file (and its WAL) never holds a plaintext or a private key. */
static void test_sealed_at_rest_canary(void **state)
{
    (void)state;
    hush_client *a = open_client("olga", 1, HUSH_DURABILITY_FULL), *b = open_client("pete", 1, HUSH_DURABILITY_FULL);
    start_session(a, b);
    const char *canary = "CANARY-7f3a9c-plaintext-must-never-hit-disk";
    size_t len;
    uint8_t *env = send_text(a, "pete", 1, canary, &len);
    assert_null(memmem(env, len, canary, strlen(canary)));
    hush_message_free(recv_ok(b, "olga", 1, env, len));
    hush_free(env);
    uint8_t mid[16];
    assert_int_equal(hush_outbox_put(a, "pete", (const uint8_t *)canary, strlen(canary), mid), HUSH_OK);

    ratchet_identity_key_pair *ikp = NULL;
    assert_int_equal(hsdk_local_identity(b, &ikp), HUSH_OK);
    signal_buffer *priv = NULL;
    assert_int_equal(ec_private_key_serialize(&priv, ratchet_identity_key_pair_get_private(ikp)), 0);
    uint8_t auth_pub[32];
    assert_int_equal(hush_device_auth_key(b, auth_pub), HUSH_OK);

    /* Check before and after a checkpoint: in the WAL, then in the main file. */
    const char *files[] = { tpath("olga.db"), tpath("olga.db-wal"), tpath("pete.db"), tpath("pete.db-wal") };
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < 4; i++) {
            assert_false(file_contains(files[i], canary, strlen(canary)));
            assert_false(file_contains(files[i], signal_buffer_data(priv), signal_buffer_len(priv)));
        }
        hush_client_close(a);
        hush_client_close(b);
        a = open_client("olga", 1, HUSH_DURABILITY_FULL);
        b = open_client("pete", 1, HUSH_DURABILITY_FULL);
    }
    /* Public keys are stored in the clear (so the test would notice if the search was broken). */
    assert_true(file_contains(tpath("pete.db"), auth_pub, sizeof auth_pub) ||
                file_contains(tpath("pete.db-wal"), auth_pub, sizeof auth_pub));
    signal_buffer_bzero_free(priv);
    SIGNAL_UNREF(ikp);
    hush_client_close(a);
    hush_client_close(b);
}

/* Rows cannot be swapped: a sealed session copied onto another address fails to open. */
static void test_sealed_rows_bound_to_identity(void **state)
{
    (void)state;
    hush_client *a = open_client("quin", 1, N), *b = open_client("rose", 1, N), *c = open_client("sam", 1, N);
    start_session(a, b);
    start_session(a, c);
    sqlite3 *db = hstore_handle(a->db);
    assert_int_equal(sqlite3_exec(db, "UPDATE sessions SET record = (SELECT record FROM sessions WHERE name = CAST('sam' AS BLOB)) "
                                      "WHERE name = CAST('rose' AS BLOB)", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_changes(db), 1);
    size_t len;
    uint8_t *env = NULL;
    assert_int_equal(hush_encrypt(a, "rose", 1, (const uint8_t *)"x", 1, NULL, NULL, &env, &len), HUSH_ERR_DB_KEY);
    assert_null(env);
    env = send_text(a, "sam", 1, "sam still fine", &len);
    hush_message_free(recv_ok(c, "quin", 1, env, len));
    hush_free(env);
    hush_client_close(a);
    hush_client_close(b);
    hush_client_close(c);
}

static void test_outbox(void **state)
{
    (void)state;
    hush_client *a = open_client("tina", 1, N);
    uint8_t m1[16], m2[16];
    hush_outbox_entry *o = NULL;
    assert_int_equal(hush_outbox_next(a, &o), HUSH_ERR_NOT_FOUND);
    assert_int_equal(hush_outbox_put(a, "uma", (const uint8_t *)"first", 5, m1), HUSH_OK);
    assert_int_equal(hush_outbox_put(a, "uma", (const uint8_t *)"second", 6, m2), HUSH_OK);
    assert_int_not_equal(memcmp(m1, m2, 16), 0);
    a = reopen_client(a, "tina", N);
    uint32_t n = 0;
    assert_int_equal(hush_outbox_count(a, &n), HUSH_OK);
    assert_int_equal(n, 2);
    assert_int_equal(hush_outbox_next(a, &o), HUSH_OK);
    assert_memory_equal(o->message_id, m1, 16);
    assert_string_equal((char *)o->body, "first");
    assert_int_equal(o->attempts, 0);
    hush_outbox_entry_free(o);
    assert_int_equal(hush_outbox_attempted(a, m1), HUSH_OK);
    assert_int_equal(hush_outbox_next(a, &o), HUSH_OK);
    assert_int_equal(o->attempts, 1);
    hush_outbox_entry_free(o);
    assert_int_equal(hush_outbox_done(a, m1), HUSH_OK);
    assert_int_equal(hush_outbox_done(a, m1), HUSH_ERR_NOT_FOUND);
    assert_int_equal(hush_outbox_next(a, &o), HUSH_OK);
    assert_memory_equal(o->message_id, m2, 16);
    hush_outbox_entry_free(o);
    hush_client_close(a);
}

/* Trap: libsignal's lock callbacks must be recursive (decrypt locks twice), and one client used
 * from several threads must stay consistent. */
struct thread_arg {
    hush_client *a;
    int idx;
    int failures;
};

static void *sender_thread(void *p)
{
    struct thread_arg *t = p;
    for (int i = 0; i < 50; i++) {
        char text[64];
        snprintf(text, sizeof text, "t%d-%d", t->idx, i);
        uint8_t *env = NULL;
        size_t len;
        if (hush_encrypt(t->a, "wes", 1, (const uint8_t *)text, strlen(text), NULL, NULL, &env, &len) != HUSH_OK)
            t->failures++;
        hush_free(env);
    }
    return NULL;
}

static void trap_recursive_lock_threads(void **state)
{
    (void)state;
    hush_client *a = open_client("vera", 1, N), *b = open_client("wes", 1, N);
    start_session(a, b);
    pthread_t th[4];
    struct thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){ a, i, 0 };
        pthread_create(&th[i], NULL, sender_thread, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    hush_history_entry *h = NULL;
    size_t count = 0;
    assert_int_equal(hush_history_list(a, "wes", 0, 500, &h, &count), HUSH_OK);
    assert_int_equal(count, 200);
    hush_history_free(h, count);
    hush_client_close(a);
    hush_client_close(b);
}

/* Trap (docs/LIBSIGNAL-NOTES.md §8): libsignal bundles its own protobuf-c runtime; our codec is libprotobuf-c.
 * Run both in one process: a full session plus our Envelope/Content codec round trip. */
static void trap_protobuf_runtimes_coexist(void **state)
{
    (void)state;
    Hush__Content c = HUSH__CONTENT__INIT;
    uint8_t id[16] = { 9 };
    c.message_id.data = id;
    c.message_id.len = 16;
    c.kind = HUSH__CONTENT_KIND__CONTENT_TEXT;
    c.body.data = (uint8_t *)"abc";
    c.body.len = 3;
    uint8_t *buf = NULL;
    size_t n = 0;
    assert_int_equal(hsdk_content_pack(&c, &buf, &n), HUSH_OK);
    assert_int_equal(n % 32, 0); /* padded */
    Hush__Content *back = hush__content__unpack(NULL, n, buf);
    assert_non_null(back);
    assert_int_equal(back->body.len, 3);
    assert_memory_equal(back->body.data, "abc", 3);
    hush__content__free_unpacked(back, NULL);
    free(buf);
    hush_client *a = open_client("xena", 1, N), *b = open_client("yuri", 1, N);
    start_session(a, b);
    size_t len;
    uint8_t *env = send_text(a, "yuri", 1, "codec ok", &len);
    hush_message *m = recv_ok(b, "xena", 1, env, len);
    assert_string_equal((char *)m->body, "codec ok");
    hush_message_free(m);
    hush_free(env);
    hush_client_close(a);
    hush_client_close(b);
}

/* Auth key signatures verify with libsodium (the relay will check them). */
static void test_auth_key(void **state)
{
    (void)state;
    hush_client *a = open_client("zack", 1, N);
    uint8_t pub[32], sig[64];
    assert_int_equal(hush_device_auth_key(a, pub), HUSH_OK);
    uint8_t ch[32], msg[HWIRE_AUTH_MESSAGE_MAX];
    randombytes_buf(ch, sizeof ch);
    uint8_t binding[32];
    randombytes_buf(binding, sizeof binding);
    const char *origin = "wss://relay.example.org:443";
    assert_int_equal(hush_auth_proof(a, HWIRE_PURPOSE_LOGIN, origin, binding, 32, NULL, ch, sig), HUSH_OK);
    size_t n = hwire_auth_message(msg, sizeof msg, HWIRE_PURPOSE_LOGIN, origin, binding, 32, ch, "zack", 1, NULL);
    assert_true(n > 0);
    assert_int_equal(crypto_sign_verify_detached(sig, msg, n, pub), 0);
    /* the same proof names no other relay and no other connection */
    size_t n2 = hwire_auth_message(msg, sizeof msg, HWIRE_PURPOSE_LOGIN, "wss://evil.example:443", binding, 32, ch,
                                   "zack", 1, NULL);
    assert_int_not_equal(crypto_sign_verify_detached(sig, msg, n2, pub), 0);
    binding[0] ^= 1;
    n2 = hwire_auth_message(msg, sizeof msg, HWIRE_PURPOSE_LOGIN, origin, binding, 32, ch, "zack", 1, NULL);
    assert_int_not_equal(crypto_sign_verify_detached(sig, msg, n2, pub), 0);
    n = hwire_auth_message(msg, sizeof msg, HWIRE_PURPOSE_LOGIN, origin, binding, 32, ch, "zack", 1, NULL);
    assert_int_equal(hush_auth_proof(a, HWIRE_PURPOSE_LOGIN, origin, binding, 32, NULL, ch, sig), HUSH_OK);
    sig[0] ^= 1;
    assert_int_not_equal(crypto_sign_verify_detached(sig, msg, n, pub), 0);
    /* origins are canonical whatever the spelling: lower case, port always, IPv6 in brackets */
    char o[HWIRE_ORIGIN_MAX + 1];
    assert_int_equal(hwire_origin(o, sizeof o, 1, "Relay.Example.ORG", 443), 0);
    assert_string_equal(o, "wss://relay.example.org:443");
    assert_int_equal(hwire_origin(o, sizeof o, 0, "::1", 7443), 0);
    assert_string_equal(o, "ws://[::1]:7443");
    assert_int_equal(hwire_origin(o, sizeof o, 0, "[::1]", 7443), 0);
    assert_string_equal(o, "ws://[::1]:7443");
    assert_int_equal(hwire_origin(o, sizeof o, 0, "host", 0), -1);
    /* only proofs are signed, never a challenge of all zeros; register needs its digest */
    assert_int_equal(hush_auth_proof(a, HWIRE_PURPOSE_REGISTER, origin, NULL, 0, NULL, ch, sig), HUSH_ERR_INVALID_ARG);
    memset(ch, 0, sizeof ch);
    assert_int_equal(hush_auth_proof(a, HWIRE_PURPOSE_LOGIN, origin, NULL, 0, NULL, ch, sig), HUSH_ERR_INVALID_ARG);
    assert_int_equal(hush_auth_proof(a, "anything", origin, NULL, 0, NULL, ch, sig), HUSH_ERR_INVALID_ARG);
    hush_client_close(a);
}

/* Signed prekey rotation: a new one becomes current; old ones are kept for the grace period, then
 * deleted; a bundle fetched before the rotation still starts a working session inside it. */
static void test_signed_prekey_rotation(void **state)
{
    (void)state;
    hush_client *a = open_client("rota", 1, N), *b = open_client("rotb", 1, N);
    uint8_t *old_bundle = NULL;
    size_t old_len = 0;
    assert_int_equal(hush_bundle_export(b, &old_bundle, &old_len), HUSH_OK);
    int rotated = 0;
    hsdk_lock(b);
    assert_int_equal(hsdk_rotate_signed_pre_key(b, 7ull * 86400000, 30ull * 86400000, &rotated), HUSH_OK);
    assert_int_equal(rotated, 0); /* fresh: nothing to do */
    assert_int_equal(hsdk_rotate_signed_pre_key(b, 0, 30ull * 86400000, &rotated), HUSH_OK);
    assert_int_equal(rotated, 1);
    hsdk_unlock(b);
    uint8_t *new_bundle = NULL;
    size_t new_len = 0;
    assert_int_equal(hush_bundle_export(b, &new_bundle, &new_len), HUSH_OK);
    Hush__KeyBundle *ob = hush__key_bundle__unpack(NULL, old_len, old_bundle);
    Hush__KeyBundle *nb = hush__key_bundle__unpack(NULL, new_len, new_bundle);
    assert_int_not_equal(ob->signed_pre_key->id, nb->signed_pre_key->id);
    /* within the grace period the old bundle still works */
    assert_int_equal(hush_bundle_import(a, old_bundle, old_len, NULL, NULL), HUSH_OK);
    size_t len;
    uint8_t *env = send_text(a, "rotb", 1, "via the old signed prekey", &len);
    hush_message *m = recv_ok(b, "rota", 1, env, len);
    hush_message_free(m);
    hush_free(env);
    /* after it, the old one is gone */
    hsdk_lock(b);
    assert_int_equal(hsdk_rotate_signed_pre_key(b, 7ull * 86400000, 0, &rotated), HUSH_OK);
    hsdk_unlock(b);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(hstore_handle(b->db), "SELECT count(*) FROM signed_pre_keys", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    hush__key_bundle__free_unpacked(ob, NULL);
    hush__key_bundle__free_unpacked(nb, NULL);
    hush_free(old_bundle);
    hush_free(new_bundle);
    hush_client_close(a);
    hush_client_close(b);
}

/* The signature convention of signed prekeys, as docs/PROTOCOL.md states it with this vector: an
 * Ed25519 signature (by the Edwards form of the Curve25519 identity key) over the 33 bytes of the
 * signed prekey (0x05 prefix included), whose byte 63 carries in its top bit the sign of the
 * Edwards public key. This vector has that bit set; without it, it does not verify. */
static void hexin(uint8_t *out, const char *hex, size_t n)
{
    size_t got = 0;
    assert_int_equal(sodium_hex2bin(out, n, hex, strlen(hex), NULL, &got, NULL), 0);
    assert_int_equal(got, n);
}

static void test_signature_vector(void **state)
{
    (void)state;
    uint8_t ik[33], spk[33], sig[64];
    hexin(ik, "05b77e204246c5720adeb351b7bdb4056ffa44db80a8451e37a15bae822518d45a", 33);
    hexin(spk, "057bb2a5bbc2843cd05c5a27e53dd3d567433ef2ffc61b38f2337796ccc5534141", 33);
    hexin(sig, "c7feebfefc9b20b2010906ec7b3aa4e0b5bc0049fb3d80d698d5e1f6f624d0eb"
               "bc3811322bea51a6bf2b80f191f8b6a50f08c8c4f71e80fd9d85ea4ad2f9f88c", 64);
    signal_context *ctx = NULL;
    assert_int_equal(signal_context_create(&ctx, NULL), 0);
    ec_public_key *pub = NULL;
    assert_int_equal(curve_decode_point(&pub, ik, sizeof ik, ctx), 0);
    assert_int_equal(curve_verify_signature(pub, spk, sizeof spk, sig, sizeof sig), 1);
    sig[63] ^= 0x80; /* the sign bit */
    assert_int_not_equal(curve_verify_signature(pub, spk, sizeof spk, sig, sizeof sig), 1);
    sig[63] ^= 0x80;
    assert_int_not_equal(curve_verify_signature(pub, spk + 1, 32, sig, sizeof sig), 1); /* without the prefix */
    SIGNAL_UNREF(pub);
    signal_context_destroy(ctx);
}

/* Every packed Content is a multiple of 32 bytes, whatever the body's length (a Content of 30 mod
 * 32 bytes used to go out unpadded, a block shorter than its neighbours). */
static void test_padding_all_lengths(void **state)
{
    (void)state;
    uint8_t body[600], mid[16];
    memset(body, 'x', sizeof body);
    memset(mid, 7, sizeof mid);
    for (size_t len = 0; len <= sizeof body; len++) {
        Hush__Content ct = HUSH__CONTENT__INIT;
        ct.message_id.data = mid;
        ct.message_id.len = 16;
        ct.kind = HUSH__CONTENT_KIND__CONTENT_TEXT;
        ct.body.data = body;
        ct.body.len = len;
        ct.sent_at_ms = 1764550000000ull;
        uint8_t *out = NULL;
        size_t n = 0;
        assert_int_equal(hsdk_content_pack(&ct, &out, &n), HUSH_OK);
        if (n % 32 != 0)
            fail_msg("a %zu-byte body packs to %zu bytes", len, n);
        Hush__Content *back = hush__content__unpack(NULL, n, out);
        assert_non_null(back);
        assert_int_equal(back->body.len, len);
        hush__content__free_unpacked(back, NULL);
        free(out);
    }
}

/* A history row deleted by the user leaves nothing of its sealed body in the database file or
 * the WAL (secure_delete, then the WAL truncated): were the database key ever taken, deleted
 * messages could not be read back from free pages. */
static void test_deleted_history_gone(void **state)
{
    (void)state;
    hush_client *a = open_client("sda", 1, N), *b = open_client("sdb", 1, N);
    start_session(a, b);
    char text[200];
    memset(text, 'q', sizeof text);
    uint8_t *env = NULL;
    size_t elen = 0;
    assert_int_equal(hush_encrypt(a, "sdb", 1, (const uint8_t *)text, sizeof text, NULL, NULL, &env, &elen), HUSH_OK);
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(b, "sda", 1, env, elen, &m), HUSH_OK);
    int64_t id = m->local_id;
    hush_message_free(m);
    hush_free(env);
    /* the sealed body as stored */
    sqlite3 *raw = NULL;
    assert_int_equal(sqlite3_open_v2(tpath("sdb.db"), &raw, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(raw, "SELECT body FROM history WHERE id = ?1", -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, id);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    uint8_t sealed[64];
    assert_true(sqlite3_column_bytes(st, 0) > (int)sizeof sealed);
    memcpy(sealed, (const uint8_t *)sqlite3_column_blob(st, 0) + 40, sizeof sealed); /* past the nonce */
    sqlite3_finalize(st);
    sqlite3_close(raw);
    assert_true(file_contains(tpath("sdb.db"), sealed, sizeof sealed) ||
                file_contains(tpath("sdb.db-wal"), sealed, sizeof sealed));
    assert_int_equal(hush_history_delete(b, id), HUSH_OK);
    assert_false(file_contains(tpath("sdb.db"), sealed, sizeof sealed));
    assert_false(file_contains(tpath("sdb.db-wal"), sealed, sizeof sealed));
    hush_client_close(a);
    hush_client_close(b);
}

/* The user compared the new safety number N1; then a relay injects a message under yet another key
 * for the same device. Accepting N1 trusts exactly N1's key: the injected key stays refused, and
 * a plain accept refuses to guess between two keys. */
static void test_identity_accept_bound(void **state)
{
    (void)state;
    hush_client *a = open_client("lena", 1, N), *b = open_client("milo", 1, N);
    start_session(a, b);
    size_t len;
    uint8_t *env = send_text(a, "milo", 1, "first", &len);
    hush_message_free(recv_ok(b, "lena", 1, env, len));
    hush_free(env);
    /* lena reinstalls (key K1) and writes: pending, number N1 */
    hush_client_close(a);
    unlink(tpath("lena.db"));
    unlink(tpath("lena.db-wal"));
    unlink(tpath("lena.db-shm"));
    a = open_client("lena", 1, N);
    start_session(a, b);
    uint8_t *env1 = send_text(a, "milo", 1, "it is really me", &len);
    size_t len1 = len;
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(b, "lena", 1, env1, len1, &m), HUSH_ERR_IDENTITY_CHANGED);
    char old_sn[61], n1[61];
    assert_int_equal(hush_identity_pending(b, "lena", 1, old_sn, n1), HUSH_OK);
    /* ... the user compares n1 with lena; meanwhile a relay injects a message under key K2 */
    uint8_t key2[HUSH_DB_KEY_BYTES];
    test_key("lena-forged", key2);
    hush_client *x = NULL;
    assert_int_equal(hush_client_open(tpath("forged.db"), key2, NULL, &x), HUSH_OK);
    assert_int_equal(hush_device_create(x, "lena", 1), HUSH_OK);
    start_session(x, b);
    uint8_t *env2 = send_text(x, "milo", 1, "send the code here", &len);
    size_t len2 = len;
    assert_int_equal(hush_decrypt(b, "lena", 1, env2, len2, &m), HUSH_ERR_IDENTITY_CHANGED);
    char n2[61];
    assert_int_equal(hush_identity_pending(b, "lena", 1, old_sn, n2), HUSH_OK);
    assert_string_not_equal(n1, n2); /* the newest pending key is the injected one */
    /* a plain accept does not guess; a wrong number is refused */
    assert_int_equal(hush_identity_accept(b, "lena", 1), HUSH_ERR_SAFETY_MISMATCH);
    char wrong[80];
    snprintf(wrong, sizeof wrong, "%s", n1);
    wrong[0] = wrong[0] == '1' ? '2' : '1';
    assert_int_equal(hush_identity_accept_number(b, "lena", 1, wrong), HUSH_ERR_SAFETY_MISMATCH);
    /* the number the user compared, typed with spaces: lena's key is trusted, not the injected one */
    char typed[90];
    size_t t = 0;
    for (int i = 0; i < 60; i++) {
        typed[t++] = n1[i];
        if (i % 5 == 4 && i < 59)
            typed[t++] = ' ';
    }
    typed[t] = '\0';
    assert_int_equal(hush_identity_accept_number(b, "lena", 1, typed), HUSH_OK);
    char now[61];
    assert_int_equal(hush_safety_number(b, "lena", 1, now), HUSH_OK);
    assert_string_equal(now, n1);
    m = recv_ok(b, "lena", 1, env1, len1);
    assert_string_equal((char *)m->body, "it is really me");
    hush_message_free(m);
    assert_int_equal(hush_decrypt(b, "lena", 1, env2, len2, &m), HUSH_ERR_IDENTITY_CHANGED);
    hush_free(env1);
    hush_free(env2);
    hush_client_close(x);
    hush_client_close(a);
    hush_client_close(b);
}

/* Deleting the key-check row does not make another key "work": a database that holds sealed data
 * but no check value is refused. */
static void test_keycheck_row_required(void **state)
{
    (void)state;
    hush_client *a = open_client("kcr", 1, N);
    hush_client_close(a);
    sqlite3 *raw = NULL;
    assert_int_equal(sqlite3_open(tpath("kcr.db"), &raw), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw, "DELETE FROM meta WHERE key = 'keycheck'", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(raw);
    uint8_t other[HUSH_DB_KEY_BYTES];
    test_key("not-kcr", other);
    hush_client *c = NULL;
    assert_int_equal(hush_client_open(tpath("kcr.db"), other, NULL, &c), HUSH_ERR_DB_KEY);
    assert_null(c);
    uint8_t right[HUSH_DB_KEY_BYTES];
    test_key("kcr", right);
    assert_int_equal(hush_client_open(tpath("kcr.db"), right, NULL, &c), HUSH_ERR_DB_KEY);
}

/* The longest names the SDK accepts (32-character usernames, a 64-character group id) go through
 * every sealed row with their associated data whole (a truncated one would abort). */
static void test_longest_names_sealed(void **state)
{
    (void)state;
    const char *ua = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1", *ub = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2";
    const char *g = "gggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg";
    assert_int_equal(strlen(ua), HUSH_USERNAME_MAX);
    assert_int_equal(strlen(g), HUSH_GROUP_ID_MAX);
    hush_client *a = open_client(ua, 2147483647u, N), *b = open_client(ub, 2147483647u, N);
    start_session(a, b);
    size_t len;
    uint8_t *env = send_text(a, ub, 2147483647u, "hello, long names", &len);
    hush_message_free(recv_ok(b, ua, 2147483647u, env, len));
    hush_free(env);
    uint8_t *d = NULL;
    assert_int_equal(hush_group_distribution(a, g, ub, 2147483647u, &d, &len), HUSH_OK);
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(b, ua, 2147483647u, d, len, &m), HUSH_OK);
    hush_message_free(m);
    hush_free(d);
    assert_int_equal(hush_group_encrypt(a, g, (const uint8_t *)"to the group", 12, NULL, &d, &len), HUSH_OK);
    assert_int_equal(hush_decrypt(b, ua, 2147483647u, d, len, &m), HUSH_OK);
    assert_string_equal(m->group_id, g);
    hush_message_free(m);
    hush_free(d);
    uint8_t mid[16];
    assert_int_equal(hush_outbox_put(a, ub, (const uint8_t *)"queued", 6, mid), HUSH_OK);
    hush_outbox_entry *o = NULL;
    assert_int_equal(hush_outbox_next(a, &o), HUSH_OK);
    hush_outbox_entry_free(o);
    hush_client_close(a);
    hush_client_close(b);
}

/* A peer that makes its session record grow past the cap (messages that skip far ahead store the
 * skipped keys) only gets that message refused as TOO_BIG: nothing changes, and its earlier
 * messages still decrypt under the unchanged session. */
static void test_session_record_capped(void **state)
{
    (void)state;
    hush_client *a = open_client("capa", 1, N), *b = open_client("capb", 1, N);
    start_session(a, b);
    size_t len0;
    uint8_t *first = send_text(a, "capb", 1, "message 0", &len0);
    hush_message_free(recv_ok(b, "capa", 1, first, len0));
    hush_free(first);
    size_t saved = hsdk_max_record;
    hsdk_max_record = 16 * 1024;
    size_t len1;
    uint8_t *one = send_text(a, "capb", 1, "message 1", &len1);
    uint8_t *env = NULL;
    size_t len = 0;
    for (int i = 0; i < 400; i++) { /* 400 messages b never receives */
        hush_free(env);
        env = send_text(a, "capb", 1, "skipped", &len);
    }
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(b, "capa", 1, env, len, &m), HUSH_ERR_TOO_BIG);
    /* nothing changed: message 1 still decrypts */
    m = recv_ok(b, "capa", 1, one, len1);
    assert_string_equal((char *)m->body, "message 1");
    hush_message_free(m);
    hsdk_max_record = saved;
    hush_free(env);
    hush_free(one);
    hush_client_close(a);
    hush_client_close(b);
}

/* A session record keeps at most HUSH_MAX_ARCHIVED_STATES earlier sessions (libsignal keeps 40, and
 * each can hold thousands of skipped message keys that every decrypt then loads): a late message of
 * a recent earlier session still decrypts, one of an older one does not. */
static void test_archived_states_capped(void **state)
{
    (void)state;
    hush_client *a = open_client("archa", 1, N), *b = open_client("archb", 1, N);
    enum { ROUNDS = HUSH_MAX_ARCHIVED_STATES + 6 };
    uint8_t *late[ROUNDS];
    size_t late_len[ROUNDS];
    for (int i = 0; i < ROUNDS; i++) {
        /* a starts a new session with b each round (a fresh bundle), b receives its first message
         * (b's record archives the previous session) and keeps a second one for later */
        start_session(a, b);
        size_t len;
        uint8_t *first = send_text(a, "archb", 1, "first", &len);
        hush_message_free(recv_ok(b, "archa", 1, first, len));
        hush_free(first);
        char text[32];
        snprintf(text, sizeof text, "late %d", i);
        late[i] = send_text(a, "archb", 1, text, &late_len[i]);
    }
    /* the newest earlier sessions are kept: their late messages decrypt */
    for (int i = ROUNDS - 1 - HUSH_MAX_ARCHIVED_STATES; i < ROUNDS; i++) {
        hush_message *m = recv_ok(b, "archa", 1, late[i], late_len[i]);
        char text[32];
        snprintf(text, sizeof text, "late %d", i);
        assert_string_equal((char *)m->body, text);
        hush_message_free(m);
    }
    /* older ones were dropped from the record */
    for (int i = 0; i < ROUNDS - 1 - HUSH_MAX_ARCHIVED_STATES; i++) {
        hush_message *m = NULL;
        hush_err e = hush_decrypt(b, "archa", 1, late[i], late_len[i], &m);
        if (e == HUSH_OK)
            fail_msg("a message of session %d (of %d) still decrypted", i, ROUNDS);
        hush_message_free(m);
    }
    for (int i = 0; i < ROUNDS; i++)
        hush_free(late[i]);
    hush_client_close(a);
    hush_client_close(b);
}

/* Keys of skipped messages kept in b's record of a, across all its chains and states. */
static size_t skipped_keys(hush_client *b, const char *peer, int32_t dev)
{
    signal_protocol_address addr = { peer, strlen(peer), dev };
    session_record *rec = NULL;
    assert_int_equal(signal_protocol_session_load_session(b->sc, &rec, &addr), 0);
    signal_buffer *ser = NULL;
    assert_int_equal(session_record_serialize(&ser, rec), 0);
    Hushrec__Record *r = hushrec__record__unpack(NULL, signal_buffer_len(ser), signal_buffer_data(ser));
    assert_non_null(r);
    size_t n = 0;
    for (size_t s = 0; s <= r->n_previous_sessions; s++) {
        Hushrec__Session *st = s < r->n_previous_sessions ? r->previous_sessions[s] : r->current_session;
        for (size_t i = 0; st && i < st->n_receiver_chains; i++)
            n += st->receiver_chains[i]->n_message_keys;
    }
    hushrec__record__free_unpacked(r, NULL);
    signal_buffer_bzero_free(ser);
    SIGNAL_UNREF(rec);
    return n;
}

/* A peer that skips many messages in several chains cannot make its session record hold more than
 * HUSH_MAX_SKIPPED_KEYS keys in all (every decrypt of its messages loads the whole record): the
 * oldest go, the newest late messages still decrypt. */
static void test_skipped_keys_capped(void **state)
{
    (void)state;
    hush_client *a = open_client("skipa", 1, N), *b = open_client("skipb", 1, N);
    start_session(a, b);
    size_t len;
    uint8_t *env = send_text(a, "skipb", 1, "hello", &len);
    hush_message_free(recv_ok(b, "skipa", 1, env, len));
    hush_free(env);
    enum { ROUNDS = 3, SKIP = 1500, KEEP = 1200 };
    uint8_t *oldest[ROUNDS], *kept[ROUNDS];
    size_t oldest_len[ROUNDS], kept_len[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        /* a sends SKIP messages, b gets only the last: b stores keys for the SKIP - 1 before it */
        for (int i = 0; i < SKIP; i++) {
            char text[32];
            snprintf(text, sizeof text, "r%d m%d", r, i);
            env = send_text(a, "skipb", 1, text, &len);
            if (i == 0) {
                oldest[r] = env;
                oldest_len[r] = len;
            } else if (i == KEEP) {
                kept[r] = env;
                kept_len[r] = len;
            } else if (i == SKIP - 1) {
                hush_message_free(recv_ok(b, "skipa", 1, env, len));
                hush_free(env);
            } else {
                hush_free(env);
            }
        }
        /* b answers, so a's next messages come in a new chain */
        env = send_text(b, "skipa", 1, "go on", &len);
        hush_message_free(recv_ok(a, "skipb", 1, env, len));
        hush_free(env);
    }
    assert_int_equal(skipped_keys(b, "skipa", 1), HUSH_MAX_SKIPPED_KEYS);
    /* kept: all of the last chain (1,498 keys) and the newest 502 of the one before */
    hush_message *m = recv_ok(b, "skipa", 1, oldest[2], oldest_len[2]);
    assert_string_equal((char *)m->body, "r2 m0");
    hush_message_free(m);
    m = recv_ok(b, "skipa", 1, kept[1], kept_len[1]);
    assert_string_equal((char *)m->body, "r1 m1200");
    hush_message_free(m);
    /* dropped: the oldest */
    for (int r = 0; r < 2; r++) {
        m = NULL;
        hush_err e = hush_decrypt(b, "skipa", 1, oldest[r], oldest_len[r], &m);
        if (e == HUSH_OK)
            fail_msg("the first skipped message of chain %d still decrypted", r);
        hush_message_free(m);
    }
    for (int r = 0; r < ROUNDS; r++) {
        hush_free(oldest[r]);
        hush_free(kept[r]);
    }
    hush_client_close(a);
    hush_client_close(b);
}

/* ---------------------------------------------------------------------------------------- */
/* the database id and the row digest */

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

/* What someone with the file (not the key) can do: run SQL on it with triggers off. */
static void tamper(const char *path, const char *sql)
{
    sqlite3 *raw = NULL;
    assert_int_equal(sqlite3_open(path, &raw), SQLITE_OK);
    int off = 1;
    sqlite3_db_config(raw, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, &off);
    char *err = NULL;
    if (sqlite3_exec(raw, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("tamper: %s: %s", sql, err);
    sqlite3_close(raw);
}

static hush_err open_with_key_of(const char *path, const char *name)
{
    uint8_t key[HUSH_DB_KEY_BYTES];
    test_key(name, key);
    hush_client *c = NULL;
    hush_err e = hush_client_open(path, key, NULL, &c);
    hush_client_close(c);
    return e;
}

/* A session row put back from an older copy, a trusted identity deleted, a trigger planted or
 * dropped: the client refuses the database instead of reusing message keys or trusting the next
 * key that comes along. The untouched copy opens. */
static void test_rows_rolled_back_refused(void **state)
{
    (void)state;
    hush_client *a = open_client("rbalice", 1, N), *b = open_client("rbbob", 1, N);
    hush_client_close(b);
    copy_file(tpath("rbbob.db"), tpath("rbbob-old.db")); /* with the one-time prekey alice will use */
    b = open_client("rbbob", 1, N);
    start_session(a, b);
    size_t len;
    uint8_t *env = send_text(a, "rbbob", 1, "before the copy", &len);
    hush_message_free(recv_ok(b, "rbalice", 1, env, len));
    hush_free(env);
    hush_client_close(a);
    copy_file(tpath("rbalice.db"), tpath("rb-old.db"));
    a = open_client("rbalice", 1, N);
    for (int i = 0; i < 3; i++) {
        env = send_text(a, "rbbob", 1, "after the copy", &len);
        hush_message_free(recv_ok(b, "rbalice", 1, env, len));
        hush_free(env);
    }
    hush_client_close(a);
    hush_client_close(b);

    static const char *const attacks[] = {
        "ATTACH 'rb-old.db' AS old; UPDATE sessions SET record = "
        "(SELECT record FROM old.sessions WHERE old.sessions.name = sessions.name);",
        "DELETE FROM identities;",
        "DELETE FROM sessions;",
        "DELETE FROM pre_keys WHERE id = (SELECT max(id) FROM pre_keys);",
        "CREATE TRIGGER planted AFTER UPDATE ON history BEGIN SELECT 1; END;",
        "DROP TRIGGER sessions_tag_upd;",
        "DELETE FROM meta WHERE key = 'rowdigest';",
    };
    for (size_t i = 0; i < sizeof attacks / sizeof attacks[0]; i++) {
        copy_file(tpath("rbalice.db"), tpath("rb-t.db"));
        assert_int_equal(chdir(tpath("")), 0);
        tamper(tpath("rb-t.db"), attacks[i]);
        hush_err e = open_with_key_of(tpath("rb-t.db"), "rbalice");
        if (e != HUSH_ERR_DB_TAMPERED)
            fail_msg("attack %zu (%s) gave %s", i, attacks[i], hush_strerror(e));
    }
    /* bob's one-time prekey that alice used, put back: her first message could be replayed */
    copy_file(tpath("rbbob.db"), tpath("rb-t.db"));
    tamper(tpath("rb-t.db"), "ATTACH 'rbbob-old.db' AS old; INSERT INTO pre_keys SELECT * FROM old.pre_keys "
                             "WHERE id NOT IN (SELECT id FROM main.pre_keys);");
    assert_int_equal(open_with_key_of(tpath("rb-t.db"), "rbbob"), HUSH_ERR_DB_TAMPERED);
    /* the same statements that change nothing tracked leave it usable */
    copy_file(tpath("rbalice.db"), tpath("rb-t.db"));
    tamper(tpath("rb-t.db"), "UPDATE history SET read = read;");
    assert_int_equal(open_with_key_of(tpath("rb-t.db"), "rbalice"), HUSH_OK);
}

/* A sealed value copied from another database under the same key does not open: the database's
 * own id is in every value's associated data. */
static void test_sealed_rows_bound_to_database(void **state)
{
    (void)state;
    uint8_t key[HUSH_DB_KEY_BYTES];
    test_key("twin", key);
    hush_client *x = NULL, *y = NULL;
    assert_int_equal(hush_client_open(tpath("twin1.db"), key, NULL, &x), HUSH_OK);
    assert_int_equal(hush_client_open(tpath("twin2.db"), key, NULL, &y), HUSH_OK);
    assert_int_equal(hush_device_create(x, "twin", 1), HUSH_OK);
    assert_int_equal(hush_device_create(y, "twin", 1), HUSH_OK);
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    assert_int_equal(hush_outbox_put(y, "someone", (const uint8_t *)"from the other file", 19, mid), HUSH_OK);
    hush_client_close(x);
    hush_client_close(y);
    assert_int_equal(chdir(tpath("")), 0);
    tamper(tpath("twin1.db"), "ATTACH 'twin2.db' AS other; INSERT INTO outbox SELECT * FROM other.outbox;");
    assert_int_equal(hush_client_open(tpath("twin1.db"), key, NULL, &x), HUSH_OK);
    hush_outbox_entry *o = NULL;
    assert_int_equal(hush_outbox_next(x, &o), HUSH_ERR_DB_KEY);
    assert_null(o);
    hush_client_close(x);
}

/* A database written before values carried the database id (seal version 1, schema 4, made by
 * tests/fixtures/make_v1.c) is sealed again at its first open: history, sessions, the group's
 * sender key, the queued message and the device name all survive, and nothing of version 1 is left. */
static void test_v1_database_upgraded(void **state)
{
    (void)state;
    const char *fx = getenv("HUSH_TEST_FIXTURES");
    if (!fx)
        fail_msg("HUSH_TEST_FIXTURES is not set (make test sets it)");
    char from[512];
    snprintf(from, sizeof from, "%s/v1-alice.db", fx);
    copy_file(from, tpath("v1alice.db"));
    snprintf(from, sizeof from, "%s/v1-bob.db", fx);
    copy_file(from, tpath("v1bob.db"));
    hush_client *a = open_client("v1alice", 1, N), *b = open_client("v1bob", 7, N);

    hush_history_entry *h = NULL;
    size_t n = 0;
    assert_int_equal(hush_history_list(a, "v1bob", 0, 10, &h, &n), HUSH_OK);
    assert_int_equal(n, 3);
    int seen = 0;
    for (size_t i = 0; i < n; i++)
        seen += (h[i].body_len == 12 && memcmp(h[i].body, "v1 hello bob", 12) == 0) ||
                (h[i].body_len == 14 && memcmp(h[i].body, "v1 hello alice", 14) == 0) ||
                (h[i].body_len == 9 && memcmp(h[i].body, "v1 second", 9) == 0);
    assert_int_equal(seen, 3);
    hush_history_free(h, n);
    hush_outbox_entry *o = NULL;
    assert_int_equal(hush_outbox_next(a, &o), HUSH_OK);
    assert_memory_equal(o->body, "v1 queued", 9);
    hush_outbox_entry_free(o);

    /* the sessions and the group go on */
    size_t len;
    uint8_t *env = send_text(a, "v1bob", 7, "after the upgrade", &len);
    hush_message *m = recv_ok(b, "v1alice", 1, env, len);
    assert_string_equal((char *)m->body, "after the upgrade");
    hush_message_free(m);
    hush_free(env);
    env = send_text(b, "v1alice", 1, "and back", &len);
    hush_message_free(recv_ok(a, "v1bob", 7, env, len));
    hush_free(env);
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    assert_int_equal(hush_group_encrypt(a, "v1room", (const uint8_t *)"room again", 10, mid, &env, &len), HUSH_OK);
    m = recv_ok(b, "v1alice", 1, env, len);
    assert_memory_equal(m->body, "room again", 10);
    hush_message_free(m);
    hush_free(env);
    hush_client_close(a);
    hush_client_close(b);

    /* every sealed value is of the current version, and the upgraded files open again */
    static const char *const left[] = {
        "SELECT count(*) FROM meta WHERE key IN ('keycheck', 'device_name', 'rowdigest') AND substr(bval, 1, 1) <> x'02'",
        "SELECT count(*) FROM local_device WHERE substr(identity_private, 1, 1) <> x'02' OR substr(auth_secret, 1, 1) <> x'02'",
        "SELECT count(*) FROM identities WHERE substr(key, 1, 1) <> x'02'",
        "SELECT count(*) FROM sessions WHERE substr(record, 1, 1) <> x'02'",
        "SELECT count(*) FROM pre_keys WHERE substr(record, 1, 1) <> x'02'",
        "SELECT count(*) FROM signed_pre_keys WHERE substr(record, 1, 1) <> x'02'",
        "SELECT count(*) FROM sender_keys WHERE substr(record, 1, 1) <> x'02'",
        "SELECT count(*) FROM history WHERE substr(body, 1, 1) <> x'02'",
        "SELECT count(*) FROM outbox WHERE substr(body, 1, 1) <> x'02'",
    };
    const char *files[] = { "v1alice.db", "v1bob.db" };
    for (int f = 0; f < 2; f++) {
        sqlite3 *raw = NULL;
        assert_int_equal(sqlite3_open(tpath(files[f]), &raw), SQLITE_OK);
        for (size_t i = 0; i < sizeof left / sizeof left[0]; i++) {
            sqlite3_stmt *st = NULL;
            assert_int_equal(sqlite3_prepare_v2(raw, left[i], -1, &st, NULL), SQLITE_OK);
            assert_int_equal(sqlite3_step(st), SQLITE_ROW);
            if (sqlite3_column_int(st, 0) != 0)
                fail_msg("%s: %s -> %d", files[f], left[i], sqlite3_column_int(st, 0));
            sqlite3_finalize(st);
        }
        sqlite3_close(raw);
    }
    assert_int_equal(open_with_key_of(tpath("v1alice.db"), "v1alice"), HUSH_OK);
    assert_int_equal(open_with_key_of(tpath("v1bob.db"), "v1bob"), HUSH_OK);
    /* the wrong key still fails first, and changes nothing */
    copy_file(from, tpath("v1wrong.db"));
    assert_int_equal(open_with_key_of(tpath("v1wrong.db"), "not-v1bob"), HUSH_ERR_DB_KEY);
    assert_int_equal(open_with_key_of(tpath("v1wrong.db"), "v1bob"), HUSH_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_selftest_and_provider),
        cmocka_unit_test(test_basic_conversation),
        cmocka_unit_test(trap_bundle_signatures),
        cmocka_unit_test(test_bundle_prekey_rotation),
        cmocka_unit_test(trap_tampered_prekey_message),
        cmocka_unit_test(test_too_far_ahead),
        cmocka_unit_test(test_identity_change),
        cmocka_unit_test(test_safety_numbers),
        cmocka_unit_test(test_sealed_at_rest_canary),
        cmocka_unit_test(test_sealed_rows_bound_to_identity),
        cmocka_unit_test(test_outbox),
        cmocka_unit_test(trap_recursive_lock_threads),
        cmocka_unit_test(trap_protobuf_runtimes_coexist),
        cmocka_unit_test(test_signature_vector),
        cmocka_unit_test(test_padding_all_lengths),
        cmocka_unit_test(test_deleted_history_gone),
        cmocka_unit_test(test_identity_accept_bound),
        cmocka_unit_test(test_keycheck_row_required),
        cmocka_unit_test(test_longest_names_sealed),
        cmocka_unit_test(test_session_record_capped),
        cmocka_unit_test(test_archived_states_capped),
        cmocka_unit_test(test_skipped_keys_capped),
        cmocka_unit_test(test_auth_key),
        cmocka_unit_test(test_signed_prekey_rotation),
        cmocka_unit_test(test_rows_rolled_back_refused),
        cmocka_unit_test(test_sealed_rows_bound_to_database),
        cmocka_unit_test(test_v1_database_upgraded),
    };
    return cmocka_run_group_tests_name("sdk", tests, NULL, NULL);
}
