/* util.h - helpers shared by the cmocka suites. */
#ifndef HUSH_TEST_UTIL_H
#define HUSH_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "hush.h"

/* A path inside the suite's temporary directory (static buffer rotation: 8 slots). */
const char *tpath(const char *name);

/* The deterministic test key for a name (so reopening works). */
void test_key(const char *name, uint8_t key[HUSH_DB_KEY_BYTES]);

/* Opens <name>.db (creating the device <name>/<dev> if new). Fails the test on error. */
hush_client *open_client(const char *name, uint32_t dev, hush_durability d);
hush_client *reopen_client(hush_client *c, const char *name, hush_durability d);

/* a imports a fresh bundle of b: a can now send to b. */
void start_session(hush_client *a, hush_client *b);

/* 1 if the file contains the byte string. */
int file_contains(const char *path, const void *needle, size_t n);

/* A self-signed P-256 certificate for "localhost" and 127.0.0.1 (valid one day), made by the
 * openssl command into the PEM files cert and key. Fails the test on error. */
void make_test_cert(const char *cert, const char *key);

/* Deterministic PRNG for schedules (xorshift). */
uint64_t rnd(void);
void rnd_seed(uint64_t s);

#endif
