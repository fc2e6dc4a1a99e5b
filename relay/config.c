/*
 * config.c - hushd configuration: defaults, a "key = value" file, flags that override it.
 * The parser caps the file size and line length before it allocates anything, and reports
 * "file:line: problem" for every error.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"

#define CFG_MAX_FILE (64 * 1024)
#define CFG_MAX_LINE 1024

void cfg_defaults(struct relay_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->listen_host, sizeof c->listen_host, "127.0.0.1");
    c->listen_port = 7443;
    snprintf(c->metrics_host, sizeof c->metrics_host, "127.0.0.1");
    c->metrics_port = 7444;
    snprintf(c->db_path, sizeof c->db_path, "./var/hushd.db");
    c->workers = 0;
    c->registration = REG_OPEN;
    c->durability_full = 1;
    c->log_level = RLOG_INFO;
    c->max_frame_unauth = 16 * 1024;
    c->max_frame = 512 * 1024;
    c->max_envelope = 256 * 1024;
    c->max_recipients = 64;
    c->max_room_recipients = 1000;
    c->max_prekeys_per_upload = 100;
    c->delivery_window = 64;
    c->auth_timeout_s = 10;
    c->ping_interval_s = 30;
    c->idle_timeout_s = 45;
    c->ttl_days = 30;
    c->quota_messages = 10000;
    c->quota_bytes = 256ull * 1024 * 1024;
    c->fetch_burst = 20;
    c->fetch_refill_per_min = 10;
    c->fetch_total_burst = 100;
    c->fetch_total_per_min = 60;
    c->sender_share_percent = 25;
    c->prekeys_low_interval_s = 60;
    c->send_burst = 2000;
    c->send_refill_per_s = 1000;
    c->max_connections = 200000;
    c->max_batch = 1024;
    c->early_delivery_ms = 10;
    c->prekeys_low_threshold = 10;
    c->max_devices = 6;
    c->provision_timeout_s = 90;
    c->link_token_ttl_s = 600;
    c->provisions_per_min = 60;
    c->device_idle_days = 90;
    c->push_enabled = 1;
    c->push_nonurgent_period_s = 1200;
    c->push_min_interval_ms = 1000;
    c->push_max_per_hour = 60;
    c->push_host_burst = 100;
    c->push_host_per_s = 20;
    c->push_timeout_s = 10;
    c->push_ttl_s = 86400;
    c->push_max_attempts = 6;
    c->blob_enabled = 1;
    c->max_blob_bytes = 100ull << 20;
    c->blob_quota_bytes = 1ull << 30;
    c->blob_disk_reserve = 256ull << 20;
    c->blob_uploads_per_hour = 100;
    c->blob_ttl_days = 0;
}

static int parse_u64(const char *v, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!*v || !isdigit((unsigned char)*v))
        return -1;
    errno = 0;
    char *end = NULL;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || !end)
        return -1;
    /* optional size suffix */
    unsigned long long mul = 1;
    if (*end == 'k' || *end == 'K') mul = 1024;
    else if (*end == 'm' || *end == 'M') mul = 1024ull * 1024;
    else if (*end == 'g' || *end == 'G') mul = 1024ull * 1024 * 1024;
    if (mul != 1) {
        if (x > ULLONG_MAX / mul) /* checked before multiplying: 17179869185g must not wrap to 1g */
            return -1;
        x *= mul;
        end++;
    }
    if (*end || x < min || x > max)
        return -1;
    *out = x;
    return 0;
}

static int parse_hostport(const char *v, char *host, size_t hcap, int *port)
{
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v)
        return -1;
    size_t hl = (size_t)(colon - v);
    if (hl >= hcap)
        return -1;
    uint64_t p;
    if (parse_u64(colon + 1, 0, 65535, &p))
        return -1;
    memcpy(host, v, hl);
    host[hl] = '\0';
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') { /* [::1] */
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    *port = (int)p;
    return 0;
}

struct u32key {
    const char *key;
    size_t off;
    uint64_t min, max;
};

