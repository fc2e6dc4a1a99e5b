/*
 * blobs.c - files (attachments): the blob thread, table `blobs` and the files under blob_dir.
 *
 * File work (chunks written, the fdatasync and digest check that complete an upload, reads for
 * downloads) must never stall the event loops or the storage thread's group commit, so one thread
 * does all of it, in order, with a database connection of its own: its table sees a few writes per
 * file (created, completed, deleted), each a short transaction. The loops hand it requests
 * (blobs_submit) and get each answer back as an EV_BLOB_DONE event.
 *
 * A file is `<dir>/<hex id>.part` while it is being uploaded and `<dir>/<hex id>` once complete.
 * The bytes stored so far are the .part file's length: after the relay is killed the upload
 * resumes where the file ends. Completion: fdatasync, SHA-256 of the whole file compared with the
 * digest the client announced (a mismatch empties the file: the upload starts over), rename,
 * fsync of the directory, then the row marked complete. Only then is the upload answered complete
 * and the file downloadable: nothing is ever half-visible.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "relay.h"

#define SWEEP_EVERY_MS 60000
#define ABANDONED_MS (24ull * 3600 * 1000) /* an upload not finished within a day is deleted */
#define HOUR_MS 3600000ull
#define ID_BYTES 16

struct bjob {
    struct bjob *next;
    int loop;
    uint64_t conn;
    char user[RELAY_USERNAME_MAX + 1];
    uint32_t dev;
    size_t cost;
    Hush__Frame *frame; /* owned; NULL: stop */
};

static struct {
    pthread_t th;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct bjob *head, *tail;
    size_t queued_bytes;
    int stop;
    hstore *db;
    const struct relay_config *cfg;
    char dir[600];
    uint64_t ttl_ms;
    uint64_t next_sweep_ms;
} B = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

int blobs_enabled(void)
{
    return B.started;
}

uint32_t blobs_chunk_max(void)
{
    if (!B.started)
        return 0;
    uint32_t room = B.cfg->max_frame > 4096 ? B.cfg->max_frame - 4096 : 0;
    return room < RELAY_BLOB_CHUNK ? room : RELAY_BLOB_CHUNK;
}

uint64_t blobs_ttl_seconds(void)
{
    return B.ttl_ms / 1000;
}

/* ------------------------------------------------------------------------------------------ */
/* files */

static void blob_path(char *out, size_t cap, const uint8_t id[ID_BYTES], int part)
{
    char hex[2 * ID_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, id, ID_BYTES);
    snprintf(out, cap, "%s/%s%s", B.dir, hex, part ? ".part" : "");
}

