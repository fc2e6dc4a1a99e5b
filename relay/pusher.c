/*
 * pusher.c - the push thread: POSTs Web Push wake-ups (RFC 8030) with libcurl's multi interface,
 * so that many requests run at once and a slow or dead push service delays nothing but its own
 * requests. It never touches the database or a loop: the storage thread hands it wake-ups after
 * the commit that stored the mail (pusher_submit) and tells it when a device came back
 * (pusher_cancel); an endpoint the push service says is gone goes back through the function
 * pusher_start was given (a storage job).
 *
 * Per device: one wake-up queued at most (later ones merge into it), at least
 * push_min_interval_ms between two, at most push_max_per_hour an hour, non-urgent ones at most one
 * per push_nonurgent_period. Per push host: a token bucket and a back-off after 429/503/507
 * (Retry-After honoured). Endpoints that resolve to loopback, private or link-local addresses are
 * refused at connect time unless push_allow_private (so a name that changes its address does not
 * get around the check).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <sodium.h>

#include "hmap.h"
#include "relay.h"
#include "webpush.h"

#define MAX_INFLIGHT 64       /* requests at once, relay-wide */
#define MAX_HOST_INFLIGHT 8   /* requests at once to one push host */
#define MAX_QUEUED 100000     /* wake-ups waiting (one per device at most) */
#define VAPID_LIFETIME_S (12 * 3600)
#define HOUR_MS 3600000ull
#define BODY "{\"v\":1}"

struct devstate {
    uint64_t last_ms;          /* last wake-up accepted by the push service */
    uint64_t last_nonurgent_ms;
    uint64_t hour_start_ms;
    uint32_t hour_count;
    struct item *queued;       /* the one waiting wake-up, or NULL */
    int inflight;
};

struct hoststate {
    double tokens;
    uint64_t refill_ms;
    uint64_t backoff_until_ms;
    uint32_t backoffs;         /* in a row, for the default delay when no Retry-After is given */
    int inflight;
    long items;                /* wake-ups that name this host */
    char vapid[1200];          /* Authorization header for this origin... */
    uint64_t vapid_exp;        /* ...valid until (seconds) */
};

struct item {
    struct item *next, *prev;  /* the waiting list (not while in flight) */
    struct push_wake *w;
    uint64_t due_ms;
    uint32_t attempts;
    struct devstate *ds;
    struct hoststate *hs;
    char devkey[RELAY_USERNAME_MAX + 5];
    size_t devkey_len;
    char host[256];
    char origin[300];
};

struct xfer {
    struct xfer *next, *prev;  /* in flight */
    CURL *easy;
    struct item *it;
    struct curl_slist *hdrs;
    long retry_after_s;        /* -1: none given */
    int refused;               /* the address was refused (private) */
    char err[CURL_ERROR_SIZE];
};

struct cancel {
    struct cancel *next;
    char user[RELAY_USERNAME_MAX + 1];
    uint32_t dev;
};

static struct {
    pthread_t th;
    int started;
    const struct relay_config *cfg;
    void (*gone)(const char *user, uint32_t dev, const char *url);
    webpush_key *key;
    uint8_t pub[WEBPUSH_P256_PUBLIC];
    CURLM *multi;
    pthread_mutex_t mu;        /* guards the inbox below and stop */
    struct push_wake *in;
    struct cancel *cancels;
    long nin;
    int stop;
    /* the thread's own */
    struct hmap devs, hosts;
    struct item *head;
    struct xfer *xfers;
    long nqueued;
    int inflight;
    uint64_t last_sweep_ms;
} P = { .mu = PTHREAD_MUTEX_INITIALIZER };

int pusher_enabled(void) { return P.started; }

void pusher_public_key(uint8_t out[WEBPUSH_P256_PUBLIC]) { memcpy(out, P.pub, WEBPUSH_P256_PUBLIC); }

void pusher_submit(struct push_wake *w)
{
    pthread_mutex_lock(&P.mu);
    if (!P.started || P.stop || P.nin >= MAX_QUEUED) {
        pthread_mutex_unlock(&P.mu);
        if (P.started)
            atomic_fetch_add(&g_metrics.push_failed[PUSH_FAIL_OVERLOAD], 1);
        sodium_memzero(w->auth, sizeof w->auth);
        free(w);
        return;
    }
    w->next = P.in;
    P.in = w;
    P.nin++;
    curl_multi_wakeup(P.multi); /* under the lock: pusher_stop cannot free the handle meanwhile */
    pthread_mutex_unlock(&P.mu);
}

