/*
 * hushd - the Hush blind relay.
 *
 *   hushd [options]                 run the relay (defaults: ws://127.0.0.1:7443, ./var/hushd.db)
 *   hushd --check-config FILE       validate a configuration file and print the effective settings
 *   hushd invite [--count N]        mint single-use invite tokens (registration = invite)
 *   hushd user list | show NAME | delete NAME | remove-device NAME N   accounts, on the database
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "relay.h"
#include "server.h"

#define HUSHD_VERSION "0.1.0"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hushd [options]\n"
            "       hushd --check-config FILE\n"
            "       hushd invite [--config FILE] [--db PATH] [--count N]\n"
            "       hushd user [--config FILE] [--db PATH] list | show NAME | delete NAME | remove-device NAME N\n"
            "\n"
            "Runs the Hush relay. Settings come from the defaults, then the config file, then flags.\n"
            "\n"
            "options:\n"
            "  -c, --config FILE             configuration file (key = value lines, see docs/OPERATIONS.md)\n"
            "      --listen HOST:PORT        WebSocket address            (default 127.0.0.1:7443)\n"
            "      --metrics-listen HOST:PORT|off  /healthz and /metrics  (default 127.0.0.1:7444)\n"
            "      --db PATH                 SQLite database              (default ./var/hushd.db)\n"
            "      --workers N               event-loop threads, 0 = one per CPU (default 0)\n"
            "      --registration MODE       open | invite | closed       (default open)\n"
            "      --durability MODE         full (survives power loss) | normal (survives a crash)\n"
            "      --tls-cert FILE --tls-key FILE   serve wss:// (PEM files)\n"
            "      --log-level LEVEL         error | warn | info | debug  (default info)\n"
            "      --log-file FILE           append logs there instead of stderr\n"
            "      --set KEY=VALUE           any configuration key (repeatable)\n"
            "      --supervise               run under a supervising parent that restarts it on a crash\n"
            "      --print-config            print the effective configuration and exit\n"
            "      --check-config FILE       validate FILE, print the effective configuration, exit 0/1\n"
            "  -h, --help                    this text\n"
            "      --version\n"
            "\n"
            "Signals: SIGTERM/SIGINT stop gracefully (in-flight commits finish, sockets close, exit 0).\n");
}

static int mkdir_parent(const char *path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    char *dir = dirname(tmp);
    if (!strcmp(dir, ".") || !strcmp(dir, "/"))
        return 0;
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

struct flag {
    const char *key;
    const char *value;
};

static int run_relay(const struct relay_config *cfg)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* every thread inherits this: only sigwait below sees them */
    signal(SIGPIPE, SIG_IGN);

