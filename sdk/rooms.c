/*
 * rooms.c - rooms (groups over the network): each room's state as its last accepted change
 * (table rooms; the signed change sealed), which devices were handed this device's current sender
 * key for each room (table room_keys), the rules every change passes (signature, author, version,
 * the state it follows), and the public hush_group_* room functions. What sends a room's changes
 * and messages is the network code (net_rooms.c); what it needs from here is in internal.h.
 *
 * A change is a whole RoomState (not a delta), signed by its author's identity key, naming the
 * SHA-256 of the state it follows. A device applies it only when it comes from its author's own
 * pairwise session, the signature verifies, and either the room is new to it (it must be a member
 * and the author an admin of the new state) or the change is exactly the next version after the
 * state it holds and follows it (prev_hash), made by an admin of that state or by a member who
 * only takes itself out. Anything else (a replay, a gap, a fork, a non-admin) is rejected and the
 * room stays as it was.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <curve.h>
#include <ratchet.h>

#include "internal.h"

#define ROOM_SIG_PREFIX "hush-room-v1"
#define ROOM_KEY_MAX_AGE_MS (14ull * 24 * 3600 * 1000) /* a sender key is replaced after 14 days */

/* ---------------------------------------------------------------------------------------- */
/* checks */

static int room_id_parse(const char *hex, uint8_t id[16])
{
    size_t n = 0;
    return hsdk_room_is_id(hex) && sodium_hex2bin(id, 16, hex, HUSH_ROOM_ID_LEN, NULL, &n, NULL) == 0 && n == 16;
}

/* 1..HUSH_ROOM_NAME_MAX bytes of well-formed UTF-8 (no overlong forms, no surrogates), no control
 * characters: a name every binding and terminal can show. */
int hsdk_room_name_ok(const char *s, size_t len)
{
    if (!s || len < 1 || len > HUSH_ROOM_NAME_MAX)
        return 0;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        unsigned c = p[i];
        if (c < 0x20 || c == 0x7f)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
        if (!n || c > 0xf4 || i + n > len)
            return 0;
        uint32_t cp = c & (0x7f >> n);
        for (size_t k = 1; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff) ||
            (cp >= 0x80 && cp < 0xa0))
            return 0;
        i += n;
    }
    return 1;
}

static int in_list(char **v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v[i], name))
            return 1;
    return 0;
}

/* Every name valid and listed once. */
static int names_ok(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!hsdk_valid_username(v[i]))
            return 0;
        for (size_t k = 0; k < i; k++)
            if (!strcmp(v[i], v[k]))
                return 0;
    }
    return 1;
}

static int state_ok(const Hush__RoomState *s)
{
    if (s->room_id.len != 16 || !s->name || !hsdk_room_name_ok(s->name, strlen(s->name)) || s->version < 1)
        return 0;
    if ((s->version == 1) != (s->prev_hash.len == 0) || (s->version > 1 && s->prev_hash.len != 32))
        return 0;
    if (s->n_members < 1 || s->n_members > HUSH_ROOM_MAX_MEMBERS || !names_ok(s->members, s->n_members))
        return 0;
    if (s->n_admins < 1 || s->n_admins > s->n_members || !names_ok(s->admins, s->n_admins))
        return 0;
    for (size_t i = 0; i < s->n_admins; i++)
        if (!in_list(s->members, s->n_members, s->admins[i]))
            return 0;
    if (s->n_removed > HUSH_ROOM_MAX_MEMBERS || !names_ok(s->removed, s->n_removed))
        return 0;
    for (size_t i = 0; i < s->n_removed; i++)
        if (in_list(s->members, s->n_members, s->removed[i]))
            return 0;
    return hsdk_valid_username(s->author);
}

void hsdk_room_release(struct hsdk_room *r)
{
    if (r->st)
        hush__room_state__free_unpacked(r->st, &hsdk_wiping_allocator);
    if (r->ch)
        hush__room_change__free_unpacked(r->ch, &hsdk_wiping_allocator);
    memset(r, 0, sizeof *r);
}

hush_err hsdk_room_parse(const uint8_t *buf, size_t len, struct hsdk_room *r)
{
    memset(r, 0, sizeof *r);
    if (!buf || len == 0 || len > HSDK_ROOM_CHANGE_MAX)
        return HUSH_ERR_BAD_MESSAGE;
    r->ch = hush__room_change__unpack(&hsdk_wiping_allocator, len, buf);
    if (!r->ch || r->ch->signature.len != 64 || r->ch->state.len == 0)
        goto bad;
    r->st = hush__room_state__unpack(&hsdk_wiping_allocator, r->ch->state.len, r->ch->state.data);
    if (!r->st || !state_ok(r->st))
        goto bad;
    memcpy(r->id, r->st->room_id.data, 16);
    sodium_bin2hex(r->hex, sizeof r->hex, r->id, 16);
    crypto_hash_sha256(r->hash, r->ch->state.data, r->ch->state.len);
    return HUSH_OK;
bad:
    hsdk_room_release(r);
    return HUSH_ERR_BAD_MESSAGE;
}

/* ---------------------------------------------------------------------------------------- */
/* signatures: XEdDSA by the identity key (the one every device of a user shares) */

static hush_err signed_message(const Hush__RoomChange *ch, uint8_t **msg, size_t *len)
{
    *len = sizeof ROOM_SIG_PREFIX - 1 + ch->state.len;
    *msg = malloc(*len);
    if (!*msg)
        return HUSH_ERR_NOMEM;
    memcpy(*msg, ROOM_SIG_PREFIX, sizeof ROOM_SIG_PREFIX - 1);
    memcpy(*msg + sizeof ROOM_SIG_PREFIX - 1, ch->state.data, ch->state.len);
    return HUSH_OK;
}

static hush_err sign_change(hush_client *c, Hush__RoomChange *ch, uint8_t sig[64])
{
    ratchet_identity_key_pair *kp = NULL;
    uint8_t *msg = NULL;
    size_t len = 0;
    signal_buffer *sb = NULL;
    hush_err e = hsdk_local_identity(c, &kp);
    if (!e)
        e = signed_message(ch, &msg, &len);
    if (!e && (curve_calculate_signature(c->sg, &sb, ratchet_identity_key_pair_get_private(kp), msg, len) != 0 ||
               signal_buffer_len(sb) != 64))
        e = HUSH_ERR_INTERNAL;
    if (!e)
        memcpy(sig, signal_buffer_data(sb), 64);
    signal_buffer_free(sb);
    free(msg);
    SIGNAL_UNREF(kp);
    return e;
}

/* The author's identity key: ours for a change of our own user, else the one trusted for the
 * device the change came from. */
