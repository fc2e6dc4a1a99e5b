/*
 * store.c - SQLite helpers shared by hushd and libhush. See hush_store.h for the contract.
 */
#include "hush_store.h"

#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STMT_CACHE_MAX 96
#define ERRMSG_MAX 256

struct cached_stmt {
    char *sql;
    sqlite3_stmt *stmt;
};

struct hstore {
    sqlite3 *db;
    int version;
    int depth;
    long writes;
    long fail_at;  /* absolute write number that fails; 0 = off */
    int nstmts;
    struct cached_stmt stmts[STMT_CACHE_MAX];
    char errmsg[ERRMSG_MAX];
};

static void set_err(hstore *db, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(hstore *db, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(db->errmsg, sizeof db->errmsg, fmt, ap);
    va_end(ap);
}

static hstore_err map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE: return HSTORE_OK;
    case SQLITE_NOMEM: return HSTORE_ERR_NOMEM;
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_AUTH: return HSTORE_ERR_OPEN;
    case SQLITE_NOTADB: return HSTORE_ERR_NOTADB;
    case SQLITE_CORRUPT: return HSTORE_ERR_CORRUPT;
    case SQLITE_IOERR: return HSTORE_ERR_IO;
    case SQLITE_FULL: return HSTORE_ERR_FULL;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return HSTORE_ERR_BUSY;
    case SQLITE_CONSTRAINT: return HSTORE_ERR_CONSTRAINT;
    case SQLITE_READONLY: return HSTORE_ERR_READONLY;
    case SQLITE_MISUSE:
    case SQLITE_RANGE: return HSTORE_ERR_MISUSE;
    default: return HSTORE_ERR_SQL;
    }
}

static hstore_err fail_sqlite(hstore *db, int rc, const char *what)
{
    set_err(db, "%s: %s (%s)", what, sqlite3_errmsg(db->db), sqlite3_errstr(rc));
    return map_rc(rc);
}

const char *hstore_strerror(hstore_err err)
{
    switch (err) {
    case HSTORE_OK: return "success";
    case HSTORE_ERR_NOMEM: return "out of memory";
    case HSTORE_ERR_OPEN: return "cannot open database file";
    case HSTORE_ERR_NOTADB: return "file is not a database";
    case HSTORE_ERR_CORRUPT: return "database is corrupt or truncated";
    case HSTORE_ERR_TOO_NEW: return "database was written by a newer version";
    case HSTORE_ERR_IO: return "disk I/O error";
    case HSTORE_ERR_FULL: return "disk full";
    case HSTORE_ERR_BUSY: return "database is locked";
    case HSTORE_ERR_CONSTRAINT: return "constraint violation";
    case HSTORE_ERR_READONLY: return "database is read-only";
    case HSTORE_ERR_MISUSE: return "store API misuse";
    case HSTORE_ERR_SQL: return "SQL error";
    }
    return "unknown store error";
}

const char *hstore_errmsg(const hstore *db) { return db ? db->errmsg : "no database"; }
sqlite3 *hstore_handle(hstore *db) { return db->db; }
int hstore_version(const hstore *db) { return db->version; }
int hstore_depth(const hstore *db) { return db->depth; }
int hstore_changes(hstore *db) { return sqlite3_changes(db->db); }
int64_t hstore_last_insert_rowid(hstore *db) { return sqlite3_last_insert_rowid(db->db); }
long hstore_writes(const hstore *db) { return db->writes; }

void hstore_fail_nth_write(hstore *db, long n)
{
    db->fail_at = n > 0 ? db->writes + n : 0;
}

/* Counts a write and reports whether the fault injector wants it to fail. */
static int injected_fault(hstore *db)
{
    db->writes++;
    if (db->fail_at && db->writes == db->fail_at) {
        db->fail_at = 0;
        set_err(db, "injected I/O fault on write #%ld", db->writes);
        return 1;
    }
    return 0;
}

hstore_err hstore_exec(hstore *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        set_err(db, "%s (%s)", msg ? msg : sqlite3_errmsg(db->db), sqlite3_errstr(rc));
        sqlite3_free(msg);
        return map_rc(rc);
    }
    return HSTORE_OK;
}

