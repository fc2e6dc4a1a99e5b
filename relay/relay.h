/*
 * relay.h - hushd internals (prefix relay_ and per-module prefixes cfg_, rlog_, metrics_, storage_,
 * directory_, presence_, loop_). Not installed.
 *
 * Threads:
 *   - N loop threads, each with its own libwebsockets context listening on the same port
 *     (SO_REUSEPORT). A connection (an "actor") lives on one loop and only that loop touches it.
 *   - one storage thread that owns the database connection and commits whatever all loops handed it
 *     in one transaction (group commit), then posts results back to the loops.
 *   - the main thread: signals, supervision of the above.
 * Cross-thread communication is by message only: loop_post() (inbox.c) appends an event to a loop's
 * inbox and wakes it; storage_submit() appends a job to the storage queue.
 */
#ifndef HUSH_RELAY_H
#define HUSH_RELAY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hush.pb-c.h"
#include "hush_store.h"
#include "hush_wire.h"

#define RELAY_USERNAME_MAX 32
#define RELAY_MAX_LOOPS 64

/* ------------------------------------------------------------------------------------------ */
/* configuration (config.c) */

enum reg_policy { REG_OPEN = 0, REG_INVITE = 1, REG_CLOSED = 2 };

struct relay_config {
    char listen_host[64];
    int listen_port;
    char metrics_host[64];
    int metrics_port;             /* 0 disables */
    char db_path[512];
    char public_urls[8][256];     /* origins clients may name in their proofs ("wss://host:port") */
    int n_public_urls;            /* 0: derived from listen (see relay_origin_ok) */
    char tls_cert[512];
    char tls_key[512];
    int workers;                  /* event-loop threads; 0 = number of CPUs */
    enum reg_policy registration;
    int durability_full;          /* 1: synchronous=FULL (power loss), 0: NORMAL (process crash) */
    int log_level;                /* 0 error, 1 warn, 2 info, 3 debug */
    char log_file[512];           /* "" = stderr */
    uint32_t max_frame_unauth;
    uint32_t max_frame;
    uint32_t max_envelope;
    uint32_t max_recipients;
    uint32_t max_room_recipients; /* a send with a shared envelope (a room message) */
    uint32_t max_prekeys_per_upload;
    uint32_t delivery_window;
    uint32_t auth_timeout_s;
    uint32_t ping_interval_s;
    uint32_t idle_timeout_s;
    uint32_t ttl_days;
    uint32_t ttl_seconds;         /* overrides ttl_days when non-zero */
    uint32_t quota_messages;
    uint64_t quota_bytes;
    uint32_t fetch_burst;
    uint32_t fetch_refill_per_min;
    uint32_t fetch_total_burst;    /* all bundle fetches of one requester */
    uint32_t fetch_total_per_min;
    uint32_t sender_share_percent; /* of a recipient device's quota one sender may fill */
    uint32_t prekeys_low_interval_s; /* at most one PreKeysLow push per device per interval */
    uint32_t send_burst;
    uint32_t send_refill_per_s;
    uint32_t max_connections;
    uint32_t max_batch;           /* jobs per group commit */
    uint32_t early_delivery_ms;   /* a message for an online device waits this long for its ack
                                     before it is written (0: written at once, as before) */
    uint32_t prekeys_low_threshold;
    uint32_t max_devices;         /* devices one user may have (linked devices included) */
    uint32_t provision_timeout_s; /* a provisioning connection waits this long for its link box */
    uint32_t link_token_ttl_s;    /* a link token is valid this long */
    uint32_t provisions_per_min;  /* provisioning addresses handed out per minute, relay-wide */
    uint32_t device_idle_days;    /* a device not seen for this long is removed (never a user's last); 0: never */
    /* push wake-ups (pusher.c) */
    int push_enabled;             /* 0: endpoints are refused and nothing is pushed */
    char push_key[512];           /* the VAPID key file ("": <db>.push-key.pem) */
    char push_contact[256];       /* VAPID "sub": mailto: or https: URL of the operator ("": none) */
    char push_ca_file[512];       /* PEM bundle for the push services' certificates ("": the system's) */
    int push_allow_http;          /* 1: http:// endpoints accepted (tests, a distributor on a LAN) */
    int push_allow_private;       /* 1: endpoints on loopback / private / link-local addresses allowed */
    uint32_t push_nonurgent_period_s; /* non-urgent wake-ups of one device: at most one per period */
    uint32_t push_min_interval_ms;    /* between two wake-ups of one device */
    uint32_t push_max_per_hour;       /* wake-ups of one device per hour */
    uint32_t push_host_burst;         /* requests to one push host: burst... */
    uint32_t push_host_per_s;         /* ...and refill per second */
    uint32_t push_timeout_s;          /* one request, connection included */
    uint32_t push_ttl_s;              /* the TTL header: how long the push service keeps a wake-up */
    uint32_t push_max_attempts;       /* tries of one wake-up (retryable failures) */
    /* files (blobs.c) */
    int blob_enabled;             /* 0: file requests are refused */
    char blob_dir[512];           /* where files live ("": <db>.blobs) */
    uint64_t max_blob_bytes;      /* largest file */
    uint64_t blob_quota_bytes;    /* bytes of files one user may have stored */
    uint64_t blob_disk_reserve;   /* free disk space new files must leave */
    uint32_t blob_uploads_per_hour; /* files one user may create per hour */
    uint32_t blob_ttl_days;       /* how long a file is kept (0: as long as a message; never less) */
};

