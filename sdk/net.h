/* net.h - libhush's network thread (net.c), internal. */
#ifndef HUSH_NET_H
#define HUSH_NET_H

#include "internal.h"

#define PRESENCE_ALLOW 1
#define PRESENCE_SUBSCRIBE 2

/* messaging.c */
hush_err hsdk_set_message_state(hush_client *c, const uint8_t mid[16], int state);
/* Records that a receipt (state 2 delivered, 3 read) is owed for mid; caller holds the lock. */
hush_err hsdk_queue_receipt(hush_client *c, const char *peer, int state, const uint8_t mid[16]);
/* Turns owed receipts into outbox rows, one per (peer, state) per 256 ids; caller holds the lock. */
hush_err hsdk_flush_receipts(hush_client *c, int *queued);

/* keys.c: replenishing and rotating keys */
hush_err hsdk_generate_pre_keys(hush_client *c, uint32_t n);
/* One-time prekeys stored locally (the last-resort key not counted), and those never handed out
 * in an upload. Caller holds the lock. */
hush_err hsdk_prekey_stock(hush_client *c, uint32_t *unpublished, uint32_t *total);
/* Marks one-time prekeys as not handed out again (hush_prekey_upload marked them): for an upload
 * the relay refused, which stores nothing. Caller holds the lock. */
hush_err hsdk_unpublish_pre_keys(hush_client *c, const uint32_t *ids, size_t n);
/* Makes a new signed prekey current if the current one is older than max_age_ms; retires (deletes)
 * non-current signed prekeys older than grace_ms. *rotated = 1 if a new one was made. */
hush_err hsdk_rotate_signed_pre_key(hush_client *c, uint64_t max_age_ms, uint64_t grace_ms, int *rotated);

#endif
