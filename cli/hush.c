/*
 * hush - the Hush command-line client.
 *
 *   hush init --relay URL --user NAME [--invite TOKEN]   create an account: this device, registered
 *   hush link --relay URL                                 a new device of an existing account
 *   hush devices [add CODE | remove N]                    this account's devices; link or remove one
 *   hush recover --relay URL --user NAME --code CODE      lost every device: a new one in their place
 *   hush send USER TEXT                                   send (queued if offline; retried later)
 *   hush listen [--raw]                                   print incoming messages until Ctrl-C
 *   hush chat USER                                        interactive: typing, receipts, presence
 *   hush history USER [--limit N]                         the conversation, newest last
 *   hush safety USER [--accept [NUMBER] | --reject]       safety numbers; decide on a changed key
 *   hush presence [--allow USER...] [--watch USER...]     who may see you; whom you follow
 *   hush status                                           device, relay, connection, outbox
 *   hush info | bundle | demo                             local inspection and the offline demo
 *
 * Every command takes --db PATH (default: $HUSH_DB, else ~/.hush/hush.db). The database key is
 * PATH.key (32 random bytes, mode 0600), or, after `init --passphrase` (or with HUSH_PASSPHRASE set
 * at init), derived from a passphrase with Argon2id, the salt and cost recorded in PATH.salt.
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
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "hush.h"
#include "cli.h"

static void cli_usage(FILE *f)
{
    fprintf(f,
            "usage: hush <command> [--db PATH] [options]\n"
            "\n"
            "commands:\n"
            "  init --relay URL --user NAME [--invite TOKEN]\n"
            "        Create an account: this device (keys in a new sealed database), registered on the relay.\n"
            "  link --relay URL      Make this a new device of an existing account: prints a link code\n"
            "                        for `hush devices add CODE` on one of its devices, waits until linked.\n"
            "  devices [add CODE | remove N]   This account's devices; link the device showing\n"
            "                        CODE; remove device N.\n"
            "  recover --relay URL --user NAME --code CODE   Lost every device: a new one, with the\n"
            "                        recovery code init printed; the old devices are removed.\n"
            "  relay set URL         Change the relay this database connects to.\n"
            "  send USER TEXT...     Send a message (TEXT `-`: read it from standard input). Queued\n"
            "                        while offline and retried until the relay has it.\n"
            "  send USER --file PATH [--type MIME]   Send a file (encrypted here, resumable).\n"
            "  send '#ROOM' TEXT...  Send a message to a room (its members' devices); --file works too.\n"
            "  group create NAME USER... | add | remove | leave | rename | promote | info | list\n"
            "                        Rooms: end-to-end encrypted groups (`hush group --help`).\n"
            "  group presence ROOM on|off   Share your presence with everyone in a room (or stop).\n"
            "  get MESSAGE_ID [--out PATH]   Download a received file, check it, save it decrypted.\n"
            "  cancel ID             Take a queued message out of the outbox.\n"
            "  listen [--raw] [--files DIR]   Print incoming messages, receipts and presence until\n"
            "                        Ctrl-C (--raw: one JSON object per line; --files: save files in DIR).\n"
            "  chat USER             Talk with USER interactively (typing, receipts, presence).\n"
            "  history USER [--limit N]   Show the conversation with USER.\n"
            "  safety USER [--accept [NUMBER]|--reject]   Safety numbers of USER's devices; accept\n"
            "                        the new number you compared, or reject a changed identity key.\n"
            "  presence [--allow USER]... [--watch USER]...   Who may see your presence; whose\n"
            "                        presence to follow (--watch also prints updates until Ctrl-C).\n"
            "  status                Device, relay, connection state, outbox.\n"
            "  info | bundle         Local device details; this device's public bundle (base64).\n"
            "  demo [--dir DIR]      End-to-end demo between local parties, no relay needed.\n"
            "\n"
            "The database: --db PATH, else $HUSH_DB, else ~/.hush/hush.db. Its key is PATH.key\n"
            "(mode 0600, refused if others can read it), or, after `init --passphrase`, Argon2id of a\n"
            "passphrase asked on the terminal ($HUSH_PASSPHRASE for scripts) with the salt and the cost\n"
            "in PATH.salt. `hush <command> --help` for one command. Exit: 0 ok, 1 error, 2 usage.\n");
}

/* `hush <command> --help` */
static const struct {
    const char *cmd, *text;
} g_help[] = {
    { "init", "usage: hush init --relay URL --user NAME [--name DEVICE-NAME] [--invite TOKEN] [--ca-file PEM] [--passphrase]\n"
              "Creates this device (keys in a new sealed database) and registers it on the relay.\n"
              "  URL       ws://HOST:PORT or wss://HOST[:PORT] (a path may follow)\n"
              "  NAME      3 to 32 of a-z 0-9 . _ -, not starting with '-'\n"
              "  --invite  the token from the relay's operator (`hushd invite`), if registration is by invite\n"
              "  --ca-file a PEM file of the certificate authority that signed a self-signed relay's\n"
              "            certificate; stored with the URL for later commands\n"
              "  --name    this device's name in the account's device list (default: the host name)\n"
              "  --passphrase  derive the database key from a passphrase asked on the terminal (Argon2id)\n"
              "            instead of keeping it in PATH.key; later commands ask for it too\n"
              "Prints the account's recovery code once (`recovery code: CODE`): write it down.\n"
              "On failure nothing is left behind: run the same command again.\n" },
    { "link", "usage: hush link --relay URL [--name DEVICE-NAME] [--ca-file PEM] [--passphrase] [--wait SECONDS]\n"
              "Makes this (new) database a new device of an existing account. Prints a line\n"
              "`link code: CODE`; run `hush devices add CODE` on a device of the account within\n"
              "90 seconds (a new code is printed if the connection is renewed). Waits until linked,\n"
              "then prints `linked NAME (device N) on URL` (gives up after --wait, default 300 s).\n"
              "The new device shares the account's\n"
              "identity key (contacts see the same safety number) and the contacts it trusts; older\n"
              "messages stay on the other devices. On failure nothing is left behind.\n" },
    { "relay", "usage: hush relay set URL [--ca-file PEM]\n"
               "Changes the relay this database connects to (after the relay moved to another address;\n"
               "the account must be on that relay). --ca-file: the CA that signed its certificate.\n" },
    { "recover", "usage: hush recover --relay URL --user NAME --code CODE [--ca-file PEM] [--passphrase]\n"
                 "For a user who lost every device: with the recovery code `hush init` printed, makes this\n"
                 "new database the account's device (a new identity key: contacts see an identity change\n"
                 "and compare the new safety number) and removes every other device of the account with\n"
                 "their waiting messages. Prints `recovered NAME (device N) on URL` and a new recovery code\n"
                 "(the old one stops working). On failure nothing is left behind.\n" },
    { "devices", "usage: hush devices [add CODE | remove N]\n"
                 "Lists this account's devices as the relay knows them: number, name (sealed: the relay\n"
                 "cannot read it), online or when last seen. Offline: the devices this one knows of.\n"
                 "add CODE: links the device that shows CODE (`hush link`); prints `linked device N`.\n"
                 "remove N: removes device N (this device itself, or from the account's first device any\n"
                 "other); its keys and waiting messages are deleted at the relay. Not the last device.\n"
                 "An account has at most 6 devices (the relay's max_devices).\n" },
    { "send", "usage: hush send USER TEXT...   or   hush send USER -   (the text from standard input)\n"
              "       hush send USER --file PATH [--type MIME]\n"
              "       hush send '#ROOM' TEXT...   or   hush send '#ROOM' --file PATH   (a room: `hush group --help`)\n"
              "Sends a message. It is queued at once (durably) and retried until the relay has it;\n"
              "waits up to --wait SECONDS (default 10) for that. Empty messages are refused.\n"
              "Prints the message id of a message still queued: `hush cancel ID` takes it back.\n"
              "While `hush chat` or `hush listen` runs on the same database, it sends the message.\n"
              "--file: sends a file, encrypted on this device (the relay never sees its name or content);\n"
              "waits until it is uploaded (or --wait SECONDS), with a progress bar on a terminal; an\n"
              "interrupted upload resumes the next time hush connects.\n" },
    { "group", "usage: hush group create NAME USER...   |   hush group add ROOM USER...\n"
               "       hush group remove ROOM USER   |   hush group leave ROOM   |   hush group rename ROOM NAME\n"
               "       hush group promote ROOM USER   |   hush group info ROOM   |   hush group list\n"
               "       hush group presence ROOM on|off\n"
               "Rooms: end-to-end encrypted groups. ROOM is #NAME (or NAME), or the room's id (the first 6 or\n"
               "more of its hex digits). Only admins (the creator, and whoever an admin promotes) add,\n"
               "remove, rename or promote; anyone may leave. Every change is signed by its author and\n"
               "checked by every member's devices; the relay never learns a room's name or members.\n"
               "Send with `hush send '#NAME' TEXT`; `hush chat '#NAME'` and `hush history '#NAME'`.\n"
               "presence on: everyone in the room may see when you are online (added to `hush presence\n"
               "--allow`'s list, following the room as members come and go); off stops it. Members who\n"
               "share theirs show up in `hush listen` and `hush chat`.\n" },
    { "get", "usage: hush get MESSAGE_ID [--out PATH]\n"
             "Downloads a file someone sent (the id `hush listen` or `hush history` shows), checks it and\n"
             "writes it decrypted to PATH (default: its name, in the current directory; never over an\n"
             "existing file). Resumes an interrupted download.\n" },
    { "cancel", "usage: hush cancel ID\n"
                "Takes a queued message (the 32-hex id `hush send` printed) out of the outbox.\n" },
    { "listen", "usage: hush listen [--raw] [--files DIR]\n"
                "Prints incoming messages, receipts, typing and presence until Ctrl-C.\n"
                "--raw: one JSON object per line (see docs/OPERATIONS.md), for scripts.\n"
                "--files DIR: downloads every file that arrives and saves it, decrypted, in DIR.\n" },
    { "chat", "usage: hush chat USER   or   hush chat '#ROOM'\n"
              "Talk with USER: type and press Enter; Ctrl-D or Ctrl-C quits. Shows typing, receipts,\n"
              "presence; marks what is shown read. Messages of up to 65536 bytes.\n" },
    { "history", "usage: hush history USER [--limit N]   or   hush history '#ROOM' [--limit N]\n"
                 "Shows the conversation with USER, or in the room (with its changes), newest last.\n" },
    { "safety", "usage: hush safety USER [--accept [NUMBER] | --reject]\n"
                "Shows the safety numbers of USER's devices. After an identity change, compare the new\n"
                "number with USER in person, then accept exactly that number: --accept NUMBER (or\n"
                "--accept alone on a terminal, which asks for it). --reject discards the new key.\n" },
    { "presence", "usage: hush presence [--allow USER]... [--watch USER]...\n"
                  "--allow: who may see when you are online (replaces the list); --watch: whose presence to\n"
                  "follow, printing updates until Ctrl-C.\n" },
    { "status", "usage: hush status\nDevice, database, outbox and whether the relay can be reached (exit 1 if not).\n" },
    { "info", "usage: hush info\nLocal device details and an integrity check of the database.\n" },
    { "bundle", "usage: hush bundle\nThis device's public key bundle, base64.\n" },
    { "demo", "usage: hush demo [--dir DIR] [--messages N]\nAn end-to-end demo between local parties, no relay needed.\n" },
};

