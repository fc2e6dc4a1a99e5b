/*
 * net_files.c - file transfers on the network thread: one upload or download at a time, in chunks
 * of the relay's Limits.max_blob_chunk with up to NET_FILE_WINDOW requests in flight, so texts and
 * receipts keep flowing on the same connection between the chunks.
 *
 * Upload: BlobCreate (the relay's id is recorded in the sealed pointer at once) or, when resuming,
 * BlobStatus; then BlobPut from where the relay's copy ends, the last chunk with the digest. Once
 * the relay answers complete, the file message (the pointer) goes into the outbox in the same
 * transaction that marks the file SENT, and the encrypted copy is deleted.
 * Download: BlobGet from where the local partial file ends; then the digest of the whole
 * ciphertext is checked before the file becomes READY (hush_attachment_save decrypts it).
 * A lost connection or a restart just starts again from what is stored on each side.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "net.h"

enum { PH_CREATE = 1, PH_STATUS = 2, PH_DATA = 3 };

static void report(struct hush_net *n, int force)
{
    struct net_xfer *x = &n->xfer;
    uint64_t now = now_ms();
    if (!force && now - x->last_report_ms < 100)
        return;
    x->last_report_ms = now;
    if (n->cb.on_file)
        n->cb.on_file(n->cb.ctx, x->mid, x->upload ? HUSH_FILE_UPLOADING : HUSH_FILE_DOWNLOADING, x->acked, x->size,
                      HUSH_OK);
    if (now - x->last_saved_ms >= 1000) { /* hush_attachment_get's progress, from the database */
        x->last_saved_ms = now;
        hsdk_lock(n->c);
        if (hsdk_file_set_state(n->c, x->mid, x->upload ? HUSH_FILE_UPLOADING : HUSH_FILE_DOWNLOADING, x->acked, HUSH_OK)) {
        }
        hsdk_unlock(n->c);
    }
}

static void end_xfer(struct hush_net *n)
{
    struct net_xfer *x = &n->xfer;
    if (x->fd >= 0)
        close(x->fd);
    x->fd = -1;
    x->active = 0;
    x->inflight = 0;
    x->gen++;
    if (x->p) {
        hsdk_pointer_free(x->p);
        x->p = NULL;
    }
}

/* Gives the transfer up for good: FAILED, told to the app (an upload's message fails with it). */
static void fail(struct hush_net *n, hush_err e, const char *detail)
{
    struct net_xfer *x = &n->xfer;
    char path[1200];
    hsdk_file_path(n->c, x->mid, x->upload ? ".up" : ".down", path, sizeof path);
    hsdk_lock(n->c);
    hush_err se = hsdk_begin(n->c);
    if (!se) {
        se = hsdk_file_set_state(n->c, x->mid, HUSH_FILE_FAILED, x->acked, e);
        if (!se && x->upload)
            se = hsdk_set_message_state(n->c, x->mid, HUSH_MSG_FAILED);
        se = hsdk_end(n->c, se);
    }
    hsdk_unlock(n->c);
    uint8_t mid[16];
    memcpy(mid, x->mid, 16);
    int upload = x->upload;
    char peer[HUSH_USERNAME_MAX + 1];
    snprintf(peer, sizeof peer, "%s", x->peer);
    uint64_t done = x->acked, total = x->size;
    end_xfer(n);
    if (se)
        return; /* not recorded: it is tried again later */
    unlink(path);
    char msg[300];
    snprintf(msg, sizeof msg, "file %s failed: %s", upload ? "upload" : "download", detail);
    hnet_report(n, e, msg);
    if (n->cb.on_file)
        n->cb.on_file(n->cb.ctx, mid, HUSH_FILE_FAILED, done, total, e);
    if (upload)
        hnet_report_state(n, peer, mid, HUSH_MSG_FAILED);
}

static struct req *blob_req(struct hush_net *n, int phase)
{
    struct req *r = hnet_add_req(n, R_BLOB);
    if (!r)
        return NULL;
    memcpy(r->mid, n->xfer.mid, 16);
    r->kind = (int)n->xfer.gen;
    r->outbox_id = phase;
    n->xfer.inflight++;
    return r;
}

