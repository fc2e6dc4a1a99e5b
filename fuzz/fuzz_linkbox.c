/* fuzz_linkbox.c - the link box a new device opens (after the sealed box is opened: whoever knows
 * the link code can seal one, so its contents are attacker-controlled). Nothing may crash; a
 * refused box leaves no device behind; an accepted one leaves exactly the device it names. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../sdk/internal.h"
#include "fuzz.h"

static hush_client *g_c;
static char g_path[256];

static void fresh(void)
{
    if (g_c)
        hush_client_close(g_c);
    g_c = NULL;
    static const char *const suffix[] = { "", "-wal", "-shm" };
    for (size_t i = 0; i < 3; i++) {
        char p[300];
        snprintf(p, sizeof p, "%s%s", g_path, suffix[i]);
        unlink(p);
    }
    uint8_t key[32] = { 3 };
    hush_open_opts o = { HUSH_DURABILITY_NORMAL };
    if (hush_client_open(g_path, key, &o, &g_c))
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    snprintf(g_path, sizeof g_path, "%s/linkbox.db", fuzz_tmpdir());
    fresh();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *const *presence = NULL;
    size_t np = 0;
    hush_err e = hsdk_link_box_apply(g_c, data, size, &presence, &np);
    char user[HUSH_USERNAME_MAX + 1];
    uint32_t dev = 0;
    hush_err info = hush_device_info(g_c, user, &dev, NULL);
    if (e != HUSH_OK) {
        if (info != HUSH_ERR_NO_DEVICE || presence)
            abort(); /* refused, yet something was made */
        return 0;
    }
    Hush__LinkBox *lb = hush__link_box__unpack(NULL, size, data);
    if (!lb || info != HUSH_OK || strcmp(user, lb->username) != 0 || dev != lb->device_id || dev < 2 ||
        np > lb->n_presence_allow)
        abort(); /* accepted: exactly the device the box names */
    hush__link_box__free_unpacked(lb, NULL);
    for (size_t i = 0; i < np; i++)
        free(presence[i]);
    free((void *)presence);
    fresh(); /* the next input starts without a device again */
    return 0;
}