#define U32(k, field, lo, hi) { k, offsetof(struct relay_config, field), lo, hi }
static const struct u32key u32keys[] = {
    U32("max_frame_unauthenticated", max_frame_unauth, 1024, 1 << 20),
    U32("max_frame", max_frame, 4096, 64u << 20),
    U32("max_envelope", max_envelope, 1024, 32u << 20),
    U32("max_recipients", max_recipients, 1, 1024),
    U32("max_room_recipients", max_room_recipients, 1, 5000),
    U32("max_prekeys_per_upload", max_prekeys_per_upload, 1, 100),
    U32("delivery_window", delivery_window, 1, 4096),
    U32("auth_timeout", auth_timeout_s, 1, 300),
    U32("ping_interval", ping_interval_s, 1, 3600),
    U32("idle_timeout", idle_timeout_s, 2, 7200),
    U32("ttl_days", ttl_days, 1, 3650),
    U32("ttl_seconds", ttl_seconds, 0, 315360000),
    U32("quota_messages", quota_messages, 1, 100000000),
    U32("fetch_burst", fetch_burst, 1, 100000),
    U32("fetch_refill_per_min", fetch_refill_per_min, 1, 1000000),
    U32("fetch_total_burst", fetch_total_burst, 1, 1000000),
    U32("fetch_total_per_min", fetch_total_per_min, 1, 10000000),
    U32("sender_share_percent", sender_share_percent, 1, 100),
    U32("prekeys_low_interval", prekeys_low_interval_s, 0, 86400),
    U32("send_burst", send_burst, 1, 10000000),
    U32("send_refill_per_s", send_refill_per_s, 1, 10000000),
    U32("max_connections", max_connections, 1, 10000000),
    U32("max_batch", max_batch, 1, 100000),
    U32("early_delivery_ms", early_delivery_ms, 0, 600000),
    U32("prekeys_low_threshold", prekeys_low_threshold, 0, 100),
    U32("max_devices", max_devices, 1, 16),
    U32("provision_timeout", provision_timeout_s, 5, 600),
    U32("link_token_ttl", link_token_ttl_s, 30, 86400),
    U32("provisions_per_min", provisions_per_min, 1, 100000),
    U32("device_idle_days", device_idle_days, 0, 36500),
    U32("push_nonurgent_period", push_nonurgent_period_s, 0, 86400),
    U32("push_min_interval_ms", push_min_interval_ms, 0, 3600000),
    U32("push_max_per_hour", push_max_per_hour, 1, 3600),
    U32("push_host_burst", push_host_burst, 1, 100000),
    U32("push_host_per_s", push_host_per_s, 1, 100000),
    U32("push_timeout", push_timeout_s, 1, 300),
    U32("push_ttl", push_ttl_s, 0, 2419200),
    U32("push_max_attempts", push_max_attempts, 1, 20),
    U32("blob_uploads_per_hour", blob_uploads_per_hour, 1, 1000000),
    U32("blob_ttl_days", blob_ttl_days, 0, 3650),
};

static int parse_onoff(const char *v, int *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "1"))
        *out = 1;
    else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "0"))
        *out = 0;
    else
        return -1;
    return 0;
}

static int copy_str(char *dst, size_t cap, const char *v)
{
    if (strlen(v) >= cap)
        return -1;
    snprintf(dst, cap, "%s", v);
    return 0;
}

