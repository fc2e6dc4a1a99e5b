#define _XOPEN_SOURCE 700 /* nftw */
/* common.c - deterministic randomness and a scratch directory for the harnesses. */
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "fuzz.h"

/* ChaCha20 keystream under a fixed key: deterministic, and good enough to generate keys that the
 * code under test cannot tell from real ones. */
static uint8_t g_key[crypto_stream_chacha20_KEYBYTES] = { 'h', 'u', 's', 'h', '-', 'f', 'u', 'z', 'z' };
static uint64_t g_counter;

static const char *impl_name(void) { return "hush-fuzz-deterministic"; }

static void impl_buf(void *const buf, const size_t size)
{
    uint8_t nonce[crypto_stream_chacha20_NONCEBYTES] = { 0 };
    memcpy(nonce, &g_counter, sizeof g_counter);
    g_counter++;
    crypto_stream_chacha20(buf, size, nonce, g_key);
}

static uint32_t impl_random(void)
{
    uint32_t v;
    impl_buf(&v, sizeof v);
    return v;
}

static void impl_stir(void) {}

static uint32_t impl_uniform(const uint32_t upper)
{
    if (upper < 2)
        return 0;
    uint32_t min = (1U + ~upper) % upper, r;
    do {
        r = impl_random();
    } while (r < min);
    return r % upper;
}

static int impl_close(void) { return 0; }

static struct randombytes_implementation g_impl = {
    impl_name, impl_random, impl_stir, impl_uniform, impl_buf, impl_close,
};

void fuzz_random_reset(uint64_t stream)
{
    g_counter = stream << 32;
}

void fuzz_deterministic_random(void)
{
    randombytes_set_implementation(&g_impl);
    if (sodium_init() < 0)
        abort();
}

static char g_tmpdir[64];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 ? 0 : 0; /* keep going: remove what can be removed */
}

/* The scratch directory goes when the process exits normally (a crash leaves it, with the
 * databases that led there). */
static void remove_tmpdir(void)
{
    if (g_tmpdir[0])
        nftw(g_tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *fuzz_tmpdir(void)
{
    if (!g_tmpdir[0]) {
        snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/hush-fuzz.XXXXXX");
        if (!mkdtemp(g_tmpdir))
            abort();
        atexit(remove_tmpdir);
    }
    return g_tmpdir;
}

void fuzz_copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (in < 0 || out < 0)
        abort();
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, (size_t)n) != n)
            abort();
    close(in);
    close(out);
}

void fuzz_remove_db(const char *path)
{
    char p[1100];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}