static hush_err verify_change(hush_client *c, const char *author, uint32_t dev, const Hush__RoomChange *ch)
{
    uint8_t key[33];
    hush_err e = HUSH_OK;
    if (!strcmp(author, c->username)) {
        ratchet_identity_key_pair *kp = NULL;
        signal_buffer *pub = NULL;
        e = hsdk_local_identity(c, &kp);
        if (!e && (ec_public_key_serialize(&pub, ratchet_identity_key_pair_get_public(kp)) != 0 ||
                   signal_buffer_len(pub) != 33))
            e = HUSH_ERR_INTERNAL;
        if (!e)
            memcpy(key, signal_buffer_data(pub), 33);
        signal_buffer_free(pub);
        SIGNAL_UNREF(kp);
    } else {
        int found = 0;
        e = hsdk_peer_identity(c, author, dev, key, &found);
        if (!e && !found)
            e = HUSH_ERR_BAD_MESSAGE;
    }
    if (e)
        return e;
    ec_public_key *pk = NULL;
    uint8_t *msg = NULL;
    size_t len = 0;
    if (curve_decode_point(&pk, key, sizeof key, c->sg) != 0)
        return HUSH_ERR_BAD_MESSAGE;
    e = signed_message(ch, &msg, &len);
    if (!e && curve_verify_signature(pk, msg, len, ch->signature.data, ch->signature.len) != 1)
        e = HUSH_ERR_BAD_MESSAGE;
    free(msg);
    SIGNAL_UNREF(pk);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* the tables */

static void room_ad(char *ad, size_t cap, const char *hex)
{
    hsdk_ad(ad, cap, "rooms", hex, HUSH_ROOM_ID_LEN, 0, 0);
}

hush_err hsdk_room_load(hush_client *c, const uint8_t id[16], struct hsdk_room *r, int *found)
{
    memset(r, 0, sizeof *r);
    *found = 0;
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "SELECT change, key_since FROM rooms WHERE id = ?1", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, id, 16, SQLITE_TRANSIENT);
    int row = 0;
    if ((se = hstore_step(c->db, st, &row)) || !row)
        return hsdk_from_store(se);
    char hex[33], ad[128];
    sodium_bin2hex(hex, sizeof hex, id, 16);
    room_ad(ad, sizeof ad, hex);
    uint8_t *pt = NULL;
    size_t len = 0;
    int64_t key_since = sqlite3_column_int64(st, 1);
    hush_err e = hsdk_open(c, ad, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), &pt, &len);
    sqlite3_reset(st);
    if (e)
        return e;
    e = hsdk_room_parse(pt, len, r);
    sodium_memzero(pt, len);
    free(pt);
    if (e == HUSH_ERR_BAD_MESSAGE || (!e && memcmp(r->id, id, 16) != 0)) {
        hsdk_room_release(r);
        return HUSH_ERR_DB_CORRUPT;
    }
    if (e)
        return e;
    r->member = in_list(r->st->members, r->st->n_members, c->username);
    r->key_since = key_since;
    *found = 1;
    return HUSH_OK;
}

static hush_err room_store(hush_client *c, const struct hsdk_room *r, const uint8_t *change, size_t len)
{
    char ad[128];
    room_ad(ad, sizeof ad, r->hex);
    uint8_t *ct = NULL;
    size_t clen = 0;
    hush_err e = hsdk_seal(c, ad, change, len, &ct, &clen);
    if (e)
        return e;
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT INTO rooms (id, version, member, change, updated_at) "
                                          "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO UPDATE SET "
                                          "version = excluded.version, member = excluded.member, "
                                          "change = excluded.change, updated_at = excluded.updated_at", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, r->id, 16, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, (int64_t)r->st->version);
        sqlite3_bind_int(st, 3, in_list(r->st->members, r->st->n_members, c->username));
        sqlite3_bind_blob(st, 4, ct, (int)clen, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 5, (int64_t)hsdk_now_ms());
        se = hstore_run(c->db, st);
    }
    free(ct);
    return hsdk_from_store(se);
}

static hush_err run_with_id(hush_client *c, const char *sql, const uint8_t id[16])
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, sql, &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, id, 16, SQLITE_TRANSIENT);
    return hsdk_from_store(hstore_run(c->db, st));
}

/* This device's sender key for the room is forgotten, and with it the record of who has it: the
 * next message makes a new one and hands it to the members there are then. */
static hush_err rotate_key(hush_client *c, const struct hsdk_room *r)
{
    hush_err e = hsdk_sender_key_forget(c, r->hex, c->username, c->device_id);
    if (!e)
        e = run_with_id(c, "DELETE FROM room_keys WHERE room = ?1", r->id);
    if (!e)
        e = run_with_id(c, "UPDATE rooms SET key_since = 0 WHERE id = ?1", r->id);
    return e;
}

hush_err hsdk_room_key_due(hush_client *c, struct hsdk_room *r, uint32_t *key_id, int *exists)
{
    hush_err e = hsdk_group_key_id(c, r->hex, key_id, exists);
    if (e || !*exists)
        return e;
    uint64_t now = hsdk_now_ms();
    int due = r->key_since <= 0 || now - (uint64_t)r->key_since > ROOM_KEY_MAX_AGE_MS;
    /* a device that was handed the key and is no longer one of a member's devices (removed, or
     * its user is no longer in the room): the key must not outlive its departure */
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "SELECT name, device_id FROM room_keys WHERE room = ?1", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, r->id, 16, SQLITE_TRANSIENT);
    int row = 0;
    while (!due && (se = hstore_step(c->db, st, &row)) == HSTORE_OK && row) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        uint32_t dev = (uint32_t)sqlite3_column_int64(st, 1);
        if (!name || !in_list(r->st->members, r->st->n_members, name)) {
            due = 1;
            break;
        }
        uint32_t devs[64];
        int nd = hsdk_peers_list(c, name, devs, 64);
        int listed = nd == 0; /* not fetched (yet): nothing to compare with */
        for (int i = 0; i < nd && !listed; i++)
            listed = devs[i] == dev;
        due = !listed;
    }
    sqlite3_reset(st);
    if (se)
        return hsdk_from_store(se);
    if (due) {
        if ((e = rotate_key(c, r)))
            return e;
        *exists = 0;
        *key_id = 0;
        r->key_since = 0;
    }
    return HUSH_OK;
}

hush_err hsdk_room_key_made(hush_client *c, struct hsdk_room *r)
{
    r->key_since = (int64_t)hsdk_now_ms();
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "UPDATE rooms SET key_since = ?2 WHERE id = ?1", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, r->id, 16, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, r->key_since);
    return hsdk_from_store(hstore_run(c->db, st));
}

