/*
 * test_wipe.c - plaintext is wiped before its memory is freed. This program interposes free() and
 * realloc() (glibc's own are reached as __libc_free / __libc_malloc) and looks into every block
 * freed while a message is encrypted, decrypted, listed from the history and read back from the
 * outbox: no block may still hold the message's text when it goes back to the allocator.
 * Under AddressSanitizer (which owns malloc and free) it is skipped.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hush.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define HUSH_WIPE_SKIP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HUSH_WIPE_SKIP 1
#endif
#endif

#ifndef HUSH_WIPE_SKIP
extern void *__libc_malloc(size_t n);
extern void __libc_free(void *p);

static const char CANARY[] = "wipe-canary-7d1f3a9e";
static volatile int g_watch;   /* look into freed blocks */
static volatile int g_leaks;   /* freed blocks that still held the canary */

static void inspect(void *p)
{
    if (!g_watch || !p)
        return;
    size_t n = malloc_usable_size(p);
    if (memmem(p, n, CANARY, sizeof CANARY - 1))
        g_leaks++;
}

void free(void *p)
{
    inspect(p);
    __libc_free(p);
}

void *realloc(void *p, size_t n)
{
    if (!p)
        return __libc_malloc(n);
    if (n == 0) {
        free(p);
        return NULL;
    }
    void *q = __libc_malloc(n);
    if (!q)
        return NULL;
    size_t old = malloc_usable_size(p);
    memcpy(q, p, old < n ? old : n);
    free(p); /* inspected: realloc hands the old block back as it is */
    return q;
}

static void test_plaintext_wiped(void **state)
{
    (void)state;
    hush_client *a = open_client("wipa", 1, HUSH_DURABILITY_NORMAL);
    hush_client *b = open_client("wipb", 1, HUSH_DURABILITY_NORMAL);
    start_session(a, b);
    g_watch = 1;
    g_leaks = 0;
    uint8_t *env = NULL;
    size_t elen = 0;
    assert_int_equal(hush_encrypt(a, "wipb", 1, (const uint8_t *)CANARY, sizeof CANARY - 1, NULL, NULL, &env, &elen),
                     HUSH_OK);
    int after_encrypt = g_leaks;
    hush_message *m = NULL;
    assert_int_equal(hush_decrypt(b, "wipa", 1, env, elen, &m), HUSH_OK);
    assert_memory_equal(m->body, CANARY, sizeof CANARY - 1);
    hush_message_free(m);
    int after_decrypt = g_leaks;
    hush_history_entry *h = NULL;
    size_t n = 0;
    assert_int_equal(hush_history_list(b, "wipa", 0, 10, &h, &n), HUSH_OK);
    assert_int_equal(n, 1);
    hush_history_free(h, n);
    int after_history = g_leaks;
    uint8_t mid[16];
    assert_int_equal(hush_outbox_put(a, "wipb", (const uint8_t *)CANARY, sizeof CANARY - 1, mid), HUSH_OK);
    hush_outbox_entry *o = NULL;
    assert_int_equal(hush_outbox_next(a, &o), HUSH_OK);
    hush_outbox_entry_free(o);
    int after_outbox = g_leaks;
    g_watch = 0;
    hush_free(env);
    print_message("freed blocks holding the plaintext: encrypt %d, decrypt %d, history %d, outbox %d\n", after_encrypt,
                  after_decrypt - after_encrypt, after_history - after_decrypt, after_outbox - after_history);
    assert_int_equal(g_leaks, 0);
    hush_client_close(a);
    hush_client_close(b);
}
#endif

int main(void)
{
#ifdef HUSH_WIPE_SKIP
    printf("test_wipe: skipped under AddressSanitizer (it interposes malloc and free itself)\n");
    return 0;
#else
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plaintext_wiped),
    };
    return cmocka_run_group_tests_name("wipe", tests, NULL, NULL);
#endif
}