static int sync_dir(void)
{
    int fd = open(B.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

static void unlink_blob(const uint8_t id[ID_BYTES])
{
    char p[700];
    blob_path(p, sizeof p, id, 1);
    unlink(p);
    blob_path(p, sizeof p, id, 0);
    unlink(p);
}

/* The SHA-256 of a whole file (from fd's start), through OpenSSL (its SHA extensions / AVX2 code
 * is several times faster than a portable one: this is most of a completion's CPU). */
static int file_digest(int fd, uint8_t out[32])
{
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    static uint8_t buf[1 << 20]; /* the blob thread's alone */
    int rc = h && EVP_DigestInit_ex(h, EVP_sha256(), NULL) == 1 ? 0 : -1;
    off_t off = 0;
    while (!rc) {
        ssize_t n = pread(fd, buf, sizeof buf, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = -1;
        if (n <= 0)
            break;
        EVP_DigestUpdate(h, buf, (size_t)n);
        off += n;
    }
    if (!rc && EVP_DigestFinal_ex(h, out, NULL) != 1)
        rc = -1;
    EVP_MD_CTX_free(h);
    return rc;
}

static int write_all(int fd, const uint8_t *p, size_t len, uint64_t off)
{
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -1 : (errno = EIO, -1);
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* the table */

struct row {
    char owner[RELAY_USERNAME_MAX + 1];
    uint32_t owner_dev;
    uint64_t size;
    uint64_t created_ms, expires_ms;
    int complete;
};

/* 1 found (and not expired), 0 not, -1 storage error. */
static int row_get(const uint8_t id[ID_BYTES], struct row *r)
{
    sqlite3_stmt *st;
    if (hstore_prepare(B.db, "SELECT owner, owner_device, size, created_at, expires_at, complete FROM blobs WHERE id = ?1",
                       &st))
        return -1;
    sqlite3_bind_blob(st, 1, id, ID_BYTES, SQLITE_STATIC);
    int has = 0;
    if (hstore_step(B.db, st, &has))
        return -1;
    if (!has)
        return 0;
    snprintf(r->owner, sizeof r->owner, "%s", (const char *)sqlite3_column_text(st, 0));
    r->owner_dev = (uint32_t)sqlite3_column_int64(st, 1);
    r->size = (uint64_t)sqlite3_column_int64(st, 2);
    r->created_ms = (uint64_t)sqlite3_column_int64(st, 3);
    r->expires_ms = (uint64_t)sqlite3_column_int64(st, 4);
    r->complete = sqlite3_column_int(st, 5);
    sqlite3_reset(st);
    return r->expires_ms > relay_now_ms() ? 1 : 0;
}

static hstore_err row_delete(const uint8_t id[ID_BYTES])
{
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(B.db, "DELETE FROM blobs WHERE id = ?1", &st);
    if (e)
        return e;
    sqlite3_bind_blob(st, 1, id, ID_BYTES, SQLITE_STATIC);
    return hstore_run(B.db, st);
}

static hstore_err row_mark_complete(const uint8_t id[ID_BYTES])
{
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(B.db, "UPDATE blobs SET complete = 1 WHERE id = ?1", &st);
    if (e)
        return e;
    sqlite3_bind_blob(st, 1, id, ID_BYTES, SQLITE_STATIC);
    return hstore_run(B.db, st);
}

/* A user's files not yet expired: their declared bytes, and how many were created since `since`. */
static hstore_err user_usage(const char *user, uint64_t since, uint64_t *bytes, uint32_t *recent)
{
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(B.db,
                                  "SELECT COALESCE(SUM(size), 0), COALESCE(SUM(created_at >= ?2), 0) FROM blobs "
                                  "WHERE owner = ?1 AND expires_at > ?3",
                                  &st);
    if (e)
        return e;
    sqlite3_bind_text(st, 1, user, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)since);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)relay_now_ms());
    int has = 0;
    if ((e = hstore_step(B.db, st, &has)))
        return e;
    *bytes = has ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    *recent = has ? (uint32_t)sqlite3_column_int64(st, 1) : 0;
    if (has)
        sqlite3_reset(st);
    return HSTORE_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* answers */

static void answer(const struct bjob *j, Hush__Result *r)
{
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = j->frame->id;
    f.msg_case = HUSH__FRAME__MSG_RESULT;
    f.result = r;
    struct event *e = event_new(EV_BLOB_DONE, j->conn);
    if (!e)
        return;
    e->out = outbuf_from_frame(&f, 0);
    loop_post(j->loop, e);
    if (r->code)
        metrics_error(r->code);
}

static void answer_code(const struct bjob *j, Hush__ErrorCode code, const char *msg)
{
    Hush__Result r = HUSH__RESULT__INIT;
    r.code = code;
    r.message = (char *)msg;
    answer(j, &r);
}

/* ------------------------------------------------------------------------------------------ */
/* requests */

static int disk_has_room(uint64_t need)
{
    struct statvfs sv;
    if (statvfs(B.dir, &sv) != 0)
        return 1; /* unknown: the write itself will say */
    uint64_t avail = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    return avail >= need + B.cfg->blob_disk_reserve;
}

static void do_create(struct bjob *j)
{
    const Hush__BlobCreateRequest *q = j->frame->blob_create;
    const struct relay_config *cfg = B.cfg;
    if (q->size == 0) {
        answer_code(j, HUSH__ERROR_CODE__BAD_REQUEST, "a file has at least one byte");
        return;
    }
    if (q->size > cfg->max_blob_bytes) {
        answer_code(j, HUSH__ERROR_CODE__TOO_LARGE, "file larger than Limits.max_blob_bytes");
        return;
    }
    uint64_t now = relay_now_ms(), bytes = 0;
    uint32_t recent = 0;
    if (user_usage(j->user, now - HOUR_MS, &bytes, &recent)) {
        answer_code(j, HUSH__ERROR_CODE__STORAGE_FAILED, "storage failed, nothing was stored");
        return;
    }
    if (recent >= cfg->blob_uploads_per_hour) {
        Hush__Result r = HUSH__RESULT__INIT;
        r.code = HUSH__ERROR_CODE__RATE_LIMITED;
        r.message = "too many files this hour";
        r.retry_after_ms = 60000;
        answer(j, &r);
        return;
    }
    if (bytes + q->size > cfg->blob_quota_bytes) {
        answer_code(j, HUSH__ERROR_CODE__QUOTA_EXCEEDED, "this user's files would exceed Limits.blob_quota_bytes");
        return;
    }
    if (!disk_has_room(q->size)) {
        rlog(RLOG_WARN, "blob_disk_full", "dir=%s need=%llu", B.dir, (unsigned long long)q->size);
        answer_code(j, HUSH__ERROR_CODE__STORAGE_FAILED, "the relay's disk is full: nothing was stored, retry later");
        return;
    }
    uint8_t id[ID_BYTES];
    char p[700];
    int fd = -1;
    for (int tries = 0; tries < 4 && fd < 0; tries++) {
        randombytes_buf(id, sizeof id);
        blob_path(p, sizeof p, id, 1);
        fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    }
    if (fd < 0) {
        rlog(RLOG_ERROR, "blob_create", "%s: %s", B.dir, strerror(errno));
        answer_code(j, HUSH__ERROR_CODE__STORAGE_FAILED, "storage failed, nothing was stored");
        return;
    }
    close(fd);
    sqlite3_stmt *st;
    hstore_err e = hstore_prepare(B.db,
                                  "INSERT INTO blobs (id, owner, owner_device, size, created_at, expires_at) "
                                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                                  &st);
    if (!e) {
        sqlite3_bind_blob(st, 1, id, ID_BYTES, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, j->user, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, j->dev);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)q->size);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)now);
        sqlite3_bind_int64(st, 6, (sqlite3_int64)(now + B.ttl_ms));
        e = hstore_run(B.db, st);
    }
    if (e) {
        unlink(p);
        answer_code(j, HUSH__ERROR_CODE__STORAGE_FAILED, "storage failed, nothing was stored");
        return;
    }
    atomic_fetch_add(&g_metrics.blobs_created, 1);
    Hush__Result r = HUSH__RESULT__INIT;
    r.blob_id.data = id;
    r.blob_id.len = ID_BYTES;
    r.blob_size = q->size;
    r.blob_expires_ms = now + B.ttl_ms;
    answer(j, &r);
}

