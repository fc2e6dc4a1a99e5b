package org.hush.sdk;

/**
 * A contact's identity key changed (a reinstall, a new phone, or an attack). Show both safety
 * numbers and let the user decide: {@link HushClient#acceptIdentity} or {@link HushClient#rejectIdentity}.
 */
public final class IdentityChange {
    private final String peer;
    private final int deviceId;
    private final String oldSafetyNumber;
    private final String newSafetyNumber;

    IdentityChange(String peer, int deviceId, String oldSafetyNumber, String newSafetyNumber) {
        this.peer = peer;
        this.deviceId = deviceId;
        this.oldSafetyNumber = oldSafetyNumber;
        this.newSafetyNumber = newSafetyNumber;
    }

    public String peer() {
        return peer;
    }

    public int deviceId() {
        return deviceId;
    }

    /** 60 digits: the safety number with the key on record. */
    public String oldSafetyNumber() {
        return oldSafetyNumber;
    }

    /** 60 digits: the safety number with the new key. */
    public String newSafetyNumber() {
        return newSafetyNumber;
    }
}
