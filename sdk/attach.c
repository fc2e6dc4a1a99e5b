/*
 * attach.c - files sent and received: their encryption, the pointer a file message carries, and
 * table `attachments` (one row per file message, its pointer sealed at rest).
 *
 * The encrypted form (docs/PROTOCOL.md, "Attachments"): the file, followed by zero bytes up to its
 * padded length (Padmé: at most 12% more, and the length's low bits hidden), encrypted with
 * libsodium's crypto_secretstream_xchacha20poly1305 under a fresh random key in chunks of 64 KiB of
 * plaintext, the last one tagged FINAL: header (24 bytes) || chunk || chunk ... each chunk 17 bytes
 * longer than its plaintext. The digest is SHA-256 of those bytes. A receiver checks the digest
 * before decrypting, every chunk's tag while decrypting, that the stream ends exactly at the FINAL
 * chunk, the size, and that the padding is zeros.
 *
 * Files live in the client's files directory (c->files_dir): "<id>.up" (ciphertext waiting to be
 * uploaded), "<id>.down" (a download in progress), "<id>" (a downloaded ciphertext, verified), id
 * being the message id in hex. They are ciphertext under keys kept only sealed in the database.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "internal.h"

#define ST_BYTES crypto_secretstream_xchacha20poly1305_ABYTES
#define HDR_BYTES crypto_secretstream_xchacha20poly1305_HEADERBYTES

uint64_t hsdk_file_padded(uint64_t size)
{
    if (size < 2)
        return 1;
    int e = 63 - __builtin_clzll(size);          /* floor(log2(size)) */
    int s = 32 - __builtin_clz((unsigned)e);      /* floor(log2(e)) + 1 */
    int last = e - s;
    uint64_t mask = last > 0 ? (1ull << last) - 1 : 0;
    return (size + mask) & ~mask;
}

uint64_t hsdk_file_blob_size(uint64_t size)
{
    uint64_t p = hsdk_file_padded(size);
    uint64_t chunks = (p + HSDK_FILE_CHUNK - 1) / HSDK_FILE_CHUNK;
    return HDR_BYTES + p + chunks * ST_BYTES;
}

void hsdk_file_path(const hush_client *c, const uint8_t mid[16], const char *suffix, char *out, size_t cap)
{
    char hex[33];
    sodium_bin2hex(hex, sizeof hex, mid, 16);
    snprintf(out, cap, "%s/%s%s", c->files_dir, hex, suffix);
}

static hush_err ensure_dir(const hush_client *c)
{
    if (mkdir(c->files_dir, 0700) != 0 && errno != EEXIST)
        return HUSH_ERR_STORAGE;
    return HUSH_OK;
}