/* The bytes stored of an upload (-1: its file is missing). */
static int64_t stored_bytes(const uint8_t id[ID_BYTES], const struct row *row)
{
    char p[700];
    struct stat sb;
    blob_path(p, sizeof p, id, 0);
    if (stat(p, &sb) == 0)
        return (int64_t)row->size; /* renamed: complete on disk (the row may lag after a crash) */
    blob_path(p, sizeof p, id, 1);
    if (stat(p, &sb) != 0)
        return -1;
    return (int64_t)sb.st_size;
}

/* A found row: BLOB_UNKNOWN unless it is this device's upload (or, for reads, complete). */
static int lookup(struct bjob *j, const ProtobufCBinaryData *bid, struct row *row, int need_owner)
{
    if (bid->len != ID_BYTES) {
        answer_code(j, HUSH__ERROR_CODE__BAD_REQUEST, "blob_id must be 16 bytes");
        return 0;
    }
    int r = row_get(bid->data, row);
    if (r < 0) {
        answer_code(j, HUSH__ERROR_CODE__STORAGE_FAILED, "storage failed, retry");
        return 0;
    }
    if (r == 0 || (need_owner && (strcmp(row->owner, j->user) != 0 || row->owner_dev != j->dev)) ||
        (!need_owner && !row->complete && (strcmp(row->owner, j->user) != 0 || row->owner_dev != j->dev))) {
        answer_code(j, HUSH__ERROR_CODE__BLOB_UNKNOWN, "no such file (expired, never made, or not yours)");
        return 0;
    }
    return 1;
}

