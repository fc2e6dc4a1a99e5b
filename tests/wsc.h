/* wsc.h - blocking WebSocket test client (see wsc.c). */
#ifndef HUSH_TEST_WSC_H
#define HUSH_TEST_WSC_H

#include <stddef.h>
#include <stdint.h>

struct wsc;

int wsc_tcp_connect(const char *host, int port, int timeout_ms);
/* Binds later connections to this local IPv4 address (NULL: any): more source ports for load tests. */
void wsc_set_source(const char *ip);
struct wsc *wsc_connect(const char *host, int port, int tls, int timeout_ms);
/* The same in two steps, so a load generator can have many upgrades in flight: start connects and
 * sends the upgrade request; finish reads the answer (on failure it closes and frees w: -1). */
struct wsc *wsc_connect_start(const char *host, int port, int tls, int timeout_ms);
int wsc_connect_finish(struct wsc *w, int timeout_ms);
int wsc_send(struct wsc *w, const void *data, size_t len);
int wsc_send_frame(struct wsc *w, int opcode, int fin, const void *data, size_t len);
int wsc_send_raw(struct wsc *w, const void *data, size_t len);
/* 1: a message in *out (free it), 0: timeout, -1: closed or error. Pings are answered. */
int wsc_recv(struct wsc *w, uint8_t **out, size_t *out_len, int timeout_ms);
int wsc_close_code(const struct wsc *w);
/* The TLS channel binding of the connection (RFC 9266 tls-exporter, 32 bytes): its length, or 0
 * without TLS. */
size_t wsc_tls_binding(const struct wsc *w, uint8_t out[32]);
int wsc_is_closed(const struct wsc *w);
int wsc_fd(const struct wsc *w);
void wsc_close(struct wsc *w);
/* Appends every byte any client sends or receives to f (NULL stops): a traffic capture. */
#include <stdio.h>
void wsc_capture(FILE *f);
void wsc_abort(struct wsc *w);

#endif