static void send_create(struct hush_net *n)
{
    struct req *r = blob_req(n, PH_CREATE);
    if (!r)
        return;
    n->xfer.phase = PH_CREATE;
    Hush__BlobCreateRequest q = HUSH__BLOB_CREATE_REQUEST__INIT;
    q.size = n->xfer.size;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = r->id;
    f.msg_case = HUSH__FRAME__MSG_BLOB_CREATE;
    f.blob_create = &q;
    hnet_queue_frame(n, &f);
}

static void send_status(struct hush_net *n)
{
    struct req *r = blob_req(n, PH_STATUS);
    if (!r)
        return;
    n->xfer.phase = PH_STATUS;
    Hush__BlobStatusRequest q = HUSH__BLOB_STATUS_REQUEST__INIT;
    q.blob_id.data = n->xfer.p->blob_id.data;
    q.blob_id.len = 16;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = r->id;
    f.msg_case = HUSH__FRAME__MSG_BLOB_STATUS;
    f.blob_status = &q;
    hnet_queue_frame(n, &f);
}

/* Keeps NET_FILE_WINDOW chunk requests in flight. */
static void fill(struct hush_net *n)
{
    struct net_xfer *x = &n->xfer;
    x->phase = PH_DATA;
    while (x->active && x->inflight < NET_FILE_WINDOW && x->next < x->size) {
        uint32_t len = x->size - x->next < n->blob_chunk ? (uint32_t)(x->size - x->next) : n->blob_chunk;
        Hush__Frame f = HUSH__FRAME__INIT;
        Hush__BlobPutRequest put = HUSH__BLOB_PUT_REQUEST__INIT;
        Hush__BlobGetRequest get = HUSH__BLOB_GET_REQUEST__INIT;
        uint8_t *buf = NULL;
        if (x->upload) {
            buf = malloc(len);
            ssize_t got = buf ? pread(x->fd, buf, len, (off_t)x->next) : -1;
            if (got != (ssize_t)len) {
                free(buf);
                fail(n, HUSH_ERR_STORAGE, "the encrypted copy of the file could not be read");
                return;
            }
            put.blob_id = x->p->blob_id;
            put.offset = x->next;
            put.data.data = buf;
            put.data.len = len;
            if (x->next + len == x->size)
                put.digest = x->p->digest;
            f.msg_case = HUSH__FRAME__MSG_BLOB_PUT;
            f.blob_put = &put;
        } else {
            get.blob_id = x->p->blob_id;
            get.offset = x->next;
            get.length = len;
            f.msg_case = HUSH__FRAME__MSG_BLOB_GET;
            f.blob_get = &get;
        }
        struct req *r = blob_req(n, PH_DATA);
        if (!r) {
            free(buf);
            return; /* the request table is full: the next result refills */
        }
        f.id = r->id;
        hnet_queue_frame(n, &f);
        free(buf);
        x->next += len;
    }
}

static void finish_upload(struct hush_net *n)
{
    struct net_xfer *x = &n->xfer;
    size_t len = hush__attachment_pointer__get_packed_size(x->p);
    uint8_t *body = malloc(len ? len : 1);
    hush_err e = body ? HUSH_OK : HUSH_ERR_NOMEM;
    if (body)
        hush__attachment_pointer__pack(x->p, body);
    hsdk_lock(n->c);
    if (!e)
        e = hsdk_begin(n->c);
    if (!e) {
        /* the file is on the relay's disk: its message goes out like a text from here on */
        e = hsdk_file_set_state(n->c, x->mid, HUSH_FILE_SENT, x->size, HUSH_OK);
        if (!e)
            e = hsdk_outbox_insert(n->c, x->peer, HUSH__CONTENT_KIND__CONTENT_ATTACHMENT, x->mid, body, len);
        e = hsdk_end(n->c, e);
    }
    hsdk_unlock(n->c);
    if (body) {
        sodium_memzero(body, len);
        free(body);
    }
    uint8_t mid[16];
    memcpy(mid, x->mid, 16);
    uint64_t size = x->size;
    end_xfer(n);
    if (e) {
        n->xfer.retry_at_ms = now_ms() + NET_RETRY_MS; /* the relay keeps the file: status again later */
        return;
    }
    char path[1200];
    hsdk_file_path(n->c, mid, ".up", path, sizeof path);
    unlink(path);
    if (n->cb.on_file)
        n->cb.on_file(n->cb.ctx, mid, HUSH_FILE_SENT, size, size, HUSH_OK);
    hnet_pump_outbox(n);
    hnet_files_pump(n);
}

