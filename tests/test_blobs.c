/*
 * test_blobs.c - the relay's file store at the protocol level: the real hushd on loopback and
 * real WebSocket frames. Uploads in chunks, downloads by range, resume after kill -9, every bad
 * input (wrong offsets, past the declared size, digest mismatch, unknown or foreign ids), quotas,
 * rate and size limits, a full disk, expiry and the clean-up of what a crash left behind.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "relay_util.h"
#include "util.h"

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* A Result (asserted), or NULL on timeout. */
static Hush__Result *result_of(Hush__Frame *f)
{
    assert_non_null(f);
    assert_int_equal(f->msg_case, HUSH__FRAME__MSG_RESULT);
    return f->result;
}

static Hush__Frame *blob_create(struct tclient *c, uint64_t size)
{
    Hush__BlobCreateRequest q = HUSH__BLOB_CREATE_REQUEST__INIT;
    q.size = size;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_BLOB_CREATE;
    f.blob_create = &q;
    return tc_request(c, &f, 10000);
}

static Hush__Frame *blob_put(struct tclient *c, const uint8_t id[16], uint64_t off, const uint8_t *data, size_t len,
                             const uint8_t *digest)
{
    Hush__BlobPutRequest q = HUSH__BLOB_PUT_REQUEST__INIT;
    q.blob_id.data = (uint8_t *)id;
    q.blob_id.len = 16;
    q.offset = off;
    q.data.data = (uint8_t *)data;
    q.data.len = len;
    if (digest) {
        q.digest.data = (uint8_t *)digest;
        q.digest.len = 32;
    }
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_BLOB_PUT;
    f.blob_put = &q;
    return tc_request(c, &f, 20000);
}

static Hush__Frame *blob_get(struct tclient *c, const uint8_t *id, size_t idlen, uint64_t off, uint32_t len)
{
    Hush__BlobGetRequest q = HUSH__BLOB_GET_REQUEST__INIT;
    q.blob_id.data = (uint8_t *)id;
    q.blob_id.len = idlen;
    q.offset = off;
    q.length = len;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_BLOB_GET;
    f.blob_get = &q;
    return tc_request(c, &f, 10000);
}

static Hush__Frame *blob_status(struct tclient *c, const uint8_t id[16])
{
    Hush__BlobStatusRequest q = HUSH__BLOB_STATUS_REQUEST__INIT;
    q.blob_id.data = (uint8_t *)id;
    q.blob_id.len = 16;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_BLOB_STATUS;
    f.blob_status = &q;
    return tc_request(c, &f, 10000);
}

static int code_of(Hush__Frame *f)
{
    int code = (int)result_of(f)->code;
    hush__frame__free_unpacked(f, NULL);
    return code;
}

/* Creates a file of `len` bytes and returns its id. */
static void create_ok(struct tclient *c, uint64_t len, uint8_t id[16])
{
    Hush__Frame *f = blob_create(c, len);
    Hush__Result *r = result_of(f);
    assert_int_equal(r->code, HUSH__ERROR_CODE__OK);
    assert_int_equal(r->blob_id.len, 16);
    assert_true(r->blob_expires_ms > 0);
    memcpy(id, r->blob_id.data, 16);
    hush__frame__free_unpacked(f, NULL);
}

/* Uploads data[from..len) in chunks of `chunk`; the last one with the digest. */
static void upload_from(struct tclient *c, const uint8_t id[16], const uint8_t *data, size_t len, size_t from, size_t chunk)
{
    uint8_t dg[32];
    crypto_hash_sha256(dg, data, len);
    for (size_t off = from; off < len; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        int last = off + n == len;
        Hush__Frame *f = blob_put(c, id, off, data + off, n, last ? dg : NULL);
        Hush__Result *r = result_of(f);
        assert_int_equal(r->code, HUSH__ERROR_CODE__OK);
        assert_int_equal(r->blob_offset, off + n);
        assert_int_equal(r->blob_complete, last);
        hush__frame__free_unpacked(f, NULL);
    }
}

static void download_check(struct tclient *c, const uint8_t id[16], const uint8_t *data, size_t len, uint32_t chunk)
{
    for (size_t off = 0; off < len; off += chunk) {
        Hush__Frame *f = blob_get(c, id, 16, off, chunk);
        Hush__Result *r = result_of(f);
        assert_int_equal(r->code, HUSH__ERROR_CODE__OK);
        size_t want = len - off < chunk ? len - off : chunk;
        assert_int_equal(r->data.len, want);
        assert_int_equal(r->blob_size, len);
        assert_memory_equal(r->data.data, data + off, want);
        hush__frame__free_unpacked(f, NULL);
    }
}

