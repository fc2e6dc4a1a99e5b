/*
 * bench_compare.c - one load generator for Hush, MQTT (mosquitto) and XMPP (ejabberd), so the
 * three relays meet the same scenarios with the same payloads, sockets and timing code. The
 * servers are started and stopped by bench/compare.sh; this program connects to one of them.
 *
 *   bench_compare --system hush|mqtt|xmpp --port P --scenario w1|w2|w2open|w3 [options]
 *
 * Scenarios (docs/PERFORMANCE.md):
 *   w1      N idle authenticated connections: connect rate, server RSS per connection
 *   w2      online one-to-one, acknowledged: maximum throughput (each sender keeps a window of
 *           unacknowledged messages), with end-to-end latency
 *   w2open  the same at a fixed offered rate (--rate, messages/s in all), latency measured from
 *           each message's scheduled send time (no coordinated omission)
 *   w3      --messages to offline recipients (fill rate), then they connect and drain (drain rate);
 *           with --kill-cmd, the server is killed (kill -9) and restarted when half the messages
 *           are acknowledged, and lost / duplicated acknowledged messages are counted; with
 *           --online the recipients stay connected and receive while the messages are sent (the
 *           kill -9 variant of w2: what was acknowledged must still arrive after the restart)
 *   pushhang  (Hush) --conns offline devices with push endpoints under --push-url get a message
 *           each: wake-ups for a push service that hangs, set up before W2 runs beside them
 *   w6      a room of --members, all online: --senders of them write to it (each keeping --window
 *           messages unacknowledged), every other member receives; messages/s into the room,
 *           deliveries/s out, latency to each member and to the last one. Hush: one send with a
 *           shared envelope per message; with --relay-db, afterwards the relay's bytes on disk per
 *           room message for offline members (SQLite's dbstat). MQTT: one topic, QoS 1, the
 *           members subscribed. XMPP: a MUC room (XEP-0045) the members join, groupchat messages,
 *           acknowledged by stream management like the one-to-one ones.
 *
 * Hush: the wire protocol spoken directly (no client-side crypto), as in bench_relay.
 * MQTT: libmosquitto, QoS 1, persistent sessions (clean session off), one topic per recipient.
 * XMPP: a small client of our own: SASL PLAIN, resource binding, stream management (XEP-0198)
 *       acks requested after every message; recipients send initial presence; offline storage
 *       (mod_offline) holds messages for offline recipients.
 *
 * Output: a human line on stdout and one JSON object per result appended to --json FILE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <mosquitto.h>
#include <sodium.h>
#include <sqlite3.h>

#include "../tests/wsc.h"
#include "common.h"
#include "hush.pb-c.h"
#include "hushdev.h"

#define MAX_CLIENTS 200000
#define PAYLOAD_MAX 4096

/* ------------------------------------------------------------------------------------------ */
/* options and results */

static const char *o_system = "hush", *o_scenario = "w2", *o_json = NULL, *o_kill_cmd = NULL, *o_label = "";
static int o_port = 0, o_pairs = 16, o_window = 32, o_size = 256, o_conns = 10000, o_server_pid = 0;
static double o_duration = 5, o_rate = 0;
static long o_messages = 100000;
static int o_users_exist = 0; /* the users were registered by an earlier run: log in */
static int o_online = 0;      /* w3: the recipients stay connected (the kill variant of W2) */
static int o_members = 100, o_senders = 4; /* w6 */
static const char *o_relay_db = NULL;      /* w6 (hush): the relay's database, for the bytes stored */
/* w6: a room instead of one recipient per sender (hush: these names; mqtt: this topic) */
static int g_room;
static char **g_room_names;
static int g_room_n;
static char g_room_topic[32];
static char g_room_muc[32]; /* XMPP: the MUC room's local part (a JID has no '/' there) */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_compare (%s %s): ", o_system, o_scenario);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* latency samples, seconds */
static double *g_lat;
static size_t g_nlat, g_caplat;

static void lat_add(double v)
{
    if (g_nlat == g_caplat) {
        g_caplat = g_caplat ? g_caplat * 2 : 65536;
        g_lat = realloc(g_lat, g_caplat * sizeof *g_lat);
        if (!g_lat)
            die("out of memory");
    }
    g_lat[g_nlat++] = v;
}

static double lat_q(double q)
{
    return g_nlat ? bench_quantile(g_lat, g_nlat, q) * 1000.0 : NAN;
}

static void json_result(const char *fmt, ...)
{
    char body[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    if (!o_json)
        return;
    FILE *f = fopen(o_json, "a");
    if (!f)
        die("cannot write %s", o_json);
    fprintf(f, "{\"system\":\"%s\",\"scenario\":\"%s\",\"label\":\"%s\",%s}\n", o_system, o_scenario, o_label, body);
    fclose(f);
}

/* The payload every system carries: 8 bytes of scheduled send time (ns), a 4-byte sender index
 * and a 4-byte sequence number, then filler up to --size bytes. */
struct stamp {
    uint64_t t_ns;
    uint32_t sender;
    uint32_t seq;
};

static size_t make_payload(uint8_t *buf, double t, uint32_t sender, uint32_t seq)
{
    struct stamp s = { (uint64_t)(t * 1e9), sender, seq };
    memset(buf, 'x', (size_t)o_size);
    memcpy(buf, &s, sizeof s);
    return (size_t)o_size;
}

/* ------------------------------------------------------------------------------------------ */
/* the clients, one interface over three protocols */

struct client;
static void on_acked(struct client *c, long n);
static void on_received(struct client *c, const uint8_t *payload, size_t len);
static void on_presence(struct client *c, const char *user, int online);

struct client {
    int idx;          /* user index */
    int fd;
    long outstanding; /* sent, not yet acknowledged */
    long sent, acked, received;
    double next_send; /* open loop: scheduled time of the next message */
    uint32_t seq;
    int to;           /* recipient user index (senders) */
    /* hush */
    struct dev dev;
    uint64_t ack_seqs[256];
    int nack;
    /* mqtt */
    struct mosquitto *mq;
    /* xmpp */
    char *xbuf;
    size_t xlen, xcap;
    long xh_acked;  /* last h the server acknowledged */
    long xhandled;  /* stanzas received from the server (for its <r/>) */
    /* w3: seqs in flight, oldest first (acks come back in order on all three protocols) */
    uint32_t *fifo;
    long fhead, ftail, fcap;
};

static int g_nclients;
/* first 127.0.0.x source address: W1 logs in from other addresses than it registered from, so the
 * ports the registrations left in TIME_WAIT do not run out */
static int g_src_base;

/* ---------------------------------------- hush ---------------------------------------- */

static void hush_user_name(char *out, size_t cap, int idx)
{
    snprintf(out, cap, "user%d", idx);
}

static void hush_connect_many(struct client **v, int n, int do_register)
{
    struct dev *devs = calloc((size_t)n, sizeof *devs);
    for (int i = 0; i < n; i++)
        devs[i] = v[i]->dev;
    char src[32];
    snprintf(src, sizeof src, "127.0.0.%d", 1 + (g_src_base + v[0]->idx / 20000) % 250); /* groups never straddle */
    wsc_set_source(src);
    hdev_connect_all(o_port, devs, n, do_register);
    for (int i = 0; i < n; i++) {
        v[i]->dev = devs[i];
        v[i]->fd = wsc_fd(v[i]->dev.ws);
    }
    free(devs);
}

static void hush_init_client(struct client *c)
{
    hdev_init(&c->dev, "user", c->idx); /* "user<idx>", as hush_user_name */
}

static void hush_send(struct client *c, const uint8_t *p, size_t len)
{
    uint64_t k = ((uint64_t)c->idx << 32) | (uint64_t)++c->seq;
    if (g_room) {
        hdev_send_room(&c->dev, g_room_names, g_room_n, k, p, len);
        return;
    }
    char to[32];
    hush_user_name(to, sizeof to, c->to);
    hdev_send_msg(&c->dev, to, k, p, len);
}

static void hush_flush_acks(struct client *c)
{
    if (!c->nack)
        return;
    Hush__AckRequest a = HUSH__ACK_REQUEST__INIT;
    a.seqs = c->ack_seqs;
    a.n_seqs = (size_t)c->nack;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = 0; /* as libhush does: an ack needs no answer */
    f.msg_case = HUSH__FRAME__MSG_ACK;
    f.ack = &a;
    hdev_send_frame(&c->dev, &f);
    c->nack = 0;
}

static void hush_readable(struct client *c)
{
    Hush__Frame *f;
    int first = 1;
    while ((f = hdev_recv_frame(&c->dev, 0)) != NULL) {
        first = 0;
        if (f->msg_case == HUSH__FRAME__MSG_RESULT) {
            if (f->result->code != HUSH__ERROR_CODE__OK)
                die("hush: request refused with code %d", (int)f->result->code);
            if (f->result->n_seqs >= 1 && c->outstanding > 0) /* a send (a room send: one seq per recipient) */
                on_acked(c, 1);
        } else if (f->msg_case == HUSH__FRAME__MSG_PRESENCE) {
            on_presence(c, f->presence->username, f->presence->online);
        } else if (f->msg_case == HUSH__FRAME__MSG_DELIVER) {
            const ProtobufCBinaryData *e = f->deliver->shared_envelope.len ? &f->deliver->shared_envelope
                                                                           : &f->deliver->envelope;
            on_received(c, e->data, e->len);
            if (f->deliver->seq) {
                c->ack_seqs[c->nack++] = f->deliver->seq;
                if (c->nack == 256)
                    hush_flush_acks(c);
            }
        }
        hush__frame__free_unpacked(f, NULL);
    }
    hush_flush_acks(c);
    if (first && wsc_is_closed(c->dev.ws))
        c->fd = -1;
}

/* ---------------------------------------- mqtt ---------------------------------------- */

static void mq_on_publish(struct mosquitto *m, void *ud, int mid)
{
    (void)m;
    (void)mid;
    on_acked(ud, 1);
}

static void mq_on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    (void)m;
    on_received(ud, msg->payload, (size_t)msg->payloadlen);
}

