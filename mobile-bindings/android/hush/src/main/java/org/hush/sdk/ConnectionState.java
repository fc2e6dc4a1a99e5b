package org.hush.sdk;

/** The state of a client's connection to its relay. */
public enum ConnectionState {
    /** Not connected; retrying after a backoff. */
    OFFLINE,
    /** Connecting or authenticating. */
    CONNECTING,
    /** Logged in. */
    ONLINE,
    /** Stopped for good (login refused, username taken...): see the error passed with it. */
    FAILED,
    /** {@link HushClient#stop()} or {@link HushClient#close()} was called. */
    STOPPED;

    static ConnectionState fromCode(int code) {
        ConnectionState[] all = values();
        if (code < 0 || code >= all.length) {
            throw new IllegalArgumentException("unknown connection state " + code);
        }
        return all[code];
    }
}
