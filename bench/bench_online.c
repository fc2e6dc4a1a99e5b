/*
 * bench_online.c - libhush end to end through a real hushd on loopback, with all the crypto:
 *   1. latency from hush_send() to the peer's on_message callback (one message at a time), p50/p99
 *   2. the same under a steady stream (pipelined), p50/p99 and throughput
 *   3. time for a device to receive a 10,000-message backlog after it comes online
 *
 *   build/bench/bench_online [--latency N] [--backlog N] [--durability full|normal]
 */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "common.h"
#include "hush.h"

struct peer {
    hush_client *c;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long received;
    double *arrival; /* arrival time by message number */
    long cap;
};

static void on_message(void *ctx, const hush_message *m)
{
    struct peer *p = ctx;
    double t = bench_now();
    long k = atol((const char *)m->body);
    pthread_mutex_lock(&p->mu);
    if (k >= 0 && k < p->cap)
        p->arrival[k] = t;
    p->received++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void wait_received(struct peer *p, long n)
{
    pthread_mutex_lock(&p->mu);
    while (p->received < n) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 60;
        if (pthread_cond_timedwait(&p->cv, &p->mu, &dl) != 0) {
            pthread_mutex_unlock(&p->mu);
            bench_die("timed out waiting for messages");
        }
    }
    pthread_mutex_unlock(&p->mu);
}

static void open_peer(struct peer *p, const char *dir, const char *name, long cap, hush_durability d)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->cap = cap;
    p->arrival = calloc((size_t)cap, sizeof *p->arrival);
    char path[256];
    snprintf(path, sizeof path, "%s/%s.db", dir, name);
    uint8_t key[32];
    randombytes_buf(key, sizeof key);
    hush_open_opts o = { d };
    if (hush_client_open(path, key, &o, &p->c) || hush_device_create(p->c, name, 1))
        bench_die("client");
}

static void go_online(struct peer *p, int port)
{
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", port);
    hush_callbacks cb = { p, on_message, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL };
    hush_net_opts no = { url, NULL, NULL, 0 };
    if (hush_net_start(p->c, &no, &cb) || hush_net_wait_online(p->c, 20000))
        bench_die("online");
}

static void send_num(struct peer *from, const char *to, long k)
{
    char body[256];
    memset(body, 'x', sizeof body);
    int n = snprintf(body, sizeof body, "%ld", k);
    body[n] = ' '; /* 256-byte body: the number, then padding */
    if (hush_send(from->c, to, (const uint8_t *)body, sizeof body, NULL))
        bench_die("send");
}

int main(int argc, char **argv)
{
    long nlat = 500, backlog = 10000;
    const char *durability = "full";
    const char *bin = getenv("HUSHD") ? getenv("HUSHD") : "build/bin/hushd";
    static const struct option opts[] = {
        { "latency", required_argument, NULL, 'l' }, { "backlog", required_argument, NULL, 'b' },
        { "durability", required_argument, NULL, 'd' }, { "hushd", required_argument, NULL, 'H' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'l') nlat = atol(optarg);
        else if (ch == 'b') backlog = atol(optarg);
        else if (ch == 'd') durability = optarg;
        else if (ch == 'H') bin = optarg;
        else {
            fprintf(stderr, "usage: bench_online [--latency N] [--backlog N] [--durability full|normal]\n");
            return 2;
        }
    }
    if (sodium_init() < 0 || nlat < 10 || backlog < 10)
        bench_die("init");
    hush_durability d = strcmp(durability, "normal") ? HUSH_DURABILITY_FULL : HUSH_DURABILITY_NORMAL;
    char extra[256];
    snprintf(extra, sizeof extra, "durability = %s\nquota_messages = 10000000\nsend_burst = 1000000\n"
                                  "send_refill_per_s = 1000000", durability);
    struct bench_relay relay = { 0 };
    bench_relay_start(&relay, bin, extra);
    char dir[] = "/tmp/hush-bench-online.XXXXXX";
    if (!mkdtemp(dir))
        bench_die("mkdtemp");
    long cap = nlat * 3 + backlog + 16;
    struct peer a, b;
    open_peer(&a, dir, "alice", cap, d);
    open_peer(&b, dir, "bob", cap, d);
    go_online(&a, relay.port);
    go_online(&b, relay.port);
    printf("libhush end to end through hushd on loopback: 256-byte texts, client and relay durability=%s\n\n",
           durability);

    /* warm up: sessions both ways */
    long k = 0;
    send_num(&a, "bob", k++);
    wait_received(&b, 1);
    send_num(&b, "alice", 0);
    wait_received(&a, 1);

    /* 1. one at a time */
    double *lat = calloc((size_t)nlat, sizeof *lat);
    for (long i = 0; i < nlat; i++) {
        double t0 = bench_now();
        long num = k++;
        send_num(&a, "bob", num);
        wait_received(&b, num + 1);
        lat[i] = (b.arrival[num] - t0) * 1000.0;
    }
    double p50 = bench_quantile(lat, (size_t)nlat, 0.50), p99 = bench_quantile(lat, (size_t)nlat, 0.99);
    printf("latency, one message at a time (%ld)     p50 %6.2f ms   p99 %6.2f ms\n", nlat, p50, p99);

    /* 2. a stream: send N as fast as hush_send returns, measure each one's latency */
    long first = k;
    double *sent_at = calloc((size_t)cap, sizeof *sent_at);
    double t0 = bench_now();
    for (long i = 0; i < nlat * 2; i++) {
        sent_at[k] = bench_now();
        send_num(&a, "bob", k++);
    }
    wait_received(&b, k);
    double dt = bench_now() - t0;
    long ns = k - first;
    double *lat2 = calloc((size_t)ns, sizeof *lat2);
    for (long i = 0; i < ns; i++)
        lat2[i] = (b.arrival[first + i] - sent_at[first + i]) * 1000.0;
    printf("latency, stream of %ld                   p50 %6.2f ms   p99 %6.2f ms   (%.0f messages/s)\n", ns,
           bench_quantile(lat2, (size_t)ns, 0.5), bench_quantile(lat2, (size_t)ns, 0.99), ns / dt);

    /* 3. backlog */
    hush_net_stop(b.c);
    long base = b.received;
    double f0 = bench_now();
    for (long i = 0; i < backlog; i++)
        send_num(&a, "bob", k++);
    if (hush_net_flush(a.c, 600000))
        bench_die("flush");
    double fill = bench_now() - f0;
    double r0 = bench_now();
    go_online(&b, relay.port);
    wait_received(&b, base + backlog);
    double recv = bench_now() - r0;
    printf("backlog of %ld: sent and acknowledged by the relay in %.2f s (%.0f messages/s)\n", backlog, fill,
           backlog / fill);
    printf("backlog of %ld: received, decrypted, stored and acked in %.2f s (%.0f messages/s)\n", backlog, recv,
           backlog / recv);
    hush_client_close(a.c);
    hush_client_close(b.c);
    bench_relay_stop(&relay);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench: could not remove %s\n", dir);
    free(lat);
    free(lat2);
    free(sent_at);
    free(a.arrival);
    free(b.arrival);
    return 0;
}
