/*
 * hush - the Hush command-line client.
 *
 *   hush init --relay URL --user NAME [--invite TOKEN]   create this device and register it
 *   hush send USER TEXT                                   send (queued if offline; retried later)
 *   hush listen [--raw]                                   print incoming messages until Ctrl-C
 *   hush chat USER                                        interactive: typing, receipts, presence
 *   hush history USER [--limit N]                         the conversation, newest last
 *   hush safety USER [--accept | --reject]                safety numbers; decide on a changed key
 *   hush presence [--allow USER...] [--watch USER...]     who may see you; whom you follow
 *   hush status                                           device, relay, connection, outbox
 *   hush info | bundle | demo                             local inspection and the offline demo
 *
 * Every command takes --db PATH (default: $HUSH_DB, else ~/.hush/hush.db). The database key is
 * PATH.key (32 random bytes, mode 0600), or, when HUSH_PASSPHRASE is set at init and afterwards,
 * derived from that passphrase with Argon2id and the salt in PATH.salt.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "hush.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hush <command> [--db PATH] [options]\n"
            "\n"
            "commands:\n"
            "  init --relay URL --user NAME [--device N] [--invite TOKEN]\n"
            "        Create this device (keys in a new sealed database) and register it on the relay.\n"
            "  send USER TEXT...     Send a message. Queued while offline and retried until the\n"
            "                        relay has it (waits up to --wait seconds, default 10).\n"
            "  listen [--raw]        Print incoming messages, receipts and presence until Ctrl-C.\n"
            "  chat USER             Talk with USER interactively (typing, receipts, presence).\n"
            "  history USER [--limit N]   Show the conversation with USER.\n"
            "  safety USER [--accept|--reject]   Safety numbers of USER's devices; accept or\n"
            "                        reject a changed identity key.\n"
            "  presence [--allow USER]... [--watch USER]...   Who may see your presence; whose\n"
            "                        presence to follow (--watch also prints updates until Ctrl-C).\n"
            "  status                Device, relay, connection state, outbox.\n"
            "  info | bundle         Local device details; this device's public bundle (base64).\n"
            "  demo [--dir DIR]      End-to-end demo between local parties, no relay needed.\n"
            "\n"
            "The database: --db PATH, else $HUSH_DB, else ~/.hush/hush.db. Its key is PATH.key\n"
            "(mode 0600), or Argon2id of $HUSH_PASSPHRASE with the salt in PATH.salt if that variable\n"
            "was set at init. `hush <command> --help` for one command. Exit: 0 ok, 1 error, 2 usage.\n");
}

/* For calls whose failure is already reported elsewhere (warn_unused_result ignores a cast). */
#define BEST_EFFORT(call) \
    do {                  \
        if (call) {       \
        }                 \
    } while (0)

static int die(const char *what, hush_err e)
{
    fprintf(stderr, "hush: %s: %s\n", what, hush_strerror(e));
    return 1;
}

static volatile sig_atomic_t g_stop;
static void on_signal(int s)
{
    (void)s;
    g_stop = 1;
}

static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* the database and its key */

static char g_db[PATH_MAX];

static int resolve_db(const char *opt)
{
    if (opt) {
        snprintf(g_db, sizeof g_db, "%s", opt);
        return 0;
    }
    const char *env = getenv("HUSH_DB");
    if (env && *env) {
        snprintf(g_db, sizeof g_db, "%s", env);
        return 0;
    }
    const char *home = getenv("HOME");
    if (!home || !*home) {
        fprintf(stderr, "hush: no --db, no $HUSH_DB and no $HOME\n");
        return 2;
    }
    char dir[PATH_MAX - 16];
    snprintf(dir, sizeof dir, "%s/.hush", home);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "hush: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    snprintf(g_db, sizeof g_db, "%s/hush.db", dir);
    return 0;
}

static int write_file_atomic(const char *path, const uint8_t *data, size_t len)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, data, len);
    if (n != (ssize_t)len || fsync(fd) != 0) {
        close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int read_exact(const char *path, uint8_t *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size != len) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    if (st.st_mode & 077)
        fprintf(stderr, "hush: warning: %s is readable by others (chmod 600 it)\n", path);
    ssize_t n = read(fd, buf, len);
    close(fd);
    return n == (ssize_t)len ? 0 : -1;
}

static int derive_key(const char *pass, const uint8_t salt[crypto_pwhash_SALTBYTES], uint8_t key[HUSH_DB_KEY_BYTES])
{
    return crypto_pwhash(key, HUSH_DB_KEY_BYTES, pass, strlen(pass), salt, crypto_pwhash_OPSLIMIT_MODERATE,
                         crypto_pwhash_MEMLIMIT_MODERATE, crypto_pwhash_ALG_ARGON2ID13);
}

