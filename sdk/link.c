/*
 * link.c - linking a new device to an account, without the network: the link code the new
 * device shows, the link box an existing device seals to it (the account's identity key pair, the
 * relay's link token, the contacts it trusts and its presence lists), and opening that box into a
 * new device. The box is a libsodium sealed box (X25519 + XSalsa20-Poly1305) to the new device's
 * ephemeral key: the relay that carries it cannot read it. Also the device names, which the
 * relay keeps sealed under a key only the user's devices have (derived from the identity key).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <curve.h>
#include <ratchet.h>

#include "hush_wire.h"
#include "internal.h"
#include "net.h"

#define LINK_PREFIX "hush-link-1:"
#define LINK_MAX_CONTACTS 2000
#define LINK_MAX_PRESENCE 1000
#define TOKEN_AD "hush1|meta|link_token"

int hsdk_link_code_format(char *out, size_t cap, const char *address, const uint8_t pk[32])
{
    char b64[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
    sodium_bin2base64(b64, sizeof b64, pk, 32, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    int n = snprintf(out, cap, LINK_PREFIX "%s:%s", address, b64);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

hush_err hsdk_link_code_parse(const char *code, char address[HWIRE_PROVISION_ADDRESS_LEN + 1], uint8_t pk[32])
{
    if (!code || strlen(code) > HUSH_LINK_CODE_MAX)
        return HUSH_ERR_INVALID_ARG;
    /* surrounding spaces from a copy and paste are forgiven */
    while (*code == ' ' || *code == '\t')
        code++;
    size_t pl = strlen(LINK_PREFIX);
    if (strncmp(code, LINK_PREFIX, pl) != 0)
        return HUSH_ERR_INVALID_ARG;
    const char *a = code + pl;
    const char *colon = strchr(a, ':');
    if (!colon || (size_t)(colon - a) != HWIRE_PROVISION_ADDRESS_LEN)
        return HUSH_ERR_INVALID_ARG;
    for (const char *p = a; p < colon; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return HUSH_ERR_INVALID_ARG;
    memcpy(address, a, HWIRE_PROVISION_ADDRESS_LEN);
    address[HWIRE_PROVISION_ADDRESS_LEN] = '\0';
    const char *b = colon + 1;
    size_t bl = strlen(b);
    while (bl && (b[bl - 1] == ' ' || b[bl - 1] == '\n' || b[bl - 1] == '\r' || b[bl - 1] == '\t'))
        bl--;
    size_t got = 0;
    if (sodium_base642bin(pk, 32, b, bl, NULL, &got, NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 || got != 32)
        return HUSH_ERR_INVALID_ARG;
    return HUSH_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* the existing device: the box */

struct contacts {
    Hush__LinkContact *v;
    Hush__LinkContact **p;
    uint8_t (*keys)[33];
    char (*names)[HUSH_USERNAME_MAX + 1];
    size_t n;
    const char *self;
};

static int add_contact(void *ctx, const char *name, uint32_t dev, const uint8_t key[33])
{
    struct contacts *cs = ctx;
    if (!strcmp(name, cs->self))
        return 0; /* our own devices carry our own key */
    if (cs->n == LINK_MAX_CONTACTS)
        return 1;
    Hush__LinkContact *lc = &cs->v[cs->n];
    hush__link_contact__init(lc);
    memcpy(cs->keys[cs->n], key, 33);
    snprintf(cs->names[cs->n], sizeof cs->names[cs->n], "%s", name);
    lc->username = cs->names[cs->n];
    lc->identity_key.data = cs->keys[cs->n];
    lc->identity_key.len = 33;
    lc->device_id = dev;
    cs->p[cs->n] = lc;
    cs->n++;
    return 0;
}

hush_err hsdk_link_box_make(hush_client *c, const char *token, uint32_t device_id, const char *origin,
                            const uint8_t pk[32], uint8_t **box, size_t *box_len)
{
    *box = NULL;
    *box_len = 0;
    struct contacts cs;
    memset(&cs, 0, sizeof cs);
    cs.v = calloc(LINK_MAX_CONTACTS, sizeof *cs.v);
    cs.p = calloc(LINK_MAX_CONTACTS, sizeof *cs.p);
    cs.keys = calloc(LINK_MAX_CONTACTS, sizeof *cs.keys);
    cs.names = calloc(LINK_MAX_CONTACTS, sizeof *cs.names);
    char *allow[LINK_MAX_PRESENCE];
    size_t nallow = 0;
    uint8_t idpub[33], idpriv[32];
    uint8_t *plain = NULL;
    size_t plen = 0;
    hush_err e = HUSH_OK;
    if (!cs.v || !cs.p || !cs.keys || !cs.names) {
        e = HUSH_ERR_NOMEM;
        goto out;
    }
    hsdk_lock(c);
    cs.self = c->username;
    ratchet_identity_key_pair *kp = NULL;
    e = c->has_device ? hsdk_local_identity(c, &kp) : HUSH_ERR_NO_DEVICE;
    if (!e) {
        signal_buffer *pb = NULL, *sb = NULL;
        if (ec_public_key_serialize(&pb, ratchet_identity_key_pair_get_public(kp)) != 0 ||
            ec_private_key_serialize(&sb, ratchet_identity_key_pair_get_private(kp)) != 0 || signal_buffer_len(pb) != 33 ||
            signal_buffer_len(sb) != 32)
            e = HUSH_ERR_INTERNAL;
        else {
            memcpy(idpub, signal_buffer_data(pb), 33);
            memcpy(idpriv, signal_buffer_data(sb), 32);
        }
        signal_buffer_free(pb);
        signal_buffer_bzero_free(sb);
        SIGNAL_UNREF(kp);
    }
    if (!e)
        e = hsdk_identities_each(c, add_contact, &cs);
    if (!e)
        nallow = hsdk_presence_prefs(c, PRESENCE_ALLOW, allow, LINK_MAX_PRESENCE);
    Hush__LinkBox lb = HUSH__LINK_BOX__INIT;
    char user[HUSH_USERNAME_MAX + 1];
    snprintf(user, sizeof user, "%s", c->username);
    hsdk_unlock(c);
    if (e)
        goto out;
    lb.version = 1;
    lb.username = user;
    lb.device_id = device_id;
    lb.link_token = (char *)token;
    lb.identity_public.data = idpub;
    lb.identity_public.len = 33;
    lb.identity_private.data = idpriv;
    lb.identity_private.len = 32;
    lb.n_contacts = cs.n;
    lb.contacts = cs.p;
    lb.n_presence_allow = nallow;
    lb.presence_allow = allow;
    lb.relay_origin = (char *)(origin ? origin : "");
    plen = hush__link_box__get_packed_size(&lb);
    if (plen + crypto_box_SEALBYTES > HWIRE_MAX_LINK_BOX) {
        e = HUSH_ERR_TOO_BIG;
        goto out;
    }
    plain = malloc(plen);
    *box = malloc(plen + crypto_box_SEALBYTES);
    if (!plain || !*box) {
        e = HUSH_ERR_NOMEM;
        goto out;
    }
    hush__link_box__pack(&lb, plain);
    if (crypto_box_seal(*box, plain, plen, pk) != 0) {
        e = HUSH_ERR_INVALID_ARG; /* the code's key is not a usable X25519 key (e.g. of small order) */
        goto out;
    }
    *box_len = plen + crypto_box_SEALBYTES;
out:
    if (e) {
        free(*box);
        *box = NULL;
    }
    if (plain) {
        sodium_memzero(plain, plen);
        free(plain);
    }
    sodium_memzero(idpriv, sizeof idpriv);
    for (size_t i = 0; i < nallow; i++)
        free(allow[i]);
    free(cs.v);
    free(cs.p);
    free(cs.keys);
    free(cs.names);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* the new device: opening the box */

static int valid_box(const Hush__LinkBox *b)
{
    if (b->version != 1 || !hsdk_valid_username(b->username) || !hsdk_valid_device(b->device_id) ||
        b->device_id < 2 || !b->link_token || !*b->link_token || strlen(b->link_token) > 128 ||
        b->identity_public.len != 33 || b->identity_private.len != 32 || b->n_contacts > LINK_MAX_CONTACTS ||
        b->n_presence_allow > LINK_MAX_PRESENCE)
        return 0;
    for (size_t i = 0; i < b->n_contacts; i++) {
        const Hush__LinkContact *lc = b->contacts[i];
        if (!hsdk_valid_username(lc->username) || !hsdk_valid_device(lc->device_id) || lc->identity_key.len != 33 ||
            !strcmp(lc->username, b->username))
            return 0;
    }
    for (size_t i = 0; i < b->n_presence_allow; i++)
        if (!hsdk_valid_username(b->presence_allow[i]))
            return 0;
    return 1;
}

/* The identity key pair must be one: the public half is the private half's. */
static int identity_pair_ok(hush_client *c, const uint8_t pub[33], const uint8_t priv[32])
{
    ec_private_key *sk = NULL;
    ec_public_key *derived = NULL;
    signal_buffer *b = NULL;
    int ok = curve_decode_private_point(&sk, priv, 32, c->sg) == 0 && curve_generate_public_key(&derived, sk) == 0 &&
             ec_public_key_serialize(&b, derived) == 0 && signal_buffer_len(b) == 33 &&
             sodium_memcmp(signal_buffer_data(b), pub, 33) == 0;
    signal_buffer_free(b);
    SIGNAL_UNREF(derived);
    SIGNAL_UNREF(sk);
    return ok;
}

hush_err hsdk_link_box_open(hush_client *c, const uint8_t *box, size_t len, const uint8_t pk[32], const uint8_t sk[32],
                            char *const **presence, size_t *npresence)
{
    *presence = NULL;
    *npresence = 0;
    if (len <= crypto_box_SEALBYTES || len > HWIRE_MAX_LINK_BOX)
        return HUSH_ERR_BAD_MESSAGE;
    size_t plen = len - crypto_box_SEALBYTES;
    uint8_t *plain = malloc(plen);
    if (!plain)
        return HUSH_ERR_NOMEM;
    hush_err e = HUSH_ERR_BAD_MESSAGE;
    if (crypto_box_seal_open(plain, box, len, pk, sk) == 0)
        e = hsdk_link_box_apply(c, plain, plen, presence, npresence);
    sodium_memzero(plain, plen);
    free(plain);
    return e;
}

hush_err hsdk_link_box_apply(hush_client *c, const uint8_t *plain, size_t plen, char *const **presence,
                             size_t *npresence)
{
    *presence = NULL;
    *npresence = 0;
    if (plen > HWIRE_MAX_LINK_BOX)
        return HUSH_ERR_BAD_MESSAGE;
    Hush__LinkBox *lb = hush__link_box__unpack(&hsdk_wiping_allocator, plen, plain);
    if (!lb)
        return HUSH_ERR_BAD_MESSAGE;
    hush_err e = HUSH_OK;
    hsdk_lock(c);
    if (!valid_box(lb) || !identity_pair_ok(c, lb->identity_public.data, lb->identity_private.data))
        e = HUSH_ERR_BAD_MESSAGE;
    else if (c->has_device)
        e = HUSH_ERR_DEVICE_EXISTS;
    if (!e)
        e = hsdk_begin(c);
    if (!e) {
        /* one transaction: the device, the token it registers with and the contacts it trusts,
         * or nothing (a crash here leaves the database as it was: the user links again) */
        e = hsdk_device_create_linked(c, lb->username, lb->device_id, lb->identity_public.data, lb->identity_private.data);
        uint8_t *sealed = NULL;
        size_t slen = 0;
        if (!e)
            e = hsdk_seal(c, TOKEN_AD, (const uint8_t *)lb->link_token, strlen(lb->link_token), &sealed, &slen);
        if (!e)
            e = hsdk_meta_set_blob(c, "link_token", sealed, slen);
        free(sealed);
        for (size_t i = 0; !e && i < lb->n_contacts; i++)
            e = hsdk_save_peer_identity(c, lb->contacts[i]->username, lb->contacts[i]->device_id,
                                        lb->contacts[i]->identity_key.data, 33);
        e = hsdk_end(c, e);
        if (e)
            hsdk_forget_device(c); /* rolled back: the device is not there */
    }
    hsdk_unlock(c);
    if (!e && lb->n_presence_allow) {
        char **names = calloc(lb->n_presence_allow, sizeof *names);
        size_t k = 0;
        for (size_t i = 0; names && i < lb->n_presence_allow; i++)
            if ((names[k] = strdup(lb->presence_allow[i])))
                k++;
        *presence = names;
        *npresence = k;
    }
    hush__link_box__free_unpacked(lb, &hsdk_wiping_allocator);
    return e;
}

hush_err hsdk_link_token(hush_client *c, char out[129])
{
    out[0] = '\0';
    uint8_t *b = NULL, *pt = NULL;
    size_t n = 0, ptl = 0;
    hush_err e = hsdk_meta_get_blob(c, "link_token", &b, &n);
    if (!e && b && n) {
        e = hsdk_open(c, TOKEN_AD, b, n, &pt, &ptl);
        if (!e && ptl <= 128) {
            memcpy(out, pt, ptl);
            out[ptl] = '\0';
        }
        if (pt) {
            sodium_memzero(pt, ptl);
            free(pt);
        }
    }
    free(b);
    return e;
}

hush_err hsdk_link_token_clear(hush_client *c)
{
    return hsdk_meta_set_blob(c, "link_token", (const uint8_t *)"", 0);
}

/* ---------------------------------------------------------------------------------------- */
/* device names: nonce (24) || crypto_secretbox(name) under BLAKE2b-256(key = identity private
 * key, "hush-device-name-v1"); the relay stores the bytes, the user's devices read them */

#define NAME_META_AD "hush1|meta|device_name"

static hush_err name_key(hush_client *c, uint8_t key[crypto_secretbox_KEYBYTES])
{
    static const char label[] = "hush-device-name-v1";
    ratchet_identity_key_pair *kp = NULL;
    hush_err e = hsdk_local_identity(c, &kp);
    if (e)
        return e;
    signal_buffer *sb = NULL;
    if (ec_private_key_serialize(&sb, ratchet_identity_key_pair_get_private(kp)) != 0 || signal_buffer_len(sb) != 32)
        e = HUSH_ERR_INTERNAL;
    else
        crypto_generichash(key, crypto_secretbox_KEYBYTES, (const uint8_t *)label, sizeof label - 1,
                           signal_buffer_data(sb), 32);
    signal_buffer_bzero_free(sb);
    SIGNAL_UNREF(kp);
    return e;
}

static int valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > HUSH_DEVICE_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return 0;
    return 1;
}

hush_err hush_device_name_set(hush_client *c, const char *name)
{
    if (!c || !name || !valid_name(name))
        return HUSH_ERR_INVALID_ARG;
    hsdk_lock(c);
    uint8_t *sealed = NULL;
    size_t slen = 0;
    hush_err e = hsdk_seal(c, NAME_META_AD, (const uint8_t *)name, strlen(name), &sealed, &slen);
    if (!e)
        e = hsdk_meta_set_blob(c, "device_name", sealed, slen);
    free(sealed);
    hsdk_unlock(c);
    return e;
}

hush_err hsdk_device_name_sealed(hush_client *c, uint8_t out[HWIRE_MAX_DEVICE_NAME], size_t *len)
{
    *len = 0;
    uint8_t *b = NULL, *pt = NULL;
    size_t n = 0, ptl = 0;
    hush_err e = hsdk_meta_get_blob(c, "device_name", &b, &n);
    if (!e && b && n)
        e = hsdk_open(c, NAME_META_AD, b, n, &pt, &ptl);
    free(b);
    if (e || !pt)
        return e;
    uint8_t key[crypto_secretbox_KEYBYTES];
    if (ptl <= HUSH_DEVICE_NAME_MAX && !(e = name_key(c, key))) {
        randombytes_buf(out, crypto_secretbox_NONCEBYTES);
        crypto_secretbox_easy(out + crypto_secretbox_NONCEBYTES, pt, ptl, out, key);
        *len = crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + ptl;
    }
    sodium_memzero(key, sizeof key);
    free(pt);
    return e;
}

void hsdk_device_name_open(hush_client *c, const uint8_t *sealed, size_t len, char out[HUSH_DEVICE_NAME_MAX + 1])
{
    out[0] = '\0';
    size_t overhead = crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES;
    if (len <= overhead || len - overhead > HUSH_DEVICE_NAME_MAX)
        return;
    uint8_t key[crypto_secretbox_KEYBYTES], pt[HUSH_DEVICE_NAME_MAX];
    size_t ptl = len - overhead;
    if (name_key(c, key) == HUSH_OK &&
        crypto_secretbox_open_easy(pt, sealed + crypto_secretbox_NONCEBYTES, len - crypto_secretbox_NONCEBYTES, sealed,
                                   key) == 0) {
        memcpy(out, pt, ptl);
        out[ptl] = '\0';
        if (strlen(out) != ptl || !valid_name(out))
            out[0] = '\0'; /* not a name we would have sealed */
    }
    sodium_memzero(key, sizeof key);
}