static void usage_cmd(const char *cmd)
{
    for (size_t i = 0; i < sizeof g_help / sizeof g_help[0]; i++)
        if (!strcmp(cmd, g_help[i].cmd)) {
            fputs(g_help[i].text, stdout);
            printf("Every command takes --db PATH (default: $HUSH_DB, else ~/.hush/hush.db).\n");
            return;
        }
    cli_usage(stdout);
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

/* One process at a time connects to the relay as this device: a second login would replace the
 * first one's session. The process that connects holds an exclusive lock on PATH.lock (with its
 * pid and command written in it); the others work on the database alone: `send` queues the
 * message for the running process (which picks up new outbox rows within half a second), and
 * `listen`, `chat` and `presence` refuse with the running process named. */
static int g_lock_fd = -1;

/* 1: this process may connect; 0: another does (described in who); -1: error (printed). */
static int take_owner(const char *cmd, char *who, size_t whocap)
{
    if (g_lock_fd >= 0)
        return 1; /* taken already by this process */
    char path[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s.lock", cli_db);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "hush: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        ssize_t n = errno == EWOULDBLOCK ? pread(fd, who, whocap - 1, 0) : -1;
        who[n > 0 ? n : 0] = '\0';
        who[strcspn(who, "\n")] = '\0';
        if (!who[0])
            snprintf(who, whocap, "another hush process");
        close(fd);
        return 0;
    }
    char me[64];
    int n = snprintf(me, sizeof me, "pid %ld: hush %s\n", (long)getpid(), cmd);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, me, (size_t)n, 0) != n) {
        /* only the description is lost; the lock itself holds */
    }
    g_lock_fd = fd; /* released at exit */
    return 1;
}

/* For the commands that must connect themselves. */
static int need_owner(const char *cmd)
{
    char who[128];
    int own = take_owner(cmd, who, sizeof who);
    if (own == 0)
        fprintf(stderr, "hush %s: %s is connected as this device (%s); run one at a time (`hush send` works "
                        "alongside it)\n", cmd, cli_db, who);
    return own == 1 ? 0 : 1;
}

/* ---------------------------------------------------------------------------------------- */
/* option parsing shared by the commands */

struct opts {
    const char *db, *relay, *user, *invite;
    uint32_t device;
    int raw, accept, reject, limit, wait_s;
    int wait_given; /* --wait was on the command line (else wait_s is the default) */
    const char *allow[64], *watch[64];
    int nallow, nwatch;
    int help;
    int insecure;
    const char *ca_file;
    const char *code;
    const char *name; /* --name: this device's name */
    const char *file; /* send --file PATH */
    const char *type; /* send --type MIME */
    const char *out;  /* get --out PATH */
    const char *files_dir; /* listen --files DIR */
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
        { "ca-file", required_argument, NULL, 'C' },  { "passphrase", no_argument, NULL, 'P' },
        { "code", required_argument, NULL, 'K' },      { "name", required_argument, NULL, 'N' },
        { "file", required_argument, NULL, 'F' },      { "type", required_argument, NULL, 'T' },
        { "out", required_argument, NULL, 'O' },       { "files", required_argument, NULL, 'D' },
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
        case 'C': o->ca_file = optarg; break;
        case 'K': o->code = optarg; break;
        case 'N': o->name = optarg; break;
        case 'F': o->file = optarg; break;
        case 'T': o->type = optarg; break;
        case 'O': o->out = optarg; break;
        case 'D': o->files_dir = optarg; break;
        case 'P': cli_use_passphrase = 1; break;
        case 'l':
            o->limit = (int)strtol(optarg, &end, 10);
            if (!end || *end || o->limit < 1 || o->limit > 500)
                goto bad;
            break;
        case 'w':
            o->wait_given = 1;
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
        usage_cmd(cmd);
        return -1;
    }
    return cli_resolve_db(o->db);
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
    return cli_open_db(0, c);
}

/* ---------------------------------------------------------------------------------------- */
/* peer data on a terminal, and the --raw format */

/* A growing string. On allocation failure it keeps what it has (the output is cut, not wrong). */
struct sb {
    char *p;
    size_t n, cap;
};

static void sb_add(struct sb *b, const char *s, size_t len)
{
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + len + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            return;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = '\0';
}

static void sb_printf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Decodes one UTF-8 sequence at s (len > 0). Returns its length and the code point, or 0 when the
 * bytes are not well-formed UTF-8 (overlong, surrogate, past U+10FFFF, cut short). */
static size_t utf8_next(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char b = s[0];
    size_t need;
    uint32_t v, min;
    if (b < 0x80) {
        *cp = b;
        return 1;
    } else if (b >= 0xc2 && b <= 0xdf) {
        need = 2, v = b & 0x1f, min = 0x80;
    } else if (b >= 0xe0 && b <= 0xef) {
        need = 3, v = b & 0x0f, min = 0x800;
    } else if (b >= 0xf0 && b <= 0xf4) {
        need = 4, v = b & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len < need)
        return 0;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return need;
}

/* Code points a terminal would act on instead of showing: C0 and C1 controls, DEL, and the
 * characters that reorder or break lines (bidi overrides and isolates, line/paragraph separators),
 * with which a peer could forge lines or recolour and retitle the terminal. */
static int unsafe_cp(uint32_t cp)
{
    return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || (cp >= 0x202a && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069) || cp == 0x2028 || cp == 0x2029 || cp == 0x200e || cp == 0x200f ||
           cp == 0x061c;
}

/* Peer data (message bodies, names, anything from the relay) made safe to print: unsafe code points
 * are written as \n, \t, \r or \u{XXXX}, bytes that are not UTF-8 as \xNN, and a backslash as \\,
 * so what is shown can always be told apart from what the program prints itself. malloc'd. */
static char *shown(const void *data, size_t len)
{
    struct sb b = { 0 };
    const unsigned char *s = data;
    sb_add(&b, "", 0);
    for (size_t i = 0; i < len;) {
        uint32_t cp = 0;
        size_t k = utf8_next(s + i, len - i, &cp);
        if (k == 0) {
            sb_printf(&b, "\\x%02x", s[i]);
            i++;
            continue;
        }
        if (cp == '\\')
            sb_add(&b, "\\\\", 2);
        else if (cp == '\n')
            sb_add(&b, "\\n", 2);
        else if (cp == '\t')
            sb_add(&b, "\\t", 2);
        else if (cp == '\r')
            sb_add(&b, "\\r", 2);
        else if (unsafe_cp(cp))
            sb_printf(&b, "\\u{%04x}", (unsigned)cp);
        else
            sb_add(&b, (const char *)s + i, k);
        i += k;
    }
    return b.p;
}

/* A JSON string (RFC 8259) of the bytes, in plain ASCII: every non-ASCII character as \uXXXX
 * (surrogate pairs above U+FFFF), controls escaped, bytes that are not UTF-8 as U+FFFD. */
static void json_str(struct sb *b, const void *data, size_t len)
{
    const unsigned char *s = data;
    sb_add(b, "\"", 1);
    for (size_t i = 0; i < len;) {
        uint32_t cp = 0xfffd;
        size_t k = utf8_next(s + i, len - i, &cp);
        if (k == 0) {
            cp = 0xfffd;
            k = 1;
        }
        i += k;
        if (cp == '"' || cp == '\\') {
            char e[2] = { '\\', (char)cp };
            sb_add(b, e, 2);
        } else if (cp >= 0x20 && cp < 0x7f) {
            char ch = (char)cp;
            sb_add(b, &ch, 1);
        } else if (cp < 0x10000) {
            sb_printf(b, "\\u%04x", (unsigned)cp);
        } else {
            cp -= 0x10000;
            sb_printf(b, "\\u%04x\\u%04x", (unsigned)(0xd800 + (cp >> 10)), (unsigned)(0xdc00 + (cp & 0x3ff)));
        }
    }
    sb_add(b, "\"", 1);
}

static void json_field_str(struct sb *b, const char *name, const void *v, size_t len)
{
    sb_printf(b, "%s\"%s\":", b->n > 1 ? "," : "", name);
    json_str(b, v, len);
}

static void json_field_num(struct sb *b, const char *name, long long v)
{
    sb_printf(b, "%s\"%s\":%lld", b->n > 1 ? "," : "", name, v);
}

/* ---------------------------------------------------------------------------------------- */
/* printing what arrives */

static pthread_mutex_t g_out = PTHREAD_MUTEX_INITIALIZER;
static int g_raw;
static char g_peer_filter[HUSH_USERNAME_MAX + 1];
static char g_room_filter[HUSH_ROOM_ID_LEN + 1]; /* hush chat '#ROOM': the room's id */
static hush_client *g_client;                     /* the client whose network runs (start_net) */
static void room_label(hush_client *c, const char *id, char *out, size_t cap);
struct opts;
static int room_arg(hush_client *c, const char *cmd, const char *arg, char out[HUSH_ROOM_ID_LEN + 1], struct opts *o);
static hush_client *g_chat; /* in `chat`: what is shown is marked read */

static void stamp(char *buf, size_t cap, uint64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(buf, cap, "%H:%M:%S", &tm);
}

