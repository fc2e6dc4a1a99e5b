/*
 * hush_wire.h - constants and helpers of the relay wire protocol shared by hushd, libhush and the
 * tests (prefix hwire_). The schema itself is proto/hush.proto; docs/PROTOCOL.md is the reference.
 */
#ifndef HUSH_WIRE_H
#define HUSH_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define HWIRE_VERSION 1
#define HWIRE_CHALLENGE_BYTES 32
#define HWIRE_CLIENT_MSG_ID_BYTES 16
#define HWIRE_PURPOSE_LOGIN "login"
#define HWIRE_PURPOSE_REGISTER "register"
#define HWIRE_AUTH_MESSAGE_MAX 128

#define HWIRE_USERNAME_MIN 3
#define HWIRE_USERNAME_MAX 32

/* 1 if s is a valid username: 3..32 characters of [a-z0-9._-]. */
int hwire_valid_username(const char *s);

/*
 * Builds the byte string a device signs with its Ed25519 key to prove possession:
 *   "hush-auth-v1" 0x00 purpose 0x00 challenge(32) username 0x00 device_id(4 bytes, big endian)
 * Returns its length, or 0 if an argument is invalid or `cap` too small.
 */
size_t hwire_auth_message(uint8_t *out, size_t cap, const char *purpose, const uint8_t challenge[HWIRE_CHALLENGE_BYTES],
                          const char *username, uint32_t device_id);

#endif