/* An upload whose every byte arrived: on disk, digest checked, renamed, row marked. 0: done (and
 * answered complete), otherwise answered with the failure. */
static void finish(struct bjob *j, const uint8_t id[ID_BYTES], int fd, const uint8_t *digest, uint64_t size)
{
    uint8_t got[32];
    if (fdatasync(fd) != 0 || file_digest(fd, got) != 0) {
        rlog(RLOG_ERROR, "blob_sync", "%s", strerror(errno));
        answer_code(j, HUSH__ERROR_CODE__STORAGE_FAILED, "storage failed: send the last chunk again");
        return;
    }
    if (sodium_memcmp(got, digest, 32) != 0) {
        if (ftruncate(fd, 0) != 0)
            rlog(RLOG_WARN, "blob_truncate", "%s", strerror(errno));
        atomic_fetch_add(&g_metrics.blobs_digest_mismatch, 1);
        Hush__Result r = HUSH__RESULT__INIT;
        r.code = HUSH__ERROR_CODE__DIGEST_MISMATCH;
        r.message = "the file does not match its digest: upload it again from offset 0";
        r.blob_offset = 0;
        answer(j, &r);
        return;
    }
    char from[700], to[700];
    blob_path(from, sizeof from, id, 1);
    blob_path(to, sizeof to, id, 0);
    if (rename(from, to) != 0 || sync_dir() != 0 || row_mark_complete(id) != HSTORE_OK) {
        rlog(RLOG_ERROR, "blob_complete", "%s", strerror(errno));
        answer_code(j, HUSH__ERROR_CODE__STORAGE_FAILED, "storage failed: ask the file's status and retry");
        return;
    }
    atomic_fetch_add(&g_metrics.blobs_completed, 1);
    Hush__Result r = HUSH__RESULT__INIT;
    r.blob_offset = size;
    r.blob_size = size;
    r.blob_complete = 1;
    answer(j, &r);
}

static void do_put(struct bjob *j)
{
    const Hush__BlobPutRequest *q = j->frame->blob_put;
    struct row row;
    if (!lookup(j, &q->blob_id, &row, 1))
        return;
    const uint8_t *id = q->blob_id.data;
    int64_t have = stored_bytes(id, &row);
    if (have < 0) {
        answer_code(j, HUSH__ERROR_CODE__BLOB_UNKNOWN, "the file is gone: create it again");
        return;
    }
    if (row.complete || (uint64_t)have == row.size) {
        if (!row.complete && row_mark_complete(id) != HSTORE_OK) {
            answer_code(j, HUSH__ERROR_CODE__STORAGE_FAILED, "storage failed, retry");
            return;
        }
        Hush__Result r = HUSH__RESULT__INIT; /* a retry of the last chunk: already complete */
        r.blob_offset = r.blob_size = row.size;
        r.blob_complete = 1;
        answer(j, &r);
        return;
    }
    if (q->offset != (uint64_t)have) {
        Hush__Result r = HUSH__RESULT__INIT;
        r.code = HUSH__ERROR_CODE__BLOB_OFFSET;
        r.message = "not at the end of what is stored: continue from blob_offset";
        r.blob_offset = (uint64_t)have;
        r.blob_size = row.size;
        answer(j, &r);
        return;
    }
    if (q->data.len == 0 || q->data.len > blobs_chunk_max()) {
        answer_code(j, HUSH__ERROR_CODE__TOO_LARGE, "a chunk holds 1 .. Limits.max_blob_chunk bytes");
        return;
    }
    if (q->offset + q->data.len > row.size) {
        answer_code(j, HUSH__ERROR_CODE__TOO_LARGE, "past the file's declared size");
        return;
    }
    int last = q->offset + q->data.len == row.size;
    if (last && q->digest.len != 32) {
        answer_code(j, HUSH__ERROR_CODE__BAD_REQUEST, "the chunk that completes a file carries its 32-byte digest");
        return;
    }
    char p[700];
    blob_path(p, sizeof p, id, 1);
    int fd = open(p, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        answer_code(j, HUSH__ERROR_CODE__BLOB_UNKNOWN, "the file is gone: create it again");
        return;
    }
    if (write_all(fd, q->data.data, q->data.len, q->offset) != 0) {
        int err = errno;
        if (ftruncate(fd, (off_t)q->offset) != 0) { /* nothing half-written stays */
        }
        close(fd);
        rlog(RLOG_WARN, "blob_write", "%s", strerror(err));
        answer_code(j, HUSH__ERROR_CODE__STORAGE_FAILED,
                    err == ENOSPC || err == EDQUOT ? "the relay's disk is full: nothing was stored, retry later"
                                                   : "storage failed, retry from blob_offset");
        return;
    }
    atomic_fetch_add(&g_metrics.blob_bytes_in, (long)q->data.len);
    if (last) {
        finish(j, id, fd, q->digest.data, row.size);
        close(fd);
        return;
    }
    close(fd);
    Hush__Result r = HUSH__RESULT__INIT;
    r.blob_offset = q->offset + q->data.len;
    r.blob_size = row.size;
    answer(j, &r);
}

