/*
 * directory.c - which loop and connection each connected device is on (single node, in memory).
 * This is the narrow interface a multi-node backend replaces: register / unregister / lookup.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hmap.h"
#include "relay.h"

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct hmap g_devices; /* "user\0" + device(4) -> struct dir_entry* */
static struct hmap g_users;   /* "user" -> (intptr_t) connected device count */
static struct hmap g_provision; /* provisioning address -> struct dir_entry* (devices being linked) */

void directory_init(void)
{
    hmap_init(&g_devices, 1024);
    hmap_init(&g_users, 1024);
    hmap_init(&g_provision, 64);
}

void directory_free(void)
{
    hmap_free(&g_devices, free);
    hmap_free(&g_users, NULL);
    hmap_free(&g_provision, free);
}

int directory_register(const char *user, uint32_t device, int loop, uint64_t conn, struct dir_entry *old,
                       int *user_online)
{
    unsigned char k[RELAY_USERNAME_MAX + 8];
    size_t kl = relay_dev_key(k, user, device);
    struct dir_entry *e = malloc(sizeof *e);
    if (!e)
        return -1;
    e->loop = loop;
    e->conn = conn;
    *user_online = 0;
    pthread_mutex_lock(&g_mu);
    int err = 0;
    struct dir_entry *prev = hmap_put(&g_devices, k, kl, e, &err);
    int replaced = 0;
    if (err) {
        pthread_mutex_unlock(&g_mu);
        free(e);
        return -1;
    }
    if (prev) {
        *old = *prev;
        free(prev);
        replaced = 1;
    } else {
        intptr_t n = (intptr_t)hmap_gets(&g_users, user);
        hmap_put(&g_users, user, strlen(user), (void *)(n + 1), &err);
        *user_online = n == 0;
    }
    pthread_mutex_unlock(&g_mu);
    return replaced;
}

int directory_unregister(const char *user, uint32_t device, uint64_t conn, int *user_offline)
{
    unsigned char k[RELAY_USERNAME_MAX + 8];
    size_t kl = relay_dev_key(k, user, device);
    *user_offline = 0;
    pthread_mutex_lock(&g_mu);
    struct dir_entry *e = hmap_get(&g_devices, k, kl);
    int removed = 0;
    if (e && e->conn == conn) {
        free(hmap_del(&g_devices, k, kl));
        removed = 1;
        intptr_t n = (intptr_t)hmap_gets(&g_users, user);
        if (n <= 1) {
            hmap_del(&g_users, user, strlen(user));
            *user_offline = 1;
        } else {
            int err = 0;
            hmap_put(&g_users, user, strlen(user), (void *)(n - 1), &err);
        }
    }
    pthread_mutex_unlock(&g_mu);
    return removed;
}

int directory_lookup(const char *user, uint32_t device, struct dir_entry *out)
{
    unsigned char k[RELAY_USERNAME_MAX + 8];
    size_t kl = relay_dev_key(k, user, device);
    pthread_mutex_lock(&g_mu);
    struct dir_entry *e = hmap_get(&g_devices, k, kl);
    if (e)
        *out = *e;
    pthread_mutex_unlock(&g_mu);
    return e != NULL;
}

int directory_user_devices(const char *user)
{
    pthread_mutex_lock(&g_mu);
    intptr_t n = (intptr_t)hmap_gets(&g_users, user);
    pthread_mutex_unlock(&g_mu);
    return (int)n;
}

int directory_provision_put(const char *address, int loop, uint64_t conn)
{
    struct dir_entry *e = malloc(sizeof *e);
    if (!e)
        return -1;
    e->loop = loop;
    e->conn = conn;
    int err = 0;
    pthread_mutex_lock(&g_mu);
    struct dir_entry *prev = hmap_put(&g_provision, address, strlen(address), e, &err);
    pthread_mutex_unlock(&g_mu);
    free(prev); /* random 128-bit addresses: never in practice */
    if (err) {
        free(e);
        return -1;
    }
    return 0;
}

int directory_provision_take(const char *address, struct dir_entry *out)
{
    pthread_mutex_lock(&g_mu);
    struct dir_entry *e = hmap_del(&g_provision, address, strlen(address));
    pthread_mutex_unlock(&g_mu);
    if (!e)
        return 0;
    *out = *e;
    free(e);
    return 1;
}

void directory_provision_drop(const char *address, uint64_t conn)
{
    pthread_mutex_lock(&g_mu);
    struct dir_entry *e = hmap_get(&g_provision, address, strlen(address));
    if (e && e->conn == conn)
        free(hmap_del(&g_provision, address, strlen(address)));
    pthread_mutex_unlock(&g_mu);
}

int directory_provision_waiting(const char *address)
{
    pthread_mutex_lock(&g_mu);
    int there = hmap_get(&g_provision, address, strlen(address)) != NULL;
    pthread_mutex_unlock(&g_mu);
    return there;
}
