/*
 * jobctx.c - what a storage job's handler answers through (struct jctx): events for the loops,
 * posted only after the batch commits, and the Result of the request. The handlers (accounts.c,
 * mailbox.c, presence.c) and the batch loop (storage.c) share it; it depends on neither.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "jobs.h"
#include "relay.h"

struct storage_env senv;

/* Prepends (e, loop) to a posting list; takes ownership of e (freed when memory runs out). */
static void push_posting(struct posting **list, int loop, struct event *e)
{
    if (!e)
        return;
    struct posting *p = malloc(sizeof *p);
    if (!p) {
        event_free(e);
        return;
    }
    p->loop = loop;
    p->ev = e;
    p->next = *list;
    *list = p;
}

void jctx_post(struct jctx *x, int loop, struct event *e) { push_posting(&x->posts, loop, e); }

void jctx_on_commit(struct jctx *x, void (*fn)(void *arg, int committed), void *arg)
{
    struct commit_hook *h = malloc(sizeof *h);
    if (!h) {
        fn(arg, 0);
        return;
    }
    h->fn = fn;
    h->arg = arg;
    h->next = x->hooks;
    x->hooks = h;
}

void jctx_run_hooks(struct commit_hook *list, int committed)
{
    struct commit_hook *rev = NULL;
    while (list) {
        struct commit_hook *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    while (rev) {
        struct commit_hook *n = rev->next;
        rev->fn(rev->arg, committed);
        free(rev);
        rev = n;
    }
}

void jctx_post_now(struct jctx *x, int loop, struct event *e) { push_posting(&x->now, loop, e); }

void jctx_result_to(struct jctx *x, int loop, uint64_t conn, uint64_t req_id, Hush__Result *r, int now)
{
    if (r->code != HUSH__ERROR_CODE__OK)
        metrics_error(r->code);
    if (!req_id)
        return;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = req_id;
    f.msg_case = HUSH__FRAME__MSG_RESULT;
    f.result = r;
    struct event *e = event_new(EV_SEND_FRAME, conn);
    if (!e)
        return;
    e->out = outbuf_from_frame(&f, 0);
    push_posting(now ? &x->now : &x->posts, loop, e);
}

void jctx_reply(struct jctx *x, const struct job *j, Hush__Result *r)
{
    jctx_result_to(x, j->loop, j->conn, j->req_id, r, 0);
}

void jctx_reply_code(struct jctx *x, const struct job *j, Hush__ErrorCode code, const char *msg)
{
    Hush__Result r = HUSH__RESULT__INIT;
    r.code = code;
    r.message = (char *)(msg ? msg : "");
    jctx_reply(x, j, &r);
}

/* A job hit a logical error: undo its writes and answer with `code`. */
void jctx_fail(struct jctx *x, const struct job *j, Hush__ErrorCode code, const char *msg)
{
    x->rollback = 1;
    jctx_reply_code(x, j, code, msg);
}