/* Opens the database; with create, makes a new key (file or passphrase salt) first. */
static int open_db(int create, hush_client **out)
{
    char keypath[PATH_MAX + 8], saltpath[PATH_MAX + 8];
    snprintf(keypath, sizeof keypath, "%s.key", g_db);
    snprintf(saltpath, sizeof saltpath, "%s.salt", g_db);
    const char *pass = getenv("HUSH_PASSPHRASE");
    uint8_t key[HUSH_DB_KEY_BYTES];
    if (create) {
        if (access(g_db, F_OK) == 0 || access(keypath, F_OK) == 0 || access(saltpath, F_OK) == 0) {
            fprintf(stderr, "hush: %s (or its key) already exists; refusing to overwrite\n", g_db);
            return 1;
        }
        if (pass && *pass) {
            uint8_t salt[crypto_pwhash_SALTBYTES];
            randombytes_buf(salt, sizeof salt);
            if (write_file_atomic(saltpath, salt, sizeof salt) != 0 || derive_key(pass, salt, key) != 0) {
                fprintf(stderr, "hush: cannot set up the passphrase key: %s\n", strerror(errno));
                return 1;
            }
        } else {
            randombytes_buf(key, sizeof key);
            if (write_file_atomic(keypath, key, sizeof key) != 0) {
                fprintf(stderr, "hush: cannot write %s: %s\n", keypath, strerror(errno));
                return 1;
            }
        }
    } else if (access(saltpath, F_OK) == 0) {
        uint8_t salt[crypto_pwhash_SALTBYTES];
        if (!pass || !*pass) {
            fprintf(stderr, "hush: %s is protected by a passphrase: set HUSH_PASSPHRASE\n", g_db);
            return 1;
        }
        if (read_exact(saltpath, salt, sizeof salt) != 0 || derive_key(pass, salt, key) != 0) {
            fprintf(stderr, "hush: cannot derive the key from %s\n", saltpath);
            return 1;
        }
    } else if (read_exact(keypath, key, sizeof key) != 0) {
        if (access(g_db, F_OK) != 0)
            fprintf(stderr, "hush: no database at %s: run `hush init --relay URL --user NAME` first\n", g_db);
        else
            fprintf(stderr, "hush: cannot read key file %s: %s\n", keypath, strerror(errno));
        return 1;
    }
    hush_err e = hush_client_open(g_db, key, NULL, out);
    sodium_memzero(key, sizeof key);
    if (e == HUSH_ERR_DB_KEY)
        fprintf(stderr, "hush: %s: wrong key or passphrase\n", g_db);
    else if (e)
        return die(g_db, e);
    return e ? 1 : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* option parsing shared by the commands */

struct opts {
    const char *db, *relay, *user, *invite;
    uint32_t device;
    int raw, accept, reject, limit, wait_s;
    const char *allow[64], *watch[64];
    int nallow, nwatch;
    int help;
    int insecure;
};

static int parse(int argc, char **argv, struct opts *o, const char *cmd)
{
    static const struct option lo[] = {
        { "db", required_argument, NULL, 'd' },       { "relay", required_argument, NULL, 'r' },
        { "user", required_argument, NULL, 'u' },     { "invite", required_argument, NULL, 'i' },
        { "device", required_argument, NULL, 'n' },   { "raw", no_argument, NULL, 'R' },
        { "accept", no_argument, NULL, 'a' },         { "reject", no_argument, NULL, 'x' },
        { "limit", required_argument, NULL, 'l' },    { "wait", required_argument, NULL, 'w' },
        { "allow", required_argument, NULL, 'A' },    { "watch", required_argument, NULL, 'W' },
        { "insecure-tls", no_argument, NULL, 'k' },   { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    memset(o, 0, sizeof *o);
    o->device = 1;
    o->limit = 50;
    o->wait_s = 10;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "d:h", lo, NULL)) != -1) {
        char *end = NULL;
        switch (ch) {
        case 'd': o->db = optarg; break;
        case 'r': o->relay = optarg; break;
        case 'u': o->user = optarg; break;
        case 'i': o->invite = optarg; break;
        case 'n': {
            unsigned long v = strtoul(optarg, &end, 10);
            if (!end || *end || v == 0 || v > INT_MAX)
                goto bad;
            o->device = (uint32_t)v;
            break;
        }
        case 'R': o->raw = 1; break;
        case 'a': o->accept = 1; break;
        case 'x': o->reject = 1; break;
        case 'k': o->insecure = 1; break;
        case 'l':
            o->limit = (int)strtol(optarg, &end, 10);
            if (!end || *end || o->limit < 1 || o->limit > 500)
                goto bad;
            break;
        case 'w':
            o->wait_s = (int)strtol(optarg, &end, 10);
            if (!end || *end || o->wait_s < 0 || o->wait_s > 3600)
                goto bad;
            break;
        case 'A':
            if (o->nallow == 64)
                goto bad;
            o->allow[o->nallow++] = optarg;
            break;
        case 'W':
            if (o->nwatch == 64)
                goto bad;
            o->watch[o->nwatch++] = optarg;
            break;
        case 'h': o->help = 1; break;
        default: goto bad;
        }
    }
    if (o->help) {
        usage(stdout);
        return -1;
    }
    return resolve_db(o->db);
bad:
    fprintf(stderr, "hush %s: bad or unknown option (see hush --help)\n", cmd);
    return 2;
}

/* Parses the options and opens the existing database. 0: go on; -1: help was shown (exit 0);
 * otherwise the exit code. */
static int setup(int argc, char **argv, struct opts *o, const char *cmd, hush_client **c)
{
    int r = parse(argc, argv, o, cmd);
    if (r)
        return r;
    return open_db(0, c);
}

/* ---------------------------------------------------------------------------------------- */
/* printing what arrives */

