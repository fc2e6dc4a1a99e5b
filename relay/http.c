/*
 * http.c - GET /healthz and GET /metrics (Prometheus text format) on a separate port, loopback by
 * default. A small dedicated thread serving many requests at once (see http_main): one request per
 * connection, capped at 4 KiB and an overall deadline, so a slow or hostile client cannot hold it.
 */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "relay.h"
#include "server.h"

static pthread_t g_th;
static int g_fd = -1;
static int g_wake[2] = { -1, -1 };
static int g_running;

/*
 * Up to HTTP_SLOTS requests are served at once from one poll() loop, each with its own overall
 * deadline (HTTP_DEADLINE_MS from accept to the last byte of the answer): a client that trickles
 * its request, or never reads the answer, holds one slot for at most that long and never delays
 * the others. When every slot is taken, the oldest request is dropped for the new one.
 */
#define HTTP_SLOTS 32
#define HTTP_DEADLINE_MS 2000
#define HTTP_REQ_MAX 4096

struct slot {
    int fd;
    uint64_t deadline_ms;
    size_t have;
    char req[HTTP_REQ_MAX];
    char *out;          /* the answer (head and body), once the request is complete */
    size_t out_len, out_off;
};

static void slot_close(struct slot *s)
{
    if (s->fd >= 0)
        close(s->fd);
    free(s->out);
    s->fd = -1;
    s->out = NULL;
    s->have = s->out_len = s->out_off = 0;
}

static void answer(struct slot *s, int status, const char *reason, const char *ctype, const char *body, size_t len)
{
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", status,
                     reason, ctype, len);
    s->out = malloc((size_t)n + len);
    if (!s->out)
        return;
    memcpy(s->out, head, (size_t)n);
    memcpy(s->out + n, body, len);
    s->out_len = (size_t)n + len;
    s->out_off = 0;
}

/* The request is complete (or over the cap): build the answer. */
static void route(struct slot *s)
{
    const char *req = s->req;
    const char *text = "text/plain; charset=utf-8";
    if (!strncmp(req, "GET /healthz ", 13) || !strncmp(req, "GET /healthz?", 13)) {
        if (atomic_load(&g_stopping))
            answer(s, 503, "Service Unavailable", text, "stopping\n", 9);
        else
            answer(s, 200, "OK", text, "ok\n", 3);
    } else if (!strncmp(req, "GET /metrics ", 13)) {
        size_t len = 0;
        char *body = metrics_render(&len);
        if (body)
            answer(s, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body, len);
        else
            answer(s, 500, "Internal Server Error", text, "out of memory\n", 14);
        free(body);
    } else if (strncmp(req, "GET ", 4) != 0) {
        answer(s, 405, "Method Not Allowed", text, "only GET\n", 9);
    } else {
        answer(s, 404, "Not Found", text, "not found: try /healthz or /metrics\n", 36);
    }
}

/* Reads what is there; 0 to keep the slot, -1 to close it. */
static int slot_read(struct slot *s)
{
    ssize_t r = recv(s->fd, s->req + s->have, sizeof s->req - 1 - s->have, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    if (r <= 0)
        return -1;
    s->have += (size_t)r;
    s->req[s->have] = '\0';
    if (strstr(s->req, "\r\n\r\n") || strstr(s->req, "\n\n") || s->have == sizeof s->req - 1) {
        route(s);
        if (!s->out)
            return -1;
    }
    return 0;
}

/* Writes what the socket takes; 1 when the answer is out, 0 to wait, -1 on error. */
static int slot_write(struct slot *s)
{
    while (s->out_off < s->out_len) {
        ssize_t w = send(s->fd, s->out + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (w <= 0)
            return -1;
        s->out_off += (size_t)w;
    }
    return 1;
}

static void *http_main(void *arg)
{
    (void)arg;
    static struct slot slots[HTTP_SLOTS];
    for (int i = 0; i < HTTP_SLOTS; i++)
        slots[i].fd = -1;
    while (g_running) {
        struct pollfd pf[HTTP_SLOTS + 2];
        int map[HTTP_SLOTS + 2];
        int n = 0;
        pf[n] = (struct pollfd){ g_fd, POLLIN, 0 };
        map[n++] = -1;
        pf[n] = (struct pollfd){ g_wake[0], POLLIN, 0 };
        map[n++] = -1;
        uint64_t now = relay_now_ms(), next = now + 60000;
        for (int i = 0; i < HTTP_SLOTS; i++) {
            if (slots[i].fd < 0)
                continue;
            if (slots[i].deadline_ms <= now) {
                slot_close(&slots[i]);
                continue;
            }
            if (slots[i].deadline_ms < next)
                next = slots[i].deadline_ms;
            pf[n] = (struct pollfd){ slots[i].fd, slots[i].out ? POLLOUT : POLLIN, 0 };
            map[n++] = i;
        }
        int rc = poll(pf, (nfds_t)n, (int)(next - now));
        if (rc < 0 && errno != EINTR)
            break;
        if (pf[1].revents)
            break;
        for (int k = 2; k < n; k++) {
            struct slot *s = &slots[map[k]];
            if (!pf[k].revents)
                continue;
            int r = 0;
            if (!s->out)
                r = slot_read(s);
            if (r == 0 && s->out)
                r = slot_write(s) == 1 ? -1 : 0; /* answered: close */
            if (r < 0)
                slot_close(s);
        }
        if (!(pf[0].revents & POLLIN))
            continue;
        for (int burst = 0; burst < HTTP_SLOTS; burst++) {
            int c = accept4(g_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (c < 0)
                break;
            int free_i = -1, oldest = 0;
            for (int i = 0; i < HTTP_SLOTS; i++) {
                if (slots[i].fd < 0) {
                    free_i = i;
                    break;
                }
                if (slots[i].deadline_ms < slots[oldest].deadline_ms)
                    oldest = i;
            }
            if (free_i < 0) {
                slot_close(&slots[oldest]);
                free_i = oldest;
            }
            slots[free_i].fd = c;
            slots[free_i].deadline_ms = relay_now_ms() + HTTP_DEADLINE_MS;
        }
    }
    for (int i = 0; i < HTTP_SLOTS; i++)
        if (slots[i].fd >= 0)
            slot_close(&slots[i]);
    return NULL;
}

int http_start(const struct relay_config *cfg, char *err, size_t errlen)
{
    if (!cfg->metrics_port)
        return 0;
    g_fd = relay_open_listener(cfg->metrics_host, cfg->metrics_port, 0, err, errlen);
    if (g_fd < 0)
        return -1;
    if (pipe(g_wake) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    g_running = 1;
    if (pthread_create(&g_th, NULL, http_main, NULL) != 0) {
        snprintf(err, errlen, "cannot start the metrics thread");
        return -1;
    }
    rlog(RLOG_INFO, "metrics", "addr=%s:%d", cfg->metrics_host, cfg->metrics_port);
    return 0;
}

void http_stop(void)
{
    if (!g_running)
        return;
    g_running = 0;
    if (write(g_wake[1], "x", 1) < 0) {
        /* the thread will still see g_running on its next wake-up */
    }
    pthread_join(g_th, NULL);
    close(g_fd);
    close(g_wake[0]);
    close(g_wake[1]);
    g_fd = g_wake[0] = g_wake[1] = -1;
}