static int write_full(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads exactly n bytes (fewer only at the end of the file): the count, or -1. */
static ssize_t read_full(int fd, uint8_t *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static int sync_dir_of(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

/* The end of writing out_path under the name tmp: closed, then renamed when all went well (e),
 * removed otherwise; the buffers wiped and freed. Returns the outcome. */
static hush_err finish_tmp(int fd, const char *tmp, const char *out_path, hush_err e, uint8_t *pt, uint8_t *ct,
                           crypto_secretstream_xchacha20poly1305_state *st)
{
    if (fd >= 0 && close(fd) != 0 && !e)
        e = HUSH_ERR_STORAGE;
    if (!e && rename(tmp, out_path) != 0)
        e = HUSH_ERR_STORAGE;
    if (e && fd >= 0)
        unlink(tmp);
    if (pt) {
        sodium_memzero(pt, HSDK_FILE_CHUNK);
        free(pt);
    }
    free(ct);
    sodium_memzero(st, sizeof *st);
    return e;
}

hush_err hsdk_file_encrypt(int in, uint64_t size, const char *out_path, const uint8_t key[32], uint8_t digest[32])
{
    char tmp[1300];
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0)
        return HUSH_ERR_STORAGE;
    hush_err e = HUSH_OK;
    uint8_t *pt = malloc(HSDK_FILE_CHUNK), *ct = malloc(HSDK_FILE_CHUNK + ST_BYTES);
    crypto_secretstream_xchacha20poly1305_state st;
    /* SHA-256 through OpenSSL: its SHA extensions / AVX2 code runs several times faster than
     * libsodium's portable one, and the digest is half the cost of sending a file */
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    uint8_t hdr[HDR_BYTES];
    if (!pt || !ct || !h || EVP_DigestInit_ex(h, EVP_sha256(), NULL) != 1) {
        e = HUSH_ERR_NOMEM;
        goto out;
    }
    crypto_secretstream_xchacha20poly1305_init_push(&st, hdr, key);
    EVP_DigestUpdate(h, hdr, sizeof hdr);
    if (write_full(out, hdr, sizeof hdr)) {
        e = HUSH_ERR_STORAGE;
        goto out;
    }
    uint64_t padded = hsdk_file_padded(size), done = 0;
    while (done < padded) {
        size_t n = padded - done < HSDK_FILE_CHUNK ? (size_t)(padded - done) : HSDK_FILE_CHUNK;
        size_t from_file = done >= size ? 0 : (size - done < n ? (size_t)(size - done) : n);
        if (from_file && read_full(in, pt, from_file) != (ssize_t)from_file) {
            e = HUSH_ERR_STORAGE; /* the file shrank while it was read */
            goto out;
        }
        memset(pt + from_file, 0, n - from_file);
        done += n;
        unsigned char tag = done == padded ? crypto_secretstream_xchacha20poly1305_TAG_FINAL : 0;
        unsigned long long clen = 0;
        crypto_secretstream_xchacha20poly1305_push(&st, ct, &clen, pt, n, NULL, 0, tag);
        EVP_DigestUpdate(h, ct, (size_t)clen);
        if (write_full(out, ct, (size_t)clen)) {
            e = HUSH_ERR_STORAGE;
            goto out;
        }
    }
    if (EVP_DigestFinal_ex(h, digest, NULL) != 1)
        e = HUSH_ERR_INTERNAL;
    else if (fsync(out) != 0)
        e = HUSH_ERR_STORAGE;
out:
    EVP_MD_CTX_free(h);
    return finish_tmp(out, tmp, out_path, e, pt, ct, &st);
}

hush_err hsdk_file_digest(const char *path, uint8_t digest[32], uint64_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return HUSH_ERR_NOT_FOUND;
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    uint8_t *buf = malloc(1 << 20);
    hush_err e = buf && h && EVP_DigestInit_ex(h, EVP_sha256(), NULL) == 1 ? HUSH_OK : HUSH_ERR_NOMEM;
    uint64_t total = 0;
    while (!e) {
        ssize_t n = read_full(fd, buf, 1 << 20);
        if (n < 0)
            e = HUSH_ERR_STORAGE;
        if (n <= 0)
            break;
        EVP_DigestUpdate(h, buf, (size_t)n);
        total += (uint64_t)n;
    }
    close(fd);
    free(buf);
    if (!e && EVP_DigestFinal_ex(h, digest, NULL) != 1)
        e = HUSH_ERR_INTERNAL;
    EVP_MD_CTX_free(h);
    if (len)
        *len = total;
    return e;
}

/* ------------------------------------------------------------------------------------------ */
/* the pointer */

static int valid_name(const char *s, size_t max, int is_file_name)
{
    size_t n = strlen(s);
    if (n > max || (is_file_name && (n == 0 || !strcmp(s, ".") || !strcmp(s, ".."))))
        return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f || (is_file_name && (*p == '/' || *p == '\\')))
            return 0;
    return 1;
}

Hush__AttachmentPointer *hsdk_pointer_parse(const uint8_t *body, size_t len)
{
    if (len > HUSH_MAX_BODY)
        return NULL;
    Hush__AttachmentPointer *p = hush__attachment_pointer__unpack(&hsdk_wiping_allocator, len, body);
    if (!p)
        return NULL;
    int ok = p->blob_id.len == 16 && p->key.len == 32 && p->digest.len == 32 && p->size <= HUSH_MAX_FILE &&
             p->chunk_size == HSDK_FILE_CHUNK && p->blob_size == hsdk_file_blob_size(p->size) &&
             p->thumbnail.len <= HUSH_MAX_THUMBNAIL && valid_name(p->file_name, HUSH_MAX_FILE_NAME, 1) &&
             valid_name(p->content_type, HUSH_MAX_CONTENT_TYPE, 0);
    if (!ok) {
        hush__attachment_pointer__free_unpacked(p, &hsdk_wiping_allocator);
        return NULL;
    }
    return p;
}

void hsdk_pointer_free(Hush__AttachmentPointer *p)
{
    if (p)
        hush__attachment_pointer__free_unpacked(p, &hsdk_wiping_allocator);
}

/* A serialized pointer (malloc'd; the caller wipes and frees). */
static uint8_t *pointer_pack(const Hush__AttachmentPointer *p, size_t *len)
{
    *len = hush__attachment_pointer__get_packed_size(p);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (buf)
        hush__attachment_pointer__pack(p, buf);
    return buf;
}

/* ------------------------------------------------------------------------------------------ */
/* the table */

static void row_ad(char *ad, size_t cap, const uint8_t mid[16], int outgoing, const char *peer)
{
    char hex[33], name[HUSH_USERNAME_MAX + 40];
    sodium_bin2hex(hex, sizeof hex, mid, 16);
    int n = snprintf(name, sizeof name, "%s/%s", peer, hex);
    hsdk_ad(ad, cap, "attachments", name, (size_t)n, outgoing, 0);
}

static hush_err seal_pointer(hush_client *c, const uint8_t mid[16], int outgoing, const char *peer,
                             const Hush__AttachmentPointer *p, uint8_t **ct, size_t *clen)
{
    size_t len = 0;
    uint8_t *pt = pointer_pack(p, &len);
    if (!pt)
        return HUSH_ERR_NOMEM;
    char ad[256];
    row_ad(ad, sizeof ad, mid, outgoing, peer);
    hush_err e = hsdk_seal(c, ad, pt, len, ct, clen);
    sodium_memzero(pt, len);
    free(pt);
    return e;
}

hush_err hsdk_file_insert(hush_client *c, const uint8_t mid[16], int outgoing, const char *peer, int state,
                          const Hush__AttachmentPointer *p, int *duplicate)
{
    uint8_t *ct = NULL;
    size_t clen = 0;
    hush_err e = seal_pointer(c, mid, outgoing, peer, p, &ct, &clen);
    if (e)
        return e;
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT INTO attachments (message_id, outgoing, peer, state, created_at, pointer) "
                                          "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 2, outgoing);
        sqlite3_bind_text(st, 3, peer, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 4, state);
        sqlite3_bind_int64(st, 5, (int64_t)hsdk_now_ms());
        sqlite3_bind_blob(st, 6, ct, (int)clen, SQLITE_TRANSIENT);
        se = hstore_run(c->db, st);
    }
    free(ct);
    if (!se && duplicate)
        *duplicate = hstore_changes(c->db) == 0;
    return hsdk_from_store(se);
}

