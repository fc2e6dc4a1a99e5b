/*
 * test_conversation.c - long conversations between 2 and 3 in-process clients with separate
 * database files, over a simulated network that reorders, loses and duplicates; databases closed
 * and reopened mid-conversation; and the N-th database write failing during encrypt and decrypt.
 */
#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"
#include "util.h"

#define MAXC 3
#define WINDOW 4        /* reordering: deliver any of the oldest WINDOW in-flight envelopes */
#define LOSS_PCT 4
#define DUP_PCT 6
#define REOPEN_PER_MILLE 3

struct pkt {
    int from, to;
    long idx;
    uint8_t *env;
    size_t len;
};

struct net {
    struct pkt *q;
    size_t n, cap;
};

static void push(struct net *net, struct pkt p)
{
    if (net->n == net->cap) {
        net->cap = net->cap ? net->cap * 2 : 64;
        net->q = realloc(net->q, net->cap * sizeof *net->q);
        assert_non_null(net->q);
    }
    net->q[net->n++] = p;
}

static struct pkt take(struct net *net, size_t i)
{
    struct pkt p = net->q[i];
    memmove(&net->q[i], &net->q[i + 1], (net->n - i - 1) * sizeof *net->q);
    net->n--;
    return p;
}

static const char *names[MAXC] = { "anna", "ben", "cleo" };

static void run_conversation(int nclients, long nmsgs, uint64_t seed)
{
    rnd_seed(seed);
    hush_client *c[MAXC];
    char dbname[MAXC][32];
    for (int i = 0; i < nclients; i++) {
        snprintf(dbname[i], sizeof dbname[i], "%s%d", names[i], nclients);
        c[i] = open_client(dbname[i], (uint32_t)(i + 1), HUSH_DURABILITY_NORMAL);
    }
    /* Lower index initiates each pair: the other side gets a session from the first message. */
    for (int i = 0; i < nclients; i++)
        for (int j = i + 1; j < nclients; j++)
            start_session(c[i], c[j]);

    uint8_t *seen = calloc((size_t)nmsgs, 1);
    assert_non_null(seen);
    struct net net = { 0 };
    long sent = 0, delivered = 0, lost = 0, dups = 0, reopens = 0;
    while (sent < nmsgs || net.n > 0) {
        if (sent < nmsgs && (net.n == 0 || rnd() % 2 == 0)) {
            int from = (int)(rnd() % (uint64_t)nclients);
            int to = (int)((from + 1 + rnd() % (uint64_t)(nclients - 1)) % (uint64_t)nclients);
            if (!hush_has_session(c[from], dbname[to], (uint32_t)(to + 1)))
                continue; /* waits until the peer's first message arrives */
            char body[64];
            snprintf(body, sizeof body, "message %ld from %s to %s", sent, dbname[from], dbname[to]);
            struct pkt p = { from, to, sent, NULL, 0 };
            hush_err e = hush_encrypt(c[from], dbname[to], (uint32_t)(to + 1), (const uint8_t *)body, strlen(body), NULL,
                                      NULL, &p.env, &p.len);
            if (e)
                fail_msg("encrypt #%ld: %s", sent, hush_strerror(e));
            push(&net, p);
            sent++;
        } else {
            size_t w = net.n < WINDOW ? net.n : WINDOW;
            struct pkt p = take(&net, (size_t)(rnd() % w));
            unsigned r = (unsigned)(rnd() % 100);
            if (r < LOSS_PCT) {
                lost++;
                hush_free(p.env);
                continue;
            }
            hush_message *m = NULL;
            hush_err e = hush_decrypt(c[p.to], dbname[p.from], (uint32_t)(p.from + 1), p.env, p.len, &m);
            if (e == HUSH_OK) {
                char expect[64];
                snprintf(expect, sizeof expect, "message %ld from %s to %s", p.idx, dbname[p.from], dbname[p.to]);
                assert_string_equal((char *)m->body, expect);
                if (seen[p.idx])
                    fail_msg("message %ld decrypted twice", p.idx);
                seen[p.idx] = 1;
                delivered++;
                hush_message_free(m);
            } else if (e == HUSH_ERR_DUPLICATE) {
                if (!seen[p.idx])
                    fail_msg("message %ld reported duplicate before it was seen", p.idx);
                dups++;
            } else {
                fail_msg("decrypt #%ld (%s -> %s): %s", p.idx, dbname[p.from], dbname[p.to], hush_strerror(e));
            }
            if (r < LOSS_PCT + DUP_PCT)
                push(&net, p); /* the network delivers it again later */
            else
                hush_free(p.env);
        }
        if (rnd() % 1000 < REOPEN_PER_MILLE) {
            int k = (int)(rnd() % (uint64_t)nclients);
            c[k] = reopen_client(c[k], dbname[k], HUSH_DURABILITY_NORMAL);
            reopens++;
        }
    }
    print_message("%d clients: %ld sent, %ld delivered once, %ld lost by the simulated network on purpose (%d %% of "
                  "packets), %ld duplicates dropped, %ld reopens\n",
                  nclients, sent, delivered, lost, LOSS_PCT, dups, reopens);
    assert_int_equal(sent, nmsgs);
    assert_true(delivered > nmsgs * 9 / 10);
    assert_true(dups > 0);
    assert_true(reopens > 0);
    for (int i = 0; i < nclients; i++) {
        assert_int_equal(hush_client_check(c[i]), HUSH_OK);
        hush_client_close(c[i]);
    }
    free(net.q);
    free(seen);
}

