/*
 * hush.h - libhush, the Hush client SDK: end-to-end encryption (Signal protocol: X3DH + Double
 * Ratchet + sender keys) over a sealed SQLite store.
 *
 * Conventions
 * - Every function that can fail returns a hush_err; HUSH_OK (0) is success. hush_strerror()
 *   gives a message for any code.
 * - Out-parameters are set to NULL / 0 on entry and are handed over only on success: on any error
 *   there is nothing to free.
 * - Buffers returned through `uint8_t **` are owned by the caller and freed with hush_free().
 *   Structures have their own free function, named beside them.
 * - Input pointers are borrowed for the duration of the call only; libhush copies what it keeps.
 * - Strings are NUL-terminated UTF-8. Usernames are 3..32 characters of [a-z0-9._-].
 *
 * Threads
 * - A hush_client may be used from any thread: every call takes the client's (recursive) mutex,
 *   so calls on one client are serialised. Separate clients share nothing and run in parallel.
 * - hush_client_open/hush_client_close must not race with other calls on the same client.
 * - hush_strerror, hush_free, hush_message_free and hush_version are safe from any thread.
 */
#ifndef HUSH_H
#define HUSH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define HUSH_MUST_CHECK __attribute__((warn_unused_result))
#else
#define HUSH_MUST_CHECK
#endif

#define HUSH_DB_KEY_BYTES 32          /* database key the app supplies */
#define HUSH_USERNAME_MIN 3
#define HUSH_USERNAME_MAX 32
#define HUSH_MESSAGE_ID_BYTES 16
#define HUSH_SAFETY_NUMBER_LEN 60     /* digits, without the terminating NUL */
#define HUSH_SAFETY_ITERATIONS 5200
#define HUSH_MAX_BODY (64 * 1024)     /* largest plaintext body accepted by hush_encrypt */
#define HUSH_MAX_ENVELOPE (256 * 1024) /* largest envelope hush_decrypt will parse */
#define HUSH_LINK_CODE_MAX 128         /* longest link code (hush_net_start_link, hush_device_link) */
#define HUSH_RECOVERY_CODE_LEN 39      /* a recovery code: 32 hex digits in groups of 4 */
#define HUSH_DEVICE_NAME_MAX 64        /* a device's name, in bytes (UTF-8, no control characters) */
#define HUSH_MAX_BUNDLE (4 * 1024)    /* largest bundle hush_bundle_import will parse */
#define HUSH_GROUP_ID_MAX 64
#define HUSH_ONE_TIME_PREKEYS 100
#define HUSH_LAST_RESORT_PREKEY_ID 0xFFFFFFu
#define HUSH_MAX_SESSION_RECORD (2u << 20) /* a peer's session record past this is not stored: its
                                              message fails (HUSH_ERR_TOO_BIG) and is dropped */
#define HUSH_MAX_ARCHIVED_STATES 4 /* earlier sessions a session record keeps for late messages */
#define HUSH_MAX_SKIPPED_KEYS 2000 /* keys of skipped (late) messages a session record keeps in all,
                                      across its chains and earlier sessions; the oldest go first,
                                      and a message later than that is dropped as a duplicate */
#define HUSH_MAX_LOCAL_PREKEYS 1000 /* one-time prekeys a device keeps at most (the relay's cap too) */

typedef enum hush_err {
    HUSH_OK = 0,
    HUSH_ERR_INVALID_ARG,      /* a NULL, out-of-range or malformed argument */
    HUSH_ERR_NOMEM,            /* allocation failed */
    HUSH_ERR_STORAGE,          /* the local database failed (I/O, disk full, locked); nothing was changed */
    HUSH_ERR_DB_CORRUPT,       /* the database file is not a database, truncated or corrupt */
    HUSH_ERR_DB_TOO_NEW,       /* the database was written by a newer libhush */
    HUSH_ERR_DB_KEY,           /* wrong database key, or a sealed row failed authentication */
    HUSH_ERR_SELFTEST,         /* the crypto provider failed its known-answer test: refusing to run */
    HUSH_ERR_NO_DEVICE,        /* no local device yet: call hush_device_create */
    HUSH_ERR_DEVICE_EXISTS,    /* hush_device_create on a database that already has a device */
    HUSH_ERR_BAD_BUNDLE,       /* a key bundle is malformed (missing or short keys, bad sizes) */
    HUSH_ERR_BAD_SIGNATURE,    /* a key bundle's signed prekey signature does not verify */
    HUSH_ERR_NO_SESSION,       /* no session with that device: import its bundle first */
    HUSH_ERR_BAD_MESSAGE,      /* the message is malformed, fails authentication, or claims to be
                                  too far ahead (2000+ messages); it was dropped, state untouched */
    HUSH_ERR_DUPLICATE,        /* the message was already received: drop it silently (not shown twice) */
    HUSH_ERR_STALE_PREKEY,     /* the message used a prekey this device no longer has: the sender
                                  must start again from a fresh bundle */
    HUSH_ERR_IDENTITY_CHANGED, /* the peer's identity key differs from the one on record: see
                                  hush_identity_pending / _accept / _reject */
    HUSH_ERR_NOT_FOUND,        /* no such peer, message or pending change */
    HUSH_ERR_TOO_BIG,          /* input over its documented size cap */
    HUSH_ERR_SAFETY_MISMATCH,  /* a scanned safety code does not match this conversation */
    HUSH_ERR_NO_GROUP_SESSION, /* no sender key for that group member: ask them to redistribute */
    HUSH_ERR_INTERNAL,         /* an unexpected library failure (a bug: please report) */
    HUSH_ERR_NETWORK,          /* the relay cannot be reached or the connection dropped */
    HUSH_ERR_AUTH_FAILED,      /* the relay refused this device's login (wrong relay or keys) */
    HUSH_ERR_USERNAME_TAKEN,   /* registration: the name is in use on this relay */
    HUSH_ERR_REGISTRATION_REFUSED, /* registration closed, invite missing, unknown or used */
    HUSH_ERR_UNKNOWN_USER,     /* the relay has no such user */
    HUSH_ERR_TIMEOUT,          /* a wait ran out */
    HUSH_ERR_NOT_RUNNING,      /* the network thread is not running (hush_net_start) */
    HUSH_ERR_RELAY,            /* the relay answered with an error this version does not expect */
    HUSH_ERR_SESSION_REPLACED, /* another connection (another process or copy of this database)
                                  logged in as this device: the network stops, as two connections
                                  of one device would take turns replacing each other */
    HUSH_ERR_TOO_MANY_DEVICES, /* the account has the most devices the relay allows */
    HUSH_ERR_LINK_FAILED,      /* linking a device: the link code expired or was used, or the new
                                  device's link was refused (start again with a new code) */
    HUSH_ERR_DEVICE_REMOVED,   /* this device was removed from its account (by itself, another of its
                                  devices or the relay's operator): the network stops for good */
    HUSH_ERR_DB_TAMPERED,      /* the database was changed outside libhush: key, session or identity
                                  rows removed, added or rolled back (a restored old copy, a planted
                                  trigger). Refused: using it could reuse message keys or trust a key
                                  nobody verified. Recover or link this device again on a new database */
    HUSH_ERR_PUSH_GONE,        /* (on_error) the push service said this device's push endpoint no
                                  longer exists: libhush forgot it; ask the push distributor for a
                                  new one and pass it to hush_push_register */
    HUSH_ERR_NOT_ALLOWED,      /* a room: this user is not a member, or not an admin for that change;
                                  (on_error) a room message or change from someone not allowed to
                                  send it was dropped */
    HUSH_ERR_GROUP_CONFLICT    /* (on_error) a room change that does not follow the room's current
                                  version (replayed, missed or made at the same time as another
                                  admin's) was rejected: the room stays as it was */
} hush_err;

