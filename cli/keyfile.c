/*
 * keyfile.c - where the CLI's database is and how its key is kept: PATH.key (32 random bytes, mode
 * 0600, written atomically), or a key derived from a passphrase with Argon2id, the salt and cost
 * in PATH.salt. Key material is wiped after use; a file others may read is refused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <sodium.h>

#include "hush.h"
#include "cli.h"

char cli_db[PATH_MAX];

int cli_resolve_db(const char *opt)
{
    if (opt) {
        snprintf(cli_db, sizeof cli_db, "%s", opt);
        return 0;
    }
    const char *env = getenv("HUSH_DB");
    if (env && *env) {
        snprintf(cli_db, sizeof cli_db, "%s", env);
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
    snprintf(cli_db, sizeof cli_db, "%s/hush.db", dir);
    return 0;
}

/* Writes a new file (mode 0600) under a temporary name, fsyncs it, renames it into place and
 * fsyncs the directory, so after a crash the file is either absent or whole. */
static int write_file_atomic(const char *path, const uint8_t *data, size_t len)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
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
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -1;
    int rc = fsync(dfd);
    close(dfd);
    return rc;
}

/* Reads a small file whole into buf (at most cap bytes); refuses one that others may read. Returns
 * its length, or -1 (message printed). */
static long read_private(const char *path, uint8_t *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "hush: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > cap) {
        fprintf(stderr, "hush: %s is not a key file this program wrote\n", path);
        close(fd);
        return -1;
    }
    if (st.st_mode & 077) {
        fprintf(stderr, "hush: %s can be read by other users (mode %03o): refusing to use it. If nobody else "
                        "read it, run `chmod 600 %s`; otherwise treat the key as known to them\n",
                path, (unsigned)(st.st_mode & 0777), path);
        close(fd);
        return -1;
    }
    ssize_t n = read(fd, buf, cap);
    close(fd);
    if (n != (ssize_t)st.st_size) {
        fprintf(stderr, "hush: cannot read %s\n", path);
        return -1;
    }
    return (long)n;
}

/*
 * The passphrase key. PATH.salt records how the key was derived, so the cost can be raised later
 * without locking anyone out:
 *     hush-argon2id v1 ops=OPSLIMIT mem=MEMLIMIT
 *     SALT (32 hex digits)
 * A 16-byte file is the first version's: a raw salt with libsodium's MODERATE limits.
 */
struct kdf {
    uint8_t salt[crypto_pwhash_SALTBYTES];
    unsigned long long ops;
    size_t mem;
};

static int kdf_parse(const uint8_t *b, long n, struct kdf *k)
{
    if (n == crypto_pwhash_SALTBYTES) { /* the first format */
        memcpy(k->salt, b, sizeof k->salt);
        k->ops = crypto_pwhash_OPSLIMIT_MODERATE;
        k->mem = crypto_pwhash_MEMLIMIT_MODERATE;
        return 0;
    }
    char text[256], hex[64];
    if (n <= 0 || n >= (long)sizeof text)
        return -1;
    memcpy(text, b, (size_t)n);
    text[n] = '\0';
    unsigned long long ops = 0, mem = 0;
    size_t got = 0;
    if (sscanf(text, "hush-argon2id v1 ops=%llu mem=%llu %63s", &ops, &mem, hex) != 3 ||
        sodium_hex2bin(k->salt, sizeof k->salt, hex, strlen(hex), NULL, &got, NULL) != 0 || got != sizeof k->salt ||
        ops < crypto_pwhash_OPSLIMIT_MIN || ops > crypto_pwhash_OPSLIMIT_MAX || mem < crypto_pwhash_MEMLIMIT_MIN ||
        mem > (1ull << 34))
        return -1;
    k->ops = ops;
    k->mem = (size_t)mem;
    return 0;
}

static int kdf_derive(const char *pass, const struct kdf *k, uint8_t key[HUSH_DB_KEY_BYTES])
{
    return crypto_pwhash(key, HUSH_DB_KEY_BYTES, pass, strlen(pass), k->salt, k->ops, k->mem,
                         crypto_pwhash_ALG_ARGON2ID13);
}

/* The passphrase: $HUSH_PASSPHRASE (for scripts: the environment can be read by other processes
 * of the same user and may end up in logs), else asked on the terminal without echo (twice when
 * it is new). Empty when there is neither. */