static void stamp_date(char *buf, size_t cap, uint64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%d %H:%M", &tm);
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

static char g_net_detail[400]; /* the last network error's detail (status and the offline line show it) */

/* One --raw record: a JSON object on one line (see docs/OPERATIONS.md). */
static void raw_out(struct sb *b)
{
    sb_add(b, "}", 1);
    out_line("%s\n", b->p ? b->p : "{}");
    free(b->p);
}

/* One-shot commands (send, status, presence, safety) print their own result, not the traffic that
 * happens to arrive meanwhile: messages are stored (hush history shows them) and counted. */
static int g_quiet;
static int g_quiet_msgs;

/* listen --files DIR: files are downloaded as they arrive and saved there */
static hush_client *g_files_client;
static const char *g_files_dir;

static void human_size(char *out, size_t cap, uint64_t n)
{
    if (n < 1024)
        snprintf(out, cap, "%llu B", (unsigned long long)n);
    else if (n < 1024 * 1024)
        snprintf(out, cap, "%.1f KiB", (double)n / 1024);
    else if (n < 1024ull * 1024 * 1024)
        snprintf(out, cap, "%.1f MiB", (double)n / (1024 * 1024));
    else
        snprintf(out, cap, "%.2f GiB", (double)n / (1024.0 * 1024 * 1024));
}

static void on_file_message(const hush_message *m)
{
    char hex[33];
    sodium_bin2hex(hex, sizeof hex, m->message_id, 16);
    hush_attachment *a = NULL;
    hush_client *c = g_files_client ? g_files_client : g_chat ? g_chat : g_client;
    if (c && hush_attachment_get(c, m->message_id, &a) != HUSH_OK)
        a = NULL;
    int mine = !strcmp(m->sender, m->conversation) ? 0 : 1;
    if (g_raw) {
        struct sb b = { 0 };
        sb_add(&b, "{", 1);
        json_field_str(&b, "type", "file", 4);
        json_field_num(&b, "local_id", (long long)m->local_id);
        json_field_str(&b, "from", m->sender, strlen(m->sender));
        json_field_num(&b, "device", (long long)m->sender_device);
        if (mine && !m->group_id[0])
            json_field_str(&b, "to", m->conversation, strlen(m->conversation));
        if (m->group_id[0])
            json_field_str(&b, "room", m->group_id, strlen(m->group_id));
        json_field_str(&b, "id", hex, 32);
        json_field_num(&b, "sent_at_ms", (long long)m->sent_at_ms);
        json_field_str(&b, "name", m->body, m->body_len);
        if (a) {
            json_field_num(&b, "size", (long long)a->size);
            json_field_str(&b, "content_type", a->content_type, strlen(a->content_type));
        }
        raw_out(&b);
    } else {
        char ts[16], sz[32] = "?";
        stamp(ts, sizeof ts, m->sent_at_ms);
        if (a)
            human_size(sz, sizeof sz, a->size);
        char *from = shown(m->sender, strlen(m->sender)), *name = shown(m->body, m->body_len);
        char room[HUSH_ROOM_NAME_MAX * 4 + 8] = "";
        if (m->group_id[0]) {
            room_label(c, m->group_id, room, sizeof room - 1);
            strcat(room, " ");
        }
        char *to = mine && !m->group_id[0] ? shown(m->conversation, strlen(m->conversation)) : NULL;
        out_line("\r[%s] %s%s%s%s: [file] %s (%s%s%s) id %s%s\n", ts, room, mine ? "you" : "", to ? " -> " : "",
                 to ? to : (mine ? "" : (from ? from : "?")), name ? name : "?", sz, a ? ", " : "",
                 a ? a->content_type : "", hex, g_files_dir ? "" : "  (`hush get ID` downloads it)");
        free(from);
        free(name);
        free(to);
    }
    hush_attachment_free(a);
    if (g_files_client)
        BEST_EFFORT(hush_attachment_download(g_files_client, m->message_id));
}

/* A progress bar on a terminal ("\r" redrawn), nothing otherwise. */
static void progress_bar(const char *what, const char *name, uint64_t done, uint64_t total)
{
    if (g_raw || !isatty(STDOUT_FILENO))
        return;
    int pct = total ? (int)(done * 100 / total) : 100;
    char bar[31];
    int full = pct * 30 / 100;
    for (int i = 0; i < 30; i++)
        bar[i] = i < full ? '#' : '.';
    bar[30] = '\0';
    char d[32], t[32];
    human_size(d, sizeof d, done);
    human_size(t, sizeof t, total);
    out_line("\r%s %.40s [%s] %3d%% %s / %s ", what, name, bar, pct, d, t);
}

/* A unique path for a received file in dir: "name", else "name (1)", ... */
static int unused_path(char *out, size_t cap, const char *dir, const char *name)
{
    struct stat sb;
    for (int i = 0; i < 1000; i++) {
        if (i == 0)
            snprintf(out, cap, "%s/%s", dir, name);
        else
            snprintf(out, cap, "%s/%s (%d)", dir, name, i);
        if (stat(out, &sb) != 0 && errno == ENOENT)
            return 0;
    }
    return -1;
}

static void on_file(void *ctx, const uint8_t mid[16], int state, uint64_t done, uint64_t total, hush_err err)
{
    (void)ctx;
    if (g_quiet)
        return;
    char hex[33];
    sodium_bin2hex(hex, sizeof hex, mid, 16);
    hush_attachment *a = NULL;
    hush_client *c = g_files_client ? g_files_client : g_chat ? g_chat : g_client;
    if (c && hush_attachment_get(c, mid, &a) != HUSH_OK)
        a = NULL;
    const char *name = a ? a->file_name : hex;
    if (state == HUSH_FILE_UPLOADING || state == HUSH_FILE_DOWNLOADING) {
        progress_bar(state == HUSH_FILE_UPLOADING ? "sending" : "receiving", name, done, total);
    } else if (state == HUSH_FILE_READY && g_files_client && g_files_dir && a && !a->outgoing) {
        char path[PATH_MAX];
        hush_err e = unused_path(path, sizeof path, g_files_dir, a->file_name) ? HUSH_ERR_STORAGE
                                                                              : hush_attachment_save(g_files_client, mid, path);
        if (g_raw) {
            struct sb b = { 0 };
            sb_add(&b, "{", 1);
            json_field_str(&b, "type", e ? "file_failed" : "file_saved", e ? 11 : 10);
            json_field_str(&b, "id", hex, 32);
            if (!e)
                json_field_str(&b, "path", path, strlen(path));
            else
                json_field_str(&b, "error", hush_strerror(e), strlen(hush_strerror(e)));
            raw_out(&b);
        } else if (e) {
            out_line("\rfile %s (%s): could not be saved: %s\n", hex, a->file_name, hush_strerror(e));
        } else {
            char *p = shown(path, strlen(path));
            out_line("\rsaved %s\n", p ? p : path);
            free(p);
        }
    } else if (state == HUSH_FILE_FAILED) {
        if (g_raw) {
            struct sb b = { 0 };
            sb_add(&b, "{", 1);
            json_field_str(&b, "type", "file_failed", 11);
            json_field_str(&b, "id", hex, 32);
            json_field_str(&b, "error", hush_strerror(err), strlen(hush_strerror(err)));
            raw_out(&b);
        } else {
            out_line("\rfile %s (%s): %s\n", hex, name, hush_strerror(err));
        }
    }
    hush_attachment_free(a);
}

static void on_message(void *ctx, const hush_message *m)
{
    (void)ctx;
    if (g_quiet) {
        g_quiet_msgs++;
        return;
    }
    if (m->kind == HUSH_KIND_FILE) {
        on_file_message(m);
        return;
    }
    int in_room = m->group_id[0] != '\0';
    char room[HUSH_ROOM_NAME_MAX * 4 + 8] = "";
    if (in_room)
        room_label(g_client, m->group_id, room, sizeof room);
    if (g_raw) {
        char hex[33];
        sodium_bin2hex(hex, sizeof hex, m->message_id, 16);
        struct sb b = { 0 };
        sb_add(&b, "{", 1);
        int mine = m->kind == HUSH_KIND_SENT_ELSEWHERE;
        const char *type = m->kind == HUSH_KIND_GROUP_CHANGE ? "room_change" : mine ? "sent_elsewhere" : "message";
        json_field_str(&b, "type", type, strlen(type));
        if (in_room) {
            json_field_str(&b, "room", m->group_id, strlen(m->group_id));
            json_field_str(&b, "room_name", room + 1, strlen(room + 1));
        }
        json_field_num(&b, "local_id", (long long)m->local_id);
        json_field_str(&b, "from", m->sender, strlen(m->sender));
        json_field_num(&b, "device", (long long)m->sender_device);
        if (mine && !in_room)
            json_field_str(&b, "to", m->conversation, strlen(m->conversation));
        json_field_str(&b, "id", hex, 32);
        json_field_num(&b, "sent_at_ms", (long long)m->sent_at_ms);
        json_field_str(&b, "text", m->body, m->body_len);
        raw_out(&b);
        return;
    }
    char *from = shown(m->sender, strlen(m->sender));
    int other = (g_peer_filter[0] && (in_room || strcmp(m->conversation, g_peer_filter) != 0)) ||
                (g_room_filter[0] && strcmp(m->group_id, g_room_filter) != 0);
    if (other) {
        if (m->kind != HUSH_KIND_SENT_ELSEWHERE && in_room)
            out_line("\r(new in %s: `hush chat '%s'`)\n", room, room);
        else if (m->kind != HUSH_KIND_SENT_ELSEWHERE)
            out_line("\r(new message from %s: `hush chat %s`)\n", from ? from : "?", from ? from : "?");
        free(from);
        return;
    }
    char *body = shown(m->body, m->body_len);
    char ts[16];
    stamp(ts, sizeof ts, m->sent_at_ms);
    if (m->kind == HUSH_KIND_GROUP_CHANGE) {
        out_line("\r[%s] %s: %s\n", ts, room, body ? body : "(out of memory)");
    } else if (in_room && m->kind == HUSH_KIND_SENT_ELSEWHERE) {
        out_line("\r[%s] %s you (device %u): %s\n", ts, room, m->sender_device, body ? body : "(out of memory)");
    } else if (in_room) {
        out_line("\r[%s] %s %s: %s\n", ts, room, from ? from : "?", body ? body : "(out of memory)");
    } else if (m->kind == HUSH_KIND_SENT_ELSEWHERE) {
        char *to = shown(m->conversation, strlen(m->conversation));
        out_line("\r[%s] you (device %u) -> %s: %s\n", ts, m->sender_device, to ? to : "?", body ? body : "(out of memory)");
        free(to);
    } else {
        out_line("\r[%s] %s: %s\n", ts, from ? from : "?", body ? body : "(out of memory)");
    }
    free(from);
    free(body);
    if (g_chat && m->kind == HUSH_KIND_TEXT)
        BEST_EFFORT(hush_mark_read(g_chat, m->local_id));
}

static const char *state_name(hush_msg_state st)
{
    static const char *names[] = { "queued", "sent", "delivered", "read" };
    return st == HUSH_MSG_FAILED ? "failed" : (st >= 0 && st <= 3) ? names[st] : "?";
}

static void on_receipt(void *ctx, const char *peer, const uint8_t mid[16], hush_msg_state st)
{
    (void)ctx;
    if (g_quiet)
        return;
    char hex[33];
    sodium_bin2hex(hex, sizeof hex, mid, 16);
    if (g_raw) {
        struct sb b = { 0 };
        sb_add(&b, "{", 1);
        json_field_str(&b, "type", "receipt", 7);
        json_field_str(&b, "peer", peer, strlen(peer));
        json_field_str(&b, "id", hex, 32);
        json_field_str(&b, "state", state_name(st), strlen(state_name(st)));
        raw_out(&b);
        return;
    }
    if (g_peer_filter[0] && strcmp(peer, g_peer_filter) != 0)
        return; /* another conversation's */
    char *p = shown(peer, strlen(peer));
    if (st == HUSH_MSG_FAILED)
        out_line("\r(message %.8s to %s could not be delivered)\n", hex, p ? p : "?");
    else if (st >= HUSH_MSG_DELIVERED)
        out_line("\r(%s: %s)\n", p ? p : "?", state_name(st));
    free(p);
}

static void on_typing(void *ctx, const char *peer, uint32_t dev, int typing)
{
    (void)ctx;
    if (g_quiet)
        return;
    if (g_raw) {
        struct sb b = { 0 };
        sb_add(&b, "{", 1);
        json_field_str(&b, "type", "typing", 6);
        json_field_str(&b, "peer", peer, strlen(peer));
        json_field_num(&b, "device", (long long)dev);
        json_field_num(&b, "typing", typing ? 1 : 0);
        raw_out(&b);
        return;
    }
    if ((g_peer_filter[0] && strcmp(peer, g_peer_filter) != 0) || g_room_filter[0])
        return;
    char *p = shown(peer, strlen(peer));
    out_line("\r(%s %s)\n", p ? p : "?", typing ? "is typing..." : "stopped typing");
    free(p);
}

static void on_group_typing(void *ctx, const char *group, const char *user, uint32_t dev, int typing)
{
    (void)ctx;
    if (g_quiet || (g_peer_filter[0] || (g_room_filter[0] && strcmp(group, g_room_filter) != 0)))
        return;
    if (g_raw) {
        struct sb b = { 0 };
        sb_add(&b, "{", 1);
        json_field_str(&b, "type", "typing", 6);
        json_field_str(&b, "room", group, strlen(group));
        json_field_str(&b, "peer", user, strlen(user));
        json_field_num(&b, "device", (long long)dev);
        json_field_num(&b, "typing", typing ? 1 : 0);
        raw_out(&b);
        return;
    }
    char room[HUSH_ROOM_NAME_MAX * 4 + 8];
    room_label(g_client, group, room, sizeof room);
    char *p = shown(user, strlen(user));
    out_line("\r(%s %s in %s)\n", p ? p : "?", typing ? "is typing..." : "stopped typing", room);
    free(p);
}

static int g_presence_shown; /* presence: only `presence --watch`, `chat` and `listen` show it */

static void on_presence(void *ctx, const char *user, int online, uint64_t last_seen)
{
    (void)ctx;
    if (g_quiet && !g_presence_shown)
        return;
    if (g_raw) {
        struct sb b = { 0 };
        sb_add(&b, "{", 1);
        json_field_str(&b, "type", "presence", 8);
        json_field_str(&b, "user", user, strlen(user));
        json_field_str(&b, "state", online ? "online" : "offline", online ? 6 : 7);
        json_field_num(&b, "last_seen_ms", (long long)last_seen);
        raw_out(&b);
        return;
    }
    if (g_peer_filter[0] && strcmp(user, g_peer_filter) != 0)
        return;
    char ts[16] = "never";
    if (last_seen)
        stamp(ts, sizeof ts, last_seen);
    char *u = shown(user, strlen(user));
    out_line("\r(%s is %s%s%s)\n", u ? u : "?", online ? "online" : "offline", online ? "" : ", last seen ",
             online ? "" : ts);
    free(u);
}

static void on_identity(void *ctx, const char *peer, uint32_t dev, const char *old_sn, const char *new_sn)
{
    (void)ctx;
    if (g_raw) {
        struct sb b = { 0 };
        sb_add(&b, "{", 1);
        json_field_str(&b, "type", "identity_changed", 16);
        json_field_str(&b, "peer", peer, strlen(peer));
        json_field_num(&b, "device", (long long)dev);
        json_field_str(&b, "old_safety_number", old_sn, strlen(old_sn));
        json_field_str(&b, "new_safety_number", new_sn, strlen(new_sn));
        raw_out(&b);
        return;
    }
    char *p = shown(peer, strlen(peer));
    const char *q = p ? p : "?";
    out_line("\r!! %s's identity key changed (device %u). Nothing goes to or comes from that key until you decide.\n"
             "   old safety number: %s\n   new safety number: %s\n"
             "   Compare the new number with %s in person, then: hush safety %s --accept NUMBER   (or --reject)\n",
             q, dev, old_sn, new_sn, q, q);
    free(p);
}

static void on_connection(void *ctx, hush_conn_state st, hush_err e)
{
    (void)ctx;
    if (g_raw) {
        static const char *names[] = { "offline", "connecting", "online", "failed", "stopped" };
        struct sb b = { 0 };
        sb_add(&b, "{", 1);
        json_field_str(&b, "type", "connection", 10);
        const char *n = (st >= 0 && st <= 4) ? names[st] : "?";
        json_field_str(&b, "state", n, strlen(n));
        if (e)
            json_field_str(&b, "error", hush_strerror(e), strlen(hush_strerror(e)));
        raw_out(&b);
        return;
    }
    if (g_quiet)
        return;
    static char said[sizeof g_net_detail];
    if (st == HUSH_CONN_OFFLINE) {
        /* the reason once, not at every retry */
        char now[sizeof g_net_detail];
        pthread_mutex_lock(&g_out);
        snprintf(now, sizeof now, "%s", g_net_detail[0] ? g_net_detail : hush_strerror(e));
        pthread_mutex_unlock(&g_out);
        if (strcmp(now, said) != 0)
            out_line("\r(offline: %s; reconnecting)\n", now);
        snprintf(said, sizeof said, "%s", now);
    } else if (st == HUSH_CONN_ONLINE) {
        said[0] = '\0';
    }
    if (st == HUSH_CONN_FAILED)
        out_line("\r(connection failed for good: %s)\n", hush_strerror(e));
}

static void on_error(void *ctx, hush_err e, const char *detail)
{
    (void)ctx;
    if (e == HUSH_ERR_NETWORK) { /* reported as a connection state; status prints the detail */
        pthread_mutex_lock(&g_out);
        snprintf(g_net_detail, sizeof g_net_detail, "%s", detail ? detail : "");
        pthread_mutex_unlock(&g_out);
        return;
    }
    char *d = detail ? shown(detail, strlen(detail)) : NULL;
    pthread_mutex_lock(&g_out);
    fprintf(stderr, "hush: %s (%s)\n", d ? d : "error", hush_strerror(e));
    pthread_mutex_unlock(&g_out);
    free(d);
}

static void on_link_code(void *ctx, const char *code)
{
    (void)ctx;
    out_line("link code: %s\n", code);
}

static void on_devices_changed(void *ctx, const char *user)
{
    (void)ctx;
    if (g_raw) {
        struct sb b = { 0 };
        sb_add(&b, "{", 1);
        json_field_str(&b, "type", "devices_changed", 15);
        json_field_str(&b, "user", user, strlen(user));
        raw_out(&b);
        return;
    }
    if (g_quiet)
        return;
    char *u = shown(user, strlen(user));
    out_line("\r(%s's devices changed)\n", u ? u : "?");
    free(u);
}

static const hush_callbacks g_cb = { NULL,         on_message,   on_receipt,  on_typing,
                                     on_presence,  on_identity,  on_connection, on_error,
                                     on_link_code, on_devices_changed, on_file, on_group_typing };

/* What is wrong with a relay URL, or NULL when it is one the SDK takes: ws:// or wss://, a host,
 * an optional port (1-65535) and an optional path. */
static const char *url_problem(const char *u)
{
    const char *rest;
    if (!strncmp(u, "ws://", 5))
        rest = u + 5;
    else if (!strncmp(u, "wss://", 6))
        rest = u + 6;
    else if (!strncmp(u, "http://", 7) || !strncmp(u, "https://", 8))
        return "the relay speaks WebSocket: use ws://HOST:PORT (or wss:// for TLS) instead of http(s)://";
    else if (strstr(u, "://"))
        return "unknown scheme: use ws://HOST:PORT or wss://HOST[:PORT]";
    else
        return "not a URL: use ws://HOST:PORT or wss://HOST[:PORT] (e.g. ws://127.0.0.1:7443)";
    size_t hl = strcspn(rest, ":/");
    if (hl == 0)
        return "no host: use ws://HOST:PORT";
    for (size_t i = 0; i < hl; i++)
        if (!(rest[i] == '.' || rest[i] == '-' || rest[i] == '_' || (rest[i] >= '0' && rest[i] <= '9') ||
              (rest[i] >= 'a' && rest[i] <= 'z') || (rest[i] >= 'A' && rest[i] <= 'Z')))
            return "the host has characters a host name cannot have";
    if (rest[hl] == ':') {
        char *end = NULL;
        long port = strtol(rest + hl + 1, &end, 10);
        if (end == rest + hl + 1 || port < 1 || port > 65535 || (*end && *end != '/'))
            return "the port must be a number from 1 to 65535";
    }
    if (strlen(u) > 250)
        return "longer than 250 characters";
    return NULL;
}

static int valid_name(const char *u)
{
    size_t n = strlen(u);
    if (n < 3 || n > 32 || u[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((u[i] >= 'a' && u[i] <= 'z') || (u[i] >= '0' && u[i] <= '9') || u[i] == '.' || u[i] == '_' || u[i] == '-'))
            return 0;
    return 1;
}

#define NAME_RULE "3 to 32 of a-z 0-9 . _ - (lower case), not starting with '-'"

static int start_net(hush_client *c, const struct opts *o)
{
    if (g_client == c)
        return 0; /* started already (a room looked up online first) */
    hush_net_opts no = { o->relay, o->invite, o->ca_file, o->insecure };
    g_client = c;
    hush_err e = hush_net_start(c, &no, &g_cb);
    if (e)
        g_client = NULL;
    if (e == HUSH_ERR_INVALID_ARG && o->relay)
        fprintf(stderr, "hush: %s: %s\n", o->relay,
                url_problem(o->relay) ? url_problem(o->relay) : "not a relay URL this version can use");
    else if (e == HUSH_ERR_INVALID_ARG)
        fprintf(stderr, "hush: no relay URL stored: run `hush init --relay ws://HOST:PORT --user NAME`\n");
    else if (e)
        return cli_die("network", e);
    return e ? 1 : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* commands */

/* Removes what a failed init created, so the same command can simply be run again. */
static void remove_db_files(void)
{
    static const char *const suffix[] = { "", ".key", ".salt", "-wal", "-shm", "-journal", ".lock" };
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        char p[PATH_MAX + 16];
        snprintf(p, sizeof p, "%s%s", cli_db, suffix[i]);
        unlink(p);
    }
}

/* The database a new device goes in: a new one, or one an earlier run of the same command left
 * without a device (it was killed before it got that far: nothing in it to lose). With
 * `may_have_device` (hush link: finish a registration), a database with a device is opened too. */
static int open_for_new_device(hush_client **c, int may_have_device)
{
    if (access(cli_db, F_OK) != 0)
        return cli_open_db(1, c);
    int r = cli_open_db(0, c);
    if (r)
        return r;
    hush_err e = hush_device_info(*c, NULL, NULL, NULL);
    if (e == HUSH_ERR_NO_DEVICE || (e == HUSH_OK && may_have_device))
        return 0;
    hush_client_close(*c);
    *c = NULL;
    fprintf(stderr, "hush: %s already holds a device; refusing to overwrite it (use another --db)\n", cli_db);
    return 1;
}

/* This device's name as its account's devices list it: --name, else the host name. Returns 2 (a
 * usage error, said) for a --name libhush refuses. */
static int set_device_name(hush_client *c, const struct opts *o, const char *cmd)
{
    char host[HUSH_DEVICE_NAME_MAX + 1] = "";
    const char *name = o->name;
    if (!name) {
        if (gethostname(host, sizeof host) != 0)
            return 0;
        host[sizeof host - 1] = '\0';
        name = host;
    }
    if (hush_device_name_set(c, name) != HUSH_OK && o->name) {
        fprintf(stderr, "hush %s: --name: 1 to %d bytes, no control characters\n", cmd, HUSH_DEVICE_NAME_MAX);
        return 2;
    }
    return 0;
}

static void print_recovery_code(const char *code)
{
    if (!code[0])
        return;
    printf("recovery code: %s\n", code);
    printf("(write it down and keep it safe: it is shown only this once; with it, `hush recover` puts a new\n"
           " device in place of lost ones and removes them)\n");
}

static int cmd_init(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "init");
    if (r)
        return r < 0 ? 0 : r;
    if (!o.relay || !o.user) {
        fprintf(stderr, "hush init: --relay URL and --user NAME are required (hush init --help)\n");
        return 2;
    }
    const char *why = url_problem(o.relay);
    if (why) {
        fprintf(stderr, "hush init: --relay %s: %s\n", o.relay, why);
        return 2;
    }
    if (!valid_name(o.user)) {
        fprintf(stderr, "hush init: --user %s: a name is " NAME_RULE "\n", o.user);
        return 2;
    }
    if (o.ca_file && access(o.ca_file, R_OK) != 0) {
        fprintf(stderr, "hush init: --ca-file %s: %s\n", o.ca_file, strerror(errno));
        return 2;
    }
    hush_client *c = NULL;
    if ((r = open_for_new_device(&c, 0)))
        return r;
    if (need_owner("init")) {
        hush_client_close(c);
        return 1;
    }
    if (o.device != 1) {
        fprintf(stderr, "hush init: a new account's first device is device 1; to add a device to an account, run "
                        "`hush link --relay URL` on it\n");
        hush_client_close(c);
        remove_db_files();
        return 2;
    }
    if (set_device_name(c, &o, "init")) {
        hush_client_close(c);
        remove_db_files();
        return 2;
    }
    hush_err e = hush_device_create(c, o.user, o.device);
    if (e) {
        hush_client_close(c);
        remove_db_files();
        return cli_die("init", e);
    }
    if ((r = start_net(c, &o))) {
        hush_client_close(c);
        remove_db_files();
        return r;
    }
    e = hush_net_wait_online(c, 20000);
    hush_err last = HUSH_OK;
    hush_net_state(c, &last);
    char code[HUSH_RECOVERY_CODE_LEN + 1] = "";
    if (!e && hush_recovery_code(c, code) != HUSH_OK)
        code[0] = '\0';
    hush_net_stop(c);
    if (code[0])
        BEST_EFFORT(hush_recovery_code_forget(c)); /* printed below, never again */
    hush_client_close(c);
    if (e) {
        fprintf(stderr, "hush init: registration on %s failed: %s\n", o.relay,
                hush_strerror(e == HUSH_ERR_TIMEOUT && last ? last : e));
        remove_db_files();
        fprintf(stderr, "(nothing was kept: fix the problem and run the same command again)\n");
        return 1;
    }
    char saltpath[PATH_MAX + 8];
    snprintf(saltpath, sizeof saltpath, "%s.salt", cli_db);
    int salted = access(saltpath, F_OK) == 0;
    printf("registered %s (device %u) on %s\ndatabase %s, key %s.%s\n", o.user, o.device, o.relay, cli_db, cli_db,
           salted ? "salt (derived from your passphrase)" : "key");
    print_recovery_code(code);
    sodium_memzero(code, sizeof code);
    return 0;
}

/* `hush recover --relay URL --user NAME --code CODE`: a new device in place of lost ones. */
static int cmd_recover(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "recover");
    if (r)
        return r < 0 ? 0 : r;
    if (!o.relay || !o.user || !o.code) {
        fprintf(stderr, "hush recover: --relay URL, --user NAME and --code CODE are required (hush recover --help)\n");
        return 2;
    }
    const char *why = url_problem(o.relay);
    if (why) {
        fprintf(stderr, "hush recover: --relay %s: %s\n", o.relay, why);
        return 2;
    }
    if (!valid_name(o.user)) {
        fprintf(stderr, "hush recover: --user %s: a name is " NAME_RULE "\n", o.user);
        return 2;
    }
    hush_client *c = NULL;
    if ((r = open_for_new_device(&c, 0)))
        return r;
    if (need_owner("recover")) {
        hush_client_close(c);
        return 1;
    }
    if (set_device_name(c, &o, "recover")) {
        hush_client_close(c);
        remove_db_files();
        return 2;
    }
    hush_net_opts no = { o.relay, NULL, o.ca_file, o.insecure };
    hush_err e = hush_net_start_recover(c, &no, &g_cb, o.user, o.code);
    if (e == HUSH_ERR_INVALID_ARG) {
        hush_client_close(c);
        remove_db_files();
        fprintf(stderr, "hush recover: --code: a recovery code is 32 hex digits (dashes and spaces are ignored)\n");
        return 2;
    }
    if (!e)
        e = hush_net_wait_online(c, 20000);
    hush_err last = HUSH_OK;
    hush_net_state(c, &last);
    uint32_t dev = 0;
    char code[HUSH_RECOVERY_CODE_LEN + 1] = "";
    if (!e && (hush_device_info(c, NULL, &dev, NULL) != HUSH_OK || hush_recovery_code(c, code) != HUSH_OK))
        code[0] = '\0';
    hush_net_stop(c);
    if (code[0])
        BEST_EFFORT(hush_recovery_code_forget(c));
    hush_client_close(c);
    if (e) {
        fprintf(stderr, "hush recover: %s\n", hush_strerror(e == HUSH_ERR_TIMEOUT && last ? last : e));
        remove_db_files();
        fprintf(stderr, "(nothing was kept here; a wrong name or code is refused the same way)\n");
        return 1;
    }
    printf("recovered %s (device %u) on %s; the account's other devices were removed\n", o.user, dev, o.relay);
    print_recovery_code(code);
    sodium_memzero(code, sizeof code);
    return 0;
}

