/*
 * internal.h - libhush private declarations (never installed).
 * Internal helpers use the prefix hsdk_ (never hush__, which protobuf-c uses for the generated code);
 * those the network thread's files share among themselves, hnet_ (net.h).
 *
 * Errors, everywhere in libhush: the first error wins and ends the work, and whatever was acquired
 * is released on every path - `if ((e = step()) != HUSH_OK) goto out;` with the releases after
 * `out:`, or, inside a transaction, `if (!e) e = next();` steps closed by `e = hsdk_end(c, e)`,
 * which commits on HUSH_OK and rolls back otherwise (docs/ARCHITECTURE.md, "Errors: one idiom").
 * Each table is read and written by one file only (docs/ARCHITECTURE.md, "Where things are").
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
#define HUSH_DB_ID_BYTES 16   /* random, per database file, in every sealed value's associated data */
#define HUSH_ROW_TAG_BYTES 32
#define HUSH_IDENTITY_PUB_BYTES 33

struct hush_net;
struct hsdk_net_hooks;

struct hush_client {
    pthread_mutex_t lock; /* recursive; also handed to libsignal as its lock */
    struct hush_net *net; /* the network thread, when started (net_main.c) */
    pthread_mutex_t net_mu; /* guards `net` and `net_hooks` against start/stop while someone wakes it */
    const struct hsdk_net_hooks *net_hooks; /* installed by the network code at its first start */
    hstore *db;
    char files_dir[1100];  /* "<database>.files": files being sent, and received ones (encrypted) */
    signal_context *sg;
    signal_protocol_store_context *sc;
    uint8_t seal_key[HUSH_SEAL_KEY_BYTES];
    uint8_t db_id[HUSH_DB_ID_BYTES];     /* meta 'db_id', loaded (or made) before anything is opened */
    uint8_t tag_key[HUSH_ROW_TAG_BYTES]; /* keys the row tags of the row digest (seal.c) */
    int has_device;
    char username[HUSH_USERNAME_MAX + 1];
    uint32_t device_id;
    uint32_t registration_id;
    hush_err store_err; /* why the last store callback failed (reset before each library call) */
    int new_session;    /* this operation may start a session (bundle import, PreKey message): the
                           session store then trims archived states (reset by hsdk_begin) */
    /* Set by is_trusted_identity when a different key claims an address, read after rollback. */
    struct {
        int set;
        char name[HUSH_USERNAME_MAX + 1];
        uint32_t device_id;
        uint8_t key[HUSH_IDENTITY_PUB_BYTES];
    } untrusted;
};

/* provider.c */
int hsdk_provider_install(signal_context *sg);
hush_err hsdk_selftest(void);

/* seal.c: XChaCha20-Poly1305 with associated data naming the row. */
#define HUSH_SEAL_OVERHEAD (1 + 24 + 16)
hush_err hsdk_seal(const hush_client *c, const char *ad, const uint8_t *pt, size_t len,
                    uint8_t **out, size_t *out_len);
hush_err hsdk_open(const hush_client *c, const char *ad, const uint8_t *ct, size_t len,
                    uint8_t **out, size_t *out_len);
/* Builds an associated-data string "<table>|<name>|<n1>|<n2>". */
void hsdk_ad(char *buf, size_t cap, const char *table, const char *name, size_t name_len,
              int64_t n1, int64_t n2);
/* The format version of a sealed value (its first byte; 0 when empty). */
int hsdk_seal_version(const uint8_t *ct, size_t len);
/* A version-1 value (no database id in its associated data) opened and sealed again as the
 * current version: *out (malloc, caller frees) or *out NULL when ct is already current. */
hush_err hsdk_reseal_v1(const hush_client *c, const char *ad, const uint8_t *ct, size_t len, uint8_t **out,
                        size_t *out_len);
/* Builds the associated data of the current row of st (label: which table or column). */
typedef void (*hsdk_ad_fn)(char *ad, size_t cap, sqlite3_stmt *st, const char *label);
/* Seals again, as the current version, one sealed column: select_sql returns nkeys key columns
 * first, the sealed one last (any columns the associated data needs between); update_sql takes the new value as ?1 and the keys as ?2... Caller holds
 * the lock, inside a transaction. */
hush_err hsdk_reseal_column(hush_client *c, const char *select_sql, const char *update_sql, int nkeys,
                            hsdk_ad_fn ad_fn, const char *label);