void pusher_cancel(const char *user, uint32_t dev)
{
    struct cancel *c = calloc(1, sizeof *c);
    if (!c)
        return;
    snprintf(c->user, sizeof c->user, "%s", user);
    c->dev = dev;
    pthread_mutex_lock(&P.mu);
    if (!P.started || P.stop) {
        pthread_mutex_unlock(&P.mu);
        free(c);
        return;
    }
    c->next = P.cancels;
    P.cancels = c;
    curl_multi_wakeup(P.multi);
    pthread_mutex_unlock(&P.mu);
}

/* ------------------------------------------------------------------------------------------ */
/* addresses */

static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct xfer *x = clientp;
    if (purpose != CURLSOCKTYPE_IPCXN)
        return CURL_SOCKET_BAD;
    if (!P.cfg->push_allow_private && webpush_address_private(&a->addr)) {
        x->refused = 1;
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* ------------------------------------------------------------------------------------------ */
/* the thread */

static void gone(const struct push_wake *w)
{
    P.gone(w->user, w->dev, w->url); /* the storage thread deletes it if it is still this one */
    atomic_fetch_add(&g_metrics.push_dropped, 1);
}

static void unlink_item(struct item *it)
{
    if (it->prev)
        it->prev->next = it->next;
    else if (P.head == it)
        P.head = it->next;
    if (it->next)
        it->next->prev = it->prev;
    it->next = it->prev = NULL;
    P.nqueued--;
}

static void link_item(struct item *it)
{
    it->prev = NULL;
    it->next = P.head;
    if (P.head)
        P.head->prev = it;
    P.head = it;
    P.nqueued++;
}

static void free_item(struct item *it)
{
    if (it->ds && it->ds->queued == it)
        it->ds->queued = NULL;
    if (it->hs)
        it->hs->items--;
    if (it->w)
        sodium_memzero(it->w->auth, sizeof it->w->auth);
    free(it->w);
    free(it);
}

/* When a wake-up of this kind may go for this device at the earliest. */
static uint64_t earliest(const struct devstate *ds, int urgent, uint64_t now)
{
    uint64_t due = now;
    if (ds->last_ms && ds->last_ms + P.cfg->push_min_interval_ms > due)
        due = ds->last_ms + P.cfg->push_min_interval_ms;
    if (!urgent && ds->last_nonurgent_ms && ds->last_nonurgent_ms + P.cfg->push_nonurgent_period_s * 1000ull > due)
        due = ds->last_nonurgent_ms + P.cfg->push_nonurgent_period_s * 1000ull;
    if (ds->hour_count >= P.cfg->push_max_per_hour && ds->hour_start_ms + HOUR_MS > due)
        due = ds->hour_start_ms + HOUR_MS;
    return due;
}

static struct hoststate *host_of(const char *host)
{
    struct hoststate *hs = hmap_gets(&P.hosts, host);
    if (hs)
        return hs;
    hs = calloc(1, sizeof *hs);
    int err = 0;
    if (!hs)
        return NULL;
    hs->tokens = P.cfg->push_host_burst;
    hs->refill_ms = relay_now_ms();
    hmap_put(&P.hosts, host, strlen(host), hs, &err);
    if (err) {
        free(hs);
        return NULL;
    }
    return hs;
}

static void take_wake(struct push_wake *w, uint64_t now)
{
    unsigned char k[RELAY_USERNAME_MAX + 5];
    size_t kl = relay_dev_key(k, w->user, w->dev);
    struct devstate *ds = hmap_get(&P.devs, k, kl);
    if (!ds) {
        ds = calloc(1, sizeof *ds);
        int err = 0;
        if (ds)
            hmap_put(&P.devs, k, kl, ds, &err);
        if (!ds || err) {
            free(ds);
            free(w);
            atomic_fetch_add(&g_metrics.push_failed[PUSH_FAIL_OVERLOAD], 1);
            return;
        }
    }
    if (ds->queued) {
        /* one wake-up per device: the newest endpoint, and urgent if either is */
        struct item *it = ds->queued;
        int urgent = it->w->urgent || w->urgent;
        if (strcmp(it->w->url, w->url)) {
            char host[256], origin[300];
            const char *why;
            if (webpush_endpoint_check(w->url, P.cfg->push_allow_http, P.cfg->push_allow_private, w->p256dh,
                                       sizeof w->p256dh, sizeof w->auth, host, sizeof host, origin, sizeof origin,
                                       &why) == 0) {
                struct hoststate *hs = host_of(host);
                if (hs) {
                    it->hs->items--;
                    hs->items++;
                    it->hs = hs;
                    snprintf(it->host, sizeof it->host, "%s", host);
                    snprintf(it->origin, sizeof it->origin, "%s", origin);
                }
            }
        }
        free(it->w);
        it->w = w;
        w->urgent = urgent;
        uint64_t e = earliest(ds, urgent, now);
        if (e < it->due_ms)
            it->due_ms = e;
        atomic_fetch_add(&g_metrics.push_coalesced, 1);
        return;
    }
    struct item *it = calloc(1, sizeof *it);
    const char *why = NULL;
    if (!it ||
        webpush_endpoint_check(w->url, P.cfg->push_allow_http, P.cfg->push_allow_private, w->p256dh, sizeof w->p256dh,
                               sizeof w->auth, it->host, sizeof it->host, it->origin, sizeof it->origin, &why) != 0 ||
        !(it->hs = host_of(it->host))) {
        if (why)
            rlog(RLOG_WARN, "push_refused", "user=%s device=%u why=\"%s\"", w->user, w->dev, why);
        free(it);
        free(w);
        atomic_fetch_add(&g_metrics.push_failed[PUSH_FAIL_REFUSED], 1);
        return;
    }
    it->hs->items++;
    it->w = w;
    it->ds = ds;
    memcpy(it->devkey, k, kl);
    it->devkey_len = kl;
    it->due_ms = earliest(ds, w->urgent, now);
    ds->queued = it;
    link_item(it);
}

static void take_cancel(const struct cancel *c)
{
    unsigned char k[RELAY_USERNAME_MAX + 5];
    size_t kl = relay_dev_key(k, c->user, c->dev);
    struct devstate *ds = hmap_get(&P.devs, k, kl);
    if (ds && ds->queued) {
        struct item *it = ds->queued;
        unlink_item(it);
        free_item(it);
        atomic_fetch_add(&g_metrics.push_cancelled, 1);
    }
}

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
    struct xfer *x = ud;
    size_t len = size * n;
    if (len > 12 && !strncasecmp(buf, "Retry-After:", 12)) {
        char v[100];
        size_t vl = len - 12 < sizeof v - 1 ? len - 12 : sizeof v - 1;
        memcpy(v, buf + 12, vl);
        v[vl] = 0;
        char *s = v;
        while (*s == ' ' || *s == '\t')
            s++;
        s[strcspn(s, "\r\n")] = 0;
        char *end = NULL;
        long secs = strtol(s, &end, 10);
        if (end != s && *end == 0 && secs >= 0) {
            x->retry_after_s = secs;
        } else {
            time_t t = curl_getdate(s, NULL); /* an HTTP-date */
            time_t now = time(NULL);
            if (t != -1)
                x->retry_after_s = t > now ? (long)(t - now) : 0;
        }
    }
    return len;
}