/* `hush link --relay URL`: this new database becomes a device of an existing account. */
static int cmd_link(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "link");
    if (r)
        return r < 0 ? 0 : r;
    if (!o.relay) {
        fprintf(stderr, "hush link: --relay URL is required (hush link --help)\n");
        return 2;
    }
    const char *why = url_problem(o.relay);
    if (why) {
        fprintf(stderr, "hush link: --relay %s: %s\n", o.relay, why);
        return 2;
    }
    if (o.ca_file && access(o.ca_file, R_OK) != 0) {
        fprintf(stderr, "hush link: --ca-file %s: %s\n", o.ca_file, strerror(errno));
        return 2;
    }
    hush_client *c = NULL;
    if ((r = open_for_new_device(&c, 1)))
        return r;
    if (need_owner("link")) {
        hush_client_close(c);
        return 1;
    }
    if (set_device_name(c, &o, "link")) {
        hush_client_close(c);
        remove_db_files();
        return 2;
    }
    hush_net_opts no = { o.relay, NULL, o.ca_file, o.insecure };
    hush_err e = hush_net_start_link(c, &no, &g_cb);
    int resumed = 0;
    if (e == HUSH_ERR_DEVICE_EXISTS) {
        /* an earlier `hush link` got its device and was stopped before registering: finish it */
        char user[HUSH_USERNAME_MAX + 1];
        uint32_t d = 0;
        if (hush_device_info(c, user, &d, NULL) == HUSH_OK)
            printf("this database already has a device (%s, device %u): finishing its registration\n", user, d);
        e = hush_net_start(c, &no, &g_cb);
        resumed = 1;
    }
    if (e) {
        hush_client_close(c);
        if (!resumed)
            remove_db_files();
        return cli_die("link", e);
    }
    /* the code is printed by on_link_code; a new one after a reconnection */
    /* a person reads the code and types it on the other device: 5 minutes unless --wait says */
    e = hush_net_wait_online(c, o.wait_given ? o.wait_s * 1000 : 300000);
    hush_err last = HUSH_OK;
    hush_net_state(c, &last);
    char user[HUSH_USERNAME_MAX + 1] = "";
    uint32_t dev = 0;
    if (!e && hush_device_info(c, user, &dev, NULL) != HUSH_OK)
        e = HUSH_ERR_NO_DEVICE;
    hush_client_close(c);
    if (e) {
        fprintf(stderr, "hush link: not linked: %s\n", hush_strerror(e == HUSH_ERR_TIMEOUT && last ? last : e));
        if (!resumed) {
            remove_db_files();
            fprintf(stderr, "(nothing was kept: run the same command again for a new code)\n");
        }
        return 1;
    }
    printf("linked %s (device %u) on %s\n", user, dev, o.relay);
    return 0;
}