/* Registers hush_row_tag and hush_digest_step (called by the schema's triggers) on the client's
 * connection (ctx: the client, its seal key already derived) and derives the tag key: hstore's
 * `connected` hook, run before the migrations. 0 on success. */
int hsdk_seal_functions_install(sqlite3 *db, void *ctx);
/* The row digest, sealed in meta 'rowdigest'. */
hush_err hsdk_digest_seal(const hush_client *c, const uint8_t d[HUSH_ROW_TAG_BYTES], uint8_t **out, size_t *len);
hush_err hsdk_digest_open(const hush_client *c, const uint8_t *sealed, size_t len, uint8_t d[HUSH_ROW_TAG_BYTES]);

/* stores.c */
int hsdk_stores_install(hush_client *c);
/* HUSH_ERR_DB_TAMPERED unless the schema's triggers and views are exactly the ones the client
 * made (a planted trigger could feed the row digest); then turns triggers on for the connection
 * (hstore opens it with them off). Before any write of a tracked table. */
hush_err hsdk_schema_check(hush_client *c);
/* The digest of the tracked rows as they are now (XOR of their row tags). */
hush_err hsdk_rowdigest_compute(hush_client *c, uint8_t d[HUSH_ROW_TAG_BYTES]);
/* Stores the digest of the rows as they are now (a new database, or after the upgrade). */
hush_err hsdk_rowdigest_reset(hush_client *c);
/* HUSH_ERR_DB_TAMPERED when the stored digest is missing, does not open, or differs from the
 * rows: a tracked row was removed, added or rolled back outside libhush. */
hush_err hsdk_rowdigest_verify(hush_client *c);
/* Seals again every version-1 value of the tables this file owns (meta, local device, keys,
 * sessions, identities). Inside the caller's transaction. */
hush_err hsdk_stores_reseal_v1(hush_client *c);
extern const char *const hsdk_migrations[];
extern const int hsdk_nmigrations;
hush_err hsdk_meta_get_int(hush_client *c, const char *key, int64_t *out, int *found);
hush_err hsdk_meta_set_int(hush_client *c, const char *key, int64_t v);
/* meta blobs and texts (absent: *out NULL / ""). Caller holds the lock. */
hush_err hsdk_meta_get_blob(hush_client *c, const char *key, uint8_t **out, size_t *len);
hush_err hsdk_meta_set_blob(hush_client *c, const char *key, const uint8_t *v, size_t len);
hush_err hsdk_meta_get_text(hush_client *c, const char *key, char *out, size_t cap);
hush_err hsdk_local_identity(hush_client *c, ratchet_identity_key_pair **out);
hush_err hsdk_peer_identity(hush_client *c, const char *name, uint32_t dev, uint8_t key[33], int *found);
/* Keys waiting for the user's decision about (name, dev), oldest first: at most max, their
 * candidate numbers in cand (may be NULL). Caller holds the lock. */
#define HUSH_MAX_PENDING_KEYS 8
/* Largest session or sender-key record stored (HUSH_MAX_SESSION_RECORD; tests lower it). */
extern size_t hsdk_max_record;
hush_err hsdk_pending_candidates(hush_client *c, const char *name, uint32_t dev, uint8_t (*keys)[33], int64_t *cand,
                                  size_t max, size_t *n);
hush_err hsdk_peer_identity_other(hush_client *c, const char *name, uint32_t dev, uint8_t key[33], int *found);
/* Calls fn for every trusted identity on record (name, device, key) until fn returns non-zero. */
hush_err hsdk_identities_each(hush_client *c, int (*fn)(void *ctx, const char *name, uint32_t dev, const uint8_t key[33]),
                              void *ctx);
hush_err hsdk_save_peer_identity(hush_client *c, const char *name, uint32_t dev, const uint8_t *key, size_t len);
/* The local device's row (local_device): loaded at open, written once by hush_device_create;
 * the authentication secret comes back opened (caller wipes and frees). Caller holds the lock. */
hush_err hsdk_device_load(hush_client *c, char username[HUSH_USERNAME_MAX + 1], uint32_t *device_id,
                          uint32_t *registration_id, int *found);
hush_err hsdk_device_insert(hush_client *c, const char *username, uint32_t device_id, uint32_t registration_id,
                            const uint8_t *identity_pub, size_t identity_pub_len, const uint8_t *sealed_identity_priv,
                            size_t sealed_identity_priv_len, const uint8_t auth_pub[32], const uint8_t *sealed_auth,
                            size_t sealed_auth_len);