#define HUSH_ERR_LAST HUSH_ERR_GROUP_CONFLICT

/* Never NULL; static storage. */
const char *hush_strerror(hush_err err);
const char *hush_version(void);

/* Frees a buffer returned by libhush. NULL is accepted. Secret-bearing buffers are wiped. */
void hush_free(void *p);

typedef struct hush_client hush_client;

/* Durability of local commits: FULL (default) survives power loss; NORMAL survives a crash of the
 * app but may lose the last commits on power loss. */
typedef enum hush_durability {
    HUSH_DURABILITY_FULL = 0,
    HUSH_DURABILITY_NORMAL = 1
} hush_durability;

typedef struct hush_open_opts {
    hush_durability durability;
} hush_open_opts;

/*
 * Opens (creating if absent) the client database at `db_path`, sealed with `db_key` (32 bytes the
 * app keeps in the platform keystore). The crypto provider's self-test runs once per process first.
 * `opts` may be NULL for defaults. On success *out is a new client owned by the caller (free with
 * hush_client_close). Errors: HUSH_ERR_INVALID_ARG, HUSH_ERR_NOMEM, HUSH_ERR_STORAGE,
 * HUSH_ERR_DB_CORRUPT, HUSH_ERR_DB_TOO_NEW, HUSH_ERR_DB_KEY (wrong key), HUSH_ERR_DB_TAMPERED (key,
 * session or identity rows removed, added or rolled back outside libhush), HUSH_ERR_SELFTEST.
 * A database written by an older libhush is upgraded in place by the first open.
 */
HUSH_MUST_CHECK hush_err hush_client_open(const char *db_path, const uint8_t db_key[HUSH_DB_KEY_BYTES],
                                          const hush_open_opts *opts, hush_client **out);

/* Closes the database and wipes key material held in memory. NULL is accepted. */
void hush_client_close(hush_client *c);

/*
 * Creates this database's device: Signal identity key pair and registration id, a signed prekey,
 * HUSH_ONE_TIME_PREKEYS one-time prekeys, a last-resort prekey and an Ed25519 authentication key,
 * all sealed and committed in one transaction. Errors: HUSH_ERR_INVALID_ARG (bad username or
 * device_id 0), HUSH_ERR_DEVICE_EXISTS, HUSH_ERR_STORAGE, HUSH_ERR_NOMEM.
 */
HUSH_MUST_CHECK hush_err hush_device_create(hush_client *c, const char *username, uint32_t device_id);

/* This device's address and registration id. `username` receives up to HUSH_USERNAME_MAX chars + NUL.
 * Any out pointer may be NULL. Errors: HUSH_ERR_NO_DEVICE. */
HUSH_MUST_CHECK hush_err hush_device_info(hush_client *c, char username[HUSH_USERNAME_MAX + 1],
                                          uint32_t *device_id, uint32_t *registration_id);

/* The device's Ed25519 authentication public key (32 bytes), for logging in to a relay. The key
 * signs nothing but the proofs of hush_auth_proof. Errors: HUSH_ERR_NO_DEVICE, HUSH_ERR_STORAGE,
 * HUSH_ERR_DB_KEY. */
HUSH_MUST_CHECK hush_err hush_device_auth_key(hush_client *c, uint8_t pub[32]);

/* The device's Signal identity public key (33 bytes, 0x05 prefix). Errors: HUSH_ERR_NO_DEVICE. */
HUSH_MUST_CHECK hush_err hush_device_identity_key(hush_client *c, uint8_t out[33]);

/*
 * Signs the relay's login/registration proof (docs/PROTOCOL.md, "Connecting and authenticating")
 * for this device. `purpose` is "login" or "register"; `origin` the relay as this client reached it
 * ("wss://host:port", see hwire_origin), which the relay compares with its own names; `binding` the
 * connection's TLS channel binding (32 bytes, RFC 9266 tls-exporter) or NULL/0 without TLS;
 * `register_digest` (32 bytes, hwire_register_digest of the RegisterRequest) for "register", NULL
 * for "login"; `challenge` the 32 bytes of the relay's Welcome. A proof made for one relay or one
 * TLS connection is refused by every other. Errors: HUSH_ERR_INVALID_ARG (also for an all-zero
 * challenge, which no relay makes), HUSH_ERR_NO_DEVICE, HUSH_ERR_STORAGE, HUSH_ERR_DB_KEY.
 */
HUSH_MUST_CHECK hush_err hush_auth_proof(hush_client *c, const char *purpose, const char *origin,
                                         const uint8_t *binding, size_t binding_len,
                                         const uint8_t *register_digest, const uint8_t challenge[32],
                                         uint8_t sig[64]);

/*
 * Builds a serialized hush.PreKeyUpload for the relay's directory: the current signed prekey,
 * every one-time prekey not yet handed out (at most `max_one_time`, marked handed out on
 * success), and the last-resort key. On success *out (hush_free) and *out_len are set, and
 * *count (may be NULL) receives the number of one-time keys included.
 */
HUSH_MUST_CHECK hush_err hush_prekey_upload(hush_client *c, uint32_t max_one_time, uint8_t **out, size_t *out_len,
                                            uint32_t *count);

/* Number of one-time prekeys this device still holds (excluding the last-resort key). */
HUSH_MUST_CHECK hush_err hush_prekeys_remaining(hush_client *c, uint32_t *count);

/*
 * Exports this device's public bundle (serialized hush.KeyBundle) for a peer. Each export hands
 * out a one-time prekey that no earlier export handed out; when none is left the last-resort key
 * is used. On success *out (caller frees with hush_free) and *out_len are set.
 */
HUSH_MUST_CHECK hush_err hush_bundle_export(hush_client *c, uint8_t **out, size_t *out_len);

