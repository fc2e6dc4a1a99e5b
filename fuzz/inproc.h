/* inproc.h - the relay inside a harness's process (inproc.c). */
#ifndef HUSH_FUZZ_INPROC_H
#define HUSH_FUZZ_INPROC_H

#include <stddef.h>

#include "relay_util.h"

/* Starts it (aborts on failure) with the harness defaults (one loop, durability normal, errors
 * only in the log) and then the `nset` key/value pairs of `set`; fills r->port. The database
 * <tmp>/<name>.db starts empty. blobs: also the blob thread (files). */
void fuzz_relay_inproc(struct relay_proc *r, const char *name, const char *const (*set)[2], size_t nset, int blobs);

#endif
