package org.hush.sdk;

/**
 * Events from a running client. Every method has an empty default: override what you need.
 *
 * <p>Methods are called one at a time, on the client's network thread, unless the client was built
 * with {@link HushClient.Builder#callbackExecutor}: then they are handed to that executor (for
 * example the main thread's). Return quickly. A listener may call the client's methods, except
 * {@link HushClient#stop()} and {@link HushClient#close()} on the network thread, which throw
 * {@link IllegalStateException} there (post them to another thread). An exception thrown by a
 * listener method is printed and dropped; it never stops the client.
 */
public interface HushListener {
    /** A message arrived; it is already stored. Use {@link Message#localId()} to deduplicate. */
    default void onMessage(Message message) {
    }

    /** A message this device sent changed state (SENT, DELIVERED, READ or FAILED). */
    default void onReceipt(String peer, MessageId id, MessageState state) {
    }

    /** A peer started or stopped typing to this user. */
    default void onTyping(String peer, int deviceId, boolean typing) {
    }

    /** A member of room {@code group} (its id) started or stopped typing there. */
    default void onGroupTyping(String group, String user, int deviceId, boolean typing) {
    }

    /** A followed user came online or went offline ({@code lastSeenMillis} is 0 when unknown). */
    default void onPresence(String user, boolean online, long lastSeenMillis) {
    }

    /** A contact's identity key changed; its messages wait until you accept or reject it. */
    default void onIdentityChanged(IdentityChange change) {
    }

    /** The connection changed state; {@code lastError} is null when there is none. */
    default void onConnectionStateChanged(ConnectionState state, HushError lastError) {
    }

    /** Something went wrong that the app may want to log or show (never holds secrets). */
    default void onError(HushError error, String detail) {
    }

    /**
     * {@link HushClient#startLink()}: the link code to show (as text or a QR code) until the device
     * is linked; a new code replaces it after a reconnection.
     */
    default void onLinkCode(String code) {
    }

    /**
     * A file's transfer moved: progress while {@link FileState#UPLOADING} or
     * {@link FileState#DOWNLOADING} (at most ten times a second, {@code done} of {@code total}
     * encrypted bytes), then once {@link FileState#SENT}, {@link FileState#READY} or
     * {@link FileState#FAILED} ({@code error} says why; null otherwise).
     */
    default void onFile(MessageId id, FileState state, long done, long total, HushError error) {
    }

    /** The relay says {@code user}'s devices changed (this account's own, or a contact's). */
    default void onDevicesChanged(String user) {
    }
}
