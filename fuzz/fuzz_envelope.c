/*
 * fuzz_envelope.c - the SDK's inbound path: arbitrary envelopes into a client that has a live
 * session with the sender and the sender's key for a group (decrypt -> store). The first byte
 * picks how the rest is used: raw bytes as an Envelope; a well-formed Envelope of each cipher type
 * (Signal, PreKey, SenderKey for the known group) around fuzzed ciphertext; a genuine pairwise or
 * group message with bytes flipped. Invariant: nothing but a genuine, new message is accepted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "hush.h"
#include "hush.pb-c.h"

static hush_client *g_alice, *g_bob;
static uint8_t *g_genuine, *g_genuine_group;
static size_t g_genuine_len, g_genuine_group_len;
#define GROUP "fuzz-group"

static void must(hush_err e)
{
    if (e)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_deterministic_random();
    char pa[256], pb[256];
    snprintf(pa, sizeof pa, "%s/alice.db", fuzz_tmpdir());
    snprintf(pb, sizeof pb, "%s/bob.db", fuzz_tmpdir());
    uint8_t ka[32] = { 2 }, kb[32] = { 3 };
    hush_open_opts o = { HUSH_DURABILITY_NORMAL };
    must(hush_client_open(pa, ka, &o, &g_alice));
    must(hush_client_open(pb, kb, &o, &g_bob));
    must(hush_device_create(g_alice, "alice", 1));
    must(hush_device_create(g_bob, "bob", 1));
    uint8_t *bundle = NULL, *env = NULL;
    size_t blen = 0, elen = 0;
    must(hush_bundle_export(g_bob, &bundle, &blen));
    must(hush_bundle_import(g_alice, bundle, blen, NULL, NULL));
    hush_free(bundle);
    /* a session in both directions */
    must(hush_encrypt(g_alice, "bob", 1, (const uint8_t *)"hello", 5, NULL, NULL, &env, &elen));
    hush_message *m = NULL;
    must(hush_decrypt(g_bob, "alice", 1, env, elen, &m));
    hush_message_free(m);
    hush_free(env);
    must(hush_encrypt(g_bob, "alice", 1, (const uint8_t *)"hi", 2, NULL, NULL, &env, &elen));
    must(hush_decrypt(g_alice, "bob", 1, env, elen, &m));
    hush_message_free(m);
    hush_free(env);
    /* one genuine message kept aside for the bit-flip mode */
    must(hush_encrypt(g_alice, "bob", 1, (const uint8_t *)"genuine", 7, NULL, NULL, &g_genuine, &g_genuine_len));
    /* alice's sender key for a group, received by bob; one genuine group message kept aside */
    must(hush_group_distribution(g_alice, GROUP, "bob", 1, &env, &elen));
    must(hush_decrypt(g_bob, "alice", 1, env, elen, &m));
    hush_message_free(m);
    hush_free(env);
    must(hush_group_encrypt(g_alice, GROUP, (const uint8_t *)"group genuine", 13, NULL, &g_genuine_group,
                            &g_genuine_group_len));
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* 0 raw, 1 Signal, 2 PreKey, 3 flipped pairwise, 4 SenderKey, 5 flipped group message */
    int mode = data[0] % 6;
    data++;
    size--;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (mode == 0) {
        buf = malloc(size ? size : 1);
        memcpy(buf, data, size);
        len = size;
    } else if (mode == 1 || mode == 2 || mode == 4) {
        Hush__Envelope e = HUSH__ENVELOPE__INIT;
        e.type = mode == 1   ? HUSH__CIPHER_TYPE__CIPHER_SIGNAL
                 : mode == 2 ? HUSH__CIPHER_TYPE__CIPHER_PREKEY
                             : HUSH__CIPHER_TYPE__CIPHER_SENDER_KEY;
        if (mode == 4)
            e.group_id = GROUP;
        e.ciphertext.data = (uint8_t *)data;
        e.ciphertext.len = size;
        len = hush__envelope__get_packed_size(&e);
        buf = malloc(len);
        hush__envelope__pack(&e, buf);
    } else {
        /* flip fuzzer-chosen bytes of a genuine message */
        const uint8_t *orig = mode == 3 ? g_genuine : g_genuine_group;
        len = mode == 3 ? g_genuine_len : g_genuine_group_len;
        buf = malloc(len);
        memcpy(buf, orig, len);
        int changed = 0;
        for (size_t i = 0; i + 1 < size; i += 2) {
            size_t at = data[i] % len;
            if (data[i + 1]) {
                buf[at] ^= data[i + 1];
                changed = 1;
            }
        }
        if (!changed) {
            free(buf);
            return 0;
        }
    }
    hush_message *m = NULL;
    hush_err e = hush_decrypt(g_bob, "alice", 1, buf, len, &m);
    if (e == HUSH_OK) {
        /* only a genuine message can be accepted; a modified copy of one must not be */
        if (mode == 3 && !(m->body_len == 7 && memcmp(m->body, "genuine", 7) == 0))
            abort();
        if (mode == 5 && !(m->body_len == 13 && memcmp(m->body, "group genuine", 13) == 0 &&
                           !strcmp(m->group_id, GROUP)))
            abort();
        if (mode == 4 && m->kind == HUSH_KIND_GROUP_TEXT &&
            !(m->body_len == 13 && memcmp(m->body, "group genuine", 13) == 0))
            abort(); /* fuzzed ciphertext cannot carry any other group text under alice's key */
        hush_message_free(m);
    }
    free(buf);
    return 0;
}