static int get_passphrase(char *out, size_t cap, int confirm)
{
    const char *env = getenv("HUSH_PASSPHRASE");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return 0;
    }
    out[0] = '\0';
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct termios old, t;
    int have = tcgetattr(fd, &old) == 0;
    for (int round = 0; round < (confirm ? 2 : 1); round++) {
        char buf[512];
        const char *prompt = round ? "Repeat the passphrase: " : "Passphrase for the database: ";
        if (write(fd, prompt, strlen(prompt)) < 0) {
            /* nothing to do: the read below decides */
        }
        if (have) {
            t = old;
            t.c_lflag &= (tcflag_t) ~(ECHO | ECHONL);
            tcsetattr(fd, TCSANOW, &t);
        }
        ssize_t n = 0, r;
        while ((size_t)n < sizeof buf - 1 && (r = read(fd, buf + n, 1)) == 1 && buf[n] != '\n')
            n++;
        buf[n] = '\0';
        if (have)
            tcsetattr(fd, TCSANOW, &old);
        if (write(fd, "\n", 1) < 0) {
            /* the prompt's line end only */
        }
        if (round == 0) {
            snprintf(out, cap, "%s", buf);
        } else if (strcmp(out, buf) != 0) {
            fprintf(stderr, "hush: the passphrases differ\n");
            sodium_memzero(out, cap);
            out[0] = '\0';
        }
        sodium_memzero(buf, sizeof buf);
    }
    close(fd);
    return out[0] ? 0 : -1;
}

int cli_use_passphrase; /* init --passphrase */

/* Opens the database; with create, makes a new key (file or passphrase salt) first. */
int cli_open_db(int create, hush_client **out)
{
    char keypath[PATH_MAX + 8], saltpath[PATH_MAX + 8];
    snprintf(keypath, sizeof keypath, "%s.key", cli_db);
    snprintf(saltpath, sizeof saltpath, "%s.salt", cli_db);
    uint8_t key[HUSH_DB_KEY_BYTES];
    char pass[512];
    if (create) {
        if (access(cli_db, F_OK) == 0 || access(keypath, F_OK) == 0 || access(saltpath, F_OK) == 0) {
            fprintf(stderr, "hush: %s (or its key) already exists; refusing to overwrite\n", cli_db);
            return 1;
        }
        const char *env = getenv("HUSH_PASSPHRASE");
        if (cli_use_passphrase || (env && *env)) {
            if (get_passphrase(pass, sizeof pass, 1) != 0) {
                fprintf(stderr, "hush: no passphrase (set HUSH_PASSPHRASE, or run on a terminal)\n");
                return 1;
            }
            struct kdf k = { .ops = crypto_pwhash_OPSLIMIT_MODERATE, .mem = crypto_pwhash_MEMLIMIT_MODERATE };
            randombytes_buf(k.salt, sizeof k.salt);
            char hex[2 * crypto_pwhash_SALTBYTES + 1], text[256];
            sodium_bin2hex(hex, sizeof hex, k.salt, sizeof k.salt);
            int n = snprintf(text, sizeof text, "hush-argon2id v1 ops=%llu mem=%zu\n%s\n", k.ops, k.mem, hex);
            int bad = write_file_atomic(saltpath, (const uint8_t *)text, (size_t)n) != 0 || kdf_derive(pass, &k, key) != 0;
            sodium_memzero(pass, sizeof pass);
            if (bad) {
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
        uint8_t buf[256];
        struct kdf k;
        long n = read_private(saltpath, buf, sizeof buf);
        if (n < 0)
            return 1;
        if (kdf_parse(buf, n, &k) != 0) {
            fprintf(stderr, "hush: %s is not a salt file this program wrote\n", saltpath);
            return 1;
        }
        if (get_passphrase(pass, sizeof pass, 0) != 0) {
            fprintf(stderr, "hush: %s is protected by a passphrase: run on a terminal, or set HUSH_PASSPHRASE\n", cli_db);
            return 1;
        }
        int bad = kdf_derive(pass, &k, key) != 0;
        sodium_memzero(pass, sizeof pass);
        if (bad) {
            fprintf(stderr, "hush: cannot derive the key from %s (out of memory?)\n", saltpath);
            return 1;
        }
    } else if (access(keypath, F_OK) != 0) {
        if (access(cli_db, F_OK) != 0)
            fprintf(stderr, "hush: no database at %s: run `hush init --relay URL --user NAME` first\n", cli_db);
        else
            fprintf(stderr, "hush: the key file %s is missing\n", keypath);
        return 1;
    } else {
        uint8_t buf[64];
        long n = read_private(keypath, buf, sizeof buf);
        if (n != (long)sizeof key) {
            if (n >= 0)
                fprintf(stderr, "hush: %s is not a key file this program wrote\n", keypath);
            sodium_memzero(buf, sizeof buf);
            return 1;
        }
        memcpy(key, buf, sizeof key);
        sodium_memzero(buf, sizeof buf);
    }
    hush_err e = hush_client_open(cli_db, key, NULL, out);
    sodium_memzero(key, sizeof key);
    if (e == HUSH_ERR_DB_KEY)
        fprintf(stderr, "hush: %s: wrong key or passphrase\n", cli_db);
    else if (e == HUSH_ERR_DB_TAMPERED)
        fprintf(stderr, "hush: %s: %s.\nDo not use it: move it away, then make this device again with "
                        "'hush link' (another of your devices confirms) or 'hush recover' (your recovery code).\n",
                cli_db, hush_strerror(e));
    else if (e)
        return cli_die(cli_db, e);
    return e ? 1 : 0;
}