static void finish_download(struct hush_net *n)
{
    struct net_xfer *x = &n->xfer;
    char part[1200], final[1200];
    hsdk_file_path(n->c, x->mid, ".down", part, sizeof part);
    hsdk_file_path(n->c, x->mid, "", final, sizeof final);
    if (fsync(x->fd) != 0) {
        fail(n, HUSH_ERR_STORAGE, "could not write the file");
        return;
    }
    uint8_t dg[32];
    uint64_t len = 0;
    hush_err e = hsdk_file_digest(part, dg, &len);
    if (e) {
        fail(n, e, "could not read the downloaded file");
        return;
    }
    if (len != x->p->blob_size || sodium_memcmp(dg, x->p->digest.data, 32) != 0) {
        fail(n, HUSH_ERR_BAD_MESSAGE, "the file does not match its digest (changed on the relay or in transit): refused");
        return;
    }
    if (rename(part, final) != 0) {
        fail(n, HUSH_ERR_STORAGE, "could not keep the file");
        return;
    }
    int dfd = open(n->c->files_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (fsync(dfd) != 0) {
        }
        close(dfd);
    }
    hsdk_lock(n->c);
    e = hsdk_file_set_state(n->c, x->mid, HUSH_FILE_READY, x->size, HUSH_OK);
    hsdk_unlock(n->c);
    uint8_t mid[16];
    memcpy(mid, x->mid, 16);
    uint64_t size = x->size;
    end_xfer(n);
    if (e) {
        n->xfer.retry_at_ms = now_ms() + NET_RETRY_MS; /* the file is complete on disk: recorded next time */
        return;
    }
    if (n->cb.on_file)
        n->cb.on_file(n->cb.ctx, mid, HUSH_FILE_READY, size, size, HUSH_OK);
    hnet_files_pump(n);
}

/* Starts the transfer of file `mid` (a row in state UPLOADING or DOWNLOADING). */
static void start(struct hush_net *n, const uint8_t mid[16])
{
    struct net_xfer *x = &n->xfer;
    struct hsdk_file f;
    hsdk_lock(n->c);
    hush_err e = hsdk_file_load(n->c, mid, &f);
    hsdk_unlock(n->c);
    if (e)
        return;
    memset(x->mid, 0, sizeof x->mid);
    memcpy(x->mid, mid, 16);
    x->upload = f.state == HUSH_FILE_UPLOADING;
    snprintf(x->peer, sizeof x->peer, "%s", f.peer);
    x->p = f.p; /* the transfer owns the pointer now */
    f.p = NULL;
    x->size = x->p->blob_size;
    x->active = 1;
    x->inflight = 0;
    x->acked = x->next = 0;
    x->last_report_ms = 0;
    x->fd = -1;
    char path[1200];
    if (x->upload) {
        if (x->size > n->blob_max) {
            fail(n, HUSH_ERR_TOO_BIG, "larger than this relay accepts");
            return;
        }
        hsdk_file_path(n->c, mid, ".up", path, sizeof path);
        x->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (x->fd < 0) {
            fail(n, HUSH_ERR_STORAGE, "the encrypted copy of the file is gone");
            return;
        }
        if (x->p->blob_id.len == 16)
            send_status(n); /* resume: where does the relay's copy end? */
        else
            send_create(n);
        return;
    }
    if (x->p->blob_id.len != 16) {
        fail(n, HUSH_ERR_NOT_FOUND, "the file was never uploaded");
        return;
    }
    hsdk_file_path(n->c, mid, ".down", path, sizeof path);
    if (mkdir(n->c->files_dir, 0700) != 0 && errno != EEXIST) {
        fail(n, HUSH_ERR_STORAGE, "could not make the files directory");
        return;
    }
    x->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    struct stat sb;
    if (x->fd < 0 || fstat(x->fd, &sb) != 0) {
        fail(n, HUSH_ERR_STORAGE, "could not write the file");
        return;
    }
    if ((uint64_t)sb.st_size > x->size && ftruncate(x->fd, 0) != 0) {
        fail(n, HUSH_ERR_STORAGE, "could not write the file");
        return;
    }
    x->acked = x->next = (uint64_t)sb.st_size > x->size ? 0 : (uint64_t)sb.st_size;
    if (x->acked == x->size)
        finish_download(n);
    else
        fill(n);
}

