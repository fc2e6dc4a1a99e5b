/* relay_util.c - see relay_util.h */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hush_wire.h"
#include "relay_util.h"
#include "util.h"

int relay_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t l = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &l) != 0)
        fail_msg("relay_free_port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

static void msleep(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

char *relay_http_get(const struct relay_proc *r, const char *path, int *status)
{
    *status = 0;
    int fd = wsc_tcp_connect("127.0.0.1", r->metrics_port, 1000);
    if (fd < 0)
        return NULL;
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 16, have = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (!buf)
            fail_msg("out of memory reading an HTTP answer");
        if (have == cap) {
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb)
                fail_msg("out of memory reading an HTTP answer");
            buf = nb;
        }
        ssize_t g = read(fd, buf + have, cap - have);
        if (g <= 0)
            break;
        have += (size_t)g;
    }
    close(fd);
    buf[have] = '\0';
    if (have < 12) {
        free(buf);
        return NULL;
    }
    *status = atoi(buf + 9);
    char *body = strstr(buf, "\r\n\r\n");
    char *out = strdup(body ? body + 4 : "");
    free(buf);
    return out;
}

long relay_proc_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long v = -1;
    size_t fl = strlen(field);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, fl) && line[fl] == ':')
            v = atol(line + fl + 1);
    fclose(f);
    return v;
}

long relay_metric(const struct relay_proc *r, const char *name)
{
    int st = 0;
    char *m = relay_http_get(r, "/metrics", &st);
    if (!m)
        return -1;
    long v = -1;
    size_t nl = strlen(name);
    for (char *line = m; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (!strncmp(line, name, nl) && (line[nl] == ' ' || line[nl] == '{')) {
            char *sp = strchr(line, ' ');
            if (sp)
                v = atol(sp + 1);
            break;
        }
    }
    free(m);
    return v;
}

static void spawn(struct relay_proc *r)
{
    const char *bin = getenv("HUSHD");
    if (!bin || !*bin)
        bin = "../build/bin/hushd";
    char out[320];
    snprintf(out, sizeof out, "%s/stdout.log", r->dir);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        if (r->tls) {
            /* Sanitizer builds: unwind fully through libcrypto (no frame pointers) so the one
             * suppression in mk/lsan.supp matches its exact stack; no effect otherwise. */
            char opts[512];
            const char *old = getenv("ASAN_OPTIONS");
            snprintf(opts, sizeof opts, "%s%sfast_unwind_on_malloc=0", old ? old : "", old && *old ? ":" : "");
            setenv("ASAN_OPTIONS", opts, 1);
        }
        execl(bin, bin, "--config", r->config, (char *)NULL);
        _exit(127);
    }
    r->pid = pid;
    /* Wait until it answers /healthz (at most 15 s). */
    for (int i = 0; i < 300; i++) {
        int status = 0;
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            fail_msg("hushd exited during startup (status %d); see %s", status, out);
        char *b = relay_http_get(r, "/healthz", &status);
        free(b);
        if (status == 200) {
            /* and the WebSocket port accepts */
            int fd = wsc_tcp_connect("127.0.0.1", r->port, 500);
            if (fd >= 0) {
                close(fd);
                return;
            }
        }
        msleep(50);
    }
    fail_msg("hushd did not start within 15 s; see %s", out);
}

void relay_start(struct relay_proc *r, const char *name, const char *extra)
{
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s", tpath(name));
    mkdir(r->dir, 0700);
    r->port = relay_free_port();
    r->metrics_port = relay_free_port();
    while (r->metrics_port == r->port)
        r->metrics_port = relay_free_port();
    snprintf(r->db, sizeof r->db, "%s/hushd.db", r->dir);
    snprintf(r->log, sizeof r->log, "%s/hushd.log", r->dir);
    snprintf(r->config, sizeof r->config, "%s/hushd.conf", r->dir);
    FILE *f = fopen(r->config, "w");
    assert_non_null(f);
    fprintf(f, "# written by the relay tests\nlisten = 127.0.0.1:%d\nmetrics_listen = 127.0.0.1:%d\n"
               "db = %s\nlog_file = %s\nworkers = 2\nlog_level = debug\n%s\n",
            r->port, r->metrics_port, r->db, r->log, extra ? extra : "");
    fclose(f);
    r->tls = extra && strstr(extra, "tls_cert") != NULL;
    spawn(r);
}

