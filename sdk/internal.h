/*
 * internal.h - libhush private declarations (never installed).
 * Internal helpers use the hush__ double-underscore prefix.
 */
#ifndef HUSH_INTERNAL_H
#define HUSH_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include <signal_protocol.h>

#include "hush.h"
#include "hush_store.h"
#include "hush.pb-c.h"

#define HUSH_SEAL_KEY_BYTES 32
#define HUSH_IDENTITY_PUB_BYTES 33

struct hush_net;

struct hush_client {
    pthread_mutex_t lock; /* recursive; also handed to libsignal as its lock */
    struct hush_net *net; /* the network thread, when started (net.c) */
    pthread_mutex_t net_mu; /* guards `net` against start/stop while someone wakes it */
    hstore *db;
    signal_context *sg;
    signal_protocol_store_context *sc;
    uint8_t seal_key[HUSH_SEAL_KEY_BYTES];
    int has_device;
    char username[HUSH_USERNAME_MAX + 1];
    uint32_t device_id;
    uint32_t registration_id;
    hush_err store_err; /* why the last store callback failed (reset before each library call) */
    /* Set by is_trusted_identity when a different key claims an address, read after rollback. */
    struct {
        int set;
        char name[HUSH_USERNAME_MAX + 1];
        uint32_t device_id;
        uint8_t key[HUSH_IDENTITY_PUB_BYTES];
    } untrusted;
};

/* provider.c */
int hush__provider_install(signal_context *sg);
hush_err hush__selftest(void);

/* seal.c: XChaCha20-Poly1305 with associated data naming the row. */
#define HUSH_SEAL_OVERHEAD (1 + 24 + 16)
hush_err hush__seal(const hush_client *c, const char *ad, const uint8_t *pt, size_t len,
                    uint8_t **out, size_t *out_len);
hush_err hush__open(const hush_client *c, const char *ad, const uint8_t *ct, size_t len,
                    uint8_t **out, size_t *out_len);
/* Builds an associated-data string "<table>|<name>|<n1>|<n2>". */
void hush__ad(char *buf, size_t cap, const char *table, const char *name, size_t name_len,
              int64_t n1, int64_t n2);

/* stores.c */
int hush__stores_install(hush_client *c);
extern const char *const hush__migrations[];
extern const int hush__nmigrations;
hush_err hush__meta_get_int(hush_client *c, const char *key, int64_t *out, int *found);
hush_err hush__meta_set_int(hush_client *c, const char *key, int64_t v);
hush_err hush__local_identity(hush_client *c, ratchet_identity_key_pair **out);
hush_err hush__peer_identity(hush_client *c, const char *name, uint32_t dev, uint8_t key[33], int *found);
/* Keys waiting for the user's decision about (name, dev), oldest first: at most max, their
 * candidate numbers in cand (may be NULL). Caller holds the lock. */
#define HUSH_MAX_PENDING_KEYS 8
/* Largest session or sender-key record stored (HUSH_MAX_SESSION_RECORD; tests lower it). */
extern size_t hush__max_record;
hush_err hush__pending_candidates(hush_client *c, const char *name, uint32_t dev, uint8_t (*keys)[33], int64_t *cand,
                                  size_t max, size_t *n);
hush_err hush__peer_identity_other(hush_client *c, const char *name, uint32_t dev, uint8_t key[33], int *found);
hush_err hush__save_peer_identity(hush_client *c, const char *name, uint32_t dev, const uint8_t *key, size_t len);

/* Buffers handed to the caller: sized so hush_free can wipe them. */
void *hush__alloc(size_t n);
/* Signs msg with the device's Ed25519 authentication key. Only for the relay proofs
 * (hush_auth_proof), whose fixed "hush-auth-v1" prefix no other signed message shares. */
hush_err hush__auth_sign(hush_client *c, const uint8_t *msg, size_t len, uint8_t sig[64]);
/* protobuf-c allocator whose frees wipe (hush__alloc / hush_free underneath). */
extern ProtobufCAllocator hush__wiping_allocator;
/* Moves a plaintext of len bytes into a new buffer of len + 1 (NUL-terminated), wiping and freeing
 * the old one (realloc would free it unwiped). NULL on allocation failure (pt is then wiped and
 * freed too). */
uint8_t *hush__grow_plaintext(uint8_t *pt, size_t len);

/* The current signed prekey, ready for a KeyBundle or PreKeyUpload: on success *spk and *pub are
 * the caller's (SIGNAL_UNREF / signal_buffer_free) and `out` points into them. Caller holds the lock. */
hush_err hush__current_signed_pre_key(hush_client *c, session_signed_pre_key **spk, signal_buffer **pub,
                                      Hush__SignedPreKey *out);

/* errors */
hush_err hush__from_store(hstore_err e);
hush_err hush__from_signal(int rc);

/* Locking helpers */
void hush__lock(hush_client *c);
void hush__unlock(hush_client *c);

/* Validation */
int hush__valid_username(const char *s);
int hush__valid_group_id(const char *s);
uint64_t hush__now_ms(void);

/* Transaction wrapper: savepoint, and on failure rollback. */
hush_err hush__begin(hush_client *c);
hush_err hush__commit(hush_client *c); /* on failure it rolls back itself */
void hush__rollback(hush_client *c);
/* Ends what hush__begin started: commits when e is HUSH_OK, else rolls back. Returns the outcome. */
hush_err hush__end(hush_client *c, hush_err e);

/* history.c */
hush_err hush__history_insert(hush_client *c, const char *peer, uint32_t peer_dev, int outgoing,
                              const uint8_t msg_id[16], int kind, const char *group_id,
                              uint64_t sent_at, const uint8_t *body, size_t len, int64_t *local_id,
                              int *duplicate);

/* history.c: outbox rows */
void hush__outbox_ad(char *ad, size_t cap, const char *peer, const uint8_t mid[16]);
hush_err hush__outbox_insert(hush_client *c, const char *peer, int kind, const uint8_t mid[16], const uint8_t *body,
                             size_t len);

/* messaging.c */
hush_err hush__apply_receipt(hush_client *c, const char *peer, int state, const uint8_t *ids, size_t n);
hush_err hush__encrypt_kind(hush_client *c, const char *peer, uint32_t device_id, int kind, const uint8_t *body,
                            size_t len, const uint8_t mid[HUSH_MESSAGE_ID_BYTES], int history, uint8_t **envelope,
                            size_t *envelope_len);

/* session.c helpers for group.c */
hush_err hush__encrypt_content(hush_client *c, const char *peer, uint32_t dev, Hush__Content *content,
                               uint8_t **env, size_t *env_len);
hush_err hush__content_pack(Hush__Content *content, uint8_t **out, size_t *len);
hush_err hush__process_skdm(hush_client *c, const char *peer, uint32_t dev, const char *group_id,
                            const uint8_t *skdm, size_t len);
hush_err hush__group_decrypt(hush_client *c, const char *peer, uint32_t dev, const char *group_id,
                             const uint8_t *ct, size_t len, signal_buffer **plaintext);

#endif