hstore_err hstore_prepare(hstore *db, const char *sql, sqlite3_stmt **out)
{
    *out = NULL;
    for (int i = 0; i < db->nstmts; i++) {
        if (strcmp(db->stmts[i].sql, sql) == 0) {
            sqlite3_reset(db->stmts[i].stmt);
            sqlite3_clear_bindings(db->stmts[i].stmt);
            *out = db->stmts[i].stmt;
            return HSTORE_OK;
        }
    }
    if (db->nstmts == STMT_CACHE_MAX) {
        set_err(db, "statement cache full (%d)", STMT_CACHE_MAX);
        return HSTORE_ERR_MISUSE;
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v3(db->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
    if (rc != SQLITE_OK)
        return fail_sqlite(db, rc, "prepare");
    char *copy = strdup(sql);
    if (!copy) {
        sqlite3_finalize(st);
        set_err(db, "out of memory");
        return HSTORE_ERR_NOMEM;
    }
    db->stmts[db->nstmts].sql = copy;
    db->stmts[db->nstmts].stmt = st;
    db->nstmts++;
    *out = st;
    return HSTORE_OK;
}

hstore_err hstore_step(hstore *db, sqlite3_stmt *stmt, int *has_row)
{
    *has_row = 0;
    if (!sqlite3_stmt_readonly(stmt) && !sqlite3_stmt_busy(stmt) && injected_fault(db)) {
        sqlite3_reset(stmt);
        return HSTORE_ERR_IO;
    }
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        *has_row = 1;
        return HSTORE_OK;
    }
    if (rc == SQLITE_DONE) {
        sqlite3_reset(stmt);
        return HSTORE_OK;
    }
    hstore_err e = fail_sqlite(db, rc, "step");
    sqlite3_reset(stmt);
    return e;
}

hstore_err hstore_run(hstore *db, sqlite3_stmt *stmt)
{
    int row = 0;
    hstore_err e;
    do {
        e = hstore_step(db, stmt, &row);
    } while (e == HSTORE_OK && row);
    sqlite3_reset(stmt);
    return e;
}

/* Transaction control runs once or twice per job on a busy relay: prepared once and cached, not
 * parsed by sqlite3_exec each time. */
static hstore_err exec_control(hstore *db, const char *sql, int is_commit)
{
    if (is_commit && injected_fault(db))
        return HSTORE_ERR_IO;
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(db, sql, &st);
    if (e == HSTORE_ERR_MISUSE) /* cache full: fall back to parsing */
        return hstore_exec(db, sql);
    if (e)
        return e;
    /* stepped here, not through hstore_step: control statements are not "writes" for the fault
     * injection (only COMMIT is, above) */
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return fail_sqlite(db, rc, sql);
    return HSTORE_OK;
}

hstore_err hstore_savepoint(hstore *db)
{
    hstore_err e;
    if (db->depth == 0) {
        e = exec_control(db, "BEGIN IMMEDIATE", 0);
    } else {
        char sql[40];
        snprintf(sql, sizeof sql, "SAVEPOINT hs%d", db->depth);
        e = exec_control(db, sql, 0);
    }
    if (e == HSTORE_OK)
        db->depth++;
    return e;
}

hstore_err hstore_release(hstore *db)
{
    if (db->depth <= 0) {
        set_err(db, "release without savepoint");
        return HSTORE_ERR_MISUSE;
    }
    hstore_err e;
    if (db->depth == 1) {
        e = exec_control(db, "COMMIT", 1);
    } else {
        char sql[40];
        snprintf(sql, sizeof sql, "RELEASE hs%d", db->depth - 1);
        e = exec_control(db, sql, 0);
    }
    if (e == HSTORE_OK)
        db->depth--;
    /* On failure the level stays open: the caller must hstore_rollback(). */
    return e;
}

void hstore_rollback(hstore *db)
{
    if (db->depth <= 0)
        return;
    if (db->depth == 1) {
        /* A failed COMMIT may already have ended the transaction: only roll back if open. */
        if (!sqlite3_get_autocommit(db->db))
            if (hstore_exec(db, "ROLLBACK") != HSTORE_OK) { /* detail kept in errmsg */ }
    } else {
        char sql[64];
        snprintf(sql, sizeof sql, "ROLLBACK TO hs%d; RELEASE hs%d", db->depth - 1, db->depth - 1);
        if (hstore_exec(db, sql) != HSTORE_OK) { /* detail kept in errmsg */ }
    }
    db->depth--;
}

hstore_err hstore_integrity_check(hstore *db)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db->db, "PRAGMA integrity_check", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return fail_sqlite(db, rc, "integrity_check");
    hstore_err e = HSTORE_OK;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *r = (const char *)sqlite3_column_text(st, 0);
        if (!r || strcmp(r, "ok") != 0) {
            set_err(db, "integrity_check: %s", r ? r : "(null)");
            e = HSTORE_ERR_CORRUPT;
        }
    } else {
        e = fail_sqlite(db, rc, "integrity_check");
    }
    sqlite3_finalize(st);
    return e;
}