static pthread_mutex_t g_out = PTHREAD_MUTEX_INITIALIZER;
static int g_raw;
static char g_peer_filter[HUSH_USERNAME_MAX + 1];
static hush_client *g_chat; /* in `chat`: what is shown is marked read */

static void stamp(char *buf, size_t cap, uint64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(buf, cap, "%H:%M:%S", &tm);
}

static void out_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out_line(const char *fmt, ...)
{
    pthread_mutex_lock(&g_out);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
    pthread_mutex_unlock(&g_out);
}

static void on_message(void *ctx, const hush_message *m)
{
    (void)ctx;
    if (g_peer_filter[0] && strcmp(m->sender, g_peer_filter) != 0) {
        out_line("\r(new message from %s: `hush chat %s`)\n", m->sender, m->sender);
        return;
    }
    if (g_raw) {
        char hex[33];
        sodium_bin2hex(hex, sizeof hex, m->message_id, 16);
        out_line("MSG %lld %s %s %.*s\n", (long long)m->local_id, m->sender, hex, (int)m->body_len, (const char *)m->body);
        return;
    }
    char ts[16];
    stamp(ts, sizeof ts, m->sent_at_ms);
    out_line("\r[%s] %s: %.*s\n", ts, m->sender, (int)m->body_len, (const char *)m->body);
    if (g_chat && m->kind == HUSH_KIND_TEXT)
        BEST_EFFORT(hush_mark_read(g_chat, m->local_id));
}

static void on_receipt(void *ctx, const char *peer, const uint8_t mid[16], hush_msg_state st)
{
    (void)ctx;
    static const char *names[] = { "queued", "sent", "delivered", "read" };
    char hex[9];
    sodium_bin2hex(hex, sizeof hex, mid, 4);
    if (st == HUSH_MSG_FAILED)
        out_line("\r(message %s to %s failed: no such user)\n", hex, peer);
    else if (g_raw)
        out_line("RECEIPT %s %s %s\n", peer, hex, names[st]);
    else if (st >= HUSH_MSG_DELIVERED)
        out_line("\r(%s: %s)\n", peer, names[st]);
}

static void on_typing(void *ctx, const char *peer, uint32_t dev, int typing)
{
    (void)ctx;
    (void)dev;
    if (g_raw)
        out_line("TYPING %s %d\n", peer, typing);
    else
        out_line("\r(%s %s)\n", peer, typing ? "is typing..." : "stopped typing");
}

static void on_presence(void *ctx, const char *user, int online, uint64_t last_seen)
{
    (void)ctx;
    char ts[16] = "never";
    if (last_seen)
        stamp(ts, sizeof ts, last_seen);
    if (g_raw)
        out_line("PRESENCE %s %s %llu\n", user, online ? "online" : "offline", (unsigned long long)last_seen);
    else
        out_line("\r(%s is %s%s%s)\n", user, online ? "online" : "offline", online ? "" : ", last seen ", online ? "" : ts);
}

static void on_identity(void *ctx, const char *peer, uint32_t dev, const char *old_sn, const char *new_sn)
{
    (void)ctx;
    out_line("\r!! %s's identity key changed (device %u). Messages from it wait for your decision.\n"
             "   old safety number: %s\n   new safety number: %s\n"
             "   Compare with %s in person, then: hush safety %s --accept   (or --reject)\n",
             peer, dev, old_sn, new_sn, peer, peer);
}

static void on_connection(void *ctx, hush_conn_state st, hush_err e)
{
    (void)ctx;
    if (g_raw)
        out_line("CONN %d\n", (int)st);
    else if (st == HUSH_CONN_OFFLINE)
        out_line("\r(offline: %s; reconnecting)\n", hush_strerror(e));
    else if (st == HUSH_CONN_FAILED)
        out_line("\r(connection failed for good: %s)\n", hush_strerror(e));
}

static void on_error(void *ctx, hush_err e, const char *detail)
{
    (void)ctx;
    if (e == HUSH_ERR_NETWORK)
        return; /* reported as a connection state */
    pthread_mutex_lock(&g_out);
    fprintf(stderr, "hush: %s (%s)\n", detail ? detail : "error", hush_strerror(e));
    pthread_mutex_unlock(&g_out);
}

static const hush_callbacks g_cb = { NULL, on_message, on_receipt, on_typing, on_presence, on_identity, on_connection,
                                     on_error };

static int start_net(hush_client *c, const struct opts *o)
{
    hush_net_opts no = { o->relay, o->invite, NULL, o->insecure };
    hush_err e = hush_net_start(c, &no, &g_cb);
    if (e == HUSH_ERR_INVALID_ARG)
        fprintf(stderr, "hush: no relay URL stored: run `hush init --relay ws://HOST:PORT --user NAME`\n");
    else if (e)
        return die("network", e);
    return e ? 1 : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* commands */

static int cmd_init(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "init");
    if (r)
        return r < 0 ? 0 : r;
    if (!o.relay || !o.user) {
        fprintf(stderr, "hush init: --relay URL and --user NAME are required\n");
        return 2;
    }
    hush_client *c = NULL;
    if ((r = open_db(1, &c)))
        return r;
    hush_err e = hush_device_create(c, o.user, o.device);
    if (e) {
        hush_client_close(c);
        return die("init", e == HUSH_ERR_INVALID_ARG ? HUSH_ERR_INVALID_ARG : e);
    }
    if ((r = start_net(c, &o))) {
        hush_client_close(c);
        return r;
    }
    e = hush_net_wait_online(c, 20000);
    hush_client_close(c);
    if (e) {
        fprintf(stderr, "hush init: registration on %s failed: %s\n", o.relay, hush_strerror(e));
        if (e == HUSH_ERR_USERNAME_TAKEN || e == HUSH_ERR_REGISTRATION_REFUSED) {
            fprintf(stderr, "(the local database %s was created; remove it and its key to start over)\n", g_db);
        }
        return 1;
    }
    printf("registered %s (device %u) on %s\ndatabase %s, key %s.%s\n", o.user, o.device, o.relay, g_db, g_db,
           getenv("HUSH_PASSPHRASE") ? "salt (passphrase)" : "key");
    return 0;
}