hush_err hsdk_device_auth_public(hush_client *c, uint8_t pub[32]);
hush_err hsdk_device_auth_secret(hush_client *c, uint8_t **sk, size_t *len);
/* Prekey bookkeeping (pre_keys, signed_pre_keys, sender_keys) beyond libsignal's store interface.
 * Caller holds the lock. One-time prekeys are counted and listed without the last-resort key:
 * the stock (all, and those never handed out in an upload), the oldest not handed out. */
hush_err hsdk_prekey_stock(hush_client *c, uint32_t *unpublished, uint32_t *total);
hush_err hsdk_prekeys_unexported(hush_client *c, uint32_t *ids, size_t max, size_t *n);
hush_err hsdk_prekey_mark_exported(hush_client *c, uint32_t id, int exported);
hush_err hsdk_signed_prekey_created(hush_client *c, uint32_t id, int64_t *created_at, int *found);
hush_err hsdk_signed_prekeys_retire(hush_client *c, uint32_t keep_id, uint64_t older_than_ms);
hush_err hsdk_sender_key_forget(hush_client *c, const char *group_id, const char *name, uint32_t dev);
/* 1 in *any when some key of `name` waits for a decision. Caller holds the lock. */
hush_err hsdk_pending_any(hush_client *c, const char *name, int *any);
/* Removes every key waiting for a decision about (name, dev). Caller holds the lock. */
hush_err hsdk_pending_delete(hush_client *c, const char *name, uint32_t dev);
/* After a library call failed because a different key claimed an address (c->untrusted): keeps
 * that key as a pending candidate and returns HUSH_ERR_IDENTITY_CHANGED (or the storage error). */
hush_err hsdk_after_untrusted(hush_client *c);

/* held.c: envelopes held for an identity decision (table pending_inbox). Caller holds the lock. */
hush_err hsdk_held_stats(hush_client *c, const char *peer, uint32_t dev, int64_t *peer_count, int64_t *peer_bytes,
                         int64_t *dev_count);
hush_err hsdk_held_put(hush_client *c, const char *peer, uint32_t dev, const uint8_t *env, size_t len, uint64_t now_ms);
/* The oldest held envelope whose sender is no longer pending (0: none); *env is the caller's. */
int64_t hsdk_held_next_released(hush_client *c, char peer[HUSH_USERNAME_MAX + 1], uint32_t *dev, uint8_t **env,
                                size_t *len);
void hsdk_held_delete(hush_client *c, int64_t id);
hush_err hsdk_held_drop(hush_client *c, const char *peer, uint32_t dev);

/* peers.c: the device ids of each contact as the relay last listed them (table peer_devices).
 * Caller holds the lock for _forget and _add; _list takes it. */
int hsdk_peers_list(hush_client *c, const char *peer, uint32_t *devs, int max);
void hsdk_peers_forget(hush_client *c, const char *peer);
hush_err hsdk_peers_add(hush_client *c, const char *peer, uint32_t dev, uint64_t now_ms);

/* client.c: a device linked to an existing account: the account's identity key pair, a fresh
 * registration id, auth key and prekeys. Inside the caller's transaction; caller holds the lock. */
hush_err hsdk_device_create_linked(hush_client *c, const char *username, uint32_t device_id, const uint8_t id_pub[33],
                                   const uint8_t id_priv[32]);

/* After a rolled-back transaction that created the device: the client has no device again. */
void hsdk_forget_device(hush_client *c);

/* link.c: linking a device (see the file's comment). The code: "hush-link-1:<address>:<key>". */
int hsdk_link_code_format(char *out, size_t cap, const char *address, const uint8_t pk[32]);
hush_err hsdk_link_code_parse(const char *code, char address[33], uint8_t pk[32]);
/* The sealed link box for the device reserved by (token, device_id). Takes the lock. *box is
 * malloc'd (free). */
hush_err hsdk_link_box_make(hush_client *c, const char *token, uint32_t device_id, const char *origin,
                            const uint8_t pk[32], uint8_t **box, size_t *box_len);
/* Opens a link box with the ephemeral key pair and creates the device from it (with its link
 * token and trusted contacts) in one transaction. Takes the lock. *presence: the presence allow
 * list to apply (malloc'd strings in a malloc'd array, the caller frees both). */