hush_err hsdk_file_load(hush_client *c, const uint8_t mid[16], struct hsdk_file *f)
{
    memset(f, 0, sizeof *f);
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "SELECT outgoing, peer, state, done, error, pointer FROM attachments "
                                          "WHERE message_id = ?1", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
    int row = 0;
    if ((se = hstore_step(c->db, st, &row)))
        return hsdk_from_store(se);
    if (!row)
        return HUSH_ERR_NOT_FOUND;
    memcpy(f->mid, mid, 16);
    f->outgoing = sqlite3_column_int(st, 0);
    snprintf(f->peer, sizeof f->peer, "%s", (const char *)sqlite3_column_text(st, 1));
    f->state = sqlite3_column_int(st, 2);
    f->done = (uint64_t)sqlite3_column_int64(st, 3);
    f->error = sqlite3_column_int(st, 4);
    char ad[256];
    row_ad(ad, sizeof ad, mid, f->outgoing, f->peer);
    uint8_t *pt = NULL;
    size_t len = 0;
    hush_err e = hsdk_open(c, ad, sqlite3_column_blob(st, 5), (size_t)sqlite3_column_bytes(st, 5), &pt, &len);
    sqlite3_reset(st);
    if (e)
        return e;
    f->p = hush__attachment_pointer__unpack(&hsdk_wiping_allocator, len, pt);
    sodium_memzero(pt, len);
    free(pt);
    return f->p ? HUSH_OK : HUSH_ERR_DB_CORRUPT;
}

