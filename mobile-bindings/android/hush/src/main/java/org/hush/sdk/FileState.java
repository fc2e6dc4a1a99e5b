package org.hush.sdk;

/** Where a file (attachment) stands on this device. */
public enum FileState {
    /** The upload or download failed for good ({@link HushListener#onFile} said why). */
    FAILED(-1),
    /** Ours: being uploaded (it resumes after a restart). */
    UPLOADING(1),
    /** Ours: uploaded; its message is in the outbox or sent. */
    SENT(2),
    /** On the relay, not downloaded here: {@link HushClient#downloadAttachment}. */
    REMOTE(3),
    /** Being downloaded. */
    DOWNLOADING(4),
    /** Downloaded and checked: {@link HushClient#saveAttachment} writes it decrypted. */
    READY(5);

    private final int code;

    FileState(int code) {
        this.code = code;
    }

    static FileState fromCode(int code) {
        for (FileState s : values()) {
            if (s.code == code) {
                return s;
            }
        }
        throw new IllegalArgumentException("unknown file state " + code);
    }
}