static int cmd_send(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "send");
    if (r)
        return r < 0 ? 0 : r;
    if (argc - optind < 2) {
        fprintf(stderr, "usage: hush send USER TEXT...\n");
        return 2;
    }
    const char *to = argv[optind];
    char text[HUSH_MAX_BODY + 1];
    size_t len = 0;
    for (int i = optind + 1; i < argc; i++) {
        int n = snprintf(text + len, sizeof text - len, "%s%s", i > optind + 1 ? " " : "", argv[i]);
        if (n < 0 || (size_t)n >= sizeof text - len) {
            fprintf(stderr, "hush send: text longer than %d bytes\n", HUSH_MAX_BODY);
            return 2;
        }
        len += (size_t)n;
    }
    hush_client *c = NULL;
    if ((r = open_db(0, &c)))
        return r;
    uint8_t mid[16];
    hush_err e = hush_send(c, to, (const uint8_t *)text, len, mid);
    if (e) {
        hush_client_close(c);
        return die("send", e);
    }
    if ((r = start_net(c, &o))) {
        hush_client_close(c);
        printf("queued (will be sent the next time hush connects)\n");
        return 0;
    }
    e = hush_net_flush(c, o.wait_s * 1000);
    hush_msg_state st = HUSH_MSG_QUEUED;
    if (hush_message_state(c, mid, &st) != HUSH_OK)
        st = HUSH_MSG_QUEUED;
    hush_client_close(c);
    if (st == HUSH_MSG_FAILED) {
        fprintf(stderr, "hush send: %s: no such user on the relay\n", to);
        return 1;
    }
    if (e == HUSH_OK)
        printf("sent to %s (the relay has it)\n", to);
    else
        printf("queued: %s; it will be sent the next time hush connects\n", hush_strerror(e));
    return 0;
}

static int run_until_signal(hush_client *c)
{
    catch_signals();
    while (!g_stop)
        poll(NULL, 0, 200);
    hush_client_close(c);
    return 0;
}

static int cmd_listen(int argc, char **argv)
{
    struct opts o;
    hush_client *c = NULL;
    int r = setup(argc, argv, &o, "listen", &c);
    if (r)
        return r < 0 ? 0 : r;
    g_raw = o.raw;
    if ((r = start_net(c, &o))) {
        hush_client_close(c);
        return r;
    }
    if (!g_raw)
        printf("listening as %s (Ctrl-C to stop)\n", g_db);
    fflush(stdout);
    return run_until_signal(c);
}

static int cmd_history(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "history");
    if (r)
        return r < 0 ? 0 : r;
    if (argc - optind != 1) {
        fprintf(stderr, "usage: hush history USER [--limit N]\n");
        return 2;
    }
    hush_client *c = NULL;
    if ((r = open_db(0, &c)))
        return r;
    hush_history_entry *h = NULL;
    size_t n = 0;
    hush_err e = hush_history_list(c, argv[optind], 0, o.limit, &h, &n);
    if (e) {
        hush_client_close(c);
        return die("history", e);
    }
    char me[HUSH_USERNAME_MAX + 1] = "me";
    if (hush_device_info(c, me, NULL, NULL) != HUSH_OK)
        snprintf(me, sizeof me, "me");
    static const char *names[] = { "queued", "sent", "delivered", "read" };
    for (size_t i = n; i-- > 0;) {
        char ts[16];
        stamp(ts, sizeof ts, h[i].outgoing ? h[i].sent_at_ms : h[i].received_at_ms);
        hush_msg_state st = HUSH_MSG_QUEUED;
        const char *mark = "";
        if (h[i].outgoing && hush_message_state(c, h[i].message_id, &st) == HUSH_OK)
            mark = st == HUSH_MSG_FAILED ? "failed" : names[st];
        printf("[%s] %s: %.*s%s%s%s\n", ts, h[i].outgoing ? me : h[i].peer, (int)h[i].body_len,
               (const char *)h[i].body, *mark ? "  (" : "", mark, *mark ? ")" : "");
    }
    if (n == 0)
        printf("(no messages with %s)\n", argv[optind]);
    hush_history_free(h, n);
    hush_client_close(c);
    return 0;
}

