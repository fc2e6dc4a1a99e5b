package org.hush.sdk;

import java.nio.charset.StandardCharsets;

/**
 * A message received from a peer, or sent from another device of this account, already decrypted
 * and stored in the local history. Immutable.
 */
public final class Message {
    /** What kind of message this is. */
    public enum Kind {
        /** A one-to-one text. */
        TEXT,
        /** A group text ({@link #groupId()} is set). */
        GROUP_TEXT,
        /**
         * A text this account sent from another of its devices: {@link #sender()} is this account,
         * {@link #conversation()} the peer it went to. Stored in the history as sent.
         */
        SENT_ELSEWHERE,
        /**
         * A file ({@link #text()} is its name): {@link HushClient#attachment} gives its size and
         * type, {@link HushClient#downloadAttachment} fetches it. From another device of this
         * account ({@link #sender()} is this account), a file it sent.
         */
        FILE,
        /**
         * A room changed ({@link #groupId()} is the room, {@link #sender()} who changed it,
         * {@link #text()} what happened, in words). {@link HushClient#groupInfo} has the room now.
         */
        GROUP_CHANGE
    }

    private final Kind kind;
    private final String sender;
    private final int senderDevice;
    private final MessageId id;
    private final long sentAtMillis;
    private final long receivedAtMillis;
    private final String groupId;
    private final long localId;
    private final byte[] body;
    private final String conversation;

    Message(Kind kind, String sender, int senderDevice, MessageId id, long sentAtMillis,
            long receivedAtMillis, String groupId, long localId, byte[] body, String conversation) {
        this.conversation = conversation;
        this.kind = kind;
        this.sender = sender;
        this.senderDevice = senderDevice;
        this.id = id;
        this.sentAtMillis = sentAtMillis;
        this.receivedAtMillis = receivedAtMillis;
        this.groupId = groupId;
        this.localId = localId;
        this.body = body;
    }

    public Kind kind() {
        return kind;
    }

    /** The peer the conversation is with: the sender, or for {@link Kind#SENT_ELSEWHERE} the recipient. */
    public String conversation() {
        return conversation;
    }

    /** The sender's username (the relay vouches for it; the Signal session authenticates it). */
    public String sender() {
        return sender;
    }

    public int senderDevice() {
        return senderDevice;
    }

    /** The sender's stable id for this message. */
    public MessageId id() {
        return id;
    }

    /** The sender's clock, milliseconds since the epoch. */
    public long sentAtMillis() {
        return sentAtMillis;
    }

    /** This device's clock when it was received. */
    public long receivedAtMillis() {
        return receivedAtMillis;
    }

    /** The group, or null for a one-to-one message. */
    public String groupId() {
        return groupId;
    }

    /**
     * The message's row in the local history: the identity to deduplicate on. After a crash of the
     * app a message it was not told about is reported again with the same local id.
     */
    public long localId() {
        return localId;
    }

    /** The body as UTF-8 bytes (a copy). */
    public byte[] body() {
        return body.clone();
    }

    /** The body as text (invalid UTF-8 sequences become U+FFFD). */
    public String text() {
        return new String(body, StandardCharsets.UTF_8);
    }

    @Override
    public String toString() {
        return "Message{" + kind + " from " + sender + "." + senderDevice + ", id " + id + ", local " + localId + "}";
    }
}
