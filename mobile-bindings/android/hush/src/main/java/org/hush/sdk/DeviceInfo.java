package org.hush.sdk;

/** One device of this account, as the relay lists it ({@link HushClient#devices}). Immutable. */
public final class DeviceInfo {
    private final int deviceId;
    private final String name;
    private final long createdMillis;
    private final long lastSeenMillis;
    private final boolean online;
    private final boolean thisDevice;

    /** Called by the native code. */
    DeviceInfo(int deviceId, String name, long createdMillis, long lastSeenMillis, boolean online, boolean thisDevice) {
        this.deviceId = deviceId;
        this.name = name;
        this.createdMillis = createdMillis;
        this.lastSeenMillis = lastSeenMillis;
        this.online = online;
        this.thisDevice = thisDevice;
    }

    public int deviceId() {
        return deviceId;
    }

    /** The name it registered with; empty when it has none. The relay keeps it sealed. */
    public String name() {
        return name;
    }

    public long createdMillis() {
        return createdMillis;
    }

    /** Its last login or logout (0: never). */
    public long lastSeenMillis() {
        return lastSeenMillis;
    }

    /** Connected to the relay now. */
    public boolean isOnline() {
        return online;
    }

    public boolean isThisDevice() {
        return thisDevice;
    }

    @Override
    public String toString() {
        return deviceId + (name.isEmpty() ? "" : " " + name) + (online ? " (online)" : "");
    }
}