int hsdk_file_state(hush_client *c, const uint8_t mid[16])
{
    int64_t v = 0;
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "SELECT state FROM attachments WHERE message_id = ?1", &st) != HSTORE_OK)
        return 0;
    sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
    int row = 0;
    if (hstore_step(c->db, st, &row) == HSTORE_OK && row) {
        v = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    return (int)v;
}

void hsdk_file_release(struct hsdk_file *f)
{
    hsdk_pointer_free(f->p);
    f->p = NULL;
}

hush_err hsdk_file_set_state(hush_client *c, const uint8_t mid[16], int state, uint64_t done, hush_err error)
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "UPDATE attachments SET state = ?2, done = ?3, error = ?4 WHERE message_id = ?1", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, state);
    sqlite3_bind_int64(st, 3, (int64_t)done);
    sqlite3_bind_int(st, 4, (int)error);
    return hsdk_from_store(hstore_run(c->db, st));
}

hush_err hsdk_file_set_pointer(hush_client *c, const struct hsdk_file *f)
{
    uint8_t *ct = NULL;
    size_t clen = 0;
    hush_err e = seal_pointer(c, f->mid, f->outgoing, f->peer, f->p, &ct, &clen);
    if (e)
        return e;
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "UPDATE attachments SET pointer = ?2 WHERE message_id = ?1", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, f->mid, 16, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 2, ct, (int)clen, SQLITE_TRANSIENT);
        se = hstore_run(c->db, st);
    }
    free(ct);
    return hsdk_from_store(se);
}

int hsdk_file_next_active(hush_client *c, uint8_t mid[16], const uint8_t *skip, size_t nskip)
{
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "SELECT message_id FROM attachments WHERE state IN (1, 4) ORDER BY state, created_at", &st))
        return 0;
    int row = 0, found = 0;
    while (!found && hstore_step(c->db, st, &row) == HSTORE_OK && row) {
        if (sqlite3_column_bytes(st, 0) != 16)
            continue;
        const uint8_t *m = sqlite3_column_blob(st, 0);
        int skipped = 0;
        for (size_t i = 0; i < nskip && !skipped; i++)
            skipped = !memcmp(skip + 16 * i, m, 16);
        if (!skipped) {
            memcpy(mid, m, 16);
            found = 1;
        }
    }
    if (row)
        sqlite3_reset(st);
    return found;
}

