/*
 * bench_relay.c - first figures for hushd, measured against the real relay process on loopback.
 * It starts build/bin/hushd itself (temporary database, free ports) and speaks the wire protocol
 * directly, without client-side crypto, so it loads the relay alone:
 *
 *   1. idle authenticated connections: relay RSS growth per connection, and the connect+login rate
 *   2. acknowledged messages per second (recipients offline: every ack means "committed")
 *   3. drain speed of a backlog to one device (deliver + ack)
 *
 *   build/bench/bench_relay [--conns N] [--messages N] [--backlog N] [--senders N]
 *                           [--durability full|normal] [--hushd PATH]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include <curve.h>
#include <key_helper.h>
#include <ratchet.h>
#include <session_pre_key.h>

#include "../tests/wsc.h"
#include "common.h"
#include "hush.pb-c.h"
#include "hush_wire.h"
#include "internal.h"

#define now_s bench_now
#define die bench_die

static struct bench_relay g_relay;
static int g_port;

static void start_relay(const char *bin, const char *durability)
{
    char extra[512];
    snprintf(extra, sizeof extra, "durability = %s\nquota_messages = 100000000\nquota_bytes = 1024g\n"
                                  "send_burst = 10000000\nsend_refill_per_s = 10000000\nmax_connections = 1000000\n"
                                  "auth_timeout = 60", durability);
    bench_relay_start(&g_relay, bin, extra);
    g_port = g_relay.port;
}

/* ------------------------------------------------------------------------------------------ */
/* a device: keys made here, no SDK database */

struct dev {
    char user[33];
    uint8_t pk[32], sk[64];
    uint8_t challenge[32];
    struct wsc *ws;
    uint64_t next_id;
};

static signal_context *g_sg;
static ratchet_identity_key_pair *g_ikp; /* one identity for all bench devices: the relay never checks */
static session_signed_pre_key *g_spk;
static signal_buffer *g_idpub, *g_spkpub;

static void keys_init(void)
{
    if (signal_context_create(&g_sg, NULL) || hush__provider_install(g_sg) ||
        signal_protocol_key_helper_generate_identity_key_pair(&g_ikp, g_sg) ||
        signal_protocol_key_helper_generate_signed_pre_key(&g_spk, g_ikp, 1, 0, g_sg) ||
        ec_public_key_serialize(&g_idpub, ratchet_identity_key_pair_get_public(g_ikp)) ||
        ec_public_key_serialize(&g_spkpub, ec_key_pair_get_public(session_signed_pre_key_get_key_pair(g_spk))))
        die("keys");
}

static void send_frame(struct dev *d, Hush__Frame *f)
{
    uint8_t stackbuf[2048];
    size_t n = hush__frame__get_packed_size(f);
    uint8_t *b = n <= sizeof stackbuf ? stackbuf : malloc(n);
    hush__frame__pack(f, b);
    if (wsc_send(d->ws, b, n) != 0)
        die("send");
    if (b != stackbuf)
        free(b);
}

static Hush__Frame *recv_frame(struct dev *d, int timeout_ms)
{
    uint8_t *data;
    size_t len;
    if (wsc_recv(d->ws, &data, &len, timeout_ms) != 1)
        return NULL;
    Hush__Frame *f = hush__frame__unpack(NULL, len, data);
    free(data);
    return f;
}

static void send_hello(struct dev *d)
{
    Hush__Hello h = HUSH__HELLO__INIT;
    h.min_version = h.max_version = 1;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = d->next_id++;
    f.msg_case = HUSH__FRAME__MSG_HELLO;
    f.hello = &h;
    send_frame(d, &f);
}

static void read_welcome(struct dev *d)
{
    Hush__Frame *f = recv_frame(d, 30000);
    if (!f || f->msg_case != HUSH__FRAME__MSG_WELCOME)
        die("welcome");
    memcpy(d->challenge, f->welcome->challenge.data, 32);
    hush__frame__free_unpacked(f, NULL);
}

static void send_register(struct dev *d)
{
    uint8_t msg[HWIRE_AUTH_MESSAGE_MAX], sig[64];
    size_t n = hwire_auth_message(msg, sizeof msg, HWIRE_PURPOSE_REGISTER, d->challenge, d->user, 1);
    crypto_sign_detached(sig, NULL, msg, n, d->sk);
    Hush__SignedPreKey s = HUSH__SIGNED_PRE_KEY__INIT;
    s.id = 1;
    s.public_key.data = signal_buffer_data(g_spkpub);
    s.public_key.len = 33;
    s.signature.data = (uint8_t *)session_signed_pre_key_get_signature(g_spk);
    s.signature.len = 64;
    Hush__PreKeyUpload up = HUSH__PRE_KEY_UPLOAD__INIT;
    up.signed_pre_key = &s;
    Hush__RegisterRequest r = HUSH__REGISTER_REQUEST__INIT;
    r.username = d->user;
    r.device_id = 1;
    r.auth_key.data = d->pk;
    r.auth_key.len = 32;
    r.signature.data = sig;
    r.signature.len = 64;
    r.identity_key.data = signal_buffer_data(g_idpub);
    r.identity_key.len = 33;
    r.registration_id = 1;
    r.keys = &up;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = d->next_id++;
    f.msg_case = HUSH__FRAME__MSG_REGISTER;
    f.register_ = &r;
    send_frame(d, &f);
}

