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
#include "hushdev.h"
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

/* ------------------------------------------------------------------------------------------ */

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
            hdev_send_msg(&senders[i], to, k++, body, size);
    long *sent = calloc((size_t)ns, sizeof *sent), *acked = calloc((size_t)ns, sizeof *acked);
    for (int i = 0; i < ns; i++)
        sent[i] = window < per ? window : per;
    long done = 0;
    while (done < per * ns) {
        for (int i = 0; i < ns; i++) {
            if (acked[i] == per)
                continue;
            int code = hdev_read_result(&senders[i]);
            if (code != 0) {
                fprintf(stderr, "bench_relay: send refused with code %d\n", code);
                exit(1);
            }
            acked[i]++;
            done++;
            if (sent[i] < per) {
                hdev_send_msg(&senders[i], to, k++, body, size);
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
    if (sodium_init() < 0 || hsdk_selftest() != HUSH_OK)
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
    hdev_keys_init();
    start_relay(bin, durability);
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    printf("hushd on 127.0.0.1:%d, %ld CPUs, durability=%s\n\n", g_port, nproc, durability);

    /* 1. idle authenticated connections */
    struct dev *idle = calloc((size_t)conns, sizeof *idle);
    for (int i = 0; i < conns; i++)
        hdev_init(&idle[i], "idle", i);
    long rss0 = bench_rss_kb(g_relay.pid);
    double t0 = now_s();
    hdev_connect_all(g_port, idle, conns, 1);
    double treg = now_s() - t0;
    sleep(1);
    long rss1 = bench_rss_kb(g_relay.pid);
    hdev_close_all(idle, conns);
    sleep(1);
    t0 = now_s();
    hdev_connect_all(g_port, idle, conns, 0);
    double tlogin = now_s() - t0;
    sleep(1);
    long rss2 = bench_rss_kb(g_relay.pid);
    printf("idle connections         %8d authenticated, all held\n", conns);
    printf("relay RSS                %8ld KiB before, %ld KiB with them (%.1f KiB per connection)\n", rss0, rss2,
           (double)(rss2 - rss0) / conns);
    printf("register rate            %8.0f connections/s (connect + hello + register, pipelined)\n", conns / treg);
    printf("login rate               %8.0f connections/s (connect + hello + login, pipelined)\n", conns / tlogin);
    (void)rss1;
    hdev_close_all(idle, conns);
    free(idle);

    /* 2. acknowledged messages per second, 256-byte envelopes, recipient offline */
    struct dev *snd = calloc((size_t)senders, sizeof *snd), sink;
    for (int i = 0; i < senders; i++)
        hdev_init(&snd[i], "sender", i);
    hdev_init(&sink, "sink", 0);
    hdev_connect_all(g_port, &sink, 1, 1);
    hdev_close_all(&sink, 1);
    hdev_connect_all(g_port, snd, senders, 1);
    double rate = run_sends(snd, senders, sink.user, messages, 32, 256);
    printf("acknowledged messages/s  %8.0f (%d senders x 32 in flight, 256-byte envelopes, each ack after COMMIT)\n",
           rate, senders);

    /* 3. backlog drain: `backlog` messages wait for one device, then it connects */
    struct dev drain;
    hdev_init(&drain, "drain", 0);
    hdev_connect_all(g_port, &drain, 1, 1);
    hdev_close_all(&drain, 1);
    t0 = now_s();
    double fill = run_sends(snd, senders, drain.user, backlog, 64, 256);
    (void)t0;
    hdev_connect_all(g_port, &drain, 1, 0);
    t0 = now_s();
    long got = 0;
    uint64_t acks[64];
    int na = 0;
    for (;;) {
        Hush__Frame *f = hdev_recv_frame(&drain, 30000);
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
            hdev_send_frame(&drain, &af);
            na = 0;
        }
        if (got == backlog)
            break;
    }
    double tdrain = now_s() - t0;
    printf("backlog fill             %8.0f messages/s (%ld messages)\n", fill, backlog);
    printf("backlog drain            %8.0f messages/s (%ld delivered and acked in %.2f s, window 64)\n",
           backlog / tdrain, got, tdrain);
    hdev_close_all(&drain, 1);
    hdev_close_all(snd, senders);
    free(snd);
    bench_relay_stop(&g_relay);
    return 0;
}
