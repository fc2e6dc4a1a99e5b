/* test_group.c - sender-key groups: distribution, rotation on membership change, SKDM replay. */
#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include <curve.h>
#include <ratchet.h>

#include "internal.h"
#include "util.h"

#define NM 5
static const char *member[NM] = { "gaby", "hank", "iris", "jack", "kira" };
static hush_client *c[NM];

static void pairwise_all(void)
{
    for (int i = 0; i < NM; i++)
        c[i] = open_client(member[i], 1, HUSH_DURABILITY_NORMAL);
    for (int i = 0; i < NM; i++)
        for (int j = i + 1; j < NM; j++) {
            start_session(c[i], c[j]);
            uint8_t *env = NULL;
            size_t len;
            assert_int_equal(hush_encrypt(c[i], member[j], 1, (const uint8_t *)"hi", 2, NULL, NULL, &env, &len), HUSH_OK);
            hush_message *m = NULL;
            assert_int_equal(hush_decrypt(c[j], member[i], 1, env, len, &m), HUSH_OK);
            hush_message_free(m);
            hush_free(env);
        }
}

static void distribute(int from, const char *group, const int *to, int nto)
{
    for (int k = 0; k < nto; k++) {
        int j = to[k];
        uint8_t *env = NULL;
        size_t len;
        assert_int_equal(hush_group_distribution(c[from], group, member[j], 1, &env, &len), HUSH_OK);
        hush_message *m = NULL;
        assert_int_equal(hush_decrypt(c[j], member[from], 1, env, len, &m), HUSH_OK);
        assert_int_equal(m->kind, HUSH_KIND_GROUP_KEY);
        assert_string_equal(m->group_id, group);
        assert_int_equal(m->body_len, 0);
        hush_message_free(m);
        hush_free(env);
    }
}

static void test_group_of_five_rotation(void **state)
{
    (void)state;
    pairwise_all();
    const char *g = "family";
    uint8_t *env = NULL;
    size_t len;
    assert_int_equal(hush_group_encrypt(c[0], g, (const uint8_t *)"x", 1, NULL, &env, &len), HUSH_ERR_NO_GROUP_SESSION);

    for (int i = 0; i < NM; i++) {
        int others[NM - 1], n = 0;
        for (int j = 0; j < NM; j++)
            if (j != i)
                others[n++] = j;
        distribute(i, g, others, n);
    }
    /* Everyone speaks; everyone else reads. */
    for (int i = 0; i < NM; i++) {
        char body[64];
        snprintf(body, sizeof body, "hello from %s", member[i]);
        assert_int_equal(hush_group_encrypt(c[i], g, (const uint8_t *)body, strlen(body), NULL, &env, &len), HUSH_OK);
        for (int j = 0; j < NM; j++) {
            if (j == i)
                continue;
            hush_message *m = NULL;
            assert_int_equal(hush_decrypt(c[j], member[i], 1, env, len, &m), HUSH_OK);
            assert_int_equal(m->kind, HUSH_KIND_GROUP_TEXT);
            assert_string_equal(m->group_id, g);
            assert_string_equal((char *)m->body, body);
            assert_string_equal(m->sender, member[i]);
            hush_message_free(m);
            assert_int_equal(hush_decrypt(c[j], member[i], 1, env, len, &m), HUSH_ERR_DUPLICATE);
        }
        /* A group envelope presented as coming from someone else does not decrypt. */
        hush_message *m = NULL;
        assert_int_not_equal(hush_decrypt(c[(i + 1) % NM], member[(i + 2) % NM], 1, env, len, &m), HUSH_OK);
        hush_free(env);
    }

    /* kira (4) leaves: gaby rotates and redistributes to the remaining three only. */
    assert_int_equal(hush_group_rotate(c[0], g), HUSH_OK);
    int remaining[] = { 1, 2, 3 };
    distribute(0, g, remaining, 3);
    const char *secret = "after kira left";
    assert_int_equal(hush_group_encrypt(c[0], g, (const uint8_t *)secret, strlen(secret), NULL, &env, &len), HUSH_OK);
    for (int k = 0; k < 3; k++) {
        hush_message *m = NULL;
        assert_int_equal(hush_decrypt(c[remaining[k]], member[0], 1, env, len, &m), HUSH_OK);
        assert_string_equal((char *)m->body, secret);
        hush_message_free(m);
    }
    hush_message *m = NULL;
    hush_err e = hush_decrypt(c[4], member[0], 1, env, len, &m);
    assert_true(e == HUSH_ERR_NO_GROUP_SESSION || e == HUSH_ERR_BAD_MESSAGE);
    assert_null(m);
    hush_free(env);

    for (int i = 0; i < NM; i++) {
        assert_int_equal(hush_client_check(c[i]), HUSH_OK);
        hush_client_close(c[i]);
    }
}