int cfg_set(struct relay_config *c, const char *key, const char *v, char *err, size_t errlen)
{
    uint64_t x;
    if (!strcmp(key, "listen")) {
        if (parse_hostport(v, c->listen_host, sizeof c->listen_host, &c->listen_port))
            goto bad;
    } else if (!strcmp(key, "metrics_listen")) {
        if (!strcmp(v, "off"))
            c->metrics_port = 0;
        else if (parse_hostport(v, c->metrics_host, sizeof c->metrics_host, &c->metrics_port))
            goto bad;
    } else if (!strcmp(key, "db")) {
        if (!*v || copy_str(c->db_path, sizeof c->db_path, v))
            goto bad;
    } else if (!strcmp(key, "public_url")) {
        /* comma-separated; each normalised to scheme://host:port (default ports 80 / 443) */
        c->n_public_urls = 0;
        char buf[1024];
        if (strlen(v) >= sizeof buf)
            goto bad;
        snprintf(buf, sizeof buf, "%s", v);
        for (char *save = NULL, *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
            int tls;
            const char *rest;
            if (!strncmp(tok, "wss://", 6))
                tls = 1, rest = tok + 6;
            else if (!strncmp(tok, "ws://", 5))
                tls = 0, rest = tok + 5;
            else
                goto bad;
            char host[200];
            size_t hl = rest[0] == '[' ? strcspn(rest, "]") + 1 : strcspn(rest, ":/"); /* [IPv6] */
            if (hl <= 1 || hl >= sizeof host || c->n_public_urls == 8 || (rest[0] == '[' && rest[hl - 1] != ']'))
                goto bad;
            memcpy(host, rest, hl);
            host[hl] = '\0';
            uint64_t port = tls ? 443 : 80;
            if (rest[hl] == ':') {
                char pbuf[8];
                size_t pl = strcspn(rest + hl + 1, "/");
                if (pl == 0 || pl >= sizeof pbuf)
                    goto bad;
                memcpy(pbuf, rest + hl + 1, pl);
                pbuf[pl] = '\0';
                if (parse_u64(pbuf, 1, 65535, &port))
                    goto bad;
            }
            if (hwire_origin(c->public_urls[c->n_public_urls], sizeof c->public_urls[0], tls, host, (int)port))
                goto bad;
            c->n_public_urls++;
        }
        if (!c->n_public_urls)
            goto bad;
    } else if (!strcmp(key, "tls_cert")) {
        if (copy_str(c->tls_cert, sizeof c->tls_cert, v))
            goto bad;
    } else if (!strcmp(key, "tls_key")) {
        if (copy_str(c->tls_key, sizeof c->tls_key, v))
            goto bad;
    } else if (!strcmp(key, "log_file")) {
        if (copy_str(c->log_file, sizeof c->log_file, v))
            goto bad;
    } else if (!strcmp(key, "workers")) {
        if (parse_u64(v, 0, RELAY_MAX_LOOPS, &x))
            goto bad;
        c->workers = (int)x;
    } else if (!strcmp(key, "registration")) {
        if (!strcmp(v, "open")) c->registration = REG_OPEN;
        else if (!strcmp(v, "invite")) c->registration = REG_INVITE;
        else if (!strcmp(v, "closed")) c->registration = REG_CLOSED;
        else goto bad;
    } else if (!strcmp(key, "durability")) {
        if (!strcmp(v, "full")) c->durability_full = 1;
        else if (!strcmp(v, "normal")) c->durability_full = 0;
        else goto bad;
    } else if (!strcmp(key, "log_level")) {
        if (!strcmp(v, "error")) c->log_level = RLOG_ERROR;
        else if (!strcmp(v, "warn")) c->log_level = RLOG_WARN;
        else if (!strcmp(v, "info")) c->log_level = RLOG_INFO;
        else if (!strcmp(v, "debug")) c->log_level = RLOG_DEBUG;
        else goto bad;
    } else if (!strcmp(key, "push")) {
        if (parse_onoff(v, &c->push_enabled))
            goto bad;
    } else if (!strcmp(key, "push_allow_http")) {
        if (parse_onoff(v, &c->push_allow_http))
            goto bad;
    } else if (!strcmp(key, "push_allow_private")) {
        if (parse_onoff(v, &c->push_allow_private))
            goto bad;
    } else if (!strcmp(key, "push_key")) {
        if (copy_str(c->push_key, sizeof c->push_key, v))
            goto bad;
    } else if (!strcmp(key, "push_ca_file")) {
        if (copy_str(c->push_ca_file, sizeof c->push_ca_file, v))
            goto bad;
    } else if (!strcmp(key, "push_contact")) {
        /* it goes into a JSON string: no quotes, backslashes or control characters */
        for (const char *q = v; *q; q++)
            if (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20)
                goto bad;
        if ((*v && strncmp(v, "mailto:", 7) && strncmp(v, "https://", 8)) ||
            copy_str(c->push_contact, sizeof c->push_contact, v))
            goto bad;
    } else if (!strcmp(key, "blobs")) {
        if (parse_onoff(v, &c->blob_enabled))
            goto bad;
    } else if (!strcmp(key, "blob_dir")) {
        if (copy_str(c->blob_dir, sizeof c->blob_dir, v))
            goto bad;
    } else if (!strcmp(key, "max_blob_bytes")) {
        if (parse_u64(v, 1, 1ull << 40, &x))
            goto bad;
        c->max_blob_bytes = x;
    } else if (!strcmp(key, "blob_quota_bytes")) {
        if (parse_u64(v, 1, 1ull << 50, &x))
            goto bad;
        c->blob_quota_bytes = x;
    } else if (!strcmp(key, "blob_disk_reserve")) {
        if (parse_u64(v, 0, 1ull << 50, &x))
            goto bad;
        c->blob_disk_reserve = x;
    } else if (!strcmp(key, "quota_bytes")) {
        if (parse_u64(v, 1024, 1ull << 40, &x))
            goto bad;
        c->quota_bytes = x;
    } else {
        for (size_t i = 0; i < sizeof u32keys / sizeof u32keys[0]; i++) {
            if (!strcmp(key, u32keys[i].key)) {
                if (parse_u64(v, u32keys[i].min, u32keys[i].max, &x)) {
                    snprintf(err, errlen, "%s: must be %llu..%llu", key, (unsigned long long)u32keys[i].min,
                             (unsigned long long)u32keys[i].max);
                    return -1;
                }
                *(uint32_t *)((char *)c + u32keys[i].off) = (uint32_t)x;
                return 0;
            }
        }
        snprintf(err, errlen, "unknown key '%s'", key);
        return -1;
    }
    return 0;
bad:
    snprintf(err, errlen, "%s: invalid value '%.64s'", key, v);
    return -1;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

int cfg_parse_text(struct relay_config *c, const char *text, size_t len, const char *name, char *err, size_t errlen)
{
    if (len > CFG_MAX_FILE) {
        snprintf(err, errlen, "%s: larger than %d bytes", name, CFG_MAX_FILE);
        return -1;
    }
    char line[CFG_MAX_LINE + 1];
    size_t pos = 0;
    int lineno = 0;
    while (pos < len) {
        lineno++;
        size_t start = pos;
        while (pos < len && text[pos] != '\n')
            pos++;
        size_t ll = pos - start;
        if (pos < len)
            pos++; /* newline */
        if (ll > CFG_MAX_LINE) {
            snprintf(err, errlen, "%s:%d: line longer than %d bytes", name, lineno, CFG_MAX_LINE);
            return -1;
        }
        memcpy(line, text + start, ll);
        line[ll] = '\0';
        if (memchr(line, '\0', ll)) {
            snprintf(err, errlen, "%s:%d: NUL byte", name, lineno);
            return -1;
        }
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%d: expected 'key = value'", name, lineno);
            return -1;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        size_t vl = strlen(val);
        if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
            val[vl - 1] = '\0';
            val++;
        }
        char e2[256];
        if (cfg_set(c, key, val, e2, sizeof e2)) {
            snprintf(err, errlen, "%s:%d: %s", name, lineno, e2);
            return -1;
        }
    }
    return 0;
}

