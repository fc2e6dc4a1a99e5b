/*
 * inbox.c - each event loop's inbox: the one way other threads (the storage thread, presence,
 * other loops) reach a loop. loop_post() appends an event and wakes the loop through the function
 * the loop registered; the loop takes the whole list at once (inbox_take). Knows nothing of
 * connections or libwebsockets, so storage and presence post results without depending on the
 * server that runs the loops.
 */
#include <pthread.h>
#include <stdlib.h>

#include "relay.h"

struct inbox {
    pthread_mutex_t mu;
    struct event *head, *tail;
    int open;                /* accepting events; the wake function may be called */
    void (*wake)(void *arg);
    void *arg;
};

static struct inbox g_inboxes[RELAY_MAX_LOOPS];
static atomic_int g_count;

int loop_count(void) { return atomic_load(&g_count); }

void inbox_open(int idx, void (*wake)(void *arg), void *arg)
{
    struct inbox *b = &g_inboxes[idx];
    pthread_mutex_init(&b->mu, NULL);
    b->head = b->tail = NULL;
    b->wake = wake;
    b->arg = arg;
    b->open = 1;
    if (idx + 1 > atomic_load(&g_count))
        atomic_store(&g_count, idx + 1);
}

void loop_post(int idx, struct event *e)
{
    if (idx < 0 || idx >= atomic_load(&g_count)) {
        event_free(e);
        return;
    }
    struct inbox *b = &g_inboxes[idx];
    e->next = NULL;
    pthread_mutex_lock(&b->mu);
    if (!b->open) {
        pthread_mutex_unlock(&b->mu);
        event_free(e);
        return;
    }
    int was_empty = b->head == NULL;
    if (b->tail)
        b->tail->next = e;
    else
        b->head = e;
    b->tail = e;
    /* One wake-up per batch: a non-empty inbox already has one pending (the loop takes the whole
     * list at once). Under the mutex: once the inbox is closed, nobody calls the wake function. */
    if (was_empty)
        b->wake(b->arg);
    pthread_mutex_unlock(&b->mu);
}

struct event *inbox_take(int idx)
{
    struct inbox *b = &g_inboxes[idx];
    pthread_mutex_lock(&b->mu);
    struct event *e = b->head;
    b->head = b->tail = NULL;
    pthread_mutex_unlock(&b->mu);
    return e;
}

void inbox_close(int idx)
{
    struct inbox *b = &g_inboxes[idx];
    pthread_mutex_lock(&b->mu);
    b->open = 0;
    pthread_mutex_unlock(&b->mu);
}

void inbox_free_all(void)
{
    int n = atomic_load(&g_count);
    atomic_store(&g_count, 0);
    for (int i = 0; i < n; i++) {
        struct inbox *b = &g_inboxes[i];
        struct event *e = b->head;
        while (e) {
            struct event *next = e->next;
            event_free(e);
            e = next;
        }
        b->head = b->tail = NULL;
        b->open = 0;
        pthread_mutex_destroy(&b->mu);
    }
}
