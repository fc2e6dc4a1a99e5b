/*
 * core.c - what every other SDK file stands on and that depends on no other SDK file: errors and
 * their mapping, buffers handed to the app (wiped when freed), the client lock, transactions,
 * time, name validation, and the network thread as a plug-in (wake / stop through the hooks the
 * network code installs when it starts, so nothing below it calls it by name).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "hush_wire.h"
#include "internal.h"

#define HUSH_VERSION_STRING "0.1.0"

/* ---------------------------------------------------------------------------------------- */
/* errors and small helpers */

const char *hush_version(void) { return HUSH_VERSION_STRING; }

const char *hush_strerror(hush_err err)
{
    switch (err) {
    case HUSH_OK: return "success";
    case HUSH_ERR_INVALID_ARG: return "invalid argument";
    case HUSH_ERR_NOMEM: return "out of memory";
    case HUSH_ERR_STORAGE: return "local database error (nothing was changed)";
    case HUSH_ERR_DB_CORRUPT: return "database file is corrupt, truncated or not a database";
    case HUSH_ERR_DB_TOO_NEW: return "database was written by a newer libhush";
    case HUSH_ERR_DB_KEY: return "wrong database key (or a sealed row failed authentication)";
    case HUSH_ERR_SELFTEST: return "crypto provider self-test failed";
    case HUSH_ERR_NO_DEVICE: return "no local device: create one first";
    case HUSH_ERR_DEVICE_EXISTS: return "a device already exists in this database";
    case HUSH_ERR_BAD_BUNDLE: return "malformed key bundle";
    case HUSH_ERR_BAD_SIGNATURE: return "key bundle signature does not verify";
    case HUSH_ERR_NO_SESSION: return "no session with that device";
    case HUSH_ERR_BAD_MESSAGE: return "malformed, unauthentic or out-of-window message";
    case HUSH_ERR_DUPLICATE: return "duplicate message";
    case HUSH_ERR_STALE_PREKEY: return "message uses a prekey this device no longer has";
    case HUSH_ERR_IDENTITY_CHANGED: return "peer identity key changed";
    case HUSH_ERR_NOT_FOUND: return "not found";
    case HUSH_ERR_TOO_BIG: return "input exceeds size limit";
    case HUSH_ERR_SAFETY_MISMATCH: return "safety number mismatch";
    case HUSH_ERR_NO_GROUP_SESSION: return "no sender key for that group member";
    case HUSH_ERR_INTERNAL: return "internal error";
    case HUSH_ERR_NETWORK: return "relay unreachable or connection lost";
    case HUSH_ERR_AUTH_FAILED: return "relay refused this device's login";
    case HUSH_ERR_USERNAME_TAKEN: return "username already taken on this relay";
    case HUSH_ERR_REGISTRATION_REFUSED: return "registration refused (closed, or invite missing or invalid)";
    case HUSH_ERR_UNKNOWN_USER: return "no such user on the relay";
    case HUSH_ERR_TIMEOUT: return "timed out";
    case HUSH_ERR_NOT_RUNNING: return "network not started";
    case HUSH_ERR_RELAY: return "unexpected error from the relay";
    case HUSH_ERR_SESSION_REPLACED: return "another connection logged in as this device (is another copy running?)";
    case HUSH_ERR_TOO_MANY_DEVICES: return "the account has the most devices the relay allows (remove one first)";
    case HUSH_ERR_LINK_FAILED: return "linking failed: the link code expired or was used (start again with a new code)";
    case HUSH_ERR_DEVICE_REMOVED: return "this device was removed from its account";
    case HUSH_ERR_DB_TAMPERED:
        return "the database was changed outside libhush (rows removed or rolled back): refusing to use it";
    case HUSH_ERR_PUSH_GONE:
        return "the push service no longer knows this device's push endpoint (register a new one)";
    case HUSH_ERR_NOT_ALLOWED: return "not allowed: not a member of that room, or not one of its admins";
    case HUSH_ERR_GROUP_CONFLICT:
        return "a room change that does not follow the room's current version was rejected";
    }
    return "unknown error";
}

hush_err hsdk_from_store(hstore_err e)
{
    switch (e) {
    case HSTORE_OK: return HUSH_OK;
    case HSTORE_ERR_NOMEM: return HUSH_ERR_NOMEM;
    case HSTORE_ERR_NOTADB:
    case HSTORE_ERR_CORRUPT: return HUSH_ERR_DB_CORRUPT;
    case HSTORE_ERR_TOO_NEW: return HUSH_ERR_DB_TOO_NEW;
    case HSTORE_ERR_MISUSE: return HUSH_ERR_INTERNAL;
    default: return HUSH_ERR_STORAGE;
    }
}

hush_err hsdk_from_signal(int rc)
{
    switch (rc) {
    case SG_SUCCESS: return HUSH_OK;
    case SG_ERR_NOMEM: return HUSH_ERR_NOMEM;
    case SG_ERR_DUPLICATE_MESSAGE: return HUSH_ERR_DUPLICATE;
    case SG_ERR_INVALID_KEY_ID: return HUSH_ERR_STALE_PREKEY;
    case SG_ERR_NO_SESSION: return HUSH_ERR_NO_SESSION;
    case SG_ERR_UNTRUSTED_IDENTITY: return HUSH_ERR_IDENTITY_CHANGED;
    case SG_ERR_INVAL:
    case SG_ERR_INVALID_KEY:
    case SG_ERR_INVALID_MAC:
    case SG_ERR_INVALID_MESSAGE:
    case SG_ERR_INVALID_VERSION:
    case SG_ERR_LEGACY_MESSAGE:
    case SG_ERR_STALE_KEY_EXCHANGE:
    case SG_ERR_VRF_SIG_VERIF_FAILED:
    case SG_ERR_INVALID_PROTO_BUF: return HUSH_ERR_BAD_MESSAGE;
    default: return HUSH_ERR_INTERNAL;
    }
}

