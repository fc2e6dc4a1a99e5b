#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <sodium.h>

#include "util.h"

const char *tpath(const char *name)
{
    static char bufs[8][512];
    static int slot;
    const char *dir = getenv("HUSH_TEST_TMP");
    char *b = bufs[slot++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", dir && *dir ? dir : ".", name);
    return b;
}

void test_key(const char *name, uint8_t key[HUSH_DB_KEY_BYTES])
{
    crypto_generichash(key, HUSH_DB_KEY_BYTES, (const uint8_t *)name, strlen(name), NULL, 0);
}

hush_client *open_client(const char *name, uint32_t dev, hush_durability d)
{
    char file[128];
    snprintf(file, sizeof file, "%s.db", name);
    uint8_t key[HUSH_DB_KEY_BYTES];
    test_key(name, key);
    hush_open_opts o = { d };
    hush_client *c = NULL;
    hush_err e = hush_client_open(tpath(file), key, &o, &c);
    if (e)
        fail_msg("open %s: %s", name, hush_strerror(e));
    if (hush_device_info(c, NULL, NULL, NULL) == HUSH_ERR_NO_DEVICE) {
        e = hush_device_create(c, name, dev);
        if (e)
            fail_msg("device_create %s: %s", name, hush_strerror(e));
    }
    return c;
}

hush_client *reopen_client(hush_client *c, const char *name, hush_durability d)
{
    char user[HUSH_USERNAME_MAX + 1];
    uint32_t dev = 0;
    assert_int_equal(hush_device_info(c, user, &dev, NULL), HUSH_OK);
    hush_client_close(c);
    return open_client(name, dev, d);
}

void start_session(hush_client *a, hush_client *b)
{
    uint8_t *bundle = NULL;
    size_t len = 0;
    assert_int_equal(hush_bundle_export(b, &bundle, &len), HUSH_OK);
    char peer[HUSH_USERNAME_MAX + 1];
    uint32_t dev = 0;
    hush_err e = hush_bundle_import(a, bundle, len, peer, &dev);
    if (e)
        fail_msg("bundle_import: %s", hush_strerror(e));
    hush_free(bundle);
}

int file_contains(const char *path, const void *needle, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (size <= 0) {
        fclose(f);
        return 0;
    }
    unsigned char *buf = malloc((size_t)size);
    size_t got = fread(buf, 1, (size_t)size, f);
    fclose(f);
    int found = 0;
    for (size_t i = 0; n <= got && i + n <= got && !found; i++)
        found = memcmp(buf + i, needle, n) == 0;
    free(buf);
    return found;
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;
void rnd_seed(uint64_t s) { rnd_state = s ? s : 1; }
uint64_t rnd(void)
{
    uint64_t x = rnd_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rnd_state = x;
}

void make_test_cert(const char *cert, const char *key)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost "
             "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout '%s' -out '%s' > /dev/null 2>&1",
             key, cert);
    int rc = system(cmd);
    if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0)
        fail_msg("openssl could not make a test certificate (%s)", cert);
}