static int count_files(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name), sl = strlen(suffix);
        if (de->d_name[0] != '.' && l >= sl && !strcmp(de->d_name + l - sl, suffix))
            n++;
    }
    closedir(d);
    return n;
}

static uint8_t *random_bytes(size_t n)
{
    uint8_t *p = malloc(n);
    assert_non_null(p);
    randombytes_buf(p, n);
    return p;
}

/* ------------------------------------------------------------------------------------------ */

static void test_roundtrip(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "roundtrip", NULL);
    struct tclient *a = tc_registered(&r, "alice", 1);
    struct tclient *b = tc_registered(&r, "bob", 1);
    assert_int_equal(a->max_blob_bytes, 100u << 20);
    assert_int_equal(a->max_blob_chunk, 256u * 1024);
    size_t len = 600 * 1024 + 7;
    uint8_t *data = random_bytes(len);
    uint8_t id[16];
    create_ok(a, len, id);
    char blobdir[400];
    snprintf(blobdir, sizeof blobdir, "%s.blobs", r.db);
    assert_int_equal(count_files(blobdir, ".part"), 1);
    /* not downloadable while incomplete, not even by its uploader */
    assert_int_equal(code_of(blob_get(b, id, 16, 0, 1024)), HUSH__ERROR_CODE__BLOB_UNKNOWN);
    assert_int_equal(code_of(blob_get(a, id, 16, 0, 1024)), HUSH__ERROR_CODE__BLOB_UNKNOWN);
    upload_from(a, id, data, len, 0, a->max_blob_chunk);
    assert_int_equal(count_files(blobdir, ".part"), 0);
    /* anyone who knows the id downloads it, by range; the last chunk is short */
    download_check(b, id, data, len, 100000);
    download_check(a, id, data, len, a->max_blob_chunk);
    Hush__Frame *f = blob_status(b, id);
    Hush__Result *st = result_of(f);
    assert_int_equal(st->code, HUSH__ERROR_CODE__OK);
    assert_true(st->blob_complete);
    assert_int_equal(st->blob_offset, len);
    assert_int_equal(st->blob_size, len);
    hush__frame__free_unpacked(f, NULL);
    /* a retried last chunk after completion: still complete, nothing changes */
    uint8_t dg[32];
    crypto_hash_sha256(dg, data, len);
    f = blob_put(a, id, len - 7, data + len - 7, 7, dg);
    assert_int_equal(result_of(f)->code, HUSH__ERROR_CODE__OK);
    assert_true(result_of(f)->blob_complete);
    hush__frame__free_unpacked(f, NULL);
    assert_true(relay_metric(&r, "hush_blobs_completed_total") == 1);
    assert_true(relay_metric(&r, "hush_blob_bytes_out_total") == (long)(2 * len));
    free(data);
    tc_free(a);
    tc_free(b);
    relay_stop(&r, SIGTERM);
}

