package org.hush.sdk;

import java.util.Arrays;

/** A message's stable 16-byte id. Immutable; equal ids compare equal and hash alike. */
public final class MessageId {
    /** Length of an id in bytes. */
    public static final int LENGTH = 16;
    private final byte[] bytes;

    private MessageId(byte[] bytes) {
        this.bytes = bytes;
    }

    /** An id from its 16 bytes (copied). */
    public static MessageId of(byte[] bytes) {
        if (bytes == null || bytes.length != LENGTH) {
            throw new IllegalArgumentException("a message id is " + LENGTH + " bytes");
        }
        return new MessageId(bytes.clone());
    }

    /** An id from its 32-character hexadecimal form, as {@link #toString()} prints it. */
    public static MessageId fromHex(String hex) {
        if (hex == null || hex.length() != 2 * LENGTH) {
            throw new IllegalArgumentException("a message id is " + 2 * LENGTH + " hex digits");
        }
        byte[] b = new byte[LENGTH];
        for (int i = 0; i < LENGTH; i++) {
            int hi = Character.digit(hex.charAt(2 * i), 16);
            int lo = Character.digit(hex.charAt(2 * i + 1), 16);
            if (hi < 0 || lo < 0) {
                throw new IllegalArgumentException("not hexadecimal: " + hex);
            }
            b[i] = (byte) (hi << 4 | lo);
        }
        return new MessageId(b);
    }

    /** The 16 bytes (a copy). */
    public byte[] toBytes() {
        return bytes.clone();
    }

    byte[] raw() {
        return bytes;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof MessageId && Arrays.equals(bytes, ((MessageId) o).bytes);
    }

    @Override
    public int hashCode() {
        return Arrays.hashCode(bytes);
    }

    /** Lower-case hexadecimal. */
    @Override
    public String toString() {
        StringBuilder sb = new StringBuilder(2 * LENGTH);
        for (byte x : bytes) {
            sb.append(Character.forDigit((x >> 4) & 15, 16)).append(Character.forDigit(x & 15, 16));
        }
        return sb.toString();
    }
}