/* Reads a single integer from a PRAGMA or query. */
static hstore_err query_int(hstore *db, const char *sql, int *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return fail_sqlite(db, rc, sql);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    hstore_err e = rc == SQLITE_OK ? HSTORE_OK : fail_sqlite(db, rc, sql);
    sqlite3_finalize(st);
    return e;
}

static hstore_err quick_check(hstore *db)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db->db, "PRAGMA quick_check", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return fail_sqlite(db, rc, "quick_check");
    hstore_err e = HSTORE_OK;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *r = (const char *)sqlite3_column_text(st, 0);
        if (!r || strcmp(r, "ok") != 0) {
            set_err(db, "quick_check: %s", r ? r : "(null)");
            e = HSTORE_ERR_CORRUPT;
        }
    } else {
        e = fail_sqlite(db, rc, "quick_check");
    }
    sqlite3_finalize(st);
    return e;
}

static hstore_err migrate(hstore *db, const char *const *migrations, int n)
{
    while (db->version < n) {
        hstore_err e = hstore_savepoint(db);
        if (e)
            return e;
        e = hstore_exec(db, migrations[db->version]);
        if (e == HSTORE_OK) {
            char sql[64];
            snprintf(sql, sizeof sql, "PRAGMA user_version = %d", db->version + 1);
            e = hstore_exec(db, sql);
        }
        if (e == HSTORE_OK)
            e = hstore_release(db);
        if (e) {
            char detail[ERRMSG_MAX];
            snprintf(detail, sizeof detail, "%s", db->errmsg);
            hstore_rollback(db);
            set_err(db, "migration %d -> %d failed: %s", db->version, db->version + 1, detail);
            return e;
        }
        db->version++;
    }
    return HSTORE_OK;
}

/* A database file is input like any other: a copied, restored or tampered file must give a clear
 * error, not run code from its schema or make one statement allocate without bound. Hush's schemas
 * use no triggers, views, ATTACH or schema functions, so all of it is switched off; lengths are
 * capped well above the largest row Hush writes (an envelope is at most 256 KiB). */
static void harden(sqlite3 *db)
{
    int off = 0;
    sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
    sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, &off);
    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_VIEW, 0, &off);
    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, NULL);
    sqlite3_limit(db, SQLITE_LIMIT_LENGTH, 8 * 1024 * 1024);
    sqlite3_limit(db, SQLITE_LIMIT_SQL_LENGTH, 64 * 1024);
    sqlite3_limit(db, SQLITE_LIMIT_COLUMN, 100);
    sqlite3_limit(db, SQLITE_LIMIT_EXPR_DEPTH, 100);
    sqlite3_limit(db, SQLITE_LIMIT_COMPOUND_SELECT, 4);
    sqlite3_limit(db, SQLITE_LIMIT_FUNCTION_ARG, 8);
    sqlite3_limit(db, SQLITE_LIMIT_ATTACHED, 0);
    sqlite3_limit(db, SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 64);
    sqlite3_limit(db, SQLITE_LIMIT_TRIGGER_DEPTH, 1);
}