static void send_login(struct dev *d)
{
    uint8_t msg[HWIRE_AUTH_MESSAGE_MAX], sig[64];
    size_t n = hwire_auth_message(msg, sizeof msg, HWIRE_PURPOSE_LOGIN, d->challenge, d->user, 1);
    crypto_sign_detached(sig, NULL, msg, n, d->sk);
    Hush__LoginRequest l = HUSH__LOGIN_REQUEST__INIT;
    l.username = d->user;
    l.device_id = 1;
    l.signature.data = sig;
    l.signature.len = 64;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = d->next_id++;
    f.msg_case = HUSH__FRAME__MSG_LOGIN;
    f.login = &l;
    send_frame(d, &f);
}

/* Waits for the Result of the last request, skipping pushes. Returns its code. */
static int read_result(struct dev *d)
{
    for (;;) {
        Hush__Frame *f = recv_frame(d, 60000);
        if (!f)
            die("no result");
        if (f->msg_case == HUSH__FRAME__MSG_RESULT) {
            int c = (int)f->result->code;
            hush__frame__free_unpacked(f, NULL);
            return c;
        }
        hush__frame__free_unpacked(f, NULL);
    }
}

static void dev_init(struct dev *d, const char *prefix, int i)
{
    memset(d, 0, sizeof *d);
    snprintf(d->user, sizeof d->user, "%s%d", prefix, i);
    crypto_sign_keypair(d->pk, d->sk);
    d->next_id = 1;
}

/* Connects and authenticates a group of devices, pipelined: every step is sent on all sockets
 * before any answer is read. register != 0 registers them (first time). */
static void connect_all(struct dev *v, int n, int do_register)
{
    for (int i = 0; i < n; i++) {
        v[i].ws = wsc_connect("127.0.0.1", g_port, 0, 30000);
        if (!v[i].ws)
            die("connect (raise the fd limit?)");
        v[i].next_id = 1;
        send_hello(&v[i]);
    }
    for (int i = 0; i < n; i++)
        read_welcome(&v[i]);
    for (int i = 0; i < n; i++)
        do_register ? send_register(&v[i]) : send_login(&v[i]);
    for (int i = 0; i < n; i++)
        if (read_result(&v[i]) != 0)
            die("auth");
}

static void close_all(struct dev *v, int n)
{
    for (int i = 0; i < n; i++) {
        wsc_close(v[i].ws);
        v[i].ws = NULL;
    }
}

/* ------------------------------------------------------------------------------------------ */

static void send_msg(struct dev *from, const char *to, uint64_t k, const uint8_t *body, size_t blen)
{
    uint8_t mid[16] = { 0 };
    memcpy(mid, &k, sizeof k);
    Hush__Recipient rc = HUSH__RECIPIENT__INIT;
    rc.username = (char *)to;
    rc.device_id = 1;
    rc.envelope.data = (uint8_t *)body;
    rc.envelope.len = blen;
    Hush__Recipient *rcs[1] = { &rc };
    Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
    s.client_msg_id.data = mid;
    s.client_msg_id.len = 16;
    s.n_recipients = 1;
    s.recipients = rcs;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = from->next_id++;
    f.msg_case = HUSH__FRAME__MSG_SEND;
    f.send = &s;
    send_frame(from, &f);
}

/* Each sender keeps `window` sends outstanding; returns acknowledged messages per second. */
static double run_sends(struct dev *senders, int ns, const char *to, long total, int window, size_t size)
{
    uint8_t *body = malloc(size);
    randombytes_buf(body, size);
    long per = total / ns;
    double t0 = now_s();
    uint64_t k = 1;
    for (int i = 0; i < ns; i++)
        for (int w = 0; w < window && w < per; w++)
            send_msg(&senders[i], to, k++, body, size);
    long *sent = calloc((size_t)ns, sizeof *sent), *acked = calloc((size_t)ns, sizeof *acked);
    for (int i = 0; i < ns; i++)
        sent[i] = window < per ? window : per;
    long done = 0;
    while (done < per * ns) {
        for (int i = 0; i < ns; i++) {
            if (acked[i] == per)
                continue;
            int code = read_result(&senders[i]);
            if (code != 0) {
                fprintf(stderr, "bench_relay: send refused with code %d\n", code);
                exit(1);
            }
            acked[i]++;
            done++;
            if (sent[i] < per) {
                send_msg(&senders[i], to, k++, body, size);
                sent[i]++;
            }
        }
    }
    double dt = now_s() - t0;
    free(sent);
    free(acked);
    free(body);
    return (double)(per * ns) / dt;
}

