/* test_store.c - store/: opening, migrations, bad files, savepoints, fault injection. */
#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "hush_store.h"
#include "util.h"

static const char *const migs[] = {
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE);",
    "ALTER TABLE t ADD COLUMN n INTEGER NOT NULL DEFAULT 0;",
};

static hstore *must_open(const char *path, int nmig)
{
    hstore_opts o = { HSTORE_SYNC_NORMAL, 1000, 1, 0, 0, NULL, NULL };
    hstore *db = NULL;
    char err[256];
    hstore_err e = hstore_open(path, &o, migs, nmig, &db, err, sizeof err);
    if (e)
        fail_msg("open: %s", err);
    return db;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void test_migrations_and_wal(void **state)
{
    (void)state;
    const char *p = tpath("mig.db");
    hstore *db = must_open(p, 1);
    assert_int_equal(hstore_version(db), 1);
    assert_int_equal(hstore_exec(db, "INSERT INTO t (v) VALUES ('a')"), HSTORE_OK);
    hstore_close(db);
    db = must_open(p, 2); /* upgrade keeps data */
    assert_int_equal(hstore_version(db), 2);
    sqlite3_stmt *st;
    int row = 0;
    assert_int_equal(hstore_prepare(db, "SELECT v, n FROM t", &st), HSTORE_OK);
    assert_int_equal(hstore_step(db, st, &row), HSTORE_OK);
    assert_int_equal(row, 1);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "a");
    sqlite3_reset(st);
    assert_int_equal(hstore_prepare(db, "PRAGMA journal_mode", &st), HSTORE_OK);
    assert_int_equal(hstore_step(db, st, &row), HSTORE_OK);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_reset(st);
    assert_int_equal(hstore_prepare(db, "PRAGMA foreign_keys", &st), HSTORE_OK);
    assert_int_equal(hstore_step(db, st, &row), HSTORE_OK);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    sqlite3_reset(st);
    hstore_close(db);

    /* A program that knows only version 1 refuses the version-2 file. */
    hstore *old = NULL;
    char err[256];
    assert_int_equal(hstore_open(p, NULL, migs, 1, &old, err, sizeof err), HSTORE_ERR_TOO_NEW);
    assert_null(old);
    assert_non_null(strstr(err, "newer"));
}

static void test_failed_migration_rolls_back(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "CREATE TABLE a (x INTEGER);",
        "CREATE TABLE b (y INTEGER); INSERT INTO nope VALUES (1);",
    };
    const char *p = tpath("badmig.db");
    hstore *db = NULL;
    char err[256];
    assert_int_not_equal(hstore_open(p, NULL, bad, 2, &db, err, sizeof err), HSTORE_OK);
    assert_null(db);
    assert_non_null(strstr(err, "migration 1 -> 2"));
    /* Version 1 committed, version 2 left no trace (table b absent). */
    db = NULL;
    assert_int_equal(hstore_open(p, NULL, bad, 1, &db, err, sizeof err), HSTORE_OK);
    assert_int_equal(hstore_version(db), 1);
    assert_int_not_equal(hstore_exec(db, "SELECT * FROM b"), HSTORE_OK);
    hstore_close(db);
}

static void test_bad_files(void **state)
{
    (void)state;
    char err[256];
    hstore *db = NULL;

    const char *garbage = tpath("garbage.db");
    char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(i * 7 + 3);
    write_file(garbage, junk, sizeof junk);
    assert_int_equal(hstore_open(garbage, NULL, migs, 2, &db, err, sizeof err), HSTORE_ERR_NOTADB);
    assert_null(db);

    const char *text = tpath("text.db");
    write_file(text, "hello, this is not sqlite\n", 26);
    assert_int_equal(hstore_open(text, NULL, migs, 2, &db, err, sizeof err), HSTORE_ERR_NOTADB);

    /* A real database cut short: header intact, pages missing. */
    const char *full = tpath("full.db");
    db = must_open(full, 2);
    assert_int_equal(hstore_exec(db, "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 3000) "
                                     "INSERT INTO t (v) SELECT printf('row-%d-%s', i, hex(randomblob(40))) FROM c"),
                     HSTORE_OK);
    assert_int_equal(hstore_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)"), HSTORE_OK);
    hstore_close(db);
    db = NULL;
    FILE *f = fopen(full, "rb");
    assert_non_null(f);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_true(n > 4 * 4096);
    const char *trunc = tpath("trunc.db");
    write_file(trunc, buf, n / 3);
    hstore_err e = hstore_open(trunc, NULL, migs, 2, &db, err, sizeof err);
    assert_true(e == HSTORE_ERR_CORRUPT || e == HSTORE_ERR_NOTADB);
    assert_null(db);

    /* Flipped bytes in the middle of the b-tree pages. */
    const char *flip = tpath("flip.db");
    for (size_t i = 4096; i < n; i += 97)
        buf[i] ^= 0x5a;
    write_file(flip, buf, n);
    e = hstore_open(flip, NULL, migs, 2, &db, err, sizeof err);
    assert_true(e == HSTORE_ERR_CORRUPT || e == HSTORE_ERR_NOTADB);
    assert_null(db);

    /* Unopenable path. */
    assert_int_equal(hstore_open("/nonexistent-dir/x/y.db", NULL, migs, 2, &db, err, sizeof err), HSTORE_ERR_OPEN);
}