static void test_bad_input(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "bad", "max_blob_bytes = 1m");
    struct tclient *a = tc_registered(&r, "alice", 1);
    struct tclient *b = tc_registered(&r, "bob", 1);
    assert_int_equal(code_of(blob_create(a, 0)), HUSH__ERROR_CODE__BAD_REQUEST);
    assert_int_equal(code_of(blob_create(a, (1u << 20) + 1)), HUSH__ERROR_CODE__TOO_LARGE);
    size_t len = 300000;
    uint8_t *data = random_bytes(len);
    uint8_t dg[32], id[16];
    crypto_hash_sha256(dg, data, len);
    create_ok(a, len, id);
    /* a gap, an overlap: refused, with where the upload stands */
    Hush__Frame *f = blob_put(a, id, 10, data, 100, NULL);
    assert_int_equal(result_of(f)->code, HUSH__ERROR_CODE__BLOB_OFFSET);
    assert_int_equal(result_of(f)->blob_offset, 0);
    hush__frame__free_unpacked(f, NULL);
    f = blob_put(a, id, 0, data, 1000, NULL);
    assert_int_equal(result_of(f)->code, HUSH__ERROR_CODE__OK);
    hush__frame__free_unpacked(f, NULL);
    f = blob_put(a, id, 500, data + 500, 1000, NULL);
    assert_int_equal(result_of(f)->code, HUSH__ERROR_CODE__BLOB_OFFSET);
    assert_int_equal(result_of(f)->blob_offset, 1000);
    hush__frame__free_unpacked(f, NULL);
    /* past the declared size; over the chunk cap; an empty chunk */
    uint8_t *big = random_bytes(len + 10);
    assert_int_equal(code_of(blob_put(a, id, 1000, big, len, dg)), HUSH__ERROR_CODE__TOO_LARGE);
    assert_int_equal(code_of(blob_put(a, id, 1000, big, 256 * 1024 + 1, NULL)), HUSH__ERROR_CODE__TOO_LARGE);
    assert_int_equal(code_of(blob_put(a, id, 1000, big, 0, NULL)), HUSH__ERROR_CODE__TOO_LARGE);
    /* someone else's upload, an id that was never made, a malformed one */
    assert_int_equal(code_of(blob_put(b, id, 1000, data + 1000, 1000, NULL)), HUSH__ERROR_CODE__BLOB_UNKNOWN);
    uint8_t nobody[16] = { 1, 2, 3 };
    assert_int_equal(code_of(blob_put(a, nobody, 0, data, 10, NULL)), HUSH__ERROR_CODE__BLOB_UNKNOWN);
    assert_int_equal(code_of(blob_get(a, nobody, 16, 0, 10)), HUSH__ERROR_CODE__BLOB_UNKNOWN);
    assert_int_equal(code_of(blob_get(a, nobody, 15, 0, 10)), HUSH__ERROR_CODE__BAD_REQUEST);
    /* the completing chunk without a digest is refused before anything is written */
    assert_int_equal(code_of(blob_put(a, id, 1000, data + 1000, 200000, NULL)), HUSH__ERROR_CODE__OK);
    assert_int_equal(code_of(blob_put(a, id, 201000, data + 201000, len - 201000, NULL)), HUSH__ERROR_CODE__BAD_REQUEST);
    f = blob_status(a, id);
    assert_int_equal(result_of(f)->blob_offset, 201000);
    assert_false(result_of(f)->blob_complete);
    hush__frame__free_unpacked(f, NULL);
    /* a wrong digest: refused, and the upload starts over */
    uint8_t bad[32];
    memcpy(bad, dg, 32);
    bad[0] ^= 1;
    f = blob_put(a, id, 201000, data + 201000, len - 201000, bad);
    assert_int_equal(result_of(f)->code, HUSH__ERROR_CODE__DIGEST_MISMATCH);
    hush__frame__free_unpacked(f, NULL);
    f = blob_status(a, id);
    assert_int_equal(result_of(f)->blob_offset, 0);
    assert_false(result_of(f)->blob_complete);
    hush__frame__free_unpacked(f, NULL);
    assert_int_equal(code_of(blob_get(b, id, 16, 0, 10)), HUSH__ERROR_CODE__BLOB_UNKNOWN);
    /* then the right bytes complete it */
    upload_from(a, id, data, len, 0, 100000);
    download_check(b, id, data, len, 65536);
    assert_int_equal(code_of(blob_get(b, id, 16, len, 10)), HUSH__ERROR_CODE__BAD_REQUEST);
    assert_int_equal(code_of(blob_get(b, id, 16, 0, 0)), HUSH__ERROR_CODE__TOO_LARGE);
    /* the connection is still fine for messages after all that */
    uint8_t mid[16];
    randombytes_buf(mid, sizeof mid);
    uint64_t seq = 0;
    assert_int_equal(tc_send(a, "bob", 1, (const uint8_t *)"x", 1, mid, &seq), HUSH__ERROR_CODE__OK);
    assert_true(relay_metric(&r, "hush_blobs_digest_mismatch_total") == 1);
    free(data);
    free(big);
    tc_free(a);
    tc_free(b);
    relay_stop(&r, SIGTERM);
}