/* Trap: re-processing an already-seen distribution message would reset the chain and let an old
 * group message decrypt again. Checked at the libsignal level, below the history's own
 * message-id de-duplication, so this proves the skip itself. */
static void trap_skdm_replay(void **state)
{
    (void)state;
    hush_client *a = open_client("lara", 1, HUSH_DURABILITY_NORMAL);
    hush_client *b = open_client("mike", 1, HUSH_DURABILITY_NORMAL);
    start_session(a, b);
    const char *g = "replay";
    uint8_t *d1 = NULL, *d2 = NULL, *msg = NULL;
    size_t l1, l2, lm;
    /* Two distributions of the same key (same id and iteration) before any message. */
    assert_int_equal(hush_group_distribution(a, g, "mike", 1, &d1, &l1), HUSH_OK);
    assert_int_equal(hush_group_distribution(a, g, "mike", 1, &d2, &l2), HUSH_OK);
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(b, "lara", 1, d1, l1, &m), HUSH_OK);
    hush_message_free(m);
    assert_int_equal(hush_group_encrypt(a, g, (const uint8_t *)"once", 4, NULL, &msg, &lm), HUSH_OK);
    assert_int_equal(hush_decrypt(b, "lara", 1, msg, lm, &m), HUSH_OK);
    hush_message_free(m);
    /* The second copy arrives later: processed as a (skipped) group key. */
    assert_int_equal(hush_decrypt(b, "lara", 1, d2, l2, &m), HUSH_OK);
    assert_int_equal(m->kind, HUSH_KIND_GROUP_KEY);
    hush_message_free(m);
    /* The old group message must still be a duplicate to libsignal itself. */
    Hush__Envelope *env = hush__envelope__unpack(NULL, lm, msg);
    assert_non_null(env);
    hsdk_lock(b);
    assert_int_equal(hsdk_begin(b), HUSH_OK);
    signal_buffer *pt = NULL;
    hush_err e = hsdk_group_decrypt(b, "lara", 1, g, env->ciphertext.data, env->ciphertext.len, &pt);
    hsdk_rollback(b);
    hsdk_unlock(b);
    assert_int_equal(e, HUSH_ERR_DUPLICATE);
    assert_null(pt);
    hush__envelope__free_unpacked(env, NULL);
    /* And through the public API too. */
    assert_int_equal(hush_decrypt(b, "lara", 1, msg, lm, &m), HUSH_ERR_DUPLICATE);
    hush_free(d1);
    hush_free(d2);
    hush_free(msg);
    hush_client_close(a);
    hush_client_close(b);
}

/* ------------------------------------------------------------------------------------------ */
/* Rooms: the rules every device applies to a change (offline, through the real decrypt path). */

#define NR 4
static const char *rname[NR] = { "nora", "otto", "pia", "quin" };
static hush_client *rc[NR];

/* The newest queued room change of `from` (its outbox row), taken out of the outbox. */
static uint8_t *take_change(hush_client *from, size_t *len)
{
    uint8_t *body = NULL;
    for (;;) {
        hush_outbox_entry *o = NULL;
        if (hush_outbox_next(from, &o) != HUSH_OK)
            break;
        assert_int_equal(o->peer[0], '#');
        free(body);
        body = malloc(o->body_len);
        memcpy(body, o->body, o->body_len);
        *len = o->body_len;
        assert_int_equal(hush_outbox_done(from, o->message_id), HUSH_OK);
        hush_outbox_entry_free(o);
    }
    assert_non_null(body);
    return body;
}

/* Delivers a change (any bytes) from `from` to `to` over their pairwise session, as the network
 * thread would; returns what the receiver's decrypt said. */
static hush_err deliver_change(int from, int to, const uint8_t *change, size_t len)
{
    uint8_t mid[16], *env = NULL;
    size_t elen = 0;
    randombytes_buf(mid, sizeof mid);
    hsdk_lock(rc[from]);
    hush_err e = hsdk_encrypt_kind(rc[from], rname[to], 1, HUSH__CONTENT_KIND__CONTENT_ROOM_CHANGE, change, len, mid, 0,
                                   &env, &elen);
    hsdk_unlock(rc[from]);
    assert_int_equal(e, HUSH_OK);
    hush_message *m = NULL;
    e = hush_decrypt(rc[to], rname[from], 1, env, elen, &m);
    if (!e) {
        assert_int_equal(m->kind, HUSH_KIND_GROUP_CHANGE);
        assert_true(m->body_len > 0);
    }
    hush_message_free(m);
    hush_free(env);
    return e;
}

