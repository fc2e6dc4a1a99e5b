/*
 * hush - the Hush command-line client.
 *
 * Today (libhush core, no relay yet) it offers:
 *   hush demo [--dir DIR] [--messages N]   two (and three) local parties talk end to end
 *   hush init --db PATH --user NAME [--device N]   create a device in a sealed database
 *   hush info --db PATH                     show the device and its prekey stock
 *   hush bundle --db PATH                   print this device's public key bundle (base64)
 * The networked commands (send, listen, chat, ...) come with the relay.
 *
 * The database key lives in PATH.key (32 random bytes, mode 0600, written atomically).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "hush.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hush <command> [options]\n"
            "\n"
            "commands:\n"
            "  demo [--dir DIR] [--messages N]\n"
            "        Two local parties (alice, bob) exchange key bundles, compare safety numbers\n"
            "        and talk end to end, with out-of-order and duplicate delivery; then a group\n"
            "        of three and an identity change. Databases go to DIR (default: a new\n"
            "        temporary directory) and are checked for plaintext at the end.\n"
            "  init --db PATH --user NAME [--device N]\n"
            "        Create a device (identity, prekeys, auth key) in a new sealed database.\n"
            "        The database key is written to PATH.key with mode 0600.\n"
            "  info --db PATH\n"
            "        Show the device's address, registration id and one-time prekey stock.\n"
            "  bundle --db PATH\n"
            "        Print this device's public prekey bundle, base64 (hands out one prekey).\n"
            "  help | --help\n"
            "\n"
            "Run `hush <command> --help` for one command. Exit status: 0 ok, 1 error, 2 usage.\n");
}

static int die(const char *what, hush_err e)
{
    fprintf(stderr, "hush: %s: %s\n", what, hush_strerror(e));
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* key file */

static int write_key_file(const char *path, const uint8_t key[HUSH_DB_KEY_BYTES])
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.new", path) >= (int)sizeof tmp)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, key, HUSH_DB_KEY_BYTES);
    if (n != HUSH_DB_KEY_BYTES || fsync(fd) != 0) {
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

static int read_key_file(const char *path, uint8_t key[HUSH_DB_KEY_BYTES])
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size != HUSH_DB_KEY_BYTES) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    if (st.st_mode & 077)
        fprintf(stderr, "hush: warning: %s is readable by others (chmod 600 it)\n", path);
    ssize_t n = read(fd, key, HUSH_DB_KEY_BYTES);
    close(fd);
    return n == HUSH_DB_KEY_BYTES ? 0 : -1;
}

static int open_db(const char *db, int create, hush_client **out)
{
    char keypath[PATH_MAX];
    if (snprintf(keypath, sizeof keypath, "%s.key", db) >= (int)sizeof keypath) {
        fprintf(stderr, "hush: path too long\n");
        return 1;
    }
    uint8_t key[HUSH_DB_KEY_BYTES];
    if (create) {
        if (access(db, F_OK) == 0 || access(keypath, F_OK) == 0) {
            fprintf(stderr, "hush: %s or its key file already exists; refusing to overwrite\n", db);
            return 1;
        }
        randombytes_buf(key, sizeof key);
        if (write_key_file(keypath, key) != 0) {
            fprintf(stderr, "hush: cannot write %s: %s\n", keypath, strerror(errno));
            return 1;
        }
    } else if (read_key_file(keypath, key) != 0) {
        fprintf(stderr, "hush: cannot read key file %s: %s\n", keypath, strerror(errno));
        return 1;
    }
    hush_err e = hush_client_open(db, key, NULL, out);
    sodium_memzero(key, sizeof key);
    if (e)
        return die(db, e);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* init / info / bundle */

static int parse_db_opts(int argc, char **argv, const char **db, const char **user, uint32_t *device, const char *cmd)
{
    static const struct option opts[] = {
        { "db", required_argument, NULL, 'd' },
        { "user", required_argument, NULL, 'u' },
        { "device", required_argument, NULL, 'n' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "d:u:n:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'd': *db = optarg; break;
        case 'u':
            if (!user)
                goto bad;
            *user = optarg;
            break;
        case 'n': {
            if (!device)
                goto bad;
            char *end = NULL;
            unsigned long v = strtoul(optarg, &end, 10);
            if (!end || *end || v == 0 || v > INT_MAX) {
                fprintf(stderr, "hush %s: --device must be 1..%d\n", cmd, INT_MAX);
                return 2;
            }
            *device = (uint32_t)v;
            break;
        }
        case 'h':
            usage(stdout);
            return -1;
        default: goto bad;
        }
    }
    if (!*db || (user && !*user) || optind != argc)
        goto bad;
    return 0;
bad:
    fprintf(stderr, "hush %s: missing or unknown option (see hush --help)\n", cmd);
    return 2;
}

static int cmd_init(int argc, char **argv)
{
    const char *db = NULL, *user = NULL;
    uint32_t device = 1;
    int r = parse_db_opts(argc, argv, &db, &user, &device, "init");
    if (r)
        return r < 0 ? 0 : r;
    hush_client *c = NULL;
    if ((r = open_db(db, 1, &c)))
        return r;
    hush_err e = hush_device_create(c, user, device);
    hush_client_close(c);
    if (e)
        return die("init", e);
    printf("created %s/%u in %s (key in %s.key, mode 0600)\n", user, device, db, db);
    return 0;
}

static int cmd_info(int argc, char **argv)
{
    const char *db = NULL;
    int r = parse_db_opts(argc, argv, &db, NULL, NULL, "info");
    if (r)
        return r < 0 ? 0 : r;
    hush_client *c = NULL;
    if ((r = open_db(db, 0, &c)))
        return r;
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
           "database:         ok (integrity check passed)\n",
           user, dev, reg, stock, hex);
    return 0;
}

static int cmd_bundle(int argc, char **argv)
{
    const char *db = NULL;
    int r = parse_db_opts(argc, argv, &db, NULL, NULL, "bundle");
    if (r)
        return r < 0 ? 0 : r;
    hush_client *c = NULL;
    if ((r = open_db(db, 0, &c)))
        return r;
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

/* ---------------------------------------------------------------------------------------- */
/* demo */

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
    if (!strcmp(cmd, "demo"))
        return cmd_demo(argc - 1, argv + 1);
    if (!strcmp(cmd, "init"))
        return cmd_init(argc - 1, argv + 1);
    if (!strcmp(cmd, "info"))
        return cmd_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "bundle"))
        return cmd_bundle(argc - 1, argv + 1);
    fprintf(stderr, "hush: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
