package org.hush.sdk;

/** Where a message this device sent stands. */
public enum MessageState {
    /** It cannot be delivered (no such user). */
    FAILED(-1),
    /** In the outbox, not yet acknowledged by the relay. */
    QUEUED(0),
    /** The relay acknowledged it: it is on the relay's disk. */
    SENT(1),
    /** The recipient's device stored it (end-to-end encrypted receipt). */
    DELIVERED(2),
    /** The recipient marked it read. */
    READ(3);

    private final int code;

    MessageState(int code) {
        this.code = code;
    }

    static MessageState fromCode(int code) {
        for (MessageState s : values()) {
            if (s.code == code) {
                return s;
            }
        }
        throw new IllegalArgumentException("unknown message state " + code);
    }
}