hush_err hsdk_link_box_open(hush_client *c, const uint8_t *box, size_t len, const uint8_t pk[32], const uint8_t sk[32],
                            char *const **presence, size_t *npresence);
/* The same after the sealed box was opened: plain is a serialized LinkBox (fuzzed directly). */
hush_err hsdk_link_box_apply(hush_client *c, const uint8_t *plain, size_t plen, char *const **presence,
                             size_t *npresence);
/* This device's name (hush_device_name_set) sealed for the relay to keep; *len 0 when none. Caller
 * holds the lock. */
hush_err hsdk_device_name_sealed(hush_client *c, uint8_t out[255], size_t *len);
/* A device name the relay listed, opened; "" when it does not open (not sealed by this user). */
void hsdk_device_name_open(hush_client *c, const uint8_t *sealed, size_t len, char out[HUSH_DEVICE_NAME_MAX + 1]);
/* The link token this device registers with ("" when none); cleared once registered. Caller
 * holds the lock. */
hush_err hsdk_link_token(hush_client *c, char out[129]);
hush_err hsdk_link_token_clear(hush_client *c);

/* recovery.c: the account's recovery code. keys: the Ed25519 pair of a code's secret. parse:
 * a code as typed. public_key: the pending code's public key, a new code made when none is
 * pending (caller holds the lock). */
void hsdk_recovery_keys(const uint8_t secret[16], uint8_t pk[32], uint8_t sk[64]);
hush_err hsdk_recovery_code_parse(const char *code, uint8_t secret[16]);
hush_err hsdk_recovery_public_key(hush_client *c, uint8_t pk[32]);

/* Buffers handed to the caller: sized so hush_free can wipe them. */
void *hsdk_alloc(size_t n);
/* Signs msg with the device's Ed25519 authentication key. Only for the relay proofs
 * (hush_auth_proof), whose fixed "hush-auth-v1" prefix no other signed message shares. */
hush_err hsdk_auth_sign(hush_client *c, const uint8_t *msg, size_t len, uint8_t sig[64]);
/* protobuf-c allocator whose frees wipe (hsdk_alloc / hush_free underneath). */
extern ProtobufCAllocator hsdk_wiping_allocator;
/* Moves a plaintext of len bytes into a new buffer of len + 1 (NUL-terminated), wiping and freeing
 * the old one (realloc would free it unwiped). NULL on allocation failure (pt is then wiped and
 * freed too). */
uint8_t *hsdk_grow_plaintext(uint8_t *pt, size_t len);

/* The current signed prekey, ready for a KeyBundle or PreKeyUpload: on success *spk and *pub are
 * the caller's (SIGNAL_UNREF / signal_buffer_free) and `out` points into them. Caller holds the lock. */
hush_err hsdk_current_signed_pre_key(hush_client *c, session_signed_pre_key **spk, signal_buffer **pub,
                                      Hush__SignedPreKey *out);

/* core.c: the network thread as a plug-in. The network code sets c->net_hooks (under net_mu) when
 * it starts;
 * the rest of the SDK wakes or stops it through these, never by name, so nothing below the network
 * code depends on it. Each is a no-op before the first start. Safe from any thread. */
struct hsdk_net_hooks {
    void (*wake)(hush_client *c, int flags); /* NET_WAKE_* (net.h) */
    void (*stop)(hush_client *c);
};
void hsdk_net_wake(hush_client *c, int flags);
void hsdk_net_stop(hush_client *c);
#define NET_WAKE_OUTBOX 1
#define NET_WAKE_PRESENCE 2
#define NET_WAKE_TYPING 4
#define NET_WAKE_IDENTITY 8
#define NET_WAKE_LINK 16
#define NET_WAKE_PUSH 32
#define NET_WAKE_FILES 64

/* One integer from a one-row query (a count, a meta value): prepare, bind `arg` to ?1 when not
 * NULL, step, read column 0 (0 when there is no row), reset, map the error. Caller holds the lock. */
hush_err hsdk_query_int(hush_client *c, const char *sql, const int64_t *arg, int64_t *out);

/* errors */
hush_err hsdk_from_store(hstore_err e);
hush_err hsdk_from_signal(int rc);

/* Locking helpers */
void hsdk_lock(hush_client *c);
void hsdk_unlock(hush_client *c);

