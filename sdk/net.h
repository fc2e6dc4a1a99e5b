/*
 * net.h - libhush's network thread, internal: its state (struct hush_net) and what its files share.
 * The thread is split by stage, each file using only those listed before it:
 *   net_io.c    status, reports to the app, the frame queue and request table (the bottom)
 *   net_keys.c  login, registration, prekey uploads and rotation, presence lists
 *   net_send.c  the send path: the outbox pump, directory fetches, send results, typing
 *   net_files.c file uploads and downloads in chunks, between the other traffic
 *   net_recv.c  the receive path: batches of deliveries decrypted and stored in one transaction,
 *               then acknowledged and reported; held envelopes; receipts owed
 *   net_main.c  the connection and frame dispatch, the thread, and the public hush_net_* calls
 * Functions shared between these files carry the prefix hnet_.
 */
#ifndef HUSH_NET_H
#define HUSH_NET_H

#include <pthread.h>
#include <stdatomic.h>

#include <libwebsockets.h>

#include "hush_wire.h"
#include "internal.h"

#define PRESENCE_ALLOW 1
#define PRESENCE_SUBSCRIBE 2

#define NET_MAX_FRAME (1024 * 1024)
#define NET_MAX_INFLIGHT 32
#define NET_MAX_GONE 16
#define NET_MAX_KEYREQ 16
#define NET_KEYREQ_PER_HOUR 10
/* typing in a room before this device has a key for it: pairwise copies, to at most this many devices */
#define NET_ROOM_TYPING_PAIRWISE 32
#define NET_MAX_REQS 128
#define NET_BACKOFF_MIN_MS 250
#define NET_BACKOFF_MAX_MS 30000
#define NET_RETRY_MS 2000
#define NET_TYPING_EVERY_MS 3000
#define NET_MAX_TYPING 32
#define SPK_MAX_AGE_MS (7ull * 24 * 3600 * 1000)
#define SPK_GRACE_MS (30ull * 24 * 3600 * 1000)
#define PREKEY_BATCH 100
#define NET_MAX_MISMATCH_ROUNDS 4
#define NET_FILE_WINDOW 4 /* file chunks in flight on one connection */ /* device-list refusals of one message before it fails */

enum nstate { N_IDLE, N_CONNECTING, N_HELLO, N_AUTH, N_ONLINE };
enum req_type { R_NONE, R_HELLO, R_AUTH, R_SEND, R_FETCH, R_UPLOAD, R_OTHER, R_PROVISION, R_LINK_TOKEN, R_PROVISION_SEND, R_REMOVE, R_RECOVER, R_LIST_DEVICES, R_PUSH, R_BLOB };

/* An app thread's request to the network thread (hush_device_link, hush_device_remove), under
 * mu: queued, its first frame sent (for a link: the token asked), the box sent, done. */
enum link_step { LINK_IDLE, LINK_QUEUED, LINK_TOKEN_ASKED, LINK_BOX_SENT, LINK_DONE };

struct nbuf {
    struct nbuf *next;
    size_t len;
    unsigned char data[]; /* LWS_PRE, then the frame */
};

struct req {
    uint64_t id;
    enum req_type type;
    int64_t outbox_id;
    int kind;
    uint8_t mid[16]; /* R_PUSH: a hash of the endpoint URL sent */
    char peer[HUSH_USERNAME_MAX + 1];
};

struct typing_req {
    char peer[HUSH_USERNAME_MAX + 1];
    int typing;
    int pending;
    uint64_t last_sent_ms;
};

/* Deliveries that arrive together are decrypted and stored in one transaction (one fsync with
 * durability FULL instead of one per message), then acknowledged, then reported. */
#define NET_BATCH_MAX 128
#define NET_MAX_OFFERED 4

struct inbound {
    char from[HUSH_USERNAME_MAX + 1];
    uint32_t dev;
    uint64_t seq;
    uint8_t *env;
    size_t len;
    uint8_t *shared;  /* a room message's shared envelope (NULL: none); env is then its own part */
    size_t shared_len;
    uint8_t cmid[16]; /* Deliver.client_msg_id (a room message's id: what a key request names) */
    int has_cmid;
    /* outcome, filled while the batch's transaction is open */
    hush_err e;
    hush_message *m;
    int held_first;   /* the first envelope held for this (peer, device): tell the app */
    int held_dropped; /* over the per-peer cap: not held, dropped */
};