/* `hush relay set URL [--ca-file PEM]` */
static int cmd_relay(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "relay");
    if (r)
        return r < 0 ? 0 : r;
    if (argc - optind != 2 || strcmp(argv[optind], "set") != 0) {
        fprintf(stderr, "usage: hush relay set URL [--ca-file PEM]   (hush relay --help)\n");
        return 2;
    }
    const char *url = argv[optind + 1];
    const char *why = url_problem(url);
    if (why) {
        fprintf(stderr, "hush relay set: %s: %s\n", url, why);
        return 2;
    }
    if (o.ca_file && access(o.ca_file, R_OK) != 0) {
        fprintf(stderr, "hush relay set: --ca-file %s: %s\n", o.ca_file, strerror(errno));
        return 2;
    }
    hush_client *c = NULL;
    if ((r = cli_open_db(0, &c)))
        return r;
    hush_err e = hush_relay_set(c, url, o.ca_file);
    hush_client_close(c);
    if (e)
        return cli_die("relay set", e);
    printf("relay set to %s (used from the next command on)\n", url);
    return 0;
}

/* `hush devices [add CODE]` */
static int cmd_devices(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "devices");
    if (r)
        return r < 0 ? 0 : r;
    const char *code = NULL;
    unsigned long remove = 0;
    if (argc - optind == 2 && !strcmp(argv[optind], "add")) {
        code = argv[optind + 1];
    } else if (argc - optind == 2 && !strcmp(argv[optind], "remove")) {
        char *end = NULL;
        remove = strtoul(argv[optind + 1], &end, 10);
        if (!end || *end || remove == 0 || remove > INT_MAX) {
            fprintf(stderr, "hush devices remove: N is a device number (hush devices lists them)\n");
            return 2;
        }
    } else if (argc - optind != 0) {
        fprintf(stderr, "usage: hush devices [add CODE | remove N]   (hush devices --help)\n");
        return 2;
    }
    hush_client *c = NULL;
    if ((r = cli_open_db(0, &c)))
        return r;
    char user[HUSH_USERNAME_MAX + 1];
    uint32_t me = 0;
    hush_err e = hush_device_info(c, user, &me, NULL);
    if (e) {
        hush_client_close(c);
        return cli_die("devices", e);
    }
    if (!code && !remove) {
        /* from the relay (names, last seen, online); when it cannot be asked, what this device knows */
        hush_device_entry *list = NULL;
        size_t n = 0;
        int asked = need_owner("devices") == 0 && start_net(c, &o) == 0 && hush_net_wait_online(c, 10000) == HUSH_OK &&
                    hush_devices(c, 10000, &list, &n) == HUSH_OK;
        if (asked) {
            hush_client_close(c);
            for (size_t i = 0; i < n; i++) {
                char seen[32] = "never";
                if (list[i].online)
                    snprintf(seen, sizeof seen, "online");
                else if (list[i].last_seen_ms)
                    stamp_date(seen, sizeof seen, list[i].last_seen_ms);
                char *nm = shown(list[i].name, strlen(list[i].name));
                printf("%u  %-20s  %s%s%s\n", list[i].device_id, nm && *nm ? nm : "(no name)",
                       list[i].online ? "online" : "last seen ", list[i].online ? "" : seen,
                       list[i].this_device ? "  (this device)" : "");
                free(nm);
            }
            hush_devices_free(list);
            return 0;
        }
        uint32_t devs[16];
        e = hush_peer_devices(c, user, devs, 16, &n);
        hush_client_close(c);
        if (e)
            return cli_die("devices", e);
        printf("(the relay could not be asked: the devices this one knows of)\n");
        printf("%u (this device)\n", me);
        for (size_t i = 0; i < n; i++)
            if (devs[i] != me)
                printf("%u\n", devs[i]);
        return 0;
    }
    if (need_owner("devices add") || (r = start_net(c, &o))) {
        hush_client_close(c);
        return r ? r : 1;
    }
    uint32_t dev = 0;
    e = hush_net_wait_online(c, 20000);
    if (remove) {
        if (!e)
            e = hush_device_remove(c, (uint32_t)remove, 30000);
        hush_client_close(c);
        if (e == HUSH_ERR_AUTH_FAILED) {
            fprintf(stderr, "hush devices remove: only the account's first device removes other devices\n");
            return 1;
        }
        if (e == HUSH_ERR_INVALID_ARG) {
            fprintf(stderr, "hush devices remove: the account's last device cannot be removed\n");
            return 1;
        }
        if (e)
            return cli_die("devices remove", e);
        if (remove == me)
            printf("removed this device (%u): its database %s is of no further use; delete it\n", me, cli_db);
        else
            printf("removed device %lu\n", remove);
        return 0;
    }
    if (!e)
        e = hush_device_link(c, code, 30000, &dev);
    hush_client_close(c);
    if (e == HUSH_ERR_INVALID_ARG) {
        fprintf(stderr, "hush devices add: not a link code (it starts with hush-link-1:)\n");
        return 2;
    }
    if (e)
        return cli_die("devices add", e);
    printf("linked device %u\n", dev);
    return 0;
}

/* The text of `hush send USER TEXT...`, or of standard input for `hush send USER -`. Returns the
 * length, or -1 (message printed). */
static long send_text(int argc, char **argv, int first, char *text, size_t cap)
{
    size_t len = 0;
    if (argc - first == 1 && !strcmp(argv[first], "-")) {
        for (;;) {
            ssize_t n = read(0, text + len, cap - len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                fprintf(stderr, "hush send: reading standard input: %s\n", strerror(errno));
                return -1;
            }
            if (n == 0)
                break;
            len += (size_t)n;
            if (len == cap) {
                fprintf(stderr, "hush send: the text is longer than %d bytes\n", HUSH_MAX_BODY);
                return -1;
            }
        }
        while (len && text[len - 1] == '\n') /* the final newline of a file or a pipe */
            len--;
    } else {
        for (int i = first; i < argc; i++) {
            int n = snprintf(text + len, cap - len, "%s%s", i > first ? " " : "", argv[i]);
            if (n < 0 || (size_t)n >= cap - len) {
                fprintf(stderr, "hush send: the text is longer than %d bytes\n", HUSH_MAX_BODY);
                return -1;
            }
            len += (size_t)n;
        }
    }
    size_t blank = 0;
    while (blank < len && (text[blank] == ' ' || text[blank] == '\t' || text[blank] == '\n' || text[blank] == '\r'))
        blank++;
    if (blank == len) {
        fprintf(stderr, "hush send: the message is empty\n");
        return -1;
    }
    return (long)len;
}