/* Validation */
int hsdk_valid_username(const char *s);
int hsdk_valid_group_id(const char *s);
/* A room's id as the API names it (32 lowercase hex digits); the outbox's name for a room ("#"
 * and the id in 22 characters of base64: the peer column holds a username's length), and back
 * (1 when it is one). */
int hsdk_room_is_id(const char *s);
void hsdk_room_outbox_peer(const uint8_t id[16], char out[HUSH_USERNAME_MAX + 1]);
int hsdk_room_outbox_id(const char *peer, uint8_t id[16]);
/* Device ids are 1..INT32_MAX (libsignal stores them as int). */
int hsdk_valid_device(uint32_t d);
uint64_t hsdk_now_ms(void);

/* Transaction wrapper: savepoint, and on failure rollback. */
hush_err hsdk_begin(hush_client *c);
hush_err hsdk_commit(hush_client *c); /* on failure it rolls back itself */
void hsdk_rollback(hush_client *c);
/* Ends what hsdk_begin started: commits when e is HUSH_OK, else rolls back. Returns the outcome. */
hush_err hsdk_end(hush_client *c, hush_err e);

/* history.c */
hush_err hsdk_history_insert(hush_client *c, const char *peer, uint32_t peer_dev, int outgoing,
                              const uint8_t msg_id[16], int kind, const char *group_id,
                              uint64_t sent_at, const uint8_t *body, size_t len, int64_t *local_id,
                              int *duplicate);
/* Deletes one history row, giving its message id (*found 0 when it had none). HUSH_ERR_NOT_FOUND
 * when there is no such row. Caller holds the lock. */
hush_err hsdk_history_delete(hush_client *c, int64_t local_id, uint8_t mid[16], int *found);
/* A message this user sent to room `group` (its history row): kind, time and body (malloc'd, the
 * caller frees). HUSH_ERR_NOT_FOUND when there is none. Caller holds the lock. */
hush_err hsdk_history_sent_to_group(hush_client *c, const char *group, const uint8_t mid[16], int *kind,
                                    uint64_t *sent_at, uint8_t **body, size_t *len);
/* Whether any history row has this message id (1 when unsure). Caller holds the lock. */
int hsdk_history_has_message(hush_client *c, const uint8_t mid[16]);
/* Empties the WAL so deleted rows' old pages leave the disk (best effort). Caller holds the lock. */
void hsdk_truncate_wal(hush_client *c);
/* Seals again every version-1 history and outbox body. Inside the caller's transaction. */
hush_err hsdk_history_reseal_v1(hush_client *c);

/* history.c: outbox rows */
void hsdk_outbox_ad(char *ad, size_t cap, const char *peer, const uint8_t mid[16]);
hush_err hsdk_outbox_insert(hush_client *c, const char *peer, int kind, const uint8_t mid[16], const uint8_t *body,
                             size_t len);
/* Outgoing messages' states, forward only (a receipt never moves one back), and received rows'
 * read and notified marks. Caller holds the lock. */
hush_err hsdk_apply_receipt(hush_client *c, const char *peer, int state, const uint8_t *ids, size_t n);
hush_err hsdk_set_message_state(hush_client *c, const uint8_t mid[16], int state);
/* A received message: its sender, id, read mark and group ("" when pairwise). HUSH_ERR_NOT_FOUND
 * otherwise. */
hush_err hsdk_history_received(hush_client *c, int64_t local_id, char peer[HUSH_USERNAME_MAX + 1], uint8_t mid[16],
                               int *read, char group[HUSH_GROUP_ID_MAX + 1]);
/* 1 when mid is a message this user sent to a room (its id in group). Caller holds the lock. */
int hsdk_history_room_of_sent(hush_client *c, const uint8_t mid[16], char group[HUSH_GROUP_ID_MAX + 1]);
hush_err hsdk_history_set_read(hush_client *c, int64_t local_id);
void hsdk_history_set_notified(hush_client *c, int64_t local_id);
/* The oldest message stored but not yet reported to the app (0: none), with its peer and group
 * ("" when pairwise). */
int64_t hsdk_history_next_unnotified(hush_client *c, char peer[HUSH_USERNAME_MAX + 1],
                                     char group[HUSH_GROUP_ID_MAX + 1]);
/* The outbox as the network thread walks it: the first row after `after` not addressed to
 * skip_peer, body opened (caller frees *body). 1 if found. */