void hnet_files_on_welcome(struct hush_net *n, const Hush__Limits *lim)
{
    n->blob_chunk = lim ? lim->max_blob_chunk : 0;
    n->blob_max = lim ? lim->max_blob_bytes : 0;
}

void hnet_files_pump(struct hush_net *n)
{
    struct net_xfer *x = &n->xfer;
    if (n->st != N_ONLINE || x->active)
        return;
    if (x->retry_at_ms && now_ms() < x->retry_at_ms)
        return;
    x->retry_at_ms = 0;
    uint8_t mid[16];
    hsdk_lock(n->c);
    int found = hsdk_file_next_active(n->c, mid, NULL, 0);
    hsdk_unlock(n->c);
    if (!found)
        return;
    if (n->blob_chunk == 0) {
        memcpy(x->mid, mid, 16);
        struct hsdk_file f;
        hsdk_lock(n->c);
        hush_err e = hsdk_file_load(n->c, mid, &f);
        hsdk_unlock(n->c);
        if (e)
            return;
        x->upload = f.state == HUSH_FILE_UPLOADING;
        snprintf(x->peer, sizeof x->peer, "%s", f.peer);
        x->size = f.p->blob_size;
        x->acked = 0;
        hsdk_file_release(&f);
        fail(n, HUSH_ERR_RELAY, "this relay does not take files");
        return;
    }
    start(n, mid);
}

void hnet_files_reset(struct hush_net *n)
{
    if (n->xfer.active)
        end_xfer(n);
}

/* The transfer was cancelled (or finished elsewhere) while running: its row moved on. */
static int still_wanted(struct hush_net *n)
{
    hsdk_lock(n->c);
    int state = hsdk_file_state(n->c, n->xfer.mid);
    hsdk_unlock(n->c);
    return state == (n->xfer.upload ? HUSH_FILE_UPLOADING : HUSH_FILE_DOWNLOADING);
}

/* Records the relay's id of the upload (NULL: none, upload anew) in the sealed pointer, so a
 * restart resumes it, and takes the pointer back from the database. 0 on success. */
static int record_blob_id(struct hush_net *n, const uint8_t *id)
{
    struct net_xfer *x = &n->xfer;
    struct hsdk_file f;
    memset(&f, 0, sizeof f);
    memcpy(f.mid, x->mid, 16);
    f.outgoing = 1;
    snprintf(f.peer, sizeof f.peer, "%s", x->peer);
    ProtobufCBinaryData keep = x->p->blob_id;
    uint8_t buf[16];
    if (id)
        memcpy(buf, id, 16);
    x->p->blob_id.data = id ? buf : NULL;
    x->p->blob_id.len = id ? 16 : 0;
    f.p = x->p;
    hsdk_lock(n->c);
    hush_err e = hsdk_file_set_pointer(n->c, &f);
    x->p->blob_id = keep; /* memory of the unpacked pointer, freed with it */
    struct hsdk_file g;
    if (!e && !(e = hsdk_file_load(n->c, x->mid, &g))) {
        hsdk_pointer_free(x->p);
        x->p = g.p;
    }
    hsdk_unlock(n->c);
    return e != HUSH_OK;
}

/* A refusal that may pass (rate limit, the relay's storage or disk, shutting down): stop and
 * start again later, from what the relay has. */
static void later(struct hush_net *n, const Hush__Result *res)
{
    uint32_t wait = res->retry_after_ms > NET_RETRY_MS ? res->retry_after_ms : NET_RETRY_MS;
    char txt[160];
    hnet_report(n, HUSH_ERR_RELAY, hnet_relay_text(txt, sizeof txt, res->message));
    end_xfer(n);
    n->xfer.retry_at_ms = now_ms() + wait;
}

