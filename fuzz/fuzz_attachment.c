/*
 * fuzz_attachment.c - what a receiver does with a file message: the first byte picks the mode.
 * 0: the rest is a file message's body (an AttachmentPointer from anyone): parsed and checked; an
 *    accepted one has every length right, a blob size that matches its file size, a file name
 *    with no '/' and no control characters, and packs to something that parses the same.
 * 1: the rest is a file: encrypted with a fixed key (as a sender does), then, when the next byte
 *    says so, one byte of the ciphertext is changed before the receiver decrypts it. Unchanged, the
 *    receiver gets exactly the file back; changed, it refuses (BAD_MESSAGE) and writes nothing.
 * 2: the rest is a downloaded ciphertext as a relay could serve it: decrypting it never crashes,
 *    and whatever is accepted has exactly the size the pointer says.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "../sdk/internal.h"
#include "fuzz.h"

#define MAX_FILE (256 * 1024)

static hush_client *g_c;
static char g_dir[256], g_plain[300], g_out[300];
static const uint8_t g_key[32] = { 'f', 'i', 'l', 'e' };
static const uint8_t g_mid[16] = { 'a', 't', 't' };

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    snprintf(g_dir, sizeof g_dir, "%s/attachment.db", fuzz_tmpdir());
    fuzz_remove_db(g_dir);
    uint8_t key[32] = { 5 };
    hush_open_opts o = { HUSH_DURABILITY_NORMAL };
    if (hush_client_open(g_dir, key, &o, &g_c))
        abort();
    mkdir(g_c->files_dir, 0700);
    snprintf(g_plain, sizeof g_plain, "%s/plain.bin", fuzz_tmpdir());
    snprintf(g_out, sizeof g_out, "%s/out.bin", fuzz_tmpdir());
    return 0;
}

static void check_pointer(const uint8_t *d, size_t n)
{
    Hush__AttachmentPointer *p = hsdk_pointer_parse(d, n);
    if (!p)
        return;
    if (p->blob_id.len != 16 || p->key.len != 32 || p->digest.len != 32 || p->blob_size != hsdk_file_blob_size(p->size) ||
        p->size > HUSH_MAX_FILE || strlen(p->file_name) == 0 || strlen(p->file_name) > HUSH_MAX_FILE_NAME ||
        strchr(p->file_name, '/') || p->thumbnail.len > HUSH_MAX_THUMBNAIL)
        abort();
    for (const unsigned char *c = (const unsigned char *)p->file_name; *c; c++)
        if (*c < 0x20)
            abort();
    size_t len = hush__attachment_pointer__get_packed_size(p);
    uint8_t *buf = malloc(len ? len : 1);
    hush__attachment_pointer__pack(p, buf);
    Hush__AttachmentPointer *q = hsdk_pointer_parse(buf, len);
    if (!q || q->size != p->size || strcmp(q->file_name, p->file_name) != 0)
        abort();
    hsdk_pointer_free(q);
    free(buf);
    hsdk_pointer_free(p);
}

/* The file message of `size` bytes, READY on this device (the ciphertext must be in place). */
static void make_ready(uint64_t size)
{
    Hush__AttachmentPointer p = HUSH__ATTACHMENT_POINTER__INIT;
    uint8_t blob[16] = { 1 }, digest[32] = { 0 };
    p.blob_id.data = blob;
    p.blob_id.len = 16;
    p.key.data = (uint8_t *)g_key;
    p.key.len = 32;
    p.digest.data = digest;
    p.digest.len = 32;
    p.size = size;
    p.blob_size = hsdk_file_blob_size(size);
    p.chunk_size = HSDK_FILE_CHUNK;
    p.file_name = "f";
    p.content_type = "";
    struct hsdk_file f;
    memset(&f, 0, sizeof f);
    memcpy(f.mid, g_mid, 16);
    snprintf(f.peer, sizeof f.peer, "peer");
    f.p = &p;
    hsdk_lock(g_c);
    if (hsdk_file_insert(g_c, g_mid, 0, "peer", HUSH_FILE_READY, &p, NULL) || hsdk_file_set_pointer(g_c, &f) ||
        hsdk_file_set_state(g_c, g_mid, HUSH_FILE_READY, 0, HUSH_OK))
        abort();
    hsdk_unlock(g_c);
}

static void write_file(const char *path, const uint8_t *d, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(d, 1, n, f) != n) || fclose(f))
        abort();
}

static size_t file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (size_t)sb.st_size : (size_t)-1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int mode = data[0] % 3;
    data++, size--;
    char enc[1200];
    hsdk_file_path(g_c, g_mid, "", enc, sizeof enc);
    unlink(g_out);
    if (mode == 0) {
        check_pointer(data, size);
    } else if (mode == 1) {
        if (size < 3)
            return 0;
        uint32_t at = (uint32_t)data[0] << 8 | data[1];
        int change = data[2] & 1;
        data += 3, size -= 3;
        if (size > MAX_FILE)
            size = MAX_FILE;
        write_file(g_plain, data, size);
        int in = open(g_plain, O_RDONLY);
        uint8_t digest[32];
        if (in < 0 || hsdk_file_encrypt(in, size, enc, g_key, digest))
            abort();
        close(in);
        size_t clen = file_size(enc);
        if (clen != hsdk_file_blob_size(size))
            abort();
        if (change) {
            FILE *f = fopen(enc, "r+b");
            if (!f || fseek(f, (long)(at % clen), SEEK_SET))
                abort();
            int ch = fgetc(f);
            fseek(f, (long)(at % clen), SEEK_SET);
            fputc(ch ^ (int)((at & 0xfe) | 1), f);
            fclose(f);
        }
        make_ready(size);
        hush_err e = hush_attachment_save(g_c, g_mid, g_out);
        if (change) {
            if (e != HUSH_ERR_BAD_MESSAGE || file_size(g_out) != (size_t)-1)
                abort();
        } else {
            uint8_t *back = malloc(size ? size : 1);
            FILE *f = fopen(g_out, "rb");
            if (e || !back || !f || fread(back, 1, size, f) != size || fgetc(f) != EOF || (size && memcmp(back, data, size)))
                abort();
            fclose(f);
            free(back);
        }
    } else {
        if (size < 3)
            return 0;
        uint64_t want = ((uint64_t)data[0] << 16 | (uint64_t)data[1] << 8 | data[2]) % (MAX_FILE + 1);
        data += 3, size -= 3;
        write_file(enc, data, size);
        make_ready(want);
        hush_err e = hush_attachment_save(g_c, g_mid, g_out);
        if (e == HUSH_OK && file_size(g_out) != want)
            abort();
        if (e != HUSH_OK && file_size(g_out) != (size_t)-1)
            abort();
    }
    return 0;
}