int hsdk_outbox_next_after(hush_client *c, int64_t after, const char *skip_peer, int64_t *id,
                           char peer[HUSH_USERNAME_MAX + 1], uint8_t mid[16], int *kind, uint8_t **body, size_t *len);
hush_err hsdk_outbox_empty(hush_client *c, int *empty);
/* Takes a queued text out (HUSH_ERR_NOT_FOUND when it is not queued) with its envelopes. */
hush_err hsdk_outbox_remove_text(hush_client *c, const uint8_t mid[16]);
/* An acknowledged or failed row goes, with its envelopes. */
void hsdk_outbox_remove(hush_client *c, int64_t outbox_id, const uint8_t mid[16]);
/* The envelopes made for an outbox row, one per device, kept so a retry sends the same bytes. */
/* The envelope made for device (name, dev) of outbox message mid (name: the peer, or our own
 * username for the copies to our other devices). get: malloc'd, NULL when none. */
uint8_t *hsdk_envelope_get(hush_client *c, const uint8_t mid[16], const char *name, uint32_t dev, size_t *len);
hush_err hsdk_envelope_put(hush_client *c, const uint8_t mid[16], const char *name, uint32_t dev, const uint8_t *env,
                           size_t len);
/* Read marks made on another of our devices: our received pairwise messages from peer with these
 * ids become read. Caller holds the lock. */
hush_err hsdk_history_sync_read(hush_client *c, const char *peer, const uint8_t *ids, size_t n);
void hsdk_envelopes_forget(hush_client *c, const uint8_t mid[16]);

/* attach.c: files (table attachments) and their encryption. Caller holds the lock for the row
 * functions. */
#define HSDK_FILE_CHUNK 65536
uint64_t hsdk_file_padded(uint64_t size);    /* the plaintext length after padding */
uint64_t hsdk_file_blob_size(uint64_t size); /* the ciphertext's length */
/* "<files dir>/<hex id><suffix>" */
void hsdk_file_path(const hush_client *c, const uint8_t mid[16], const char *suffix, char *out, size_t cap);
/* Encrypts the next `size` bytes of `in` into out_path (written under a temporary name, synced,
 * renamed), with the digest of what was written. */
hush_err hsdk_file_encrypt(int in, uint64_t size, const char *out_path, const uint8_t key[32], uint8_t digest[32]);
/* SHA-256 of a file, and its length. HUSH_ERR_NOT_FOUND when it does not exist. */
hush_err hsdk_file_digest(const char *path, uint8_t digest[32], uint64_t *len);
/* A file message's body, checked (lengths, sizes, names); NULL when malformed. hsdk_pointer_free. */
Hush__AttachmentPointer *hsdk_pointer_parse(const uint8_t *body, size_t len);
void hsdk_pointer_free(Hush__AttachmentPointer *p);
struct hsdk_file {
    uint8_t mid[16];
    int outgoing;
    char peer[HUSH_USERNAME_MAX + 1];
    int state;        /* hush_file_state */
    uint64_t done;
    int error;        /* FAILED: why (hush_err) */
    Hush__AttachmentPointer *p; /* owned (hsdk_file_release) */
};
hush_err hsdk_file_insert(hush_client *c, const uint8_t mid[16], int outgoing, const char *peer, int state,
                          const Hush__AttachmentPointer *p, int *duplicate);
hush_err hsdk_file_load(hush_client *c, const uint8_t mid[16], struct hsdk_file *f);
void hsdk_file_release(struct hsdk_file *f);
/* A file's state alone (no pointer opened: asked at every chunk); 0 when there is no such file. */
int hsdk_file_state(hush_client *c, const uint8_t mid[16]);
hush_err hsdk_file_set_state(hush_client *c, const uint8_t mid[16], int state, uint64_t done, hush_err error);
/* Writes f->p back (sealed): after the relay named the upload. */
hush_err hsdk_file_set_pointer(hush_client *c, const struct hsdk_file *f);
/* The next upload or download to run (uploads first, oldest first), not among skip (nskip ids of
 * 16 bytes). 1 when found. */
int hsdk_file_next_active(hush_client *c, uint8_t mid[16], const uint8_t *skip, size_t nskip);
/* At open: file rows whose message is no longer in the history go, with their files, and so do
 * files of the files directory that belong to no row (what a crash during hush_send_file leaves).
 * Best effort. Takes the lock. */
