/* hmap.c - see hmap.h */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "hmap.h"

static uint64_t hash_of(const struct hmap *m, const void *key, size_t klen)
{
    uint8_t out[crypto_shorthash_BYTES];
    crypto_shorthash(out, key, klen, m->sipkey);
    uint64_t h;
    memcpy(&h, out, sizeof h);
    return h;
}

int hmap_init(struct hmap *m, size_t nbuckets)
{
    memset(m, 0, sizeof *m);
    size_t n = 16;
    while (n < nbuckets)
        n <<= 1;
    m->buckets = calloc(n, sizeof *m->buckets);
    if (!m->buckets)
        return -1;
    m->nbuckets = n;
    randombytes_buf(m->sipkey, sizeof m->sipkey);
    return 0;
}

static void grow(struct hmap *m)
{
    size_t n = m->nbuckets * 2;
    struct hmap_node **nb = calloc(n, sizeof *nb);
    if (!nb)
        return; /* keep working with longer chains */
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct hmap_node *x = m->buckets[i];
        while (x) {
            struct hmap_node *next = x->next;
            size_t j = x->hash & (n - 1);
            x->next = nb[j];
            nb[j] = x;
            x = next;
        }
    }
    free(m->buckets);
    m->buckets = nb;
    m->nbuckets = n;
}

static struct hmap_node **find(const struct hmap *m, const void *key, size_t klen, uint64_t h)
{
    struct hmap_node **p = &m->buckets[h & (m->nbuckets - 1)];
    while (*p && !((*p)->hash == h && (*p)->klen == klen && memcmp((*p)->key, key, klen) == 0))
        p = &(*p)->next;
    return p;
}

void *hmap_get(const struct hmap *m, const void *key, size_t klen)
{
    struct hmap_node **p = find(m, key, klen, hash_of(m, key, klen));
    return *p ? (*p)->val : NULL;
}

void *hmap_put(struct hmap *m, const void *key, size_t klen, void *val, int *err)
{
    if (err)
        *err = 0;
    uint64_t h = hash_of(m, key, klen);
    struct hmap_node **p = find(m, key, klen, h);
    if (*p) {
        void *old = (*p)->val;
        (*p)->val = val;
        return old;
    }
    struct hmap_node *x = malloc(sizeof *x + klen);
    if (!x) {
        if (err)
            *err = -1;
        return NULL;
    }
    x->next = NULL;
    x->hash = h;
    x->val = val;
    x->klen = klen;
    memcpy(x->key, key, klen);
    *p = x;
    if (++m->count > m->nbuckets)
        grow(m);
    return NULL;
}

void *hmap_del(struct hmap *m, const void *key, size_t klen)
{
    struct hmap_node **p = find(m, key, klen, hash_of(m, key, klen));
    if (!*p)
        return NULL;
    struct hmap_node *x = *p;
    void *v = x->val;
    *p = x->next;
    free(x);
    m->count--;
    return v;
}

void hmap_foreach(struct hmap *m, void (*fn)(const void *key, size_t klen, void *val, void *ctx), void *ctx)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct hmap_node *x = m->buckets[i];
        while (x) {
            struct hmap_node *next = x->next; /* fn may delete x */
            fn(x->key, x->klen, x->val, ctx);
            x = next;
        }
    }
}

void hmap_free(struct hmap *m, void (*free_val)(void *))
{
    if (!m->buckets)
        return;
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct hmap_node *x = m->buckets[i];
        while (x) {
            struct hmap_node *next = x->next;
            if (free_val)
                free_val(x->val);
            free(x);
            x = next;
        }
    }
    free(m->buckets);
    memset(m, 0, sizeof *m);
}