/*
 * Validates a peer's bundle and starts a session with that device (X3DH). Sizes, key encodings
 * and the signed prekey's signature are checked before the library sees them. If the address
 * already has a session, a new one replaces it. Errors: HUSH_ERR_TOO_BIG, HUSH_ERR_BAD_BUNDLE,
 * HUSH_ERR_BAD_SIGNATURE, HUSH_ERR_IDENTITY_CHANGED (see hush_identity_pending), HUSH_ERR_STORAGE.
 * On any error nothing is stored. `peer`/`device_id` (may be NULL) receive the bundle's address.
 */
HUSH_MUST_CHECK hush_err hush_bundle_import(hush_client *c, const uint8_t *bundle, size_t len,
                                            char peer[HUSH_USERNAME_MAX + 1], uint32_t *device_id);

/* 1 if a session with (peer, device_id) exists, else 0 (errors count as 0). */
int hush_has_session(hush_client *c, const char *peer, uint32_t device_id);

/*
 * Encrypts a text for one device of `peer`. The new session state and the outgoing history row are
 * committed before the envelope is returned, so a ciphertext never leaves with a state that could
 * roll back. `message_id` (16 bytes) is the message's stable id: pass the same id to retry a send,
 * or NULL to have a fresh one made (written to `message_id_out` if non-NULL).
 * On success *envelope (hush_free) and *envelope_len are set.
 * Errors: HUSH_ERR_TOO_BIG (len > HUSH_MAX_BODY), HUSH_ERR_NO_SESSION, HUSH_ERR_STORAGE.
 */
HUSH_MUST_CHECK hush_err hush_encrypt(hush_client *c, const char *peer, uint32_t device_id,
                                      const uint8_t *body, size_t len,
                                      const uint8_t message_id[HUSH_MESSAGE_ID_BYTES],
                                      uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES],
                                      uint8_t **envelope, size_t *envelope_len);

typedef enum hush_kind {
    HUSH_KIND_TEXT = 1,       /* a pairwise text message */
    HUSH_KIND_GROUP_TEXT = 2, /* a group text message (group_id set) */
    HUSH_KIND_GROUP_KEY = 3,  /* a group sender key was received (nothing to show) */
    HUSH_KIND_RECEIPT = 4,    /* a delivery/read receipt (the networked SDK reports it as on_receipt) */
    HUSH_KIND_TYPING = 5,     /* a typing indicator (reported as on_typing) */
    HUSH_KIND_SENT_ELSEWHERE = 6, /* a text this user sent from another of its devices: `sender` is this
                                     user, `conversation` the peer it went to; stored as sent */
    HUSH_KIND_READ_ELSEWHERE = 7, /* another device of this user marked messages read (body: state byte,
                                     then message ids); the history's read marks follow it */
    HUSH_KIND_FILE = 8,           /* a file (body: its name); details and download through
                                     hush_attachment_get / hush_attachment_download. From another
                                     device of this user (`sender` is this user): a file it sent */
    HUSH_KIND_GROUP_CHANGE = 9    /* a room's membership or name changed (group_id: the room; body:
                                     what happened, in words, e.g. "ann added bob"; sender: who
                                     made the change). hush_group_info has the room as it is now */
} hush_kind;

typedef struct hush_message {
    hush_kind kind;
    char sender[HUSH_USERNAME_MAX + 1];
    uint32_t sender_device;
    uint8_t message_id[HUSH_MESSAGE_ID_BYTES];
    uint64_t sent_at_ms;          /* sender's clock */
    uint64_t received_at_ms;      /* local clock */
    char group_id[HUSH_GROUP_ID_MAX + 1]; /* "" for pairwise */
    int64_t local_id;             /* history row id (0 when not stored, e.g. GROUP_KEY) */
    uint8_t *body;                /* NUL-terminated for convenience; body_len excludes the NUL */
    size_t body_len;
    char conversation[HUSH_USERNAME_MAX + 1]; /* the peer the message belongs to: the sender, or for
                                                 SENT_ELSEWHERE the peer it was sent to */
} hush_message;

/* Frees a message and wipes its body. NULL is accepted. */
void hush_message_free(hush_message *m);

/*
 * Decrypts an envelope that arrived from (peer, device_id) - the relay vouches for the sender's
 * address. The plaintext is stored (sealed) in the history together with the new session state in
 * one transaction before this returns; on any error nothing at all is stored. On success *out is
 * a new message (hush_message_free).
 * Errors: HUSH_ERR_DUPLICATE (already received: drop silently, the app already has it),
 * HUSH_ERR_BAD_MESSAGE, HUSH_ERR_NO_SESSION, HUSH_ERR_STALE_PREKEY, HUSH_ERR_IDENTITY_CHANGED,
 * HUSH_ERR_NO_GROUP_SESSION, HUSH_ERR_TOO_BIG, HUSH_ERR_STORAGE (retry later: nothing changed).
 */
HUSH_MUST_CHECK hush_err hush_decrypt(hush_client *c, const char *peer, uint32_t device_id,
                                      const uint8_t *envelope, size_t len, hush_message **out);

/*
 * Identity changes. When a bundle or message carries an identity key for (peer, device_id) that
 * differs from the recorded one — or names a device never seen of a peer already known — the
 * operation fails with HUSH_ERR_IDENTITY_CHANGED and the new key is kept as pending. Every distinct
 * key that claims the device meanwhile is kept (up to 8). hush_identity_pending gives the old safety
 * number and the newest pending one (61-byte buffers: 60 digits + NUL).
 *
 * The user compares the new number with the peer out of band, then the app calls
 * hush_identity_accept_number with **the number the user compared** (spaces and separators are
 * ignored): exactly that key becomes trusted, whatever key a relay may have injected since (retry
 * the message or bundle). HUSH_ERR_SAFETY_MISMATCH when no pending key has that number.
 * hush_identity_accept trusts the pending key only when there is exactly one (else
 * HUSH_ERR_SAFETY_MISMATCH); hush_identity_reject discards every pending key.
 * Errors: HUSH_ERR_NOT_FOUND (nothing pending).
 */
HUSH_MUST_CHECK hush_err hush_identity_pending(hush_client *c, const char *peer, uint32_t device_id,
                                               char old_safety[HUSH_SAFETY_NUMBER_LEN + 1],
                                               char new_safety[HUSH_SAFETY_NUMBER_LEN + 1]);
HUSH_MUST_CHECK hush_err hush_identity_accept(hush_client *c, const char *peer, uint32_t device_id);
HUSH_MUST_CHECK hush_err hush_identity_accept_number(hush_client *c, const char *peer, uint32_t device_id,
                                                     const char *safety_number);
HUSH_MUST_CHECK hush_err hush_identity_reject(hush_client *c, const char *peer, uint32_t device_id);

/*
 * Safety numbers for the conversation with (peer, device_id): the 60-digit display string (the
 * same on both sides), the scannable form (serialized, hush_free), and a comparison of a code
 * scanned from the peer's screen: HUSH_OK when it matches, HUSH_ERR_SAFETY_MISMATCH otherwise.
 * Errors: HUSH_ERR_NOT_FOUND (no identity known for that peer).
 */
