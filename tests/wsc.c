/*
 * wsc.c - a small blocking WebSocket client for the relay tests (RFC 6455, client side), over TCP
 * or TLS (OpenSSL, no certificate verification: the tests use a self-signed certificate). Written
 * by hand so tests control every byte: hostile tests send malformed frames through wsc_send_raw.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <sodium.h>

#include "wsc.h"
#include "wss.h"

struct wsc {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    uint8_t *mem; /* the receive buffer (cap bytes) */
    uint8_t *buf; /* received bytes not yet parsed: buf[0..have) inside mem */
    size_t have, cap;
    int closed;
    int close_code;
};

static FILE *g_capture; /* when set, every byte sent and received is appended here */

void wsc_capture(FILE *f) { g_capture = f; }

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int raw_write(struct wsc *w, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t r;
        if (w->ssl) {
            r = SSL_write(w->ssl, b, (int)n);
            if (r <= 0)
                return -1;
        } else {
            r = send(w->fd, b, n, MSG_NOSIGNAL);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return -1;
        }
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Reads more bytes, waiting at most timeout_ms. 1 = got bytes, 0 = timeout, -1 = closed/error. */
static int fill(struct wsc *w, int timeout_ms)
{
    /* consumed bytes are skipped, not moved (a busy socket holds hundreds of frames); the
     * unparsed rest moves to the front only when the end of the buffer is reached */
    if ((size_t)(w->buf - w->mem) + w->have == w->cap) {
        if (w->buf != w->mem && w->have < w->cap / 2) {
            memmove(w->mem, w->buf, w->have);
            w->buf = w->mem;
        } else {
            size_t at = (size_t)(w->buf - w->mem);
            size_t nc = w->cap ? w->cap * 2 : 65536;
            uint8_t *nb = realloc(w->mem, nc);
            if (!nb)
                return -1;
            w->mem = nb;
            w->buf = nb + at;
            w->cap = nc;
        }
    }
    size_t room = w->cap - (size_t)(w->buf - w->mem) - w->have;
    if (!(w->ssl && SSL_pending(w->ssl) > 0)) {
        struct pollfd pf = { w->fd, POLLIN, 0 };
        int pr = poll(&pf, 1, timeout_ms);
        if (pr == 0)
            return 0;
        if (pr < 0)
            return errno == EINTR ? 0 : -1;
    }
    ssize_t r;
    if (w->ssl) {
        r = SSL_read(w->ssl, w->buf + w->have, (int)room);
        if (r <= 0) {
            int e = SSL_get_error(w->ssl, (int)r);
            return e == SSL_ERROR_WANT_READ ? 0 : -1;
        }
    } else {
        r = recv(w->fd, w->buf + w->have, room, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            return 0;
        if (r <= 0)
            return -1;
    }
    if (g_capture)
        fwrite(w->buf + w->have, 1, (size_t)r, g_capture);
    w->have += (size_t)r;
    return 1;
}

static char g_source[64];

void wsc_set_source(const char *ip)
{
    snprintf(g_source, sizeof g_source, "%s", ip ? ip : "");
}

int wsc_tcp_connect(const char *host, int port, int timeout_ms)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &res) != 0)
        return -1;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(res);
        return -1;
    }
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (g_source[0] && res->ai_family == AF_INET) {
        struct sockaddr_in src;
        memset(&src, 0, sizeof src);
        src.sin_family = AF_INET;
        if (inet_pton(AF_INET, g_source, &src.sin_addr) != 1 || bind(fd, (struct sockaddr *)&src, sizeof src) != 0) {
            close(fd);
            freeaddrinfo(res);
            return -1;
        }
    }
    if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

struct wsc *wsc_connect(const char *host, int port, int tls, int timeout_ms)
{
    struct wsc *w = wsc_connect_start(host, port, tls, timeout_ms);
    if (w && wsc_connect_finish(w, timeout_ms) != 0)
        return NULL;
    return w;
}

struct wsc *wsc_connect_start(const char *host, int port, int tls, int timeout_ms)
{
    struct wsc *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->fd = wsc_tcp_connect(host, port, timeout_ms);
    if (w->fd < 0) {
        free(w);
        return NULL;
    }
    if (tls) {
        w->ctx = SSL_CTX_new(TLS_client_method());
        w->ssl = w->ctx ? SSL_new(w->ctx) : NULL;
        if (!w->ssl || SSL_set_fd(w->ssl, w->fd) != 1 || SSL_connect(w->ssl) != 1) {
            wsc_close(w);
            return NULL;
        }
    }
    uint8_t nonce[16];
    randombytes_buf(nonce, sizeof nonce);
    char key[32];
    sodium_bin2base64(key, sizeof key, nonce, sizeof nonce, sodium_base64_VARIANT_ORIGINAL);
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: hush.v1\r\n\r\n",
                     host, port, key);
    if (raw_write(w, req, (size_t)n) != 0) {
        wsc_close(w);
        return NULL;
    }
    return w;
}

int wsc_connect_finish(struct wsc *w, int timeout_ms)
{
    long deadline = now_ms() + timeout_ms;
    char *end = NULL;
    while (!end) {
        long left = deadline - now_ms();
        if (left <= 0 || fill(w, (int)left) < 0) {
            wsc_close(w);
            return -1;
        }
        if (w->have >= 4)
            end = memmem(w->buf, w->have, "\r\n\r\n", 4);
    }
    if (w->have < 12 || memcmp(w->buf, "HTTP/1.1 101", 12) != 0) {
        wsc_close(w);
        return -1;
    }
    size_t hl = (size_t)(end - (char *)w->buf) + 4;
    w->buf += hl;
    w->have -= hl;
    return 0;
}