#if defined(__GLIBC__)
    /* Per-message buffers are freed and re-allocated all the time on the loop and storage
     * threads; glibc would hand the memory back (madvise) after each burst and fault it in again. */
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
#endif
    rlog_init(cfg->log_level, cfg->log_file);
    if (mkdir_parent(cfg->db_path) != 0) {
        rlog(RLOG_ERROR, "startup", "cannot create the directory of %s: %s", cfg->db_path, strerror(errno));
        return 1;
    }
    /* One relay per database: a second hushd on the same file would hand out the same one-time
     * prekeys and deliver the same mail twice. The lock goes with the process (a crash frees it). */
    int lockfd = open(cfg->db_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lockfd < 0 || flock(lockfd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        const char *why = e == EWOULDBLOCK ? "another hushd is already serving this database" : strerror(e);
        rlog(RLOG_ERROR, "startup", "database %s: %s", cfg->db_path, why);
        fprintf(stderr, "hushd: %s: %s\n", cfg->db_path, why);
        if (lockfd >= 0)
            close(lockfd);
        return 1;
    }
    directory_init();
    presence_init();
    char err[512];
    /* before storage: the storage thread hands it wake-ups from its first batch on */
    if (pusher_start(cfg, storage_push_gone, err, sizeof err) != 0) {
        rlog(RLOG_ERROR, "startup", "%s", err);
        fprintf(stderr, "hushd: %s\n", err);
        return 1;
    }
    if (storage_start(cfg, err, sizeof err) != 0) {
        rlog(RLOG_ERROR, "startup", "database: %s", err);
        fprintf(stderr, "hushd: %s\n", err);
        return 1;
    }
    if (blobs_start(cfg, err, sizeof err) != 0) {
        rlog(RLOG_ERROR, "startup", "%s", err);
        fprintf(stderr, "hushd: %s\n", err);
        pusher_stop();
        storage_stop();
        return 1;
    }
    if (http_start(cfg, err, sizeof err) != 0 || server_start(cfg, err, sizeof err) != 0) {
        rlog(RLOG_ERROR, "startup", "%s", err);
        fprintf(stderr, "hushd: %s\n", err);
        server_free();
        http_stop();
        blobs_stop();
        pusher_stop();
        storage_stop();
        return 1;
    }
    printf("hushd %s listening on %s://%s:%d (database %s, registration %s)\n", HUSHD_VERSION,
           cfg->tls_cert[0] ? "wss" : "ws", cfg->listen_host, cfg->listen_port, cfg->db_path,
           cfg->registration == REG_OPEN ? "open" : cfg->registration == REG_INVITE ? "invite" : "closed");
    if (cfg->metrics_port)
        printf("health and metrics: http://%s:%d/healthz  http://%s:%d/metrics\n", cfg->metrics_host, cfg->metrics_port,
               cfg->metrics_host, cfg->metrics_port);
    printf("clients connect to %s://%s:%d/ (protocol: docs/PROTOCOL.md); Ctrl-C or SIGTERM stops cleanly\n",
           cfg->tls_cert[0] ? "wss" : "ws", cfg->listen_host, cfg->listen_port);
    fflush(stdout);

    int sig = 0;
    for (;;) {
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            rlog(RLOG_INFO, "sighup", "ignored (restart to apply configuration changes)");
            continue;
        }
        break;
    }
    rlog(RLOG_INFO, "stopping", "signal=%d", sig);
    /* 1. stop taking new work; 2. let every submitted job commit and be answered; 3. close the
     * sockets (each gets a Closing frame); 4. close the database. */
    atomic_store(&g_stopping, 1);
    storage_quiesce(10000);
    server_shutdown();
    server_free();
    http_stop();
    blobs_stop();
    pusher_stop(); /* wake-ups still queued are dropped: their devices get the mail when they connect */
    storage_stop();
    presence_free();
    directory_free();
    rlog(RLOG_INFO, "stopped", "clean=1");
    close(lockfd);
    return 0;
}

/* The supervising parent: restarts the relay when it dies abnormally; forwards SIGTERM/SIGINT. */
static volatile sig_atomic_t g_child = 0, g_parent_stop = 0;

static void forward_signal(int sig)
{
    g_parent_stop = 1;
    if (g_child > 0)
        kill((pid_t)g_child, sig);
}

static int supervise(const struct relay_config *cfg)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int backoff = 1;
    for (;;) {
        time_t started = time(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            perror("hushd: fork");
            return 1;
        }
        if (pid == 0) {
            signal(SIGTERM, SIG_DFL);
            signal(SIGINT, SIG_DFL);
            _exit(run_relay(cfg));
        }
        g_child = pid;
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        g_child = 0;
        if (g_parent_stop || (WIFEXITED(status) && WEXITSTATUS(status) == 0))
            return WIFEXITED(status) ? WEXITSTATUS(status) : 0;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 1 && time(NULL) - started < 2) {
            fprintf(stderr, "hushd: relay failed at startup (exit 1); not restarting\n");
            return 1;
        }
        if (time(NULL) - started > 60)
            backoff = 1;
        fprintf(stderr, "hushd: relay died (%s %d); restarting in %d s\n", WIFSIGNALED(status) ? "signal" : "exit",
                WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), backoff);
        sleep((unsigned)backoff);
        if (backoff < 30)
            backoff *= 2;
        if (g_parent_stop)
            return 0;
    }
}

