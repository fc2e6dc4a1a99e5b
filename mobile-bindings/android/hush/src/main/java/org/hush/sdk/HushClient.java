package org.hush.sdk;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.Executor;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * A Hush client: one device's end-to-end encrypted messaging, over a local database sealed with a
 * key the app keeps in the platform keystore, talking to a Hush relay.
 *
 * <pre>{@code
 * try (HushClient c = HushClient.builder(dbFile, dbKey)
 *         .relayUrl("wss://relay.example.org")
 *         .listener(myListener)
 *         .build()) {
 *     if (!c.hasDevice()) c.createDevice("alice", 1);
 *     c.start();
 *     MessageId id = c.send("bob", "hello");
 * }
 * }</pre>
 *
 * <p>Thread safety: every method may be called from any thread; calls are serialised inside the
 * SDK. {@link #close()} may race with other calls: they finish first, or throw
 * {@link HushError#CLOSED}. Methods that block ({@link #waitOnline}, {@link #flush}) return with
 * {@link HushError#NOT_RUNNING} when another thread stops or closes the client.
 *
 * <p>Every failure is a {@link HushException} carrying the SDK's error code; a closed client throws
 * one with {@link HushError#CLOSED}. Closing twice is harmless.
 */
public final class HushClient implements AutoCloseable {
    static {
        NativeLibrary.load();
    }

    /** Most history entries one {@link #history} call returns. */
    public static final int MAX_HISTORY_PAGE = 500;
    /** Largest message body in bytes (UTF-8). */
    public static final int MAX_BODY_BYTES = 64 * 1024;

    private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
    private final Object closeLock = new Object();
    private long handle; // written only under the write lock; read under the read lock
    private volatile boolean closed;
    private final String relayUrl;
    private final String invite;
    private final String caFile;
    private final boolean insecureTls;
    private NativeBridge bridge;

    private HushClient(Builder b, long handle) {
        this.handle = handle;
        this.relayUrl = b.relayUrl;
        this.invite = b.invite;
        this.caFile = b.caFile;
        this.insecureTls = b.insecureTls;
        this.bridge = new NativeBridge(b.listener, b.executor);
    }

    /**
     * Starts building a client over the database at {@code databasePath} (created if absent),
     * sealed with {@code databaseKey} (32 bytes; copied, and the copy wiped after opening: wipe
     * yours when you no longer need it).
     */
    public static Builder builder(String databasePath, byte[] databaseKey) {
        return new Builder(databasePath, databaseKey);
    }

    /** Options for a client. */
    public static final class Builder {
        private final String path;
        private final byte[] key;
        private Durability durability = Durability.FULL;
        private String relayUrl;
        private String invite;
        private String caFile;
        private boolean insecureTls;
        private HushListener listener;
        private Executor executor;

        private Builder(String path, byte[] key) {
            this.path = path;
            this.key = key == null ? null : key.clone();
        }

        /** FULL (default: survives power loss) or NORMAL (survives an app crash; faster). */
        public Builder durability(Durability d) {
            this.durability = Objects.requireNonNull(d, "durability");
            return this;
        }

        /** {@code ws://host:port} or {@code wss://host:port}; if not set, the one used last time. */
        public Builder relayUrl(String url) {
            this.relayUrl = url;
            return this;
        }

        /** A registration token, when the relay is invite-only. */
        public Builder invite(String token) {
            this.invite = token;
            return this;
        }

        /** For wss://: a PEM bundle to trust instead of the system store. */
        public Builder caFile(String pemPath) {
            this.caFile = pemPath;
            return this;
        }

        /** For wss://: accept any certificate. For tests against a self-signed relay only. */
        public Builder insecureTlsForTestsOnly(boolean insecure) {
            this.insecureTls = insecure;
            return this;
        }

        /** Who is told about messages, receipts, typing, presence and connection changes. */
        public Builder listener(HushListener l) {
            this.listener = l;
            return this;
        }

        /**
         * Where listener methods run (for example the main thread's executor). Default: directly
         * on the client's network thread.
         */
        public Builder callbackExecutor(Executor e) {
            this.executor = e;
            return this;
        }

        /**
         * Opens the database. Errors: INVALID_ARG (bad path or key), DB_KEY (wrong key),
         * DB_TAMPERED (rows removed or rolled back outside libhush: recover or link again on a
         * new database), DB_CORRUPT, DB_TOO_NEW, STORAGE, SELFTEST.
         */
        public HushClient build() throws HushException {
            try {
                long h = nativeOpen(path, key, durability == Durability.NORMAL ? 1 : 0);
                return new HushClient(this, h);
            } finally {
                if (key != null) {
                    Arrays.fill(key, (byte) 0);
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // lifecycle

    private long enter() throws HushException {
        if (closed) {
            throw new HushException(HushError.CLOSED, "client is closed");
        }
        lock.readLock().lock();
        if (closed || handle == 0) {
            lock.readLock().unlock();
            throw new HushException(HushError.CLOSED, "client is closed");
        }
        return handle;
    }

    private void leave() {
        lock.readLock().unlock();
    }

    /** True once {@link #close()} was called. */
    public boolean isClosed() {
        return closed;
    }

    /**
     * Stops the network (if running) and closes the database, wiping keys held in memory. Safe to
     * call twice and from any thread but the network thread inside a listener call (that throws
     * {@link IllegalStateException}: it would wait for itself). After close the listener is no
     * longer referenced.
     */
    @Override
    public void close() {
        synchronized (closeLock) {
            if (closed) {
                return;
            }
            if (nativeOnNetworkThread(handle)) {
                throw new IllegalStateException("close() from a listener callback: post it to another thread");
            }
            closed = true; // new calls throw CLOSED from here on
            nativeStop(handle); // callbacks end; blocked waits return NOT_RUNNING
            lock.writeLock().lock();
            try {
                long h = handle;
                handle = 0;
                nativeClose(h);
            } finally {
                lock.writeLock().unlock();
            }
            bridge.detach();
            bridge = null;
        }
    }

    /** Whether this database already has its device (keys and username). */
    public boolean hasDevice() throws HushException {
        long h = enter();
        try {
            return nativeHasDevice(h);
        } finally {
            leave();
        }
    }

    /**
     * Creates this database's device: identity keys, prekeys and the relay login key, for
     * {@code username} (3..32 of a-z 0-9 . _ -) and a device id (1 for a user's first device).
     * Errors: INVALID_ARG, DEVICE_EXISTS, STORAGE.
     */
    public void createDevice(String username, int deviceId) throws HushException {
        long h = enter();
        try {
            nativeCreateDevice(h, username, deviceId);
        } finally {
            leave();
        }
    }

    /** This device's username. Errors: NO_DEVICE. */
    public String username() throws HushException {
        long h = enter();
        try {
            return nativeUsername(h);
        } finally {
            leave();
        }
    }

    /** This device's id. Errors: NO_DEVICE. */
    public int deviceId() throws HushException {
        long h = enter();
        try {
            return nativeDeviceId(h);
        } finally {
            leave();
        }
    }

    /**
     * Starts the network thread: connects, registers the first time, logs in, sends the outbox,
     * receives messages, and reconnects by itself with backoff. Errors: INVALID_ARG (bad or missing
     * relay URL, or already started), NO_DEVICE, NETWORK.
     */
    public void start() throws HushException {
        long h = enter();
        try {
            nativeStart(h, relayUrl, invite, caFile, insecureTls, bridge, 0, null, null);
        } finally {
            leave();
        }
    }

    /**
     * On a database with no device: starts the network as a new device of an existing account.
     * The listener's {@link HushListener#onLinkCode} gets the code to show; once another device of
     * the account calls {@link #linkDevice} with it, this database gets the account's identity and
     * contacts, registers, and runs as after {@link #start()} ({@link #waitOnline} returns then).
     * Errors: DEVICE_EXISTS, INVALID_ARG (no relay URL), NETWORK.
     */
    public void startLink() throws HushException {
        long h = enter();
        try {
            nativeStart(h, relayUrl, null, caFile, insecureTls, bridge, 1, null, null);
        } finally {
            leave();
        }
    }

    /**
     * On a database with no device, for a user who lost every device: proves the recovery code and
     * registers this database as the account's device, with a new identity key (contacts see an
     * identity change); the account's other devices are removed. A new recovery code is then
     * waiting ({@link #recoveryCode()}). A wrong name or code makes {@link #waitOnline} fail with
     * AUTH_FAILED. Errors: INVALID_ARG (malformed code), DEVICE_EXISTS, NETWORK.
     */
    public void startRecover(String username, String recoveryCode) throws HushException {
        long h = enter();
        try {
            nativeStart(h, relayUrl, null, caFile, insecureTls, bridge, 2, username, recoveryCode);
        } finally {
            leave();
        }
    }

    /**
     * Links the device that shows {@code code} (its {@link HushListener#onLinkCode}) to this
     * account and returns its device id. Blocks up to {@code timeoutMillis} with the network
     * running. Errors: INVALID_ARG (not a link code), TOO_MANY_DEVICES, LINK_FAILED (expired or
     * used code), NETWORK, TIMEOUT, NOT_RUNNING.
     */
    public int linkDevice(String code, int timeoutMillis) throws HushException {
        long h = enter();
        try {
            return nativeLinkDevice(h, code, timeoutMillis);
        } finally {
            leave();
        }
    }

    /**
     * Removes a device of this account: this one, or from the account's first device any other
     * (not the last one). The removed device stops with DEVICE_REMOVED. Errors: NOT_FOUND,
     * AUTH_FAILED (not allowed from this device), INVALID_ARG (the last device), NETWORK, TIMEOUT.
     */
    public void removeDevice(int deviceId, int timeoutMillis) throws HushException {
        long h = enter();
        try {
            nativeRemoveDevice(h, deviceId, timeoutMillis);
        } finally {
            leave();
        }
    }

    /**
     * The account's recovery code, made at the first registration (or a recovery), to show the user
     * once; null when none is waiting. Call {@link #forgetRecoveryCode()} once it was shown.
     */
    public String recoveryCode() throws HushException {
        long h = enter();
        try {
            return nativeRecoveryCode(h);
        } finally {
            leave();
        }
    }

    /**
     * This device's name in the account's device list ("phone", "laptop"); set it before the
     * device registers (its registration carries it). 1 to 64 bytes, no control characters.
     */
    public void setDeviceName(String name) throws HushException {
        long h = enter();
        try {
            nativeSetDeviceName(h, name);
        } finally {
            leave();
        }
    }

    /** This account's devices as the relay lists them (network running; blocks up to the timeout). */
    public List<DeviceInfo> devices(int timeoutMillis) throws HushException {
        long h = enter();
        try {
            return Arrays.asList(nativeDevices(h, timeoutMillis));
        } finally {
            leave();
        }
    }

    /** Removes the recovery code from this database (after the user wrote it down). */
    public void forgetRecoveryCode() throws HushException {
        long h = enter();
        try {
            nativeForgetRecoveryCode(h);
        } finally {
            leave();
        }
    }

    /**
     * Stops the network thread and waits for it; messages stay queued. Harmless if not running.
     * Throws {@link IllegalStateException} from a listener running on the network thread.
     */
    public void stop() throws HushException {
        long h = enter();
        try {
            if (nativeOnNetworkThread(h)) {
                throw new IllegalStateException("stop() from a listener callback: post it to another thread");
            }
            nativeStop(h);
        } finally {
            leave();
        }
    }

    /** The connection's current state. */
    public ConnectionState connectionState() throws HushException {
        long h = enter();
        try {
            return ConnectionState.fromCode((int) (nativeState(h) >>> 32));
        } finally {
            leave();
        }
    }

    /** The error that made the connection fail or drop last, or null. */
    public HushError lastError() throws HushException {
        long h = enter();
        try {
            int e = (int) nativeState(h);
            return e == 0 ? null : HushError.fromCode(e);
        } finally {
            leave();
        }
    }

    /**
     * Blocks until logged in. Errors: TIMEOUT, NOT_RUNNING (not started, or stopped meanwhile), or
     * the error that made the connection fail for good (AUTH_FAILED, USERNAME_TAKEN...).
     */
    public void waitOnline(int timeoutMillis) throws HushException {
        long h = enter();
        try {
            nativeWaitOnline(h, timeoutMillis);
        } finally {
            leave();
        }
    }

    /** Blocks until every queued message is acknowledged by the relay. Errors as {@link #waitOnline}. */
    public void flush(int timeoutMillis) throws HushException {
        long h = enter();
        try {
            nativeFlush(h, timeoutMillis);
        } finally {
            leave();
        }
    }

    // ---------------------------------------------------------------------------------------
    // files

    /**
     * Sends the file at {@code path} to every device of {@code peer}: it is encrypted on this
     * device (the relay never sees its name or content), the message is committed before this
     * returns, and the network thread uploads it (resuming after a lost connection or a restart)
     * and then sends the message. {@code fileName} (null: the path's last part), {@code
     * contentType} (null: application/octet-stream) and {@code thumbnail} (null, or at most
     * 32 KiB) travel inside the encrypted message. Progress through {@link HushListener#onFile}.
     * Errors: INVALID_ARG (not a readable regular file, a bad name), TOO_BIG, STORAGE.
     */
    public MessageId sendFile(String peer, String path, String fileName, String contentType, byte[] thumbnail)
            throws HushException {
        long h = enter();
        try {
            return MessageId.of(nativeSendFile(h, peer, path, fileName, contentType, thumbnail, false));
        } finally {
            leave();
        }
    }

    /**
     * The same to a room ({@code group}: its id): uploaded once, announced to every member's
     * devices. Errors as {@link #sendFile}, and NOT_FOUND / NOT_ALLOWED as {@link #sendToGroup}.
     */
    public MessageId sendFileToGroup(String group, String path, String fileName, String contentType, byte[] thumbnail)
            throws HushException {
        long h = enter();
        try {
            return MessageId.of(nativeSendFile(h, group, path, fileName, contentType, thumbnail, true));
        } finally {
            leave();
        }
    }

    /** A file message's details and transfer state. Errors: NOT_FOUND (no file with that id). */
    public Attachment attachment(MessageId id) throws HushException {
        if (id == null) {
            throw new HushException(HushError.INVALID_ARG, "attachment: no id");
        }
        long h = enter();
        try {
            return nativeAttachment(h, id.raw());
        } finally {
            leave();
        }
    }

    /**
     * Queues the download of a received file (nothing is fetched until the app asks): it ends
     * {@link FileState#READY}, checked against the digest its message carries, or FAILED
     * (BAD_MESSAGE: changed on the way; NOT_FOUND: the relay no longer has it). Errors: NOT_FOUND.
     */
    public void downloadAttachment(MessageId id) throws HushException {
        attachmentOp(id, 0, null);
    }

    /**
     * Writes a READY file, decrypted, to {@code outPath} (a temporary name, synced, then renamed:
     * never half a file). Errors: NOT_FOUND (not READY), BAD_MESSAGE (the local copy does not
     * decrypt: nothing is written), STORAGE.
     */
    public void saveAttachment(MessageId id, String outPath) throws HushException {
        attachmentOp(id, 1, outPath);
    }

    /** Stops an upload (its message fails) or a download (back to REMOTE). Errors: NOT_FOUND. */
    public void cancelAttachment(MessageId id) throws HushException {
        attachmentOp(id, 2, null);
    }

    private void attachmentOp(MessageId id, int op, String path) throws HushException {
        if (id == null) {
            throw new HushException(HushError.INVALID_ARG, "attachment: no id");
        }
        long h = enter();
        try {
            nativeAttachmentOp(h, id.raw(), op, path);
        } finally {
            leave();
        }
    }

    // ---------------------------------------------------------------------------------------
    // push wake-ups

    /**
     * Registers this device's push endpoint: what the app's UnifiedPush distributor gave it (the
     * endpoint URL, at most 1000 bytes, https://; the P-256 public key, 65 bytes uncompressed;
     * the 16-byte auth secret). Stored sealed, sent to the relay now or at the next login, and
     * again after every login; a later call replaces it. When mail waits for this device and it
     * is not connected, the relay POSTs a content-free wake-up there: call {@link #wake} from the
     * push receiver. A relay that refuses the endpoint says why through
     * {@link HushListener#onError}; {@link HushError#PUSH_GONE} there means the push service
     * dropped the endpoint (libhush forgot it): register the distributor's new one (UnifiedPush
     * calls {@code onNewEndpoint}). Errors: INVALID_ARG, STORAGE.
     */
    public void pushRegister(String endpoint, byte[] p256dh, byte[] auth) throws HushException {
        long h = enter();
        try {
            nativePushRegister(h, endpoint, p256dh, auth);
        } finally {
            leave();
        }
    }

    /** Removes the push endpoint (at the relay too, at the next login if offline). Errors: STORAGE. */
    public void pushUnregister() throws HushException {
        long h = enter();
        try {
            nativePushUnregister(h);
        } finally {
            leave();
        }
    }

    /**
     * The relay's VAPID public key, base64url (87 characters), for a push distributor that wants
     * it at registration ({@code UnifiedPush.register(context, instance, message, vapid)}); null
     * before the first connection, or when the relay has push wake-ups off. Errors: STORAGE.
     */
    public String pushVapidKey() throws HushException {
        long h = enter();
        try {
            return nativePushVapidKey(h);
        } finally {
            leave();
        }
    }

    /**
     * What a push wake-up runs (off the main thread; an Android push receiver has about 10 s):
     * starts the network if it is not running, waits until the relay has handed over every waiting
     * message (each stored and given to the listener) and the outbox is sent, then stops the
     * network again if it started it. With the network already running (the app is open) it only
     * waits. Errors as {@link #start()} and {@link #waitOnline}, TIMEOUT.
     */
    public void wake(int timeoutMillis) throws HushException {
        long h = enter();
        try {
            if (nativeOnNetworkThread(h)) {
                throw new IllegalStateException("wake() from a listener callback: post it to another thread");
            }
            boolean mine = !nativeRunning(h);
            if (mine) {
                nativeStart(h, relayUrl, invite, caFile, insecureTls, bridge, 0, null, null);
            }
            try {
                nativeWaitDrained(h, timeoutMillis);
            } finally {
                if (mine) {
                    nativeStop(h);
                }
            }
        } finally {
            leave();
        }
    }

    /** Blocks until logged in, every waiting message handed over and the outbox sent. Errors as {@link #waitOnline}. */
    public void waitDrained(int timeoutMillis) throws HushException {
        long h = enter();
        try {
            nativeWaitDrained(h, timeoutMillis);
        } finally {
            leave();
        }
    }

    // ---------------------------------------------------------------------------------------
    // messaging

    /**
     * Queues a text for every device of {@code peer}. It is committed to the local outbox before
     * this returns and is retried until the relay acknowledges it, across restarts; works offline.
     * Errors: INVALID_ARG, TOO_BIG (over {@link #MAX_BODY_BYTES} bytes of UTF-8), STORAGE.
     */
    public MessageId send(String peer, String text) throws HushException {
        if (text == null) {
            throw new HushException(HushError.INVALID_ARG, "send: no text");
        }
        byte[] utf8 = text.getBytes(StandardCharsets.UTF_8);
        long h = enter();
        try {
            return MessageId.of(nativeSend(h, peer, utf8));
        } finally {
            leave();
            Arrays.fill(utf8, (byte) 0);
        }
    }

    /** The state of a message this device sent. Errors: NOT_FOUND. */
    public MessageState messageState(MessageId id) throws HushException {
        if (id == null) {
            throw new HushException(HushError.INVALID_ARG, "messageState: no id");
        }
        long h = enter();
        try {
            return MessageState.fromCode(nativeMessageState(h, id.raw()));
        } finally {
            leave();
        }
    }

    /** Marks a received message read and sends its sender an encrypted read receipt. */
    public void markRead(long localId) throws HushException {
        long h = enter();
        try {
            nativeMarkRead(h, localId);
        } finally {
            leave();
        }
    }

    /** Tells {@code peer} this user is (or stopped) typing. Ephemeral; dropped when offline. */
    public void typing(String peer, boolean typing) throws HushException {
        long h = enter();
        try {
            nativeTyping(h, peer, typing);
        } finally {
            leave();
        }
    }

    /** Messages handed over but not yet acknowledged by the relay. */
    public int pendingCount() throws HushException {
        long h = enter();
        try {
            return nativeOutboxCount(h);
        } finally {
            leave();
        }
    }

    /** Who may see this user's presence (replaces the list; at most 1000). Stored, re-sent at login. */
    public void presenceAllow(String... users) throws HushException {
        long h = enter();
        try {
            nativePresenceAllow(h, users);
        } finally {
            leave();
        }
    }

    /** Whose presence to follow (replaces the list; at most 1000). Stored, re-sent at login. */
    public void presenceSubscribe(String... users) throws HushException {
        long h = enter();
        try {
            nativePresenceSubscribe(h, users);
        } finally {
            leave();
        }
    }

    // ---------------------------------------------------------------------------------------
    // safety numbers and identity changes

    /** The 60-digit safety number of the conversation with a peer's device (same on both sides). */
    public String safetyNumber(String peer, int deviceId) throws HushException {
        long h = enter();
        try {
            return nativeSafetyNumber(h, peer, deviceId);
        } finally {
            leave();
        }
    }

    /** The scannable form of the safety number, to show as a QR code. */
    public byte[] safetyScannable(String peer, int deviceId) throws HushException {
        long h = enter();
        try {
            return nativeSafetyScannable(h, peer, deviceId);
        } finally {
            leave();
        }
    }

    /** Compares a code scanned from the peer's screen: true when it matches this conversation. */
    public boolean safetyMatches(String peer, int deviceId, byte[] scanned) throws HushException {
        long h = enter();
        try {
            return nativeSafetyCompare(h, peer, deviceId, scanned);
        } finally {
            leave();
        }
    }

    /** The pending identity change of a peer's device, or null if there is none. */
    public IdentityChange identityPending(String peer, int deviceId) throws HushException {
        long h = enter();
        try {
            String[] sn = nativeIdentityPending(h, peer, deviceId);
            return sn == null ? null : new IdentityChange(peer, deviceId, sn[0], sn[1]);
        } finally {
            leave();
        }
    }

    /**
     * Trusts the peer's new identity key whose safety number is {@code safetyNumber} — the number
     * the user compared with the peer (spaces are ignored) — and delivers the messages held for it.
     * A key that claimed the device later (a relay can inject one) has another number and stays
     * refused. Errors: NOT_FOUND, SAFETY_MISMATCH (no pending key has that number).
     */
    public void acceptIdentity(String peer, int deviceId, String safetyNumber) throws HushException {
        long h = enter();
        try {
            nativeIdentityAcceptNumber(h, peer, deviceId, safetyNumber);
        } finally {
            leave();
        }
    }

    /**
     * Trusts the peer's new identity key when exactly one is pending; prefer
     * {@link #acceptIdentity(String, int, String)}. Errors: NOT_FOUND, SAFETY_MISMATCH (several keys
     * are pending: say which number was compared).
     */
    public void acceptIdentity(String peer, int deviceId) throws HushException {
        long h = enter();
        try {
            nativeIdentityDecide(h, peer, deviceId, true);
        } finally {
            leave();
        }
    }

    /** Discards the peer's new identity key and the messages held for it. Errors: NOT_FOUND. */
    public void rejectIdentity(String peer, int deviceId) throws HushException {
        long h = enter();
        try {
            nativeIdentityDecide(h, peer, deviceId, false);
        } finally {
            leave();
        }
    }

    /** Device ids of {@code peer} this client knows, ascending. */
    public int[] peerDevices(String peer) throws HushException {
        long h = enter();
        try {
            return nativePeerDevices(h, peer);
        } finally {
            leave();
        }
    }

    // ---------------------------------------------------------------------------------------
    // rooms

    /**
     * Creates a room with this user (its admin) and {@code members}; returns its id. The change is
     * committed before this returns and sent to every member's devices by the network thread.
     * Errors: INVALID_ARG (name: 1..64 bytes of UTF-8 without control characters; bad usernames),
     * TOO_BIG (over 1000 members), STORAGE.
     */
    public String createGroup(String name, String... members) throws HushException {
        return groupChange(0, null, name, members);
    }

    /** Adds users to a room (admins only: NOT_ALLOWED otherwise). */
    public void addToGroup(String group, String... users) throws HushException {
        groupChange(1, group, null, users);
    }

    /** Removes a member (admins only). Its devices are told; it reads nothing sent after. */
    public void removeFromGroup(String group, String user) throws HushException {
        groupChange(2, group, null, new String[] {user});
    }

    /** Makes a member an admin (admins only). */
    public void promoteInGroup(String group, String user) throws HushException {
        groupChange(3, group, null, new String[] {user});
    }

    /** Renames a room (admins only). */
    public void renameGroup(String group, String name) throws HushException {
        groupChange(4, group, name, new String[0]);
    }

    /** Leaves a room (the last admin leaving makes the first remaining member an admin). */
    public void leaveGroup(String group) throws HushException {
        groupChange(5, group, null, new String[0]);
    }

    private String groupChange(int op, String group, String name, String[] users) throws HushException {
        byte[] n = name == null ? null : name.getBytes(StandardCharsets.UTF_8);
        long h = enter();
        try {
            return nativeGroupChange(h, op, group, n, users);
        } finally {
            leave();
        }
    }

    /**
     * Sends a text to every member's devices: encrypted once with this device's key for the room,
     * stored once by the relay. Committed before this returns, like {@link #send}. Errors:
     * NOT_FOUND (no such room), NOT_ALLOWED (no longer a member), TOO_BIG, STORAGE.
     */
    public MessageId sendToGroup(String group, String text) throws HushException {
        if (text == null) {
            throw new HushException(HushError.INVALID_ARG, "sendToGroup: no text");
        }
        byte[] utf8 = text.getBytes(StandardCharsets.UTF_8);
        long h = enter();
        try {
            return MessageId.of(nativeGroupSend(h, group, utf8));
        } finally {
            leave();
            Arrays.fill(utf8, (byte) 0);
        }
    }

    /** Tells the room's online members this user is (or stopped) typing. Ephemeral. */
    public void groupTyping(String group, boolean typing) throws HushException {
        long h = enter();
        try {
            nativeGroupTyping(h, group, typing);
        } finally {
            leave();
        }
    }

    /**
     * Shares this user's presence with everyone in the room (or stops): its members are added to
     * who may see it ({@link #presenceAllow}'s list stays), following the room as members come and
     * go. Kept, sent at every login, and taken over by this user's other devices. The SDK follows
     * the presence of every room member; those who share theirs are reported to
     * {@link HushListener#onPresence}. Errors: NOT_ALLOWED (not a member; turning it off is always
     * accepted), NOT_FOUND.
     */
    public void shareGroupPresence(String group, boolean share) throws HushException {
        long h = enter();
        try {
            nativeGroupSharePresence(h, group, share);
        } finally {
            leave();
        }
    }

    /** The room as this device knows it. Errors: NOT_FOUND. */
    public GroupInfo groupInfo(String group) throws HushException {
        long h = enter();
        try {
            return nativeGroupInfo(h, group);
        } finally {
            leave();
        }
    }

    /** Every room this device knows, the most recently changed first. */
    public List<GroupInfo> groups() throws HushException {
        long h = enter();
        try {
            return Collections.unmodifiableList(Arrays.asList(nativeGroups(h)));
        } finally {
            leave();
        }
    }

    /** A room's history, like {@link #history}: its messages and its changes. */
    public List<HistoryEntry> groupHistory(String group, long beforeLocalId, int limit) throws HushException {
        long h = enter();
        try {
            return Collections.unmodifiableList(Arrays.asList(nativeGroupHistory(h, group, beforeLocalId, limit)));
        } finally {
            leave();
        }
    }

    // history

    /**
     * Up to {@code limit} (1..{@link #MAX_HISTORY_PAGE}) messages of the conversation with
     * {@code peer}, newest first, older than {@code beforeLocalId} (0 for the newest).
     */
    public List<HistoryEntry> history(String peer, long beforeLocalId, int limit) throws HushException {
        long h = enter();
        try {
            HistoryEntry[] es = nativeHistory(h, peer, beforeLocalId, limit);
            return Collections.unmodifiableList(Arrays.asList(es));
        } finally {
            leave();
        }
    }

    /** Deletes one message from the local history. Errors: NOT_FOUND. */
    public void deleteMessage(long localId) throws HushException {
        long h = enter();
        try {
            nativeHistoryDelete(h, localId);
        } finally {
            leave();
        }
    }

    /** Runs an integrity check of the local database. Errors: DB_CORRUPT. */
    public void checkIntegrity() throws HushException {
        long h = enter();
        try {
            nativeCheck(h);
        } finally {
            leave();
        }
    }

    /** libhush's version string. */
    public static String version() {
        return nativeVersion();
    }

    /** libhush's description of an error (the text {@code hush_strerror} gives). */
    public static String describe(HushError error) {
        return nativeStrerror(error.code());
    }

    // ---------------------------------------------------------------------------------------
    // natives (registered in hush_jni.c; `h` is never 0 when they are called)

    private static native long nativeOpen(String path, byte[] key, int durability) throws HushException;
    private static native void nativeClose(long h);
    private static native boolean nativeOnNetworkThread(long h);
    private static native void nativeStart(long h, String url, String invite, String caFile, boolean insecure,
            NativeBridge bridge, int mode, String recoverUser, String recoveryCode) throws HushException;
    private static native int nativeLinkDevice(long h, String code, int ms) throws HushException;
    private static native void nativeRemoveDevice(long h, int deviceId, int ms) throws HushException;
    private static native String nativeRecoveryCode(long h) throws HushException;
    private static native void nativeForgetRecoveryCode(long h) throws HushException;
    private static native DeviceInfo[] nativeDevices(long h, int ms) throws HushException;
    private static native void nativeSetDeviceName(long h, String name) throws HushException;
    private static native void nativeStop(long h);
    private static native long nativeState(long h);
    private static native void nativeWaitOnline(long h, int ms) throws HushException;
    private static native void nativeFlush(long h, int ms) throws HushException;
    private static native boolean nativeRunning(long h);
    private static native void nativeWaitDrained(long h, int ms) throws HushException;
    private static native byte[] nativeSendFile(long h, String peer, String path, String fileName, String contentType,
                                                byte[] thumbnail, boolean toGroup) throws HushException;
    private static native Attachment nativeAttachment(long h, byte[] id) throws HushException;
    private static native void nativeAttachmentOp(long h, byte[] id, int op, String path) throws HushException;
    private static native void nativePushRegister(long h, String endpoint, byte[] p256dh, byte[] auth) throws HushException;
    private static native void nativePushUnregister(long h) throws HushException;
    private static native String nativePushVapidKey(long h) throws HushException;
    private static native boolean nativeHasDevice(long h) throws HushException;
    private static native void nativeCreateDevice(long h, String username, int deviceId) throws HushException;
    private static native String nativeUsername(long h) throws HushException;
    private static native int nativeDeviceId(long h) throws HushException;
    private static native byte[] nativeSend(long h, String peer, byte[] text) throws HushException;
    private static native int nativeMessageState(long h, byte[] id) throws HushException;
    private static native void nativeMarkRead(long h, long localId) throws HushException;
    private static native void nativeTyping(long h, String peer, boolean typing) throws HushException;
    private static native int nativeOutboxCount(long h) throws HushException;
    private static native void nativePresenceAllow(long h, String[] users) throws HushException;
    private static native void nativePresenceSubscribe(long h, String[] users) throws HushException;
    private static native String nativeSafetyNumber(long h, String peer, int dev) throws HushException;
    private static native byte[] nativeSafetyScannable(long h, String peer, int dev) throws HushException;
    private static native boolean nativeSafetyCompare(long h, String peer, int dev, byte[] scanned)
            throws HushException;
    private static native String[] nativeIdentityPending(long h, String peer, int dev) throws HushException;
    private static native void nativeIdentityDecide(long h, String peer, int dev, boolean accept) throws HushException;
    private static native void nativeIdentityAcceptNumber(long h, String peer, int dev, String number)
            throws HushException;
    private static native int[] nativePeerDevices(long h, String peer) throws HushException;
    private static native HistoryEntry[] nativeHistory(long h, String peer, long before, int limit)
            throws HushException;
    private static native void nativeHistoryDelete(long h, long localId) throws HushException;
    private static native String nativeGroupChange(long h, int op, String group, byte[] name, String[] users)
            throws HushException;
    private static native byte[] nativeGroupSend(long h, String group, byte[] text) throws HushException;
    private static native void nativeGroupTyping(long h, String group, boolean typing) throws HushException;
    private static native void nativeGroupSharePresence(long h, String group, boolean share) throws HushException;
    private static native GroupInfo nativeGroupInfo(long h, String group) throws HushException;
    private static native GroupInfo[] nativeGroups(long h) throws HushException;
    private static native HistoryEntry[] nativeGroupHistory(long h, String group, long before, int limit)
            throws HushException;
    private static native void nativeCheck(long h) throws HushException;
    private static native String nativeVersion();
    private static native String nativeStrerror(int code);
}
