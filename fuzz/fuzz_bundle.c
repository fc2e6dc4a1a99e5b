/* fuzz_bundle.c - hush_bundle_import: a peer's key bundle from the network. Nothing may crash, and
 * a refused bundle leaves no session behind. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "hush.h"

static hush_client *g_c;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    char path[256];
    snprintf(path, sizeof path, "%s/bundle.db", fuzz_tmpdir());
    uint8_t key[32] = { 1 };
    hush_open_opts o = { HUSH_DURABILITY_NORMAL };
    if (hush_client_open(path, key, &o, &g_c) || hush_device_create(g_c, "fuzzer", 1))
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char peer[HUSH_USERNAME_MAX + 1];
    uint32_t dev = 0;
    hush_err e = hush_bundle_import(g_c, data, size, peer, &dev);
    if (e == HUSH_OK && !hush_has_session(g_c, peer, dev))
        abort(); /* accepted means a session exists */
    return 0;
}
