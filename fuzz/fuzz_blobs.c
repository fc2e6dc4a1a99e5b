/*
 * fuzz_blobs.c - the relay's file store as a state machine. The real relay (storage thread, blob
 * thread, event loop) runs in this process on a loopback port; two registered users drive it over
 * real WebSocket connections with a fuzzer-chosen sequence of file requests: create (within and
 * over the size limit), the next chunk of an upload (right), a chunk at a wrong offset, a chunk
 * from the other user, a completing chunk with a wrong digest, status, downloads by either user at
 * any offset, and raw frame bytes.
 *
 * A model keeps what each upload should hold. Invariants (abort() on violation):
 * - an upload stands exactly where the model says (put answers, status, BLOB_OFFSET's hint);
 * - a file is downloadable only once its last chunk was answered complete, and then every range
 *   returns exactly the bytes uploaded; before that, or for a wrong digest, nobody gets a byte;
 * - the other user can neither write to an upload nor see it before it is complete;
 * - the relay keeps answering.
 * Raw frames may be file requests the model does not know about: the uploads of their sender are
 * then no longer checked for content (only for the rules that hold whatever the bytes).
 */
#include <stdarg.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "fuzz.h"
#include "inproc.h"
#include "hush.pb-c.h"
#include "relay.h"
#include "relay_util.h"
#include "server.h"

#define MAX_BLOBS 4
#define MAX_SIZE (64 * 1024) /* the relay's max_blob_bytes here */
#define T 5000

static struct relay_proc g_relay;
static struct tclient *g_u[2];

struct mblob {
    int used;
    uint8_t id[16];
    uint64_t size, at; /* declared size, bytes the relay has */
    int complete;
    int tainted;       /* a raw frame may have written to it */
    uint8_t seed;
};
static struct mblob g_b[MAX_BLOBS];

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz_blobs: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

static uint8_t byte_at(const struct mblob *b, uint64_t i)
{
    return (uint8_t)(i * 31 + b->seed);
}

static void content(const struct mblob *b, uint64_t off, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = byte_at(b, off + i);
}

static void digest(const struct mblob *b, uint8_t out[32])
{
    uint8_t *all = malloc(b->size);
    content(b, 0, b->size, all);
    crypto_hash_sha256(out, all, b->size);
    free(all);
}

int LLVMFuzzerInitialize(int *argc, char **argv[])
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    static const char *const set[][2] = {
        { "max_blob_bytes", "64k" }, { "blob_uploads_per_hour", "1000000" }, { "blob_quota_bytes", "1g" },
        { "blob_disk_reserve", "0" },
    };
    fuzz_relay_inproc(&g_relay, "blobs-relay", set, sizeof set / sizeof set[0], 1);
    g_u[0] = tc_registered(&g_relay, "ann", 1);
    g_u[1] = tc_registered(&g_relay, "ben", 1);
    return 0;
}

/* A request's Result (aborts when the relay does not answer). Frees nothing: the caller does. */
static Hush__Frame *ask(int u, Hush__Frame *f)
{
    if (!g_u[u]->ws && (tc_reconnect(g_u[u]) != 0 || tc_login(g_u[u]) != 0))
        die("user %d cannot log in again", u);
    Hush__Frame *r = tc_request(g_u[u], f, T);
    if (!r || r->msg_case != HUSH__FRAME__MSG_RESULT)
        die("no answer to a file request (case %d)", (int)f->msg_case);
    return r;
}

static Hush__Frame *put(int u, const struct mblob *b, uint64_t off, const uint8_t *data, size_t n, const uint8_t *dg)
{
    Hush__BlobPutRequest q = HUSH__BLOB_PUT_REQUEST__INIT;
    q.blob_id.data = (uint8_t *)b->id;
    q.blob_id.len = 16;
    q.offset = off;
    q.data.data = (uint8_t *)data;
    q.data.len = n;
    if (dg) {
        q.digest.data = (uint8_t *)dg;
        q.digest.len = 32;
    }
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_BLOB_PUT;
    f.blob_put = &q;
    return ask(u, &f);
}

static void op_create(uint16_t arg)
{
    uint64_t size = 1 + ((uint64_t)arg * 2) % (MAX_SIZE + 4096);
    Hush__BlobCreateRequest q = HUSH__BLOB_CREATE_REQUEST__INIT;
    q.size = size;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_BLOB_CREATE;
    f.blob_create = &q;
    Hush__Frame *r = ask(0, &f);
    if (size > MAX_SIZE) {
        if (r->result->code != HUSH__ERROR_CODE__TOO_LARGE)
            die("a file over the limit was accepted (code %d)", r->result->code);
    } else {
        if (r->result->code != HUSH__ERROR_CODE__OK || r->result->blob_id.len != 16)
            die("create refused (code %d)", r->result->code);
        struct mblob *b = &g_b[arg % MAX_BLOBS];
        memset(b, 0, sizeof *b);
        b->used = 1;
        b->size = size;
        b->seed = (uint8_t)(arg >> 3);
        memcpy(b->id, r->result->blob_id.data, 16);
    }
    hush__frame__free_unpacked(r, NULL);
}