hstore_err hstore_open(const char *path, const hstore_opts *opts, const char *const *migrations,
                       int nmigrations, hstore **out, char *errbuf, size_t errbuf_len)
{
    static const hstore_opts defaults = { HSTORE_SYNC_FULL, 5000, 1, 0, 0, NULL, NULL };
    if (!opts)
        opts = &defaults;
    *out = NULL;
    if (errbuf && errbuf_len)
        errbuf[0] = '\0';
    if (!path || nmigrations < 0 || (nmigrations > 0 && !migrations)) {
        if (errbuf)
            snprintf(errbuf, errbuf_len, "invalid arguments");
        return HSTORE_ERR_MISUSE;
    }
    hstore *db = calloc(1, sizeof *db);
    if (!db) {
        if (errbuf)
            snprintf(errbuf, errbuf_len, "out of memory");
        return HSTORE_ERR_NOMEM;
    }
    int flags = opts->read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    flags |= SQLITE_OPEN_NOMUTEX;
    hstore_err e;
    if (!opts->read_only && strcmp(path, ":memory:") != 0) {
        /* A new database is created readable by its owner only (SQLite would make it 0644 less the
         * umask); its -wal and -shm files take the database's mode. */
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0)
            close(fd);
    }
    int rc = sqlite3_open_v2(path, &db->db, flags, NULL);
    if (rc != SQLITE_OK) {
        e = db->db ? fail_sqlite(db, rc, "open") : HSTORE_ERR_NOMEM;
        goto out;
    }
    sqlite3_extended_result_codes(db->db, 1);
    harden(db->db);
    /* A larger lookaside pool: SQLite's small per-statement allocations stay off malloc (they
     * were a tenth of the relay's CPU under load). 256 KiB per connection. */
    sqlite3_db_config(db->db, SQLITE_DBCONFIG_LOOKASIDE, NULL, 512, 512);
    sqlite3_busy_timeout(db->db, opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms : 5000);
    /* before the schema is first read: its triggers name the functions this registers */
    if (opts->connected && opts->connected(db->db, opts->connected_ctx) != 0) {
        set_err(db, "could not set up the connection (SQL functions)");
        e = HSTORE_ERR_SQL;
        goto out;
    }

    /* The first statement that reads the header is where a non-database or truncated file shows. */
    if ((e = query_int(db, "PRAGMA user_version", &db->version)))
        goto out;
    if (db->version < 0) { /* the header's field is signed: never an index into the migrations */
        set_err(db, "schema version %d is not one this program wrote", db->version);
        e = HSTORE_ERR_CORRUPT;
        goto out;
    }
    if (!opts->read_only) {
        sqlite3_stmt *st = NULL;
        rc = sqlite3_prepare_v2(db->db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
        if (rc == SQLITE_OK) {
            rc = sqlite3_step(st);
            if (rc == SQLITE_ROW) {
                const char *mode = (const char *)sqlite3_column_text(st, 0);
                if (!mode || strcmp(mode, "wal") != 0) {
                    sqlite3_finalize(st);
                    set_err(db, "could not enable WAL (journal_mode=%s)", mode ? mode : "?");
                    e = HSTORE_ERR_SQL;
                    goto out;
                }
                rc = SQLITE_OK;
            }
        }
        sqlite3_finalize(st);
        if (rc != SQLITE_OK) {
            e = fail_sqlite(db, rc, "journal_mode");
            goto out;
        }
    }
    {
        static const char *const sync_sql[] = { "PRAGMA synchronous=OFF", "PRAGMA synchronous=NORMAL",
                                                "PRAGMA synchronous=FULL" };
        int s = opts->synchronous;
        if (s < 0 || s > 2)
            s = 2;
        if ((e = hstore_exec(db, sync_sql[s])))
            goto out;
    }
    if ((e = hstore_exec(db, "PRAGMA foreign_keys=ON")))
        goto out;
    if (opts->secure_delete && ((e = hstore_exec(db, "PRAGMA secure_delete=ON")) ||
                                (e = hstore_exec(db, "PRAGMA journal_size_limit=0"))))
        goto out;
    /* Checks each b-tree cell's size against its page when the page is loaded: a corrupt file is
     * reported as corrupt instead of being read past a cell's end. */
    if ((e = hstore_exec(db, "PRAGMA cell_size_check=ON")))
        goto out;
    /* Savepoints (one per relay job, nested in the batch's) keep statement journals: in memory,
     * not in a temporary file that every first write of a page in a savepoint would pwrite to
     * (measured: a third of the relay's CPU under load). Nothing durable lives there. */
    if ((e = hstore_exec(db, "PRAGMA temp_store=MEMORY")))
        goto out;
    if (opts->quick_check && (e = quick_check(db)))
        goto out;
    if (db->version > nmigrations) {
        set_err(db, "schema version %d is newer than this program's %d: upgrade the program",
                db->version, nmigrations);
        e = HSTORE_ERR_TOO_NEW;
        goto out;
    }
    if (db->version < nmigrations) {
        if (opts->read_only) {
            set_err(db, "schema version %d needs migration to %d but database is read-only",
                    db->version, nmigrations);
            e = HSTORE_ERR_READONLY;
            goto out;
        }
        if ((e = migrate(db, migrations, nmigrations)))
            goto out;
    }
    *out = db;
    return HSTORE_OK;
out:
    if (errbuf)
        snprintf(errbuf, errbuf_len, "%s: %s", path, db->errmsg[0] ? db->errmsg : hstore_strerror(e));
    hstore_close(db);
    return e;
}

void hstore_close(hstore *db)
{
    if (!db)
        return;
    for (int i = 0; i < db->nstmts; i++) {
        sqlite3_finalize(db->stmts[i].stmt);
        free(db->stmts[i].sql);
    }
    if (db->db)
        sqlite3_close_v2(db->db);
    free(db);
}

hstore_err hstore_truncate_wal(hstore *db)
{
    if (!db)
        return HSTORE_ERR_MISUSE;
    int rc = sqlite3_wal_checkpoint_v2(db->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    return rc == SQLITE_OK ? HSTORE_OK : fail_sqlite(db, rc, "wal_checkpoint(TRUNCATE)");
}