void hsdk_files_prune(hush_client *c);

/* messaging.c */
/* The stored presence list of `kind` (PRESENCE_ALLOW / _SUBSCRIBE, net.h): up to max names, each
 * the caller's to free. Caller holds the lock. */
size_t hsdk_presence_prefs(hush_client *c, int kind, char **names, size_t max);
hush_err hsdk_encrypt_kind(hush_client *c, const char *peer, uint32_t device_id, int kind, const uint8_t *body,
                            size_t len, const uint8_t mid[HUSH_MESSAGE_ID_BYTES], int history, uint8_t **envelope,
                            size_t *envelope_len);
/* The same for a copy to another device of our own user (peer = our username): the Content
 * carries sync_peer, the conversation the message belongs to. */
hush_err hsdk_encrypt_sync(hush_client *c, const char *peer, uint32_t device_id, int kind, const uint8_t *body,
                            size_t len, const uint8_t mid[HUSH_MESSAGE_ID_BYTES], int history, const char *sync_peer,
                            uint8_t **envelope, size_t *envelope_len);

/* encrypt.c: pairwise encryption (group.c sends sender keys with it) */
hush_err hsdk_encrypt_content(hush_client *c, const char *peer, uint32_t dev, Hush__Content *content,
                               uint8_t **env, size_t *env_len);
hush_err hsdk_content_pack(Hush__Content *content, uint8_t **out, size_t *len);

/* rooms.c: rooms (groups over the network). A room's state is its last accepted change. */
#define HSDK_ROOM_CHANGE_MAX (128u * 1024) /* a RoomChange's bytes, checked before parsing */
struct hsdk_room {
    uint8_t id[16];
    char hex[HUSH_ROOM_ID_LEN + 1];  /* the id as the API and the sender-key group id name it */
    Hush__RoomChange *ch;            /* owned: hsdk_room_release */
    Hush__RoomState *st;             /* owned: the state ch->state holds, checked */
    uint8_t hash[32];                /* SHA-256 of ch->state: what the next change names */
    int member;                      /* this device's user is in st->members (hsdk_room_load) */
    int64_t key_since;               /* when this device's sender key for the room was made (0: none) */
};
/* What a change did: which room, and in words for the history ("ann added bob"). */
struct hsdk_room_event {
    uint8_t id[16];
    char hex[HUSH_ROOM_ID_LEN + 1];
    char text[512];
};
int hsdk_room_name_ok(const char *s, size_t len);
/* A RoomChange parsed and its state checked (sizes, names, lists); HUSH_ERR_BAD_MESSAGE otherwise.
 * On success r is the caller's (hsdk_room_release); nothing to release on error. */
hush_err hsdk_room_parse(const uint8_t *buf, size_t len, struct hsdk_room *r);
void hsdk_room_release(struct hsdk_room *r);
/* The room with this id (*found 0: none; nothing to release then). Caller holds the lock. */
hush_err hsdk_room_load(hush_client *c, const uint8_t id[16], struct hsdk_room *r, int *found);
/* A change received from (from, dev) over its pairwise session, checked and applied (see the
 * file's comment). HUSH_ERR_DUPLICATE: the state held already; HUSH_ERR_NOT_ALLOWED,
 * HUSH_ERR_GROUP_CONFLICT, HUSH_ERR_BAD_MESSAGE: rejected. Inside the caller's transaction. */
hush_err hsdk_room_receive(hush_client *c, const char *from, uint32_t dev, const uint8_t *buf, size_t len,
                           struct hsdk_room_event *ev);
/* Whether a group message (or sender key) for group_id may come from `from`: for a room, this
 * user and `from` must be members of it (HUSH_ERR_NOT_ALLOWED); any other group id is a group of
 * the local sender-key functions (HUSH_OK). Caller holds the lock. */
hush_err hsdk_room_message_allowed(hush_client *c, const char *group_id, const char *from);
/* The room `group` (its id) when this user may send to it: its outbox name in peer. HUSH_ERR_NOT_FOUND,
 * HUSH_ERR_NOT_ALLOWED (not a member), HUSH_ERR_INVALID_ARG otherwise. Caller holds the lock. */