static int cmd_safety(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "safety");
    if (r)
        return r < 0 ? 0 : r;
    if (argc - optind != 1 || (o.accept && o.reject)) {
        fprintf(stderr, "usage: hush safety USER [--accept | --reject]\n");
        return 2;
    }
    const char *peer = argv[optind];
    hush_client *c = NULL;
    if ((r = open_db(0, &c)))
        return r;
    uint32_t devs[16];
    size_t n = 0;
    hush_err e = hush_peer_devices(c, peer, devs, 16, &n);
    if (!e && n == 0)
        printf("no keys known for %s yet: exchange a message first\n", peer);
    int changed = 0;
    for (size_t i = 0; !e && i < n; i++) {
        char sn[HUSH_SAFETY_NUMBER_LEN + 1], old_sn[HUSH_SAFETY_NUMBER_LEN + 1], new_sn[HUSH_SAFETY_NUMBER_LEN + 1];
        if (hush_identity_pending(c, peer, devs[i], old_sn, new_sn) == HUSH_OK) {
            changed = 1;
            printf("%s device %u: IDENTITY CHANGED\n  old: %s\n  new: %s\n", peer, devs[i], old_sn, new_sn);
            if (o.accept) {
                e = hush_identity_accept(c, peer, devs[i]);
                printf("  accepted: the new key is trusted; held messages will be shown\n");
            } else if (o.reject) {
                e = hush_identity_reject(c, peer, devs[i]);
                printf("  rejected: messages under the new key were dropped\n");
            }
        } else if (hush_safety_number(c, peer, devs[i], sn) == HUSH_OK) {
            printf("%s device %u: %.5s %.5s %.5s %.5s %.5s %.5s\n%*s %.5s %.5s %.5s %.5s %.5s %.5s\n", peer, devs[i], sn,
                   sn + 5, sn + 10, sn + 15, sn + 20, sn + 25, (int)strlen(peer) + 10, "", sn + 30, sn + 35, sn + 40,
                   sn + 45, sn + 50, sn + 55);
        }
    }
    if (!e && (o.accept || o.reject) && !changed)
        printf("no pending identity change for %s\n", peer);
    if (!e && changed && o.accept) {
        /* let the network thread decrypt what was held */
        if (start_net(c, &o) == 0)
            BEST_EFFORT(hush_net_flush(c, 3000));
    }
    hush_client_close(c);
    return e ? die("safety", e) : 0;
}

static int cmd_presence(int argc, char **argv)
{
    struct opts o;
    hush_client *c = NULL;
    int r = setup(argc, argv, &o, "presence", &c);
    if (r)
        return r < 0 ? 0 : r;
    hush_err e = HUSH_OK;
    if (o.nallow)
        e = hush_presence_allow(c, o.allow, (size_t)o.nallow);
    if (!e && o.nwatch)
        e = hush_presence_subscribe(c, o.watch, (size_t)o.nwatch);
    if (e) {
        hush_client_close(c);
        return die("presence", e);
    }
    if ((r = start_net(c, &o))) {
        hush_client_close(c);
        return r;
    }
    e = hush_net_wait_online(c, 10000);
    if (e) {
        hush_client_close(c);
        return die("presence", e);
    }
    if (o.nallow)
        printf("your presence is visible to %d user(s)\n", o.nallow);
    if (!o.nwatch) {
        usleep(300000); /* let the update reach the relay */
        hush_client_close(c);
        return 0;
    }
    printf("watching presence (Ctrl-C to stop)\n");
    fflush(stdout);
    return run_until_signal(c);
}

static int cmd_status(int argc, char **argv)
{
    struct opts o;
    hush_client *c = NULL;
    int r = setup(argc, argv, &o, "status", &c);
    if (r)
        return r < 0 ? 0 : r;
    char user[HUSH_USERNAME_MAX + 1];
    uint32_t dev = 0, outbox = 0, stock = 0;
    hush_err e = hush_device_info(c, user, &dev, NULL);
    if (!e)
        e = hush_outbox_count(c, &outbox);
    if (!e)
        e = hush_prekeys_remaining(c, &stock);
    if (e) {
        hush_client_close(c);
        return die("status", e);
    }
    printf("device:     %s (device %u)\ndatabase:   %s\noutbox:     %u message(s) waiting\nprekeys:    %u one-time keys left locally\n",
           user, dev, g_db, outbox, stock);
    if (start_net(c, &o) == 0) {
        e = hush_net_wait_online(c, 5000);
        printf("relay:      %s\n", e ? hush_strerror(e) : "online");
        if (!e && outbox)
            BEST_EFFORT(hush_net_flush(c, 5000));
    }
    hush_client_close(c);
    return 0;
}

/* chat: a line editor in raw mode so typing can be reported before Enter */
static struct termios g_saved_tty;
static int g_tty_raw;
static void tty_restore(void)
{
    if (g_tty_raw)
        tcsetattr(0, TCSANOW, &g_saved_tty);
    g_tty_raw = 0;
}