/* The same, sent once to all: the change encrypted under a key (the shared envelope) and the key
 * with the shared envelope's digest pairwise. tamper 1: a byte of the shared ciphertext changed
 * after the digest was taken; 2: the digest names other bytes. */
static hush_err deliver_shared(int from, int to, const uint8_t *change, size_t len, int tamper)
{
    uint8_t key[32], digest[32], mid[16];
    size_t nb = 24, clen = nb + len + 16;
    uint8_t *ct = malloc(clen);
    crypto_aead_xchacha20poly1305_ietf_keygen(key);
    randombytes_buf(ct, nb);
    randombytes_buf(mid, sizeof mid);
    crypto_aead_xchacha20poly1305_ietf_encrypt(ct + nb, NULL, change, len, (const uint8_t *)HSDK_ROOM_CHANGE_AD, 12, NULL,
                                               ct, key);
    crypto_hash_sha256(digest, ct, clen);
    if (tamper == 1)
        ct[nb + 3] ^= 1;
    if (tamper == 2)
        digest[0] ^= 1;
    Hush__Envelope ev = HUSH__ENVELOPE__INIT;
    ev.type = HUSH__CIPHER_TYPE__CIPHER_ROOM_CHANGE;
    ev.ciphertext.data = ct;
    ev.ciphertext.len = clen;
    size_t slen = hush__envelope__get_packed_size(&ev);
    uint8_t *shared = malloc(slen);
    hush__envelope__pack(&ev, shared);
    Hush__RoomChangeKey rk = HUSH__ROOM_CHANGE_KEY__INIT;
    rk.key.data = key;
    rk.key.len = 32;
    rk.digest.data = digest;
    rk.digest.len = 32;
    uint8_t body[128], *env = NULL;
    size_t blen = hush__room_change_key__pack(&rk, body), elen = 0;
    hsdk_lock(rc[from]);
    hush_err e = hsdk_encrypt_kind(rc[from], rname[to], 1, HUSH__CONTENT_KIND__CONTENT_ROOM_CHANGE_KEY, body, blen, mid, 0,
                                   &env, &elen);
    hsdk_unlock(rc[from]);
    assert_int_equal(e, HUSH_OK);
    hush_message *m = NULL;
    e = hsdk_decrypt_shared(rc[to], rname[from], 1, env, elen, shared, slen, &m);
    hush_message_free(m);
    hush_free(env);
    free(shared);
    free(ct);
    return e;
}

/* A change signed by `by` (whoever it is: the point is who may), from a state: version and
 * prev_hash as given. */
static uint8_t *forge(int by, Hush__RoomState *st, size_t *len)
{
    st->author = (char *)rname[by];
    size_t sl = hush__room_state__get_packed_size(st);
    uint8_t *sb = malloc(sl);
    hush__room_state__pack(st, sb);
    uint8_t *msg = malloc(12 + sl);
    memcpy(msg, "hush-room-v1", 12);
    memcpy(msg + 12, sb, sl);
    ratchet_identity_key_pair *kp = NULL;
    hsdk_lock(rc[by]);
    assert_int_equal(hsdk_local_identity(rc[by], &kp), HUSH_OK);
    hsdk_unlock(rc[by]);
    signal_buffer *sig = NULL;
    hush_client *c0 = rc[by];
    assert_int_equal(curve_calculate_signature(c0->sg, &sig, ratchet_identity_key_pair_get_private(kp), msg, 12 + sl), 0);
    Hush__RoomChange ch = HUSH__ROOM_CHANGE__INIT;
    ch.state.data = sb;
    ch.state.len = sl;
    ch.signature.data = signal_buffer_data(sig);
    ch.signature.len = signal_buffer_len(sig);
    *len = hush__room_change__get_packed_size(&ch);
    uint8_t *out = malloc(*len);
    hush__room_change__pack(&ch, out);
    signal_buffer_free(sig);
    SIGNAL_UNREF(kp);
    free(msg);
    free(sb);
    return out;
}

static hush_group_state *info(int who, const char *id)
{
    hush_group_state *g = NULL;
    assert_int_equal(hush_group_info(rc[who], id, &g), HUSH_OK);
    return g;
}

