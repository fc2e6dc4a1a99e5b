/*
 * bench_files.c - files through a real hushd on loopback, beside a plain copy of the same file on
 * the same disk (the physical limit): rounds interleaved (copy, then upload, download, save),
 * medians with their range, and the relay's CPU time per MiB (which does not depend on what else
 * the machine is doing).
 *   - copy: `cp` of the file, then `sync` of the copy (the bytes on the disk, as the relay's are)
 *   - encrypt: hush_send_file (reads, encrypts, writes and syncs the encrypted copy)
 *   - upload: from hush_send_file's return to the relay confirming every byte (durable, checked)
 *   - download: hush_attachment_download until READY (written, synced, digest checked)
 *   - save: hush_attachment_save (decrypt every chunk, write, sync)
 *
 *   build/bench/bench_files [--mib N] [--rounds R]
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
    uint8_t mid[16];
    int want;   /* the file state waited for */
    int reached;
    int msgs;   /* file messages received */
};

static void on_message(void *ctx, const hush_message *m)
{
    struct peer *p = ctx;
    if (m->kind != HUSH_KIND_FILE)
        return;
    pthread_mutex_lock(&p->mu);
    memcpy(p->mid, m->message_id, 16);
    p->msgs++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void on_file(void *ctx, const uint8_t mid[16], int state, uint64_t done, uint64_t total, hush_err err)
{
    (void)done;
    (void)total;
    struct peer *p = ctx;
    if (state == HUSH_FILE_FAILED) {
        fprintf(stderr, "bench_files: a transfer failed: %s\n", hush_strerror(err));
        exit(1);
    }
    pthread_mutex_lock(&p->mu);
    if (state == p->want && !memcmp(mid, p->mid, 16))
        p->reached = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void wait_for(struct peer *p, int *field, int want)
{
    pthread_mutex_lock(&p->mu);
    while (*field < want) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 300;
        if (pthread_cond_timedwait(&p->cv, &p->mu, &dl) != 0)
            bench_die("timed out waiting for a transfer");
    }
    pthread_mutex_unlock(&p->mu);
}

static void peer_open(struct peer *p, const char *dir, const char *name, int port)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    char path[256], url[64];
    snprintf(path, sizeof path, "%s/%s.db", dir, name);
    uint8_t key[32];
    randombytes_buf(key, sizeof key);
    hush_open_opts o = { HUSH_DURABILITY_FULL };
    if (hush_client_open(path, key, &o, &p->c) || hush_device_create(p->c, name, 1))
        bench_die("client");
    snprintf(url, sizeof url, "ws://127.0.0.1:%d", port);
    hush_callbacks cb = { p, on_message, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, on_file, NULL };
    hush_net_opts no = { url, NULL, NULL, 0 };
    if (hush_net_start(p->c, &no, &cb) || hush_net_wait_online(p->c, 20000))
        bench_die("online");
}

static void report(const char *what, double *v, int n, double mib)
{
    double rate[64];
    for (int i = 0; i < n; i++)
        rate[i] = mib / v[i];
    double med = bench_quantile(rate, (size_t)n, 0.5), lo = bench_quantile(rate, (size_t)n, 0.0),
           hi = bench_quantile(rate, (size_t)n, 1.0);
    printf("%-10s %8.1f MiB/s  (%.1f-%.1f)\n", what, med, lo, hi);
}