static int cmd_chat(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "chat");
    if (r)
        return r < 0 ? 0 : r;
    if (argc - optind != 1) {
        fprintf(stderr, "usage: hush chat USER\n");
        return 2;
    }
    const char *peer = argv[optind];
    snprintf(g_peer_filter, sizeof g_peer_filter, "%s", peer);
    hush_client *c = NULL;
    if ((r = open_db(0, &c)))
        return r;
    const char *who[1] = { peer };
    if (hush_presence_subscribe(c, who, 1) != HUSH_OK)
        fprintf(stderr, "hush chat: could not follow %s's presence\n", peer);
    g_chat = c;
    if ((r = start_net(c, &o))) {
        hush_client_close(c);
        return r;
    }
    /* recent history first */
    hush_history_entry *h = NULL;
    size_t n = 0;
    if (hush_history_list(c, peer, 0, 10, &h, &n) == HUSH_OK) {
        for (size_t i = n; i-- > 0;)
            printf("%s: %.*s\n", h[i].outgoing ? "me" : peer, (int)h[i].body_len, (const char *)h[i].body);
        for (size_t i = 0; i < n; i++)
            if (!h[i].outgoing && !h[i].read && hush_mark_read(c, h[i].local_id) != HUSH_OK)
                break;
        hush_history_free(h, n);
    }
    printf("chatting with %s: type and press Enter; Ctrl-D or Ctrl-C to quit\n", peer);
    fflush(stdout);
    catch_signals();
    int tty = isatty(0);
    if (tty && tcgetattr(0, &g_saved_tty) == 0) {
        struct termios t = g_saved_tty;
        t.c_lflag &= (tcflag_t) ~(ICANON | ECHO);
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        if (tcsetattr(0, TCSANOW, &t) == 0) {
            g_tty_raw = 1;
            atexit(tty_restore);
        }
    }
    char line[4096];
    size_t len = 0;
    int typing = 0;
    uint64_t last_key = 0;
    while (!g_stop) {
        struct pollfd pf = { 0, POLLIN, 0 };
        int pr = poll(&pf, 1, 500);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
        if (typing && now - last_key > 5000) {
            typing = 0;
            BEST_EFFORT(hush_typing(c, peer, 0));
        }
        if (pr <= 0)
            continue;
        char ch;
        ssize_t got = read(0, &ch, 1);
        if (got <= 0)
            break; /* EOF */
        if (ch == 4 && len == 0)
            break; /* Ctrl-D */
        if (ch == '\n' || ch == '\r') {
            if (g_tty_raw)
                out_line("\n");
            if (len) {
                hush_err e = hush_send(c, peer, (const uint8_t *)line, len, NULL);
                if (e)
                    fprintf(stderr, "hush chat: %s\n", hush_strerror(e));
                len = 0;
            }
            typing = 0;
            BEST_EFFORT(hush_typing(c, peer, 0));
            continue;
        }
        if (ch == 127 || ch == 8) {
            if (len) {
                len--;
                if (g_tty_raw)
                    out_line("\b \b");
            }
            continue;
        }
        if (len + 1 < sizeof line) {
            line[len++] = ch;
            if (g_tty_raw)
                out_line("%c", ch);
        }
        last_key = now;
        if (!typing) {
            typing = 1;
            BEST_EFFORT(hush_typing(c, peer, 1));
        }
    }
    tty_restore();
    BEST_EFFORT(hush_net_flush(c, 5000));
    g_chat = NULL;
    hush_client_close(c);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* local inspection */

static int cmd_info(int argc, char **argv)
{
    struct opts o;
    hush_client *c = NULL;
    int r = setup(argc, argv, &o, "info", &c);
    if (r)
        return r < 0 ? 0 : r;
    char user[HUSH_USERNAME_MAX + 1];
    uint32_t dev = 0, reg = 0, stock = 0;
    uint8_t auth[32];
    hush_err e = hush_device_info(c, user, &dev, &reg);
    if (!e)
        e = hush_prekeys_remaining(c, &stock);
    if (!e)
        e = hush_device_auth_key(c, auth);
    if (!e)
        e = hush_client_check(c);
    hush_client_close(c);
    if (e)
        return die("info", e);
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, auth, sizeof auth);
    printf("device:           %s/%u\nregistration id:  %u\none-time prekeys: %u\nauth key:         %s\n"
           "database:         %s (integrity check passed)\n",
           user, dev, reg, stock, hex, g_db);
    return 0;
}

static int cmd_bundle(int argc, char **argv)
{
    struct opts o;
    hush_client *c = NULL;
    int r = setup(argc, argv, &o, "bundle", &c);
    if (r)
        return r < 0 ? 0 : r;
    uint8_t *b = NULL;
    size_t len = 0;
    hush_err e = hush_bundle_export(c, &b, &len);
    hush_client_close(c);
    if (e)
        return die("bundle", e);
    size_t cap = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
    char *out = malloc(cap);
    if (!out) {
        hush_free(b);
        return die("bundle", HUSH_ERR_NOMEM);
    }
    sodium_bin2base64(out, cap, b, len, sodium_base64_VARIANT_ORIGINAL);
    printf("%s\n", out);
    free(out);
    hush_free(b);
    return 0;
}

struct party {
    const char *name;
    hush_client *c;
    char path[PATH_MAX];
};

static int demo_open(struct party *p, const char *dir)
{
    snprintf(p->path, sizeof p->path, "%s/%s.db", dir, p->name);
    uint8_t key[HUSH_DB_KEY_BYTES];
    randombytes_buf(key, sizeof key);
    hush_err e = hush_client_open(p->path, key, NULL, &p->c);
    sodium_memzero(key, sizeof key);
    if (!e)
        e = hush_device_create(p->c, p->name, 1);
    if (e)
        return die(p->name, e);
    return 0;
}