int cfg_load_file(struct relay_config *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char *buf = malloc(CFG_MAX_FILE + 1);
    if (!buf) {
        fclose(f);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t n = fread(buf, 1, CFG_MAX_FILE + 1, f);
    int rd_err = ferror(f);
    fclose(f);
    int r;
    if (rd_err) {
        snprintf(err, errlen, "%s: read error", path);
        r = -1;
    } else {
        r = cfg_parse_text(c, buf, n, path, err, errlen);
    }
    free(buf);
    return r;
}

int cfg_validate(const struct relay_config *c, char *err, size_t errlen)
{
    if ((c->tls_cert[0] != 0) != (c->tls_key[0] != 0)) {
        snprintf(err, errlen, "tls_cert and tls_key must be set together");
        return -1;
    }
    if (c->listen_port == 0) {
        snprintf(err, errlen, "listen: port 0 is not allowed");
        return -1;
    }
    if (c->metrics_port && c->metrics_port == c->listen_port && !strcmp(c->metrics_host, c->listen_host)) {
        snprintf(err, errlen, "metrics_listen must differ from listen");
        return -1;
    }
    if (c->max_envelope + 1024 > c->max_frame) {
        snprintf(err, errlen, "max_frame must exceed max_envelope by at least 1024 bytes");
        return -1;
    }
    if (c->idle_timeout_s <= c->ping_interval_s) {
        snprintf(err, errlen, "idle_timeout must be longer than ping_interval");
        return -1;
    }
    return 0;
}

void cfg_print(const struct relay_config *c, FILE *f)
{
    static const char *reg[] = { "open", "invite", "closed" };
    static const char *lvl[] = { "error", "warn", "info", "debug" };
    fprintf(f, "listen = %s:%d\n", c->listen_host, c->listen_port);
    if (c->metrics_port)
        fprintf(f, "metrics_listen = %s:%d\n", c->metrics_host, c->metrics_port);
    else
        fprintf(f, "metrics_listen = off\n");
    fprintf(f, "db = %s\n", c->db_path);
    fprintf(f, "public_url = ");
    for (int i = 0; i < c->n_public_urls; i++)
        fprintf(f, "%s%s", i ? "," : "", c->public_urls[i]);
    fprintf(f, "%s\n", c->n_public_urls ? "" : "(from listen)");
    fprintf(f, "tls_cert = %s\ntls_key = %s\n", c->tls_cert, c->tls_key);
    fprintf(f, "workers = %d\nregistration = %s\ndurability = %s\nlog_level = %s\nlog_file = %s\n", c->workers,
            reg[c->registration], c->durability_full ? "full" : "normal", lvl[c->log_level], c->log_file);
    fprintf(f, "quota_bytes = %llu\n", (unsigned long long)c->quota_bytes);
    fprintf(f, "blobs = %s\nblob_dir = %s\nmax_blob_bytes = %llu\nblob_quota_bytes = %llu\nblob_disk_reserve = %llu\n",
            c->blob_enabled ? "on" : "off", c->blob_dir[0] ? c->blob_dir : "(beside db)",
            (unsigned long long)c->max_blob_bytes, (unsigned long long)c->blob_quota_bytes,
            (unsigned long long)c->blob_disk_reserve);
    fprintf(f, "push = %s\npush_key = %s\npush_contact = %s\npush_ca_file = %s\npush_allow_http = %s\n"
               "push_allow_private = %s\n",
            c->push_enabled ? "on" : "off", c->push_key[0] ? c->push_key : "(beside db)", c->push_contact,
            c->push_ca_file, c->push_allow_http ? "on" : "off", c->push_allow_private ? "on" : "off");
    for (size_t i = 0; i < sizeof u32keys / sizeof u32keys[0]; i++)
        fprintf(f, "%s = %u\n", u32keys[i].key, *(const uint32_t *)((const char *)c + u32keys[i].off));
}

int relay_origin_ok(const struct relay_config *c, const char *origin)
{
    if (!origin || !*origin)
        return 0;
    for (int i = 0; i < c->n_public_urls; i++)
        if (!strcmp(origin, c->public_urls[i]))
            return 1;
    /* and the listen address itself, for clients that reach it directly */
    int tls = c->tls_cert[0] != 0;
    const char *h = c->listen_host;
    int wildcard = !*h || !strcmp(h, "0.0.0.0") || !strcmp(h, "::") || !strcmp(h, "*") || !strcmp(h, "[::]");
    char want[HWIRE_ORIGIN_MAX + 1];
    if (!wildcard) {
        if (hwire_origin(want, sizeof want, tls, h, c->listen_port) == 0 && !strcmp(origin, want))
            return 1;
        if ((!strcmp(h, "127.0.0.1") || !strcmp(h, "::1") || !strcmp(h, "[::1]")) &&
            hwire_origin(want, sizeof want, tls, "localhost", c->listen_port) == 0 && !strcmp(origin, want))
            return 1;
        return 0;
    }
    /* a wildcard address has no name of its own: any host, but the scheme and port must match */
    const char *scheme = tls ? "wss://" : "ws://";
    size_t sl = strlen(scheme);
    if (strncmp(origin, scheme, sl) != 0)
        return 0;
    const char *colon = strrchr(origin + sl, ':'); /* the port's: an IPv6 host ends with ']' */
    char port[12];
    snprintf(port, sizeof port, "%d", c->listen_port);
    return colon && colon != origin + sl && !strcmp(colon + 1, port);
}
