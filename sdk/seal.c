/*
 * seal.c - sealing rows at rest. Every secret column holds
 *     0x02 || nonce (24) || XChaCha20-Poly1305(ciphertext || tag (16))
 * under a key derived from the app's database key, with associated data
 *     "hush2|" <this database's random id, 32 hex digits> "|" <the table and the row's identity>
 * so a sealed value copied into another row, another table or another database (even one under
 * the same key) fails to open, and a value of one format version is never read as another.
 * Databases written before the id existed hold version 0x01 values (the same without the id):
 * they are sealed again, all at once, the first time such a database is opened (hsdk_reseal_v1).
 *
 * Also here: the keyed row tags and the sealed digest that let the client tell a row removed or
 * rolled back behind its back (the SQL functions hush_row_tag and hush_digest_step, which the
 * schema's triggers call on every write of a tracked table).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "internal.h"

#define SEAL_V1 0x01
#define SEAL_V2 0x02
#define NPUB crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define DIGEST_AD "meta|rowdigest"

void hsdk_ad(char *buf, size_t cap, const char *table, const char *name, size_t name_len,
              int64_t n1, int64_t n2)
{
    /* Length-prefixed name: "a|1" and "a|" + "1" can never collide. */
    int n = snprintf(buf, cap, "hush1|%s|%zu:%.*s|%lld|%lld", table, name_len, (int)name_len,
                     name ? name : "", (long long)n1, (long long)n2);
    /* Every caller's buffer fits the longest names the SDK accepts. Were one ever too small, two
     * rows could share a truncated associated data and be swapped undetected: stop instead. */
    if (n < 0 || (size_t)n >= cap)
        abort();
}

/* The associated data of a version-2 value: the database id and format in front of the row's
 * own. *full is buf when it fits, else allocated (caller frees when != buf); NULL when out of memory. */
static char *full_ad(const hush_client *c, const char *ad, char *buf, size_t cap, size_t *len)
{
    size_t alen = strlen(ad);
    size_t need = 6 + 2 * HUSH_DB_ID_BYTES + 1 + alen + 1;
    char *p = need <= cap ? buf : malloc(need);
    if (!p)
        return NULL;
    memcpy(p, "hush2|", 6);
    sodium_bin2hex(p + 6, 2 * HUSH_DB_ID_BYTES + 1, c->db_id, HUSH_DB_ID_BYTES);
    p[6 + 2 * HUSH_DB_ID_BYTES] = '|';
    memcpy(p + 7 + 2 * HUSH_DB_ID_BYTES, ad, alen + 1);
    *len = need - 1;
    return p;
}

hush_err hsdk_seal(const hush_client *c, const char *ad, const uint8_t *pt, size_t len,
                    uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    char abuf[512];
    size_t alen = 0;
    char *a = full_ad(c, ad, abuf, sizeof abuf, &alen);
    uint8_t *buf = a ? malloc(HUSH_SEAL_OVERHEAD + len) : NULL;
    if (!buf) {
        if (a != abuf)
            free(a);
        return HUSH_ERR_NOMEM;
    }
    buf[0] = SEAL_V2;
    randombytes_buf(buf + 1, NPUB);
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(buf + 1 + NPUB, &clen, pt, len, (const uint8_t *)a, alen, NULL,
                                               buf + 1, c->seal_key);
    if (a != abuf)
        free(a);
    *out = buf;
    *out_len = 1 + NPUB + (size_t)clen;
    return HUSH_OK;
}

static hush_err open_with(const hush_client *c, int version, const char *a, size_t alen, const uint8_t *ct,
                          size_t len, uint8_t **out, size_t *out_len)
{
    if (!ct || len < HUSH_SEAL_OVERHEAD || ct[0] != version)
        return HUSH_ERR_DB_KEY;
    size_t n = len - HUSH_SEAL_OVERHEAD;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return HUSH_ERR_NOMEM;
    unsigned long long plen = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(buf, &plen, NULL, ct + 1 + NPUB, len - 1 - NPUB,
                                                   (const uint8_t *)a, alen, ct + 1, c->seal_key) != 0) {
        free(buf);
        return HUSH_ERR_DB_KEY;
    }
    *out = buf;
    *out_len = (size_t)plen;
    return HUSH_OK;
}

hush_err hsdk_open(const hush_client *c, const char *ad, const uint8_t *ct, size_t len,
                    uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    char abuf[512];
    size_t alen = 0;
    char *a = full_ad(c, ad, abuf, sizeof abuf, &alen);
    if (!a)
        return HUSH_ERR_NOMEM;
    hush_err e = open_with(c, SEAL_V2, a, alen, ct, len, out, out_len);
    if (a != abuf)
        free(a);
    return e;
}