int wsc_send_raw(struct wsc *w, const void *data, size_t len)
{
    return raw_write(w, data, len);
}

int wsc_send_frame(struct wsc *w, int opcode, int fin, const void *data, size_t len)
{
    uint8_t hdr[14];
    size_t h = ws_frame_header(hdr, opcode, fin, len);
    hdr[1] |= 0x80; /* masked, as every client frame must be */
    /* Captured unmasked: masking would hide a plaintext from the search, and the relay reads the
     * unmasked payload anyway. */
    if (g_capture)
        fwrite(data, 1, len, g_capture);
    uint8_t mask[4];
    randombytes_buf(mask, 4);
    memcpy(hdr + h, mask, 4);
    h += 4;
    uint8_t *buf = malloc(h + len);
    if (!buf)
        return -1;
    memcpy(buf, hdr, h);
    const uint8_t *d = data;
    for (size_t i = 0; i < len; i++)
        buf[h + i] = d[i] ^ mask[i & 3];
    int r = raw_write(w, buf, h + len);
    free(buf);
    return r;
}

int wsc_send(struct wsc *w, const void *data, size_t len)
{
    return wsc_send_frame(w, 2, 1, data, len);
}

/* Parses one frame from the buffer; returns 1 with fields set, 0 if incomplete. */
static int parse(struct wsc *w, int *op, int *fin, size_t *off, size_t *plen)
{
    if (w->have < 2)
        return 0;
    uint8_t b0 = w->buf[0], b1 = w->buf[1];
    size_t h = 2;
    uint64_t len = b1 & 0x7f;
    if (len == 126) {
        if (w->have < 4)
            return 0;
        len = ((uint64_t)w->buf[2] << 8) | w->buf[3];
        h = 4;
    } else if (len == 127) {
        if (w->have < 10)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | w->buf[2 + i];
        h = 10;
    }
    if (b1 & 0x80)
        h += 4; /* servers never mask, but be lenient */
    if (w->have < h + len)
        return 0;
    *op = b0 & 0x0f;
    *fin = (b0 & 0x80) != 0;
    *off = h;
    *plen = (size_t)len;
    return 1;
}

int wsc_recv(struct wsc *w, uint8_t **out, size_t *out_len, int timeout_ms)
{
    *out = NULL;
    *out_len = 0;
    if (w->closed)
        return -1;
    long deadline = now_ms() + timeout_ms;
    uint8_t *msg = NULL;
    size_t mlen = 0;
    int polled = 0;
    for (;;) {
        int op, fin;
        size_t off, plen;
        while (parse(w, &op, &fin, &off, &plen)) {
            uint8_t *p = w->buf + off;
            size_t consumed = off + plen;
            if (op == 9) { /* ping -> pong */
                wsc_send_frame(w, 10, 1, p, plen);
            } else if (op == 8) {
                w->closed = 1;
                w->close_code = plen >= 2 ? (p[0] << 8) | p[1] : 1005;
                free(msg);
                return -1;
            } else if (op == 0 || op == 1 || op == 2) {
                uint8_t *nm = realloc(msg, mlen + plen + 1);
                if (!nm) {
                    free(msg);
                    return -1;
                }
                msg = nm;
                memcpy(msg + mlen, p, plen);
                mlen += plen;
                if (fin) {
                    w->buf += consumed;
                    w->have -= consumed;
                    *out = msg;
                    *out_len = mlen;
                    return 1;
                }
            }
            w->buf += consumed;
            w->have -= consumed;
        }
        long left = deadline - now_ms();
        if (left <= 0 && (timeout_ms > 0 || polled)) {
            /* keep a partial message? the tests never interleave: drop it */
            free(msg);
            return 0;
        }
        if (left < 0)
            left = 0;
        polled = 1; /* timeout 0: one look at the socket without waiting */
        int r = fill(w, (int)left);
        if (r < 0) {
            w->closed = 1;
            free(msg);
            return -1;
        }
    }
}

int wsc_close_code(const struct wsc *w) { return w->close_code; }
int wsc_is_closed(const struct wsc *w) { return w->closed; }
int wsc_fd(const struct wsc *w) { return w->fd; }

void wsc_close(struct wsc *w)
{
    if (!w)
        return;
    if (w->ssl) {
        SSL_shutdown(w->ssl);
        SSL_free(w->ssl);
    }
    if (w->ctx)
        SSL_CTX_free(w->ctx);
    if (w->fd >= 0)
        close(w->fd);
    free(w->mem);
    free(w);
}

void wsc_abort(struct wsc *w)
{
    if (!w)
        return;
    /* RST instead of FIN: like a process that died */
    struct linger lg = { 1, 0 };
    setsockopt(w->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (w->ssl) {
        SSL_free(w->ssl);
        w->ssl = NULL;
    }
    wsc_close(w);
}

size_t wsc_tls_binding(const struct wsc *w, uint8_t out[32])
{
    static const char label[] = "EXPORTER-Channel-Binding";
    if (!w || !w->ssl)
        return 0;
    return SSL_export_keying_material(w->ssl, out, 32, label, sizeof label - 1, NULL, 0, 0) == 1 ? 32 : 0;
}