static int cmd_invite(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "db", required_argument, NULL, 'd' },
        { "count", required_argument, NULL, 'n' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct relay_config cfg;
    cfg_defaults(&cfg);
    const char *config = NULL, *db = NULL;
    long count = 1;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:d:n:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'd': db = optarg; break;
        case 'n': {
            char *end = NULL;
            count = strtol(optarg, &end, 10);
            if (!end || *end || count < 1 || count > 100) {
                fprintf(stderr, "hushd invite: --count must be 1..100\n");
                return 2;
            }
            break;
        }
        case 'h':
            printf("usage: hushd invite [--config FILE] [--db PATH] [--count N]\n"
                   "Mints N single-use invite tokens (printed one per line; only their hashes are stored).\n");
            return 0;
        default: return 2;
        }
    }
    char err[512];
    if (config && cfg_load_file(&cfg, config, err, sizeof err)) {
        fprintf(stderr, "hushd: %s\n", err);
        return 1;
    }
    if (db)
        snprintf(cfg.db_path, sizeof cfg.db_path, "%s", db);
    if (mkdir_parent(cfg.db_path) != 0) {
        fprintf(stderr, "hushd: cannot create the directory of %s\n", cfg.db_path);
        return 1;
    }
    if (storage_mint_invites(cfg.db_path, (int)count, stdout, err, sizeof err)) {
        fprintf(stderr, "hushd invite: %s\n", err);
        return 1;
    }
    return 0;
}

/* `hushd user list | show NAME | delete NAME | remove-device NAME N` */
static int cmd_user(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "db", required_argument, NULL, 'd' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    static const char usage[] =
        "usage: hushd user [--config FILE] [--db PATH] list | show NAME | delete NAME | remove-device NAME N\n"
        "  list                   every user: devices, last seen\n"
        "  show NAME              NAME's devices: created, last seen, messages waiting\n"
        "  delete NAME            the account: its devices, keys and waiting messages (the name can be taken again)\n"
        "  remove-device NAME N   one device and its waiting messages (not the account's last device)\n"
        "Safe while hushd runs: a connected device that was removed is disconnected at its next send.\n";
    struct relay_config cfg;
    cfg_defaults(&cfg);
    const char *config = NULL, *db = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:d:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'd': db = optarg; break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    int rest = argc - optind;
    const char *op = rest > 0 ? argv[optind] : "";
    const char *name = rest > 1 ? argv[optind + 1] : NULL;
    unsigned long dev = 0;
    int ok = (!strcmp(op, "list") && rest == 1) || ((!strcmp(op, "show") || !strcmp(op, "delete")) && rest == 2);
    if (!strcmp(op, "remove-device") && rest == 3) {
        char *end = NULL;
        dev = strtoul(argv[optind + 2], &end, 10);
        ok = end && !*end && dev >= 1 && dev <= INT32_MAX;
    }
    if (!ok || (name && !relay_valid_username(name))) {
        fputs(usage, stderr);
        return 2;
    }
    char err[512];
    if (config && cfg_load_file(&cfg, config, err, sizeof err)) {
        fprintf(stderr, "hushd: %s\n", err);
        return 1;
    }
    if (db)
        snprintf(cfg.db_path, sizeof cfg.db_path, "%s", db);
    if (access(cfg.db_path, F_OK) != 0) {
        fprintf(stderr, "hushd user: no database at %s (--db PATH or --config FILE)\n", cfg.db_path);
        return 1;
    }
    int r = storage_user_admin(cfg.db_path, op, name, (uint32_t)dev, stdout, err, sizeof err);
    if (r)
        fprintf(stderr, "hushd user %s: %s\n", op, err);
    return r ? 1 : 0;
}