/* ------------------------------------------------------------------------------------------ */
/* the public calls */

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* peer: the user, or a room's outbox name ("#..."), then group is the room's id (else ""). */
static hush_err send_file(hush_client *c, const char *peer, const char *group, const char *path, const char *file_name,
                          const char *content_type, const uint8_t *thumbnail, size_t thumbnail_len,
                          uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES])
{
    if (!path || (!thumbnail && thumbnail_len))
        return HUSH_ERR_INVALID_ARG;
    if (!file_name)
        file_name = base_name(path);
    if (!content_type)
        content_type = "application/octet-stream";
    if (!valid_name(file_name, HUSH_MAX_FILE_NAME, 1) || !valid_name(content_type, HUSH_MAX_CONTENT_TYPE, 0))
        return HUSH_ERR_INVALID_ARG;
    if (thumbnail_len > HUSH_MAX_THUMBNAIL)
        return HUSH_ERR_TOO_BIG;
    hsdk_lock(c);
    hush_err e = c->has_device ? HUSH_OK : HUSH_ERR_NO_DEVICE;
    if (!e && !strcmp(peer, c->username))
        e = HUSH_ERR_INVALID_ARG;
    hsdk_unlock(c);
    if (e)
        return e;
    int in = open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return errno == ENOENT || errno == EISDIR ? HUSH_ERR_INVALID_ARG : HUSH_ERR_STORAGE;
    struct stat sb;
    if (fstat(in, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(in);
        return HUSH_ERR_INVALID_ARG;
    }
    if ((uint64_t)sb.st_size > HUSH_MAX_FILE) {
        close(in);
        return HUSH_ERR_TOO_BIG;
    }
    uint64_t size = (uint64_t)sb.st_size;
    uint8_t mid[16], key[32], digest[32];
    randombytes_buf(mid, sizeof mid);
    randombytes_buf(key, sizeof key);
    char up[1200];
    hsdk_file_path(c, mid, ".up", up, sizeof up);
    /* the slow part (reading and encrypting the file) runs without the client's lock */
    e = ensure_dir(c);
    if (!e)
        e = hsdk_file_encrypt(in, size, up, key, digest);
    close(in);
    if (!e && sync_dir_of(c->files_dir) != 0)
        e = HUSH_ERR_STORAGE;
    Hush__AttachmentPointer p = HUSH__ATTACHMENT_POINTER__INIT;
    p.key.data = key;
    p.key.len = 32;
    p.digest.data = digest;
    p.digest.len = 32;
    p.size = size;
    p.blob_size = hsdk_file_blob_size(size);
    p.chunk_size = HSDK_FILE_CHUNK;
    p.content_type = (char *)content_type;
    p.file_name = (char *)file_name;
    p.thumbnail.data = (uint8_t *)thumbnail;
    p.thumbnail.len = thumbnail_len;
    if (!e) {
        hsdk_lock(c);
        e = hsdk_begin(c);
        if (!e) {
            /* the message exists from now on (QUEUED); the network thread uploads, then sends it */
            e = hsdk_file_insert(c, mid, 1, peer, HUSH_FILE_UPLOADING, &p, NULL);
            /* in a room's history: ours (our name), under the room's id */
            if (!e)
                e = hsdk_history_insert(c, group[0] ? c->username : peer, 0, 1, mid, HUSH_KIND_FILE, group, hsdk_now_ms(),
                                        (const uint8_t *)file_name, strlen(file_name), NULL, NULL);
            e = hsdk_end(c, e);
        }
        hsdk_unlock(c);
    }
    sodium_memzero(key, sizeof key);
    if (e) {
        unlink(up);
        return e;
    }
    if (message_id_out)
        memcpy(message_id_out, mid, 16);
    hsdk_net_wake(c, NET_WAKE_FILES);
    return HUSH_OK;
}

hush_err hush_send_file(hush_client *c, const char *peer, const char *path, const char *file_name,
                        const char *content_type, const uint8_t *thumbnail, size_t thumbnail_len,
                        uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES])
{
    if (!c || !hsdk_valid_username(peer))
        return HUSH_ERR_INVALID_ARG;
    return send_file(c, peer, "", path, file_name, content_type, thumbnail, thumbnail_len, message_id_out);
}