static void test_quota_rate_disk(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "quota", "blob_quota_bytes = 1m\nblob_uploads_per_hour = 3");
    struct tclient *a = tc_registered(&r, "alice", 1);
    struct tclient *b = tc_registered(&r, "bob", 1);
    uint8_t id[16];
    create_ok(a, 600 * 1024, id);
    /* declared bytes count from the start: a second one would pass the quota */
    assert_int_equal(code_of(blob_create(a, 600 * 1024)), HUSH__ERROR_CODE__QUOTA_EXCEEDED);
    create_ok(a, 1000, id);
    create_ok(a, 1000, id);
    Hush__Frame *f = blob_create(a, 1000);
    assert_int_equal(result_of(f)->code, HUSH__ERROR_CODE__RATE_LIMITED);
    assert_true(result_of(f)->retry_after_ms > 0);
    hush__frame__free_unpacked(f, NULL);
    /* per user: bob is not affected */
    create_ok(b, 600 * 1024, id);
    tc_free(a);
    tc_free(b);
    relay_stop(&r, SIGTERM);

    /* a disk without room for the file and the reserve: a clear refusal, nothing stored */
    relay_start(&r, "diskfull", "blob_disk_reserve = 1000000g");
    a = tc_registered(&r, "alice", 1);
    f = blob_create(a, 1000);
    assert_int_equal(result_of(f)->code, HUSH__ERROR_CODE__STORAGE_FAILED);
    assert_non_null(strstr(result_of(f)->message, "disk is full"));
    hush__frame__free_unpacked(f, NULL);
    char blobdir[400];
    snprintf(blobdir, sizeof blobdir, "%s.blobs", r.db);
    assert_int_equal(count_files(blobdir, ""), 0);
    tc_free(a);
    relay_stop(&r, SIGTERM);

    /* files off: the Welcome says so and requests are refused */
    relay_start(&r, "off", "blobs = off");
    a = tc_registered(&r, "alice", 1);
    assert_int_equal(a->max_blob_bytes, 0);
    assert_int_equal(code_of(blob_create(a, 1000)), HUSH__ERROR_CODE__BAD_REQUEST);
    tc_free(a);
    relay_stop(&r, SIGTERM);
}

static void test_resume_after_kill(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "resume", NULL);
    struct tclient *a = tc_registered(&r, "alice", 1);
    size_t len = 2u << 20;
    uint8_t *data = random_bytes(len);
    uint8_t id[16];
    create_ok(a, len, id);
    uint8_t dg[32];
    crypto_hash_sha256(dg, data, len);
    for (size_t off = 0; off < len / 2; off += 256 * 1024) {
        Hush__Frame *f = blob_put(a, id, off, data + off, 256 * 1024, NULL);
        assert_int_equal(result_of(f)->code, HUSH__ERROR_CODE__OK);
        hush__frame__free_unpacked(f, NULL);
    }
    relay_stop(&r, SIGKILL);
    relay_restart(&r);
    assert_int_equal(tc_reconnect(a), 0);
    assert_int_equal(tc_login(a), HUSH__ERROR_CODE__OK);
    Hush__Frame *f = blob_status(a, id);
    assert_int_equal(result_of(f)->code, HUSH__ERROR_CODE__OK);
    assert_int_equal(result_of(f)->blob_offset, len / 2);
    assert_false(result_of(f)->blob_complete);
    hush__frame__free_unpacked(f, NULL);
    upload_from(a, id, data, len, len / 2, 256 * 1024);
    /* and the completed file survives another kill */
    relay_stop(&r, SIGKILL);
    relay_restart(&r);
    struct tclient *b = tc_registered(&r, "bob", 1);
    download_check(b, id, data, len, 256 * 1024);
    free(data);
    tc_free(a);
    tc_free(b);
    relay_stop(&r, SIGTERM);
}

static void test_expiry_and_leftovers(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "expiry", "ttl_seconds = 2");
    struct tclient *a = tc_registered(&r, "alice", 1);
    size_t len = 5000;
    uint8_t *data = random_bytes(len);
    uint8_t id[16], id2[16];
    create_ok(a, len, id);
    upload_from(a, id, data, len, 0, 4096);
    download_check(a, id, data, len, 4096);
    create_ok(a, len, id2); /* left incomplete */
    char blobdir[400], p[600];
    snprintf(blobdir, sizeof blobdir, "%s.blobs", r.db);
    /* what a crash leaves: a file without a record; and a file that is not the relay's */
    snprintf(p, sizeof p, "%s/00112233445566778899aabbccddeeff.part", blobdir);
    FILE *o = fopen(p, "w");
    assert_non_null(o);
    fputs("left by a crash", o);
    fclose(o);
    snprintf(p, sizeof p, "%s/README.operator", blobdir);
    o = fopen(p, "w");
    assert_non_null(o);
    fclose(o);
    sleep_ms(2500);
    /* expired: gone for everyone at once, before any sweep */
    assert_int_equal(code_of(blob_get(a, id, 16, 0, 100)), HUSH__ERROR_CODE__BLOB_UNKNOWN);
    assert_int_equal(code_of(blob_status(a, id2)), HUSH__ERROR_CODE__BLOB_UNKNOWN);
    tc_free(a);
    relay_stop(&r, SIGTERM);
    relay_restart(&r); /* the sweep runs at start (then every minute) */
    a = tc_registered(&r, "carol", 1);
    tc_free(a);
    assert_int_equal(count_files(blobdir, ".part"), 0);
    assert_int_equal(count_files(blobdir, ""), 1); /* only README.operator */
    assert_true(relay_metric(&r, "hush_blobs_expired_total") == 2);
    free(data);
    relay_stop(&r, SIGTERM);
}