static size_t discard(char *buf, size_t size, size_t n, void *ud)
{
    (void)buf;
    (void)ud;
    return size * n;
}

static int start(struct item *it, uint64_t now)
{
    struct hoststate *hs = it->hs;
    if (hs->vapid_exp < now / 1000 + 3600) {
        uint64_t exp = now / 1000 + VAPID_LIFETIME_S;
        if (webpush_vapid_header(P.key, it->origin, exp, P.cfg->push_contact, hs->vapid, sizeof hs->vapid) != 0)
            return -1;
        hs->vapid_exp = exp;
    }
    uint8_t body[WEBPUSH_HEADER_BYTES + sizeof BODY + WEBPUSH_TAG_BYTES];
    size_t blen = 0;
    if (webpush_encrypt(it->w->p256dh, it->w->auth, (const uint8_t *)BODY, sizeof BODY - 1, NULL, NULL, body, &blen) != 0)
        return -1;
    struct xfer *x = calloc(1, sizeof *x);
    if (!x)
        return -1;
    x->it = it;
    x->retry_after_s = -1;
    x->easy = curl_easy_init();
    char h[1300];
    struct curl_slist *l = NULL;
    snprintf(h, sizeof h, "TTL: %u", P.cfg->push_ttl_s);
    l = curl_slist_append(l, h);
    l = curl_slist_append(l, it->w->urgent ? "Urgency: high" : "Urgency: normal");
    l = curl_slist_append(l, "Topic: hush-wake"); /* a newer wake-up replaces one not yet delivered */
    l = curl_slist_append(l, "Content-Encoding: aes128gcm");
    l = curl_slist_append(l, "Content-Type: application/octet-stream");
    snprintf(h, sizeof h, "Authorization: %s", hs->vapid);
    l = curl_slist_append(l, h);
    l = curl_slist_append(l, "Expect:"); /* no 100-continue round trip for a 110-byte body */
    x->hdrs = l;
    CURL *e = x->easy;
    if (!e || !l) {
        curl_slist_free_all(l);
        curl_easy_cleanup(e);
        free(x);
        return -1;
    }
    curl_easy_setopt(e, CURLOPT_URL, it->w->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, P.cfg->push_allow_http ? "http,https" : "https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROXY, ""); /* straight to the push service: the address check applies to it */
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, l);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)blen);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)P.cfg->push_timeout_s * 1000L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(P.cfg->push_timeout_s < 5 ? P.cfg->push_timeout_s : 5) * 1000L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE, 65536L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->err);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "hushd");
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    if (P.cfg->push_ca_file[0])
        curl_easy_setopt(e, CURLOPT_CAINFO, P.cfg->push_ca_file);
    sodium_memzero(body, sizeof body);
    if (curl_multi_add_handle(P.multi, e) != CURLM_OK) {
        curl_slist_free_all(l);
        curl_easy_cleanup(e);
        free(x);
        return -1;
    }
    x->next = P.xfers;
    if (P.xfers)
        P.xfers->prev = x;
    P.xfers = x;
    it->ds->inflight = 1;
    hs->inflight++;
    P.inflight++;
    it->attempts++;
    return 0;
}

