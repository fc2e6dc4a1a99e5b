/* cli.h - what the files of the `hush` command share (internal). */
#ifndef HUSH_CLI_H
#define HUSH_CLI_H

#include <limits.h>
#include <stdio.h>

#include "hush.h"

/* For calls whose failure is already reported elsewhere (warn_unused_result ignores a cast). */
#define BEST_EFFORT(call) \
    do {                  \
        if (call) {       \
        }                 \
    } while (0)

/* Prints "hush: WHAT: <error>" to stderr; returns 1 (the exit status). */
static inline int cli_die(const char *what, hush_err e)
{
    fprintf(stderr, "hush: %s: %s\n", what, hush_strerror(e));
    return 1;
}

/* keyfile.c: the database path (--db, $HUSH_DB, ~/.hush/hush.db) and its key */
extern char cli_db[PATH_MAX];
extern int cli_use_passphrase; /* init --passphrase */
/* Sets cli_db from the option (may be NULL). 0, or 1 after printing why not. */
int cli_resolve_db(const char *opt);
/* Opens the database; with create, makes a new key (file or passphrase salt) first. 0 or 1. */
int cli_open_db(int create, hush_client **out);

/* demo.c */
int cmd_demo(int argc, char **argv);

#endif