/* Envelopes held for an identity decision, per peer (all its devices): nothing checks them
 * before the decision (libsignal refuses the identity before any MAC), so anyone could fill the
 * table otherwise. */
#define HELD_MAX_PER_PEER 200
/* An envelope that fails to be stored while the rest of its batch commits (this message, not the
 * database, is the problem) is tried again after 1 s and 2 s, then acknowledged and dropped
 * (reported): one sender's messages cannot hold the relay's delivery window for everyone. */
#define NET_RETRY_MAX 64
#define NET_RETRY_ATTEMPTS 3
#define HELD_BYTES_PER_PEER (8u << 20)

/* The file transfer in progress (net_files.c); one at a time. */
struct net_xfer {
    int active;
    int upload;
    uint8_t mid[16];
    uint8_t blob_id[16];
    char peer[HUSH_USERNAME_MAX + 1];
    Hush__AttachmentPointer *p; /* owned while active */
    int phase;
    uint32_t gen;             /* answers to requests of an older generation are ignored */
    uint64_t size;            /* ciphertext bytes */
    uint64_t next;            /* next offset to ask for or send */
    uint64_t acked;           /* bytes the relay confirmed (upload) or written here (download) */
    int inflight;
    int fd;
    int restarts;
    uint64_t last_report_ms, last_saved_ms;
    uint64_t retry_at_ms;     /* after a refusal that may pass: start again then */
};
struct hush_net {
    hush_client *c;
    hush_callbacks cb;
    char host[256];
    char path[256];
    int port;
    int tls;
    int insecure;
    int connect_error_said;  /* this connection attempt's failure was reported already */
    int held_drop_said;      /* "too many held" was reported (once per network start) */
    char ca_file[512];
    char invite[129];
    pthread_t th;
    struct lws_context *ctx;
    struct lws *wsi;
    enum nstate st;
    atomic_int stop;
    atomic_int wake;          /* NET_WAKE_* flags from other threads */
    uint64_t next_id;
    uint8_t challenge[32];
    struct nbuf *out_head, *out_tail;
    struct hwire_rx rx; /* a frame arriving in pieces */
    struct req reqs[NET_MAX_REQS];
    int nreqs;
    struct offered {          /* one-time prekeys in a request still waiting for its Result */
        uint64_t req_id;
        uint32_t *ids;        /* NULL: slot free */
        size_t n;
    } offered[NET_MAX_OFFERED];
    int inflight;
    int64_t pump_cursor;      /* outbox id last handed out in this connection */
    int fetching;             /* a FetchBundles is outstanding: the pump waits */
    int unflushed_receipts;   /* messages notified since receipts were last flushed */
    uint64_t next_rotation_check_ms;
    char fetch_peer[HUSH_USERNAME_MAX + 1];
    char blocked_peer[HUSH_USERNAME_MAX + 1]; /* identity change pending: its outbox waits */
    char gone[NET_MAX_GONE][HUSH_USERNAME_MAX + 1]; /* room members the relay does not know: skipped */
    int ngone;
    struct keyreq {           /* key requests sent per (room, sender) this hour (at most NET_KEYREQ_PER_HOUR) */
        char room[HUSH_ROOM_ID_LEN + 1];
        char from[HUSH_USERNAME_MAX + 1];
        uint64_t since_ms;
        int count;
    } keyreq[NET_MAX_KEYREQ];
    struct {                  /* a room row finished inside the pump: recorded and reported after it */
        int set;
        int64_t id;
        uint8_t mid[16];
        int kind, state;
        char peer[HUSH_USERNAME_MAX + 1];
        hush_err err;         /* FAILED: why (reported) */
    } room_done;
    /* a new device being linked (hush_net_start_link): the ephemeral key its link box is sealed
     * to, and the code last shown */
    int link_mode;
    uint8_t link_pk[32], link_sk[32];
    char link_code[HUSH_LINK_CODE_MAX + 1];
    /* a database recovering an account (hush_net_start_recover): the name and the recovery key
     * (wiped once used) */
    int recover_mode;
    char recover_user[HUSH_USERNAME_MAX + 1];
    uint8_t recover_sk[64];
    /* an existing device linking another (hush_device_link), under mu */
    enum link_step link_step;
    char link_addr[HWIRE_PROVISION_ADDRESS_LEN + 1];
    uint8_t link_peer_pk[32];
    hush_err link_result;
    uint32_t link_dev;        /* the device id the relay reserved */
    /* hush_device_remove's request, under mu: LINK_QUEUED -> LINK_TOKEN_ASKED (sent) -> LINK_DONE */
    enum link_step rm_step;
    uint32_t rm_dev;
    hush_err rm_result;
    /* hush_devices' request, under mu: the answer is kept for the waiting thread */
    enum link_step ls_step;
    hush_err ls_result;
    hush_device_entry *ls_out;
    size_t ls_count;
    uint8_t mismatch_mid[16]; /* the message the relay last refused for its device list... */
    int mismatch_rounds;      /* ...and how many times in a row */
    int backoff_ms;
    uint64_t retry_at_ms;     /* pump again after a refusal (rate limit, quota...) */
    lws_sorted_usec_list_t sul_reconnect;
    lws_sorted_usec_list_t sul_tick;
    lws_sorted_usec_list_t sul_batch;
    struct inbound batch[NET_BATCH_MAX]; /* deliveries read in this pass, processed together */
    int nbatch;
    struct retry {            /* deliveries that failed alone, tried again from the tick */
        struct inbound in;
        int attempts;
        uint64_t due_ms;
    } retry[NET_RETRY_MAX];
    int nretry;
    int batch_scheduled;
    /* sends the relay acknowledged in this pass, recorded together (one commit), then the outbox
     * pumped again (its envelopes in one commit too) */
    struct sent_row {
        int64_t outbox_id;
        uint8_t mid[16];
        int kind;
        char peer[HUSH_USERNAME_MAX + 1];
    } sent[NET_MAX_INFLIGHT];
    int nsent;
    int send_pass_scheduled;
    hush_err pump_err;        /* an envelope the pump could not make (reported after the burst) */
    lws_sorted_usec_list_t sul_send_pass;
    /* status, read by other threads */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int waiters;       /* threads inside wait_until: hush_net_stop frees only at zero */
    unsigned long progress;   /* under mu: +1 with every broadcast of news on cv, so a waiter that
                               * was evaluating its condition (outside mu) when it came does not
                               * sleep through it */
    hush_conn_state conn;
    hush_err last_err;
    int queue_empty;          /* the relay said QueueEmpty on this connection and its deliveries were handled */
    int allow_after_drain;    /* the presence allow-list is to be sent at the next QueueEmpty */
    int fatal;
    struct net_xfer xfer;
    uint32_t blob_chunk;      /* the relay's Limits.max_blob_chunk (0: it takes no files) */
    uint64_t blob_max;
    struct typing_req typing[NET_MAX_TYPING];
    int ntyping;
    pthread_mutex_t typing_mu;
};

