/* fuzz_sealed.c - decoding a sealed row (what an attacker with disk access controls): only a
 * value sealed under this key for this row's identity opens. */
#include <stdlib.h>
#include <string.h>

#include "../sdk/internal.h"
#include "fuzz.h"

static hush_client g_c;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    memset(g_c.seal_key, 7, sizeof g_c.seal_key);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *pt = NULL;
    size_t len = 0;
    if (hsdk_open(&g_c, "hush1|sessions|5:alice|1|0", data, size, &pt, &len) == HUSH_OK) {
        /* a forgery would need the key: only a real seal of ours gets here */
        uint8_t *ct = NULL;
        size_t clen = 0;
        if (hsdk_seal(&g_c, "hush1|sessions|5:alice|1|0", pt, len, &ct, &clen) != HUSH_OK)
            abort();
        free(ct);
        free(pt);
    }
    return 0;
}