/* The one operand left after the options, as a message id (32 hex digits). 0 on success. */
static int message_id_arg(int argc, char **argv, uint8_t mid[16])
{
    size_t got = 0;
    return argc - optind != 1 || sodium_hex2bin(mid, 16, argv[optind], strlen(argv[optind]), NULL, &got, NULL) != 0 ||
                   got != 16
               ? -1
               : 0;
}

/* Waits for file `mid` to reach one of the states in `until` (a bit mask of 1 << (state + 1)),
 * reading the database (another process may be moving it) and drawing progress on a terminal.
 * Gives up after wait_s seconds without progress (0: wait as long as it progresses... forever).
 * Returns the state reached (or the last one seen). */
static int wait_file(hush_client *c, const uint8_t mid[16], unsigned until, int wait_s, int own)
{
    uint64_t last_done = 0;
    int idle_ticks = 0, state = 0;
    for (;;) {
        hush_attachment *a = NULL;
        if (hush_attachment_get(c, mid, &a) != HUSH_OK)
            return HUSH_FILE_FAILED;
        state = a->state;
        if (!own && (state == HUSH_FILE_UPLOADING || state == HUSH_FILE_DOWNLOADING))
            progress_bar(state == HUSH_FILE_UPLOADING ? "sending" : "receiving", a->file_name, a->done, a->total);
        if (a->done != last_done)
            idle_ticks = 0;
        last_done = a->done;
        hush_attachment_free(a);
        if (until & (1u << (state + 1)))
            return state;
        if (g_stop || (wait_s > 0 && ++idle_ticks > wait_s * 10))
            return state;
        usleep(100000);
    }
}

static int cmd_send_file(struct opts *o, const char *to)
{
    hush_client *c = NULL;
    int r;
    if ((r = cli_open_db(0, &c)))
        return r;
    char me[HUSH_USERNAME_MAX + 1] = "";
    if (hush_device_info(c, me, NULL, NULL) == HUSH_OK && !strcmp(me, to)) {
        hush_client_close(c);
        fprintf(stderr, "hush send: %s is you: a file to yourself has no other device to go to\n", to);
        return 1;
    }
    uint8_t mid[16];
    hush_err e;
    if (to[0] == '#') {
        /* a room: uploaded once, announced to every member's devices */
        char id[HUSH_ROOM_ID_LEN + 1];
        if ((r = room_arg(c, "send", to, id, o))) {
            hush_client_close(c);
            return r;
        }
        e = hush_group_send_file(c, id, o->file, NULL, o->type, NULL, 0, mid);
        if (e == HUSH_ERR_NOT_ALLOWED) {
            hush_client_close(c);
            fprintf(stderr, "hush send: you are no longer in %s\n", to);
            return 1;
        }
    } else {
        e = hush_send_file(c, to, o->file, NULL, o->type, NULL, 0, mid);
    }
    if (e) {
        hush_client_close(c);
        if (e == HUSH_ERR_INVALID_ARG)
            fprintf(stderr, "hush send: %s or %s: not a user name, a readable regular file or a valid type\n", to, o->file);
        else if (e == HUSH_ERR_TOO_BIG)
            fprintf(stderr, "hush send: %s: larger than %llu bytes\n", o->file, (unsigned long long)HUSH_MAX_FILE);
        return e == HUSH_ERR_INVALID_ARG || e == HUSH_ERR_TOO_BIG ? 2 : cli_die("send", e);
    }
    char hex[33];
    sodium_bin2hex(hex, sizeof hex, mid, sizeof mid);
    char who[128];
    int own = take_owner("send", who, sizeof who);
    if (own < 0) {
        hush_client_close(c);
        return 1;
    }
    g_quiet = 0;
    g_files_client = c;
    g_raw = 0;
    g_quiet_msgs = 0;
    if (own == 1 && (r = start_net(c, o))) {
        hush_client_close(c);
        printf("queued as %s (uploaded the next time hush connects)\n", hex);
        return 0;
    }
    catch_signals();
    /* uploaded (SENT) or failed; then the message itself up to the relay */
    int st = wait_file(c, mid, (1u << (HUSH_FILE_SENT + 1)) | (1u << (HUSH_FILE_FAILED + 1)),
                       o->wait_given ? o->wait_s : 60, own == 1);
    hush_msg_state ms = HUSH_MSG_QUEUED;
    for (int i = 0; st == HUSH_FILE_SENT && i < 100; i++) {
        if (hush_message_state(c, mid, &ms) == HUSH_OK && ms != HUSH_MSG_QUEUED)
            break;
        usleep(100000);
    }
    if (isatty(STDOUT_FILENO))
        printf("\n");
    hush_client_close(c);
    char *t = shown(to, strlen(to));
    int rc = 0;
    if (st == HUSH_FILE_FAILED || ms == HUSH_MSG_FAILED) {
        fprintf(stderr, "hush send: the file to %s could not be sent (see above)\n", t ? t : to);
        rc = 1;
    } else if (ms >= HUSH_MSG_SENT) {
        printf("sent %s to %s (the relay has it)%s%s\n", o->file, t ? t : to, own ? "" : "; sent by ", own ? "" : who);
    } else {
        printf("queued as %s: the upload resumes the next time hush connects%s%s\n", hex, own ? "" : " (", own ? "" : who);
        if (!own)
            printf(")\n");
    }
    free(t);
    return rc;
}

static int cmd_get(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "get");
    if (r)
        return r < 0 ? 0 : r;
    uint8_t mid[16];
    if (message_id_arg(argc, argv, mid)) {
        fprintf(stderr, "usage: hush get MESSAGE_ID [--out PATH]   (the 32 hex digits `hush listen` shows)\n");
        return 2;
    }
    hush_client *c = NULL;
    if ((r = cli_open_db(0, &c)))
        return r;
    hush_attachment *a = NULL;
    hush_err e = hush_attachment_get(c, mid, &a);
    if (e == HUSH_ERR_NOT_FOUND) {
        hush_client_close(c);
        fprintf(stderr, "hush get: no file message with that id\n");
        return 1;
    }
    if (e) {
        hush_client_close(c);
        return cli_die("get", e);
    }
    char path[PATH_MAX];
    if (o.out)
        snprintf(path, sizeof path, "%s", o.out);
    else
        snprintf(path, sizeof path, "%s", a->file_name);
    hush_attachment_free(a);
    struct stat sb;
    if (stat(path, &sb) == 0) {
        hush_client_close(c);
        fprintf(stderr, "hush get: %s exists: choose another with --out PATH\n", path);
        return 1;
    }
    int own = 0;
    char who[128] = "";
    if (hush_attachment_get(c, mid, &a) == HUSH_OK && a->state != HUSH_FILE_READY) {
        e = hush_attachment_download(c, mid);
        if (e) {
            hush_attachment_free(a);
            hush_client_close(c);
            fprintf(stderr, "hush get: this file cannot be downloaded (%s)\n", hush_strerror(e));
            return 1;
        }
        own = take_owner("get", who, sizeof who);
        if (own < 0) {
            hush_attachment_free(a);
            hush_client_close(c);
            return 1;
        }
        g_quiet = 0;
        g_files_client = c;
        if (own == 1 && (r = start_net(c, &o))) {
            hush_attachment_free(a);
            hush_client_close(c);
            return r;
        }
        catch_signals();
        int st = wait_file(c, mid, (1u << (HUSH_FILE_READY + 1)) | (1u << (HUSH_FILE_FAILED + 1)),
                           o.wait_given ? o.wait_s : 60, own == 1);
        if (isatty(STDOUT_FILENO))
            printf("\n");
        if (st != HUSH_FILE_READY) {
            hush_attachment_free(a);
            hush_attachment *b = NULL;
            int err = 0;
            if (hush_attachment_get(c, mid, &b) == HUSH_OK)
                err = b->state;
            hush_attachment_free(b);
            hush_client_close(c);
            fprintf(stderr, "hush get: %s\n", err == HUSH_FILE_FAILED ? "the download failed (see above)"
                                                                      : "not downloaded yet: run it again to resume");
            return 1;
        }
    }
    hush_attachment_free(a);
    e = hush_attachment_save(c, mid, path);
    hush_client_close(c);
    if (e == HUSH_ERR_BAD_MESSAGE) {
        fprintf(stderr, "hush get: the file does not decrypt: it was tampered with; nothing was written\n");
        return 1;
    }
    if (e)
        return cli_die("get", e);
    char *p = shown(path, strlen(path));
    printf("saved %s\n", p ? p : path);
    free(p);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* rooms */

/* ROOM as typed: "#NAME" or NAME (its name), or its id (32 hex digits, or the first 6 or more).
 * 0 with the id in out; otherwise said, and 1 (no such room) or 2 (ambiguous). Rooms this user is
 * in come before rooms it left. */
static int room_arg(hush_client *c, const char *cmd, const char *arg, char out[HUSH_ROOM_ID_LEN + 1], struct opts *o)
{
    hush_group_state *g = NULL;
    size_t n = 0;
    hush_err e = hush_group_list(c, &g, &n);
    if (e)
        return cli_die(cmd, e);
    const char *want = arg[0] == '#' ? arg + 1 : arg;
    int any = 0;
    for (size_t i = 0; i < n && !any; i++)
        any = !strcmp(g[i].name, want) || !strncmp(g[i].id, want, strlen(want));
    char who[128];
    if (!any && o && take_owner(cmd, who, sizeof who) == 1 && start_net(c, o) == 0) {
        /* not known here yet: maybe it waits at the relay (an invitation not yet received) */
        int quiet = g_quiet;
        g_quiet = 1;
        BEST_EFFORT(hush_net_wait_drained(c, o->wait_s * 1000));
        g_quiet = quiet;
        hush_group_state_free(g, n);
        g = NULL;
        n = 0;
        if ((e = hush_group_list(c, &g, &n)))
            return cli_die(cmd, e);
    }
    const char *name = arg[0] == '#' ? arg + 1 : arg;
    size_t nl = strlen(name);
    int hexish = arg[0] != '#' && nl >= 6 && nl <= HUSH_ROOM_ID_LEN && strspn(name, "0123456789abcdef") == nl;
    size_t found = 0, pick = 0;
    for (int pass = 0; pass < 2 && !found; pass++) /* members first, then rooms left */
        for (size_t i = 0; i < n; i++)
            if ((pass == 0) == (g[i].is_member != 0) &&
                (!strcmp(g[i].name, name) || (hexish && !strncmp(g[i].id, name, nl)))) {
                if (!found)
                    pick = i;
                found++;
            }
    int r = 0;
    if (!found) {
        char *t = shown(name, nl);
        fprintf(stderr, "hush %s: no room named %s (`hush group list` shows yours)\n", cmd, t ? t : "?");
        free(t);
        r = 1;
    } else if (found > 1) {
        char *t = shown(name, nl);
        fprintf(stderr, "hush %s: %zu rooms are named %s: name one by its id (`hush group list`)\n", cmd, found,
                t ? t : "?");
        free(t);
        r = 2;
    } else {
        snprintf(out, HUSH_ROOM_ID_LEN + 1, "%s", g[pick].id);
    }
    hush_group_state_free(g, n);
    return r;
}

/* A room's name as shown ("#name"), from its id; "#?" when unknown. */
static void room_label(hush_client *c, const char *id, char *out, size_t cap)
{
    hush_group_state *g = NULL;
    snprintf(out, cap, "#?");
    if (c && hush_group_info(c, id, &g) == HUSH_OK) {
        char *t = shown(g->name, strlen(g->name));
        snprintf(out, cap, "#%s", t ? t : "?");
        free(t);
    }
    hush_group_state_free(g, g ? 1 : 0);
}

static void print_room(const hush_group_state *g, int members)
{
    char *t = shown(g->name, strlen(g->name));
    printf("#%s  id %s  %zu member(s)%s%s%s\n", t ? t : "?", g->id, g->n_members,
           g->is_admin ? "  (you are an admin)" : "", g->is_member ? "" : "  (you left or were removed)",
           g->is_member && g->shares_presence ? "  (your presence is shared)" : "");
    free(t);
    for (size_t i = 0; members && i < g->n_members; i++)
        printf("  %s%s\n", g->members[i], g->admin[i] ? "  (admin)" : "");
}

