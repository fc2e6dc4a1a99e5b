/*
 * demo.c - `hush demo`: two local devices exchange messages through the SDK alone (no relay):
 * X3DH from an exported bundle, Double Ratchet both ways, history sealed at rest, a check that no
 * plaintext reached the database files.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "hush.h"
#include "cli.h"

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
        return cli_die(p->name, e);
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
        return cli_die("bundle exchange", e);
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

int cmd_demo(int argc, char **argv)
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
            printf("usage: hush demo [--dir DIR] [--messages N]\n"
                   "An end-to-end demo between local parties, no relay needed: DIR keeps their databases\n"
                   "(default: a new temporary directory), N extra messages each way (default 5).\n");
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
        return cli_die("first message", e);
    if ((e = hush_safety_number(alice.c, "bob", 1, sa)) || (e = hush_safety_number(bob.c, "alice", 1, sb)))
        return cli_die("safety number", e);
    printf("\n2. Safety numbers (compare them out of band)\n");
    printf("  alice sees: %.5s %.5s %.5s %.5s %.5s %.5s\n", sa, sa + 5, sa + 10, sa + 15, sa + 20, sa + 25);
    printf("              %.5s %.5s %.5s %.5s %.5s %.5s\n", sa + 30, sa + 35, sa + 40, sa + 45, sa + 50, sa + 55);
    printf("  bob sees:   %.5s %.5s %.5s %.5s %.5s %.5s\n", sb, sb + 5, sb + 10, sb + 15, sb + 20, sb + 25);
    printf("              %.5s %.5s %.5s %.5s %.5s %.5s\n", sb + 30, sb + 35, sb + 40, sb + 45, sb + 50, sb + 55);
    printf("  %s\n", strcmp(sa, sb) == 0 ? "match: no one is in the middle" : "MISMATCH");

    printf("\n3. A conversation (Double Ratchet), delivered out of order and twice\n");
    if ((e = demo_send(&bob, &alice, "hi alice! got your message", &env[1], &len[1])) ||
        (e = demo_recv(&alice, &bob, env[1], len[1])))
        return cli_die("reply", e);
    if ((e = demo_send(&alice, &bob, "one", &env[2], &len[2])) || (e = demo_send(&alice, &bob, "two", &env[3], &len[3])) ||
        (e = demo_send(&alice, &bob, "three", &env[4], &len[4])))
        return cli_die("send", e);
    if ((e = demo_recv(&bob, &alice, env[4], len[4])) || (e = demo_recv(&bob, &alice, env[2], len[2])) ||
        (e = demo_recv(&bob, &alice, env[3], len[3])) || (e = demo_recv(&bob, &alice, env[3], len[3])))
        return cli_die("receive", e);
    for (long i = 0; i < extra; i++) {
        char text[64];
        snprintf(text, sizeof text, "message %ld", i + 1);
        struct party *s = i % 2 ? &alice : &bob, *d = i % 2 ? &bob : &alice;
        uint8_t *x = NULL;
        size_t xl = 0;
        if ((e = demo_send(s, d, text, &x, &xl)) || (e = demo_recv(d, s, x, xl)))
            return cli_die("conversation", e);
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
            return cli_die("group key", e);
        hush_free(d);
    }
    const char *gtext = "dinner at eight?";
    if ((e = hush_group_encrypt(alice.c, "friends", (const uint8_t *)gtext, strlen(gtext), NULL, &env[5], &len[5])))
        return cli_die("group send", e);
    printf("  alice -> group  %s [one %zu-byte envelope for all]\n", gtext, len[5]);
    if ((e = demo_recv(&bob, &alice, env[5], len[5])) || (e = demo_recv(&carol, &alice, env[5], len[5])))
        return cli_die("group receive", e);

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
        return cli_die("send", e);
    hush_message *m = NULL;
    e = hush_decrypt(alice.c, "bob", 1, env[6], len[6], &m);
    if (e != HUSH_ERR_IDENTITY_CHANGED)
        return cli_die("expected an identity change", e);
    char old_sn[HUSH_SAFETY_NUMBER_LEN + 1], new_sn[HUSH_SAFETY_NUMBER_LEN + 1];
    if ((e = hush_identity_pending(alice.c, "bob", 1, old_sn, new_sn)))
        return cli_die("identity pending", e);
    printf("  alice: bob's safety number changed\n    old %s\n    new %s\n", old_sn, new_sn);
    printf("  alice accepts after checking with bob in person\n");
    if ((e = hush_identity_accept(alice.c, "bob", 1)) || (e = demo_recv(&alice, &bob, env[6], len[6])))
        return cli_die("accept", e);

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
