/*
 * fuzz_room.c - a room change as a member receives it (the body of a CONTENT_ROOM_CHANGE: anyone
 * with a session can send one). Two devices, an admin ("nora") and a member ("otto"), share a
 * room at version 1. The first byte picks the mode: 0, the rest is a RoomChange as sent; 1, the
 * rest is a RoomState that nora signs first (so the rules after the signature are reached; an
 * all-zero room id becomes the shared room's, an all-zero prev_hash the hash otto holds). otto
 * receives it from nora, checked and applied inside a transaction rolled back afterwards (every
 * input meets the same room). Invariants: a change that parses has a state within every limit and
 * packs to something that parses the same; one applied to the shared room moves it to exactly
 * version 2; anything else leaves it at version 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <curve.h>
#include <ratchet.h>

#include "../sdk/internal.h"
#include "fuzz.h"

static hush_client *g_admin, *g_member;
static uint8_t g_id[16];

static hush_client *open_one(const char *name, uint8_t keybyte)
{
    char path[300];
    snprintf(path, sizeof path, "%s/room-%s.db", fuzz_tmpdir(), name);
    fuzz_remove_db(path);
    uint8_t key[32] = { keybyte };
    hush_open_opts o = { HUSH_DURABILITY_NORMAL };
    hush_client *c = NULL;
    if (hush_client_open(path, key, &o, &c) || hush_device_create(c, name, 1))
        abort();
    return c;
}

/* A pairwise message from nora to otto carrying `body` of `kind`, decrypted by otto. */
static hush_err deliver(int kind, const uint8_t *body, size_t len)
{
    uint8_t mid[16], *env = NULL;
    size_t elen = 0;
    randombytes_buf(mid, sizeof mid);
    hsdk_lock(g_admin);
    hush_err e = hsdk_encrypt_kind(g_admin, "otto", 1, kind, body, len, mid, 0, &env, &elen);
    hsdk_unlock(g_admin);
    if (e)
        abort();
    hush_message *m = NULL;
    e = hush_decrypt(g_member, "nora", 1, env, elen, &m);
    hush_message_free(m);
    hush_free(env);
    return e;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    g_admin = open_one("nora", 1);
    g_member = open_one("otto", 2);
    uint8_t *bundle = NULL;
    size_t blen = 0;
    if (hush_bundle_export(g_member, &bundle, &blen) || hush_bundle_import(g_admin, bundle, blen, NULL, NULL))
        abort();
    hush_free(bundle);
    const char *members[] = { "otto" };
    char hex[HUSH_ROOM_ID_LEN + 1];
    if (hush_group_create(g_admin, "fuzz", members, 1, hex))
        abort();
    hush_outbox_entry *o = NULL;
    if (hush_outbox_next(g_admin, &o) || deliver(HUSH__CONTENT_KIND__CONTENT_ROOM_CHANGE, o->body, o->body_len))
        abort();
    hush_outbox_entry_free(o);
    size_t n = 0;
    if (sodium_hex2bin(g_id, sizeof g_id, hex, HUSH_ROOM_ID_LEN, NULL, &n, NULL) || n != 16)
        abort();
    return 0;
}

static uint64_t version_held(void)
{
    struct hsdk_room r;
    int found = 0;
    if (hsdk_room_load(g_member, g_id, &r, &found) || !found)
        abort();
    uint64_t v = r.st->version;
    hsdk_room_release(&r);
    return v;
}

/* mode 1: the state signed by nora into a RoomChange (malloc'd), or NULL when it does not parse */
static uint8_t *signed_by_admin(const uint8_t *data, size_t size, size_t *out_len)
{
    if (size > HSDK_ROOM_CHANGE_MAX)
        return NULL;
    Hush__RoomState *st = hush__room_state__unpack(NULL, size, data);
    if (!st)
        return NULL;
    static const uint8_t zero[32];
    struct hsdk_room held;
    int found = 0;
    if (hsdk_room_load(g_member, g_id, &held, &found) || !found)
        abort();
    if (st->room_id.len == 16 && !memcmp(st->room_id.data, zero, 16))
        memcpy(st->room_id.data, g_id, 16);
    if (st->prev_hash.len == 32 && !memcmp(st->prev_hash.data, zero, 32))
        memcpy(st->prev_hash.data, held.hash, 32);
    hsdk_room_release(&held);
    size_t sl = hush__room_state__get_packed_size(st);
    uint8_t *sb = malloc(sl + 12), *out = NULL;
    memcpy(sb, "hush-room-v1", 12);
    hush__room_state__pack(st, sb + 12);
    hush__room_state__free_unpacked(st, NULL);
    ratchet_identity_key_pair *kp = NULL;
    signal_buffer *sig = NULL;
    hsdk_lock(g_admin);
    if (hsdk_local_identity(g_admin, &kp) ||
        curve_calculate_signature(g_admin->sg, &sig, ratchet_identity_key_pair_get_private(kp), sb, sl + 12))
        abort();
    hsdk_unlock(g_admin);
    Hush__RoomChange ch = HUSH__ROOM_CHANGE__INIT;
    ch.state.data = sb + 12;
    ch.state.len = sl;
    ch.signature.data = signal_buffer_data(sig);
    ch.signature.len = signal_buffer_len(sig);
    *out_len = hush__room_change__get_packed_size(&ch);
    out = malloc(*out_len);
    hush__room_change__pack(&ch, out);
    signal_buffer_free(sig);
    SIGNAL_UNREF(kp);
    free(sb);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t insize)
{
    fuzz_random_reset(1);
    if (insize < 1 || in[0] > 1)
        return 0;
    const uint8_t *data = in + 1;
    size_t size = insize - 1;
    uint8_t *made = NULL;
    if (in[0] == 1) {
        if (!(made = signed_by_admin(data, size, &size)))
            return 0;
        data = made;
    }
    struct hsdk_room p;
    if (hsdk_room_parse(data, size, &p) == HUSH_OK) {
        const Hush__RoomState *s = p.st;
        if (s->room_id.len != 16 || s->n_members < 1 || s->n_members > HUSH_ROOM_MAX_MEMBERS || s->n_admins < 1 ||
            !s->name || strlen(s->name) < 1 || strlen(s->name) > HUSH_ROOM_NAME_MAX || s->version < 1)
            abort();
        size_t len = hush__room_change__get_packed_size(p.ch);
        uint8_t *buf = malloc(len ? len : 1);
        hush__room_change__pack(p.ch, buf);
        struct hsdk_room q;
        if (hsdk_room_parse(buf, len, &q) || memcmp(q.hash, p.hash, 32) != 0)
            abort();
        hsdk_room_release(&q);
        free(buf);
        hsdk_room_release(&p);
    }
    /* as otto receives it from nora, undone afterwards */
    hsdk_lock(g_member);
    if (hsdk_begin(g_member))
        abort();
    struct hsdk_room_event ev;
    hush_err e = hsdk_room_receive(g_member, "nora", 1, data, size, &ev);
    uint64_t v = version_held();
    int ours = e == HUSH_OK && !memcmp(ev.id, g_id, 16);
    if (ours && v != 2)
        abort(); /* applied to the shared room: exactly the next version */
    if (!ours && v != 1)
        abort(); /* refused, or another room: the shared room did not move */
    hsdk_rollback(g_member);
    if (version_held() != 1)
        abort();
    hsdk_unlock(g_member);
    free(made);
    return 0;
}