struct orow {
    int64_t id;
    char peer[HUSH_USERNAME_MAX + 1];
    uint8_t mid[16];
    int kind;
    uint8_t *body;
    size_t len;
};

#define MAX_DEVS 16

static inline uint64_t now_ms(void) { return hsdk_now_ms(); }


/* net_io.c */
const char *hnet_relay_text(char *buf, size_t cap, const char *s);
void hnet_describe_connect_error(struct hush_net *n, const char *why, char *out, size_t cap);
void hnet_set_conn(struct hush_net *n, hush_conn_state s, hush_err err);
void hnet_report(struct hush_net *n, hush_err e, const char *detail);
void hnet_signal_progress(struct hush_net *n);
void hnet_queue_frame(struct hush_net *n, Hush__Frame *f);
struct req *hnet_add_req(struct hush_net *n, enum req_type t);
int hnet_take_req(struct hush_net *n, uint64_t id, struct req *out);
void hnet_send_acks(struct hush_net *n, uint64_t *seqs, size_t count);
void hnet_report_state(struct hush_net *n, const char *peer, const uint8_t mid[16], int state);
void hnet_on_identity(struct hush_net *n, const char *peer, uint32_t dev);

/* net_keys.c */
void hnet_forget_offers(struct hush_net *n);
void hnet_settle_offer(struct hush_net *n, uint64_t req_id, int refused);
/* The presence lists (hand-made ones joined with rooms, net_keys.c); the allow-list waits for the
 * mailbox to be drained after a login (allow_after_drain). only_allow: the allow-list alone. */