HUSH_MUST_CHECK hush_err hush_safety_number(hush_client *c, const char *peer, uint32_t device_id,
                                            char out[HUSH_SAFETY_NUMBER_LEN + 1]);
HUSH_MUST_CHECK hush_err hush_safety_scannable(hush_client *c, const char *peer, uint32_t device_id,
                                               uint8_t **out, size_t *out_len);
HUSH_MUST_CHECK hush_err hush_safety_compare(hush_client *c, const char *peer, uint32_t device_id,
                                             const uint8_t *scanned, size_t len);

/*
 * Groups (sender keys). group_id: 1..HUSH_GROUP_ID_MAX printable ASCII characters.
 * - hush_group_distribution: creates this device's sender key for the group if it has none, and
 *   returns a pairwise envelope carrying it to (member, device_id) (send it like any message).
 * - hush_group_rotate: forgets this device's sender key, so the next distribution creates a new
 *   one. Call it when a member leaves, then distribute to the remaining members only.
 * - hush_group_encrypt: one envelope for every member holding the current sender key.
 * Received distributions and group messages come through hush_decrypt. A distribution message
 * already seen is skipped (it would otherwise let an old group message be decrypted twice).
 */
HUSH_MUST_CHECK hush_err hush_group_distribution(hush_client *c, const char *group_id,
                                                 const char *member, uint32_t device_id,
                                                 uint8_t **envelope, size_t *envelope_len);
HUSH_MUST_CHECK hush_err hush_group_rotate(hush_client *c, const char *group_id);
HUSH_MUST_CHECK hush_err hush_group_encrypt(hush_client *c, const char *group_id,
                                            const uint8_t *body, size_t len,
                                            uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES],
                                            uint8_t **envelope, size_t *envelope_len);

/*
 * Local history (sealed at rest). hush_history_list returns up to `limit` (1..500) messages of the
 * conversation with `peer` (all its devices; group messages excluded) whose local_id is below
 * `before_local_id` (0 = newest), newest first. Outgoing messages have sender == this device.
 * On success *out is an array of *count messages: free with hush_history_free.
 */
typedef struct hush_history_entry {
    int64_t local_id;
    int outgoing;                 /* 1: sent by this user (from this device or another of its own), 0: received */
    char peer[HUSH_USERNAME_MAX + 1];
    uint32_t peer_device;         /* 0 for outgoing */
    uint8_t message_id[HUSH_MESSAGE_ID_BYTES];
    uint64_t sent_at_ms;
    uint64_t received_at_ms;
    int read;                     /* marked read locally */
    uint8_t *body;                /* a text, or a file's name (kind HUSH_KIND_FILE) */
    size_t body_len;
    hush_kind kind;               /* HUSH_KIND_TEXT or HUSH_KIND_FILE */
} hush_history_entry;

HUSH_MUST_CHECK hush_err hush_history_list(hush_client *c, const char *peer, int64_t before_local_id,
                                           int limit, hush_history_entry **out, size_t *count);
void hush_history_free(hush_history_entry *entries, size_t count);
HUSH_MUST_CHECK hush_err hush_history_mark_read(hush_client *c, int64_t local_id);
/* Deletes one message from the local history; a file message takes its file with it (its key,
 * and the encrypted copies beside the database). HUSH_ERR_NOT_FOUND: no such message. */
HUSH_MUST_CHECK hush_err hush_history_delete(hush_client *c, int64_t local_id);

/*
 * Rooms: groups over the network (see docs/PROTOCOL.md, "Rooms"). A room has a random id (32
 * hexadecimal characters: what the relay and every function here use), a name (1..64 bytes of
 * UTF-8: what people see; not unique), members and admins. Its members' devices hold it: every
 * change is signed by its author's identity key and sent, end to end encrypted, to every device
 * of every member (and of the members it removes); a device applies a change only from an admin
 * of the room as it knows it (or a member leaving), at exactly the next version, following
 * exactly the state it holds. The relay never learns names or members, only which devices a
 * message goes to. Messages to a room are encrypted once with this device's sender key; devices
 * that lack the key get it pairwise in the same send. The key is replaced when a member or one of
 * a member's devices goes, and every 14 days, so someone removed cannot read what comes after.
 *
 * Each change or message is committed before the function returns and sent by the network thread
 * (hush_net_start) like hush_send's messages. Changes arrive as messages of kind
 * HUSH_KIND_GROUP_CHANGE, room texts as HUSH_KIND_GROUP_TEXT (group_id: the room).
 * - create: a new room with this user (admin) and `members` (1..HUSH_ROOM_MAX_MEMBERS - 1 other
 *   users); id_out receives its id.
 * - add / remove / promote / rename: admins only (HUSH_ERR_NOT_ALLOWED otherwise). remove takes
 *   one user (not this one: use leave).
 * - leave: this user leaves (the last admin leaving makes the first remaining member an admin).
 * - send: a text to every member (HUSH_ERR_NOT_ALLOWED when this user is no longer a member).
 *   The message id (for hush_message_state) is written to message_id_out when not NULL.
 * - info: the room as this device knows it (*out: hush_group_state_free(*out, 1)); list: every
 *   room this device knows, newest change first (*out: an array of *count, hush_group_state_free).
 * - history: like hush_history_list, for the room (entries' peer: who wrote it).
 * Errors: HUSH_ERR_INVALID_ARG (bad name, user or id), HUSH_ERR_NOT_FOUND (no such room),
 * HUSH_ERR_NOT_ALLOWED, HUSH_ERR_TOO_BIG (too many members), HUSH_ERR_STORAGE.
 */
#define HUSH_ROOM_ID_LEN 32
#define HUSH_ROOM_NAME_MAX 64
#define HUSH_ROOM_MAX_MEMBERS 1000

typedef struct hush_group_state {
    char id[HUSH_ROOM_ID_LEN + 1];
    char name[HUSH_ROOM_NAME_MAX + 1];
    uint64_t version;            /* 1 at creation, +1 at every change */
    int is_member;               /* this user is in the room (0: left or removed; history remains) */
    int is_admin;
    size_t n_members;
    char (*members)[HUSH_USERNAME_MAX + 1]; /* n_members usernames */
    uint8_t *admin;              /* n_members flags: 1 when members[i] is an admin */
    uint64_t changed_at_ms;      /* when the last change was made (its author's clock) */
    int shares_presence;         /* this user shares its presence with the room (hush_group_share_presence) */
} hush_group_state;

HUSH_MUST_CHECK hush_err hush_group_create(hush_client *c, const char *name, const char *const *members, size_t n,
                                           char id_out[HUSH_ROOM_ID_LEN + 1]);
