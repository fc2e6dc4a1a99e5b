package org.hush.sdk;

/** A file message's details ({@link HushClient#attachment}). Immutable. */
public final class Attachment {
    private final MessageId id;
    private final boolean outgoing;
    private final String peer;
    private final String fileName;
    private final String contentType;
    private final long size;
    private final FileState state;
    private final long done;
    private final long total;
    private final byte[] thumbnail;

    /** Called by the native code. */
    Attachment(byte[] id, boolean outgoing, String peer, String fileName, String contentType, long size, int state,
               long done, long total, byte[] thumbnail) {
        this.id = MessageId.of(id);
        this.outgoing = outgoing;
        this.peer = peer;
        this.fileName = fileName;
        this.contentType = contentType;
        this.size = size;
        this.state = FileState.fromCode(state);
        this.done = done;
        this.total = total;
        this.thumbnail = thumbnail;
    }

    /** The id of the message that carries the file. */
    public MessageId id() {
        return id;
    }

    /** Sent by this account (from this device or another of its devices). */
    public boolean isOutgoing() {
        return outgoing;
    }

    /** The other party of the conversation. */
    public String peer() {
        return peer;
    }

    /** The name the sender gave it (never contains '/'). */
    public String fileName() {
        return fileName;
    }

    public String contentType() {
        return contentType;
    }

    /** The file's length in bytes. */
    public long size() {
        return size;
    }

    public FileState state() {
        return state;
    }

    /** The transfer's progress: encrypted bytes done of {@link #total()}. */
    public long done() {
        return done;
    }

    public long total() {
        return total;
    }

    /** The thumbnail the sender attached, or null. */
    public byte[] thumbnail() {
        return thumbnail == null ? null : thumbnail.clone();
    }

    @Override
    public String toString() {
        return "Attachment{" + fileName + ", " + size + " bytes, " + state + "}";
    }
}
