/*
 * inproc.c - the relay inside a harness's own process (fuzz_relay, fuzz_blobs): the real storage
 * thread, event loop and, when asked, the blob thread, on a free loopback port with a throw-away
 * database in the harness's temporary directory. One relay per process.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz.h"
#include "inproc.h"
#include "relay.h"
#include "server.h"

static struct relay_config g_cfg; /* the relay keeps a pointer to it */

static void die(const char *what, const char *err)
{
    fprintf(stderr, "fuzz: in-process relay: %s: %s\n", what, err);
    abort();
}

void fuzz_relay_inproc(struct relay_proc *r, const char *name, const char *const (*set)[2], size_t nset, int blobs)
{
    setenv("HUSH_TEST_TMP", fuzz_tmpdir(), 1);
    cfg_defaults(&g_cfg);
    char err[512], v[400];
    r->port = relay_free_port();
    snprintf(v, sizeof v, "127.0.0.1:%d", r->port);
    const char *base[][2] = {
        { "listen", v }, { "metrics_listen", "off" }, { "workers", "1" }, { "durability", "normal" }, { "log_level", "error" },
    };
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++)
        if (cfg_set(&g_cfg, base[i][0], base[i][1], err, sizeof err))
            die(base[i][0], err);
    for (size_t i = 0; i < nset; i++)
        if (cfg_set(&g_cfg, set[i][0], set[i][1], err, sizeof err))
            die(set[i][0], err);
    snprintf(g_cfg.db_path, sizeof g_cfg.db_path, "%s/%s.db", fuzz_tmpdir(), name);
    fuzz_remove_db(g_cfg.db_path);
    snprintf(v, sizeof v, "%s/%s.log", fuzz_tmpdir(), name);
    if (cfg_set(&g_cfg, "log_file", v, err, sizeof err) || cfg_validate(&g_cfg, err, sizeof err))
        die("config", err);
    rlog_init(g_cfg.log_level, g_cfg.log_file);
    directory_init();
    presence_init();
    if (storage_start(&g_cfg, err, sizeof err) || (blobs && blobs_start(&g_cfg, err, sizeof err)) ||
        server_start(&g_cfg, err, sizeof err))
        die("start", err);
}
