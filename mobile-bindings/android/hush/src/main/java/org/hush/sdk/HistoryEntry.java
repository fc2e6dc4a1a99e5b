package org.hush.sdk;

import java.nio.charset.StandardCharsets;

/** One message of the local history (sent or received). Immutable. */
public final class HistoryEntry {
    private final long localId;
    private final boolean outgoing;
    private final String peer;
    private final int peerDevice;
    private final MessageId id;
    private final long sentAtMillis;
    private final long receivedAtMillis;
    private final boolean read;
    private final byte[] body;
    private final boolean file;

    /** Called by the native code. */
    private final boolean groupChange;

    HistoryEntry(long localId, boolean outgoing, String peer, int peerDevice, byte[] id, long sentAtMillis,
                 long receivedAtMillis, boolean read, byte[] body, boolean file, boolean groupChange) {
        this.file = file;
        this.groupChange = groupChange;
        this.localId = localId;
        this.outgoing = outgoing;
        this.peer = peer;
        this.peerDevice = peerDevice;
        this.id = MessageId.of(id);
        this.sentAtMillis = sentAtMillis;
        this.receivedAtMillis = receivedAtMillis;
        this.read = read;
        this.body = body;
    }

    public long localId() {
        return localId;
    }

    /** True if this device sent it. */
    public boolean isOutgoing() {
        return outgoing;
    }

    /** The other party of the conversation; in a room's history, who wrote it. */
    public String peer() {
        return peer;
    }

    /** The peer's device that sent it; 0 for outgoing messages. */
    public int peerDevice() {
        return peerDevice;
    }

    public MessageId id() {
        return id;
    }

    public long sentAtMillis() {
        return sentAtMillis;
    }

    public long receivedAtMillis() {
        return receivedAtMillis;
    }

    /** Marked read on this device. */
    public boolean isRead() {
        return read;
    }

    public byte[] body() {
        return body.clone();
    }

    /** A file message: {@link #text()} is the file's name, {@link HushClient#attachment} the rest. */
    public boolean isFile() {
        return file;
    }

    /** In a room's history: a change of the room ({@link #text()} says what, {@link #peer()} who). */
    public boolean isGroupChange() {
        return groupChange;
    }

    public String text() {
        return new String(body, StandardCharsets.UTF_8);
    }
}
