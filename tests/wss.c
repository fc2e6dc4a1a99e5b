/* wss.c - the server's side of a WebSocket for fake relays (see wss.h). */
#define _GNU_SOURCE /* strcasestr */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "wss.h"

size_t ws_frame_header(uint8_t h[10], int op, int fin, uint64_t len)
{
    size_t n = 0;
    h[n++] = (uint8_t)((fin ? 0x80 : 0) | (op & 0x0f));
    if (len < 126) {
        h[n++] = (uint8_t)len;
    } else if (len < 65536) {
        h[n++] = 126;
        h[n++] = (uint8_t)(len >> 8);
        h[n++] = (uint8_t)len;
    } else {
        h[n++] = 127;
        for (int i = 7; i >= 0; i--)
            h[n++] = (uint8_t)(len >> (8 * i));
    }
    return n;
}

static int send_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

int wss_accept_upgrade(int fd, const char *protocol, int timeout_ms)
{
    char req[4096];
    size_t got = 0;
    for (;;) {
        if (got == sizeof req - 1)
            return -1;
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, timeout_ms) <= 0)
            return -1;
        ssize_t r = recv(fd, req + got, sizeof req - 1 - got, 0);
        if (r <= 0)
            return -1;
        got += (size_t)r;
        req[got] = 0;
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    const char *k = strcasestr(req, "Sec-WebSocket-Key:");
    char key[64] = "";
    if (!k || sscanf(k + 18, " %63s", key) != 1)
        return -1;
    char cat[128];
    snprintf(cat, sizeof cat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    unsigned char sha[20];
    unsigned int shalen = 0;
    if (!EVP_Digest(cat, strlen(cat), sha, &shalen, EVP_sha1(), NULL))
        return -1;
    char acc[64];
    sodium_bin2base64(acc, sizeof acc, sha, 20, sodium_base64_VARIANT_ORIGINAL);
    char resp[512];
    int rl = snprintf(resp, sizeof resp,
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: %s\r\n\r\n", acc, protocol);
    return send_all(fd, resp, (size_t)rl);
}

int wss_send(int fd, int op, const void *payload, size_t len)
{
    uint8_t h[10];
    size_t hl = ws_frame_header(h, op, 1, len);
    return send_all(fd, h, hl) || send_all(fd, payload, len) ? -1 : 0;
}