HUSH_MUST_CHECK hush_err hush_group_add(hush_client *c, const char *group, const char *const *users, size_t n);
HUSH_MUST_CHECK hush_err hush_group_remove(hush_client *c, const char *group, const char *user);
HUSH_MUST_CHECK hush_err hush_group_promote(hush_client *c, const char *group, const char *user);
HUSH_MUST_CHECK hush_err hush_group_rename(hush_client *c, const char *group, const char *name);
HUSH_MUST_CHECK hush_err hush_group_leave(hush_client *c, const char *group);
HUSH_MUST_CHECK hush_err hush_group_send(hush_client *c, const char *group, const uint8_t *text, size_t len,
                                         uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES]);
/* Tells the room's members whose devices are online (and hold this device's key) that this user
 * is typing (1) or stopped (0): never stored, sent at most every few seconds like hush_typing.
 * HUSH_ERR_NOT_RUNNING without the network thread. */
HUSH_MUST_CHECK hush_err hush_group_typing(hush_client *c, const char *group, int typing);
/* Shares this user's presence (online, last seen) with everyone in the room (share 1), or stops
 * (0). While it is shared, the members of the room are added to who may see this user's presence
 * (hush_presence_allow's list stays as it is; the two are joined), following the room as members
 * come and go: someone removed stops seeing it at once. The choice is kept, sent again at every
 * login, and told to this user's other devices (through the room), the latest choice winning.
 * Independently of this, the SDK follows the presence of every member of every room this user is
 * in (with hush_presence_subscribe's list): on_presence reports those who share theirs. Both lists
 * hold at most 1000 names: the explicit list first, then rooms shared with, most recently changed
 * first; members beyond are left out. HUSH_ERR_NOT_ALLOWED (not a member; turning it off is
 * always accepted), HUSH_ERR_NOT_FOUND, HUSH_ERR_INVALID_ARG. */
HUSH_MUST_CHECK hush_err hush_group_share_presence(hush_client *c, const char *group, int share);
HUSH_MUST_CHECK hush_err hush_group_info(hush_client *c, const char *group, hush_group_state **out);
HUSH_MUST_CHECK hush_err hush_group_list(hush_client *c, hush_group_state **out, size_t *count);
void hush_group_state_free(hush_group_state *states, size_t count);
/* Where a message of ours in a room stands with each member (the room's current members but this
 * user): HUSH_MSG_SENT (no receipt yet), HUSH_MSG_DELIVERED or HUSH_MSG_READ. The message's own
 * state (hush_message_state, on_receipt with the room's id as `peer`) is the lowest of these.
 * Rooms of more than 50 members send no receipts. *out: an array of *count (free with
 * hush_free). HUSH_ERR_NOT_FOUND: not a room message of ours. */
typedef struct hush_group_receipt {
    char member[HUSH_USERNAME_MAX + 1];
    int state; /* a hush_msg_state */
} hush_group_receipt;
HUSH_MUST_CHECK hush_err hush_group_receipts(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES],
                                             hush_group_receipt **out, size_t *count);
HUSH_MUST_CHECK hush_err hush_group_history(hush_client *c, const char *group, int64_t before_local_id, int limit,
                                            hush_history_entry **out, size_t *count);

/*
 * Outbox (sealed at rest): messages the app has handed over but the relay has not acknowledged.
 * hush_outbox_put writes the row (with a fresh stable message id) and commits before returning;
 * hush_outbox_next returns the oldest pending row; hush_outbox_done removes it once acknowledged.
 * The networked SDK drives these; they are public so apps can show pending messages.
 */
typedef struct hush_outbox_entry {
    int64_t local_id;
    char peer[HUSH_USERNAME_MAX + 1]; /* the user; a room's rows: '#' and 22 characters */
    uint8_t message_id[HUSH_MESSAGE_ID_BYTES];
    uint64_t created_at_ms;
    uint32_t attempts;
    uint8_t *body;
    size_t body_len;
} hush_outbox_entry;

HUSH_MUST_CHECK hush_err hush_outbox_put(hush_client *c, const char *peer, const uint8_t *body,
                                         size_t len, uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES]);
/* HUSH_ERR_NOT_FOUND when empty. On success *out is owned by the caller (hush_outbox_entry_free). */
HUSH_MUST_CHECK hush_err hush_outbox_next(hush_client *c, hush_outbox_entry **out);
HUSH_MUST_CHECK hush_err hush_outbox_count(hush_client *c, uint32_t *count);
HUSH_MUST_CHECK hush_err hush_outbox_attempted(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES]);
HUSH_MUST_CHECK hush_err hush_outbox_done(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES]);
void hush_outbox_entry_free(hush_outbox_entry *e);

/* ============================================================================================ */
/* Online: talking to a relay (hushd).
 *
 * hush_net_start starts a network thread owned by the client. It connects to the relay (ws:// or
 * wss://), registers the device the first time (with an invite when the relay asks for one), logs
 * in by challenge-response, uploads and replenishes prekeys, rotates the signed prekey, sends the
 * outbox, receives and acknowledges messages, and reconnects on its own with exponential backoff
 * and jitter. All callbacks run ON THAT NETWORK THREAD (named "hush-network"), one at a time:
 * return quickly, and hop to your UI thread yourself (Android: Handler.post / runOnUiThread; iOS:
 * DispatchQueue.main.async). The one exception is the last on_connection(HUSH_CONN_STOPPED), which
 * runs on the thread calling hush_net_stop once the network thread has ended. Callbacks may call
 * any hush_* function except hush_net_stop and hush_client_close: those would join the thread
 * they run on, so libhush aborts the process with a message instead. Pointers passed to
 * callbacks are valid only during the call: copy what you keep.
 *
 * Guarantees:
 * - hush_send commits the message to the outbox before returning; it is retried (same message id,
 *   same ciphertext) until the relay acknowledges it, across restarts of the app and the relay.
 * - A received message is decrypted and stored (with the new session state) in one transaction
 *   before it is acknowledged to the relay, then on_message is called, then it is marked notified.
 *   Deliveries that arrive together (up to 128) share that transaction and that acknowledgement.
 *   A message the app was not told about before a crash is reported again after hush_net_start,
 *   with the same local_id: treat local_id as the message's identity. A redelivered copy of a
 *   stored message is recognised and never reported again.
 */

typedef enum hush_conn_state {
    HUSH_CONN_OFFLINE = 0,    /* not connected; retrying after a backoff */
    HUSH_CONN_CONNECTING = 1, /* connecting / authenticating */
    HUSH_CONN_ONLINE = 2,     /* logged in */
    HUSH_CONN_FAILED = 3,     /* stopped for good (auth refused, username taken...): see last_error */
    HUSH_CONN_STOPPED = 4     /* hush_net_stop was called */
} hush_conn_state;

typedef enum hush_msg_state {
    HUSH_MSG_FAILED = -1,    /* cannot be delivered (no such user) */
    HUSH_MSG_QUEUED = 0,     /* in the outbox */
    HUSH_MSG_SENT = 1,       /* the relay has it (acknowledged, on its disk) */
    HUSH_MSG_DELIVERED = 2,  /* the recipient's device stored it (end-to-end encrypted receipt) */
    HUSH_MSG_READ = 3        /* the recipient marked it read */
} hush_msg_state;