void hnet_send_presence(struct hush_net *n, int only_allow);
int hnet_upload_in_flight(const struct hush_net *n);
void hnet_upload_keys(struct hush_net *n, uint32_t max_one_time);
int hnet_registered(hush_client *c);
void hnet_send_auth(struct hush_net *n);
/* What a proof names (hwire_auth_message): the relay's origin as we reached it and, on TLS, this
 * connection's channel binding. -1 (reported) when there is none. */
int hnet_proof_context(struct hush_net *n, char origin[HWIRE_ORIGIN_MAX + 1], uint8_t binding[HWIRE_BINDING_BYTES],
                       size_t *blen);
void hnet_rotation_check(struct hush_net *n);

/* net_push.c */
/* Tells the relay this device's push endpoint (or its removal), if there is something to tell. */
void hnet_send_push(struct hush_net *n);
/* Welcome.push_key: kept (meta 'push_vapid') for hush_push_vapid_key; empty: the relay has push off. */
void hnet_on_push_key(struct hush_net *n, const uint8_t *key, size_t len);
void hnet_on_push_result(struct hush_net *n, const struct req *r, const Hush__Result *res);
hush_err hnet_fatal_for(int code);
void hnet_fail_for_good(struct hush_net *n, hush_err e);

/* net_send.c */
void hnet_pump_outbox(struct hush_net *n);
void hnet_on_fetch_result(struct hush_net *n, const struct req *r, const Hush__Result *res);
void hnet_on_send_result(struct hush_net *n, const struct req *r, const Hush__Result *res);
void hnet_send_typing(struct hush_net *n);
/* Records the acknowledged sends (report: tell the app; not when stopping); then, for the pass,
 * pumps the outbox. schedule: after the frames already read in this pass of the event loop. */
void hnet_record_sent(struct hush_net *n, int report);
void hnet_schedule_send_pass(struct hush_net *n);

/* net_outbox.c: what the pairwise sender (net_send.c) and the room sender share. has_state:
 * the kinds whose state the app follows (texts, files); request_fetch: ask for a user's devices;
 * own_other_devices: ours as last listed (-1: never fetched); outbox_finished: a row done
 * (removed, its state set and reported). */
int hnet_has_state(int kind);
void hnet_request_fetch(struct hush_net *n, const char *peer);
int hnet_own_other_devices(hush_client *c, uint32_t *devs, int max);
void hnet_outbox_finished(struct hush_net *n, int64_t outbox_id, const uint8_t mid[16], int kind, int state,
                          const char *peer);

/* net_rooms.c */
/* Sends one room row (see the file's comment). 1 when sent, 0 when it must wait (a fetch started,
 * retry later, or the row is finished: n->room_done, which the pump records once the lock is
 * released). Called by the pump, lock held, inside its transaction. */
int hnet_send_room_row(struct hush_net *n, struct orow *o);
/* Records the room row finished in the pump's burst, if any (1: the pump should go on). */
int hnet_room_done(struct hush_net *n);
/* A typing indicator to a room ("#..."), ephemeral: encrypted with this device's key to the
 * members' devices that hold it; before the first message (no key yet), pairwise copies to the
 * member devices with a session, at most NET_ROOM_TYPING_PAIRWISE. */