int main(int argc, char **argv)
{
    long mib = 64;
    int rounds = 5;
    const char *bin = getenv("HUSHD") ? getenv("HUSHD") : "build/bin/hushd";
    static const struct option opts[] = {
        { "mib", required_argument, NULL, 'm' }, { "rounds", required_argument, NULL, 'r' }, { NULL, 0, NULL, 0 },
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'm') mib = atol(optarg);
        else if (ch == 'r') rounds = atoi(optarg);
        else {
            fprintf(stderr, "usage: bench_files [--mib N] [--rounds R]\n");
            return 2;
        }
    }
    if (sodium_init() < 0 || mib < 1 || mib > 100 || rounds < 1 || rounds > 64)
        bench_die("usage: --mib 1..100, --rounds 1..64");
    struct bench_relay relay = { 0 };
    bench_relay_start(&relay, bin, "blob_uploads_per_hour = 100000\nblob_quota_bytes = 100g\nblob_disk_reserve = 0");
    char dir[] = "/tmp/hush-bench-files.XXXXXX";
    if (!mkdtemp(dir))
        bench_die("mkdtemp");
    struct peer a, b;
    peer_open(&a, dir, "alice", relay.port);
    peer_open(&b, dir, "bob", relay.port);
    char src[300], cmd[1024];
    snprintf(src, sizeof src, "%s/file.bin", dir);
    FILE *f = fopen(src, "wb");
    if (!f)
        bench_die("file");
    uint8_t *buf = malloc(1 << 20);
    for (long i = 0; i < mib; i++) {
        randombytes_buf(buf, 1 << 20);
        fwrite(buf, 1, 1 << 20, f);
    }
    fclose(f);
    free(buf);
    double t_cp[64], t_enc[64], t_up[64], t_down[64], t_save[64], cpu_up = 0, cpu_down = 0;
    for (int r = 0; r < rounds; r++) {
        double t0 = bench_now();
        snprintf(cmd, sizeof cmd, "cp %s %s/copy.bin && sync %s/copy.bin && rm %s/copy.bin", src, dir, dir, dir);
        if (system(cmd) != 0)
            bench_die("cp");
        t_cp[r] = bench_now() - t0;

        uint8_t mid[16];
        pthread_mutex_lock(&a.mu);
        a.reached = 0;
        a.want = HUSH_FILE_SENT;
        pthread_mutex_unlock(&a.mu);
        t0 = bench_now();
        if (hush_send_file(a.c, "bob", src, NULL, NULL, NULL, 0, mid))
            bench_die("send_file");
        double t1 = bench_now(), c0 = bench_cpu_s(relay.pid);
        pthread_mutex_lock(&a.mu);
        memcpy(a.mid, mid, 16);
        pthread_mutex_unlock(&a.mu);
        wait_for(&a, &a.reached, 1);
        t_enc[r] = t1 - t0;
        t_up[r] = bench_now() - t1;
        cpu_up += bench_cpu_s(relay.pid) - c0;

        wait_for(&b, &b.msgs, r + 1);
        pthread_mutex_lock(&b.mu);
        b.reached = 0;
        b.want = HUSH_FILE_READY;
        pthread_mutex_unlock(&b.mu);
        t0 = bench_now();
        c0 = bench_cpu_s(relay.pid);
        if (hush_attachment_download(b.c, b.mid))
            bench_die("download");
        wait_for(&b, &b.reached, 1);
        t_down[r] = bench_now() - t0;
        cpu_down += bench_cpu_s(relay.pid) - c0;

        char out[320];
        snprintf(out, sizeof out, "%s/saved.bin", dir);
        t0 = bench_now();
        if (hush_attachment_save(b.c, b.mid, out))
            bench_die("save");
        t_save[r] = bench_now() - t0;
        unlink(out);
    }
    printf("files: %ld MiB, %d rounds interleaved (copy, encrypt, upload, download, save); medians (min-max)\n", mib,
           rounds);
    report("copy", t_cp, rounds, (double)mib);
    report("encrypt", t_enc, rounds, (double)mib);
    report("upload", t_up, rounds, (double)mib);
    report("download", t_down, rounds, (double)mib);
    report("save", t_save, rounds, (double)mib);
    printf("relay CPU: %.2f ms per MiB uploaded, %.2f ms per MiB downloaded\n", cpu_up * 1000 / (double)(mib * rounds),
           cpu_down * 1000 / (double)(mib * rounds));
    hush_client_close(a.c);
    hush_client_close(b.c);
    bench_relay_stop(&relay);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        return 1;
    return 0;
}