static int demo_handshake(struct party *from, struct party *to)
{
    uint8_t *b = NULL;
    size_t len = 0;
    hush_err e = hush_bundle_export(to->c, &b, &len);
    if (!e)
        e = hush_bundle_import(from->c, b, len, NULL, NULL);
    hush_free(b);
    if (e)
        return die("bundle exchange", e);
    printf("  %s fetched %s's key bundle (%zu bytes) and started a session\n", from->name, to->name, len);
    return 0;
}

static hush_err demo_send(struct party *from, struct party *to, const char *text, uint8_t **env, size_t *len)
{
    hush_err e = hush_encrypt(from->c, to->name, 1, (const uint8_t *)text, strlen(text), NULL, NULL, env, len);
    if (!e)
        printf("  %-5s -> %-5s  %-34s [%zu-byte envelope]\n", from->name, to->name, text, *len);
    return e;
}

static hush_err demo_recv(struct party *to, struct party *from, const uint8_t *env, size_t len)
{
    hush_message *m = NULL;
    hush_err e = hush_decrypt(to->c, from->name, 1, env, len, &m);
    if (e == HUSH_ERR_DUPLICATE) {
        printf("  %-5s           (duplicate delivery dropped silently)\n", to->name);
        return HUSH_OK;
    }
    if (e)
        return e;
    if (m->kind == HUSH_KIND_GROUP_KEY)
        printf("  %-5s <- %-5s  (sender key for group \"%s\")\n", to->name, from->name, m->group_id);
    else if (m->kind == HUSH_KIND_GROUP_TEXT)
        printf("  %-5s <- %-5s  [%s] %s\n", to->name, from->name, m->group_id, (char *)m->body);
    else
        printf("  %-5s <- %-5s  %s\n", to->name, from->name, (char *)m->body);
    hush_message_free(m);
    return HUSH_OK;
}

static int file_has(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n = strlen(needle), have = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    int found = 0;
    size_t got;
    while (buf && !found && (got = fread(buf + have, 1, cap - have, f)) > 0) {
        have += got;
        for (size_t i = 0; i + n <= have && !found; i++)
            found = memcmp(buf + i, needle, n) == 0;
        if (have >= n) { /* keep the tail for matches across reads */
            memmove(buf, buf + have - (n - 1), n - 1);
            have = n - 1;
        }
    }
    free(buf);
    fclose(f);
    return found;
}