/* Puts a wake-up back to be tried at `due`, unless a newer one for its device waits (that one
 * goes instead) or it had its tries. */
static void retry_later(struct item *it, uint64_t due)
{
    if (it->ds->queued || it->attempts >= P.cfg->push_max_attempts) {
        if (!it->ds->queued)
            rlog(RLOG_WARN, "push_given_up", "user=%s device=%u attempts=%u", it->w->user, it->w->dev, it->attempts);
        free_item(it);
        return;
    }
    it->due_ms = due;
    it->ds->queued = it;
    link_item(it);
    atomic_fetch_add(&g_metrics.push_retries, 1);
}

static uint64_t backoff_ms(const struct xfer *x, uint32_t n)
{
    uint64_t d;
    if (x->retry_after_s >= 0)
        d = (uint64_t)x->retry_after_s * 1000ull;
    else
        d = 5000ull << (n < 10 ? n : 10); /* 5 s, 10 s, 20 s... */
    if (d < 1000)
        d = 1000;
    if (d > HOUR_MS)
        d = HOUR_MS;
    return d;
}

static void finished(CURL *e, CURLcode res, uint64_t now)
{
    struct xfer *x = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    struct item *it = x->it;
    struct hoststate *hs = it->hs;
    struct devstate *ds = it->ds;
    hs->inflight--;
    P.inflight--;
    ds->inflight = 0;
    const struct push_wake *w = it->w;
    if (res == CURLE_OK && status >= 200 && status < 300) {
        atomic_fetch_add(&g_metrics.push_sent, 1);
        hs->backoffs = 0;
        ds->last_ms = now;
        if (!w->urgent)
            ds->last_nonurgent_ms = now;
        if (now - ds->hour_start_ms >= HOUR_MS) {
            ds->hour_start_ms = now;
            ds->hour_count = 0;
        }
        ds->hour_count++;
        rlog(RLOG_DEBUG, "push_sent", "user=%s device=%u status=%ld", w->user, w->dev, status);
        free_item(it);
    } else if (res == CURLE_OK && (status == 404 || status == 410)) {
        atomic_fetch_add(&g_metrics.push_failed[PUSH_FAIL_GONE], 1);
        rlog(RLOG_INFO, "push_endpoint_gone", "user=%s device=%u status=%ld", w->user, w->dev, status);
        gone(w);
        free_item(it);
    } else if (res == CURLE_OK && (status == 429 || status == 503 || status == 507)) {
        /* the push service asks us to slow down: the whole host waits */
        atomic_fetch_add(&g_metrics.push_failed[PUSH_FAIL_BACKOFF], 1);
        uint64_t d = backoff_ms(x, hs->backoffs++);
        hs->backoff_until_ms = now + d;
        rlog(RLOG_WARN, "push_backoff", "host=%s status=%ld wait_ms=%llu", it->host, status, (unsigned long long)d);
        retry_later(it, now + d);
    } else if (res == CURLE_OK && status >= 400 && status < 500) {
        atomic_fetch_add(&g_metrics.push_failed[PUSH_FAIL_REJECTED], 1);
        rlog(RLOG_WARN, "push_rejected", "user=%s device=%u status=%ld", w->user, w->dev, status);
        free_item(it);
    } else if (x->refused) {
        atomic_fetch_add(&g_metrics.push_failed[PUSH_FAIL_REFUSED], 1);
        rlog(RLOG_WARN, "push_refused", "user=%s device=%u why=\"private address\"", w->user, w->dev);
        gone(w); /* it can never be reached under this relay's policy */
        free_item(it);
    } else {
        int server = res == CURLE_OK;
        atomic_fetch_add(&g_metrics.push_failed[server ? PUSH_FAIL_SERVER : PUSH_FAIL_NETWORK], 1);
        rlog(RLOG_WARN, "push_failed", "user=%s device=%u status=%ld error=\"%s\"", w->user, w->dev, status,
             server ? "" : (x->err[0] ? x->err : curl_easy_strerror(res)));
        retry_later(it, now + backoff_ms(x, it->attempts));
    }
    curl_multi_remove_handle(P.multi, e);
    curl_easy_cleanup(e);
    curl_slist_free_all(x->hdrs);
    if (x->prev)
        x->prev->next = x->next;
    else
        P.xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    free(x);
}