void relay_restart(struct relay_proc *r)
{
    spawn(r);
}

int relay_stop(struct relay_proc *r, int sig)
{
    if (r->pid <= 0)
        return -1;
    kill(r->pid, sig);
    int status = 0;
    for (int i = 0; i < 600; i++) {
        pid_t w = waitpid(r->pid, &status, WNOHANG);
        if (w == r->pid) {
            r->pid = 0;
            return status;
        }
        msleep(25);
    }
    kill(r->pid, SIGKILL);
    waitpid(r->pid, &status, 0);
    r->pid = 0;
    fail_msg("hushd did not exit within 15 s of signal %d", sig);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* protocol client */

static int tc_hello(struct tclient *c)
{
    c->ws = wsc_connect("127.0.0.1", c->relay->port, c->relay->tls, 5000);
    if (!c->ws)
        return -1;
    Hush__Hello h = HUSH__HELLO__INIT;
    h.min_version = 1;
    h.max_version = 1;
    h.client = "hush-tests";
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_HELLO;
    f.hello = &h;
    Hush__Frame *w = tc_request(c, &f, 5000);
    if (!w || w->msg_case != HUSH__FRAME__MSG_WELCOME || w->welcome->challenge.len != 32) {
        if (w)
            hush__frame__free_unpacked(w, NULL);
        return -1;
    }
    memcpy(c->challenge, w->welcome->challenge.data, 32);
    if (w->welcome->limits) {
        c->max_blob_bytes = w->welcome->limits->max_blob_bytes;
        c->max_blob_chunk = w->welcome->limits->max_blob_chunk;
    }
    hush__frame__free_unpacked(w, NULL);
    return 0;
}

struct tclient *tc_new(const struct relay_proc *r, const char *user, uint32_t dev)
{
    struct tclient *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->relay = r;
    snprintf(c->user, sizeof c->user, "%s", user);
    c->dev = dev;
    c->next_id = 1;
    c->sdk = open_client(user, dev, HUSH_DURABILITY_NORMAL);
    if (tc_hello(c) != 0)
        fail_msg("%s: cannot connect to the relay", user);
    return c;
}

static void drop_pushes(struct tclient *c)
{
    for (size_t i = 0; i < c->npush; i++)
        hush__frame__free_unpacked(c->push[i], NULL);
    c->npush = 0;
}

void tc_disconnect(struct tclient *c)
{
    wsc_close(c->ws);
    c->ws = NULL;
    drop_pushes(c);
}

int tc_reconnect(struct tclient *c)
{
    tc_disconnect(c);
    return tc_hello(c);
}

void tc_free(struct tclient *c)
{
    if (!c)
        return;
    tc_disconnect(c);
    hush_client_close(c->sdk);
    free(c);
}

static int send_frame(struct tclient *c, const Hush__Frame *f)
{
    size_t n = hush__frame__get_packed_size(f);
    uint8_t *buf = malloc(n ? n : 1);
    hush__frame__pack(f, buf);
    int r = wsc_send(c->ws, buf, n);
    free(buf);
    return r;
}

static Hush__Frame *recv_frame(struct tclient *c, int timeout_ms)
{
    uint8_t *data = NULL;
    size_t len = 0;
    int r = wsc_recv(c->ws, &data, &len, timeout_ms);
    if (r != 1)
        return NULL;
    Hush__Frame *f = hush__frame__unpack(NULL, len, data);
    free(data);
    if (!f)
        fail_msg("%s: relay sent an undecodable frame", c->user);
    return f;
}

static void queue_push(struct tclient *c, Hush__Frame *f)
{
    if (c->npush == TC_MAX_PUSH)
        fail_msg("%s: more than %d unread pushes", c->user, TC_MAX_PUSH);
    c->push[c->npush++] = f;
}

/* Receives until a frame satisfies match(frame, arg), queueing the others as pushes; NULL on
 * timeout or close. */
static Hush__Frame *recv_until(struct tclient *c, int timeout_ms, int (*match)(const Hush__Frame *, uint64_t),
                               uint64_t arg)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        long left = timeout_ms - ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0)
            return NULL;
        Hush__Frame *f = recv_frame(c, (int)left);
        if (!f)
            return NULL;
        if (match(f, arg))
            return f;
        queue_push(c, f);
    }
}