int main(int argc, char **argv)
{
    /* Keys and plaintext live in this process's memory: no core file may hold them (a core
     * limit of 0, and not dumpable, which also covers a core_pattern pipe). */
    struct rlimit no_core = { 0, 0 };
    if (setrlimit(RLIMIT_CORE, &no_core) != 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        fprintf(stderr, "hushd: warning: could not disable core dumps\n");
    if (sodium_init() < 0) {
        fprintf(stderr, "hushd: libsodium failed to initialise\n");
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "invite"))
        return cmd_invite(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "user"))
        return cmd_user(argc - 1, argv + 1);

    enum { O_LISTEN = 256, O_METRICS, O_DB, O_WORKERS, O_REG, O_DUR, O_CERT, O_KEY, O_LEVEL, O_LOGFILE, O_SET,
           O_SUPERVISE, O_PRINT, O_CHECK, O_VERSION };
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "listen", required_argument, NULL, O_LISTEN },
        { "metrics-listen", required_argument, NULL, O_METRICS },
        { "db", required_argument, NULL, O_DB },
        { "workers", required_argument, NULL, O_WORKERS },
        { "registration", required_argument, NULL, O_REG },
        { "durability", required_argument, NULL, O_DUR },
        { "tls-cert", required_argument, NULL, O_CERT },
        { "tls-key", required_argument, NULL, O_KEY },
        { "log-level", required_argument, NULL, O_LEVEL },
        { "log-file", required_argument, NULL, O_LOGFILE },
        { "set", required_argument, NULL, O_SET },
        { "supervise", no_argument, NULL, O_SUPERVISE },
        { "print-config", no_argument, NULL, O_PRINT },
        { "check-config", required_argument, NULL, O_CHECK },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, O_VERSION },
        { NULL, 0, NULL, 0 },
    };
    static const char *const keys[] = { [O_LISTEN - 256] = "listen", [O_METRICS - 256] = "metrics_listen",
                                        [O_DB - 256] = "db", [O_WORKERS - 256] = "workers",
                                        [O_REG - 256] = "registration", [O_DUR - 256] = "durability",
                                        [O_CERT - 256] = "tls_cert", [O_KEY - 256] = "tls_key",
                                        [O_LEVEL - 256] = "log_level", [O_LOGFILE - 256] = "log_file" };
    struct flag flags[64];
    int nflags = 0;
    char setbuf[64][256];
    const char *config = NULL, *check = NULL;
    int supervise_mode = 0, print = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (ch == 'c') {
            config = optarg;
        } else if (ch == 'h') {
            usage(stdout);
            return 0;
        } else if (ch == O_VERSION) {
            printf("hushd %s\n", HUSHD_VERSION);
            return 0;
        } else if (ch == O_SUPERVISE) {
            supervise_mode = 1;
        } else if (ch == O_PRINT) {
            print = 1;
        } else if (ch == O_CHECK) {
            check = optarg;
        } else if (ch >= O_LISTEN && ch <= O_LOGFILE) {
            if (nflags == 64)
                return 2;
            flags[nflags++] = (struct flag){ keys[ch - 256], optarg };
        } else if (ch == O_SET) {
            if (nflags == 64)
                return 2;
            snprintf(setbuf[nflags], sizeof setbuf[nflags], "%s", optarg);
            char *eq = strchr(setbuf[nflags], '=');
            if (!eq) {
                fprintf(stderr, "hushd: --set needs KEY=VALUE\n");
                return 2;
            }
            *eq = '\0';
            flags[nflags] = (struct flag){ setbuf[nflags], eq + 1 };
            nflags++;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "hushd: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    struct relay_config cfg;
    cfg_defaults(&cfg);
    char err[512];
    if (check)
        config = check;
    if (config && cfg_load_file(&cfg, config, err, sizeof err)) {
        fprintf(stderr, "hushd: %s\n", err);
        return 1;
    }
    for (int i = 0; i < nflags; i++) {
        if (cfg_set(&cfg, flags[i].key, flags[i].value, err, sizeof err)) {
            fprintf(stderr, "hushd: --%s: %s\n", flags[i].key, err);
            return 1;
        }
    }
    if (cfg_validate(&cfg, err, sizeof err)) {
        fprintf(stderr, "hushd: %s: %s\n", config ? config : "configuration", err);
        return 1;
    }
    if (check || print) {
        if (check)
            printf("# %s: ok\n", check);
        cfg_print(&cfg, stdout);
        return 0;
    }
    return supervise_mode ? supervise(&cfg) : run_relay(&cfg);
}