static void test_room_change_rules(void **state)
{
    (void)state;
    for (int i = 0; i < NR; i++)
        rc[i] = open_client(rname[i], 1, HUSH_DURABILITY_NORMAL);
    for (int i = 0; i < NR; i++)
        for (int j = i + 1; j < NR; j++) {
            start_session(rc[i], rc[j]);
            uint8_t *env = NULL;
            size_t len;
            assert_int_equal(hush_encrypt(rc[i], rname[j], 1, (const uint8_t *)"hi", 2, NULL, NULL, &env, &len), HUSH_OK);
            hush_message *m = NULL;
            assert_int_equal(hush_decrypt(rc[j], rname[i], 1, env, len, &m), HUSH_OK);
            hush_message_free(m);
            hush_free(env);
        }
    /* nora creates a room with otto and pia: both apply it */
    const char *members[] = { "otto", "pia" };
    char id[HUSH_ROOM_ID_LEN + 1];
    assert_int_equal(hush_group_create(rc[0], "crew", members, 2, id), HUSH_OK);
    size_t l1 = 0;
    uint8_t *v1 = take_change(rc[0], &l1);
    assert_int_equal(deliver_change(0, 1, v1, l1), HUSH_OK);
    assert_int_equal(deliver_change(0, 2, v1, l1), HUSH_OK);
    hush_group_state *g = info(2, id);
    assert_string_equal(g->name, "crew");
    assert_int_equal(g->n_members, 3);
    assert_true(g->is_member);
    assert_false(g->is_admin);
    assert_int_equal(g->version, 1);
    hush_group_state_free(g, 1);
    /* the same change again (in a new pairwise message): already held, nothing shown */
    assert_int_equal(deliver_change(0, 2, v1, l1), HUSH_ERR_DUPLICATE);
    /* a room that does not include the receiver, or made by someone not its admin: refused */
    assert_int_equal(deliver_change(0, 3, v1, l1), HUSH_ERR_NOT_ALLOWED);
    /* sent once to all (as the network thread does): the shared envelope opens only with the key
     * and digest of its own part, and only unchanged */
    assert_int_equal(deliver_shared(0, 1, v1, l1, 0), HUSH_ERR_DUPLICATE); /* the same state: held already */
    assert_int_equal(deliver_shared(0, 1, v1, l1, 1), HUSH_ERR_BAD_MESSAGE); /* a byte of the shared part changed */
    assert_int_equal(deliver_shared(0, 1, v1, l1, 2), HUSH_ERR_BAD_MESSAGE); /* the digest of another envelope */

    /* a forged change by a member who is not an admin (adds quin) */
    struct hsdk_room cur;
    assert_int_equal(hsdk_room_parse(v1, l1, &cur), HUSH_OK);
    char *m4[] = { "nora", "otto", "pia", "quin" };
    Hush__RoomState st = HUSH__ROOM_STATE__INIT;
    st.room_id = cur.st->room_id;
    st.name = "crew";
    st.members = m4;
    st.n_members = 4;
    st.admins = m4;
    st.n_admins = 1;
    st.version = 2;
    st.prev_hash.data = cur.hash;
    st.prev_hash.len = 32;
    size_t lf = 0;
    uint8_t *forged = forge(1, &st, &lf);
    assert_int_equal(deliver_change(1, 2, forged, lf), HUSH_ERR_NOT_ALLOWED);
    free(forged);
    /* the same change, correctly signed by the admin but handed on by otto: a change comes from its author only */
    uint8_t *by_admin = forge(0, &st, &lf);
    assert_int_equal(deliver_change(1, 2, by_admin, lf), HUSH_ERR_NOT_ALLOWED);
    /* tampered after signing: refused */
    uint8_t *bent = malloc(lf);
    memcpy(bent, by_admin, lf);
    bent[lf / 2] ^= 1;
    hush_err be = deliver_change(0, 2, bent, lf);
    assert_true(be == HUSH_ERR_BAD_MESSAGE || be == HUSH_ERR_NOT_ALLOWED || be == HUSH_ERR_GROUP_CONFLICT);
    free(bent);
    free(by_admin);
    g = info(2, id);
    assert_int_equal(g->n_members, 3); /* none of that changed anything */
    assert_int_equal(g->version, 1);
    hush_group_state_free(g, 1);

    /* real changes by the admin: add quin (v2), promote otto (v3); pia gets v3 first (a gap) */
    const char *add[] = { "quin" };
    assert_int_equal(hush_group_add(rc[0], id, add, 1), HUSH_OK);
    size_t l2 = 0, l3 = 0;
    uint8_t *v2 = take_change(rc[0], &l2);
    assert_int_equal(hush_group_promote(rc[0], id, "otto"), HUSH_OK);
    uint8_t *v3 = take_change(rc[0], &l3);
    assert_int_equal(deliver_change(0, 2, v3, l3), HUSH_ERR_GROUP_CONFLICT);
    assert_int_equal(deliver_change(0, 2, v2, l2), HUSH_OK);
    assert_int_equal(deliver_change(0, 2, v3, l3), HUSH_OK);
    /* quin, new, takes the latest state as it is; otto follows in order */
    assert_int_equal(deliver_change(0, 3, v3, l3), HUSH_OK);
    assert_int_equal(deliver_change(0, 1, v2, l2), HUSH_OK);
    assert_int_equal(deliver_change(0, 1, v3, l3), HUSH_OK);
    /* a replayed old version: refused, the room stays */
    assert_int_equal(deliver_change(0, 2, v1, l1), HUSH_ERR_GROUP_CONFLICT);
    assert_int_equal(deliver_change(0, 2, v2, l2), HUSH_ERR_GROUP_CONFLICT);
    g = info(2, id);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_members, 4);
    int otto_admin = 0;
    for (size_t i = 0; i < g->n_members; i++)
        if (!strcmp(g->members[i], "otto"))
            otto_admin = g->admin[i];
    assert_true(otto_admin);
    hush_group_state_free(g, 1);

    /* two admins change the room at once (both at version 4): the one pia gets first stands, the
     * other is a fork and refused */
    assert_int_equal(hush_group_rename(rc[0], id, "crew-a"), HUSH_OK);
    size_t l4a = 0, l4b = 0;
    uint8_t *v4a = take_change(rc[0], &l4a);
    assert_int_equal(hush_group_rename(rc[1], id, "crew-b"), HUSH_OK);
    uint8_t *v4b = take_change(rc[1], &l4b);
    assert_int_equal(deliver_change(1, 2, v4b, l4b), HUSH_OK);
    assert_int_equal(deliver_change(0, 2, v4a, l4a), HUSH_ERR_GROUP_CONFLICT);
    g = info(2, id);
    assert_string_equal(g->name, "crew-b");
    hush_group_state_free(g, 1);

    /* a member who is not an admin may only take itself out: pia leaves (quin applies it) */
    assert_int_equal(deliver_change(1, 3, v4b, l4b), HUSH_OK);
    assert_int_equal(hush_group_add(rc[2], id, add, 1), HUSH_ERR_NOT_ALLOWED);
    assert_int_equal(hush_group_leave(rc[2], id), HUSH_OK);
    size_t l5 = 0;
    uint8_t *v5 = take_change(rc[2], &l5);
    assert_int_equal(deliver_change(2, 3, v5, l5), HUSH_OK);
    g = info(3, id);
    assert_int_equal(g->n_members, 3);
    hush_group_state_free(g, 1);
    g = info(2, id);
    assert_false(g->is_member);
    hush_group_state_free(g, 1);
    assert_int_equal(hush_group_send(rc[2], id, (const uint8_t *)"x", 1, NULL), HUSH_ERR_NOT_ALLOWED);

    /* someone outside the room cannot hand a key for it, nor send to it */
    uint8_t *skdm = NULL;
    size_t ls = 0;
    assert_int_equal(hush_group_distribution(rc[2], id, "quin", 1, &skdm, &ls), HUSH_OK);
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(rc[3], "pia", 1, skdm, ls, &m), HUSH_ERR_NOT_ALLOWED);
    hush_free(skdm);

    /* history shows the changes in words */
    hush_history_entry *h = NULL;
    size_t n = 0;
    assert_int_equal(hush_group_history(rc[3], id, 0, 50, &h, &n), HUSH_OK);
    assert_int_equal(n, 3); /* added (with v3's state), renamed, pia left */
    int left = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(h[i].kind, HUSH_KIND_GROUP_CHANGE);
        left += strstr((char *)h[i].body, "pia left") != NULL;
    }
    assert_int_equal(left, 1);
    hush_history_free(h, n);
    hsdk_room_release(&cur);
    free(v1);
    free(v2);
    free(v3);
    free(v4a);
    free(v4b);
    free(v5);
    for (int i = 0; i < NR; i++) {
        assert_int_equal(hush_client_check(rc[i]), HUSH_OK);
        hush_client_close(rc[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_of_five_rotation),
        cmocka_unit_test(trap_skdm_replay),
        cmocka_unit_test(test_room_change_rules),
    };
    return cmocka_run_group_tests_name("group", tests, NULL, NULL);
}
