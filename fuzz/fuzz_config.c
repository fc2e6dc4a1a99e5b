/* fuzz_config.c - the relay's configuration parser (relay/config.c) and its validation. */
#include <stdio.h>

#include "../relay/relay.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct relay_config c;
    cfg_defaults(&c);
    char err[512];
    if (cfg_parse_text(&c, (const char *)data, size, "fuzz.conf", err, sizeof err) == 0) {
        (void)cfg_validate(&c, err, sizeof err);
        FILE *f = fopen("/dev/null", "w");
        if (f) {
            cfg_print(&c, f);
            fclose(f);
        }
    }
    return 0;
}