/* Uploads pipelined with messages on one connection: the messages are answered while the file
 * goes up (the file requests do not hold the connection). */
static void test_upload_does_not_block_messages(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "interleave", NULL);
    struct tclient *a = tc_registered(&r, "alice", 1);
    struct tclient *b = tc_registered(&r, "bob", 1);
    size_t len = 4u << 20, chunk = 256 * 1024;
    uint8_t *data = random_bytes(len);
    uint8_t id[16], dg[32];
    crypto_hash_sha256(dg, data, len);
    create_ok(a, len, id);
    for (size_t off = 0; off < len; off += chunk) {
        Hush__Frame *f = blob_put(a, id, off, data + off, chunk, off + chunk == len ? dg : NULL);
        assert_int_equal(result_of(f)->code, HUSH__ERROR_CODE__OK);
        hush__frame__free_unpacked(f, NULL);
        uint8_t mid[16];
        randombytes_buf(mid, sizeof mid);
        uint64_t seq = 0;
        assert_int_equal(tc_send(a, "bob", 1, (const uint8_t *)"hi", 2, mid, &seq), HUSH__ERROR_CODE__OK);
    }
    download_check(b, id, data, len, 256 * 1024);
    free(data);
    tc_free(a);
    tc_free(b);
    relay_stop(&r, SIGTERM);
}

/* A client that asks for file chunks and never reads the answers: the relay stops reading it once
 * a few MiB of answers wait, instead of holding hundreds of 256 KiB chunks for it. */
static void test_reader_that_never_reads(void **state)
{
    (void)state;
    struct relay_proc r;
    relay_start(&r, "noread", NULL);
    struct tclient *a = tc_registered(&r, "alice", 1);
    size_t len = 1u << 20;
    uint8_t *data = random_bytes(len), id[16];
    create_ok(a, len, id);
    upload_from(a, id, data, len, 0, 256 * 1024);
    long before = relay_proc_kib(r.pid, "VmRSS");
    Hush__BlobGetRequest q = HUSH__BLOB_GET_REQUEST__INIT;
    q.blob_id.data = id;
    q.blob_id.len = 16;
    q.length = 256 * 1024;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_BLOB_GET;
    f.blob_get = &q;
    uint8_t buf[128];
    int sent = 0;
    for (int i = 0; i < 1000000; i++) {
        struct pollfd pfd = { wsc_fd(a->ws), POLLOUT, 0 };
        if (poll(&pfd, 1, 500) != 1)
            break; /* the relay stopped reading us */
        f.id = 1000 + (uint64_t)i;
        q.offset = (uint64_t)(i % 4) * 256 * 1024;
        size_t n = hush__frame__pack(&f, buf);
        assert_int_equal(wsc_send(a->ws, buf, n), 0);
        sent++;
    }
    sleep_ms(500);
    long after = relay_proc_kib(r.pid, "VmRSS");
    /* without the byte bound: up to 512 answers of 256 KiB (128 MiB) waited for this client */
    assert_true(sent < 1000000);
    assert_true(after - before < 48 * 1024);
    /* and it is still served once it reads: a fresh connection works */
    tc_disconnect(a);
    assert_int_equal(tc_reconnect(a), 0);
    assert_int_equal(tc_login(a), HUSH__ERROR_CODE__OK);
    download_check(a, id, data, len, 256 * 1024);
    free(data);
    tc_free(a);
    relay_stop(&r, SIGTERM);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_quota_rate_disk),
        cmocka_unit_test(test_resume_after_kill),
        cmocka_unit_test(test_expiry_and_leftovers),
        cmocka_unit_test(test_upload_does_not_block_messages),
        cmocka_unit_test(test_reader_that_never_reads),
    };
    if (getenv("HUSH_TEST_ONLY"))
        cmocka_set_test_filter(getenv("HUSH_TEST_ONLY"));
    return cmocka_run_group_tests_name("blobs", tests, NULL, NULL);
}