typedef struct hush_callbacks {
    void *ctx; /* passed back to every callback */
    /* a message (kind TEXT or GROUP_TEXT); m is valid during the call only */
    void (*on_message)(void *ctx, const hush_message *m);
    /* a message of ours changed state (SENT, DELIVERED, READ or FAILED) */
    void (*on_receipt)(void *ctx, const char *peer, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES],
                       hush_msg_state state);
    void (*on_typing)(void *ctx, const char *peer, uint32_t device_id, int typing);
    void (*on_presence)(void *ctx, const char *user, int online, uint64_t last_seen_ms);
    /* a contact's identity key changed; messages from it wait until hush_identity_accept/_reject */
    void (*on_identity_changed)(void *ctx, const char *peer, uint32_t device_id, const char *old_safety,
                                const char *new_safety);
    void (*on_connection)(void *ctx, hush_conn_state state, hush_err last_error);
    /* something went wrong that the app may want to show or log (never secrets) */
    void (*on_error)(void *ctx, hush_err err, const char *detail);
    /* hush_net_start_link: the code to show (as text or a QR code) until the device is linked; a
     * new code replaces it after a reconnection */
    void (*on_link_code)(void *ctx, const char *code);
    /* the relay says `user`'s devices changed (this account's own, or a contact's) */
    void (*on_devices_changed)(void *ctx, const char *user);
    /* a file's transfer moved (see hush_attachment_get): progress while UPLOADING or DOWNLOADING
     * (at most ten times a second), then once SENT, READY or FAILED (err says why) */
    void (*on_file)(void *ctx, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES], int state, uint64_t done,
                    uint64_t total, hush_err err);
    /* a member of room `group` (its id) started or stopped typing there (hush_group_typing) */
    void (*on_group_typing)(void *ctx, const char *group, const char *user, uint32_t device_id, int typing);
} hush_callbacks;

typedef struct hush_net_opts {
    const char *relay_url;   /* "ws://host:port" or "wss://host:port"; NULL: the one stored last time */
    const char *invite;      /* registration token when the relay is invite-only (may be NULL) */
    const char *ca_file;     /* wss: PEM bundle to trust instead of the system store; stored with the
                                URL (NULL: the one stored last time, if any) */
    int insecure_tls;        /* wss: accept any certificate (tests only) */
} hush_net_opts;

/*
 * Device names, as a user sees its devices listed ("phone", "laptop"). hush_device_name_set
 * (before the device registers: its registration carries it) stores this device's name; the relay
 * keeps it sealed under a key only this account's devices have. hush_devices lists this account's
 * devices as the relay knows them (network running; blocks up to timeout_ms): *out is an array of
 * *count entries (hush_devices_free). Errors: HUSH_ERR_INVALID_ARG, HUSH_ERR_NOT_RUNNING,
 * HUSH_ERR_NETWORK, HUSH_ERR_TIMEOUT, HUSH_ERR_NOMEM.
 */
typedef struct hush_device_entry {
    uint32_t device_id;
    char name[HUSH_DEVICE_NAME_MAX + 1]; /* "" when it has none (or registered before names) */
    uint64_t created_ms;
    uint64_t last_seen_ms;               /* its last login or logout (0: never) */
    int online;                          /* connected to the relay now */
    int this_device;
} hush_device_entry;
HUSH_MUST_CHECK hush_err hush_device_name_set(hush_client *c, const char *name);
HUSH_MUST_CHECK hush_err hush_devices(hush_client *c, int timeout_ms, hush_device_entry **out, size_t *count);
void hush_devices_free(hush_device_entry *entries);

/* Stores the relay URL (and, when not NULL, the CA file) the next hush_net_start uses without
 * one, e.g. after the relay moved. It takes effect at the next start. Errors: HUSH_ERR_INVALID_ARG
 * (not a ws:// or wss:// URL), HUSH_ERR_STORAGE. */
HUSH_MUST_CHECK hush_err hush_relay_set(hush_client *c, const char *relay_url, const char *ca_file);

/* Starts the network thread. `cb` is copied; any callback may be NULL. Errors: HUSH_ERR_INVALID_ARG
 * (bad or missing URL), HUSH_ERR_NO_DEVICE, HUSH_ERR_NOMEM, HUSH_ERR_NETWORK (cannot start). */
HUSH_MUST_CHECK hush_err hush_net_start(hush_client *c, const hush_net_opts *opts, const hush_callbacks *cb);
/*
 * Linking a device to an account (each device of a user shares the user's identity key, so
 * contacts see the same safety number, and a device with any other key is refused by them).
 *
 * On the new device, on a database with no device: hush_net_start_link connects to the relay and
 * reports a link code through on_link_code (valid while the connection waits, at most the relay's
 * provision_timeout, 90 s by default; a new code follows a reconnection). On an existing device
 * of the account, with its network running: hush_device_link(code) has the relay reserve the next
 * device id, seals the account's identity key pair, that reservation, the contacts it trusts and
 * its presence list to the code's key (the relay cannot read it) and hands it over. The new
 * device then creates its device, registers, and runs as after hush_net_start. Linking is atomic
 * on both sides: a crash leaves no half-made device (link again with a new code).
 * hush_device_link blocks up to timeout_ms; *device_id (may be NULL) gets the new device's id. Errors: HUSH_ERR_INVALID_ARG (not a link code, or a
 * link already in progress), HUSH_ERR_NOT_RUNNING, HUSH_ERR_TOO_MANY_DEVICES, HUSH_ERR_LINK_FAILED
 * (the code expired or was used), HUSH_ERR_NETWORK (the connection dropped: start again),
 * HUSH_ERR_TIMEOUT. hush_net_start_link: as hush_net_start, HUSH_ERR_DEVICE_EXISTS on a database
 * that has a device.
 */
HUSH_MUST_CHECK hush_err hush_net_start_link(hush_client *c, const hush_net_opts *opts, const hush_callbacks *cb);
/*
 * Removes a device of this account: this device itself, or, from the account's first
 * (lowest-numbered) device, any other. The relay deletes its keys and waiting messages, closes its
 * connection (it stops with HUSH_ERR_DEVICE_REMOVED) and tells the other devices; contacts stop
 * sending to it at their next message. The account's last device cannot be removed. Blocks up to
 * timeout_ms with the network running. Errors: HUSH_ERR_NOT_FOUND (no such device),
 * HUSH_ERR_AUTH_FAILED (not allowed from this device), HUSH_ERR_INVALID_ARG (the last device, or
 * a request already in progress), HUSH_ERR_NOT_RUNNING, HUSH_ERR_NETWORK, HUSH_ERR_TIMEOUT.
 */
