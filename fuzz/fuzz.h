/*
 * fuzz.h - shared by the harnesses in fuzz/. Each harness defines LLVMFuzzerTestOneInput (and may
 * define LLVMFuzzerInitialize); it is built twice: with libFuzzer (make fuzz) and with a plain
 * driver that replays files (make test replays fuzz/regressions/ and the seeds).
 */
#ifndef HUSH_FUZZ_H
#define HUSH_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Replaces libsodium's randomness with a deterministic stream (so every crash reproduces) and
 * initialises libsodium. Call first in LLVMFuzzerInitialize. */
void fuzz_deterministic_random(void);

/* Restarts the deterministic stream at a fixed point: a harness whose runs must not depend on the
 * runs before them (stateful ones) calls it at the start of every input. */
void fuzz_random_reset(uint64_t stream);

/* The SDK seed database (gen_seeds: bob's) is sealed under a key of 32 bytes FUZZ_DB_KEY_BYTE, 0...;
 * fuzz_dbfile opens every input under it, so mutations of the seed get past the key check. Its
 * peer is FUZZ_DB_PEER, device 1. */
#define FUZZ_DB_KEY_BYTE 3
#define FUZZ_DB_PEER "alice"

/* Copies a file (a template database) over another; removes a database with its -wal and -shm.
 * Both abort() on failure: the harness's own files, not the input's fault. */
void fuzz_copy_file(const char *from, const char *to);
void fuzz_remove_db(const char *path);

/* A private temporary directory for the harness's databases (created once). */
const char *fuzz_tmpdir(void);

#endif