static int is_reply_to(const Hush__Frame *f, uint64_t id)
{
    return f->id == id && (f->msg_case == HUSH__FRAME__MSG_RESULT || f->msg_case == HUSH__FRAME__MSG_WELCOME);
}

static int is_case(const Hush__Frame *f, uint64_t which)
{
    return (uint64_t)f->msg_case == which;
}

Hush__Frame *tc_request(struct tclient *c, Hush__Frame *req, int timeout_ms)
{
    if (!c->ws)
        return NULL;
    req->id = c->next_id++;
    if (send_frame(c, req) != 0)
        return NULL;
    return recv_until(c, timeout_ms, is_reply_to, req->id);
}

Hush__Frame *tc_next_push(struct tclient *c, Hush__Frame__MsgCase which, int timeout_ms)
{
    for (size_t i = 0; i < c->npush; i++) {
        if (c->push[i]->msg_case == which) {
            Hush__Frame *f = c->push[i];
            memmove(&c->push[i], &c->push[i + 1], (c->npush - i - 1) * sizeof *c->push);
            c->npush--;
            return f;
        }
    }
    if (!c->ws)
        return NULL;
    return recv_until(c, timeout_ms, is_case, (uint64_t)which);
}

static int result_code(Hush__Frame *f)
{
    if (!f)
        return -1;
    int code = f->msg_case == HUSH__FRAME__MSG_RESULT ? (int)f->result->code : -2;
    hush__frame__free_unpacked(f, NULL);
    return code;
}

void tc_proof(struct tclient *c, const char *purpose, const uint8_t *digest, char *origin, uint8_t sig[64])
{
    uint8_t binding[32];
    size_t blen = wsc_tls_binding(c->ws, binding);
    assert_int_equal(hwire_origin(origin, HWIRE_ORIGIN_MAX + 1, c->relay->tls, "127.0.0.1", c->relay->port), 0);
    assert_int_equal(hush_auth_proof(c->sdk, purpose, origin, binding, blen, digest, c->challenge, sig), HUSH_OK);
}

void tc_reg_build(struct tclient *c, uint32_t nkeys, const char *invite, struct tc_reg *g)
{
    memset(g, 0, sizeof *g);
    uint32_t reg = 0;
    size_t uplen = 0;
    assert_int_equal(hush_device_auth_key(c->sdk, g->auth), HUSH_OK);
    assert_int_equal(hush_device_identity_key(c->sdk, g->idk), HUSH_OK);
    assert_int_equal(hush_device_info(c->sdk, NULL, NULL, &reg), HUSH_OK);
    assert_int_equal(hush_prekey_upload(c->sdk, nkeys, &g->raw, &uplen, NULL), HUSH_OK);
    g->keys = hush__pre_key_upload__unpack(NULL, uplen, g->raw);
    assert_non_null(g->keys);
    Hush__RegisterRequest r = HUSH__REGISTER_REQUEST__INIT;
    r.username = c->user;
    r.device_id = c->dev;
    r.auth_key.data = g->auth;
    r.auth_key.len = 32;
    r.signature.data = g->sig;
    r.signature.len = 64;
    r.identity_key.data = g->idk;
    r.identity_key.len = 33;
    r.registration_id = reg;
    r.keys = g->keys;
    r.invite = (char *)(invite ? invite : "");
    g->r = r;
}

void tc_reg_sign(struct tclient *c, struct tc_reg *g)
{
    uint8_t digest[HWIRE_REGISTER_DIGEST_BYTES];
    assert_int_equal(hwire_register_digest(&g->r, digest), 0);
    tc_proof(c, HWIRE_PURPOSE_REGISTER, digest, g->origin, g->sig);
    g->r.origin = g->origin;
}

