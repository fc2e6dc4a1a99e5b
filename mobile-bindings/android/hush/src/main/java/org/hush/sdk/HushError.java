package org.hush.sdk;

/**
 * Every error libhush can report, with the same numbers as {@code hush_err} in {@code hush.h}, plus
 * {@link #CLOSED} and {@link #UNKNOWN}, which only this binding uses.
 */
public enum HushError {
    /** A null, out-of-range or malformed argument. */
    INVALID_ARG(1),
    /** Allocation failed. */
    NOMEM(2),
    /** The local database failed (I/O, disk full, locked); nothing was changed. */
    STORAGE(3),
    /** The database file is not a database, truncated or corrupt. */
    DB_CORRUPT(4),
    /** The database was written by a newer libhush. */
    DB_TOO_NEW(5),
    /** Wrong database key, or a sealed row failed authentication. */
    DB_KEY(6),
    /** The crypto provider failed its known-answer test: refusing to run. */
    SELFTEST(7),
    /** No local device yet: call {@link HushClient#createDevice}. */
    NO_DEVICE(8),
    /** {@link HushClient#createDevice} on a database that already has a device. */
    DEVICE_EXISTS(9),
    /** A key bundle is malformed. */
    BAD_BUNDLE(10),
    /** A key bundle's signed prekey signature does not verify. */
    BAD_SIGNATURE(11),
    /** No session with that device. */
    NO_SESSION(12),
    /** The message is malformed or fails authentication; it was dropped. */
    BAD_MESSAGE(13),
    /** The message was already received. */
    DUPLICATE(14),
    /** The message used a prekey this device no longer has. */
    STALE_PREKEY(15),
    /** The peer's identity key changed: see {@link HushClient#identityPending}. */
    IDENTITY_CHANGED(16),
    /** No such peer, message or pending change. */
    NOT_FOUND(17),
    /** Input over its documented size cap. */
    TOO_BIG(18),
    /** A scanned safety code does not match this conversation. */
    SAFETY_MISMATCH(19),
    /** No sender key for that group member. */
    NO_GROUP_SESSION(20),
    /** An unexpected library failure (a bug: please report it). */
    INTERNAL(21),
    /** The relay cannot be reached or the connection dropped. */
    NETWORK(22),
    /** The relay refused this device's login (wrong relay or keys). */
    AUTH_FAILED(23),
    /** Registration: the name is in use on this relay. */
    USERNAME_TAKEN(24),
    /** Registration closed, or the invite is missing, unknown or used. */
    REGISTRATION_REFUSED(25),
    /** The relay has no such user. */
    UNKNOWN_USER(26),
    /** A wait ran out. */
    TIMEOUT(27),
    /** The network is not running (not started, or stopped meanwhile). */
    NOT_RUNNING(28),
    /** The relay answered with an error this version does not expect. */
    RELAY(29),
    /** Another connection (another process, or a copy of this database) logged in as this device;
     * the network stopped. */
    SESSION_REPLACED(30),
    /** The account has the most devices the relay allows. */
    TOO_MANY_DEVICES(31),
    /** Linking a device failed: the link code expired or was used; start again with a new code. */
    LINK_FAILED(32),
    /** This device was removed from its account; the network stopped for good. */
    DEVICE_REMOVED(33),
    /** The database was changed outside libhush (rows removed, added or rolled back): refused.
     * Recover or link this device again on a new database. */
    DB_TAMPERED(34),
    /** (Reported through onError) the push service said this device's push endpoint no longer
     * exists: libhush forgot it. Ask the push distributor for a new one and pass it to
     * {@link HushClient#pushRegister}. */
    PUSH_GONE(35),
    /** A room: this user is not a member, or not an admin for that change. (Through onError: a
     * room message or change from someone not allowed to send it was dropped.) */
    NOT_ALLOWED(36),
    /** (Through onError) a room change that does not follow the room's current version (replayed,
     * missed, or made at the same time as another admin's) was rejected; the room stays as it was. */
    GROUP_CONFLICT(37),
    /** Binding only: the client was closed. */
    CLOSED(-1),
    /** Binding only: a code this version of the binding does not know (a newer libhush). */
    UNKNOWN(-2);

    private final int code;

    HushError(int code) {
        this.code = code;
    }

    /** The numeric {@code hush_err} value (negative for the binding's own codes). */
    public int code() {
        return code;
    }

    /** The constant for a numeric code; {@link #UNKNOWN} for a code this binding does not know. */
    public static HushError fromCode(int code) {
        for (HushError e : values()) {
            if (e.code == code) {
                return e;
            }
        }
        return UNKNOWN;
    }
}