static int g_mq_connected;
static void mq_on_connect(struct mosquitto *m, void *ud, int rc)
{
    (void)m;
    (void)ud;
    if (rc != 0)
        die("mqtt: connect refused (%d)", rc);
    g_mq_connected++;
}

static int g_mq_subscribed;
static void mq_on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *granted)
{
    (void)m;
    (void)ud;
    (void)mid;
    (void)n;
    (void)granted;
    g_mq_subscribed++;
}

/* libmosquitto 2.0 reads one packet per mosquitto_loop_read call (its max_packets argument is
 * unused), so read until the socket is empty; then write what the callbacks queued (PUBACKs). */
static void mq_pump(struct client *c)
{
    if (!c->mq)
        return;
    int rc = MOSQ_ERR_SUCCESS;
    for (int k = 0; k < 4096; k++) {
        rc = mosquitto_loop_read(c->mq, 1);
        if (rc != MOSQ_ERR_SUCCESS)
            break;
        struct pollfd p = { mosquitto_socket(c->mq), POLLIN, 0 };
        if (p.fd < 0 || poll(&p, 1, 0) <= 0)
            break;
    }
    if (rc == MOSQ_ERR_SUCCESS && mosquitto_want_write(c->mq))
        rc = mosquitto_loop_write(c->mq, 1);
    if (rc != MOSQ_ERR_SUCCESS)
        c->fd = -1;
}

/* Connects n clients (persistent sessions); receivers subscribe to their topic. Pipelined: all
 * CONNECTs go out, then the answers are read. */
