/* hushdev.h - a Hush device for the benchmarks: keys made here, the wire protocol spoken directly
 * (no SDK database, no client-side crypto), so the load lands on the relay alone. */
#ifndef HUSH_BENCH_HUSHDEV_H
#define HUSH_BENCH_HUSHDEV_H

#include <stddef.h>
#include <stdint.h>

#include "hush.pb-c.h"

struct dev {
    char user[33];
    uint8_t pk[32], sk[64];
    uint8_t challenge[32];
    int port;                 /* the relay's, named in the proofs (ws://127.0.0.1:port) */
    struct wsc *ws;
    uint64_t next_id;
};

void hdev_keys_init(void);
void hdev_init(struct dev *d, const char *prefix, int i);
/* Connects and authenticates n devices to 127.0.0.1:port, pipelined; do_register: first time. */
void hdev_connect_all(int port, struct dev *v, int n, int do_register);
void hdev_close_all(struct dev *v, int n);
void hdev_send_frame(struct dev *d, Hush__Frame *f);
Hush__Frame *hdev_recv_frame(struct dev *d, int timeout_ms);
void hdev_send_hello(struct dev *d);
void hdev_read_welcome(struct dev *d);
void hdev_send_register(struct dev *d);
void hdev_send_login(struct dev *d);
/* Waits for the next Result, skipping pushes; returns its code. */
int hdev_read_result(struct dev *d);
/* A Send of one envelope to (to, device 1); k becomes the client message id. */
void hdev_send_msg(struct dev *from, const char *to, uint64_t k, const uint8_t *body, size_t blen);
/* A room message: body as the shared envelope, to (to[i], device 1) each (no own parts). */
void hdev_send_room(struct dev *from, char **to, int n, uint64_t k, const uint8_t *body, size_t blen);

#endif