hush_err hush_group_send_file(hush_client *c, const char *group, const char *path, const char *file_name,
                              const char *content_type, const uint8_t *thumbnail, size_t thumbnail_len,
                              uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES])
{
    char peer[HUSH_USERNAME_MAX + 1];
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    hush_err e = hsdk_room_sender(c, group, peer); /* a member, or not allowed */
    hsdk_unlock(c);
    if (e)
        return e;
    return send_file(c, peer, group, path, file_name, content_type, thumbnail, thumbnail_len, message_id_out);
}

void hush_attachment_free(hush_attachment *a)
{
    if (!a)
        return;
    if (a->thumbnail) {
        sodium_memzero(a->thumbnail, a->thumbnail_len);
        free(a->thumbnail);
    }
    sodium_memzero(a, sizeof *a);
    free(a);
}

hush_err hush_attachment_get(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES], hush_attachment **out)
{
    if (!out)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    if (!c || !message_id)
        return HUSH_ERR_INVALID_ARG;
    struct hsdk_file f;
    hsdk_lock(c);
    hush_err e = hsdk_file_load(c, message_id, &f);
    hsdk_unlock(c);
    if (e)
        return e;
    hush_attachment *a = calloc(1, sizeof *a);
    if (a && f.p->thumbnail.len) {
        a->thumbnail = malloc(f.p->thumbnail.len);
        if (!a->thumbnail) {
            free(a);
            a = NULL;
        }
    }
    if (!a) {
        hsdk_file_release(&f);
        return HUSH_ERR_NOMEM;
    }
    memcpy(a->message_id, message_id, 16);
    a->outgoing = f.outgoing;
    snprintf(a->peer, sizeof a->peer, "%s", f.peer);
    snprintf(a->file_name, sizeof a->file_name, "%s", f.p->file_name);
    snprintf(a->content_type, sizeof a->content_type, "%s", f.p->content_type);
    a->size = f.p->size;
    a->state = (hush_file_state)f.state;
    a->done = f.done;
    a->total = f.p->blob_size;
    if (f.p->thumbnail.len) {
        memcpy(a->thumbnail, f.p->thumbnail.data, f.p->thumbnail.len);
        a->thumbnail_len = f.p->thumbnail.len;
    }
    hsdk_file_release(&f);
    *out = a;
    return HUSH_OK;
}

hush_err hush_attachment_download(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES])
{
    if (!c || !message_id)
        return HUSH_ERR_INVALID_ARG;
    struct hsdk_file f;
    hsdk_lock(c);
    hush_err e = hsdk_file_load(c, message_id, &f);
    if (!e) {
        if (f.state == HUSH_FILE_REMOTE || f.state == HUSH_FILE_FAILED || (f.state == HUSH_FILE_SENT && f.p->blob_id.len == 16))
            e = f.p->blob_id.len == 16 ? hsdk_file_set_state(c, message_id, HUSH_FILE_DOWNLOADING, 0, HUSH_OK)
                                       : HUSH_ERR_NOT_FOUND; /* a failed upload: there is nothing to download */
        else if (f.state == HUSH_FILE_UPLOADING)
            e = HUSH_ERR_NOT_FOUND;
        hsdk_file_release(&f);
    }
    hsdk_unlock(c);
    if (!e)
        hsdk_net_wake(c, NET_WAKE_FILES);
    return e;
}

hush_err hush_attachment_cancel(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES])
{
    if (!c || !message_id)
        return HUSH_ERR_INVALID_ARG;
    struct hsdk_file f;
    char path[1200];
    hsdk_lock(c);
    hush_err e = hsdk_file_load(c, message_id, &f);
    if (!e) {
        if (f.state == HUSH_FILE_UPLOADING) {
            e = hsdk_begin(c);
            if (!e) {
                e = hsdk_file_set_state(c, message_id, HUSH_FILE_FAILED, 0, HUSH_OK);
                if (!e)
                    e = hsdk_set_message_state(c, message_id, HUSH_MSG_FAILED);
                e = hsdk_end(c, e);
            }
            hsdk_file_path(c, message_id, ".up", path, sizeof path);
        } else if (f.state == HUSH_FILE_DOWNLOADING) {
            e = hsdk_file_set_state(c, message_id, HUSH_FILE_REMOTE, 0, HUSH_OK);
            hsdk_file_path(c, message_id, ".down", path, sizeof path);
        } else {
            e = HUSH_ERR_NOT_FOUND; /* nothing in progress */
        }
        hsdk_file_release(&f);
    }
    hsdk_unlock(c);
    if (!e) {
        unlink(path);
        hsdk_net_wake(c, NET_WAKE_FILES);
    }
    return e;
}

