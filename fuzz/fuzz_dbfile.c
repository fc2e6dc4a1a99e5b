/* fuzz_dbfile.c - a damaged or hostile database file, opened and read the way each side does:
 *   relay: storage_open_db (hushd's schema migrations, header and quick_check), then what hushd
 *          reads at start (the mailbox count, presence allow-lists and last-seen times);
 *   SDK:   hush_client_open (quick_check, key check, migrations, the device row) under the key
 *          the seed database was made with, then the read paths an app calls first (device info
 *          and keys, bundle export, history, outbox, peer devices, safety number, an encrypt to
 *          the seed's peer, a full integrity check).
 * Each input is written to a fresh file and opened by both. A clear error, never a crash. The
 * seeds (make fuzz-seeds) are real databases of both kinds, compacted to fit -max_len. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "fuzz.h"
#include "hush.h"
#include "hush_store.h"
#include "relay.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    rlog_init(RLOG_ERROR, "/dev/null");
    return 0;
}

static void put_file(const char *path, const uint8_t *data, size_t size)
{
    char side[300];
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
    FILE *f = fopen(path, "wb");
    if (!f)
        abort(); /* the harness's own directory: not the input's fault */
    if (size && fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
}

static void relay_side(const char *path)
{
    char err[256];
    hstore *db = storage_open_db(path, 0, err, sizeof err);
    if (!db)
        return;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(hstore_handle(db), "SELECT count(*) FROM mailbox", -1, &st, NULL) == SQLITE_OK)
        (void)sqlite3_step(st);
    sqlite3_finalize(st);
    presence_init();
    presence_load(db);
    presence_free();
    hstore_close(db);
}

static void sdk_side(const char *path)
{
    uint8_t key[HUSH_DB_KEY_BYTES] = { FUZZ_DB_KEY_BYTE };
    hush_client *c = NULL;
    if (hush_client_open(path, key, NULL, &c) != HUSH_OK)
        return;
    int failed = 0; /* which calls fail depends on the damage; only crashes matter */
    char user[HUSH_USERNAME_MAX + 1];
    uint32_t dev = 0, reg = 0, n = 0;
    uint8_t ik[33], pub[32], sig[64], chal[32] = { 1 }, mid[HUSH_MESSAGE_ID_BYTES];
    failed += hush_device_info(c, user, &dev, &reg) != HUSH_OK;
    failed += hush_device_identity_key(c, ik) != HUSH_OK;
    failed += hush_device_auth_key(c, pub) != HUSH_OK;
    failed += hush_auth_proof(c, "login", "wss://relay.example.org:443", NULL, 0, NULL, chal, sig) != HUSH_OK;
    failed += hush_prekeys_remaining(c, &n) != HUSH_OK;

    uint8_t *buf = NULL;
    size_t len = 0;
    if (hush_bundle_export(c, &buf, &len) == HUSH_OK)
        hush_free(buf);

    hush_history_entry *h = NULL;
    size_t cnt = 0;
    if (hush_history_list(c, FUZZ_DB_PEER, 0, 50, &h, &cnt) == HUSH_OK)
        hush_history_free(h, cnt);

    hush_outbox_entry *o = NULL;
    failed += hush_outbox_count(c, &n) != HUSH_OK;
    if (hush_outbox_next(c, &o) == HUSH_OK)
        hush_outbox_entry_free(o);

    uint32_t devs[8];
    failed += hush_peer_devices(c, FUZZ_DB_PEER, devs, 8, &cnt) != HUSH_OK;
    char safety[HUSH_SAFETY_NUMBER_LEN + 1];
    failed += hush_safety_number(c, FUZZ_DB_PEER, 1, safety) != HUSH_OK;
    if (hush_encrypt(c, FUZZ_DB_PEER, 1, (const uint8_t *)"hi", 2, NULL, mid, &buf, &len) == HUSH_OK)
        hush_free(buf);
    failed += hush_client_check(c) != HUSH_OK;
    hush_client_close(c);
    (void)failed;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[256];
    snprintf(path, sizeof path, "%s/in.db", fuzz_tmpdir());
    put_file(path, data, size);
    relay_side(path);
    put_file(path, data, size);
    sdk_side(path);
    put_file(path, NULL, 0);
    unlink(path);
    return 0;
}