void cfg_defaults(struct relay_config *c);
/* Applies "key = value" text. Returns 0, or -1 with a message "file:line: ..." in err. */
int cfg_parse_text(struct relay_config *c, const char *text, size_t len, const char *name, char *err, size_t errlen);
int cfg_load_file(struct relay_config *c, const char *path, char *err, size_t errlen);
/* Sets one key (also used by command-line flags). */
int cfg_set(struct relay_config *c, const char *key, const char *value, char *err, size_t errlen);
/* Cross-field checks (TLS pair complete, ports, limits). */
int cfg_validate(const struct relay_config *c, char *err, size_t errlen);
void cfg_print(const struct relay_config *c, FILE *f);

/* ------------------------------------------------------------------------------------------ */
/* 1 if a client may name `origin` in its proof: one of public_url, or the listen address itself
 * (any host on the listen port when listening on a wildcard address; "localhost" too for a
 * loopback address). config.c */
int relay_origin_ok(const struct relay_config *c, const char *origin);

/* logging (log.c): one line per event, never secrets or ciphertext */

enum { RLOG_ERROR = 0, RLOG_WARN = 1, RLOG_INFO = 2, RLOG_DEBUG = 3 };
void rlog_init(int level, const char *path);
void rlog(int level, const char *event, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ------------------------------------------------------------------------------------------ */
/* metrics (metrics.c): counters readable from any thread */

#define METRICS_ERR_CODES 28
#define METRICS_BATCH_BUCKETS 8
#define METRICS_LAT_BUCKETS 10
struct metrics {
    atomic_long connections;
    atomic_long connections_total;
    atomic_long authenticated;
    atomic_long frames_in;
    atomic_long frames_out;
    atomic_long messages_in;       /* stored (acknowledged) messages */
    atomic_long messages_out;      /* deliveries written to a socket */
    atomic_long messages_acked;
    atomic_long messages_expired;
    atomic_long messages_unwritten;    /* acknowledged by their recipients before they had to be written */
    atomic_long messages_written_late; /* delivered early, written after their wait (no ack in time) */
    atomic_long ephemeral_in;
    atomic_long auth_verifications; /* proofs checked in full against a valid public key */
    atomic_long mailbox_depth;
    atomic_long commits;
    atomic_long commit_failures;
    atomic_long batch_jobs;        /* sum of batch sizes */
    atomic_long batch_hist[METRICS_BATCH_BUCKETS]; /* <=1,2,4,8,16,32,64,+inf */
    atomic_long commit_us_sum;
    atomic_long commit_lat_hist[METRICS_LAT_BUCKETS]; /* <=0.1,0.25,0.5,1,2.5,5,10,25,50ms,+inf */
    atomic_long errors[METRICS_ERR_CODES];
    /* push wake-ups (pusher.c) */
    atomic_long push_sent;         /* accepted by the push service (2xx) */
    atomic_long push_failed[7];    /* attempts that failed, by PUSH_FAIL_* */
    atomic_long push_dropped;      /* endpoints given up (gone, or refused by policy) */
    atomic_long push_retries;
    atomic_long push_coalesced;    /* wake-ups merged into one already waiting */
    atomic_long push_cancelled;    /* waiting wake-ups dropped because the device connected */
    atomic_long push_host_limited; /* starts delayed by a push host's rate limit */
    /* files (blobs.c) */
    atomic_long blobs_created;
    atomic_long blobs_completed;
    atomic_long blobs_expired;     /* deleted by expiry or abandoned uploads */
    atomic_long blobs_digest_mismatch;
    atomic_long blob_bytes_in;
    atomic_long blob_bytes_out;
};
enum { PUSH_FAIL_GONE, PUSH_FAIL_BACKOFF, PUSH_FAIL_REJECTED, PUSH_FAIL_SERVER, PUSH_FAIL_NETWORK, PUSH_FAIL_REFUSED,
       PUSH_FAIL_OVERLOAD };
extern struct metrics g_metrics;
void metrics_error(int code);
void metrics_commit(long jobs, long usec);
/* Renders the Prometheus text format into a malloc'd buffer. */
char *metrics_render(size_t *len);

/* ------------------------------------------------------------------------------------------ */
/* outgoing frames */

struct outbuf {
    struct outbuf *next;
    size_t len;
    uint64_t seq;          /* a stored delivery (0: anything else) */
    unsigned char data[];  /* LWS_PRE bytes of headroom, then len bytes */
};
struct outbuf *outbuf_from_frame(const Hush__Frame *f, uint64_t seq);
struct outbuf *outbuf_result(uint64_t req_id, Hush__ErrorCode code, const char *message);

/* ------------------------------------------------------------------------------------------ */
/* events: storage thread / other loops -> a loop */

enum ev_type {
    EV_SEND_FRAME,    /* write `out` to conn (a reply or a push) */
    EV_LOGIN_DONE,    /* login/register finished: ok, username, device_id, prekeys_low */
    EV_MAIL,          /* result of a mailbox fetch: `mail` frames in seq order, `drained` */
    EV_LIVE,          /* a message just committed for conn's device: `out` with seq */
    EV_KICK,          /* close conn with `code` (SESSION_REPLACED: another login; DEVICE_REMOVED) */
    EV_PROVISIONED,   /* write `out` (a Provisioned push) to a provisioning conn, then expect its registration */
    EV_RECOVER_DONE,  /* RecoverRequest checked: ok with username and the reserved device_id, or `out` (a refusal) */
    EV_RESUME,        /* conn's storage jobs fell under the resume mark: read its socket again */
    EV_BLOB_DONE,     /* a file request's answer (`out`): write it, one request fewer in flight */
    EV_SHUTDOWN       /* stop: finish and close everything */
};

struct event {
    struct event *next;
    enum ev_type type;
    uint64_t conn;
    struct outbuf *out;
    struct outbuf *mail;  /* list */
    int ok;
    int drained;
    int code;
    uint32_t device_id;
    uint32_t prekeys;
    int prekeys_low;
    uint64_t req_id;      /* EV_RECOVER_DONE: the request the loop answers */
    char username[RELAY_USERNAME_MAX + 1];
};

struct event *event_new(enum ev_type t, uint64_t conn);
void event_free(struct event *e);

/* loop inboxes (inbox.c): the only way into a loop from another thread */
int loop_count(void);
void loop_post(int loop, struct event *e);  /* takes ownership; drops it if the loop is gone */
/* The loop's side: open once it can be woken (`wake(arg)` is called under the inbox's lock, at
 * most once per non-empty batch, never after inbox_close); take the whole list; close before the
 * loop goes away; free what is left after every loop stopped. */
void inbox_open(int loop, void (*wake)(void *arg), void *arg);
struct event *inbox_take(int loop);
void inbox_close(int loop);
void inbox_free_all(void);

/* ------------------------------------------------------------------------------------------ */
/* storage thread (storage.c) */

enum job_type {
    JOB_REGISTER, JOB_LOGIN, JOB_UPLOAD, JOB_FETCH_BUNDLES, JOB_SEND, JOB_FETCH_MAIL, JOB_ACK,
    JOB_SET_ALLOW, JOB_DISCONNECT, JOB_EXPIRE, JOB_LINK_TOKEN, JOB_REMOVE_DEVICE, JOB_RECOVER, JOB_LIST_DEVICES, JOB_STOP,
    JOB_FLUSH, /* internal: a batch only to write the messages whose wait for an ack is over */
    JOB_PUSH_REGISTER, /* PushRegisterRequest or PushRemoveRequest */
    JOB_PUSH_GONE      /* internal (push thread): the push service says the endpoint is gone */
};

/*
 * Storage work a connection has queued and not yet seen finished. Shared by the connection and
 * each of its jobs (refs); whoever drops the last reference frees it. The loop stops reading a
 * connection whose work in flight reaches JOBS_PAUSE jobs or BYTES_PAUSE bytes of requests, and
 * the storage thread posts EV_RESUME when it falls to the resume marks: a client that pipelines
 * requests without reading the answers (acks need none) cannot queue unbounded work.
 */
#define RELAY_MAX_SEQS_PER_ACK 4096
#define RELAY_MAX_STORED_PREKEYS 1000 /* one-time prekeys kept per device */
#define GATE_JOBS_PAUSE 64
#define GATE_JOBS_RESUME 16
#define GATE_BYTES_PAUSE (4u << 20)
#define GATE_BYTES_RESUME (1u << 20)
struct jobgate {
    atomic_int refs;
    atomic_int jobs;
    atomic_long bytes;
    atomic_int paused;
    int loop;
    uint64_t conn;
};
struct jobgate *gate_new(int loop, uint64_t conn);
void gate_unref(struct jobgate *g);
/* 1 when the connection must stop reading (and the pause was recorded), 0 otherwise. */
int gate_charge(struct jobgate *g, size_t bytes);

struct job {
    struct job *next;
    struct jobgate *gate;                /* NULL for internal jobs; one reference while queued */
    size_t cost;                         /* bytes of the request, charged to the gate */
    int counted;                         /* in the relay-wide queue figures (storage_submit) */
    enum job_type type;
    int loop;
    uint64_t conn;
    uint64_t req_id;
    Hush__Frame *frame;                  /* owned: the request as received (NULL for internal jobs) */
    char username[RELAY_USERNAME_MAX + 1]; /* authenticated device (or the claimed one for auth jobs) */
    uint32_t device_id;
    uint8_t challenge[HWIRE_CHALLENGE_BYTES];
    uint8_t binding[HWIRE_BINDING_BYTES]; /* auth jobs: the connection's TLS channel binding */
    size_t binding_len;                  /* 0 without TLS */
    int recovery;                        /* JOB_REGISTER of a recovering user (after JOB_RECOVER) */
    uint64_t after_seq;                  /* JOB_FETCH_MAIL */
    uint32_t limit;                      /* JOB_FETCH_MAIL */
};

int storage_start(const struct relay_config *cfg, char *err, size_t errlen);
void storage_submit(struct job *j);      /* takes ownership */
/* The whole relay's queued storage work. Requests beyond these bounds are answered RATE_LIMITED
 * ("relay busy") without being queued; internal jobs (mail fetches, disconnects) always go in. */
#define STORAGE_MAX_QUEUED_JOBS 200000
#define STORAGE_MAX_QUEUED_BYTES (512ul << 20)
int storage_busy(void);
/* Queues the deletion of (user, dev)'s push endpoint if it is still `url` (any thread). */
void storage_push_gone(const char *user, uint32_t dev, const char *url);
/* Waits (at most timeout_ms) until every submitted job has been committed and answered. */
void storage_quiesce(int timeout_ms);
/* Processes every queued job, then stops the thread and closes the database. */
void storage_stop(void);
struct job *job_new(enum job_type t, int loop, uint64_t conn, uint64_t req_id);
void job_free(struct job *j);

/* Opens/creates the relay database (migrations) - also used by `hushd invite`. */
hstore *storage_open_db(const char *path, int durability_full, char *err, size_t errlen);
/* Mints `n` invite tokens into the database, printing them to `out`. */
int storage_mint_invites(const char *db_path, int n, FILE *out, char *err, size_t errlen);
/* `hushd user ...` on the database (safe while hushd runs: one transaction each). op: "list",
 * "show", "delete", "remove-device". Returns 0, 1 (no such user/device, message in err), -1. */
int storage_user_admin(const char *db_path, const char *op, const char *user, uint32_t dev, FILE *out, char *err,
                       size_t errlen);

/* ------------------------------------------------------------------------------------------ */
/* directory (directory.c): which loop and connection a device is on. The narrow interface a
 * multi-node backend (NATS) replaces. */

struct dir_entry {
    int loop;
    uint64_t conn;
};
void directory_init(void);
/* Registers (user, device) at (loop, conn); returns 1 and fills *old when it replaced one.
 * *user_online is set to 1 when this made the user's first connected device. -1: no memory. */
int directory_register(const char *user, uint32_t device, int loop, uint64_t conn, struct dir_entry *old,
                       int *user_online);
/* Removes the entry only if it still points to conn. Returns 1 if removed; *user_offline is set
 * to 1 when the user has no connected device left. */
int directory_unregister(const char *user, uint32_t device, uint64_t conn, int *user_offline);
int directory_lookup(const char *user, uint32_t device, struct dir_entry *out);
/* Number of connected devices of a user. */
int directory_user_devices(const char *user);
/* Devices being linked: a provisioning address -> the unauthenticated connection waiting at it.
 * put: -1 on no memory. take: removes it (single use), 1 if it was there. drop: removes it only if
 * it still points to conn (the connection closed). */
int directory_provision_put(const char *address, int loop, uint64_t conn);
int directory_provision_take(const char *address, struct dir_entry *out);
void directory_provision_drop(const char *address, uint64_t conn);
int directory_provision_waiting(const char *address);
void directory_free(void);

/* ------------------------------------------------------------------------------------------ */
/* presence (presence.c): allow-lists, subscriptions, online state. */

void presence_init(void);
void presence_free(void);
/* Replaces owner's allow-list (persisted by the caller). */
void presence_set_allow(const char *owner, char *const *users, size_t n);
/* Subscribes conn (user `subscriber`) to targets; pushes current state for allowed ones. */
void presence_subscribe(int loop, uint64_t conn, const char *subscriber, char *const *targets, size_t n);
void presence_unsubscribe_conn(uint64_t conn);
/* A user's first device came online / last device went offline. */
void presence_changed(const char *user, int online, uint64_t last_seen_ms);
/* Loads allow-lists and last-seen times from the database at start. */
void presence_load(hstore *db);

/* ------------------------------------------------------------------------------------------ */
/* push wake-ups: the push_endpoints table lives on the storage thread (push.c); pusher.c is the
 * thread that POSTs them (docs/ARCHITECTURE.md, "Push wake-ups"). */

#define PUSH_MAX_ENDPOINT 1000 /* = WEBPUSH_MAX_ENDPOINT (webpush.h) */
struct push_wake {
    struct push_wake *next;
    char user[RELAY_USERNAME_MAX + 1];
    uint32_t dev;
    int urgent;
    char url[PUSH_MAX_ENDPOINT + 1];
    uint8_t p256dh[65];
    uint8_t auth[16];
};
/* Starts the push thread and loads (or makes) the VAPID key; nothing when push is off. The
 * thread calls gone() for an endpoint the push service says is gone (or this relay refuses to
 * reach): storage_push_gone, which marks it gone. */
int pusher_start(const struct relay_config *cfg, void (*gone)(const char *user, uint32_t dev, const char *url),
                 char *err, size_t errlen);
/* Drops what is queued or in flight and stops the thread. */
void pusher_stop(void);
int pusher_enabled(void);
void pusher_public_key(uint8_t out[65]);
/* A wake-up for a device (after the commit that stored its mail); takes ownership of w. */
void pusher_submit(struct push_wake *w);
/* The device connected: its waiting wake-up is dropped. */
void pusher_cancel(const char *user, uint32_t dev);

/* ------------------------------------------------------------------------------------------ */
/* files (blobs.c): the blob thread owns table `blobs` (its own database connection) and the
 * files under blob_dir; docs/ARCHITECTURE.md, "Files". */

#define RELAY_BLOB_CHUNK (256u * 1024)          /* most bytes in one put or get (less if max_frame is small) */
#define RELAY_BLOB_MAX_QUEUED (64ul << 20)      /* request bytes waiting for the blob thread, relay-wide */
#define RELAY_BLOB_CONN_INFLIGHT 8              /* file requests of one connection before it is paused */
/* Makes the directory, deletes what a crash left half-made and starts the thread (nothing when
 * files are off). After storage_start (the schema). */
int blobs_start(const struct relay_config *cfg, char *err, size_t errlen);
/* Drops what is queued and stops the thread. */
void blobs_stop(void);
int blobs_enabled(void);
uint32_t blobs_chunk_max(void);
uint64_t blobs_ttl_seconds(void);
/* Queues a BlobCreate/Put/Status/Get request of an authenticated device. Takes f on success (the
 * answer comes back to the loop as EV_BLOB_DONE); -1 (f still the caller's): the queue is full. */
int blobs_submit(int loop, uint64_t conn, const char *user, uint32_t dev, Hush__Frame *f, size_t cost);

/* ------------------------------------------------------------------------------------------ */
/* misc */

uint64_t relay_now_ms(void);
/* The key of a device in the relay's maps: user, NUL, device id (4 bytes). `k` holds at least
 * RELAY_USERNAME_MAX + 5 bytes. Returns the key's length. */
size_t relay_dev_key(unsigned char *k, const char *user, uint32_t dev);
int relay_valid_username(const char *s);
extern atomic_int g_stopping;

#endif
