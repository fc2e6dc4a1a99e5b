/*
 * log.c - one line per event: "2026-11-21T02:30:00.123Z level event key=value ...".
 * Callers pass identifiers and sizes only: never keys, tokens, signatures or envelopes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "relay.h"

static int g_level = RLOG_INFO;
static FILE *g_out;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

void rlog_init(int level, const char *path)
{
    g_level = level;
    g_out = stderr;
    if (path && *path) {
        FILE *f = fopen(path, "a");
        if (f) {
            setvbuf(f, NULL, _IOLBF, 0);
            g_out = f;
        } else {
            fprintf(stderr, "hushd: cannot open log file %s, logging to stderr\n", path);
        }
    }
}

void rlog(int level, const char *event, const char *fmt, ...)
{
    static const char *names[] = { "error", "warn", "info", "debug" };
    if (level > g_level)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[1024];
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s ", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, names[level], event);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    if ((size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    /* One event, one line: fold any newline a value might carry. */
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    pthread_mutex_lock(&g_mu);
    fprintf(g_out ? g_out : stderr, "%s\n", line);
    pthread_mutex_unlock(&g_mu);
}
