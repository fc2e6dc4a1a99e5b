package org.hush.sdk;

import java.util.concurrent.Executor;
import java.util.concurrent.RejectedExecutionException;

/**
 * What the native code calls back: turns primitives into the public types and hands them to the
 * listener, directly or through the executor. The native side holds a global reference to this
 * object only while the network runs, and this object drops the listener when the client closes,
 * so the listener can be collected after close.
 */
final class NativeBridge {
    private volatile HushListener listener;
    private final Executor executor;

    NativeBridge(HushListener listener, Executor executor) {
        this.listener = listener;
        this.executor = executor;
    }

    void detach() {
        listener = null;
    }

    private void deliver(java.util.function.Consumer<HushListener> call) {
        HushListener l = listener;
        if (l == null) {
            return;
        }
        Runnable r = () -> {
            try {
                call.accept(l);
            } catch (RuntimeException | Error e) {
                // A listener bug must not stop the network thread (see HushListener).
                System.err.println("hush: listener threw; ignored:");
                e.printStackTrace();
            }
        };
        if (executor == null) {
            r.run();
            return;
        }
        try {
            executor.execute(r);
        } catch (RejectedExecutionException shutDown) {
            // the app shut its executor down: nobody is listening there any more
        }
    }

    // ---- called from native code (names and signatures are in hush_jni.c) ----

    void onMessage(int kind, String sender, int senderDevice, byte[] id, long sentAt, long receivedAt,
                   String groupId, long localId, byte[] body, String conversation) {
        Message.Kind k = kind == 2 ? Message.Kind.GROUP_TEXT
                : kind == 6 ? Message.Kind.SENT_ELSEWHERE : kind == 8 ? Message.Kind.FILE
                : kind == 9 ? Message.Kind.GROUP_CHANGE : Message.Kind.TEXT;
        Message m = new Message(k, sender, senderDevice, MessageId.of(id), sentAt, receivedAt,
                groupId.isEmpty() ? null : groupId, localId, body, conversation);
        deliver(l -> l.onMessage(m));
    }

    void onFile(byte[] id, int state, long done, long total, int error) {
        MessageId mid = MessageId.of(id);
        FileState s = FileState.fromCode(state);
        HushError e = error == 0 ? null : HushError.fromCode(error);
        deliver(l -> l.onFile(mid, s, done, total, e));
    }

    void onLinkCode(String code) {
        deliver(l -> l.onLinkCode(code));
    }

    void onDevicesChanged(String user) {
        deliver(l -> l.onDevicesChanged(user));
    }

    void onReceipt(String peer, byte[] id, int state) {
        MessageId mid = MessageId.of(id);
        MessageState s = MessageState.fromCode(state);
        deliver(l -> l.onReceipt(peer, mid, s));
    }

    void onTyping(String peer, int deviceId, boolean typing) {
        deliver(l -> l.onTyping(peer, deviceId, typing));
    }

    void onGroupTyping(String group, String user, int deviceId, boolean typing) {
        deliver(l -> l.onGroupTyping(group, user, deviceId, typing));
    }

    void onPresence(String user, boolean online, long lastSeen) {
        deliver(l -> l.onPresence(user, online, lastSeen));
    }

    void onIdentityChanged(String peer, int deviceId, String oldSafety, String newSafety) {
        IdentityChange c = new IdentityChange(peer, deviceId, oldSafety, newSafety);
        deliver(l -> l.onIdentityChanged(c));
    }

    void onConnection(int state, int lastError) {
        ConnectionState s = ConnectionState.fromCode(state);
        HushError e = lastError == 0 ? null : HushError.fromCode(lastError);
        deliver(l -> l.onConnectionStateChanged(s, e));
    }

    void onError(int error, String detail) {
        HushError e = HushError.fromCode(error);
        deliver(l -> l.onError(e, detail));
    }
}