int hsdk_room_key_has(hush_client *c, const struct hsdk_room *r, const char *name, uint32_t dev, uint32_t key_id)
{
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "SELECT 1 FROM room_keys WHERE room = ?1 AND name = ?2 AND device_id = ?3 AND key_id = ?4",
                       &st))
        return 0;
    sqlite3_bind_blob(st, 1, r->id, 16, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, dev);
    sqlite3_bind_int64(st, 4, key_id);
    int row = 0;
    hstore_err se = hstore_step(c->db, st, &row);
    sqlite3_reset(st);
    return !se && row;
}

hush_err hsdk_room_key_put(hush_client *c, const struct hsdk_room *r, const char *name, uint32_t dev, uint32_t key_id,
                           const uint8_t mid[16])
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT OR REPLACE INTO room_keys (room, name, device_id, key_id, message_id) "
                                          "VALUES (?1, ?2, ?3, ?4, ?5)", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, r->id, 16, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, dev);
    sqlite3_bind_int64(st, 4, key_id);
    sqlite3_bind_blob(st, 5, mid, 16, SQLITE_TRANSIENT);
    return hsdk_from_store(hstore_run(c->db, st));
}

hush_err hsdk_room_key_forget_device(hush_client *c, const char *group, const char *name, uint32_t dev)
{
    uint8_t id[16];
    if (!room_id_parse(group, id))
        return HUSH_ERR_INVALID_ARG;
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "DELETE FROM room_keys WHERE room = ?1 AND name = ?2 AND device_id = ?3", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, id, 16, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, dev);
    return hsdk_from_store(hstore_run(c->db, st));
}

int hsdk_room_wants_receipts(hush_client *c, const char *group)
{
    uint8_t id[16];
    struct hsdk_room r;
    int found = 0;
    if (!room_id_parse(group, id) || hsdk_room_load(c, id, &r, &found) != HUSH_OK || !found)
        return 0;
    int small = r.st->n_members <= HSDK_ROOM_RECEIPTS_MAX;
    hsdk_room_release(&r);
    return small;
}

hush_err hsdk_room_receipt(hush_client *c, const char *group, const char *member, int state, const uint8_t mid[16],
                           int *moved)
{
    uint8_t id[16];
    struct hsdk_room r;
    int found = 0;
    *moved = 0;
    if (!room_id_parse(group, id))
        return HUSH_OK;
    hush_err e = hsdk_room_load(c, id, &r, &found);
    if (e || !found)
        return e;
    if (!in_list(r.st->members, r.st->n_members, member) || !strcmp(member, c->username)) {
        hsdk_room_release(&r); /* only a member's receipt counts */
        return HUSH_OK;
    }
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT INTO room_receipts (message_id, member, state) VALUES (?1, ?2, ?3) "
                                          "ON CONFLICT DO UPDATE SET state = max(state, excluded.state)", &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, member, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 3, state);
        se = hstore_run(c->db, st);
    }
    /* the message is as far as its least advanced member (one without a receipt: sent) */
    int low = 3;
    for (size_t i = 0; !se && i < r.st->n_members && low > HUSH_MSG_SENT; i++) {
        if (!strcmp(r.st->members[i], c->username))
            continue;
        int row = 0, s = HUSH_MSG_SENT;
        if ((se = hstore_prepare(c->db, "SELECT state FROM room_receipts WHERE message_id = ?1 AND member = ?2", &st)))
            break;
        sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, r.st->members[i], -1, SQLITE_TRANSIENT);
        if (!(se = hstore_step(c->db, st, &row)) && row) {
            s = sqlite3_column_int(st, 0);
            sqlite3_reset(st);
        }
        if (s < low)
            low = s;
    }
    hsdk_room_release(&r);
    if (se)
        return hsdk_from_store(se);
    if (low <= HUSH_MSG_SENT)
        return HUSH_OK;
    e = hsdk_set_message_state(c, mid, low); /* forward only */
    if (!e && hstore_changes(c->db) > 0)
        *moved = low;
    return e;
}

hush_err hsdk_room_keys_forget_message(hush_client *c, const uint8_t mid[16])
{
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "DELETE FROM room_keys WHERE message_id = ?1", &st);
    if (se)
        return hsdk_from_store(se);
    sqlite3_bind_blob(st, 1, mid, 16, SQLITE_TRANSIENT);
    return hsdk_from_store(hstore_run(c->db, st));
}

/* ---------------------------------------------------------------------------------------- */
/* applying a change */

/* What a change did, in words, for the history and the app: "ann added bob, cat". */
static void describe(const Hush__RoomState *prev, const Hush__RoomState *next, const char *self, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
#define PUT(...)                                                              \
    do {                                                                      \
        if (n < cap) {                                                        \
            int _k = snprintf(out + n, cap - n, __VA_ARGS__);                 \
            n += _k > 0 ? (size_t)_k : 0;                                     \
        }                                                                     \
    } while (0)
    const char *who = next->author;
    if (!prev) {
        if (next->version == 1) {
            PUT("%s created the room \"%s\" with", who, next->name);
            int first = 1;
            for (size_t i = 0; i < next->n_members; i++)
                if (strcmp(next->members[i], who) != 0) {
                    PUT("%s %s", first ? "" : ",", next->members[i]);
                    first = 0;
                }
            if (first)
                PUT(" nobody else");
        } else {
            PUT("%s added %s to the room \"%s\"", who, self, next->name);
        }
        goto end;
    }
    const char *sep = "";
    int left = next->n_removed == 1 && !strcmp(next->removed[0], who);
    if (left) {
        PUT("%s left", who);
        sep = "; ";
    }
    int any = 0;
    for (size_t i = 0; i < next->n_members; i++)
        if (!in_list(prev->members, prev->n_members, next->members[i])) {
            PUT("%s%s", any ? ", " : (n ? "; " : ""), any ? "" : who);
            if (!any)
                PUT(" added ");
            PUT("%s", next->members[i]);
            any = 1;
            sep = "; ";
        }
    any = 0;
    for (size_t i = 0; i < next->n_removed && !left; i++) {
        PUT("%s%s%s", any ? ", " : sep, any ? "" : who, any ? "" : " removed ");
        PUT("%s", next->removed[i]);
        any = 1;
        sep = "; ";
    }
    if (strcmp(prev->name, next->name) != 0) {
        PUT("%s%s renamed the room to \"%s\"", sep, who, next->name);
        sep = "; ";
    }
    for (size_t i = 0; i < next->n_admins; i++)
        if (!in_list(prev->admins, prev->n_admins, next->admins[i])) {
            PUT("%s%s is now an admin", sep, next->admins[i]);
            sep = "; ";
        }
    if (!n)
        PUT("%s changed the room", who);
end:
    if (n >= cap && cap > 4)
        memcpy(out + cap - 4, "...", 4); /* cut short: still a string */
#undef PUT
}