/* A room change was queued: this process sends it (unless another owns the database). */
static int finish_change(hush_client *c, struct opts *o, const char *what)
{
    g_quiet = 1; /* what arrives meanwhile is stored, not printed (`hush listen` shows it) */
    char who[128];
    int own = take_owner("group", who, sizeof who);
    hush_err e = HUSH_OK;
    if (own == 1 && start_net(c, o) == 0)
        e = hush_net_flush(c, o->wait_s * 1000);
    else if (own == 1)
        e = HUSH_ERR_NOT_RUNNING;
    hush_client_close(c);
    if (own < 0)
        return 1;
    if (own == 0)
        printf("%s; %s sends it to the members' devices\n", what, who);
    else if (e)
        printf("%s; queued: %s (it is sent the next time hush connects)\n", what, hush_strerror(e));
    else
        printf("%s; the members' devices have been sent it\n", what);
    return 0;
}

static int cmd_group(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "group");
    if (r)
        return r < 0 ? 0 : r;
    int na = argc - optind;
    const char *sub = na > 0 ? argv[optind] : "list";
    char **a = argv + optind + 1;
    na = na > 0 ? na - 1 : 0;
    static const struct {
        const char *name;
        int min, max; /* operands after the subcommand */
    } subs[] = { { "create", 1, 1000 }, { "add", 2, 1000 }, { "remove", 2, 2 }, { "leave", 1, 1 },
                 { "rename", 2, 2 },    { "promote", 2, 2 }, { "info", 1, 1 },   { "list", 0, 0 },
                 { "presence", 2, 2 } };
    int known = 0;
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++)
        if (!strcmp(sub, subs[i].name)) {
            known = 1;
            if (na < subs[i].min || na > subs[i].max) {
                fprintf(stderr, "usage: hush group %s ...   (hush group --help)\n", sub);
                return 2;
            }
        }
    if (!known) {
        fprintf(stderr, "usage: hush group create|add|remove|leave|rename|promote|info|list|presence ...   "
                        "(hush group --help)\n");
        return 2;
    }
    hush_client *c = NULL;
    if ((r = cli_open_db(0, &c)))
        return r;
    hush_err e = HUSH_OK;
    char id[HUSH_ROOM_ID_LEN + 1], what[200];
    if (!strcmp(sub, "list")) {
        hush_group_state *g = NULL;
        size_t n = 0;
        e = hush_group_list(c, &g, &n);
        hush_client_close(c);
        if (e)
            return cli_die("group", e);
        for (size_t i = 0; i < n; i++)
            print_room(&g[i], 0);
        if (!n)
            printf("(no rooms: `hush group create NAME USER...` makes one)\n");
        hush_group_state_free(g, n);
        return 0;
    }
    if (!strcmp(sub, "create")) {
        const char *name = a[0][0] == '#' ? a[0] + 1 : a[0];
        e = hush_group_create(c, name, (const char *const *)(a + 1), (size_t)(na - 1), id);
        if (e == HUSH_ERR_INVALID_ARG) {
            hush_client_close(c);
            fprintf(stderr, "hush group create: a room's name is 1 to %d bytes of text; members are user names "
                            "(" NAME_RULE ")\n", HUSH_ROOM_NAME_MAX);
            return 2;
        }
        char *t = shown(name, strlen(name));
        snprintf(what, sizeof what, "created #%s (id %s)", t ? t : "?", id);
        free(t);
    } else {
        if ((r = room_arg(c, "group", a[0], id, &o))) {
            hush_client_close(c);
            return r;
        }
        if (!strcmp(sub, "info")) {
            hush_group_state *g = NULL;
            e = hush_group_info(c, id, &g);
            hush_client_close(c);
            if (e)
                return cli_die("group", e);
            print_room(g, 1);
            hush_group_state_free(g, 1);
            return 0;
        }
        if (!strcmp(sub, "add"))
            e = hush_group_add(c, id, (const char *const *)(a + 1), (size_t)(na - 1));
        else if (!strcmp(sub, "remove"))
            e = hush_group_remove(c, id, a[1]);
        else if (!strcmp(sub, "leave"))
            e = hush_group_leave(c, id);
        else if (!strcmp(sub, "rename"))
            e = hush_group_rename(c, id, a[1][0] == '#' ? a[1] + 1 : a[1]);
        else if (!strcmp(sub, "promote"))
            e = hush_group_promote(c, id, a[1]);
        else if (strcmp(a[1], "on") && strcmp(a[1], "off")) {
            hush_client_close(c);
            fprintf(stderr, "usage: hush group presence ROOM on|off\n");
            return 2;
        } else if ((e = hush_group_share_presence(c, id, !strcmp(a[1], "on"))) == HUSH_ERR_NOT_ALLOWED) {
            hush_client_close(c);
            fprintf(stderr, "hush group presence: you are no longer in that room\n");
            return 1;
        }
        if (!strcmp(sub, "presence"))
            snprintf(what, sizeof what, "%s", !strcmp(a[1], "on") ? "your presence is shared with the room"
                                                                   : "your presence is no longer shared with the room");
        else
            snprintf(what, sizeof what, "%s: done", sub);
    }
    if (e) {
        hush_client_close(c);
        if (e == HUSH_ERR_NOT_ALLOWED)
            fprintf(stderr, "hush group %s: only the room's admins may do that (or you are no longer in it)\n", sub);
        else if (e == HUSH_ERR_NOT_FOUND)
            fprintf(stderr, "hush group %s: %s is not in that room\n", sub, na > 1 ? a[1] : "that user");
        else if (e == HUSH_ERR_INVALID_ARG)
            fprintf(stderr, "hush group %s: nothing to change (a bad name, a member already in, or yourself)\n", sub);
        else
            return cli_die("group", e);
        return e == HUSH_ERR_INVALID_ARG ? 2 : 1;
    }
    return finish_change(c, &o, what);
}

/* After a message was queued: this process sends it (unless another owns the database: then
 * that one does) and says where it stands. `to`: the user or room as typed. The client is closed. */
static int finish_send(hush_client *c, struct opts *opt, const char *cmd, const uint8_t mid[16], const char *to)
{
    struct opts o = *opt;
    hush_err e;
    int r;
    char hex[33];
    sodium_bin2hex(hex, sizeof hex, mid, 16);
    char who[128];
    int own = take_owner(cmd, who, sizeof who);
    if (own < 0) {
        hush_client_close(c);
        return 1;
    }
    g_quiet = 1;
    hush_msg_state st = HUSH_MSG_QUEUED;
    if (own == 1) {
        if ((r = start_net(c, &o))) {
            hush_client_close(c);
            printf("queued as %s (it is sent the next time hush connects)\n", hex);
            return 0;
        }
        e = hush_net_flush(c, o.wait_s * 1000);
    } else {
        /* the running process sends it: follow its state in the database */
        for (int i = 0; i < o.wait_s * 10; i++) {
            if (hush_message_state(c, mid, &st) == HUSH_OK && st != HUSH_MSG_QUEUED)
                break;
            usleep(100000);
        }
        e = HUSH_OK;
    }
    if (hush_message_state(c, mid, &st) != HUSH_OK)
        st = HUSH_MSG_QUEUED;
    hush_client_close(c);
    if (g_quiet_msgs)
        printf("(%d new message(s) arrived meanwhile: hush history USER shows them)\n", g_quiet_msgs);
    char *t = shown(to, strlen(to));
    if (st == HUSH_MSG_FAILED && to[0] == '#') {
        fprintf(stderr, "hush %s: %s: the message was not sent (you are no longer in that room)\n", cmd, t);
        free(t);
        return 1;
    }
    if (st == HUSH_MSG_FAILED) {
        fprintf(stderr, "hush %s: %s: the message could not be delivered (no such user, or no usable key)\n", cmd, t);
        free(t);
        return 1;
    }
    if (st >= HUSH_MSG_SENT)
        printf("sent to %s (the relay has it)%s%s\n", t, own ? "" : "; sent by ", own ? "" : who);
    else if (own == 1)
        printf("queued as %s: %s; it is sent the next time hush connects\n", hex, hush_strerror(e));
    else
        printf("queued as %s: %s sends it when the relay can be reached\n", hex, who);
    free(t);
    return 0;
}

static int cmd_send(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "send");
    if (r)
        return r < 0 ? 0 : r;
    if (o.file) {
        if (argc - optind != 1) {
            fprintf(stderr, "usage: hush send USER --file PATH [--type MIME]\n");
            return 2;
        }
        return cmd_send_file(&o, argv[optind]);
    }
    if (argc - optind < 2) {
        fprintf(stderr, "usage: hush send USER TEXT...   (or TEXT `-` for standard input)\n");
        return 2;
    }
    const char *to = argv[optind];
    static char text[HUSH_MAX_BODY + 1];
    long len = send_text(argc, argv, optind + 1, text, sizeof text);
    if (len < 0)
        return 2;
    hush_client *c = NULL;
    if ((r = cli_open_db(0, &c)))
        return r;
    if (to[0] == '#') {
        /* a room: once, encrypted with this device's key, to every member's devices */
        char id[HUSH_ROOM_ID_LEN + 1];
        uint8_t mid[16];
        if ((r = room_arg(c, "send", to, id, &o))) {
            hush_client_close(c);
            return r;
        }
        hush_err e = hush_group_send(c, id, (const uint8_t *)text, (size_t)len, mid);
        sodium_memzero(text, (size_t)len);
        if (e == HUSH_ERR_NOT_ALLOWED) {
            hush_client_close(c);
            fprintf(stderr, "hush send: you are no longer in %s\n", to);
            return 1;
        }
        if (e) {
            hush_client_close(c);
            return cli_die("send", e);
        }
        return finish_send(c, &o, "send", mid, to);
    }
    char me[HUSH_USERNAME_MAX + 1] = "";
    if (hush_device_info(c, me, NULL, NULL) == HUSH_OK && !strcmp(me, to)) {
        hush_client_close(c);
        fprintf(stderr, "hush send: %s is you: a message to yourself has no other device to go to\n", to);
        return 1;
    }
    uint8_t mid[16];
    hush_err e = hush_send(c, to, (const uint8_t *)text, (size_t)len, mid);
    sodium_memzero(text, (size_t)len);
    if (e) {
        hush_client_close(c);
        if (e == HUSH_ERR_INVALID_ARG)
            fprintf(stderr, "hush send: %s: not a user name (" NAME_RULE ")\n", to);
        return e == HUSH_ERR_INVALID_ARG ? 2 : cli_die("send", e);
    }
    return finish_send(c, &o, "send", mid, to);
}