static void do_status(struct bjob *j)
{
    const Hush__BlobStatusRequest *q = j->frame->blob_status;
    struct row row;
    if (!lookup(j, &q->blob_id, &row, 0))
        return;
    int64_t have = stored_bytes(q->blob_id.data, &row);
    if (have < 0) {
        answer_code(j, HUSH__ERROR_CODE__BLOB_UNKNOWN, "the file is gone");
        return;
    }
    Hush__Result r = HUSH__RESULT__INIT;
    r.blob_offset = (uint64_t)have;
    r.blob_size = row.size;
    r.blob_complete = row.complete;
    r.blob_expires_ms = row.expires_ms;
    answer(j, &r);
}

static void do_get(struct bjob *j)
{
    const Hush__BlobGetRequest *q = j->frame->blob_get;
    struct row row;
    if (!lookup(j, &q->blob_id, &row, 0))
        return;
    if (!row.complete) {
        answer_code(j, HUSH__ERROR_CODE__BLOB_UNKNOWN, "the file is not complete yet");
        return;
    }
    if (q->length == 0 || q->length > blobs_chunk_max()) {
        answer_code(j, HUSH__ERROR_CODE__TOO_LARGE, "length must be 1 .. Limits.max_blob_chunk");
        return;
    }
    if (q->offset >= row.size) {
        answer_code(j, HUSH__ERROR_CODE__BAD_REQUEST, "offset past the end of the file");
        return;
    }
    size_t want = q->length;
    if (q->offset + want > row.size)
        want = (size_t)(row.size - q->offset);
    char p[700];
    blob_path(p, sizeof p, q->blob_id.data, 0);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    uint8_t *buf = fd >= 0 ? malloc(want) : NULL;
    size_t got = 0;
    while (buf && got < want) {
        ssize_t n = pread(fd, buf + got, want - got, (off_t)(q->offset + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (fd >= 0)
        close(fd);
    if (!buf || got != want) {
        free(buf);
        answer_code(j, fd < 0 ? HUSH__ERROR_CODE__BLOB_UNKNOWN : HUSH__ERROR_CODE__STORAGE_FAILED,
                    fd < 0 ? "the file is gone" : "the relay could not read the file, retry");
        return;
    }
    atomic_fetch_add(&g_metrics.blob_bytes_out, (long)want);
    Hush__Result r = HUSH__RESULT__INIT;
    r.data.data = buf;
    r.data.len = want;
    r.blob_offset = q->offset;
    r.blob_size = row.size;
    r.blob_complete = 1;
    answer(j, &r);
    free(buf);
}

/* ------------------------------------------------------------------------------------------ */
/* expiry and orphans */

/* Deletes expired files and uploads abandoned for a day (at most 1000 a call). */
static void sweep(void)
{
    uint64_t now = relay_now_ms();
    sqlite3_stmt *st;
    if (hstore_prepare(B.db,
                       "SELECT id FROM blobs WHERE expires_at <= ?1 OR (complete = 0 AND created_at <= ?2) LIMIT 1000",
                       &st))
        return;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)now);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)(now - ABANDONED_MS));
    uint8_t (*ids)[ID_BYTES] = malloc(1000 * ID_BYTES);
    size_t n = 0;
    int has = 0;
    while (ids && n < 1000 && hstore_step(B.db, st, &has) == HSTORE_OK && has) {
        if (sqlite3_column_bytes(st, 0) == ID_BYTES)
            memcpy(ids[n++], sqlite3_column_blob(st, 0), ID_BYTES);
    }
    if (has)
        sqlite3_reset(st);
    for (size_t i = 0; i < n; i++) {
        /* the row goes first: a crash in between leaves a file without a row, deleted at start */
        if (row_delete(ids[i]) == HSTORE_OK) {
            unlink_blob(ids[i]);
            atomic_fetch_add(&g_metrics.blobs_expired, 1);
        }
    }
    if (n)
        rlog(RLOG_INFO, "blob_sweep", "deleted=%zu", n);
    free(ids);
}