static int cmd_demo(int argc, char **argv)
{
    static const struct option opts[] = {
        { "dir", required_argument, NULL, 'd' },
        { "messages", required_argument, NULL, 'm' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *dir = NULL;
    long extra = 5;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "d:m:h", opts, NULL)) != -1) {
        if (ch == 'd') {
            dir = optarg;
        } else if (ch == 'm') {
            char *end = NULL;
            extra = strtol(optarg, &end, 10);
            if (!end || *end || extra < 0 || extra > 100000) {
                fprintf(stderr, "hush demo: --messages must be 0..100000\n");
                return 2;
            }
        } else if (ch == 'h') {
            usage(stdout);
            return 0;
        } else {
            return 2;
        }
    }
    char tmpl[] = "/tmp/hush-demo.XXXXXX";
    if (!dir && !(dir = mkdtemp(tmpl))) {
        perror("hush demo: mkdtemp");
        return 1;
    }
    printf("Hush %s demo: end-to-end encryption between local parties (no relay yet).\n", hush_version());
    printf("Databases (sealed at rest) in %s\n\n", dir);
    struct party alice = { "alice", NULL, "" }, bob = { "bob", NULL, "" }, carol = { "carol", NULL, "" };
    int r;
    if ((r = demo_open(&alice, dir)) || (r = demo_open(&bob, dir)) || (r = demo_open(&carol, dir)))
        return r;

    printf("1. Key exchange (X3DH)\n");
    if ((r = demo_handshake(&alice, &bob)))
        return r;
    char sa[HUSH_SAFETY_NUMBER_LEN + 1], sb[HUSH_SAFETY_NUMBER_LEN + 1];
    hush_err e;
    uint8_t *env[8] = { 0 };
    size_t len[8] = { 0 };
    const char *canary = "the owl flies at midnight";
    if ((e = demo_send(&alice, &bob, canary, &env[0], &len[0])) || (e = demo_recv(&bob, &alice, env[0], len[0])))
        return die("first message", e);
    if ((e = hush_safety_number(alice.c, "bob", 1, sa)) || (e = hush_safety_number(bob.c, "alice", 1, sb)))
        return die("safety number", e);
    printf("\n2. Safety numbers (compare them out of band)\n");
    printf("  alice sees: %.5s %.5s %.5s %.5s %.5s %.5s\n", sa, sa + 5, sa + 10, sa + 15, sa + 20, sa + 25);
    printf("              %.5s %.5s %.5s %.5s %.5s %.5s\n", sa + 30, sa + 35, sa + 40, sa + 45, sa + 50, sa + 55);
    printf("  bob sees:   %.5s %.5s %.5s %.5s %.5s %.5s\n", sb, sb + 5, sb + 10, sb + 15, sb + 20, sb + 25);
    printf("              %.5s %.5s %.5s %.5s %.5s %.5s\n", sb + 30, sb + 35, sb + 40, sb + 45, sb + 50, sb + 55);
    printf("  %s\n", strcmp(sa, sb) == 0 ? "match: no one is in the middle" : "MISMATCH");

    printf("\n3. A conversation (Double Ratchet), delivered out of order and twice\n");
    if ((e = demo_send(&bob, &alice, "hi alice! got your message", &env[1], &len[1])) ||
        (e = demo_recv(&alice, &bob, env[1], len[1])))
        return die("reply", e);
    if ((e = demo_send(&alice, &bob, "one", &env[2], &len[2])) || (e = demo_send(&alice, &bob, "two", &env[3], &len[3])) ||
        (e = demo_send(&alice, &bob, "three", &env[4], &len[4])))
        return die("send", e);
    if ((e = demo_recv(&bob, &alice, env[4], len[4])) || (e = demo_recv(&bob, &alice, env[2], len[2])) ||
        (e = demo_recv(&bob, &alice, env[3], len[3])) || (e = demo_recv(&bob, &alice, env[3], len[3])))
        return die("receive", e);
    for (long i = 0; i < extra; i++) {
        char text[64];
        snprintf(text, sizeof text, "message %ld", i + 1);
        struct party *s = i % 2 ? &alice : &bob, *d = i % 2 ? &bob : &alice;
        uint8_t *x = NULL;
        size_t xl = 0;
        if ((e = demo_send(s, d, text, &x, &xl)) || (e = demo_recv(d, s, x, xl)))
            return die("conversation", e);
        hush_free(x);
    }

    printf("\n4. A group of three (sender keys)\n");
    if ((r = demo_handshake(&alice, &carol)))
        return r;
    struct party *members[] = { &bob, &carol };
    for (int i = 0; i < 2; i++) {
        uint8_t *d = NULL;
        size_t dl = 0;
        if ((e = hush_group_distribution(alice.c, "friends", members[i]->name, 1, &d, &dl)) ||
            (e = demo_recv(members[i], &alice, d, dl)))
            return die("group key", e);
        hush_free(d);
    }
    const char *gtext = "dinner at eight?";
    if ((e = hush_group_encrypt(alice.c, "friends", (const uint8_t *)gtext, strlen(gtext), NULL, &env[5], &len[5])))
        return die("group send", e);
    printf("  alice -> group  %s [one %zu-byte envelope for all]\n", gtext, len[5]);
    if ((e = demo_recv(&bob, &alice, env[5], len[5])) || (e = demo_recv(&carol, &alice, env[5], len[5])))
        return die("group receive", e);

    printf("\n5. Bob reinstalls: a new identity claims bob's address\n");
    hush_client_close(bob.c);
    unlink(bob.path);
    char side[PATH_MAX + 8];
    snprintf(side, sizeof side, "%s-wal", bob.path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", bob.path);
    unlink(side);
    if ((r = demo_open(&bob, dir)) || (r = demo_handshake(&bob, &alice)))
        return r;
    if ((e = demo_send(&bob, &alice, "it's me, new phone", &env[6], &len[6])))
        return die("send", e);
    hush_message *m = NULL;
    e = hush_decrypt(alice.c, "bob", 1, env[6], len[6], &m);
    if (e != HUSH_ERR_IDENTITY_CHANGED)
        return die("expected an identity change", e);
    char old_sn[HUSH_SAFETY_NUMBER_LEN + 1], new_sn[HUSH_SAFETY_NUMBER_LEN + 1];
    if ((e = hush_identity_pending(alice.c, "bob", 1, old_sn, new_sn)))
        return die("identity pending", e);
    printf("  alice: bob's safety number changed\n    old %s\n    new %s\n", old_sn, new_sn);
    printf("  alice accepts after checking with bob in person\n");
    if ((e = hush_identity_accept(alice.c, "bob", 1)) || (e = demo_recv(&alice, &bob, env[6], len[6])))
        return die("accept", e);

    for (size_t i = 0; i < 8; i++)
        hush_free(env[i]);
    hush_client_close(alice.c);
    hush_client_close(bob.c);
    hush_client_close(carol.c);

    printf("\n6. At rest: searching the database files for \"%s\"\n", canary);
    int leaked = 0;
    struct party *all[] = { &alice, &bob, &carol };
    for (int i = 0; i < 3; i++) {
        char wal[PATH_MAX + 8];
        snprintf(wal, sizeof wal, "%s-wal", all[i]->path);
        int hit = file_has(all[i]->path, canary) || file_has(wal, canary);
        leaked |= hit;
        printf("  %-40s %s\n", all[i]->path, hit ? "PLAINTEXT FOUND" : "not found (sealed)");
    }
    printf("\nDone. Inspect the files with: sqlite3 %s/alice.db .dump\n", dir);
    return leaked ? 1 : 0;
}


int main(int argc, char **argv)
{
    if (sodium_init() < 0) {
        fprintf(stderr, "hush: libsodium failed to initialise\n");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("hush %s\n", hush_version());
        return 0;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        { "init", cmd_init },       { "send", cmd_send },     { "listen", cmd_listen }, { "chat", cmd_chat },
        { "history", cmd_history }, { "safety", cmd_safety }, { "presence", cmd_presence },
        { "status", cmd_status },   { "info", cmd_info },     { "bundle", cmd_bundle }, { "demo", cmd_demo },
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmd, cmds[i].name))
            return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "hush: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