int main(int argc, char **argv)
{
    int conns = 5000, senders = 8;
    long messages = 50000, backlog = 100000;
    const char *durability = "full";
    const char *bin = getenv("HUSHD") ? getenv("HUSHD") : "build/bin/hushd";
    static const struct option opts[] = {
        { "conns", required_argument, NULL, 'c' },   { "messages", required_argument, NULL, 'm' },
        { "backlog", required_argument, NULL, 'b' }, { "senders", required_argument, NULL, 's' },
        { "durability", required_argument, NULL, 'd' }, { "hushd", required_argument, NULL, 'H' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': conns = atoi(optarg); break;
        case 'm': messages = atol(optarg); break;
        case 'b': backlog = atol(optarg); break;
        case 's': senders = atoi(optarg); break;
        case 'd': durability = optarg; break;
        case 'H': bin = optarg; break;
        default:
            fprintf(stderr, "usage: bench_relay [--conns N] [--messages N] [--backlog N] [--senders N] "
                            "[--durability full|normal] [--hushd PATH]\n");
            return 2;
        }
    }
    if (sodium_init() < 0 || hush__selftest() != HUSH_OK)
        die("init");
    /* room for every socket on both ends (root may raise the hard limit) */
    struct rlimit rl = { (rlim_t)conns * 2 + 4096, (rlim_t)conns * 2 + 4096 };
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if ((long)rl.rlim_cur < conns + 1024)
            conns = (int)rl.rlim_cur - 1024;
    }
    keys_init();
    start_relay(bin, durability);
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    printf("hushd on 127.0.0.1:%d, %ld CPUs, durability=%s\n\n", g_port, nproc, durability);

    /* 1. idle authenticated connections */
    struct dev *idle = calloc((size_t)conns, sizeof *idle);
    for (int i = 0; i < conns; i++)
        dev_init(&idle[i], "idle", i);
    long rss0 = bench_rss_kb(g_relay.pid);
    double t0 = now_s();
    connect_all(idle, conns, 1);
    double treg = now_s() - t0;
    sleep(1);
    long rss1 = bench_rss_kb(g_relay.pid);
    close_all(idle, conns);
    sleep(1);
    t0 = now_s();
    connect_all(idle, conns, 0);
    double tlogin = now_s() - t0;
    sleep(1);
    long rss2 = bench_rss_kb(g_relay.pid);
    printf("idle connections         %8d authenticated, all held\n", conns);
    printf("relay RSS                %8ld KiB before, %ld KiB with them (%.1f KiB per connection)\n", rss0, rss2,
           (double)(rss2 - rss0) / conns);
    printf("register rate            %8.0f connections/s (connect + hello + register, pipelined)\n", conns / treg);
    printf("login rate               %8.0f connections/s (connect + hello + login, pipelined)\n", conns / tlogin);
    (void)rss1;
    close_all(idle, conns);
    free(idle);

    /* 2. acknowledged messages per second, 256-byte envelopes, recipient offline */
    struct dev *snd = calloc((size_t)senders, sizeof *snd), sink;
    for (int i = 0; i < senders; i++)
        dev_init(&snd[i], "sender", i);
    dev_init(&sink, "sink", 0);
    connect_all(&sink, 1, 1);
    close_all(&sink, 1);
    connect_all(snd, senders, 1);
    double rate = run_sends(snd, senders, sink.user, messages, 32, 256);
    printf("acknowledged messages/s  %8.0f (%d senders x 32 in flight, 256-byte envelopes, each ack after COMMIT)\n",
           rate, senders);

    /* 3. backlog drain: `backlog` messages wait for one device, then it connects */
    struct dev drain;
    dev_init(&drain, "drain", 0);
    connect_all(&drain, 1, 1);
    close_all(&drain, 1);
    t0 = now_s();
    double fill = run_sends(snd, senders, drain.user, backlog, 64, 256);
    (void)t0;
    connect_all(&drain, 1, 0);
    t0 = now_s();
    long got = 0;
    uint64_t acks[64];
    int na = 0;
    for (;;) {
        Hush__Frame *f = recv_frame(&drain, 30000);
        if (!f)
            die("drain stalled");
        if (f->msg_case == HUSH__FRAME__MSG_DELIVER) {
            acks[na++] = f->deliver->seq;
            got++;
        }
        int empty = f->msg_case == HUSH__FRAME__MSG_QUEUE_EMPTY;
        hush__frame__free_unpacked(f, NULL);
        if (na == 32 || (na && (empty || got == backlog))) {
            Hush__AckRequest a = HUSH__ACK_REQUEST__INIT;
            a.n_seqs = (size_t)na;
            a.seqs = acks;
            Hush__Frame af = HUSH__FRAME__INIT;
            af.msg_case = HUSH__FRAME__MSG_ACK;
            af.ack = &a;
            send_frame(&drain, &af);
            na = 0;
        }
        if (got == backlog)
            break;
    }
    double tdrain = now_s() - t0;
    printf("backlog fill             %8.0f messages/s (%ld messages)\n", fill, backlog);
    printf("backlog drain            %8.0f messages/s (%ld delivered and acked in %.2f s, window 64)\n",
           backlog / tdrain, got, tdrain);
    close_all(&drain, 1);
    close_all(snd, senders);
    free(snd);
    bench_relay_stop(&g_relay);
    return 0;
}
