/*
 * hush_store.h - the SQLite layer shared by hushd (relay) and libhush (SDK).
 *
 * One connection per hstore handle. The handle is NOT thread-safe: callers serialise access
 * (libhush holds its client mutex around every call; hushd gives each thread its own handle).
 *
 * Every function that can fail returns an hstore_err; HSTORE_OK (0) is success. A human-readable
 * detail of the last failure is available from hstore_errmsg().
 *
 * Ownership: hstore_open hands a new handle to the caller (*out) on success only; on failure
 * *out is NULL and nothing needs freeing. Statements returned by hstore_prepare are owned by the
 * handle (cached, finalised by hstore_close): never sqlite3_finalize them.
 */
#ifndef HUSH_STORE_H
#define HUSH_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sqlite3.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HSTORE_MUST_CHECK __attribute__((warn_unused_result))

typedef struct hstore hstore;

typedef enum hstore_err {
    HSTORE_OK = 0,
    HSTORE_ERR_NOMEM,      /* allocation failed */
    HSTORE_ERR_OPEN,       /* the file could not be opened or created (path, permissions) */
    HSTORE_ERR_NOTADB,     /* the file is not an SQLite database */
    HSTORE_ERR_CORRUPT,    /* the database is malformed or truncated */
    HSTORE_ERR_TOO_NEW,    /* schema version newer than this program understands */
    HSTORE_ERR_IO,         /* disk I/O error (or an injected fault) */
    HSTORE_ERR_FULL,       /* disk or quota full */
    HSTORE_ERR_BUSY,       /* locked by another connection beyond the busy timeout */
    HSTORE_ERR_CONSTRAINT, /* a UNIQUE / FOREIGN KEY / CHECK constraint failed */
    HSTORE_ERR_READONLY,   /* write attempted on a read-only database */
    HSTORE_ERR_MISUSE,     /* API misuse (bad argument, unbalanced savepoints) */
    HSTORE_ERR_SQL         /* any other SQLite error; see hstore_errmsg() */
} hstore_err;

/* PRAGMA synchronous values. In WAL mode NORMAL survives a process crash, FULL also survives
 * power loss (one fsync per commit). */
typedef enum hstore_sync {
    HSTORE_SYNC_OFF = 0,
    HSTORE_SYNC_NORMAL = 1,
    HSTORE_SYNC_FULL = 2
} hstore_sync;

typedef struct hstore_opts {
    hstore_sync synchronous;   /* default (zeroed struct) is OFF: set it explicitly */
    int busy_timeout_ms;       /* <= 0: 5000 */
    int quick_check;           /* non-zero: run PRAGMA quick_check at open (O(database size)) */
    int read_only;             /* non-zero: open read-only, never create, never migrate */
    int secure_delete;         /* non-zero: deleted content is overwritten with zeros, and the WAL
                                  is truncated whenever a checkpoint resets it (for secrets) */
    /* May be NULL. Called once the connection is configured, before the schema is read, with
     * connected_ctx: registers the SQL functions the schema's triggers call. Non-zero fails the
     * open (HSTORE_ERR_SQL). */
    int (*connected)(sqlite3 *db, void *ctx);
    void *connected_ctx;
} hstore_opts;

/* Copies every WAL frame into the database and truncates the WAL to zero bytes (best effort: a
 * reader in another connection can keep frames alive). */
hstore_err hstore_truncate_wal(hstore *db);

/*
 * Opens (creating if needed, unless read_only) the database at `path`, enables WAL, foreign keys
 * and the busy timeout, then applies migrations: migrations[i] brings the schema from version i to
 * i + 1, each in its own transaction together with the new PRAGMA user_version. A database whose
 * user_version exceeds nmigrations is refused with HSTORE_ERR_TOO_NEW. A non-SQLite, truncated or
 * corrupt file gives HSTORE_ERR_NOTADB / HSTORE_ERR_CORRUPT, never a crash.
 * With opts == NULL: synchronous FULL, 5 s busy timeout, quick_check on, read-write.
 * `errbuf` (may be NULL) receives a one-line explanation on failure.
 */
HSTORE_MUST_CHECK hstore_err hstore_open(const char *path, const hstore_opts *opts,
                                         const char *const *migrations, int nmigrations,
                                         hstore **out, char *errbuf, size_t errbuf_len);

/* Finalises every cached statement and closes the connection. NULL is accepted. */
void hstore_close(hstore *db);

const char *hstore_strerror(hstore_err err);

/* Detail of the most recent failure on this handle (borrowed, valid until the next call). */
const char *hstore_errmsg(const hstore *db);

/* The raw connection, for read-only inspection (borrowed). */
sqlite3 *hstore_handle(hstore *db);

/* Current schema version (PRAGMA user_version). */
int hstore_version(const hstore *db);

/* Runs one or more statements with no parameters and no result rows. */
HSTORE_MUST_CHECK hstore_err hstore_exec(hstore *db, const char *sql);

/*
 * Returns a prepared statement for `sql`, compiled once and cached on the handle (keyed by the
 * text). The statement comes back reset with its bindings cleared. Borrowed: valid until
 * hstore_close. Do not keep it across another hstore_prepare of the same text.
 */
HSTORE_MUST_CHECK hstore_err hstore_prepare(hstore *db, const char *sql, sqlite3_stmt **out);

/* Steps `stmt`: *has_row = 1 on SQLITE_ROW, 0 when done (the statement is then reset). On error
 * the statement is reset and the error mapped. */
HSTORE_MUST_CHECK hstore_err hstore_step(hstore *db, sqlite3_stmt *stmt, int *has_row);

/* Steps `stmt` to completion (ignoring rows) and resets it. */
HSTORE_MUST_CHECK hstore_err hstore_run(hstore *db, sqlite3_stmt *stmt);

/* Rows changed by the most recent INSERT/UPDATE/DELETE. */
int hstore_changes(hstore *db);
int64_t hstore_last_insert_rowid(hstore *db);

/*
 * Savepoints nest. At depth 0 hstore_savepoint opens a transaction (BEGIN IMMEDIATE, so the write
 * lock is taken up front) and the matching hstore_release commits it. hstore_rollback undoes
 * everything since the matching hstore_savepoint and closes that level; it is safe to call after a
 * failed release. Unbalanced calls return HSTORE_ERR_MISUSE.
 */
HSTORE_MUST_CHECK hstore_err hstore_savepoint(hstore *db);
HSTORE_MUST_CHECK hstore_err hstore_release(hstore *db);
void hstore_rollback(hstore *db);
int hstore_depth(const hstore *db);

/* Full PRAGMA integrity_check: HSTORE_OK or HSTORE_ERR_CORRUPT (detail in hstore_errmsg). */
HSTORE_MUST_CHECK hstore_err hstore_integrity_check(hstore *db);

/*
 * Fault injection for tests: the n-th write from now (a non-read-only statement step, or a commit)
 * fails with HSTORE_ERR_IO without touching the database. n = 0 disables. hstore_writes() counts
 * every write attempted on the handle since open.
 */
void hstore_fail_nth_write(hstore *db, long n);
long hstore_writes(const hstore *db);

#ifdef __cplusplus
}
#endif
#endif
