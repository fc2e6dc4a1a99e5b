/* fuzz_dbfile.c - opening a corrupted database file, relay side (hstore with the relay's schema
 * migrations via storage_open_db is not linked here: the store layer) and SDK side
 * (hush_client_open: quick_check, key check, migrations). A clear error, never a crash. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "fuzz.h"
#include "hush.h"
#include "hush_store.h"

static const char *const migs[] = { "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);" };

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[256], side[300];
    snprintf(path, sizeof path, "%s/in.db", fuzz_tmpdir());
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    hstore *db = NULL;
    char err[256];
    if (hstore_open(path, NULL, migs, 1, &db, err, sizeof err) == HSTORE_OK) {
        if (hstore_integrity_check(db) != HSTORE_OK) {
            /* a corrupt file that opened: reported, not a crash */
        }
        hstore_close(db);
    }
    f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, size, f);
        fclose(f);
    }
    uint8_t key[32] = { 4 };
    hush_client *c = NULL;
    if (hush_client_open(path, key, NULL, &c) == HUSH_OK)
        hush_client_close(c);
    unlink(path);
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
    return 0;
}
