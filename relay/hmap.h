/* hmap.h - a chained hash map with binary keys, keyed SipHash (flooding-resistant). Not
 * thread-safe: each owner serialises its own map. */
#ifndef HUSH_HMAP_H
#define HUSH_HMAP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct hmap_node {
    struct hmap_node *next;
    uint64_t hash;
    void *val;
    size_t klen;
    unsigned char key[];
};

struct hmap {
    struct hmap_node **buckets;
    size_t nbuckets;
    size_t count;
    unsigned char sipkey[16];
};

int hmap_init(struct hmap *m, size_t nbuckets);
void *hmap_get(const struct hmap *m, const void *key, size_t klen);
/* Inserts or replaces; returns the previous value (or NULL). *err = -1 on allocation failure. */
void *hmap_put(struct hmap *m, const void *key, size_t klen, void *val, int *err);
/* Removes; returns the value (or NULL). */
void *hmap_del(struct hmap *m, const void *key, size_t klen);
void hmap_foreach(struct hmap *m, void (*fn)(const void *key, size_t klen, void *val, void *ctx), void *ctx);
void hmap_free(struct hmap *m, void (*free_val)(void *));

static inline void *hmap_gets(const struct hmap *m, const char *s) { return hmap_get(m, s, strlen(s)); }

#endif