static void test_two_clients_10k(void **state)
{
    (void)state;
    run_conversation(2, 10000, 0x2545f4914f6cdd1dull);
}

static void test_three_clients_10k(void **state)
{
    (void)state;
    run_conversation(3, 10000, 0x9e3779b97f4a7c15ull);
}

/* Decrypts `env` at b with the N-th write failing, for N = 1, 2, ... until it succeeds without
 * reaching the fault. Every failure must be a clean STORAGE error with nothing half-written. */
static void decrypt_through_faults(hush_client *b, const char *from, const uint8_t *env, size_t len, const char *expect,
                                   long *writes_needed)
{
    long n;
    for (n = 1; n < 1000; n++) {
        long w0 = hstore_writes(b->db);
        hstore_fail_nth_write(b->db, n);
        hush_message *m = NULL;
        hush_err e = hush_decrypt(b, from, 1, env, len, &m);
        long used = hstore_writes(b->db) - w0;
        hstore_fail_nth_write(b->db, 0);
        if (e == HUSH_OK) {
            assert_true(used < n); /* the fault was never reached: no ignored failure */
            assert_string_equal((char *)m->body, expect);
            hush_message_free(m);
            break;
        }
        assert_int_equal(e, HUSH_ERR_STORAGE);
        assert_null(m);
        assert_int_equal(hush_client_check(b), HUSH_OK);
    }
    *writes_needed = n - 1;
    assert_true(n > 2);
}

static void test_nth_write_fails(void **state)
{
    (void)state;
    hush_client *a = open_client("faulta", 1, HUSH_DURABILITY_NORMAL);
    hush_client *b = open_client("faultb", 1, HUSH_DURABILITY_NORMAL);
    start_session(a, b);
    uint32_t prekeys_before = 0, prekeys_after = 0;
    assert_int_equal(hush_prekeys_remaining(b, &prekeys_before), HUSH_OK);

    /* Encrypt side: a failed write returns no ciphertext and leaves the ratchet where it was. */
    uint8_t *env = NULL;
    size_t len = 0;
    long n;
    for (n = 1; n < 100; n++) {
        long w0 = hstore_writes(a->db);
        hstore_fail_nth_write(a->db, n);
        hush_err e = hush_encrypt(a, "faultb", 1, (const uint8_t *)"first", 5, NULL, NULL, &env, &len);
        long used = hstore_writes(a->db) - w0;
        hstore_fail_nth_write(a->db, 0);
        if (e == HUSH_OK) {
            assert_true(used < n);
            break;
        }
        assert_int_equal(e, HUSH_ERR_STORAGE);
        assert_null(env);
    }
    assert_true(n > 1);

    /* Decrypt side, PreKey message: includes the prekey removal and the identity save. */
    long needed = 0;
    decrypt_through_faults(b, "faulta", env, len, "first", &needed);
    print_message("PreKey decrypt: every one of %ld writes failed in turn, all rolled back\n", needed);
    hush_free(env);
    assert_int_equal(hush_prekeys_remaining(b, &prekeys_after), HUSH_OK);
    assert_int_equal(prekeys_after, prekeys_before - 1);

    /* Normal message, both directions. */
    uint8_t *r = NULL;
    assert_int_equal(hush_encrypt(b, "faulta", 1, (const uint8_t *)"reply", 5, NULL, NULL, &r, &len), HUSH_OK);
    decrypt_through_faults(a, "faultb", r, len, "reply", &needed);
    hush_free(r);
    assert_int_equal(hush_encrypt(a, "faultb", 1, (const uint8_t *)"second", 6, NULL, NULL, &env, &len), HUSH_OK);
    decrypt_through_faults(b, "faulta", env, len, "second", &needed);
    print_message("SignalMessage decrypt: %ld writes, each failure rolled back\n", needed);
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(b, "faulta", 1, env, len, &m), HUSH_ERR_DUPLICATE);
    hush_free(env);

    /* The conversation goes on normally afterwards. */
    for (int i = 0; i < 20; i++) {
        hush_client *s = i % 2 ? a : b, *d = i % 2 ? b : a;
        const char *to = i % 2 ? "faultb" : "faulta", *from = i % 2 ? "faulta" : "faultb";
        char body[32];
        snprintf(body, sizeof body, "after %d", i);
        assert_int_equal(hush_encrypt(s, to, 1, (const uint8_t *)body, strlen(body), NULL, NULL, &env, &len), HUSH_OK);
        assert_int_equal(hush_decrypt(d, from, 1, env, len, &m), HUSH_OK);
        assert_string_equal((char *)m->body, body);
        hush_message_free(m);
        hush_free(env);
    }
    hush_client_close(a);
    hush_client_close(b);
}

