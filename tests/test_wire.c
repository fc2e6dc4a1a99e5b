/*
 * test_wire.c - the wire helpers both sides share: WebSocket message reassembly (hwire_rx_*).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hush_wire.h"

/* A message in one piece comes back as the caller's own bytes: nothing copied or allocated. */
static void test_rx_one_piece(void **state)
{
    (void)state;
    struct hwire_rx rx = { 0 };
    uint8_t in[100];
    memset(in, 7, sizeof in);
    const uint8_t *m;
    size_t ml;
    assert_int_equal(hwire_rx_feed(&rx, in, sizeof in, 0, 1, 1000, &m, &ml), HWIRE_RX_DONE);
    assert_ptr_equal(m, in);
    assert_int_equal(ml, sizeof in);
    assert_null(rx.buf);
    hwire_rx_free(&rx);
}

/* Pieces and fragments are joined in order; the buffer is reused for the next message. */
static void test_rx_fragments(void **state)
{
    (void)state;
    struct hwire_rx rx = { 0 };
    uint8_t whole[10000];
    for (size_t i = 0; i < sizeof whole; i++)
        whole[i] = (uint8_t)(i * 31 + 7);
    const uint8_t *m;
    size_t ml;
    /* fragment 1: 6000 bytes in two pieces; fragment 2: 4000 bytes in one piece */
    assert_int_equal(hwire_rx_feed(&rx, whole, 2500, 3500, 0, 20000, &m, &ml), HWIRE_RX_MORE);
    assert_true(hwire_rx_partial(&rx));
    assert_int_equal(hwire_rx_feed(&rx, whole + 2500, 3500, 0, 0, 20000, &m, &ml), HWIRE_RX_MORE);
    assert_int_equal(hwire_rx_feed(&rx, whole + 6000, 4000, 0, 1, 20000, &m, &ml), HWIRE_RX_DONE);
    assert_int_equal(ml, sizeof whole);
    assert_memory_equal(m, whole, sizeof whole);
    assert_true(rx.cap <= 20000);
    hwire_rx_consumed(&rx);
    assert_false(hwire_rx_partial(&rx));
    uint8_t *kept = rx.buf; /* under 64 KiB: kept for the next message */
    assert_non_null(kept);
    assert_int_equal(hwire_rx_feed(&rx, whole, 10, 0, 0, 20000, &m, &ml), HWIRE_RX_MORE);
    assert_int_equal(hwire_rx_feed(&rx, whole + 10, 5, 0, 1, 20000, &m, &ml), HWIRE_RX_DONE);
    assert_int_equal(ml, 15);
    assert_memory_equal(m, whole, 15);
    hwire_rx_free(&rx);
}

/* The cap holds before anything is allocated: on what is held, this piece, and what the peer
 * announced; a refused message leaves nothing behind. */
static void test_rx_cap(void **state)
{
    (void)state;
    struct hwire_rx rx = { 0 };
    uint8_t in[64] = { 0 };
    const uint8_t *m;
    size_t ml;
    /* announced remaining over the cap: refused at the first piece, nothing allocated */
    assert_int_equal(hwire_rx_feed(&rx, in, 10, SIZE_MAX - 5, 0, 1000, &m, &ml), HWIRE_RX_TOO_BIG);
    assert_null(rx.buf);
    assert_int_equal(hwire_rx_feed(&rx, in, 10, 991, 0, 1000, &m, &ml), HWIRE_RX_TOO_BIG);
    assert_null(rx.buf);
    /* exactly the cap is fine */
    assert_int_equal(hwire_rx_feed(&rx, in, 10, 990, 0, 1000, &m, &ml), HWIRE_RX_MORE);
    assert_true(rx.cap <= 1000);
    uint8_t rest[990] = { 0 };
    assert_int_equal(hwire_rx_feed(&rx, rest, 990, 0, 1, 1000, &m, &ml), HWIRE_RX_DONE);
    assert_int_equal(ml, 1000);
    /* a later fragment that would pass the cap: refused, and the partial message dropped */
    assert_int_equal(hwire_rx_feed(&rx, in, 64, 0, 0, 100, &m, &ml), HWIRE_RX_MORE);
    assert_int_equal(hwire_rx_feed(&rx, in, 64, 0, 0, 100, &m, &ml), HWIRE_RX_TOO_BIG);
    assert_false(hwire_rx_partial(&rx));
    /* a single piece over the cap, even a final one */
    assert_int_equal(hwire_rx_feed(&rx, in, 64, 0, 1, 63, &m, &ml), HWIRE_RX_TOO_BIG);
    hwire_rx_free(&rx);
}

/* A large buffer is released once its message was handled; reset drops a partial message. */
static void test_rx_release_and_reset(void **state)
{
    (void)state;
    struct hwire_rx rx = { 0 };
    size_t big = 200 * 1024;
    uint8_t *in = calloc(1, big);
    assert_non_null(in);
    const uint8_t *m;
    size_t ml;
    assert_int_equal(hwire_rx_feed(&rx, in, big / 2, 0, 0, big, &m, &ml), HWIRE_RX_MORE);
    assert_int_equal(hwire_rx_feed(&rx, in, big / 2, 0, 1, big, &m, &ml), HWIRE_RX_DONE);
    assert_int_equal(ml, big);
    hwire_rx_consumed(&rx);
    assert_null(rx.buf); /* an idle connection keeps nothing large */
    assert_int_equal(rx.cap, 0);
    assert_int_equal(hwire_rx_feed(&rx, in, 100, 0, 0, big, &m, &ml), HWIRE_RX_MORE);
    assert_true(hwire_rx_partial(&rx));
    hwire_rx_reset(&rx);
    assert_false(hwire_rx_partial(&rx));
    assert_int_equal(hwire_rx_feed(&rx, in + 5, 3, 0, 1, big, &m, &ml), HWIRE_RX_DONE);
    assert_ptr_equal(m, in + 5); /* nothing left over from the dropped message */
    hwire_rx_free(&rx);
    free(in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rx_one_piece),
        cmocka_unit_test(test_rx_fragments),
        cmocka_unit_test(test_rx_cap),
        cmocka_unit_test(test_rx_release_and_reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