/* Starts what is due; returns the ms until the next item could be due (at most 1000). */
static long start_due(uint64_t now)
{
    uint64_t next = now + 1000;
    for (struct item *it = P.head, *nx; it; it = nx) {
        nx = it->next;
        if (it->ds->inflight)
            continue; /* one request per device at a time */
        uint64_t due = it->due_ms;
        if (it->hs->backoff_until_ms > due)
            due = it->hs->backoff_until_ms;
        if (due > now) {
            if (due < next)
                next = due;
            continue;
        }
        if (P.inflight >= MAX_INFLIGHT)
            return 50;
        struct hoststate *hs = it->hs;
        if (hs->inflight >= MAX_HOST_INFLIGHT)
            continue;
        /* the host's token bucket */
        double add = (double)(now - hs->refill_ms) * P.cfg->push_host_per_s / 1000.0;
        hs->tokens = hs->tokens + add > P.cfg->push_host_burst ? P.cfg->push_host_burst : hs->tokens + add;
        hs->refill_ms = now;
        if (hs->tokens < 1) {
            uint64_t wait = (uint64_t)((1 - hs->tokens) * 1000.0 / P.cfg->push_host_per_s) + 1;
            if (now + wait < next)
                next = now + wait;
            atomic_fetch_add(&g_metrics.push_host_limited, 1);
            continue;
        }
        hs->tokens -= 1;
        unlink_item(it);
        it->ds->queued = NULL;
        if (start(it, now) != 0) {
            atomic_fetch_add(&g_metrics.push_failed[PUSH_FAIL_NETWORK], 1);
            free_item(it);
        }
    }
    return (long)(next - now);
}

static void drop_idle_dev(const void *key, size_t klen, void *val, void *ctx)
{
    struct devstate *ds = val;
    uint64_t now = *(uint64_t *)ctx;
    if (!ds->queued && !ds->inflight && now - ds->last_ms > HOUR_MS && now - ds->hour_start_ms > HOUR_MS) {
        hmap_del(&P.devs, key, klen);
        free(ds);
    }
}