hush_err hush_attachment_save(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES], const char *out_path)
{
    if (!c || !message_id || !out_path || !*out_path)
        return HUSH_ERR_INVALID_ARG;
    struct hsdk_file f;
    hsdk_lock(c);
    hush_err e = hsdk_file_load(c, message_id, &f);
    hsdk_unlock(c);
    if (e)
        return e;
    if (f.state != HUSH_FILE_READY) {
        hsdk_file_release(&f);
        return HUSH_ERR_NOT_FOUND;
    }
    char in_path[1200], tmp[4200];
    hsdk_file_path(c, message_id, "", in_path, sizeof in_path);
    if (strlen(out_path) + 16 > sizeof tmp) {
        hsdk_file_release(&f);
        return HUSH_ERR_INVALID_ARG;
    }
    snprintf(tmp, sizeof tmp, "%s.hush-tmp", out_path);
    int in = open(in_path, O_RDONLY | O_CLOEXEC);
    int out = in >= 0 ? open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : -1;
    uint8_t *ct = malloc(HSDK_FILE_CHUNK + ST_BYTES), *pt = malloc(HSDK_FILE_CHUNK);
    crypto_secretstream_xchacha20poly1305_state st;
    uint8_t hdr[HDR_BYTES];
    const uint64_t size = f.p->size, padded = hsdk_file_padded(size);
    uint64_t done = 0;
    if (in < 0) {
        e = HUSH_ERR_NOT_FOUND;
        goto out;
    }
    if (out < 0) {
        e = HUSH_ERR_STORAGE;
        goto out;
    }
    if (!ct || !pt) {
        e = HUSH_ERR_NOMEM;
        goto out;
    }
    if (read_full(in, hdr, sizeof hdr) != (ssize_t)sizeof hdr ||
        crypto_secretstream_xchacha20poly1305_init_pull(&st, hdr, f.p->key.data) != 0) {
        e = HUSH_ERR_BAD_MESSAGE;
        goto out;
    }
    int final = 0;
    while (!final) {
        ssize_t n = read_full(in, ct, HSDK_FILE_CHUNK + ST_BYTES);
        if (n <= (ssize_t)ST_BYTES) {
            e = n < 0 ? HUSH_ERR_STORAGE : HUSH_ERR_BAD_MESSAGE; /* truncated: no FINAL chunk */
            goto out;
        }
        unsigned long long plen = 0;
        unsigned char tag = 0;
        if (crypto_secretstream_xchacha20poly1305_pull(&st, pt, &plen, &tag, ct, (unsigned long long)n, NULL, 0) != 0 ||
            done + plen > padded) {
            e = HUSH_ERR_BAD_MESSAGE;
            goto out;
        }
        final = tag == crypto_secretstream_xchacha20poly1305_TAG_FINAL;
        /* the file's bytes, then padding that must be zeros */
        size_t keep = done >= size ? 0 : (size - done < plen ? (size_t)(size - done) : (size_t)plen);
        for (size_t i = keep; i < plen; i++)
            if (pt[i]) {
                e = HUSH_ERR_BAD_MESSAGE;
                goto out;
            }
        if (keep && write_full(out, pt, keep)) {
            e = HUSH_ERR_STORAGE;
            goto out;
        }
        done += plen;
    }
    if (done != padded || read_full(in, ct, 1) != 0) { /* the stream ends exactly at FINAL */
        e = HUSH_ERR_BAD_MESSAGE;
        goto out;
    }
    if (fsync(out) != 0)
        e = HUSH_ERR_STORAGE;
out:
    if (in >= 0)
        close(in);
    hsdk_file_release(&f);
    return finish_tmp(out, tmp, out_path, e, pt, ct, &st);
}