static int hexid(const char *name, uint8_t id[ID_BYTES], int *part)
{
    size_t len = strlen(name);
    *part = len == 2 * ID_BYTES + 5 && !strcmp(name + 2 * ID_BYTES, ".part");
    if (len != 2 * ID_BYTES && !*part)
        return 0;
    size_t bin = 0;
    return sodium_hex2bin(id, ID_BYTES, name, 2 * ID_BYTES, NULL, &bin, NULL) == 0 && bin == ID_BYTES;
}

/* At start: files without a row (the relay stopped between making a file and recording it, or
 * between deleting a row and its file) are deleted, and so are rows whose file is gone. Names
 * that are not blob names are left alone. */
static void reconcile(void)
{
    DIR *d = opendir(B.dir);
    size_t removed = 0;
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            uint8_t id[ID_BYTES];
            int part;
            if (!hexid(de->d_name, id, &part))
                continue;
            sqlite3_stmt *st;
            int has = 0;
            if (hstore_prepare(B.db, "SELECT complete FROM blobs WHERE id = ?1", &st))
                break;
            sqlite3_bind_blob(st, 1, id, ID_BYTES, SQLITE_STATIC);
            if (hstore_step(B.db, st, &has))
                break;
            if (has)
                sqlite3_reset(st);
            if (!has) {
                char p[700];
                snprintf(p, sizeof p, "%s/%s", B.dir, de->d_name);
                if (unlink(p) == 0)
                    removed++;
            }
        }
        closedir(d);
    }
    sqlite3_stmt *st;
    if (hstore_prepare(B.db, "SELECT id, size FROM blobs", &st) == HSTORE_OK) {
        uint8_t (*gone)[ID_BYTES] = NULL;
        size_t ngone = 0, cap = 0;
        int has = 0;
        while (hstore_step(B.db, st, &has) == HSTORE_OK && has) {
            if (sqlite3_column_bytes(st, 0) != ID_BYTES)
                continue;
            struct row row;
            memset(&row, 0, sizeof row);
            row.size = (uint64_t)sqlite3_column_int64(st, 1);
            const uint8_t *id = sqlite3_column_blob(st, 0);
            if (stored_bytes(id, &row) >= 0)
                continue;
            if (ngone == cap) {
                size_t nc = cap ? cap * 2 : 64;
                void *p = realloc(gone, nc * ID_BYTES);
                if (!p)
                    break;
                gone = p;
                cap = nc;
            }
            memcpy(gone[ngone++], id, ID_BYTES);
        }
        if (has)
            sqlite3_reset(st);
        for (size_t i = 0; i < ngone; i++)
            if (row_delete(gone[i]) == HSTORE_OK)
                removed++;
        free(gone);
    }
    if (removed)
        rlog(RLOG_INFO, "blob_reconcile", "removed=%zu (files without a record, records without a file)", removed);
}

/* ------------------------------------------------------------------------------------------ */
/* the thread */

static void bjob_free(struct bjob *j)
{
    if (j->frame)
        hush__frame__free_unpacked(j->frame, NULL);
    free(j);
}