/* Reopening after every single message, with the sender retrying the same message id: the
 * receiver keeps one copy in its history. */
static void test_reopen_every_message_and_retry(void **state)
{
    (void)state;
    hush_client *a = open_client("reopa", 1, HUSH_DURABILITY_FULL);
    hush_client *b = open_client("reopb", 1, HUSH_DURABILITY_FULL);
    start_session(a, b);
    uint8_t mid[16];
    for (int i = 0; i < 40; i++) {
        char body[32];
        snprintf(body, sizeof body, "msg %d", i);
        uint8_t *env = NULL, *env2 = NULL;
        size_t len, len2;
        assert_int_equal(hush_encrypt(a, "reopb", 1, (const uint8_t *)body, strlen(body), NULL, mid, &env, &len), HUSH_OK);
        a = reopen_client(a, "reopa", HUSH_DURABILITY_FULL);
        /* A retry after a crash re-encrypts with the same message id: a new ciphertext. */
        assert_int_equal(hush_encrypt(a, "reopb", 1, (const uint8_t *)body, strlen(body), mid, NULL, &env2, &len2), HUSH_OK);
        hush_message *m = NULL;
        assert_int_equal(hush_decrypt(b, "reopa", 1, env, len, &m), HUSH_OK);
        assert_memory_equal(m->message_id, mid, 16);
        hush_message_free(m);
        b = reopen_client(b, "reopb", HUSH_DURABILITY_FULL);
        assert_int_equal(hush_decrypt(b, "reopa", 1, env2, len2, &m), HUSH_ERR_DUPLICATE);
        assert_int_equal(hush_decrypt(b, "reopa", 1, env, len, &m), HUSH_ERR_DUPLICATE);
        hush_free(env);
        hush_free(env2);
        if (i % 5 == 4) {
            assert_int_equal(hush_encrypt(b, "reopa", 1, (const uint8_t *)"ack", 3, NULL, NULL, &env, &len), HUSH_OK);
            assert_int_equal(hush_decrypt(a, "reopb", 1, env, len, &m), HUSH_OK);
            hush_message_free(m);
            hush_free(env);
        }
    }
    hush_history_entry *h = NULL;
    size_t count = 0;
    assert_int_equal(hush_history_list(b, "reopa", 0, 500, &h, &count), HUSH_OK);
    size_t incoming = 0;
    for (size_t i = 0; i < count; i++)
        incoming += !h[i].outgoing;
    assert_int_equal(incoming, 40);
    hush_history_free(h, count);
    hush_client_close(a);
    hush_client_close(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nth_write_fails),
        cmocka_unit_test(test_reopen_every_message_and_retry),
        cmocka_unit_test(test_two_clients_10k),
        cmocka_unit_test(test_three_clients_10k),
    };
    return cmocka_run_group_tests_name("conversation", tests, NULL, NULL);
}