static void mq_connect_many(struct client **v, int n, int subscribe)
{
    int before = g_mq_connected;
    for (int i = 0; i < n; i++) {
        struct client *c = v[i];
        char id[32];
        snprintf(id, sizeof id, "u%d", c->idx);
        if (!c->mq) {
            c->mq = mosquitto_new(id, false, c);
            if (!c->mq)
                die("mosquitto_new");
            mosquitto_int_option(c->mq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
            mosquitto_max_inflight_messages_set(c->mq, (unsigned)o_window);
            mosquitto_connect_callback_set(c->mq, mq_on_connect);
            mosquitto_publish_callback_set(c->mq, mq_on_publish);
            mosquitto_message_callback_set(c->mq, mq_on_message);
            mosquitto_subscribe_callback_set(c->mq, mq_on_subscribe);
        }
        char bind[32];
        snprintf(bind, sizeof bind, "127.0.0.%d", 1 + (g_src_base + c->idx / 20000) % 250);
        if (mosquitto_connect_bind(c->mq, "127.0.0.1", o_port, 600, bind) != MOSQ_ERR_SUCCESS)
            die("mqtt: connect %d (raise the fd limit?)", c->idx);
        c->fd = mosquitto_socket(c->mq);
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    double t0 = now();
    while (g_mq_connected - before < n) {
        for (int i = 0; i < n; i++)
            mq_pump(v[i]);
        if (now() - t0 > 120)
            die("mqtt: only %d of %d connected", g_mq_connected - before, n);
    }
    if (subscribe) {
        int sb = g_mq_subscribed;
        for (int i = 0; i < n; i++) {
            char topic[32];
            snprintf(topic, sizeof topic, "u/%d", v[i]->idx);
            if (mosquitto_subscribe(v[i]->mq, NULL, g_room ? g_room_topic : topic, 1) != MOSQ_ERR_SUCCESS)
                die("mqtt: subscribe");
        }
        while (g_mq_subscribed - sb < n)
            for (int i = 0; i < n; i++)
                mq_pump(v[i]);
    }
}

static void mq_send(struct client *c, const uint8_t *p, size_t len)
{
    char topic[32];
    snprintf(topic, sizeof topic, "u/%d", c->to);
    int rc = mosquitto_publish(c->mq, NULL, g_room ? g_room_topic : topic, (int)len, p, 1, false);
    if (rc != MOSQ_ERR_SUCCESS)
        die("mqtt: publish: %s", mosquitto_strerror(rc));
    c->seq++;
}

/* ---------------------------------------- xmpp ---------------------------------------- */

#define XDOMAIN "bench.local"

static void x_write(struct client *c, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(c->fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd p = { c->fd, POLLOUT, 0 };
            poll(&p, 1, 1000);
            continue;
        }
        if (w <= 0)
            die("xmpp: write: %s", strerror(errno));
        s += w;
        n -= (size_t)w;
    }
}

static void x_puts(struct client *c, const char *s)
{
    x_write(c, s, strlen(s));
}

/* Reads into the buffer; 0 if nothing (non-blocking), -1 closed. */
static int x_fill(struct client *c, int timeout_ms)
{
    struct pollfd p = { c->fd, POLLIN, 0 };
    if (poll(&p, 1, timeout_ms) <= 0)
        return 0;
    if (c->xcap - c->xlen < 65536) {
        c->xcap = c->xcap * 2 + 131072;
        c->xbuf = realloc(c->xbuf, c->xcap);
    }
    ssize_t r = read(c->fd, c->xbuf + c->xlen, c->xcap - c->xlen - 1);
    if (r <= 0)
        return r == 0 ? -1 : (errno == EAGAIN ? 0 : -1);
    c->xlen += (size_t)r;
    c->xbuf[c->xlen] = '\0';
    return 1;
}

/* Blocking, for the handshake: reads until `needle` appears; consumes through it. */
static void x_expect(struct client *c, const char *needle, const char *fail)
{
    double t0 = now();
    for (;;) {
        if (c->xbuf) {
            c->xbuf[c->xlen] = '\0';
            char *p = strstr(c->xbuf, needle);
            if (p) {
                size_t used = (size_t)(p - c->xbuf) + strlen(needle);
                memmove(c->xbuf, c->xbuf + used, c->xlen - used);
                c->xlen -= used;
                c->xbuf[c->xlen] = '\0';
                return;
            }
            if (fail && strstr(c->xbuf, fail))
                die("xmpp: user %d: got %s", c->idx, fail);
        }
        if (x_fill(c, 1000) < 0)
            die("xmpp: user %d: connection closed while waiting for %s (last read: %.300s)", c->idx, needle,
                c->xbuf ? c->xbuf : "");
        if (now() - t0 > 60)
            die("xmpp: user %d: timeout waiting for %s", c->idx, needle);
    }
}

static int tcp_connect_from(int idx)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket: %s (raise the fd limit?)", strerror(errno));
    struct sockaddr_in src = { 0 }, dst = { 0 };
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(g_src_base + idx / 20000) % 250); /* 127.0.0.x: more ports */
    if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0)
        die("bind: %s", strerror(errno));
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)o_port);
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0)
        die("connect: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Handshakes are pipelined over a group, as for the other systems: each step is sent on every
 * socket before any answer is read. */
static void x_register_many(struct client **v, int n)
{
    char iq[256];
    for (int i = 0; i < n; i++) {
        v[i]->fd = tcp_connect_from(v[i]->idx);
        v[i]->xlen = 0;
        x_puts(v[i], "<?xml version='1.0'?><stream:stream to='" XDOMAIN "' xmlns='jabber:client' "
                     "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
    }
    for (int i = 0; i < n; i++)
        x_expect(v[i], "</stream:features>", NULL);
    for (int i = 0; i < n; i++) {
        snprintf(iq, sizeof iq, "<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>u%d</username>"
                                "<password>pw%d</password></query></iq>", v[i]->idx, v[i]->idx);
        x_puts(v[i], iq);
    }
    for (int i = 0; i < n; i++) {
        x_expect(v[i], "id='reg'", NULL); /* "result", or "conflict" when it exists: both fine */
        close(v[i]->fd);
        v[i]->fd = -1;
    }
}

static const char *const X_STREAM = "<?xml version='1.0'?><stream:stream to='" XDOMAIN "' xmlns='jabber:client' "
                                    "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

static void x_login_many(struct client **v, int n, int presence)
{
    char cred[64], b64[128], buf[512];
    for (int i = 0; i < n; i++) {
        struct client *c = v[i];
        c->fd = tcp_connect_from(c->idx);
        c->xlen = 0;
        c->xh_acked = 0;
        c->xhandled = 0;
        x_puts(c, X_STREAM);
    }
    for (int i = 0; i < n; i++)
        x_expect(v[i], "</stream:features>", NULL);
    for (int i = 0; i < n; i++) {
        struct client *c = v[i];
        int k = snprintf(cred + 1, sizeof cred - 1, "u%d", c->idx) + 1;
        cred[0] = '\0';
        k += snprintf(cred + k + 1, sizeof cred - (size_t)k - 1, "pw%d", c->idx) + 1;
        sodium_bin2base64(b64, sizeof b64, (const unsigned char *)cred, (size_t)k, sodium_base64_VARIANT_ORIGINAL);
        snprintf(buf, sizeof buf, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>", b64);
        x_puts(c, buf);
    }
    for (int i = 0; i < n; i++) {
        x_expect(v[i], "<success", "<failure");
        x_puts(v[i], X_STREAM);
    }
    for (int i = 0; i < n; i++) {
        x_expect(v[i], "</stream:features>", NULL);
        x_puts(v[i], "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>b</resource></bind></iq>");
    }
    for (int i = 0; i < n; i++) {
        x_expect(v[i], "</iq>", NULL);
        x_puts(v[i], "<enable xmlns='urn:xmpp:sm:3'/>");
    }
    for (int i = 0; i < n; i++) {
        struct client *c = v[i];
        x_expect(c, "<enabled", NULL);
        x_expect(c, "/>", NULL);
        if (presence) {
            x_puts(c, "<presence/>");
            c->xh_acked = -1; /* the presence is a stanza too: h counts it */
        }
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    }
}

static void x_send(struct client *c, const uint8_t *p, size_t len)
{
    /* the body is text: the stamp in hex, then the filler, to the same size as the others */
    char hex[2 * sizeof(struct stamp) + 1];
    sodium_bin2hex(hex, sizeof hex, p, sizeof(struct stamp));
    char msg[PAYLOAD_MAX + 512], to[128];
    if (g_room)
        snprintf(to, sizeof to, "%s@conference." XDOMAIN "' type='groupchat", g_room_muc);
    else
        snprintf(to, sizeof to, "u%d@" XDOMAIN "' type='chat", c->to);
    int n = snprintf(msg, sizeof msg, "<message to='%s'><body>%s%.*s</body></message><r xmlns='urn:xmpp:sm:3'/>", to,
                     hex, (int)(len > 2 * sizeof(struct stamp) ? len - 2 * sizeof(struct stamp) : 0),
                     (const char *)p + sizeof(struct stamp));
    x_write(c, msg, (size_t)n);
    c->seq++;
}

static void x_stanza(struct client *c, const char *s, size_t n)
{
    if (n > 3 && !strncmp(s, "<a ", 3)) {
        const char *h = strstr(s, "h='");
        if (!h)
            h = strstr(s, "h=\"");
        if (h) {
            long v = strtol(h + 3, NULL, 10);
            if (v > c->xh_acked) {
                if (!g_room) /* a room's messages count when the room echoes them (on_received) */
                    on_acked(c, v - c->xh_acked);
                c->xh_acked = v;
            }
        }
        return;
    }
    if (n > 3 && !strncmp(s, "<r ", 3)) {
        char a[96];
        snprintf(a, sizeof a, "<a xmlns='urn:xmpp:sm:3' h='%ld'/>", c->xhandled);
        x_puts(c, a);
        return;
    }
    c->xhandled++;
    if (n > 8 && !strncmp(s, "<message", 8)) {
        const char *b = strstr(s, "<body>");
        if (!b || (size_t)(b - s) + 6 + 2 * sizeof(struct stamp) > n)
            return;
        uint8_t stamp[sizeof(struct stamp)];
        size_t got = 0;
        if (sodium_hex2bin(stamp, sizeof stamp, b + 6, 2 * sizeof stamp, NULL, &got, NULL) == 0 && got == sizeof stamp)
            on_received(c, stamp, sizeof stamp);
    }
}

/* Splits the buffer into top-level stanzas (depth 1 = inside the stream). */
static void x_readable(struct client *c)
{
    int r;
    while ((r = x_fill(c, 0)) > 0) {
    }
    if (r < 0)
        c->fd = -1;
    /* the buffer starts at the first unfinished stanza (the rest was consumed last time) */
    size_t done = 0, start = 0;
    int depth = 1;
    for (size_t i = 0; i < c->xlen; i++) {
        if (c->xbuf[i] != '<')
            continue;
        char *gt = memchr(c->xbuf + i, '>', c->xlen - i);
        if (!gt)
            break;
        size_t end = (size_t)(gt - c->xbuf);
        if (c->xbuf[i + 1] == '/') {
            depth--;
            if (depth == 1) {
                x_stanza(c, c->xbuf + start, end + 1 - start);
                done = end + 1;
            }
        } else if (c->xbuf[i + 1] != '?') {
            if (depth == 1)
                start = i;
            if (c->xbuf[end - 1] == '/') {
                if (depth == 1) {
                    x_stanza(c, c->xbuf + start, end + 1 - start);
                    done = end + 1;
                }
            } else {
                depth++;
            }
        }
        i = end;
    }
    /* keep the unfinished stanza */
    memmove(c->xbuf, c->xbuf + done, c->xlen - done);
    c->xlen -= done;
}

/* W6: every member joins the MUC room g_room_muc (v[0] first: it creates the room and accepts
 * the default configuration, which unlocks it); joins are pipelined like logins. The join
 * presence (and the owner's configuration) count in the server's stream-management h. */
static void x_room_join(struct client **v, int n)
{
    char buf[512];
    for (int i = 0; i < n; i++) {
        struct client *c = v[i];
        int fl = fcntl(c->fd, F_GETFL);
        fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK);
        snprintf(buf, sizeof buf, "<presence to='%s@conference." XDOMAIN "/u%d'><x xmlns='http://jabber.org/protocol/muc'>"
                                  "<history maxstanzas='0'/></x></presence>", g_room_muc, c->idx);
        x_puts(c, buf);
        c->xh_acked--;
        if (i == 0) {
            x_expect(c, "code='110'", "type='error'");
            x_expect(c, "</presence>", NULL); /* the rest of that stanza: the parser starts after it */
            snprintf(buf, sizeof buf, "<iq type='set' id='w6cfg' to='%s@conference." XDOMAIN "'><query xmlns="
                                      "'http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/>"
                                      "</query></iq>", g_room_muc);
            x_puts(c, buf);
            c->xh_acked--;
            x_expect(c, "id='w6cfg'", NULL);
        }
    }
    for (int i = 1; i < n; i++) {
        x_expect(v[i], "code='110'", "type='error'");
        x_expect(v[i], "</presence>", NULL);
    }
    for (int i = 0; i < n; i++)
        fcntl(v[i]->fd, F_SETFL, fcntl(v[i]->fd, F_GETFL) | O_NONBLOCK);
}

/* ---------------------------------------- dispatch ---------------------------------------- */

enum sys { SYS_HUSH, SYS_MQTT, SYS_XMPP };
static enum sys g_sys;

static struct client *client_new(int idx, int to)
{
    struct client *c = calloc(1, sizeof *c);
    c->idx = idx;
    c->to = to;
    c->fd = -1;
    if (g_sys == SYS_HUSH)
        hush_init_client(c);
    return c;
}

/* First connection of each user: registers where the system needs it. Receivers subscribe
 * (MQTT) or send presence (XMPP). */
static void connect_group(struct client **v, int n, int first_time, int receivers)
{
    int subscribe = receivers && first_time; /* MQTT: the persistent subscription is made once */
    if (o_users_exist)
        first_time = 0;
    if (g_sys == SYS_HUSH) {
        hush_connect_many(v, n, first_time);
    } else if (g_sys == SYS_MQTT) {
        mq_connect_many(v, n, subscribe);
    } else {
        if (first_time)
            x_register_many(v, n);
        x_login_many(v, n, receivers);
    }
}

static void disconnect(struct client *c)
{
    if (g_sys == SYS_HUSH) {
        hdev_close_all(&c->dev, 1);
    } else if (g_sys == SYS_MQTT) {
        mosquitto_disconnect(c->mq);
        mq_pump(c);
    } else {
        x_puts(c, "</stream:stream>");
        close(c->fd);
    }
    c->fd = -1;
}

/* A dropped connection (the server was killed): reconnect later. */
static void abandon(struct client *c)
{
    if (g_sys == SYS_HUSH) {
        wsc_abort(c->dev.ws);
        c->dev.ws = NULL;
    } else if (g_sys == SYS_MQTT) {
        mosquitto_destroy(c->mq); /* in-flight messages are dropped, as for the others */
        c->mq = NULL;
    } else if (c->fd >= 0) {
        close(c->fd);
    }
    c->fd = -1;
    c->outstanding = 0; /* whatever was in flight is not counted as acknowledged */
    c->fhead = c->ftail = 0;
}

static void send_one(struct client *c, double sched)
{
    uint8_t p[PAYLOAD_MAX];
    uint32_t seq = c->seq + 1;
    size_t n = make_payload(p, sched, (uint32_t)c->idx, seq);
    if (c->fifo) {
        if (c->ftail - c->fhead >= c->fcap)
            die("w3: more in flight than the window");
        c->fifo[c->ftail++ % c->fcap] = seq;
    }
    if (g_sys == SYS_HUSH)
        hush_send(c, p, n);
    else if (g_sys == SYS_MQTT)
        mq_send(c, p, n);
    else
        x_send(c, p, n);
    c->sent++;
    c->outstanding++;
}

static void readable(struct client *c)
{
    if (g_sys == SYS_HUSH)
        hush_readable(c);
    else if (g_sys == SYS_MQTT)
        mq_pump(c);
    else
        x_readable(c);
}

/* ------------------------------------------------------------------------------------------ */
/* accounting */

static long g_acked, g_received;
static double g_measure_from = 1e300, g_measure_to = 1e300;
static long g_acked_in_window, g_received_in_window;
/* w3: which (sender, seq) were acknowledged / received: bitmaps */
static uint8_t *g_ackmap, *g_recvmap;
static long g_dups;
static uint32_t g_per_sender_cap;

static void on_acked(struct client *c, long n)
{
    c->acked += n;
    c->outstanding -= n;
    if (c->outstanding < 0)
        c->outstanding = 0;
    g_acked += n;
    double t = now();
    if (t >= g_measure_from && t < g_measure_to)
        g_acked_in_window += n;
    if (g_ackmap && c->fifo) {
        for (long k = 0; k < n && c->fhead < c->ftail; k++) {
            uint32_t seq = c->fifo[c->fhead++ % c->fcap];
            if (seq < g_per_sender_cap)
                g_ackmap[(size_t)c->idx * g_per_sender_cap + seq] = 1;
        }
    }
}

/* w6: deliveries counted per message, so the time until its last member got it is known */
#define W6_SLOTS 65536
static struct w6slot {
    uint32_t seq;
    uint32_t count;
} *g_w6;
static int g_w6_senders, g_w6_target;
static double *g_lat_last;
static size_t g_nlat_last, g_caplat_last;

static void w6_note(uint32_t sender, uint32_t seq, double sent, double t)
{
    if (!g_w6 || sender >= (uint32_t)g_w6_senders)
        return;
    struct w6slot *sl = &g_w6[(size_t)sender * W6_SLOTS + seq % W6_SLOTS];
    if (sl->seq != seq) {
        sl->seq = seq;
        sl->count = 0;
    }
    if (++sl->count != (uint32_t)g_w6_target || sent < g_measure_from || sent >= g_measure_to)
        return;
    if (g_nlat_last == g_caplat_last) {
        g_caplat_last = g_caplat_last ? g_caplat_last * 2 : 65536;
        double *grown = realloc(g_lat_last, g_caplat_last * sizeof *g_lat_last);
        if (!grown)
            die("out of memory");
        g_lat_last = grown;
    }
    g_lat_last[g_nlat_last++] = t - sent;
}

static void on_received(struct client *c, const uint8_t *payload, size_t len)
{
    if (len < sizeof(struct stamp))
        return;
    struct stamp s;
    memcpy(&s, payload, sizeof s);
    double t = now();
    if (g_room && c->idx < g_w6_senders) {
        /* a writer's own message, echoed by the MUC room to all its occupants: for XMPP, what
         * says the room took it and sent it on (stream management's ack only says the server
         * read it, and the room's fan-out would fall ever further behind a window of those) */
        if (s.sender == (uint32_t)c->idx)
            on_acked(c, 1);
        return;
    }
    c->received++;
    g_received++;
    if (g_recvmap && s.sender < (uint32_t)g_nclients && s.seq < g_per_sender_cap) {
        size_t at = (size_t)s.sender * g_per_sender_cap + s.seq;
        if (g_recvmap[at])
            g_dups++;
        g_recvmap[at] = 1;
    }
    double sent = (double)s.t_ns / 1e9;
    if (sent >= g_measure_from && sent < g_measure_to) {
        g_received_in_window++;
        lat_add(t - sent);
    }
    if (g_room)
        w6_note(s.sender, s.seq, sent, t);
}

/* w4: when each user's login went out, and the presence notifications seen */
static double *g_login_at;
static int g_nusers;
static long g_presence_online, g_presence_total;

static void on_presence(struct client *c, const char *user, int online)
{
    g_presence_total++;
    if (!online || !g_login_at || strncmp(user, "user", 4) != 0)
        return;
    int idx = atoi(user + 4);
    if (idx < 0 || idx >= g_nusers || g_login_at[idx] <= 0)
        return;
    /* a change: the user logged in after this follower subscribed (not the snapshot a new
     * subscription gets) */
    if (g_login_at[idx] <= g_login_at[c->idx])
        return;
    g_presence_online++;
    double t = now();
    if (t >= g_measure_from && t < g_measure_to)
        lat_add(t - g_login_at[idx]);
}

/* One round of the event loop over the given clients: waits up to timeout for input. */
static void pump(struct client **v, int n, int timeout_ms)
{
    static struct pollfd *pf;
    static int cap;
    if (cap < n) {
        struct pollfd *np = realloc(pf, (size_t)n * sizeof *pf);
        if (!np)
            die("out of memory for %d poll entries", n);
        pf = np;
        cap = n;
    }
    int m = 0;
    for (int i = 0; i < n; i++) {
        pf[m].fd = v[i]->fd;
        pf[m].events = POLLIN;
        if (g_sys == SYS_MQTT && v[i]->mq && mosquitto_want_write(v[i]->mq))
            pf[m].events |= POLLOUT;
        pf[m].revents = 0;
        m++;
    }
    if (poll(pf, (nfds_t)m, timeout_ms) < 0 && errno != EINTR)
        die("poll: %s", strerror(errno));
    /* libmosquitto and the WebSocket client may hold buffered input: read them every round */
    for (int i = 0; i < n; i++)
        if (v[i]->fd >= 0 && (pf[i].revents || g_sys == SYS_HUSH))
            readable(v[i]);
}

static void raise_fd_limit(void)
{
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
}

/* ------------------------------------------------------------------------------------------ */
/* scenarios */

static long rss_kb(void)
{
    return o_server_pid ? bench_rss_kb(o_server_pid) : -1;
}

/* W1 for MQTT: libmosquitto keeps a socket pair per client besides the connection (3 fds each,
 * so one process could hold only ~6,600 under a 20,000-fd limit); idle connections need nothing
 * but the handshake, so W1 speaks it directly: CONNECT (MQTT 3.1.1, persistent session,
 * keepalive 600 s) and wait for CONNACK, pipelined like the others. */
static void mq_raw_connect_many(struct client **v, int n)
{
    for (int i = 0; i < n; i++) {
        char id[32];
        int idl = snprintf(id, sizeof id, "w1-%d", v[i]->idx);
        uint8_t pkt[64];
        size_t k = 0;
        int rem = 10 + 2 + idl;
        pkt[k++] = 0x10;
        pkt[k++] = (uint8_t)rem;
        const uint8_t vh[10] = { 0, 4, 'M', 'Q', 'T', 'T', 4, 0x00, 600 >> 8, 600 & 0xff };
        memcpy(pkt + k, vh, sizeof vh);
        k += sizeof vh;
        pkt[k++] = 0;
        pkt[k++] = (uint8_t)idl;
        memcpy(pkt + k, id, (size_t)idl);
        k += (size_t)idl;
        v[i]->fd = tcp_connect_from(v[i]->idx);
        if (write(v[i]->fd, pkt, k) != (ssize_t)k)
            die("mqtt: write CONNECT");
    }
    for (int i = 0; i < n; i++) {
        uint8_t ack[4];
        size_t got = 0;
        while (got < sizeof ack) {
            struct pollfd p = { v[i]->fd, POLLIN, 0 };
            if (poll(&p, 1, 30000) <= 0)
                die("mqtt: no CONNACK");
            ssize_t r = read(v[i]->fd, ack + got, sizeof ack - got);
            if (r <= 0)
                die("mqtt: connection closed before CONNACK");
            got += (size_t)r;
        }
        if (ack[0] != 0x20 || ack[3] != 0)
            die("mqtt: CONNACK refused (%d)", ack[3]);
    }
}

static void scenario_w1(void)
{
    int n = o_conns;
    struct client **v = calloc((size_t)n, sizeof *v);
    for (int i = 0; i < n; i++)
        v[i] = client_new(i, -1);
    /* logins are pipelined in groups; ejabberd is fastest with small groups (50: 1,129/s, 200:
     * 135/s measured), the others with large ones: each gets its best */
    int chunk = getenv("BENCH_CHUNK") ? atoi(getenv("BENCH_CHUNK")) : g_sys == SYS_XMPP ? 50 : 1000;
    if (g_sys != SYS_MQTT && !o_users_exist) {
        /* accounts first (not timed: registration is not what W1 measures), then log in */
        for (int i = 0; i < n; i += chunk) {
            int m = i + chunk <= n ? chunk : n - i;
            connect_group(v + i, m, 1, 0);
            for (int k = 0; k < m; k++)
                disconnect(v[i + k]);
        }
        o_users_exist = 1;
        g_src_base += 120;
    }
    long rss0 = rss_kb(), rss_half = -1;
    /* RSS is also read when half the connections are in: the second half's growth per connection
     * is the marginal cost. The whole-run figure is flattered at small sizes, because memory the
     * server freed after the (untimed) registrations is reused by the first logins */
    int half = (n / 2 / chunk) * chunk;
    /* CPU over the timed logins, the server's and the load generator's: which of them limits */
    double srv0 = o_server_pid ? bench_cpu_s(o_server_pid) : -1, lg0 = bench_cpu_s(0);
    double t0 = now();
    for (int i = 0; i < n; i += chunk) {
        int m = i + chunk <= n ? chunk : n - i;
        if (i == half && half > 0)
            rss_half = rss_kb();
        if (g_sys == SYS_MQTT)
            mq_raw_connect_many(v + i, m);
        else
            connect_group(v + i, m, 1, 0);
    }
    double dt = now() - t0;
    double srv1 = o_server_pid ? bench_cpu_s(o_server_pid) : -1, lg1 = bench_cpu_s(0);
    double srv_pct = srv0 >= 0 && srv1 >= 0 ? (srv1 - srv0) * 100.0 / dt : NAN;
    double lg_pct = (lg1 - lg0) * 100.0 / dt;
    /* let the server settle, then measure */
    for (int k = 0; k < 20; k++)
        pump(v, n, 50);
    long rss1 = rss_kb();
    double per = rss1 > 0 && rss0 > 0 ? (double)(rss1 - rss0) / n : NAN;
    double marginal = rss1 > 0 && rss_half > 0 ? (double)(rss1 - rss_half) / (n - half) : NAN;
    printf("%-5s w1: %d idle authenticated connections, connect+login rate %.0f/s, server RSS %ld -> %ld KiB (%.1f KiB per connection; %.1f for the second half)\n",
           o_system, n, n / dt, rss0, rss1, per, marginal);
    printf("%-5s     logins: server CPU %.0f %% (%.0f us per login), load generator CPU %.0f %%\n", o_system, srv_pct,
           srv0 >= 0 ? (srv1 - srv0) * 1e6 / n : NAN, lg_pct);
    json_result("\"conns\":%d,\"connect_per_s\":%.1f,\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,\"kib_per_conn\":%.2f,"
                "\"kib_per_conn_second_half\":%.2f,\"server_cpu_pct\":%.1f,\"lg_cpu_pct\":%.1f",
                n, n / dt, rss0, rss1, per, marginal, srv_pct, lg_pct);
}

/* w2 / w2open: P senders -> P receivers, all online */
static void scenario_w2(int open_loop)
{
    int p = o_pairs;
    struct client **snd = calloc((size_t)p, sizeof *snd), **rcv = calloc((size_t)p, sizeof *rcv);
    struct client **all = calloc((size_t)2 * p, sizeof *all);
    for (int i = 0; i < p; i++) {
        rcv[i] = client_new(i, -1);
        snd[i] = client_new(p + i, i);
        all[i] = rcv[i];
        all[p + i] = snd[i];
    }
    connect_group(rcv, p, 1, 1);
    connect_group(snd, p, 1, 0);
    /* drain anything queued at connect (QueueEmpty, presence...) */
    for (int k = 0; k < 10; k++)
        pump(all, 2 * p, 20);
    double t0 = now(), warm = 1.0;
    g_measure_from = t0 + warm;
    g_measure_to = t0 + warm + o_duration;
    double interval = open_loop ? (double)p / o_rate : 0;
    for (int i = 0; i < p; i++)
        snd[i]->next_send = t0 + (open_loop ? interval * i / p : 0);
    long overload = 0;
    /* CPU time over the measured window: the server's (from /proc, when its pid is given) and the
     * load generator's own, so a figure per message does not depend on the neighbours and a load
     * generator at its limit shows */
    double srv_cpu0 = -1, lg_cpu0 = -1, srv_cpu1 = -1, lg_cpu1 = -1;
    for (;;) {
        double t = now();
        if (lg_cpu0 < 0 && t >= g_measure_from) {
            srv_cpu0 = o_server_pid ? bench_cpu_s(o_server_pid) : -1;
            lg_cpu0 = bench_cpu_s(0);
        }
        if (t >= g_measure_to)
            break;
        double next = t + 0.01;
        for (int i = 0; i < p; i++) {
            struct client *c = snd[i];
            if (open_loop) {
                while (c->next_send <= t) {
                    if (c->outstanding < 100000)
                        send_one(c, c->next_send);
                    else
                        overload++;
                    c->next_send += interval;
                }
                if (c->next_send < next)
                    next = c->next_send;
            } else {
                while (c->outstanding < o_window)
                    send_one(c, now());
            }
        }
        int wait_ms = open_loop ? (int)((next - now()) * 1000) : 5;
        pump(all, 2 * p, wait_ms < 0 ? 0 : wait_ms);
    }
    srv_cpu1 = o_server_pid ? bench_cpu_s(o_server_pid) : -1;
    lg_cpu1 = bench_cpu_s(0);
    /* let the last messages arrive (they count for latency only if sent in the window) */
    double tend = now();
    while (now() - tend < 1.0)
        pump(all, 2 * p, 10);
    double acked_rate = (double)g_acked_in_window / o_duration;
    double recv_rate = (double)g_received_in_window / o_duration;
    double cpu_us = srv_cpu0 >= 0 && srv_cpu1 >= 0 && g_acked_in_window > 0
                        ? (srv_cpu1 - srv_cpu0) * 1e6 / (double)g_acked_in_window
                        : NAN;
    double srv_pct = srv_cpu0 >= 0 && srv_cpu1 >= 0 ? (srv_cpu1 - srv_cpu0) * 100.0 / o_duration : NAN;
    double lg_pct = lg_cpu0 >= 0 ? (lg_cpu1 - lg_cpu0) * 100.0 / o_duration : NAN;
    if (open_loop)
        printf("%-5s w2 at %7.0f msg/s offered: acked %7.0f/s, delivered %7.0f/s, latency p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms%s\n",
               o_system, o_rate, acked_rate, recv_rate, lat_q(0.5), lat_q(0.99), lat_q(0.999), overload ? " (OVERLOADED)" : "");
    else
        printf("%-5s w2 max: %d pairs x %d in flight, %d-byte payloads: acked %.0f msg/s, delivered %.0f/s, latency p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
               o_system, p, o_window, o_size, acked_rate, recv_rate, lat_q(0.5), lat_q(0.99), lat_q(0.999));
    printf("%-5s       server CPU %.0f %% (%.1f us per acked message), load generator CPU %.0f %%\n", o_system, srv_pct,
           cpu_us, lg_pct);
    json_result("\"offered_per_s\":%.1f,\"acked_per_s\":%.1f,\"delivered_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
                "\"p999_ms\":%.3f,\"pairs\":%d,\"window\":%d,\"size\":%d,\"overloaded\":%ld,"
                "\"server_cpu_pct\":%.1f,\"cpu_us_per_msg\":%.2f,\"lg_cpu_pct\":%.1f",
                open_loop ? o_rate : 0.0, acked_rate, recv_rate, lat_q(0.5), lat_q(0.99), lat_q(0.999), p, o_window, o_size,
                overload, srv_pct, cpu_us, lg_pct);
    for (int i = 0; i < 2 * p; i++)
        disconnect(all[i]);
}

/* The relay's bytes on disk (pages) holding stored mail: the mailbox and payloads tables and
 * their indexes, as SQLite's dbstat counts them (what the relay has committed). */
static long relay_mail_bytes(void)
{
    sqlite3 *db = NULL;
    long v = -1;
    if (sqlite3_open_v2(o_relay_db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_busy_timeout(db, 5000);
        sqlite3_stmt *q = NULL;
        if (sqlite3_prepare_v2(db, "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN "
                                   "(SELECT name FROM sqlite_master WHERE tbl_name IN ('mailbox', 'payloads'))",
                               -1, &q, NULL) == SQLITE_OK &&
            sqlite3_step(q) == SQLITE_ROW)
            v = (long)sqlite3_column_int64(q, 0);
        sqlite3_finalize(q);
    }
    sqlite3_close(db);
    return v;
}

/* w6: a room of --members; --senders of them write to it, the others receive. */
static void scenario_w6(void)
{
    int m = o_members, ns = o_senders;
    if (m < 2 || ns < 1 || ns >= m || m > 5000)
        die("w6: --members 2..5000, --senders 1..members-1");
    int base = 50000 + 10 * m; /* users of their own, per room size */
    struct client **all = calloc((size_t)m, sizeof *all);
    for (int i = 0; i < m; i++)
        all[i] = client_new(base + i, -1);
    struct client **snd = all, **rcv = all + ns;
    int nr = m - ns;
    g_room = 1;
    snprintf(g_room_topic, sizeof g_room_topic, "room/%d", base);
    snprintf(g_room_muc, sizeof g_room_muc, "room%d", base);
    g_room_names = calloc((size_t)nr, sizeof *g_room_names);
    for (int i = 0; i < nr; i++) {
        g_room_names[i] = malloc(16);
        hush_user_name(g_room_names[i], 16, rcv[i]->idx);
    }
    g_room_n = nr;
    g_w6_senders = ns;
    g_w6_target = nr;
    g_w6 = calloc((size_t)ns * W6_SLOTS, sizeof *g_w6);
    g_nclients = m;
    for (int i = 0; i < ns; i++) /* the stamp's sender number is the sender's place, not its user */
        snd[i]->idx = i, snd[i]->seq = 0;
    connect_group(rcv, nr, 1, 1);
    for (int i = 0; i < ns; i++)
        snd[i]->idx = base + i;
    connect_group(snd, ns, 1, 0);
    if (g_sys == SYS_XMPP)
        x_room_join(all, m); /* nicknames u<user>: before the senders take their places */
    for (int i = 0; i < ns; i++)
        snd[i]->idx = i;
    for (int k = 0; k < 10; k++)
        pump(all, m, 20);
    double t0 = now();
    g_measure_from = t0 + 1.0;
    g_measure_to = g_measure_from + o_duration;
    double srv_cpu0 = -1, srv_cpu1 = -1, lg_cpu0 = -1, lg_cpu1 = -1;
    for (;;) {
        double t = now();
        if (lg_cpu0 < 0 && t >= g_measure_from) {
            srv_cpu0 = o_server_pid ? bench_cpu_s(o_server_pid) : -1;
            lg_cpu0 = bench_cpu_s(0);
        }
        if (t >= g_measure_to)
            break;
        for (int i = 0; i < ns; i++)
            while (snd[i]->outstanding < o_window)
                send_one(snd[i], now());
        pump(all, m, 5);
    }
    srv_cpu1 = o_server_pid ? bench_cpu_s(o_server_pid) : -1;
    lg_cpu1 = bench_cpu_s(0);
    double tend = now();
    while (now() - tend < 1.0)
        pump(all, m, 10);
    double in_rate = (double)g_acked_in_window / o_duration;
    double out_rate = (double)g_received_in_window / o_duration;
    double cpu_us = srv_cpu0 >= 0 && srv_cpu1 >= 0 && g_received_in_window > 0
                        ? (srv_cpu1 - srv_cpu0) * 1e6 / (double)g_received_in_window
                        : NAN;
    double lg_pct = lg_cpu0 >= 0 ? (lg_cpu1 - lg_cpu0) * 100.0 / o_duration : NAN;
    double last50 = g_nlat_last ? bench_quantile(g_lat_last, g_nlat_last, 0.5) * 1000 : NAN;
    double last99 = g_nlat_last ? bench_quantile(g_lat_last, g_nlat_last, 0.99) * 1000 : NAN;
    /* Hush: what one room message costs the relay's disk while its members are offline */
    double stored = NAN;
    if (g_sys == SYS_HUSH && o_relay_db) {
        for (int i = 0; i < nr; i++)
            disconnect(rcv[i]);
        enum { K = 200 };
        long before = relay_mail_bytes();
        long acked0 = g_acked;
        for (int k = 0; k < K; k++) {
            while (snd[0]->outstanding >= o_window)
                pump(snd, 1, 10);
            send_one(snd[0], now());
        }
        while (g_acked - acked0 < K)
            pump(snd, 1, 10);
        long after = relay_mail_bytes();
        if (before >= 0 && after >= 0)
            stored = (double)(after - before) / K;
        connect_group(rcv, nr, 0, 1); /* drain them, so nothing is left for the next round */
        long want = g_received + (long)nr * K;
        double td = now();
        while (g_received < want && now() - td < 60)
            pump(rcv, nr, 10);
    }
    printf("%-5s w6 room of %d (%d writing): %.0f msg/s into the room, %.0f deliveries/s, latency p50 %.2f ms, "
           "p99 %.2f ms; to the last member p50 %.2f ms, p99 %.2f ms; server CPU %.1f us per delivery, load "
           "generator CPU %.0f %%",
           o_system, m, ns, in_rate, out_rate, lat_q(0.5), lat_q(0.99), last50, last99, cpu_us, lg_pct);
    if (!isnan(stored))
        printf("; %.0f bytes on disk per room message for %d offline members", stored, nr);
    printf("\n");
    json_result("\"members\":%d,\"senders\":%d,\"msgs_per_s\":%.1f,\"deliveries_per_s\":%.1f,\"p50_ms\":%.3f,"
                "\"p99_ms\":%.3f,\"last_p50_ms\":%.3f,\"last_p99_ms\":%.3f,\"cpu_us_per_delivery\":%.2f,"
                "\"lg_cpu_pct\":%.1f,\"stored_bytes_per_msg\":%.1f",
                m, ns, in_rate, out_rate, lat_q(0.5), lat_q(0.99), last50, last99, cpu_us, lg_pct, stored);
    for (int i = 0; i < m; i++)
        if (all[i]->fd >= 0)
            disconnect(all[i]);
}

/* The contacts of user i: its 18 neighbours i-9..i-1, i+1..i+9 (both allowed and followed, so
 * every pair sees each other). */
static void hush_names_request(struct client *c, int subscribe, int users)
{
    char names[18][16];
    char *ptrs[18];
    int n = 0;
    for (int d = -9; d <= 9; d++) {
        if (d == 0)
            continue;
        snprintf(names[n], sizeof names[n], "user%d", ((c->idx + d) % users + users) % users);
        ptrs[n] = names[n];
        n++;
    }
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = c->dev.next_id++;
    Hush__SetPresenceAllowRequest a = HUSH__SET_PRESENCE_ALLOW_REQUEST__INIT;
    Hush__SubscribePresenceRequest sub = HUSH__SUBSCRIBE_PRESENCE_REQUEST__INIT;
    if (subscribe) {
        sub.usernames = ptrs;
        sub.n_usernames = (size_t)n;
        f.msg_case = HUSH__FRAME__MSG_SUBSCRIBE_PRESENCE;
        f.subscribe_presence = &sub;
    } else {
        a.usernames = ptrs;
        a.n_usernames = (size_t)n;
        f.msg_case = HUSH__FRAME__MSG_SET_PRESENCE_ALLOW;
        f.set_presence_allow = &a;
    }
    hdev_send_frame(&c->dev, &f);
}

/* w4 (Hush only): N users, each allowing and following its 18 neighbours, log in at a fixed rate;
 * every login must reach the online followers as a PresenceUpdate. */
static void scenario_w4(void)
{
    if (g_sys != SYS_HUSH)
        die("w4 is measured for Hush only (MQTT has no presence; XMPP presence needs roster subscriptions)");
    int n = o_conns, contacts = 18, chunk = 50;
    double rate = o_rate > 0 ? o_rate : 500;
    struct client **v = calloc((size_t)n, sizeof *v);
    for (int i = 0; i < n; i++)
        v[i] = client_new(i, -1);
    g_nusers = n;
    g_login_at = calloc((size_t)n, sizeof *g_login_at);
    /* accounts and allow-lists first (persisted by the relay), untimed */
    for (int i = 0; i < n; i += 1000) {
        int m = i + 1000 <= n ? 1000 : n - i;
        connect_group(v + i, m, 1, 0);
        for (int k = 0; k < m; k++)
            hush_names_request(v[i + k], 0, n);
        for (int k = 0; k < m; k++)
            if (hdev_read_result(&v[i + k]->dev) != 0)
                die("w4: allow-list refused");
        for (int k = 0; k < m; k++)
            disconnect(v[i + k]);
    }
    o_users_exist = 1;
    /* logins at a fixed rate, in groups; everyone online follows its neighbours */
    double t0 = now();
    g_measure_from = t0;
    g_measure_to = 1e300;
    int online = 0;
    while (online < n) {
        double due = t0 + online / rate;
        while (now() < due)
            pump(v, online, (int)((due - now()) * 1000) + 1);
        int m = online + chunk <= n ? chunk : n - online;
        for (int k = 0; k < m; k++)
            g_login_at[online + k] = now();
        connect_group(v + online, m, 0, 0);
        for (int k = 0; k < m; k++)
            hush_names_request(v[online + k], 1, n);
        online += m;
    }
    double login_s = now() - t0;
    double tend = now();
    while (now() - tend < 2.0)
        pump(v, n, 20);
    g_measure_to = tend;
    /* each login is seen by the followers already online: about min(online, contacts) of them */
    double per_s = (double)g_presence_online / login_s;
    printf("%-5s w4: %d users x %d contacts logging in at %.0f/s: %ld online notifications (%.0f/s), "
           "latency login -> follower p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
           o_system, n, contacts, n / login_s, g_presence_online, per_s, lat_q(0.5), lat_q(0.99), lat_q(0.999));
    json_result("\"users\":%d,\"contacts\":%d,\"login_per_s\":%.1f,\"notifications\":%ld,\"notifications_per_s\":%.1f,"
                "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f",
                n, contacts, n / login_s, g_presence_online, per_s, lat_q(0.5), lat_q(0.99), lat_q(0.999));
}

static void run_kill(void)
{
    fprintf(stderr, "bench_compare: kill -9 and restart: %s\n", o_kill_cmd);
    if (system(o_kill_cmd) != 0)
        die("kill command failed");
}

/* w3: messages to offline recipients, then the drain */
static void scenario_w3(void)
{
    int p = o_pairs;
    long per = o_messages / p;
    g_per_sender_cap = (uint32_t)(per + 2L * o_window + 2);
    struct client **snd = calloc((size_t)p, sizeof *snd), **rcv = calloc((size_t)p, sizeof *rcv);
    for (int i = 0; i < p; i++) {
        rcv[i] = client_new(i, -1);
        snd[i] = client_new(p + i, i);
        snd[i]->fcap = o_window + 1;
        snd[i]->fifo = calloc((size_t)snd[i]->fcap, sizeof *snd[i]->fifo);
    }
    g_nclients = 2 * p;
    g_ackmap = calloc((size_t)(2 * p) * g_per_sender_cap, 1);
    g_recvmap = calloc((size_t)(2 * p) * g_per_sender_cap, 1);
    /* the recipients exist (and, for MQTT, hold persistent subscriptions), then go offline -
     * or, with --online, stay: messages are delivered while they are sent */
    struct client **all = calloc((size_t)2 * p, sizeof *all);
    for (int i = 0; i < p; i++) {
        all[i] = snd[i];
        all[p + i] = rcv[i];
    }
    connect_group(rcv, p, 1, 1);
    for (int k = 0; k < 10; k++)
        pump(rcv, p, 20);
    if (!o_online)
        for (int i = 0; i < p; i++)
            disconnect(rcv[i]);
    connect_group(snd, p, 1, 0);
    int killed = 0;
    double t0 = now();
    g_measure_from = 0;
    g_measure_to = 1e300;
    long target = per * p;
    for (;;) {
        long done = 0, live = 0;
        for (int i = 0; i < p; i++) {
            struct client *c = snd[i];
            if (c->fd < 0)
                continue;
            live++;
            while (c->outstanding < o_window && c->acked + c->outstanding < per)
                send_one(c, now());
            done += c->acked;
        }
        if (o_kill_cmd && !killed && g_acked >= target / 2) {
            killed = 1;
            run_kill();
            for (int i = 0; i < p; i++) {
                abandon(snd[i]);
                if (o_online)
                    abandon(rcv[i]);
            }
            /* reconnect and go on until each sender has `per` acknowledged; what was in flight at
             * the kill is not resent (new messages take new numbers) */
            if (o_online)
                connect_group(rcv, p, 0, 1);
            connect_group(snd, p, 0, 0);
            continue;
        }
        int all_sent = 1;
        for (int i = 0; i < p; i++)
            if (snd[i]->acked < per || snd[i]->outstanding > 0)
                all_sent = 0;
        if (all_sent || (live == 0 && !o_kill_cmd))
            break;
        if (o_online)
            pump(all, 2 * p, 5);
        else
            pump(snd, p, 5);
        if (now() - t0 > 600)
            die("w3: fill did not finish in 10 minutes");
    }
    double fill = now() - t0;
    long acked = g_acked;
    for (int i = 0; i < p; i++)
        disconnect(snd[i]);
    /* the recipients come back and drain (online: they get what is still on its way) */
    double t1 = now();
    if (!o_online)
        connect_group(rcv, p, 0, 1);
    double last = now();
    long want = 0;
    for (size_t k = 0; k < (size_t)(2 * p) * g_per_sender_cap; k++)
        want += g_ackmap[k];
    while (now() - last < 3.0) {
        long before = g_received;
        pump(rcv, p, 50);
        if (g_received != before)
            last = now();
        if (g_received >= want && g_received >= acked && now() - last > 0.5)
            break;
    }
    double drain = last - t1;
    long lost = 0;
    for (size_t k = 0; k < (size_t)(2 * p) * g_per_sender_cap; k++)
        if (g_ackmap[k] && !g_recvmap[k])
            lost++;
    printf("%-5s w3%s: %ld acked to %s recipients in %.2f s (%.0f/s); drained %ld in %.2f s (%.0f/s); "
           "lost %ld of the acked, %ld duplicates\n",
           o_system, o_kill_cmd ? " with kill -9" : "", acked, o_online ? "online" : "offline", fill, acked / fill,
           g_received, drain, g_received / drain, lost, g_dups);
    free(all);
    json_result("\"acked\":%ld,\"fill_s\":%.3f,\"fill_per_s\":%.1f,\"received\":%ld,\"drain_s\":%.3f,\"drain_per_s\":%.1f,"
                "\"lost\":%ld,\"dups\":%ld,\"killed\":%d",
                acked, fill, acked / fill, g_received, drain, g_received / drain, lost, g_dups, o_kill_cmd ? 1 : 0);
}

/* pushhang (Hush only): --conns devices register a Web Push endpoint (--push-url/<i>), go offline,
 * and get one message each: the relay then has that many wake-ups for a push service that, in
 * compare.sh, never answers. W2 runs against that relay next, to show that hanging pushes do not
 * hold up online traffic. */
static const char *o_push_url = NULL;

static void scenario_pushhang(void)
{
    if (g_sys != SYS_HUSH || !o_push_url)
        die("pushhang: Hush only, with --push-url");
    int n = o_conns;
    struct dev *v = calloc((size_t)n + 1, sizeof *v);
    if (!v)
        die("out of memory");
    for (int i = 0; i <= n; i++)
        hdev_init(&v[i], "ph", i);
    double t0 = now();
    hdev_connect_all(o_port, v, n + 1, !o_users_exist);
    /* any point on P-256 will do (nobody decrypts): the generator */
    static const uint8_t g[65] = { 0x04,
        0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2,
        0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96,
        0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16,
        0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5 };
    uint8_t auth[16];
    memset(auth, 7, sizeof auth);
    char url[600];
    for (int i = 0; i < n; i++) {
        snprintf(url, sizeof url, "%s/%d", o_push_url, i);
        Hush__PushRegisterRequest pr = HUSH__PUSH_REGISTER_REQUEST__INIT;
        pr.endpoint = url;
        pr.p256dh.data = (uint8_t *)g;
        pr.p256dh.len = sizeof g;
        pr.auth.data = auth;
        pr.auth.len = sizeof auth;
        Hush__Frame f = HUSH__FRAME__INIT;
        f.id = v[i].next_id++;
        f.msg_case = HUSH__FRAME__MSG_PUSH_REGISTER;
        f.push_register = &pr;
        hdev_send_frame(&v[i], &f);
    }
    for (int i = 0; i < n; i++)
        if (hdev_read_result(&v[i]) != 0)
            die("the relay refused a push endpoint (push_allow_http and push_allow_private on?)");
    hdev_close_all(v, n);
    uint8_t body[64];
    memset(body, 0x5a, sizeof body);
    for (int i = 0; i < n; i += 200) {
        int m = n - i < 200 ? n - i : 200;
        for (int k = 0; k < m; k++)
            hdev_send_msg(&v[n], v[i + k].user, (uint64_t)(i + k) + 1, body, sizeof body);
        for (int k = 0; k < m; k++)
            if (hdev_read_result(&v[n]) != 0)
                die("a send to an offline device failed");
    }
    hdev_close_all(&v[n], 1);
    printf("%-5s pushhang: %d offline devices with endpoints at %s, one message each (%.1f s)\n", o_system, n,
           o_push_url, now() - t0);
    free(v);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "system", required_argument, NULL, 's' },  { "scenario", required_argument, NULL, 'S' },
        { "port", required_argument, NULL, 'p' },    { "pairs", required_argument, NULL, 'P' },
        { "window", required_argument, NULL, 'w' },  { "size", required_argument, NULL, 'z' },
        { "conns", required_argument, NULL, 'c' },   { "duration", required_argument, NULL, 'd' },
        { "rate", required_argument, NULL, 'r' },    { "messages", required_argument, NULL, 'm' },
        { "json", required_argument, NULL, 'j' },    { "server-pid", required_argument, NULL, 'i' },
        { "kill-cmd", required_argument, NULL, 'k' }, { "label", required_argument, NULL, 'l' },
        { "users-exist", no_argument, NULL, 'u' },   { "online", no_argument, NULL, 'O' },
        { "push-url", required_argument, NULL, 'U' },
        { "members", required_argument, NULL, 'M' },  { "senders", required_argument, NULL, 'E' },
        { "relay-db", required_argument, NULL, 'D' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 's': o_system = optarg; break;
        case 'S': o_scenario = optarg; break;
        case 'p': o_port = atoi(optarg); break;
        case 'P': o_pairs = atoi(optarg); break;
        case 'w': o_window = atoi(optarg); break;
        case 'z': o_size = atoi(optarg); break;
        case 'c': o_conns = atoi(optarg); break;
        case 'd': o_duration = atof(optarg); break;
        case 'r': o_rate = atof(optarg); break;
        case 'm': o_messages = atol(optarg); break;
        case 'j': o_json = optarg; break;
        case 'i': o_server_pid = atoi(optarg); break;
        case 'k': o_kill_cmd = optarg; break;
        case 'l': o_label = optarg; break;
        case 'u': o_users_exist = 1; break;
        case 'O': o_online = 1; break;
        case 'U': o_push_url = optarg; break;
        case 'M': o_members = atoi(optarg); break;
        case 'E': o_senders = atoi(optarg); break;
        case 'D': o_relay_db = optarg; break;
        default: return 2;
        }
    }
    if (!o_port || o_size < (int)sizeof(struct stamp) || o_size > PAYLOAD_MAX || o_pairs < 1 || o_pairs > MAX_CLIENTS / 2)
        die("usage: see the comment at the top of bench/bench_compare.c");
    if (!strcmp(o_system, "hush") || !strcmp(o_system, "hushpush")) /* hushpush: hush beside hanging pushes */
        g_sys = SYS_HUSH;
    else if (!strcmp(o_system, "mqtt"))
        g_sys = SYS_MQTT;
    else if (!strcmp(o_system, "xmpp"))
        g_sys = SYS_XMPP;
    else
        die("unknown system %s", o_system);
    if (sodium_init() < 0)
        die("sodium");
    raise_fd_limit();
    /* runs that follow each other start from different source addresses: the ports an earlier run
     * left in TIME_WAIT stay out of the way */
    g_src_base = (int)(getpid() % 120);
    if (g_sys == SYS_HUSH)
        hdev_keys_init();
    if (g_sys == SYS_MQTT)
        mosquitto_lib_init();
    g_nclients = 2 * o_pairs;
    if (!strcmp(o_scenario, "w1"))
        scenario_w1();
    else if (!strcmp(o_scenario, "w2"))
        scenario_w2(0);
    else if (!strcmp(o_scenario, "w2open"))
        scenario_w2(1);
    else if (!strcmp(o_scenario, "w3"))
        scenario_w3();
    else if (!strcmp(o_scenario, "w4"))
        scenario_w4();
    else if (!strcmp(o_scenario, "pushhang"))
        scenario_pushhang();
    else if (!strcmp(o_scenario, "w6"))
        scenario_w6();
    else
        die("unknown scenario %s", o_scenario);
    return 0;
}