void *hsdk_alloc(size_t n)
{
    if (n > SIZE_MAX - 16)
        return NULL;
    uint8_t *p = malloc(n + 16);
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof n);
    return p + 16;
}

void hush_free(void *p)
{
    if (!p)
        return;
    uint8_t *base = (uint8_t *)p - 16;
    size_t n;
    memcpy(&n, base, sizeof n);
    sodium_memzero(p, n);
    free(base);
}

static void *wipe_alloc(void *ud, size_t n)
{
    (void)ud;
    return hsdk_alloc(n);
}

static void wipe_free(void *ud, void *p)
{
    (void)ud;
    hush_free(p);
}

/* For protobuf-c messages that hold plaintext (a decrypted Content): every block it allocates is
 * wiped when freed. */
ProtobufCAllocator hsdk_wiping_allocator = { wipe_alloc, wipe_free, NULL };

uint8_t *hsdk_grow_plaintext(uint8_t *pt, size_t len)
{
    uint8_t *n = malloc(len + 1);
    if (n) {
        if (len)
            memcpy(n, pt, len);
        n[len] = '\0';
    }
    if (pt) {
        sodium_memzero(pt, len);
        free(pt);
    }
    return n;
}

uint64_t hsdk_now_ms(void) { return hwire_now_ms(); }

int hsdk_valid_username(const char *s)
{
    return hwire_valid_username(s);
}

/* A room's id as the API names it: 32 lowercase hex digits. */
int hsdk_room_is_id(const char *s)
{
    if (!s || strlen(s) != HUSH_ROOM_ID_LEN)
        return 0;
    for (size_t i = 0; i < HUSH_ROOM_ID_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* Outbox rows of a room are addressed "#" + the id in unpadded URL-safe base64 (23 characters:
 * the outbox's peer column holds at most a username's length). */
void hsdk_room_outbox_peer(const uint8_t id[16], char out[HUSH_USERNAME_MAX + 1])
{
    out[0] = '#';
    sodium_bin2base64(out + 1, HUSH_USERNAME_MAX, id, 16, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

int hsdk_room_outbox_id(const char *peer, uint8_t id[16])
{
    size_t n = 0;
    return peer && peer[0] == '#' && strlen(peer) == 23 &&
           sodium_base642bin(id, 16, peer + 1, 22, NULL, &n, NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0 &&
           n == 16;
}

int hsdk_valid_group_id(const char *s)
{
    if (!s)
        return 0;
    size_t n = strnlen(s, HUSH_GROUP_ID_MAX + 1);
    if (n < 1 || n > HUSH_GROUP_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7e)
            return 0;
    return 1;
}

int hsdk_valid_device(uint32_t d) { return d != 0 && d <= INT32_MAX; }

void hsdk_lock(hush_client *c) { pthread_mutex_lock(&c->lock); }
void hsdk_unlock(hush_client *c) { pthread_mutex_unlock(&c->lock); }

hush_err hsdk_begin(hush_client *c)
{
    c->store_err = HUSH_OK;
    c->untrusted.set = 0;
    c->new_session = 0;
    return hsdk_from_store(hstore_savepoint(c->db));
}

hush_err hsdk_commit(hush_client *c)
{
    hstore_err e = hstore_release(c->db);
    if (e) {
        hstore_rollback(c->db);
        return hsdk_from_store(e);
    }
    return HUSH_OK;
}

void hsdk_rollback(hush_client *c) { hstore_rollback(c->db); }

hush_err hsdk_end(hush_client *c, hush_err e)
{
    if (e) {
        hsdk_rollback(c);
        return e;
    }
    return hsdk_commit(c);
}

hush_err hsdk_query_int(hush_client *c, const char *sql, const int64_t *arg, int64_t *out)
{
    *out = 0;
    sqlite3_stmt *st;
    int row = 0;
    hstore_err se = hstore_prepare(c->db, sql, &st);
    if (se)
        return hsdk_from_store(se);
    if (arg)
        sqlite3_bind_int64(st, 1, *arg);
    se = hstore_step(c->db, st, &row);
    if (!se && row) {
        *out = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    return hsdk_from_store(se);
}

/* ---------------------------------------------------------------------------------------- */
/* the network thread, as a plug-in */

static const struct hsdk_net_hooks *net_hooks(hush_client *c)
{
    pthread_mutex_lock(&c->net_mu);
    const struct hsdk_net_hooks *h = c->net_hooks;
    pthread_mutex_unlock(&c->net_mu);
    return h;
}

void hsdk_net_wake(hush_client *c, int flags)
{
    const struct hsdk_net_hooks *h = net_hooks(c);
    if (h)
        h->wake(c, flags);
}

void hsdk_net_stop(hush_client *c)
{
    const struct hsdk_net_hooks *h = net_hooks(c);
    if (h)
        h->stop(c);
}
