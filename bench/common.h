/* common.h - helpers shared by the benchmarks: a real hushd on loopback, timing, percentiles. */
#ifndef HUSH_BENCH_COMMON_H
#define HUSH_BENCH_COMMON_H

#include <stddef.h>
#include <sys/types.h>

struct bench_relay {
    pid_t pid;
    int port, metrics_port;
    char dir[64];
};

double bench_now(void);
__attribute__((noreturn)) void bench_die(const char *what);
/* Starts `bin` (path to hushd) with a temporary database and the extra config lines. */
void bench_relay_start(struct bench_relay *r, const char *bin, const char *extra_config);
/* SIGTERM, wait, and remove the temporary directory unless $BENCH_KEEP is set. */
void bench_relay_stop(struct bench_relay *r);
long bench_rss_kb(pid_t pid);
/* CPU time (user + system) a process used so far, in seconds, from /proc/PID/stat; pid 0: this
 * process (getrusage). Negative when unknown. Resolution: the kernel's clock tick (10 ms). */
double bench_cpu_s(pid_t pid);
/* Sorts v and returns the q-quantile (0..1). */
double bench_quantile(double *v, size_t n, double q);

#endif