hush_err hsdk_room_sender(hush_client *c, const char *group, char peer[HUSH_USERNAME_MAX + 1]);
/* This device's sender key for the room: its id (*exists 0: none yet), after replacing it when it
 * is due (older than 14 days, or handed to a device that is no longer a member's). Then: key_made
 * records a new key's birth; key_has / key_put tell and record which device was handed which key
 * by which send; keys_forget_message forgets what a send's forgotten envelopes carried. Caller
 * holds the lock, inside a transaction (key_has: any time). */
hush_err hsdk_room_key_due(hush_client *c, struct hsdk_room *r, uint32_t *key_id, int *exists);
hush_err hsdk_room_key_made(hush_client *c, struct hsdk_room *r);
int hsdk_room_key_has(hush_client *c, const struct hsdk_room *r, const char *name, uint32_t dev, uint32_t key_id);
hush_err hsdk_room_key_put(hush_client *c, const struct hsdk_room *r, const char *name, uint32_t dev, uint32_t key_id,
                           const uint8_t mid[16]);
hush_err hsdk_room_keys_forget_message(hush_client *c, const uint8_t mid[16]);
/* (name, dev) is to be handed this device's key for the room again with the next message. */
hush_err hsdk_room_key_forget_device(hush_client *c, const char *group, const char *name, uint32_t dev);
/* Receipts in rooms (table room_receipts). Rooms of more than HSDK_ROOM_RECEIPTS_MAX members send
 * none. wants_receipts: 1 when the room `group` is small enough. receipt: member's state (2
 * delivered, 3 read) for our message mid in room group, kept per member; the message's own state
 * becomes the lowest of its current members' (*state, or 0 when it did not move). Caller holds
 * the lock, inside a transaction. */
#define HSDK_ROOM_RECEIPTS_MAX 50
int hsdk_room_wants_receipts(hush_client *c, const char *group);
hush_err hsdk_room_receipt(hush_client *c, const char *group, const char *member, int state, const uint8_t mid[16],
                           int *moved);

/* Presence shared with rooms (table room_presence). presence_told: another device of ours decided
 * at at_ms whether this user shares its presence with room group_id (a later decision held here
 * wins). presence_names: appends to names[0..n) (strings the caller frees) every member of the
 * rooms that count, each once, not this user, not already in the list, up to max names; returns
 * the new count. With allow set, the rooms this user shares its presence with; else every room
 * it is in (those it shares with first). Caller holds the lock (told: inside a transaction). */
hush_err hsdk_room_presence_told(hush_client *c, const char *group_id, int share, uint64_t at_ms);
size_t hsdk_room_presence_names(hush_client *c, int allow, char **names, size_t n, size_t max);

/* group.c: this device's sender key for a group. Caller holds the lock, inside a transaction.
 * key_id: the current key's id (*exists 0 when there is none). skdm_envelope: a pairwise envelope
 * to (member, dev) carrying the key (made when there is none yet). encrypt_content: one envelope
 * (CIPHER_SENDER_KEY) of content for every device holding the key (made when there is none). */
hush_err hsdk_group_key_id(hush_client *c, const char *group_id, uint32_t *key_id, int *exists);
hush_err hsdk_group_skdm_envelope(hush_client *c, const char *group_id, const char *member, uint32_t dev,
                                  uint8_t **env, size_t *env_len);
hush_err hsdk_group_encrypt_content(hush_client *c, const char *group_id, Hush__Content *content, uint8_t **env,
                                    size_t *env_len);
/* decrypt.c: a delivery with a shared envelope (a room send) and this device's own part (may be
 * empty): a room change sent once to all (its own part holds the key), or a room message (its own
 * part, a sender key, processed first). The outcome is the shared one's, or a failure of the own
 * part that must be retried (storage) or held (identity change). */
#define HSDK_ROOM_CHANGE_AD "hush-room-v1" /* additional data of a change's shared encryption */
hush_err hsdk_decrypt_shared(hush_client *c, const char *peer, uint32_t dev, const uint8_t *own, size_t own_len,
                             const uint8_t *shared, size_t shared_len, hush_message **out);

/* group.c: what decrypt.c hands over */
hush_err hsdk_process_skdm(hush_client *c, const char *peer, uint32_t dev, const char *group_id,
                            const uint8_t *skdm, size_t len);
hush_err hsdk_group_decrypt(hush_client *c, const char *peer, uint32_t dev, const char *group_id,
                             const uint8_t *ct, size_t len, signal_buffer **plaintext);

#endif
