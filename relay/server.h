/* server.h - the event loops (server.c). */
#ifndef HUSH_RELAY_SERVER_H
#define HUSH_RELAY_SERVER_H

#include "relay.h"

/* Creates one lws context per loop, all listening on cfg's address, and starts the threads. */
int server_start(const struct relay_config *cfg, char *err, size_t errlen);
/* Tells every loop to flush and close its connections, then joins the threads. */
void server_shutdown(void);
/* Destroys the contexts (after server_shutdown). */
void server_free(void);

/* A non-blocking TCP listen socket with SO_REUSEADDR (and SO_REUSEPORT when shared, for the
 * loops' own sockets), or -1 with err set. */
int relay_open_listener(const char *host, int port, int shared, char *err, size_t errlen);

/* GET /healthz and GET /metrics on their own thread (http.c). */
int http_start(const struct relay_config *cfg, char *err, size_t errlen);
void http_stop(void);

#endif
