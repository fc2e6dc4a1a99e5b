package org.hush.sdk;

/** A libhush call failed. {@link #error()} says why; the message is meant for logs, never secrets. */
public class HushException extends Exception {
    private static final long serialVersionUID = 1L;
    private final HushError error;
    private final int code;

    /** Called by the native code with the raw {@code hush_err} value. */
    HushException(int code, String message) {
        super(message);
        this.code = code;
        this.error = HushError.fromCode(code);
    }

    HushException(HushError error, String message) {
        super(message);
        this.code = error.code();
        this.error = error;
    }

    /** The error, as an enum constant. */
    public HushError error() {
        return error;
    }

    /** The raw {@code hush_err} number (useful when {@link #error()} is {@link HushError#UNKNOWN}). */
    public int code() {
        return code;
    }
}