void hnet_files_on_result(struct hush_net *n, const struct req *r, const Hush__Result *res)
{
    struct net_xfer *x = &n->xfer;
    if (!x->active || (uint32_t)r->kind != x->gen || memcmp(r->mid, x->mid, 16) != 0)
        return; /* an answer to a transfer that has moved on */
    x->inflight--;
    if (!still_wanted(n)) {
        end_xfer(n); /* cancelled: the app was answered by hush_attachment_cancel */
        hnet_files_pump(n);
        return;
    }
    char txt[160];
    int phase = (int)r->outbox_id;
    switch (res->code) {
    case HUSH__ERROR_CODE__OK:
        break;
    case HUSH__ERROR_CODE__BLOB_OFFSET:
        /* the relay has a different amount: continue from there (answers in flight are ignored) */
        x->gen++;
        x->inflight = 0;
        x->acked = x->next = res->blob_offset;
        fill(n);
        return;
    case HUSH__ERROR_CODE__DIGEST_MISMATCH:
        if (++x->restarts > 2) {
            fail(n, HUSH_ERR_BAD_MESSAGE, "the relay keeps receiving a different file than was sent");
            return;
        }
        x->gen++;
        x->inflight = 0;
        x->acked = x->next = 0;
        fill(n);
        return;
    case HUSH__ERROR_CODE__BLOB_UNKNOWN:
        if (x->upload && ++x->restarts <= 2) {
            /* expired or lost on the relay before it was complete: upload it anew */
            if (record_blob_id(n, NULL)) {
                later(n, res);
                return;
            }
            x->gen++;
            x->inflight = 0;
            x->acked = x->next = 0;
            send_create(n);
            return;
        }
        fail(n, HUSH_ERR_NOT_FOUND, x->upload ? "the relay lost the file" : "the relay no longer has the file (expired)");
        return;
    case HUSH__ERROR_CODE__RATE_LIMITED:
    case HUSH__ERROR_CODE__STORAGE_FAILED:
    case HUSH__ERROR_CODE__SHUTTING_DOWN:
    case HUSH__ERROR_CODE__INTERNAL:
        later(n, res);
        return;
    case HUSH__ERROR_CODE__TOO_LARGE:
        fail(n, HUSH_ERR_TOO_BIG, hnet_relay_text(txt, sizeof txt, res->message));
        return;
    default:
        fail(n, HUSH_ERR_RELAY, hnet_relay_text(txt, sizeof txt, res->message));
        return;
    }
    if (phase == PH_CREATE) {
        if (res->blob_id.len != 16) {
            fail(n, HUSH_ERR_RELAY, "the relay named the file wrongly");
            return;
        }
        if (record_blob_id(n, res->blob_id.data)) {
            later(n, res);
            return;
        }
        x->acked = x->next = 0;
        fill(n);
        return;
    }
    if (phase == PH_STATUS) {
        if (res->blob_complete) {
            x->acked = x->size;
            finish_upload(n);
            return;
        }
        x->acked = x->next = res->blob_offset;
        fill(n);
        return;
    }
    if (x->upload) {
        if (res->blob_offset > x->acked)
            x->acked = res->blob_offset;
        if (res->blob_complete) {
            x->acked = x->size;
            report(n, 1);
            finish_upload(n);
            return;
        }
        report(n, 0);
        fill(n);
        return;
    }
    /* a downloaded chunk: the answers come in order, each at the end of what is written */
    if (res->blob_offset != x->acked || res->data.len == 0 || x->acked + res->data.len > x->size) {
        x->gen++;
        x->inflight = 0;
        x->next = x->acked;
        fill(n);
        return;
    }
    size_t off = 0;
    while (off < res->data.len) {
        ssize_t w = pwrite(x->fd, res->data.data + off, res->data.len - off, (off_t)(x->acked + off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fail(n, HUSH_ERR_STORAGE, "could not write the file (disk full?)");
            return;
        }
        off += (size_t)w;
    }
    x->acked += res->data.len;
    if (x->acked == x->size) {
        report(n, 1);
        finish_download(n);
        return;
    }
    report(n, 0);
    fill(n);
}