static int cmd_cancel(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o, "cancel");
    if (r)
        return r < 0 ? 0 : r;
    uint8_t mid[16];
    if (message_id_arg(argc, argv, mid)) {
        fprintf(stderr, "usage: hush cancel ID   (the 32 hex digits `hush send` printed)\n");
        return 2;
    }
    hush_client *c = NULL;
    if ((r = cli_open_db(0, &c)))
        return r;
    hush_err e = hush_outbox_cancel(c, mid);
    hush_client_close(c);
    if (e == HUSH_ERR_NOT_FOUND) {
        fprintf(stderr, "hush cancel: no queued message with that id (already sent, or unknown)\n");
        return 1;
    }
    if (e)
        return cli_die("cancel", e);
    printf("cancelled: the message will not be sent\n");
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
    g_presence_shown = 1;
    if (o.files_dir) {
        struct stat sb;
        if (stat(o.files_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            hush_client_close(c);
            fprintf(stderr, "hush listen: --files %s: not a directory\n", o.files_dir);
            return 2;
        }
        g_files_client = c;
        g_files_dir = o.files_dir;
    }
    if (need_owner("listen") || (r = start_net(c, &o))) {
        hush_client_close(c);
        return r ? r : 1;
    }
    if (!g_raw)
        printf("listening as %s (Ctrl-C to stop)\n", cli_db);
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
    if ((r = cli_open_db(0, &c)))
        return r;
    hush_history_entry *h = NULL;
    size_t n = 0;
    char room[HUSH_ROOM_ID_LEN + 1] = "";
    if (argv[optind][0] == '#' && (r = room_arg(c, "history", argv[optind], room, &o))) {
        hush_client_close(c);
        return r;
    }
    hush_err e = room[0] ? hush_group_history(c, room, 0, o.limit, &h, &n)
                         : hush_history_list(c, argv[optind], 0, o.limit, &h, &n);
    if (e) {
        hush_client_close(c);
        return cli_die("history", e);
    }
    char me[HUSH_USERNAME_MAX + 1] = "me";
    if (hush_device_info(c, me, NULL, NULL) != HUSH_OK)
        snprintf(me, sizeof me, "me");
    for (size_t i = n; i-- > 0;) {
        char ts[16];
        stamp(ts, sizeof ts, h[i].outgoing ? h[i].sent_at_ms : h[i].received_at_ms);
        hush_msg_state st = HUSH_MSG_QUEUED;
        const char *mark = "";
        if (h[i].outgoing && hush_message_state(c, h[i].message_id, &st) == HUSH_OK)
            mark = state_name(st);
        char *b = shown(h[i].body, h[i].body_len), *p = shown(h[i].peer, strlen(h[i].peer));
        char fid[64] = "";
        if (h[i].kind == HUSH_KIND_FILE) {
            char hex[33];
            sodium_bin2hex(hex, sizeof hex, h[i].message_id, 16);
            snprintf(fid, sizeof fid, "  id %s", hex);
        }
        if (h[i].kind == HUSH_KIND_GROUP_CHANGE)
            printf("[%s] * %s\n", ts, b ? b : "?"); /* who changed what, in words */
        else
            printf("[%s] %s: %s%s%s%s%s%s\n", ts, h[i].outgoing ? me : (p ? p : "?"),
                   h[i].kind == HUSH_KIND_FILE ? "[file] " : "", b ? b : "?", fid, *mark ? "  (" : "", mark,
                   *mark ? ")" : "");
        free(b);
        free(p);
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
    if (argc - optind < 1 || (argc - optind > 1 && !o.accept) || (o.accept && o.reject)) {
        fprintf(stderr, "usage: hush safety USER [--accept [NUMBER] | --reject]\n");
        return 2;
    }
    /* --accept NUMBER: the safety number the user compared (its groups may be separate words) */
    char number[128] = "";
    for (int i = optind + 1; i < argc; i++) {
        size_t l = strlen(number);
        snprintf(number + l, sizeof number - l, "%s", argv[i]);
    }
    const char *peer = argv[optind];
    hush_client *c = NULL;
    if ((r = cli_open_db(0, &c)))
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
                /* Accept exactly what the user compared: a key a relay slipped in meanwhile has
                 * another number and stays refused. */
                char typed[128];
                snprintf(typed, sizeof typed, "%s", number);
                if (!typed[0]) {
                    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
                    if (fd >= 0) {
                        const char *q = "  Type the new safety number you compared (spaces are fine): ";
                        if (write(fd, q, strlen(q)) < 0) {
                            /* the read below decides */
                        }
                        ssize_t got = read(fd, typed, sizeof typed - 1);
                        typed[got > 0 ? got : 0] = '\0';
                        close(fd);
                    }
                }
                if (!typed[0]) {
                    fprintf(stderr, "hush safety: give the number you compared: hush safety %s --accept %.5s %.5s ...\n",
                            peer, new_sn, new_sn + 5);
                    e = HUSH_ERR_SAFETY_MISMATCH;
                    break;
                }
                e = hush_identity_accept_number(c, peer, devs[i], typed);
                if (e == HUSH_ERR_SAFETY_MISMATCH) {
                    fprintf(stderr, "hush safety: that is not the number of any key waiting for %s device %u: nothing "
                                    "accepted. Compare again.\n", peer, devs[i]);
                    break;
                }
                if (!e)
                    printf("  accepted: that key is trusted; messages held under it will be shown\n");
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
        /* let the network thread decrypt what was held (a running hush process does it itself) */
        char who[128];
        g_quiet = 1;
        if (take_owner("safety", who, sizeof who) == 1 && start_net(c, &o) == 0)
            BEST_EFFORT(hush_net_flush(c, 3000));
    }
    hush_client_close(c);
    return e ? cli_die("safety", e) : 0;
}

static int cmd_presence(int argc, char **argv)
{
    struct opts o;
    hush_client *c = NULL;
    int r = setup(argc, argv, &o, "presence", &c);
    if (r)
        return r < 0 ? 0 : r;
    if (need_owner("presence")) {
        hush_client_close(c);
        return 1;
    }
    g_quiet = 1;
    g_presence_shown = o.nwatch > 0;
    hush_err e = HUSH_OK;
    if (o.nallow)
        e = hush_presence_allow(c, o.allow, (size_t)o.nallow);
    if (!e && o.nwatch)
        e = hush_presence_subscribe(c, o.watch, (size_t)o.nwatch);
    if (e) {
        hush_client_close(c);
        return cli_die("presence", e);
    }
    if ((r = start_net(c, &o))) {
        hush_client_close(c);
        return r;
    }
    e = hush_net_wait_online(c, 10000);
    if (e) {
        hush_client_close(c);
        return cli_die("presence", e);
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
        return cli_die("status", e);
    }
    printf("device:     %s (device %u)\ndatabase:   %s\noutbox:     %u message(s) waiting\nprekeys:    %u one-time keys left locally\n",
           user, dev, cli_db, outbox, stock);
    char who[128];
    int own = take_owner("status", who, sizeof who);
    if (own == 0) {
        printf("relay:      connected by %s\n", who);
        hush_client_close(c);
        return 0;
    }
    g_quiet = 1;
    int rc = 1;
    if (own == 1 && start_net(c, &o) == 0) {
        e = hush_net_wait_online(c, 5000);
        hush_err last = HUSH_OK;
        hush_net_state(c, &last);
        if (e == HUSH_ERR_TIMEOUT && last)
            e = last;
        printf("relay:      %s\n", e ? hush_strerror(e) : "online");
        if (e && g_net_detail[0])
            printf("            %s\n", g_net_detail);
        if (!e && outbox)
            BEST_EFFORT(hush_net_flush(c, 5000));
        rc = e ? 1 : 0;
    }
    hush_client_close(c);
    return rc;
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
    int in_room = peer[0] == '#';
    hush_client *c = NULL;
    if ((r = cli_open_db(0, &c)))
        return r;
    if (in_room) {
        if ((r = room_arg(c, "chat", peer, g_room_filter, &o))) {
            hush_client_close(c);
            return r;
        }
    } else {
        snprintf(g_peer_filter, sizeof g_peer_filter, "%s", peer);
        const char *who[1] = { peer };
        if (hush_presence_subscribe(c, who, 1) != HUSH_OK)
            fprintf(stderr, "hush chat: could not follow %s's presence\n", peer);
    }
    g_chat = c;
    g_presence_shown = 1;
    if (need_owner("chat") || (r = start_net(c, &o))) {
        hush_client_close(c);
        return r ? r : 1;
    }
    /* recent history first */
    hush_history_entry *h = NULL;
    size_t n = 0;
    hush_err he = in_room ? hush_group_history(c, g_room_filter, 0, 10, &h, &n) : hush_history_list(c, peer, 0, 10, &h, &n);
    if (he == HUSH_OK) {
        for (size_t i = n; i-- > 0;) {
            char *b = shown(h[i].body, h[i].body_len), *p = shown(h[i].peer, strlen(h[i].peer));
            if (h[i].kind == HUSH_KIND_GROUP_CHANGE)
                printf("* %s\n", b ? b : "?");
            else
                printf("%s: %s\n", h[i].outgoing ? "me" : (p ? p : "?"), b ? b : "?");
            free(b);
            free(p);
        }
        for (size_t i = 0; i < n && !in_room; i++)
            if (!h[i].outgoing && !h[i].read && hush_mark_read(c, h[i].local_id) != HUSH_OK)
                break;
        hush_history_free(h, n);
    }
    if (in_room) {
        char label[HUSH_ROOM_NAME_MAX * 4 + 8];
        room_label(c, g_room_filter, label, sizeof label);
        printf("chatting in %s: type and press Enter; Ctrl-D or Ctrl-C to quit\n", label);
    } else {
        printf("chatting with %s: type and press Enter; Ctrl-D or Ctrl-C to quit\n", peer);
    }
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
    static char line[HUSH_MAX_BODY];
    size_t len = 0;
    int full_said = 0;
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
            BEST_EFFORT(in_room ? hush_group_typing(c, g_room_filter, 0) : hush_typing(c, peer, 0));
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
            size_t blank = 0;
            while (blank < len && (line[blank] == ' ' || line[blank] == '\t'))
                blank++;
            if (blank < len) { /* whitespace-only lines are not sent */
                hush_err e = in_room ? hush_group_send(c, g_room_filter, (const uint8_t *)line, len, NULL)
                                     : hush_send(c, peer, (const uint8_t *)line, len, NULL);
                if (e)
                    fprintf(stderr, "hush chat: %s\n", hush_strerror(e));
            }
            sodium_memzero(line, len);
            len = 0;
            full_said = 0;
            typing = 0;
            BEST_EFFORT(in_room ? hush_group_typing(c, g_room_filter, 0) : hush_typing(c, peer, 0));
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
        if (len < sizeof line) {
            line[len++] = ch;
            if (g_tty_raw)
                out_line("%c", ch);
        } else if (!full_said) {
            /* never cut silently: say so, and send what fits when Enter comes */
            out_line("\r(message limit of %d bytes reached: press Enter to send it; the rest is dropped)\n",
                     HUSH_MAX_BODY);
            full_said = 1;
        }
        last_key = now;
        if (!typing) {
            typing = 1;
            BEST_EFFORT(in_room ? hush_group_typing(c, g_room_filter, 1) : hush_typing(c, peer, 1));
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
        return cli_die("info", e);
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, auth, sizeof auth);
    printf("device:           %s/%u\nregistration id:  %u\none-time prekeys: %u\nauth key:         %s\n"
           "database:         %s (integrity check passed)\n",
           user, dev, reg, stock, hex, cli_db);
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
        return cli_die("bundle", e);
    size_t cap = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
    char *out = malloc(cap);
    if (!out) {
        hush_free(b);
        return cli_die("bundle", HUSH_ERR_NOMEM);
    }
    sodium_bin2base64(out, cap, b, len, sodium_base64_VARIANT_ORIGINAL);
    printf("%s\n", out);
    free(out);
    hush_free(b);
    return 0;
}

int main(int argc, char **argv)
{
    /* Keys and plaintext live in this process's memory: no core file may hold them (a core
     * limit of 0, and not dumpable, which also covers a core_pattern pipe). */
    struct rlimit no_core = { 0, 0 };
    if (setrlimit(RLIMIT_CORE, &no_core) != 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        fprintf(stderr, "hush: warning: could not disable core dumps\n");
    if (sodium_init() < 0) {
        fprintf(stderr, "hush: libsodium failed to initialise\n");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        cli_usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        cli_usage(stdout);
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
        { "cancel", cmd_cancel },
        { "history", cmd_history }, { "safety", cmd_safety }, { "presence", cmd_presence },
        { "status", cmd_status },   { "info", cmd_info },     { "bundle", cmd_bundle }, { "demo", cmd_demo },
        { "link", cmd_link },       { "devices", cmd_devices }, { "recover", cmd_recover },
        { "relay", cmd_relay },     { "get", cmd_get },       { "group", cmd_group },
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmd, cmds[i].name))
            return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "hush: unknown command '%s'\n\n", cmd);
    cli_usage(stderr);
    return 2;
}