HUSH_MUST_CHECK hush_err hush_device_remove(hush_client *c, uint32_t device_id, int timeout_ms);
HUSH_MUST_CHECK hush_err hush_device_link(hush_client *c, const char *code, int timeout_ms, uint32_t *device_id);

/*
 * Recovery. When a new account's first device registers (and when a device recovers an account),
 * libhush makes a recovery code; the relay keeps only a public key that verifies it. Show it to
 * the user once (to be written down) with hush_recovery_code, then hush_recovery_code_forget
 * removes it from this database. hush_recovery_code: HUSH_ERR_NOT_FOUND when none is waiting.
 *
 * A user who lost every device opens a new database and calls hush_net_start_recover with the
 * username and the code: the relay checks the code, reserves a new device id, and the new device
 * registers with a new identity key; every other device of the account is removed at the relay
 * (their waiting messages with them). Contacts see an identity change (the key is new) and
 * decide as for any other. A new recovery code is made (the old one no longer works). Errors as
 * hush_net_start (HUSH_ERR_DEVICE_EXISTS on a database with a device, HUSH_ERR_INVALID_ARG for a
 * malformed code); a wrong name or code fails the connection for good with HUSH_ERR_AUTH_FAILED.
 * Accounts registered before recovery codes existed have none.
 */
HUSH_MUST_CHECK hush_err hush_recovery_code(hush_client *c, char out[HUSH_RECOVERY_CODE_LEN + 1]);
HUSH_MUST_CHECK hush_err hush_recovery_code_forget(hush_client *c);
HUSH_MUST_CHECK hush_err hush_net_start_recover(hush_client *c, const hush_net_opts *opts, const hush_callbacks *cb,
                                                const char *username, const char *recovery_code);

/* Stops and joins the network thread (from any thread but a callback). Safe if not started. */
void hush_net_stop(hush_client *c);
hush_conn_state hush_net_state(hush_client *c, hush_err *last_error);
/* Blocks until logged in (HUSH_OK), failed for good (that error), or timeout (HUSH_ERR_TIMEOUT).
 * Both waits return HUSH_ERR_NOT_RUNNING when the network is not started or another thread stops
 * it meanwhile (hush_net_stop waits for them to leave before it frees anything). */
HUSH_MUST_CHECK hush_err hush_net_wait_online(hush_client *c, int timeout_ms);
/* Blocks until the outbox is empty (every message acknowledged by the relay) or timeout. */
HUSH_MUST_CHECK hush_err hush_net_flush(hush_client *c, int timeout_ms);

/*
 * Push wake-ups (UnifiedPush / Web Push). A phone app cannot keep its connection open in the
 * background; the relay can wake it through a push service the user chose (a UnifiedPush
 * distributor such as ntfy): when mail waits for this device and it is not connected, the relay
 * POSTs a constant, content-free message (encrypted to p256dh/auth, RFC 8291) to the endpoint.
 *
 * hush_push_register stores the endpoint URL (at most 1000 bytes, https://; a relay may allow
 * http://), the device's P-256 public key (65 bytes, uncompressed) and its authentication secret
 * (16 bytes) that the distributor's connector gave the app, sealed in this database, and sends
 * them to the relay now (or at the next login) and after every login. A later call replaces them;
 * hush_push_unregister removes them (at the relay too, at the next login if offline). Both work
 * offline. A relay that refuses the endpoint (push off, private address, http) says why through
 * on_error. When the push service tells the relay the endpoint no longer exists (the user removed
 * the distributor, or it expired), the relay stops using it and, when this device next sends it,
 * on_error reports HUSH_ERR_PUSH_GONE and libhush forgets it: register the distributor's new
 * endpoint then. Errors: HUSH_ERR_INVALID_ARG (lengths, scheme, not an uncompressed point),
 * HUSH_ERR_STORAGE.
 *
 * hush_net_wake is what a push (or a background task) calls: it starts the network as
 * hush_net_start would (opts and cb as there), waits until the relay has handed over every
 * waiting message (each one stored and reported through on_message) and the outbox is empty,
 * then stops the network again - unless it was already running (the app is in the foreground),
 * which it leaves running. Blocks up to timeout_ms (a push gives an Android app about 10 s).
 * Call it from one thread at a time. Errors: as hush_net_start, HUSH_ERR_TIMEOUT (stopped
 * anyway: what was stored is kept, the rest comes at the next connection), or the error that
 * failed the connection for good. hush_net_wait_drained is its wait alone, for a network the
 * app started itself: until logged in, every waiting message handed over and the outbox empty
 * (errors as hush_net_wait_online).
 */
HUSH_MUST_CHECK hush_err hush_push_register(hush_client *c, const char *endpoint, const uint8_t *p256dh,
                                            size_t p256dh_len, const uint8_t *auth, size_t auth_len);
HUSH_MUST_CHECK hush_err hush_push_unregister(hush_client *c);
/*
 * The relay's VAPID public key (the key that signs its wake-ups), as a push distributor wants it
 * when the app registers with it (UnifiedPush: the "vapid" argument): the 65-byte P-256 point,
 * base64url without padding, HUSH_PUSH_VAPID_KEY_LEN characters and a NUL written to out (outcap
 * at least HUSH_PUSH_VAPID_KEY_LEN + 1). Learned at each connection and kept in the database, so
 * it is there offline once the device has connected. Errors: HUSH_ERR_INVALID_ARG, HUSH_ERR_NOT_FOUND
 * (never connected yet, or the relay has push wake-ups off), HUSH_ERR_STORAGE.
 */
#define HUSH_PUSH_VAPID_KEY_LEN 87
HUSH_MUST_CHECK hush_err hush_push_vapid_key(hush_client *c, char *out, size_t outcap);
HUSH_MUST_CHECK hush_err hush_net_wake(hush_client *c, const hush_net_opts *opts, const hush_callbacks *cb,
                                       int timeout_ms);
HUSH_MUST_CHECK hush_err hush_net_wait_drained(hush_client *c, int timeout_ms);

/* Queues a UTF-8 text (at most HUSH_MAX_BODY bytes) for every device of `peer`; commits it to the
 * outbox (and the history, state QUEUED) before returning, then wakes the network thread. Works
 * while offline. `message_id_out` (may be NULL) receives the message's stable id.
 * Errors: HUSH_ERR_INVALID_ARG (bad username, or `peer` is this device's own username),
 * HUSH_ERR_TOO_BIG, HUSH_ERR_NO_DEVICE, HUSH_ERR_STORAGE.
 * A message that cannot be delivered leaves the queue with state HUSH_MSG_FAILED (reported through
 * on_receipt): the relay has no such user, or none of the peer's key bundles is acceptable. */
HUSH_MUST_CHECK hush_err hush_send(hush_client *c, const char *peer, const uint8_t *text, size_t len,
                                   uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES]);
/* Takes a queued text out of the outbox (state HUSH_MSG_FAILED). HUSH_ERR_NOT_FOUND when it is not
 * queued (already acknowledged by the relay, or unknown). A message the network thread handed to
 * the relay just before the cancel may still be delivered: its state then becomes SENT. */