/* ------------------------------------------------------------------------------------------ */
/* deleting */

static void unlink_files(const hush_client *c, const uint8_t mid[16])
{
    static const char *const suffix[] = { "", ".up", ".down", ".up.tmp" };
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        char p[1200];
        hsdk_file_path(c, mid, suffix[i], p, sizeof p);
        unlink(p);
    }
}

static hush_err file_delete_row(hush_client *c, const uint8_t mid[16])
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "DELETE FROM attachments WHERE message_id = ?1", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
    return hsdk_from_store(hstore_run(c->db, st));
}

/* Deleting a file message deletes the file: its row (with the key), its local copies. */
hush_err hush_history_delete(hush_client *c, int64_t local_id)
{
    if (!c || local_id <= 0)
        return HUSH_ERR_INVALID_ARG;
    uint8_t mid[16];
    int found = 0, gone = 0;
    hsdk_lock(c);
    hush_err e = hsdk_begin(c);
    if (!e) {
        e = hsdk_history_delete(c, local_id, mid, &found);
        if (!e && found && !hsdk_history_has_message(c, mid)) {
            gone = 1;
            e = file_delete_row(c, mid);
        }
        e = hsdk_end(c, e);
    }
    if (!e) {
        if (gone)
            unlink_files(c, mid); /* after the commit: a rolled-back delete keeps its file */
        hsdk_truncate_wal(c);
    }
    hsdk_unlock(c);
    return e;
}

void hsdk_files_prune(hush_client *c)
{
    hsdk_lock(c);
    sqlite3_stmt *st;
    uint8_t (*ids)[16] = NULL;
    size_t n = 0, cap = 0;
    int row = 0;
    if (hstore_prepare(c->db, "SELECT message_id FROM attachments", &st) == HSTORE_OK) {
        while (hstore_step(c->db, st, &row) == HSTORE_OK && row) {
            if (sqlite3_column_bytes(st, 0) != 16)
                continue;
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 64;
                void *p = realloc(ids, nc * 16);
                if (!p)
                    break;
                ids = p;
                cap = nc;
            }
            memcpy(ids[n++], sqlite3_column_blob(st, 0), 16);
        }
        if (row)
            sqlite3_reset(st);
    }
    /* rows of messages deleted from the history (by an older version, or a crash in between) */
    for (size_t i = 0; i < n; i++)
        if (!hsdk_history_has_message(c, ids[i]) && file_delete_row(c, ids[i]) == HUSH_OK)
            unlink_files(c, ids[i]);
    /* files without a row */
    DIR *d = opendir(c->files_dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        uint8_t mid[16];
        size_t bin = 0;
        const char *end = NULL;
        if (sodium_hex2bin(mid, sizeof mid, de->d_name, strlen(de->d_name), NULL, &bin, &end) != 0 || bin != 16 ||
            (*end && strcmp(end, ".up") && strcmp(end, ".down") && strcmp(end, ".up.tmp")))
            continue; /* not ours */
        struct hsdk_file f;
        hush_err e = hsdk_file_load(c, mid, &f);
        if (e == HUSH_ERR_NOT_FOUND || (!e && !strcmp(end, ".up.tmp"))) {
            char p[1400];
            snprintf(p, sizeof p, "%s/%s", c->files_dir, de->d_name);
            unlink(p);
        }
        if (!e)
            hsdk_file_release(&f);
    }
    if (d)
        closedir(d);
    hsdk_unlock(c);
    free(ids);
}
