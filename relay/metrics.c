/* metrics.c - counters and the Prometheus text rendering for GET /metrics. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"

struct metrics g_metrics;

static const char *const err_names[METRICS_ERR_CODES] = {
    "ok", "bad_request", "unsupported_version", "auth_failed", "auth_required", "username_taken",
    "registration_closed", "invite_invalid", "bad_keys", "unknown_user", "unknown_recipient",
    "quota_exceeded", "too_large", "rate_limited", "session_replaced", "shutting_down", "storage_failed",
    "internal", "timeout", "device_mismatch", "too_many_devices", "link_invalid", "address_gone", "device_removed",
    "push_endpoint_gone", "blob_unknown", "blob_offset", "digest_mismatch",
};

void metrics_error(int code)
{
    if (code > 0 && code < METRICS_ERR_CODES)
        atomic_fetch_add(&g_metrics.errors[code], 1);
}

void metrics_commit(long jobs, long usec)
{
    atomic_fetch_add(&g_metrics.commits, 1);
    atomic_fetch_add(&g_metrics.batch_jobs, jobs);
    atomic_fetch_add(&g_metrics.commit_us_sum, usec);
    static const long bb[METRICS_BATCH_BUCKETS - 1] = { 1, 2, 4, 8, 16, 32, 64 };
    int i = 0;
    while (i < METRICS_BATCH_BUCKETS - 1 && jobs > bb[i])
        i++;
    atomic_fetch_add(&g_metrics.batch_hist[i], 1);
    static const long lb[METRICS_LAT_BUCKETS - 1] = { 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000 };
    i = 0;
    while (i < METRICS_LAT_BUCKETS - 1 && usec > lb[i])
        i++;
    atomic_fetch_add(&g_metrics.commit_lat_hist[i], 1);
}

struct sbuf {
    char *p;
    size_t len, cap;
};

static void put(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct sbuf *b, const char *fmt, ...)
{
    if (!b->p)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        char *np = realloc(b->p, b->cap * 2);
        if (!np) {
            free(b->p);
            b->p = NULL;
            return;
        }
        b->p = np;
        b->cap *= 2;
    }
}

#define GAUGE(name, help, v) put(&b, "# HELP " name " " help "\n# TYPE " name " gauge\n" name " %ld\n", (long)(v))
#define COUNTER(name, help, v) put(&b, "# HELP " name " " help "\n# TYPE " name " counter\n" name " %ld\n", (long)(v))

char *metrics_render(size_t *len)
{
    struct sbuf b = { malloc(8192), 0, 8192 };
    struct metrics *m = &g_metrics;
    GAUGE("hush_connections", "Open WebSocket connections.", atomic_load(&m->connections));
    COUNTER("hush_connections_total", "Accepted WebSocket connections.", atomic_load(&m->connections_total));
    GAUGE("hush_authenticated_connections", "Connections logged in as a device.", atomic_load(&m->authenticated));
    COUNTER("hush_frames_in_total", "Frames received.", atomic_load(&m->frames_in));
    COUNTER("hush_frames_out_total", "Frames sent.", atomic_load(&m->frames_out));
    COUNTER("hush_messages_in_total", "Messages stored and acknowledged to senders.", atomic_load(&m->messages_in));
    COUNTER("hush_messages_out_total", "Stored messages delivered to recipients.", atomic_load(&m->messages_out));
    COUNTER("hush_messages_acked_total", "Messages acknowledged by recipients and deleted.", atomic_load(&m->messages_acked));
    COUNTER("hush_messages_expired_total", "Messages deleted by the TTL.", atomic_load(&m->messages_expired));
    COUNTER("hush_messages_unwritten_total",
            "Messages delivered at once and acknowledged by their recipients before they had to be written.",
            atomic_load(&m->messages_unwritten));
    COUNTER("hush_messages_written_late_total",
            "Messages delivered at once and written after early_delivery_ms without an acknowledgement.",
            atomic_load(&m->messages_written_late));
    COUNTER("hush_ephemeral_total", "Ephemeral messages relayed (never stored).", atomic_load(&m->ephemeral_in));
    COUNTER("hush_auth_verifications_total",
            "Login and registration proofs verified against a valid key (known device or not: the same work).",
            atomic_load(&m->auth_verifications));
    GAUGE("hush_mailbox_depth", "Messages stored, awaiting acknowledgement.", atomic_load(&m->mailbox_depth));
    COUNTER("hush_commit_failures_total", "Group commits that failed (nothing acknowledged).", atomic_load(&m->commit_failures));
    put(&b, "# HELP hush_commit_batch_jobs Jobs per group commit.\n# TYPE hush_commit_batch_jobs histogram\n");
    static const char *bl[METRICS_BATCH_BUCKETS] = { "1", "2", "4", "8", "16", "32", "64", "+Inf" };
    long cum = 0;
    for (int i = 0; i < METRICS_BATCH_BUCKETS; i++) {
        cum += atomic_load(&m->batch_hist[i]);
        put(&b, "hush_commit_batch_jobs_bucket{le=\"%s\"} %ld\n", bl[i], cum);
    }
    put(&b, "hush_commit_batch_jobs_sum %ld\nhush_commit_batch_jobs_count %ld\n", atomic_load(&m->batch_jobs),
        atomic_load(&m->commits));
    put(&b, "# HELP hush_commit_seconds Group commit latency.\n# TYPE hush_commit_seconds histogram\n");
    static const char *ll[METRICS_LAT_BUCKETS] = { "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
                                                   "0.005", "0.01", "0.025", "0.05", "+Inf" };
    cum = 0;
    for (int i = 0; i < METRICS_LAT_BUCKETS; i++) {
        cum += atomic_load(&m->commit_lat_hist[i]);
        put(&b, "hush_commit_seconds_bucket{le=\"%s\"} %ld\n", ll[i], cum);
    }
    put(&b, "hush_commit_seconds_sum %.6f\nhush_commit_seconds_count %ld\n",
        (double)atomic_load(&m->commit_us_sum) / 1e6, atomic_load(&m->commits));
    COUNTER("hush_blobs_created_total", "Files whose upload began.", atomic_load(&m->blobs_created));
    COUNTER("hush_blobs_completed_total", "Files uploaded completely (on disk, digest checked).",
            atomic_load(&m->blobs_completed));
    COUNTER("hush_blobs_expired_total", "Files deleted at expiry, and uploads abandoned for a day.",
            atomic_load(&m->blobs_expired));
    COUNTER("hush_blobs_digest_mismatch_total", "Uploads refused because the file did not match its digest.",
            atomic_load(&m->blobs_digest_mismatch));
    COUNTER("hush_blob_bytes_in_total", "File bytes received.", atomic_load(&m->blob_bytes_in));
    COUNTER("hush_blob_bytes_out_total", "File bytes sent.", atomic_load(&m->blob_bytes_out));
    COUNTER("hush_push_sent_total", "Push wake-ups accepted by a push service.", atomic_load(&m->push_sent));
    put(&b, "# HELP hush_push_failed_total Push wake-up attempts that failed, by class.\n"
            "# TYPE hush_push_failed_total counter\n");
    static const char *pf[7] = { "gone", "backoff", "rejected", "server", "network", "refused", "overload" };
    for (int i = 0; i < 7; i++)
        put(&b, "hush_push_failed_total{class=\"%s\"} %ld\n", pf[i], atomic_load(&m->push_failed[i]));
    COUNTER("hush_push_endpoints_dropped_total", "Push endpoints given up (gone at the push service, or refused by policy).",
            atomic_load(&m->push_dropped));
    COUNTER("hush_push_retries_total", "Push wake-ups tried again after a failure.", atomic_load(&m->push_retries));
    COUNTER("hush_push_coalesced_total", "Wake-ups merged into one already waiting for the same device.",
            atomic_load(&m->push_coalesced));
    COUNTER("hush_push_cancelled_total", "Waiting wake-ups dropped because their device connected.",
            atomic_load(&m->push_cancelled));
    COUNTER("hush_push_host_limited_total", "Wake-ups delayed by a push host's rate limit.", atomic_load(&m->push_host_limited));
    put(&b, "# HELP hush_errors_total Error results sent, by code.\n# TYPE hush_errors_total counter\n");
    for (int i = 1; i < METRICS_ERR_CODES; i++)
        put(&b, "hush_errors_total{code=\"%s\"} %ld\n", err_names[i], atomic_load(&m->errors[i]));
    if (!b.p)
        return NULL;
    *len = b.len;
    return b.p;
}