HUSH_MUST_CHECK hush_err hush_outbox_cancel(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES]);
HUSH_MUST_CHECK hush_err hush_message_state(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES],
                                            hush_msg_state *state);
/* Marks a received message read and queues an encrypted read receipt to its sender. */
HUSH_MUST_CHECK hush_err hush_mark_read(hush_client *c, int64_t local_id);
/* Typing indicator to every device of `peer` (ephemeral, never stored; "typing" is sent at most
 * every 3 s per peer, "stopped" at once). Dropped when offline. */
HUSH_MUST_CHECK hush_err hush_typing(hush_client *c, const char *peer, int typing);
/* Who may see this user's presence (replaces the list), and whose presence to follow. Both are
 * stored and re-sent on every login. At most 1000 names each. */
HUSH_MUST_CHECK hush_err hush_presence_allow(hush_client *c, const char *const *users, size_t n);
HUSH_MUST_CHECK hush_err hush_presence_subscribe(hush_client *c, const char *const *users, size_t n);

/* Device ids of `peer` known to this client (those it holds an identity key for), ascending. */
HUSH_MUST_CHECK hush_err hush_peer_devices(hush_client *c, const char *peer, uint32_t *out, size_t max, size_t *count);

/*
 * Files (attachments). A file is encrypted on this device with a fresh key (libsodium's
 * XChaCha20-Poly1305 secretstream, in chunks, its length padded), the ciphertext is uploaded to
 * the relay once, and a message carrying where it is and its key goes end-to-end encrypted to every
 * device of the peer and of this user. The relay never sees the key, the name or the content.
 *
 * hush_send_file encrypts `path` into the client's files directory ("<database>.files", beside
 * the database), then commits the message (history state QUEUED) before returning; the upload runs
 * on the network thread, resumes after a lost connection or a restart of the app or the relay,
 * and the message goes out once the relay has stored every byte. file_name: as the peer sees it
 * (NULL: the last component of path), content_type (NULL: "application/octet-stream"), thumbnail
 * (optional, at most HUSH_MAX_THUMBNAIL bytes, travels inside the message). Errors:
 * HUSH_ERR_INVALID_ARG (bad peer, name or type; not a regular file), HUSH_ERR_TOO_BIG (larger than
 * HUSH_MAX_FILE, or a thumbnail over its cap), HUSH_ERR_STORAGE (the file could not be read or the
 * encrypted copy written), HUSH_ERR_NO_DEVICE.
 *
 * A received file is a message of kind HUSH_KIND_FILE (on_message, body: its name). Nothing is
 * downloaded until the app asks: hush_attachment_download queues the download (the network thread
 * fetches the ciphertext into the files directory, resumable, and checks its digest: state READY,
 * or FAILED with HUSH_ERR_BAD_MESSAGE when it was tampered with and HUSH_ERR_NOT_FOUND when the
 * relay no longer has it). Downloaded files stay encrypted beside the database under their own key
 * (kept sealed in the database); hush_attachment_save decrypts one to out_path (written to a
 * temporary name, synced, then renamed: never half a file), checking every chunk and the size.
 * hush_attachment_cancel stops an upload (the message fails) or a download (back to REMOTE).
 */
#define HUSH_MAX_FILE (2ull << 30)     /* largest file hush_send_file takes (the relay's own limit may be lower) */
#define HUSH_MAX_FILE_NAME 255
#define HUSH_MAX_CONTENT_TYPE 127
#define HUSH_MAX_THUMBNAIL (32 * 1024)
typedef enum hush_file_state {
    HUSH_FILE_FAILED = -1,     /* the upload or download failed for good (on_file's err says why) */
    HUSH_FILE_UPLOADING = 1,   /* ours: being uploaded */
    HUSH_FILE_SENT = 2,        /* ours: uploaded; the message is in the outbox or sent */
    HUSH_FILE_REMOTE = 3,      /* on the relay, not downloaded here */
    HUSH_FILE_DOWNLOADING = 4,
    HUSH_FILE_READY = 5        /* downloaded and verified: hush_attachment_save */
} hush_file_state;
typedef struct hush_attachment {
    uint8_t message_id[HUSH_MESSAGE_ID_BYTES];
    int outgoing;                         /* sent by this user */
    char peer[HUSH_USERNAME_MAX + 1];     /* the conversation */
    char file_name[HUSH_MAX_FILE_NAME + 1];
    char content_type[HUSH_MAX_CONTENT_TYPE + 1];
    uint64_t size;                        /* the file's bytes */
    hush_file_state state;
    uint64_t done, total;                 /* the transfer's progress (ciphertext bytes) */
    uint8_t *thumbnail;                   /* NULL when none */
    size_t thumbnail_len;
} hush_attachment;
HUSH_MUST_CHECK hush_err hush_send_file(hush_client *c, const char *peer, const char *path, const char *file_name,
                                        const char *content_type, const uint8_t *thumbnail, size_t thumbnail_len,
                                        uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES]);
/* The same to a room (`group`: its id): uploaded once, then the pointer goes to every member's
 * devices as a room message (encrypted once with this device's key). Errors as hush_send_file,
 * and HUSH_ERR_NOT_FOUND / HUSH_ERR_NOT_ALLOWED as hush_group_send. A room's file has `peer`
 * '#' and 22 characters in hush_attachment; its message has group_id set. */
HUSH_MUST_CHECK hush_err hush_group_send_file(hush_client *c, const char *group, const char *path,
                                              const char *file_name, const char *content_type,
                                              const uint8_t *thumbnail, size_t thumbnail_len,
                                              uint8_t message_id_out[HUSH_MESSAGE_ID_BYTES]);
/* On success *out is the caller's (hush_attachment_free). HUSH_ERR_NOT_FOUND: no file message with that id. */
HUSH_MUST_CHECK hush_err hush_attachment_get(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES],
                                             hush_attachment **out);
void hush_attachment_free(hush_attachment *a);
/* HUSH_OK also when it is already downloading or READY. */
HUSH_MUST_CHECK hush_err hush_attachment_download(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES]);
/* Errors: HUSH_ERR_NOT_FOUND (not READY), HUSH_ERR_BAD_MESSAGE (a chunk or the padding fails to
 * verify: nothing is written), HUSH_ERR_STORAGE (out_path cannot be written). */
HUSH_MUST_CHECK hush_err hush_attachment_save(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES],
                                              const char *out_path);
HUSH_MUST_CHECK hush_err hush_attachment_cancel(hush_client *c, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES]);

/* Runs PRAGMA integrity_check on the client database: HUSH_OK or HUSH_ERR_DB_CORRUPT. */
HUSH_MUST_CHECK hush_err hush_client_check(hush_client *c);

#ifdef __cplusplus
}
#endif
#endif