static void drop_idle_host(const void *key, size_t klen, void *val, void *ctx)
{
    struct hoststate *hs = val;
    uint64_t now = *(uint64_t *)ctx;
    if (!hs->items && !hs->inflight && hs->backoff_until_ms < now && now - hs->refill_ms > HOUR_MS) {
        hmap_del(&P.hosts, key, klen);
        free(hs);
    }
}

static void *pusher_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&P.mu);
        int stop = P.stop;
        struct push_wake *in = P.in;
        struct cancel *cancels = P.cancels;
        P.in = NULL;
        P.cancels = NULL;
        P.nin = 0;
        pthread_mutex_unlock(&P.mu);
        uint64_t now = relay_now_ms();
        /* oldest first: the lists were built newest first */
        struct push_wake *rev = NULL;
        while (in) {
            struct push_wake *n = in->next;
            in->next = rev;
            rev = in;
            in = n;
        }
        while (rev) {
            struct push_wake *n = rev->next;
            if (stop)
                free(rev);
            else
                take_wake(rev, now);
            rev = n;
        }
        while (cancels) {
            struct cancel *n = cancels->next;
            take_cancel(cancels);
            free(cancels);
            cancels = n;
        }
        if (stop)
            break;
        long wait = start_due(now);
        int running = 0;
        curl_multi_perform(P.multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(P.multi, &left)) != NULL)
            if (m->msg == CURLMSG_DONE)
                finished(m->easy_handle, m->data.result, relay_now_ms());
        if (now - P.last_sweep_ms > 60000) {
            P.last_sweep_ms = now;
            hmap_foreach(&P.devs, drop_idle_dev, &now);
            hmap_foreach(&P.hosts, drop_idle_host, &now);
        }
        if (wait < 0)
            wait = 0;
        curl_multi_poll(P.multi, NULL, 0, (int)(wait > 1000 ? 1000 : wait), NULL);
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */

int pusher_start(const struct relay_config *cfg, void (*gone_fn)(const char *user, uint32_t dev, const char *url),
                 char *err, size_t errlen)
{
    if (!cfg->push_enabled)
        return 0;
    char path[600];
    if (cfg->push_key[0])
        snprintf(path, sizeof path, "%s", cfg->push_key);
    else
        snprintf(path, sizeof path, "%s.push-key.pem", cfg->db_path);
    P.key = webpush_key_load_or_create(path, err, errlen);
    if (!P.key)
        return -1;
    webpush_key_public(P.key, P.pub);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(P.multi = curl_multi_init()) ||
        hmap_init(&P.devs, 1024) != 0 || hmap_init(&P.hosts, 64) != 0) {
        snprintf(err, errlen, "push: cannot initialise libcurl");
        return -1;
    }
    P.cfg = cfg;
    P.gone = gone_fn;
    P.stop = 0;
    P.last_sweep_ms = relay_now_ms();
    P.started = 1;
    if (pthread_create(&P.th, NULL, pusher_main, NULL) != 0) {
        P.started = 0;
        snprintf(err, errlen, "push: cannot start its thread");
        return -1;
    }
    return 0;
}

static void free_dev(void *v) { free(v); }

void pusher_stop(void)
{
    if (!P.started)
        return;
    pthread_mutex_lock(&P.mu);
    P.stop = 1;
    pthread_mutex_unlock(&P.mu);
    curl_multi_wakeup(P.multi);
    pthread_join(P.th, NULL);
    /* what is still queued or in flight is dropped: the devices get their mail when they connect */
    while (P.head) {
        struct item *it = P.head;
        unlink_item(it);
        free_item(it);
    }
    while (P.xfers) {
        struct xfer *x = P.xfers;
        P.xfers = x->next;
        curl_multi_remove_handle(P.multi, x->easy);
        curl_easy_cleanup(x->easy);
        free_item(x->it);
        curl_slist_free_all(x->hdrs);
        free(x);
    }
    curl_multi_cleanup(P.multi);
    P.multi = NULL;
    hmap_free(&P.devs, free_dev);
    hmap_free(&P.hosts, free_dev);
    webpush_key_free(P.key);
    P.key = NULL;
    pthread_mutex_lock(&P.mu);
    P.started = 0;
    pthread_mutex_unlock(&P.mu);
    curl_global_cleanup();
}
