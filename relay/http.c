/*
 * http.c - GET /healthz and GET /metrics (Prometheus text format) on a separate port, loopback by
 * default. A small dedicated thread: one request per connection, the request read is capped at
 * 4 KiB and 2 seconds, so a slow or hostile scraper cannot hold it for long.
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

static void send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                struct pollfd pf = { fd, POLLOUT, 0 };
                if (poll(&pf, 1, 2000) <= 0)
                    return;
                continue;
            }
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void respond(int fd, int status, const char *reason, const char *ctype, const char *body, size_t len)
{
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", status,
                     reason, ctype, len);
    send_all(fd, head, (size_t)n);
    send_all(fd, body, len);
}

static void serve(int fd)
{
    char req[4096];
    size_t have = 0;
    while (have < sizeof req - 1) {
        struct pollfd pf = { fd, POLLIN, 0 };
        if (poll(&pf, 1, 2000) <= 0)
            return;
        ssize_t r = recv(fd, req + have, sizeof req - 1 - have, 0);
        if (r <= 0)
            return;
        have += (size_t)r;
        req[have] = '\0';
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
            break;
    }
    req[have] = '\0';
    const char *text = "text/plain; charset=utf-8";
    if (!strncmp(req, "GET /healthz ", 13) || !strncmp(req, "GET /healthz?", 13)) {
        if (atomic_load(&g_stopping))
            respond(fd, 503, "Service Unavailable", text, "stopping\n", 9);
        else
            respond(fd, 200, "OK", text, "ok\n", 3);
    } else if (!strncmp(req, "GET /metrics ", 13)) {
        size_t len = 0;
        char *body = metrics_render(&len);
        if (body)
            respond(fd, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body, len);
        else
            respond(fd, 500, "Internal Server Error", text, "out of memory\n", 14);
        free(body);
    } else if (strncmp(req, "GET ", 4) != 0) {
        respond(fd, 405, "Method Not Allowed", text, "only GET\n", 9);
    } else {
        respond(fd, 404, "Not Found", text, "not found: try /healthz or /metrics\n", 36);
    }
}

static void *http_main(void *arg)
{
    (void)arg;
    while (g_running) {
        struct pollfd pf[2] = { { g_fd, POLLIN, 0 }, { g_wake[0], POLLIN, 0 } };
        if (poll(pf, 2, -1) < 0 && errno != EINTR)
            break;
        if (pf[1].revents)
            break;
        if (!(pf[0].revents & POLLIN))
            continue;
        int c = accept4(g_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        serve(c);
        close(c);
    }
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