/* A member taking itself out, and nothing else: the one change a non-admin may make. (The last
 * admin leaving names the first remaining member admin.) */
static int is_leave(const Hush__RoomState *prev, const Hush__RoomState *next)
{
    const char *who = next->author;
    if (strcmp(prev->name, next->name) != 0 || next->n_removed != 1 || strcmp(next->removed[0], who) != 0 ||
        next->n_members + 1 != prev->n_members)
        return 0;
    size_t k = 0;
    for (size_t i = 0; i < prev->n_members; i++) {
        if (!strcmp(prev->members[i], who))
            continue;
        if (k >= next->n_members || strcmp(prev->members[i], next->members[k]) != 0)
            return 0;
        k++;
    }
    size_t nadm = 0;
    for (size_t i = 0; i < prev->n_admins; i++)
        if (strcmp(prev->admins[i], who) != 0) {
            if (!in_list(next->admins, next->n_admins, prev->admins[i]))
                return 0;
            nadm++;
        }
    if (nadm)
        return next->n_admins == nadm;
    return next->n_admins == 1 && !strcmp(next->admins[0], next->members[0]);
}

/* The checks and the write, shared by changes received and changes made here. */
static hush_err apply(hush_client *c, const char *from, uint32_t dev, const uint8_t *buf, size_t len,
                      struct hsdk_room_event *ev)
{
    struct hsdk_room nx, cur;
    int have = 0;
    hush_err e = hsdk_room_parse(buf, len, &nx);
    if (e)
        return e;
    memset(&cur, 0, sizeof cur);
    if (strcmp(nx.st->author, from) != 0) {
        e = HUSH_ERR_NOT_ALLOWED; /* a change comes from its author only */
        goto out;
    }
    if ((e = verify_change(c, from, dev, nx.ch)))
        goto out;
    if ((e = hsdk_room_load(c, nx.id, &cur, &have)))
        goto out;
    int member_next = in_list(nx.st->members, nx.st->n_members, c->username);
    int author_admin = in_list(nx.st->admins, nx.st->n_admins, from);
    if (have && !memcmp(cur.hash, nx.hash, 32)) {
        e = HUSH_ERR_DUPLICATE;
        goto out;
    }
    if (!have || (!cur.member && member_next)) {
        /* new to this device (or it was out of the room and is let in again): it must be in it,
         * from an admin, and not older than what it held */
        if (!member_next || !author_admin || (have && nx.st->version <= cur.st->version)) {
            e = have ? HUSH_ERR_GROUP_CONFLICT : HUSH_ERR_NOT_ALLOWED;
            goto out;
        }
    } else {
        if (nx.st->version != cur.st->version + 1 || memcmp(nx.st->prev_hash.data, cur.hash, 32) != 0) {
            e = HUSH_ERR_GROUP_CONFLICT; /* replayed, missed one, or forked */
            goto out;
        }
        if (!in_list(cur.st->admins, cur.st->n_admins, from) && !is_leave(cur.st, nx.st)) {
            e = HUSH_ERR_NOT_ALLOWED;
            goto out;
        }
        /* everyone the change takes out is told: they must have been members */
        for (size_t i = 0; i < nx.st->n_removed; i++)
            if (!in_list(cur.st->members, cur.st->n_members, nx.st->removed[i])) {
                e = HUSH_ERR_BAD_MESSAGE;
                goto out;
            }
        for (size_t i = 0; i < cur.st->n_members; i++)
            if (!in_list(nx.st->members, nx.st->n_members, cur.st->members[i]) &&
                !in_list(nx.st->removed, nx.st->n_removed, cur.st->members[i])) {
                e = HUSH_ERR_BAD_MESSAGE; /* dropped without being named */
                goto out;
            }
    }
    if ((e = room_store(c, &nx, buf, len)))
        goto out;
    /* who sees our presence, and whose we follow, may have changed with the members */
    hsdk_net_wake(c, NET_WAKE_PRESENCE);
    /* someone left or was removed (or this user is out): our key goes, the next message makes a
     * new one for those who remain */
    if (have && (nx.st->n_removed || !member_next))
        e = rotate_key(c, &cur);
    if (!e && ev) {
        memcpy(ev->id, nx.id, 16);
        snprintf(ev->hex, sizeof ev->hex, "%s", nx.hex);
        describe(have && cur.member ? cur.st : NULL, nx.st, c->username, ev->text, sizeof ev->text);
    }
out:
    hsdk_room_release(&nx);
    hsdk_room_release(&cur);
    return e;
}

hush_err hsdk_room_receive(hush_client *c, const char *from, uint32_t dev, const uint8_t *buf, size_t len,
                           struct hsdk_room_event *ev)
{
    return apply(c, from, dev, buf, len, ev);
}