void tc_reg_free(struct tc_reg *g)
{
    hush__pre_key_upload__free_unpacked(g->keys, NULL);
    hush_free(g->raw);
    memset(g, 0, sizeof *g);
}

int tc_register(struct tclient *c, const char *invite)
{
    struct tc_reg g;
    tc_reg_build(c, 100, invite, &g);
    tc_reg_sign(c, &g);
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_REGISTER;
    f.register_ = &g.r;
    int code = result_code(tc_request(c, &f, 10000));
    tc_reg_free(&g);
    return code;
}

int tc_login(struct tclient *c)
{
    uint8_t sig[64];
    char origin[HWIRE_ORIGIN_MAX + 1];
    tc_proof(c, HWIRE_PURPOSE_LOGIN, NULL, origin, sig);
    Hush__LoginRequest l = HUSH__LOGIN_REQUEST__INIT;
    l.username = c->user;
    l.device_id = c->dev;
    l.signature.data = sig;
    l.signature.len = 64;
    l.origin = origin;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_LOGIN;
    f.login = &l;
    return result_code(tc_request(c, &f, 10000));
}

int tc_send(struct tclient *c, const char *to, uint32_t dev, const uint8_t *env, size_t len, const uint8_t msg_id[16],
            uint64_t *seq)
{
    Hush__Recipient rc = HUSH__RECIPIENT__INIT;
    rc.username = (char *)to;
    rc.device_id = dev;
    rc.envelope.data = (uint8_t *)env;
    rc.envelope.len = len;
    Hush__Recipient *rcs[1] = { &rc };
    Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
    s.client_msg_id.data = (uint8_t *)msg_id;
    s.client_msg_id.len = 16;
    s.n_recipients = 1;
    s.recipients = rcs;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_SEND;
    f.send = &s;
    Hush__Frame *r = tc_request(c, &f, 15000);
    if (!r)
        return -1;
    int code = r->msg_case == HUSH__FRAME__MSG_RESULT ? (int)r->result->code : -2;
    if (seq)
        *seq = (code == 0 && r->result->n_seqs == 1) ? r->result->seqs[0] : 0;
    hush__frame__free_unpacked(r, NULL);
    return code;
}

int tc_ack(struct tclient *c, const uint64_t *seqs, size_t n)
{
    Hush__AckRequest a = HUSH__ACK_REQUEST__INIT;
    a.n_seqs = n;
    a.seqs = (uint64_t *)seqs;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_ACK;
    f.ack = &a;
    return result_code(tc_request(c, &f, 10000));
}

Hush__Frame *tc_fetch(struct tclient *c, const char *user)
{
    Hush__FetchBundlesRequest r = HUSH__FETCH_BUNDLES_REQUEST__INIT;
    r.username = (char *)user;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.msg_case = HUSH__FRAME__MSG_FETCH_BUNDLES;
    f.fetch_bundles = &r;
    return tc_request(c, &f, 10000);
}

int tc_start_session(struct tclient *c, const char *user)
{
    Hush__Frame *r = tc_fetch(c, user);
    if (!r || r->msg_case != HUSH__FRAME__MSG_RESULT || r->result->code != 0 || r->result->n_bundles == 0) {
        if (r)
            hush__frame__free_unpacked(r, NULL);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < r->result->n_bundles && rc == 0; i++) {
        size_t n = hush__key_bundle__get_packed_size(r->result->bundles[i]);
        uint8_t *b = malloc(n);
        hush__key_bundle__pack(r->result->bundles[i], b);
        rc = hush_bundle_import(c->sdk, b, n, NULL, NULL) == HUSH_OK ? 0 : -1;
        free(b);
    }
    hush__frame__free_unpacked(r, NULL);
    return rc;
}

struct tclient *tc_registered(const struct relay_proc *r, const char *user, uint32_t dev)
{
    struct tclient *c = tc_new(r, user, dev);
    int code = tc_register(c, NULL);
    if (code != 0)
        fail_msg("register %s: code %d", user, code);
    return c;
}