void hnet_send_room_typing(struct hush_net *n, const char *peer, int typing);
/* A room message from (in->from, in->dev) did not decrypt (this device lacks the sender's key):
 * asks the sender to send it again (CONTENT_KEY_REQUEST, through the outbox), at most
 * NET_KEYREQ_PER_HOUR times per room and sender, and tells the app. */
void hnet_ask_room_key(struct hush_net *n, const struct inbound *in);
/* Users the relay says do not exist: room sends skip them (this connection's life). */
int hnet_user_gone(const struct hush_net *n, const char *user);
void hnet_mark_gone(struct hush_net *n, const char *user);

/* net_files.c */
void hnet_files_on_welcome(struct hush_net *n, const Hush__Limits *lim);
/* Starts the next upload or download when none runs. */
void hnet_files_pump(struct hush_net *n);
void hnet_files_on_result(struct hush_net *n, const struct req *r, const Hush__Result *res);
/* The connection went: the transfer stops (it resumes from what each side has). */
void hnet_files_reset(struct hush_net *n);
/* net_recv.c */
void hnet_flush_receipts(struct hush_net *n);
void hnet_batch_clear(struct hush_net *n);
void hnet_process_batch(struct hush_net *n);
/* Tries the deliveries that failed alone again when due (from the tick), acknowledging each once
 * stored or given up; hnet_retry_clear forgets them (the connection went: the relay delivers
 * them again). */
void hnet_retry_due(struct hush_net *n);
void hnet_retry_clear(struct hush_net *n);
/* Tests only (fault injection): when set and it returns non-zero for a delivery's sender,
 * storing that delivery fails as HUSH_ERR_STORAGE. NULL otherwise. */
extern int (*hnet_test_store_fault)(const char *from, uint32_t dev);
void hnet_batch_cb(lws_sorted_usec_list_t *sul);
void hnet_reprocess_pending(struct hush_net *n);
void hnet_replay_unnotified(struct hush_net *n);

/* net_link.c */
void hnet_link_provision(struct hush_net *n);
void hnet_on_provision_result(struct hush_net *n, const Hush__Result *res);
void hnet_on_provisioned(struct hush_net *n, const Hush__Provisioned *p);
void hnet_link_start(struct hush_net *n);
void hnet_on_link_token_result(struct hush_net *n, const Hush__Result *res);
void hnet_on_provision_send_result(struct hush_net *n, const Hush__Result *res);
void hnet_link_finish(struct hush_net *n, hush_err e);
void hnet_recover_request(struct hush_net *n);
void hnet_on_recover_result(struct hush_net *n, const Hush__Result *res);
void hnet_remove_start(struct hush_net *n);
void hnet_on_remove_result(struct hush_net *n, const Hush__Result *res);
void hnet_remove_finish(struct hush_net *n, hush_err e);
void hnet_list_start(struct hush_net *n);
void hnet_on_list_result(struct hush_net *n, const Hush__Result *res);
void hnet_list_finish(struct hush_net *n, hush_err e);

/* messaging.c */
/* Records that a receipt (state 2 delivered, 3 read) is owed for mid; caller holds the lock. */
hush_err hsdk_queue_receipt(hush_client *c, const char *peer, int state, const uint8_t mid[16]);
/* Turns owed receipts into outbox rows, one per (peer, state) per 256 ids; caller holds the lock. */
hush_err hsdk_flush_receipts(hush_client *c, int *queued);

/* keys.c: replenishing and rotating keys */
hush_err hsdk_generate_pre_keys(hush_client *c, uint32_t n);
/* Marks one-time prekeys as not handed out again (hush_prekey_upload marked them): for an upload
 * the relay refused, which stores nothing. Caller holds the lock. */
hush_err hsdk_unpublish_pre_keys(hush_client *c, const uint32_t *ids, size_t n);
/* Makes a new signed prekey current if the current one is older than max_age_ms; retires (deletes)
 * non-current signed prekeys older than grace_ms. *rotated = 1 if a new one was made. */
hush_err hsdk_rotate_signed_pre_key(hush_client *c, uint64_t max_age_ms, uint64_t grace_ms, int *rotated);

#endif
