/* test_group.c - sender-key groups: distribution, rotation on membership change, SKDM replay. */
#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_of_five_rotation),
        cmocka_unit_test(trap_skdm_replay),
    };
    return cmocka_run_group_tests_name("group", tests, NULL, NULL);
}
