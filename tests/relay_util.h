/* relay_util.h - start the real hushd on loopback and talk its protocol, for the relay tests. */
#ifndef HUSH_TEST_RELAY_UTIL_H
#define HUSH_TEST_RELAY_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "hush.h"
#include "hush.pb-c.h"
#include "hush_wire.h"
#include "wsc.h"

struct relay_proc {
    pid_t pid;
    int port;
    int metrics_port;
    char dir[256];
    char db[300];
    char log[300];
    char config[300];
    int tls;
};

/* A free TCP port on loopback (bound, read back, released). */
int relay_free_port(void);

/* Writes a config (extra lines appended), starts build/bin/hushd (path from $HUSHD) and waits until
 * it serves. Port numbers are chosen free. Fails the test on error. */
void relay_start(struct relay_proc *r, const char *name, const char *extra_config);
/* Starts it again on the same ports and database. */
void relay_restart(struct relay_proc *r);
/* Sends `sig` and waits for the exit; returns the wait status. */
int relay_stop(struct relay_proc *r, int sig);
/* Fetches a URL path from the metrics port; returns a malloc'd body (or NULL) and the status. */
char *relay_http_get(const struct relay_proc *r, const char *path, int *status);
/* A field of /proc/PID/status in KiB (VmRSS, VmHWM); -1 when unknown. */
long relay_proc_kib(pid_t pid, const char *field);
/* Reads a numeric metric (first sample whose line starts with `name`). -1 if absent. */
long relay_metric(const struct relay_proc *r, const char *name);

/* A device talking to the relay: real libhush keys, real WebSocket. */
#define TC_MAX_PUSH 4096
struct tclient {
    hush_client *sdk;
    struct wsc *ws;
    char user[33];
    uint32_t dev;
    uint64_t next_id;
    uint8_t challenge[32];
    Hush__Frame *push[TC_MAX_PUSH]; /* pushes received while waiting for a reply */
    size_t npush;
    const struct relay_proc *relay;
    uint64_t max_blob_bytes;        /* from the last Welcome's limits */
    uint32_t max_blob_chunk;
};

/* Creates (or reopens) the SDK database <user>.db and connects + says hello. */
struct tclient *tc_new(const struct relay_proc *r, const char *user, uint32_t dev);
/* Connects again (new socket, new hello); keeps the SDK client. Returns 0, or -1 if refused. */
int tc_reconnect(struct tclient *c);
void tc_disconnect(struct tclient *c);
void tc_free(struct tclient *c);
/* The proof of purpose "login" (digest NULL) or "register" (digest of the RegisterRequest) for this
 * connection to the test relay; writes the origin it names (at least HWIRE_ORIGIN_MAX + 1 bytes). */
void tc_proof(struct tclient *c, const char *purpose, const uint8_t *digest, char *origin, uint8_t sig[64]);
/* A RegisterRequest for c's device with up to nkeys one-time prekeys (tc_reg_build), signed for
 * this connection (tc_reg_sign: change the request before signing, or after to test a tampered
 * one), freed by tc_reg_free. */
struct tc_reg {
    Hush__RegisterRequest r;
    Hush__PreKeyUpload *keys;
    uint8_t *raw;
    uint8_t auth[32], idk[33], sig[64];
    char origin[HWIRE_ORIGIN_MAX + 1];
};
void tc_reg_build(struct tclient *c, uint32_t nkeys, const char *invite, struct tc_reg *g);
void tc_reg_sign(struct tclient *c, struct tc_reg *g);
void tc_reg_free(struct tc_reg *g);
/* Registers (with an invite, may be NULL) and returns the Result code. */
int tc_register(struct tclient *c, const char *invite);
int tc_login(struct tclient *c);
/* Sends a request (fills in the id) and waits for its Result; pushes are queued.
 * Returns the Result (free with hush__frame__free_unpacked) or NULL on timeout/close. */
Hush__Frame *tc_request(struct tclient *c, Hush__Frame *req, int timeout_ms);
/* Next push of the given case (queued ones first), or NULL on timeout. */
Hush__Frame *tc_next_push(struct tclient *c, Hush__Frame__MsgCase which, int timeout_ms);
/* Sends an envelope to (user, dev) with the given client message id; returns the Result code and
 * the seq in *seq. */
int tc_send(struct tclient *c, const char *to, uint32_t dev, const uint8_t *env, size_t len,
            const uint8_t msg_id[16], uint64_t *seq);
int tc_ack(struct tclient *c, const uint64_t *seqs, size_t n);
/* Fetches `user`'s bundles; returns the Result frame (or NULL). */
Hush__Frame *tc_fetch(struct tclient *c, const char *user);
/* Starts an SDK session with every device of `user` via the relay. */
int tc_start_session(struct tclient *c, const char *user);

/* Convenience: new client registered and logged in. */
struct tclient *tc_registered(const struct relay_proc *r, const char *user, uint32_t dev);

#endif