static void raw_exec(const char *path, const char *sql)
{
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(path, &h), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(h, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fail_msg("%s: %s", sql, msg ? msg : "?");
    sqlite3_close(h);
}

/* Files written by someone else: a header field out of range, a schema carrying a trigger. */
static void test_hostile_files(void **state)
{
    (void)state;
    char err[256];
    hstore *db = NULL;

    /* user_version is signed in the header: a negative one is refused, not used as an index. */
    const char *neg = tpath("negver.db");
    raw_exec(neg, "CREATE TABLE x (a); PRAGMA user_version = -7;");
    assert_int_equal(hstore_open(neg, NULL, migs, 2, &db, err, sizeof err), HSTORE_ERR_CORRUPT);
    assert_null(db);
    assert_non_null(strstr(err, "-7"));
    raw_exec(neg, "PRAGMA user_version = -2147483648;");
    assert_int_equal(hstore_open(neg, NULL, migs, 2, &db, err, sizeof err), HSTORE_ERR_CORRUPT);

    /* A trigger planted in the file never runs: our writes go through, its effect does not. */
    const char *trig = tpath("trigger.db");
    hstore_close(must_open(trig, 2));
    raw_exec(trig, "CREATE TABLE spy (v TEXT);"
                   "CREATE TRIGGER t_spy AFTER INSERT ON t BEGIN INSERT INTO spy VALUES (new.v); END;"
                   "CREATE VIEW big AS WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT i FROM c;");
    db = must_open(trig, 2);
    assert_int_equal(hstore_exec(db, "INSERT INTO t (v) VALUES ('secret')"), HSTORE_OK);
    sqlite3_stmt *st;
    int row = 0;
    assert_int_equal(hstore_prepare(db, "SELECT count(*) FROM spy", &st), HSTORE_OK);
    assert_int_equal(hstore_step(db, st, &row), HSTORE_OK);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_reset(st);
    /* views are off: the endless one cannot even be prepared */
    assert_int_not_equal(hstore_prepare(db, "SELECT count(*) FROM big", &st), HSTORE_OK);
    /* the schema cannot be edited through this connection either (defensive mode) */
    assert_int_not_equal(hstore_exec(db, "PRAGMA writable_schema = ON; DELETE FROM sqlite_schema WHERE name = 't'"),
                         HSTORE_OK);
    hstore_close(db);
}

static int count_rows(hstore *db)
{
    sqlite3_stmt *st;
    int row = 0;
    assert_int_equal(hstore_prepare(db, "SELECT count(*) FROM t", &st), HSTORE_OK);
    assert_int_equal(hstore_step(db, st, &row), HSTORE_OK);
    int n = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    return n;
}

static void test_savepoints(void **state)
{
    (void)state;
    hstore *db = must_open(tpath("sp.db"), 2);
    assert_int_equal(hstore_savepoint(db), HSTORE_OK);
    assert_int_equal(hstore_exec(db, "INSERT INTO t (v) VALUES ('outer')"), HSTORE_OK);
    assert_int_equal(hstore_savepoint(db), HSTORE_OK);
    assert_int_equal(hstore_exec(db, "INSERT INTO t (v) VALUES ('inner')"), HSTORE_OK);
    hstore_rollback(db); /* inner undone */
    assert_int_equal(hstore_depth(db), 1);
    assert_int_equal(hstore_release(db), HSTORE_OK);
    assert_int_equal(count_rows(db), 1);
    assert_int_equal(hstore_release(db), HSTORE_ERR_MISUSE);

    /* Constraint errors map and leave the statement reusable. */
    sqlite3_stmt *st;
    assert_int_equal(hstore_prepare(db, "INSERT INTO t (v) VALUES (?1)", &st), HSTORE_OK);
    sqlite3_bind_text(st, 1, "outer", -1, SQLITE_STATIC);
    assert_int_equal(hstore_run(db, st), HSTORE_ERR_CONSTRAINT);
    assert_int_equal(hstore_prepare(db, "INSERT INTO t (v) VALUES (?1)", &st), HSTORE_OK);
    sqlite3_bind_text(st, 1, "second", -1, SQLITE_STATIC);
    assert_int_equal(hstore_run(db, st), HSTORE_OK);
    assert_int_equal(count_rows(db), 2);
    assert_int_equal(hstore_integrity_check(db), HSTORE_OK);
    hstore_close(db);
}

static void test_fault_injection(void **state)
{
    (void)state;
    hstore *db = must_open(tpath("fault.db"), 2);
    for (long n = 1; n <= 4; n++) {
        hstore_fail_nth_write(db, n);
        hstore_err e = hstore_savepoint(db);
        assert_int_equal(e, HSTORE_OK);
        sqlite3_stmt *st;
        for (int i = 0; i < 3 && e == HSTORE_OK; i++) {
            assert_int_equal(hstore_prepare(db, "INSERT INTO t (v) VALUES (?1)", &st), HSTORE_OK);
            char v[32];
            snprintf(v, sizeof v, "n%ld-%d", n, i);
            sqlite3_bind_text(st, 1, v, -1, SQLITE_TRANSIENT);
            e = hstore_run(db, st);
        }
        if (e == HSTORE_OK)
            e = hstore_release(db); /* write #4 is the commit */
        assert_int_equal(e, HSTORE_ERR_IO);
        hstore_rollback(db);
        assert_int_equal(hstore_depth(db), 0);
        assert_int_equal(count_rows(db), 0); /* all or nothing */
    }
    hstore_fail_nth_write(db, 0);
    assert_int_equal(hstore_exec(db, "INSERT INTO t (v) VALUES ('after')"), HSTORE_OK);
    assert_int_equal(count_rows(db), 1);
    assert_int_equal(hstore_integrity_check(db), HSTORE_OK);
    hstore_close(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrations_and_wal),
        cmocka_unit_test(test_failed_migration_rolls_back),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_hostile_files),
        cmocka_unit_test(test_savepoints),
        cmocka_unit_test(test_fault_injection),
    };
    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