static void *blob_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&B.mu);
        while (!B.head && !B.stop) {
            uint64_t now = relay_now_ms();
            if (now >= B.next_sweep_ms)
                break;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t wait = B.next_sweep_ms - now;
            ts.tv_sec += (time_t)(wait / 1000);
            ts.tv_nsec += (long)(wait % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&B.cv, &B.mu, &ts);
        }
        struct bjob *j = B.head;
        if (j) {
            B.head = j->next;
            if (!B.head)
                B.tail = NULL;
            B.queued_bytes -= j->cost;
        }
        int stop = B.stop && !j;
        pthread_mutex_unlock(&B.mu);
        if (stop)
            break;
        if (!j) {
            sweep();
            B.next_sweep_ms = relay_now_ms() + SWEEP_EVERY_MS;
            continue;
        }
        switch (j->frame->msg_case) {
        case HUSH__FRAME__MSG_BLOB_CREATE: do_create(j); break;
        case HUSH__FRAME__MSG_BLOB_PUT: do_put(j); break;
        case HUSH__FRAME__MSG_BLOB_STATUS: do_status(j); break;
        case HUSH__FRAME__MSG_BLOB_GET: do_get(j); break;
        default: answer_code(j, HUSH__ERROR_CODE__BAD_REQUEST, "unexpected frame"); break;
        }
        bjob_free(j);
    }
    return NULL;
}

int blobs_submit(int loop, uint64_t conn, const char *user, uint32_t dev, Hush__Frame *f, size_t cost)
{
    struct bjob *j = calloc(1, sizeof *j);
    if (!j)
        return -1;
    j->loop = loop;
    j->conn = conn;
    snprintf(j->user, sizeof j->user, "%s", user);
    j->dev = dev;
    j->cost = cost;
    pthread_mutex_lock(&B.mu);
    if (B.stop || B.queued_bytes + cost > RELAY_BLOB_MAX_QUEUED) {
        pthread_mutex_unlock(&B.mu);
        free(j);
        return -1;
    }
    j->frame = f;
    B.queued_bytes += cost;
    if (B.tail)
        B.tail->next = j;
    else
        B.head = j;
    B.tail = j;
    pthread_cond_signal(&B.cv);
    pthread_mutex_unlock(&B.mu);
    return 0;
}

int blobs_start(const struct relay_config *cfg, char *err, size_t errlen)
{
    if (!cfg->blob_enabled)
        return 0;
    B.cfg = cfg;
    if (cfg->blob_dir[0])
        snprintf(B.dir, sizeof B.dir, "%s", cfg->blob_dir);
    else
        snprintf(B.dir, sizeof B.dir, "%s.blobs", cfg->db_path);
    if (mkdir(B.dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "blob_dir %s: %s", B.dir, strerror(errno));
        return -1;
    }
    uint64_t mail_ttl = cfg->ttl_seconds ? cfg->ttl_seconds : (uint64_t)cfg->ttl_days * 86400;
    uint64_t ttl = cfg->blob_ttl_days ? (uint64_t)cfg->blob_ttl_days * 86400 : mail_ttl;
    if (ttl < mail_ttl)
        ttl = mail_ttl; /* a message must never outlive the file it points to */
    B.ttl_ms = ttl * 1000;
    char derr[256];
    B.db = storage_open_db(cfg->db_path, cfg->durability_full, derr, sizeof derr);
    if (!B.db) {
        snprintf(err, errlen, "blobs: database: %s", derr);
        return -1;
    }
    reconcile();
    sweep();
    B.next_sweep_ms = relay_now_ms() + SWEEP_EVERY_MS;
    B.stop = 0;
    if (pthread_create(&B.th, NULL, blob_main, NULL) != 0) {
        hstore_close(B.db);
        B.db = NULL;
        snprintf(err, errlen, "blobs: cannot start its thread");
        return -1;
    }
    B.started = 1;
    return 0;
}

void blobs_stop(void)
{
    if (!B.started)
        return;
    pthread_mutex_lock(&B.mu);
    B.stop = 1;
    /* what is queued is dropped: its answers could not reach a connection any more */
    struct bjob *j = B.head;
    B.head = B.tail = NULL;
    B.queued_bytes = 0;
    pthread_cond_signal(&B.cv);
    pthread_mutex_unlock(&B.mu);
    while (j) {
        struct bjob *n = j->next;
        bjob_free(j);
        j = n;
    }
    pthread_join(B.th, NULL);
    hstore_close(B.db);
    B.db = NULL;
    B.started = 0;
}
