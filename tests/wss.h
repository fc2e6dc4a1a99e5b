/*
 * wss.h - the server's side of a WebSocket (RFC 6455) on a plain TCP socket, for the fake relays
 * of the tests and of fuzz/fuzz_client.c: the HTTP upgrade and unmasked frames. Blocking.
 */
#ifndef HUSH_TESTS_WSS_H
#define HUSH_TESTS_WSS_H

#include <stddef.h>
#include <stdint.h>

/* Writes the header of one frame with `len` payload bytes into h (at most 10 bytes: 14 with the
 * mask bit set and 4 mask bytes appended by the caller); returns its length. */
size_t ws_frame_header(uint8_t h[10], int op, int fin, uint64_t len);

/* Reads the client's HTTP upgrade request from fd (at most 4 KiB, waiting up to timeout_ms) and
 * answers 101 with the accept key and `protocol`. 0 on success, -1 otherwise. */
int wss_accept_upgrade(int fd, const char *protocol, int timeout_ms);

/* One unmasked final frame. 0 on success, -1 when the socket failed. */
int wss_send(int fd, int op, const void *payload, size_t len);

#endif