int hsdk_seal_version(const uint8_t *ct, size_t len)
{
    return ct && len ? ct[0] : 0;
}

hush_err hsdk_reseal_v1(const hush_client *c, const char *ad, const uint8_t *ct, size_t len, uint8_t **out,
                        size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (ct && len && ct[0] == SEAL_V2)
        return HUSH_OK; /* already current (a migration interrupted half-way never commits, but be exact) */
    uint8_t *pt = NULL;
    size_t ptl = 0;
    hush_err e = open_with(c, SEAL_V1, ad, strlen(ad), ct, len, &pt, &ptl);
    if (e)
        return e;
    e = hsdk_seal(c, ad, pt, ptl, out, out_len);
    sodium_memzero(pt, ptl);
    free(pt);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* row tags and the sealed digest */

/* hush_row_tag(table, v1, v2, ...): a keyed BLAKE2b-256 over the arguments, each as its type,
 * length and bytes, so no two different rows share an encoding. A long BLOB (a sealed value: a
 * session record is kilobytes, and every write tags the old and the new row) contributes only its
 * first 25 bytes (version and the nonce, fresh at every write) and its last 16 (the AEAD tag, which
 * commits to the rest under the key): that identifies the write, and any other change to the
 * bytes in between fails to open when the value is used. */
#define TAG_HEAD 25
#define TAG_TAIL 16
static void sql_row_tag(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    const hush_client *c = sqlite3_user_data(ctx);
    crypto_generichash_state st;
    crypto_generichash_init(&st, c->tag_key, sizeof c->tag_key, HUSH_ROW_TAG_BYTES);
    for (int i = 0; i < argc; i++) {
        int type = sqlite3_value_type(argv[i]);
        uint8_t head[9];
        const uint8_t *p = NULL;
        int64_t iv = 0;
        size_t n = 0;
        switch (type) {
        case SQLITE_INTEGER:
            iv = sqlite3_value_int64(argv[i]);
            p = (const uint8_t *)&iv;
            n = sizeof iv;
            break;
        case SQLITE_TEXT:
            p = sqlite3_value_text(argv[i]);
            n = (size_t)sqlite3_value_bytes(argv[i]);
            break;
        case SQLITE_BLOB:
            p = sqlite3_value_blob(argv[i]);
            n = (size_t)sqlite3_value_bytes(argv[i]);
            break;
        case SQLITE_NULL:
            break;
        default: /* REAL: no tracked table holds one */
            sqlite3_result_error(ctx, "hush_row_tag: unexpected value type", -1);
            return;
        }
        head[0] = (uint8_t)type;
        uint64_t n64 = n;
        for (int k = 0; k < 8; k++)
            head[1 + k] = (uint8_t)(n64 >> (8 * k));
        crypto_generichash_update(&st, head, sizeof head);
        if (type == SQLITE_BLOB && n > TAG_HEAD + TAG_TAIL) {
            crypto_generichash_update(&st, p, TAG_HEAD);
            crypto_generichash_update(&st, p + n - TAG_TAIL, TAG_TAIL);
        } else if (n) {
            crypto_generichash_update(&st, p, n);
        }
    }
    uint8_t tag[HUSH_ROW_TAG_BYTES];
    crypto_generichash_final(&st, tag, sizeof tag);
    sqlite3_result_blob(ctx, tag, sizeof tag, SQLITE_TRANSIENT);
}

/* hush_digest_step(sealed_digest, tag...): opens the digest, XORs every tag into it, seals it
 * again. A digest that does not open fails the statement (and so the write that fired it). */
static void sql_digest_step(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    const hush_client *c = sqlite3_user_data(ctx);
    if (argc < 1) {
        sqlite3_result_error(ctx, "hush_digest_step: no digest", -1);
        return;
    }
    uint8_t *d = NULL;
    size_t dlen = 0;
    if (hsdk_open(c, DIGEST_AD, sqlite3_value_blob(argv[0]), (size_t)sqlite3_value_bytes(argv[0]), &d, &dlen) ||
        dlen != HUSH_ROW_TAG_BYTES) {
        free(d);
        sqlite3_result_error(ctx, "the database's row digest does not open", -1);
        return;
    }
    for (int i = 1; i < argc; i++) {
        if (sqlite3_value_bytes(argv[i]) != HUSH_ROW_TAG_BYTES) {
            free(d);
            sqlite3_result_error(ctx, "hush_digest_step: bad tag", -1);
            return;
        }
        const uint8_t *t = sqlite3_value_blob(argv[i]);
        for (size_t k = 0; k < HUSH_ROW_TAG_BYTES; k++)
            d[k] ^= t[k];
    }
    uint8_t *s = NULL;
    size_t slen = 0;
    hush_err e = hsdk_seal(c, DIGEST_AD, d, dlen, &s, &slen);
    free(d);
    if (e) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    sqlite3_result_blob(ctx, s, (int)slen, free);
}

int hsdk_seal_functions_install(sqlite3 *db, void *ctx)
{
    hush_client *c = ctx;
    /* Called from the schema's own triggers, so marked innocuous (they read nothing but their
     * arguments); a trigger or view the client did not create is refused at open
     * (hsdk_schema_check), so no planted trigger can call them. */
    crypto_generichash(c->tag_key, sizeof c->tag_key, (const uint8_t *)"hush row tags v1", 16, c->seal_key,
                       sizeof c->seal_key);
    if (sqlite3_create_function(db, "hush_row_tag", -1, SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, c,
                                sql_row_tag, NULL, NULL) != SQLITE_OK ||
        sqlite3_create_function(db, "hush_digest_step", -1, SQLITE_UTF8 | SQLITE_INNOCUOUS, c, sql_digest_step,
                                NULL, NULL) != SQLITE_OK)
        return -1;
    /* the widest tag (local_device's row) takes ten arguments; hstore's hardening allows eight */
    sqlite3_limit(db, SQLITE_LIMIT_FUNCTION_ARG, 16);
    /* INSERT OR REPLACE removes the old row without its delete trigger unless this is on */
    if (sqlite3_exec(db, "PRAGMA recursive_triggers = ON", NULL, NULL, NULL) != SQLITE_OK)
        return -1;
    return 0;
}

hush_err hsdk_digest_seal(const hush_client *c, const uint8_t d[HUSH_ROW_TAG_BYTES], uint8_t **out, size_t *len)
{
    return hsdk_seal(c, DIGEST_AD, d, HUSH_ROW_TAG_BYTES, out, len);
}

hush_err hsdk_digest_open(const hush_client *c, const uint8_t *sealed, size_t len, uint8_t d[HUSH_ROW_TAG_BYTES])
{
    uint8_t *pt = NULL;
    size_t n = 0;
    hush_err e = hsdk_open(c, DIGEST_AD, sealed, len, &pt, &n);
    if (!e && n != HUSH_ROW_TAG_BYTES)
        e = HUSH_ERR_DB_KEY;
    if (!e)
        memcpy(d, pt, HUSH_ROW_TAG_BYTES);
    free(pt);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* the one-time upgrade of version-1 values */

hush_err hsdk_reseal_column(hush_client *c, const char *select_sql, const char *update_sql, int nkeys,
                            hsdk_ad_fn ad_fn, const char *label)
{
    sqlite3_stmt *sel, *upd;
    hstore_err se = hstore_prepare(c->db, select_sql, &sel);
    if (!se)
        se = hstore_prepare(c->db, update_sql, &upd);
    if (se)
        return hsdk_from_store(se);
    hush_err e = HUSH_OK;
    int row = 0;
    while (!e && (se = hstore_step(c->db, sel, &row)) == HSTORE_OK && row) {
        int last = sqlite3_column_count(sel) - 1;
        const uint8_t *blob = sqlite3_column_blob(sel, last);
        size_t len = (size_t)sqlite3_column_bytes(sel, last);
        if (!blob || !len)
            continue; /* an empty optional column holds nothing sealed */
        /* the keys first, as stored: reading a BLOB key as text for the associated data would
         * turn the value into TEXT, which no longer matches the row */
        for (int k = 0; k < nkeys; k++)
            sqlite3_bind_value(upd, 2 + k, sqlite3_column_value(sel, k));
        char abuf[1024];
        ad_fn(abuf, sizeof abuf, sel, label);
        uint8_t *ct = NULL;
        size_t clen = 0;
        e = hsdk_reseal_v1(c, abuf, blob, len, &ct, &clen);
        if (e || !ct) {
            sqlite3_clear_bindings(upd);
            continue;
        }
        sqlite3_bind_blob(upd, 1, ct, (int)clen, free);
        e = hsdk_from_store(hstore_run(c->db, upd));
        if (!e && hstore_changes(c->db) != 1)
            e = HUSH_ERR_INTERNAL; /* the row was not found again: never leave a value behind */
    }
    sqlite3_reset(sel);
    if (!e && se)
        e = hsdk_from_store(se);
    return e;
}