hush_err hsdk_room_message_allowed(hush_client *c, const char *group_id, const char *from)
{
    uint8_t id[16];
    if (!room_id_parse(group_id, id))
        return HUSH_OK; /* not a room: a group of the local sender-key functions */
    struct hsdk_room r;
    int found = 0;
    hush_err e = hsdk_room_load(c, id, &r, &found);
    if (e)
        return e;
    if (!found || !r.member || !in_list(r.st->members, r.st->n_members, from))
        e = HUSH_ERR_NOT_ALLOWED;
    hsdk_room_release(&r);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* changes made here */

/* Signs `next` (version, prev_hash, author and time filled in here), applies it like a received
 * one, records it in the history and queues it for every device concerned. Caller holds the lock,
 * inside a transaction. */
static hush_err make_change(hush_client *c, const struct hsdk_room *cur, Hush__RoomState *next, char hex_out[33])
{
    uint8_t mid[16], sig[64];
    randombytes_buf(mid, sizeof mid);
    next->version = cur ? cur->st->version + 1 : 1;
    next->prev_hash.data = cur ? (uint8_t *)cur->hash : NULL;
    next->prev_hash.len = cur ? 32 : 0;
    next->author = c->username;
    next->changed_at_ms = hsdk_now_ms();
    size_t slen = hush__room_state__get_packed_size(next);
    uint8_t *sbuf = malloc(slen ? slen : 1), *cbuf = NULL;
    if (!sbuf)
        return HUSH_ERR_NOMEM;
    hush__room_state__pack(next, sbuf);
    Hush__RoomChange ch = HUSH__ROOM_CHANGE__INIT;
    ch.state.data = sbuf;
    ch.state.len = slen;
    hush_err e = sign_change(c, &ch, sig);
    size_t clen = 0;
    if (!e) {
        ch.signature.data = sig;
        ch.signature.len = sizeof sig;
        clen = hush__room_change__get_packed_size(&ch);
        if (clen > HSDK_ROOM_CHANGE_MAX)
            e = HUSH_ERR_TOO_BIG;
        else if (!(cbuf = malloc(clen)))
            e = HUSH_ERR_NOMEM;
        else
            hush__room_change__pack(&ch, cbuf);
    }
    struct hsdk_room_event ev;
    if (!e)
        e = apply(c, c->username, c->device_id, cbuf, clen, &ev);
    if (!e)
        e = hsdk_history_insert(c, c->username, 0, 1, mid, HUSH_KIND_GROUP_CHANGE, ev.hex, next->changed_at_ms,
                                (const uint8_t *)ev.text, strlen(ev.text), NULL, NULL);
    if (!e) {
        char peer[HUSH_USERNAME_MAX + 1];
        hsdk_room_outbox_peer(ev.id, peer);
        e = hsdk_outbox_insert(c, peer, HUSH__CONTENT_KIND__CONTENT_ROOM_CHANGE, mid, cbuf, clen);
    }
    if (!e && hex_out)
        snprintf(hex_out, HUSH_ROOM_ID_LEN + 1, "%s", ev.hex);
    free(sbuf);
    free(cbuf);
    return e;
}

/* The room `group` loaded, this device's user a member (and an admin when admin is set). Caller
 * holds the lock. */
static hush_err room_for_change(hush_client *c, const char *group, int admin, struct hsdk_room *r)
{
    uint8_t id[16];
    int found = 0;
    memset(r, 0, sizeof *r);
    if (!room_id_parse(group, id))
        return HUSH_ERR_INVALID_ARG;
    if (!c->has_device)
        return HUSH_ERR_NO_DEVICE;
    hush_err e = hsdk_room_load(c, id, r, &found);
    if (!e && !found)
        e = HUSH_ERR_NOT_FOUND;
    if (!e && (!r->member || (admin && !in_list(r->st->admins, r->st->n_admins, c->username))))
        e = HUSH_ERR_NOT_ALLOWED;
    if (e)
        hsdk_room_release(r);
    return e;
}

/* A copy of the room's state to change: the lists are new arrays of pointers into `r` (valid
 * while r is), with room for `extra` more members. */
struct draft {
    Hush__RoomState s;
    char **members, **admins, **removed;
};

static hush_err draft_of(const struct hsdk_room *r, size_t extra, struct draft *d)
{
    memset(d, 0, sizeof *d);
    hush__room_state__init(&d->s);
    size_t nm = r->st->n_members;
    d->members = calloc(nm + extra + 1, sizeof *d->members);
    d->admins = calloc(nm + extra + 1, sizeof *d->admins);
    d->removed = calloc(nm + 1, sizeof *d->removed);
    if (!d->members || !d->admins || !d->removed) {
        free(d->members);
        free(d->admins);
        free(d->removed);
        return HUSH_ERR_NOMEM;
    }
    d->s.room_id = r->st->room_id;
    d->s.name = r->st->name;
    memcpy(d->members, r->st->members, nm * sizeof *d->members);
    d->s.n_members = nm;
    memcpy(d->admins, r->st->admins, r->st->n_admins * sizeof *d->admins);
    d->s.n_admins = r->st->n_admins;
    d->s.members = d->members;
    d->s.admins = d->admins;
    d->s.removed = d->removed;
    return HUSH_OK;
}

static void draft_free(struct draft *d)
{
    free(d->members);
    free(d->admins);
    free(d->removed);
}

/* Takes `user` out of the draft's members and admins (named in removed). */
static void draft_remove(struct draft *d, const char *user)
{
    size_t k = 0;
    for (size_t i = 0; i < d->s.n_members; i++)
        if (strcmp(d->members[i], user) != 0)
            d->members[k++] = d->members[i];
    d->s.n_members = k;
    k = 0;
    for (size_t i = 0; i < d->s.n_admins; i++)
        if (strcmp(d->admins[i], user) != 0)
            d->admins[k++] = d->admins[i];
    d->s.n_admins = k;
    d->removed[d->s.n_removed++] = (char *)user;
}

typedef hush_err (*edit_fn)(hush_client *c, struct draft *d, const void *arg);

/* The common frame of add / remove / promote / rename / leave. */
static hush_err change_room(hush_client *c, const char *group, int admin, size_t extra, edit_fn edit, const void *arg)
{
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    struct hsdk_room r;
    struct draft d;
    hush_err e = room_for_change(c, group, admin, &r);
    if (e)
        goto unlock;
    if (!(e = draft_of(&r, extra, &d))) {
        e = edit(c, &d, arg);
        if (!e && !(e = hsdk_begin(c))) {
            e = make_change(c, &r, &d.s, NULL);
            e = hsdk_end(c, e);
        }
        draft_free(&d);
    }
    hsdk_room_release(&r);
unlock:
    hsdk_unlock(c);
    if (!e)
        hsdk_net_wake(c, NET_WAKE_OUTBOX);
    return e;
}

struct user_list {
    const char *const *users;
    size_t n;
};

static hush_err edit_add(hush_client *c, struct draft *d, const void *arg)
{
    const struct user_list *u = arg;
    size_t before = d->s.n_members;
    for (size_t i = 0; i < u->n; i++) {
        if (!hsdk_valid_username(u->users[i]))
            return HUSH_ERR_INVALID_ARG;
        if (in_list(d->members, d->s.n_members, u->users[i]))
            continue; /* already in: nothing to add */
        if (d->s.n_members >= HUSH_ROOM_MAX_MEMBERS)
            return HUSH_ERR_TOO_BIG;
        d->members[d->s.n_members++] = (char *)u->users[i];
    }
    (void)c;
    return d->s.n_members == before ? HUSH_ERR_INVALID_ARG : HUSH_OK; /* nobody new */
}

static hush_err edit_remove(hush_client *c, struct draft *d, const void *arg)
{
    const char *user = arg;
    if (!hsdk_valid_username(user) || !strcmp(user, c->username))
        return HUSH_ERR_INVALID_ARG; /* leaving is hush_group_leave */
    if (!in_list(d->members, d->s.n_members, user))
        return HUSH_ERR_NOT_FOUND;
    draft_remove(d, user);
    return d->s.n_admins ? HUSH_OK : HUSH_ERR_INTERNAL;
}

static hush_err edit_promote(hush_client *c, struct draft *d, const void *arg)
{
    const char *user = arg;
    (void)c;
    if (!hsdk_valid_username(user))
        return HUSH_ERR_INVALID_ARG;
    if (!in_list(d->members, d->s.n_members, user))
        return HUSH_ERR_NOT_FOUND;
    if (in_list(d->admins, d->s.n_admins, user))
        return HUSH_ERR_INVALID_ARG; /* already one */
    d->admins[d->s.n_admins++] = (char *)user;
    return HUSH_OK;
}

static hush_err edit_rename(hush_client *c, struct draft *d, const void *arg)
{
    const char *name = arg;
    (void)c;
    if (!name || !hsdk_room_name_ok(name, strlen(name)))
        return HUSH_ERR_INVALID_ARG;
    d->s.name = (char *)name;
    return HUSH_OK;
}

static hush_err edit_leave(hush_client *c, struct draft *d, const void *arg)
{
    (void)arg;
    draft_remove(d, c->username);
    if (!d->s.n_members)
        return HUSH_ERR_INVALID_ARG; /* the last member: nobody to tell (handled by the caller) */
    if (!d->s.n_admins)
        d->admins[d->s.n_admins++] = d->members[0];
    return HUSH_OK;
}

hush_err hush_group_create(hush_client *c, const char *name, const char *const *members, size_t n,
                           char id_out[HUSH_ROOM_ID_LEN + 1])
{
    if (!c || !name || !hsdk_room_name_ok(name, strlen(name)) || (n && !members) || !id_out)
        return HUSH_ERR_INVALID_ARG;
    if (n + 1 > HUSH_ROOM_MAX_MEMBERS)
        return HUSH_ERR_TOO_BIG;
    char **list = calloc(n + 1, sizeof *list);
    if (!list)
        return HUSH_ERR_NOMEM;
    hsdk_lock(c);
    hush_err e = c->has_device ? HUSH_OK : HUSH_ERR_NO_DEVICE;
    size_t nm = 0;
    if (!e)
        list[nm++] = c->username;
    for (size_t i = 0; !e && i < n; i++) {
        if (!hsdk_valid_username(members[i]))
            e = HUSH_ERR_INVALID_ARG;
        else if (!in_list(list, nm, members[i]))
            list[nm++] = (char *)members[i];
    }
    uint8_t id[16];
    randombytes_buf(id, sizeof id);
    Hush__RoomState s = HUSH__ROOM_STATE__INIT;
    s.room_id.data = id;
    s.room_id.len = sizeof id;
    s.name = (char *)name;
    s.members = list;
    s.n_members = nm;
    s.admins = list; /* the creator, first in the list */
    s.n_admins = 1;
    if (!e && !(e = hsdk_begin(c))) {
        e = make_change(c, NULL, &s, id_out);
        e = hsdk_end(c, e);
    }
    hsdk_unlock(c);
    free(list);
    if (!e)
        hsdk_net_wake(c, NET_WAKE_OUTBOX);
    return e;
}

hush_err hush_group_add(hush_client *c, const char *group, const char *const *users, size_t n)
{
    if (!users || n == 0)
        return HUSH_ERR_INVALID_ARG;
    if (n > HUSH_ROOM_MAX_MEMBERS)
        return HUSH_ERR_TOO_BIG;
    struct user_list u = { users, n };
    return change_room(c, group, 1, n, edit_add, &u);
}

hush_err hush_group_remove(hush_client *c, const char *group, const char *user)
{
    return change_room(c, group, 1, 0, edit_remove, user);
}

hush_err hush_group_promote(hush_client *c, const char *group, const char *user)
{
    return change_room(c, group, 1, 1, edit_promote, user);
}

hush_err hush_group_rename(hush_client *c, const char *group, const char *name)
{
    return change_room(c, group, 1, 0, edit_rename, name);
}

hush_err hush_group_leave(hush_client *c, const char *group)
{
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    hush_err e = change_room(c, group, 0, 0, edit_leave, NULL);
    if (e != HUSH_ERR_INVALID_ARG || !hsdk_room_is_id(group))
        return e;
    /* the last member: nobody to tell, the room is simply left here */
    hsdk_lock(c);
    struct hsdk_room r;
    e = room_for_change(c, group, 0, &r);
    if (!e) {
        if (r.st->n_members != 1) {
            e = HUSH_ERR_INVALID_ARG;
        } else if (!(e = hsdk_begin(c))) {
            e = run_with_id(c, "UPDATE rooms SET member = 0 WHERE id = ?1", r.id);
            if (!e)
                e = rotate_key(c, &r);
            e = hsdk_end(c, e);
        }
        hsdk_room_release(&r);
    }
    hsdk_unlock(c);
    return e;
}

hush_err hsdk_room_sender(hush_client *c, const char *group, char peer[HUSH_USERNAME_MAX + 1])
{
    struct hsdk_room r;
    hush_err e = room_for_change(c, group, 0, &r);
    if (!e) {
        hsdk_room_outbox_peer(r.id, peer);
        hsdk_room_release(&r);
    }
    return e;
}

/* What a queued room row writes besides itself, in the same transaction (the room is loaded). */
typedef hush_err (*room_row_extra)(hush_client *c, const struct hsdk_room *r, const uint8_t mid[16], const void *arg);

/* Queues a message of `kind` (body) to the room `group`, this user a member, with what `extra`
 * writes, in one transaction; then wakes the network thread. HUSH_ERR_NOT_FOUND /
 * HUSH_ERR_NOT_ALLOWED / HUSH_ERR_INVALID_ARG as room_for_change. */
static hush_err queue_room_row(hush_client *c, const char *group, int kind, const uint8_t mid[16], const uint8_t *body,
                               size_t len, room_row_extra extra, const void *arg)
{
    hsdk_lock(c);
    struct hsdk_room r;
    hush_err e = room_for_change(c, group, 0, &r);
    if (!e) {
        if (!(e = hsdk_begin(c))) {
            char peer[HUSH_USERNAME_MAX + 1];
            hsdk_room_outbox_peer(r.id, peer);
            e = hsdk_outbox_insert(c, peer, kind, mid, body, len);
            if (!e && extra)
                e = extra(c, &r, mid, arg);
            e = hsdk_end(c, e);
        }
        hsdk_room_release(&r);
    }
    hsdk_unlock(c);
    if (!e)
        hsdk_net_wake(c, NET_WAKE_OUTBOX);
    return e;
}

struct text_arg {
    const uint8_t *text;
    size_t len;
};

/* the history row (QUEUED) of a room text, with its outbox row, before anything leaves */
static hush_err text_history(hush_client *c, const struct hsdk_room *r, const uint8_t mid[16], const void *arg)
{
    const struct text_arg *t = arg;
    return hsdk_history_insert(c, c->username, 0, 1, mid, HUSH_KIND_GROUP_TEXT, r->hex, hsdk_now_ms(), t->text, t->len,
                               NULL, NULL);
}

hush_err hush_group_send(hush_client *c, const char *group, const uint8_t *text, size_t len,
                         uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES])
{
    if (!c || (!text && len))
        return HUSH_ERR_INVALID_ARG;
    if (len > HUSH_MAX_BODY)
        return HUSH_ERR_TOO_BIG;
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    randombytes_buf(mid, sizeof mid);
    struct text_arg t = { text, len };
    hush_err e = queue_room_row(c, group, HUSH__CONTENT_KIND__CONTENT_TEXT, mid, text, len, text_history, &t);
    if (!e && message_id_out)
        memcpy(message_id_out, mid, sizeof mid);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* presence shared with a room (table room_presence) */

static int shares_presence(hush_client *c, const uint8_t id[16])
{
    int64_t v = 0;
    sqlite3_stmt *st;
    if (hstore_prepare(c->db, "SELECT share FROM room_presence WHERE room = ?1", &st) == HSTORE_OK) {
        sqlite3_bind_blob(st, 1, id, 16, SQLITE_TRANSIENT);
        int row = 0;
        if (hstore_step(c->db, st, &row) == HSTORE_OK && row)
            v = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    return v != 0;
}

/* Records a decision made at at_ms unless a later one is held; *changed: it was recorded and
 * differs from what was held. */
static hush_err decide_presence(hush_client *c, const uint8_t id[16], int share, int64_t at_ms, int *changed)
{
    int before = shares_presence(c, id);
    sqlite3_stmt *st;
    hstore_err se = hstore_prepare(c->db, "INSERT INTO room_presence (room, share, decided_at) VALUES (?1, ?2, ?3) "
                                          "ON CONFLICT (room) DO UPDATE SET share = excluded.share, "
                                          "decided_at = excluded.decided_at WHERE excluded.decided_at >= decided_at",
                                   &st);
    if (!se) {
        sqlite3_bind_blob(st, 1, id, 16, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 2, share != 0);
        sqlite3_bind_int64(st, 3, at_ms);
        se = hstore_run(c->db, st);
    }
    if (changed)
        *changed = !se && shares_presence(c, id) != before;
    return hsdk_from_store(se);
}

/* the decision, with the room message that tells our other devices (the other members learn
 * what they will see anyway) */
static hush_err presence_decided(hush_client *c, const struct hsdk_room *r, const uint8_t mid[16], const void *arg)
{
    (void)mid;
    return decide_presence(c, r->id, *(const uint8_t *)arg, (int64_t)hsdk_now_ms(), NULL);
}

hush_err hush_group_share_presence(hush_client *c, const char *group, int share)
{
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    uint8_t mid[HUSH_MESSAGE_ID_BYTES], body = share != 0;
    randombytes_buf(mid, sizeof mid);
    hush_err e = queue_room_row(c, group, HUSH__CONTENT_KIND__CONTENT_ROOM_PRESENCE, mid, &body, 1, presence_decided,
                                &body);
    if (e == HUSH_ERR_NOT_ALLOWED && !share) {
        /* out of the room: nothing is shared with it anyway; the choice is kept for a return */
        uint8_t id[16];
        room_id_parse(group, id);
        hsdk_lock(c);
        if (!(e = hsdk_begin(c)))
            e = hsdk_end(c, decide_presence(c, id, 0, (int64_t)hsdk_now_ms(), NULL));
        hsdk_unlock(c);
    }
    if (!e)
        hsdk_net_wake(c, NET_WAKE_PRESENCE);
    return e;
}

hush_err hsdk_room_presence_told(hush_client *c, const char *group_id, int share, uint64_t at_ms)
{
    uint8_t id[16];
    if (!room_id_parse(group_id, id))
        return HUSH_ERR_BAD_MESSAGE;
    int changed = 0;
    hush_err e = decide_presence(c, id, share, (int64_t)(at_ms > INT64_MAX ? INT64_MAX : at_ms), &changed);
    if (!e && changed)
        hsdk_net_wake(c, NET_WAKE_PRESENCE);
    return e;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

size_t hsdk_room_presence_names(hush_client *c, int allow, char **names, size_t n, size_t max)
{
    if (n >= max)
        return n;
    /* what is already in the list, sorted, to add each name once */
    char **seen = malloc(max * sizeof *seen);
    if (!seen)
        return n;
    memcpy(seen, names, n * sizeof *seen);
    size_t nseen = n;
    qsort(seen, nseen, sizeof *seen, cmp_name);
    /* the rooms: for `allow`, those this user shares with; else every room it is in, those it shares
     * with first; most recently changed first */
    sqlite3_stmt *st;
    size_t nid = 0, cap = 0;
    uint8_t (*ids)[16] = NULL;
    if (hstore_prepare(c->db, allow ? "SELECT r.id FROM rooms r JOIN room_presence p ON p.room = r.id "
                                      "WHERE r.member = 1 AND p.share = 1 ORDER BY r.updated_at DESC"
                                    : "SELECT r.id FROM rooms r LEFT JOIN room_presence p ON p.room = r.id "
                                      "WHERE r.member = 1 ORDER BY coalesce(p.share, 0) DESC, r.updated_at DESC",
                       &st) == HSTORE_OK) {
        int row = 0;
        while (hstore_step(c->db, st, &row) == HSTORE_OK && row) {
            if (sqlite3_column_bytes(st, 0) != 16)
                continue;
            if (nid == cap) {
                size_t nc = cap ? cap * 2 : 8;
                void *nv = realloc(ids, nc * 16);
                if (!nv)
                    break;
                ids = nv;
                cap = nc;
            }
            memcpy(ids[nid++], sqlite3_column_blob(st, 0), 16);
        }
        sqlite3_reset(st);
    }
    for (size_t i = 0; i < nid && n < max; i++) {
        struct hsdk_room r;
        int found = 0;
        if (hsdk_room_load(c, ids[i], &r, &found) || !found)
            continue;
        for (size_t m = 0; m < r.st->n_members && n < max; m++) {
            const char *who = r.st->members[m];
            if (!strcmp(who, c->username) || bsearch(&who, seen, nseen, sizeof *seen, cmp_name))
                continue;
            if (!(names[n] = strdup(who)))
                break;
            /* keep `seen` sorted: insert in place */
            size_t at = 0, hi = nseen;
            while (at < hi) {
                size_t mid = (at + hi) / 2;
                if (strcmp(seen[mid], who) < 0)
                    at = mid + 1;
                else
                    hi = mid;
            }
            memmove(seen + at + 1, seen + at, (nseen - at) * sizeof *seen);
            seen[at] = names[n++];
            nseen++;
        }
        hsdk_room_release(&r);
    }
    free(ids);
    free(seen);
    return n;
}

/* ---------------------------------------------------------------------------------------- */
/* reading */

hush_err hush_group_receipts(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES], hush_group_receipt **out,
                             size_t *count)
{
    if (!out || !count)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    *count = 0;
    if (!c || !message_id)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    char group[HUSH_GROUP_ID_MAX + 1];
    uint8_t id[16];
    struct hsdk_room r;
    int found = 0;
    hush_err e = HUSH_ERR_NOT_FOUND;
    if (hsdk_history_room_of_sent(c, message_id, group) && room_id_parse(group, id) &&
        !(e = hsdk_room_load(c, id, &r, &found)) && !found)
        e = HUSH_ERR_NOT_FOUND;
    if (e || !found) {
        hsdk_unlock(c);
        return e ? e : HUSH_ERR_NOT_FOUND;
    }
    hush_group_receipt *v = hsdk_alloc((r.st->n_members ? r.st->n_members : 1) * sizeof *v);
    size_t n = 0;
    if (!v)
        e = HUSH_ERR_NOMEM;
    for (size_t i = 0; !e && i < r.st->n_members; i++) {
        if (!strcmp(r.st->members[i], c->username))
            continue;
        sqlite3_stmt *st;
        int row = 0;
        hstore_err se = hstore_prepare(c->db, "SELECT state FROM room_receipts WHERE message_id = ?1 AND member = ?2", &st);
        if (!se) {
            sqlite3_bind_blob(st, 1, message_id, 16, SQLITE_TRANSIENT);
            sqlite3_bind_text(st, 2, r.st->members[i], -1, SQLITE_TRANSIENT);
            se = hstore_step(c->db, st, &row);
        }
        if (se) {
            e = hsdk_from_store(se);
            break;
        }
        memset(&v[n], 0, sizeof v[n]);
        snprintf(v[n].member, sizeof v[n].member, "%s", r.st->members[i]);
        v[n].state = row ? sqlite3_column_int(st, 0) : HUSH_MSG_SENT;
        if (row)
            sqlite3_reset(st);
        n++;
    }
    hsdk_room_release(&r);
    hsdk_unlock(c);
    if (e) {
        hush_free(v);
        return e;
    }
    *out = v;
    *count = n;
    return HUSH_OK;
}

static hush_err state_out(hush_client *c, const struct hsdk_room *r, hush_group_state *g)
{
    memset(g, 0, sizeof *g);
    snprintf(g->id, sizeof g->id, "%s", r->hex);
    snprintf(g->name, sizeof g->name, "%s", r->st->name);
    g->version = r->st->version;
    g->is_member = r->member;
    g->is_admin = r->member && in_list(r->st->admins, r->st->n_admins, c->username);
    g->changed_at_ms = r->st->changed_at_ms;
    g->shares_presence = shares_presence(c, r->id);
    g->n_members = r->st->n_members;
    g->members = calloc(g->n_members, sizeof *g->members);
    g->admin = calloc(g->n_members, 1);
    if (!g->members || !g->admin)
        return HUSH_ERR_NOMEM;
    for (size_t i = 0; i < g->n_members; i++) {
        snprintf(g->members[i], sizeof g->members[i], "%s", r->st->members[i]);
        g->admin[i] = (uint8_t)in_list(r->st->admins, r->st->n_admins, r->st->members[i]);
    }
    return HUSH_OK;
}

void hush_group_state_free(hush_group_state *states, size_t count)
{
    if (!states)
        return;
    for (size_t i = 0; i < count; i++) {
        free(states[i].members);
        free(states[i].admin);
    }
    sodium_memzero(states, count * sizeof *states);
    free(states);
}

hush_err hush_group_info(hush_client *c, const char *group, hush_group_state **out)
{
    uint8_t id[16];
    if (!out)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    if (!c || !room_id_parse(group, id))
        return HUSH_ERR_INVALID_ARG;
    hush_group_state *g = calloc(1, sizeof *g);
    if (!g)
        return HUSH_ERR_NOMEM;
    hsdk_lock(c);
    struct hsdk_room r;
    int found = 0;
    hush_err e = hsdk_room_load(c, id, &r, &found);
    if (!e && !found)
        e = HUSH_ERR_NOT_FOUND;
    if (!e) {
        e = state_out(c, &r, g);
        hsdk_room_release(&r);
    }
    hsdk_unlock(c);
    if (e) {
        hush_group_state_free(g, 1);
        return e;
    }
    *out = g;
    return HUSH_OK;
}

hush_err hush_group_list(hush_client *c, hush_group_state **out, size_t *count)
{
    if (!out || !count)
        return HUSH_ERR_INVALID_ARG;
    *out = NULL;
    *count = 0;
    if (!c)
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    int64_t total = 0;
    hush_err e = hsdk_query_int(c, "SELECT count(*) FROM rooms", NULL, &total);
    hush_group_state *v = NULL;
    size_t n = 0;
    if (!e && total > 0 && !(v = calloc((size_t)total, sizeof *v)))
        e = HUSH_ERR_NOMEM;
    sqlite3_stmt *st = NULL;
    if (!e && total > 0) {
        /* the ids first (the statement is reset before each room is loaded with its own) */
        uint8_t (*ids)[16] = calloc((size_t)total, 16);
        hstore_err se = ids ? hstore_prepare(c->db, "SELECT id FROM rooms ORDER BY updated_at DESC", &st) : HSTORE_ERR_NOMEM;
        size_t nid = 0;
        int row = 0;
        while (!se && nid < (size_t)total && (se = hstore_step(c->db, st, &row)) == HSTORE_OK && row)
            if (sqlite3_column_bytes(st, 0) == 16)
                memcpy(ids[nid++], sqlite3_column_blob(st, 0), 16);
        if (st)
            sqlite3_reset(st);
        e = hsdk_from_store(se);
        for (size_t i = 0; !e && i < nid; i++) {
            struct hsdk_room r;
            int found = 0;
            if ((e = hsdk_room_load(c, ids[i], &r, &found)) || !found)
                continue;
            e = state_out(c, &r, &v[n++]);
            hsdk_room_release(&r);
        }
        free(ids);
    }
    hsdk_unlock(c);
    if (e) {
        hush_group_state_free(v, n);
        return e;
    }
    *out = v;
    *count = n;
    return HUSH_OK;
}
