/* util.c - outgoing frame buffers, events, small helpers shared by the relay threads. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libwebsockets.h>

#include "relay.h"

atomic_int g_stopping;

uint64_t relay_now_ms(void) { return hwire_now_ms(); }

int relay_valid_username(const char *s)
{
    return hwire_valid_username(s);
}

struct outbuf *outbuf_from_frame(const Hush__Frame *f, uint64_t seq)
{
    size_t n = hush__frame__get_packed_size(f);
    struct outbuf *o = malloc(sizeof *o + LWS_PRE + n);
    if (!o)
        return NULL;
    o->next = NULL;
    o->len = n;
    o->seq = seq;
    hush__frame__pack(f, o->data + LWS_PRE);
    return o;
}

struct outbuf *outbuf_result(uint64_t req_id, Hush__ErrorCode code, const char *message)
{
    Hush__Result r = HUSH__RESULT__INIT;
    r.code = code;
    r.message = (char *)(message ? message : "");
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = req_id;
    f.msg_case = HUSH__FRAME__MSG_RESULT;
    f.result = &r;
    if (code != HUSH__ERROR_CODE__OK)
        metrics_error(code);
    return outbuf_from_frame(&f, 0);
}

struct event *event_new(enum ev_type t, uint64_t conn)
{
    struct event *e = calloc(1, sizeof *e);
    if (e) {
        e->type = t;
        e->conn = conn;
    }
    return e;
}

void event_free(struct event *e)
{
    if (!e)
        return;
    free(e->out);
    while (e->mail) {
        struct outbuf *n = e->mail->next;
        free(e->mail);
        e->mail = n;
    }
    free(e);
}

size_t relay_dev_key(unsigned char *k, const char *user, uint32_t dev)
{
    size_t ul = strnlen(user, RELAY_USERNAME_MAX);
    memcpy(k, user, ul);
    k[ul] = 0;
    memcpy(k + ul + 1, &dev, 4);
    return ul + 5;
}