static void op_next_chunk(struct mblob *b, uint16_t arg, int wrong_digest)
{
    if (b->complete || b->tainted)
        return;
    size_t n = 1 + arg % 9000;
    if (n > b->size - b->at)
        n = (size_t)(b->size - b->at);
    int last = b->at + n == b->size;
    if (wrong_digest && !last)
        return;
    uint8_t *data = malloc(n), dg[32];
    content(b, b->at, n, data);
    digest(b, dg);
    if (wrong_digest)
        dg[arg % 32] ^= 1;
    Hush__Frame *r = put(0, b, b->at, data, n, last ? dg : NULL);
    free(data);
    Hush__Result *res = r->result;
    if (wrong_digest) {
        if (res->code != HUSH__ERROR_CODE__DIGEST_MISMATCH)
            die("a wrong digest was not refused (code %d)", res->code);
        b->at = 0;
    } else {
        if (res->code != HUSH__ERROR_CODE__OK || res->blob_offset != b->at + n || res->blob_complete != last)
            die("the next chunk: code %d offset %llu complete %d, expected offset %llu complete %d", res->code,
                (unsigned long long)res->blob_offset, res->blob_complete, (unsigned long long)(b->at + n), last);
        b->at += n;
        b->complete = last;
    }
    hush__frame__free_unpacked(r, NULL);
}

static void op_wrong_offset(struct mblob *b, uint16_t arg)
{
    if (b->complete || b->tainted)
        return;
    uint8_t x[16] = { 0 };
    uint64_t off = b->at + 1 + arg % 100;
    Hush__Frame *r = put(0, b, off, x, sizeof x, NULL);
    if (r->result->code != HUSH__ERROR_CODE__BLOB_OFFSET || r->result->blob_offset != b->at)
        die("a chunk at the wrong offset: code %d hint %llu (at %llu)", r->result->code,
            (unsigned long long)r->result->blob_offset, (unsigned long long)b->at);
    hush__frame__free_unpacked(r, NULL);
}

static void op_other_writes(struct mblob *b)
{
    uint8_t x[8] = { 0 };
    Hush__Frame *r = put(1, b, b->at, x, sizeof x, NULL);
    if (r->result->code != HUSH__ERROR_CODE__BLOB_UNKNOWN)
        die("another user wrote to an upload (code %d)", r->result->code);
    hush__frame__free_unpacked(r, NULL);
}

static void op_get(int u, struct mblob *b, uint16_t arg)
{
    uint64_t off = arg % (b->size + 8);
    uint32_t len = 1 + (uint32_t)(arg >> 2) % 20000;
    Hush__BlobGetRequest q = HUSH__BLOB_GET_REQUEST__INIT;
    q.blob_id.data = b->id;
    q.blob_id.len = 16;
    q.offset = off;
    q.length = len;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_BLOB_GET;
    f.blob_get = &q;
    Hush__Frame *r = ask(u, &f);
    Hush__Result *res = r->result;
    if (!b->complete && !b->tainted) {
        if (res->code != HUSH__ERROR_CODE__BLOB_UNKNOWN || res->data.len)
            die("an incomplete file was readable (code %d)", res->code);
    } else if (res->code == HUSH__ERROR_CODE__OK) {
        uint64_t want = off + len > b->size ? b->size - off : len;
        if (off >= b->size || res->data.len != want)
            die("a range of %llu bytes at %llu came back with %zu", (unsigned long long)len, (unsigned long long)off,
                res->data.len);
        if (!b->tainted) {
            uint8_t *exp = malloc(want ? want : 1);
            content(b, off, (size_t)want, exp);
            if (memcmp(exp, res->data.data, (size_t)want) != 0)
                die("a download returned other bytes than were uploaded");
            free(exp);
        }
    } else if (!b->tainted && off < b->size) {
        die("a range of a complete file was refused (code %d)", res->code);
    }
    hush__frame__free_unpacked(r, NULL);
}

static void op_status(struct mblob *b)
{
    Hush__BlobStatusRequest q = HUSH__BLOB_STATUS_REQUEST__INIT;
    q.blob_id.data = b->id;
    q.blob_id.len = 16;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_BLOB_STATUS;
    f.blob_status = &q;
    Hush__Frame *r = ask(0, &f);
    Hush__Result *res = r->result;
    if (!b->tainted && (res->code != HUSH__ERROR_CODE__OK || res->blob_offset != b->at ||
                        res->blob_complete != b->complete || res->blob_size != b->size))
        die("status: code %d at %llu complete %d, expected at %llu complete %d", res->code,
            (unsigned long long)res->blob_offset, res->blob_complete, (unsigned long long)b->at, b->complete);
    hush__frame__free_unpacked(r, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    memset(g_b, 0, sizeof g_b);
    size_t i = 0;
    for (int ops = 0; i < size && ops < 48; ops++) {
        uint8_t op = data[i++];
        uint16_t arg = 0;
        if (i + 1 < size) {
            arg = (uint16_t)(data[i] << 8 | data[i + 1]);
            i += 2;
        }
        struct mblob *b = &g_b[(op >> 3) % MAX_BLOBS];
        int kind = op & 7;
        if (kind != 0 && kind != 6 && !b->used)
            kind = 0; /* nothing to act on yet: make one */
        switch (kind) {
        case 0: op_create(arg); break;
        case 1: op_next_chunk(b, arg, 0); break;
        case 2: op_wrong_offset(b, arg); break;
        case 3: op_other_writes(b); break;
        case 4: op_get(op & 0x40 ? 1 : 0, b, arg); break;
        case 5: op_status(b); break;
        case 6: { /* raw frame bytes from ann */
            size_t len = arg % 256;
            if (len > size - i)
                len = size - i;
            if (g_u[0]->ws)
                wsc_send(g_u[0]->ws, data + i, len);
            i += len;
            /* its answers (whatever ids it named) must not be taken for ours: a new connection */
            tc_disconnect(g_u[0]);
            for (int k = 0; k < MAX_BLOBS; k++)
                g_b[k].tainted = 1;
            break;
        }
        case 7: op_next_chunk(b, arg, 1); break;
        }
    }
    /* the relay still answers */
    op_create(1);
    for (int k = 0; k < MAX_BLOBS; k++)
        if (g_b[k].used && !g_b[k].tainted)
            op_status(&g_b[k]);
    return 0;
}
