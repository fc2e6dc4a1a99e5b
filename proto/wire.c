/* wire.c - helpers of the relay wire protocol (see hush_wire.h). */
#include <string.h>

#include "hush_wire.h"

size_t hwire_auth_message(uint8_t *out, size_t cap, const char *purpose, const uint8_t challenge[HWIRE_CHALLENGE_BYTES],
                          const char *username, uint32_t device_id)
{
    static const char label[] = "hush-auth-v1";
    if (!out || !purpose || !challenge || !username)
        return 0;
    size_t pl = strlen(purpose), ul = strlen(username);
    size_t n = sizeof label + pl + 1 + HWIRE_CHALLENGE_BYTES + ul + 1 + 4;
    if (n > cap || pl > 16 || ul > 64)
        return 0;
    uint8_t *p = out;
    memcpy(p, label, sizeof label); /* includes the NUL separator */
    p += sizeof label;
    memcpy(p, purpose, pl);
    p += pl;
    *p++ = 0;
    memcpy(p, challenge, HWIRE_CHALLENGE_BYTES);
    p += HWIRE_CHALLENGE_BYTES;
    memcpy(p, username, ul);
    p += ul;
    *p++ = 0;
    *p++ = (uint8_t)(device_id >> 24);
    *p++ = (uint8_t)(device_id >> 16);
    *p++ = (uint8_t)(device_id >> 8);
    *p++ = (uint8_t)device_id;
    return (size_t)(p - out);
}

int hwire_valid_username(const char *s)
{
    if (!s)
        return 0;
    size_t n = strnlen(s, HWIRE_USERNAME_MAX + 1);
    if (n < HWIRE_USERNAME_MIN || n > HWIRE_USERNAME_MAX || s[0] == '-')
        return 0; /* a leading '-' would read as an option on command lines */
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}
