package org.hush.sdk;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertSame;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import com.sun.net.httpserver.HttpServer;
import java.io.File;
import java.math.BigInteger;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.security.KeyFactory;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.interfaces.ECPublicKey;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.ECPoint;
import java.security.spec.ECPublicKeySpec;
import java.util.Arrays;
import javax.crypto.Cipher;
import javax.crypto.KeyAgreement;
import javax.crypto.Mac;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.SecretKeySpec;
import java.lang.ref.WeakReference;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.BooleanSupplier;

import org.junit.After;
import org.junit.Before;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;
import org.junit.rules.Timeout;

/**
 * The Java binding on a real JVM (run with -Xcheck:jni) against the real hushd on loopback:
 * every test starts its own relay with a fresh database.
 */
public class HushClientTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder(new File(System.getProperty("hush.tmp", "/tmp")));
    @Rule
    public Timeout timeout = Timeout.seconds(120);

    private TestRelay relay;
    private final List<HushClient> clients = new ArrayList<>();

    @Before
    public void startRelay() throws Exception {
        relay = new TestRelay(tmp.newFolder("relay"));
    }

    @After
    public void stopAll() throws Exception {
        for (HushClient c : clients) {
            c.close();
        }
        assertEquals("hushd exit status after SIGTERM", 0, relay.stop());
    }

    // ---- helpers ---------------------------------------------------------------------------

    static byte[] key(int seed) {
        byte[] k = new byte[32];
        for (int i = 0; i < k.length; i++) {
            k[i] = (byte) (seed * 31 + i);
        }
        return k;
    }

    /** Collects every event; await() waits for a condition on what was collected. */
    static class Recorder implements HushListener {
        final List<Message> messages = new ArrayList<>();
        final List<Object[]> receipts = new ArrayList<>();
        final List<Object[]> typing = new ArrayList<>();
        final List<Object[]> presence = new ArrayList<>();
        final List<IdentityChange> identity = new ArrayList<>();
        final List<ConnectionState> states = new ArrayList<>();
        final List<HushError> errors = new ArrayList<>();
        final List<String> linkCodes = new ArrayList<>();
        final List<Object[]> files = new ArrayList<>();
        final Set<String> threads = new HashSet<>();

        private synchronized void note() {
            threads.add(Thread.currentThread().getName());
            notifyAll();
        }

        @Override
        public synchronized void onMessage(Message m) {
            messages.add(m);
            note();
        }

        @Override
        public synchronized void onReceipt(String peer, MessageId id, MessageState state) {
            receipts.add(new Object[] {peer, id, state});
            note();
        }

        @Override
        public synchronized void onTyping(String peer, int deviceId, boolean on) {
            typing.add(new Object[] {peer, deviceId, on});
            note();
        }

        final List<Object[]> groupTyping = new ArrayList<>();

        @Override
        public synchronized void onGroupTyping(String group, String user, int deviceId, boolean on) {
            groupTyping.add(new Object[] {group, user, deviceId, on});
            note();
        }

        synchronized int count(Message.Kind kind, String group, String from, String text) {
            int n = 0;
            for (Message m : messages) {
                if (m.kind() == kind && group.equals(m.groupId()) && from.equals(m.sender())
                        && (text == null || m.text().contains(text))) {
                    n++;
                }
            }
            return n;
        }

        @Override
        public synchronized void onPresence(String user, boolean online, long lastSeen) {
            presence.add(new Object[] {user, online, lastSeen});
            note();
        }

        @Override
        public synchronized void onIdentityChanged(IdentityChange c) {
            identity.add(c);
            note();
        }

        @Override
        public synchronized void onConnectionStateChanged(ConnectionState s, HushError e) {
            states.add(s);
            note();
        }

        @Override
        public synchronized void onError(HushError e, String detail) {
            errors.add(e);
            note();
        }

        @Override
        public synchronized void onFile(MessageId id, FileState state, long done, long total, HushError error) {
            files.add(new Object[] {id, state, done, total, error});
            note();
        }

        synchronized boolean hasFile(MessageId id, FileState s) {
            for (Object[] f : files) {
                if (f[0].equals(id) && f[1] == s) {
                    return true;
                }
            }
            return false;
        }

        synchronized HushError fileError(MessageId id) {
            for (Object[] f : files) {
                if (f[0].equals(id) && f[1] == FileState.FAILED) {
                    return (HushError) f[4];
                }
            }
            return null;
        }

        @Override
        public synchronized void onLinkCode(String code) {
            linkCodes.add(code);
            note();
        }

        synchronized boolean await(BooleanSupplier cond, long ms) throws InterruptedException {
            long deadline = System.currentTimeMillis() + ms;
            while (!cond.getAsBoolean()) {
                long left = deadline - System.currentTimeMillis();
                if (left <= 0) {
                    return false;
                }
                wait(left);
            }
            return true;
        }

        synchronized boolean hasReceipt(MessageId id, MessageState s) {
            for (Object[] r : receipts) {
                if (r[1].equals(id) && r[2] == s) {
                    return true;
                }
            }
            return false;
        }

        synchronized int messageCount() {
            return messages.size();
        }
    }

    private HushClient open(String name, Recorder r) throws HushException {
        HushClient c = HushClient.builder(new File(tmp.getRoot(), name + ".db").getPath(), key(name.hashCode()))
                .durability(Durability.NORMAL)
                .relayUrl(relay.url())
                .listener(r)
                .build();
        clients.add(c);
        return c;
    }

    private HushClient online(String name, Recorder r) throws Exception {
        HushClient c = open(name, r);
        if (!c.hasDevice()) {
            c.createDevice(name, 1);
        }
        c.start();
        c.waitOnline(15000);
        return c;
    }

    private void closeClient(HushClient c) {
        c.close();
        clients.remove(c);
    }

    // ---- push: a user agent's side of RFC 8291, written with the JDK alone ----------------

    private static byte[] hkdf(byte[] salt, byte[] ikm, byte[] info, int len) throws Exception {
        Mac m = Mac.getInstance("HmacSHA256");
        m.init(new SecretKeySpec(salt, "HmacSHA256"));
        byte[] prk = m.doFinal(ikm);
        m.init(new SecretKeySpec(prk, "HmacSHA256"));
        m.update(info);
        m.update((byte) 1);
        return Arrays.copyOf(m.doFinal(), len);
    }

    private static byte[] concat(byte[]... parts) {
        int n = 0;
        for (byte[] p : parts) {
            n += p.length;
        }
        byte[] out = new byte[n];
        int o = 0;
        for (byte[] p : parts) {
            System.arraycopy(p, 0, out, o, p.length);
            o += p.length;
        }
        return out;
    }

    private static byte[] point(ECPublicKey k) {
        byte[] out = new byte[65];
        out[0] = 4;
        byte[] x = k.getW().getAffineX().toByteArray();
        byte[] y = k.getW().getAffineY().toByteArray();
        System.arraycopy(x, Math.max(0, x.length - 32), out, 1 + Math.max(0, 32 - x.length), Math.min(32, x.length));
        System.arraycopy(y, Math.max(0, y.length - 32), out, 33 + Math.max(0, 32 - y.length), Math.min(32, y.length));
        return out;
    }

    private static byte[] decryptPush(byte[] body, KeyPair ua, byte[] auth) throws Exception {
        byte[] salt = Arrays.copyOfRange(body, 0, 16);
        int idlen = body[20] & 0xff;
        byte[] as = Arrays.copyOfRange(body, 21, 21 + idlen);
        ECPublicKey uaPub = (ECPublicKey) ua.getPublic();
        ECPoint w = new ECPoint(new BigInteger(1, Arrays.copyOfRange(as, 1, 33)), new BigInteger(1, Arrays.copyOfRange(as, 33, 65)));
        PublicKey asKey = KeyFactory.getInstance("EC").generatePublic(new ECPublicKeySpec(w, uaPub.getParams()));
        KeyAgreement ka = KeyAgreement.getInstance("ECDH");
        ka.init(ua.getPrivate());
        ka.doPhase(asKey, true);
        byte[] shared = ka.generateSecret();
        byte[] ikm = hkdf(auth, shared, concat("WebPush: info\0".getBytes(StandardCharsets.US_ASCII), point(uaPub), as), 32);
        byte[] cek = hkdf(salt, ikm, "Content-Encoding: aes128gcm\0".getBytes(StandardCharsets.US_ASCII), 16);
        byte[] nonce = hkdf(salt, ikm, "Content-Encoding: nonce\0".getBytes(StandardCharsets.US_ASCII), 12);
        Cipher c = Cipher.getInstance("AES/GCM/NoPadding");
        c.init(Cipher.DECRYPT_MODE, new SecretKeySpec(cek, "AES"), new GCMParameterSpec(128, nonce));
        byte[] pt = c.doFinal(Arrays.copyOfRange(body, 21 + idlen, body.length));
        int n = pt.length;
        while (n > 0 && pt[n - 1] == 0) {
            n--;
        }
        assertTrue("the last record's delimiter", n > 0 && pt[n - 1] == 2);
        return Arrays.copyOf(pt, n - 1);
    }

    @Test
    public void rooms() throws Exception {
        Recorder ra = new Recorder(), rb = new Recorder(), rc = new Recorder();
        HushClient a = online("jra", ra), b = online("jrb", rb), c = online("jrc", rc);
        String id = a.createGroup("équipe", "jrb", "jrc");
        assertEquals(32, id.length());
        assertTrue("b learns the room", rb.await(() -> rb.count(Message.Kind.GROUP_CHANGE, id, "jra", "created") == 1, 20000));
        assertTrue("c learns the room", rc.await(() -> rc.count(Message.Kind.GROUP_CHANGE, id, "jra", null) == 1, 20000));
        GroupInfo g = b.groupInfo(id);
        assertEquals("équipe", g.name());
        assertEquals(Arrays.asList("jra", "jrb", "jrc"), g.members());
        assertEquals(Arrays.asList("jra"), g.admins());
        assertTrue(g.isMember());
        assertFalse(g.isAdmin());
        assertEquals(1, g.version());
        MessageId mid = a.sendToGroup(id, "hello room");
        assertTrue(rb.await(() -> rb.count(Message.Kind.GROUP_TEXT, id, "jra", "hello room") == 1, 20000));
        assertTrue(rc.await(() -> rc.count(Message.Kind.GROUP_TEXT, id, "jra", "hello room") == 1, 20000));
        assertTrue(ra.await(() -> ra.hasReceipt(mid, MessageState.SENT), 20000));
        b.groupTyping(id, true);
        assertTrue("typing in the room", ra.await(() -> !ra.groupTyping.isEmpty(), 20000));
        synchronized (ra) {
            assertEquals(id, ra.groupTyping.get(0)[0]);
            assertEquals("jrb", ra.groupTyping.get(0)[1]);
        }
        try {
            b.addToGroup(id, "jrd");
            fail("a member who is not an admin changed the room");
        } catch (HushException e) {
            assertEquals(HushError.NOT_ALLOWED, e.error());
        }
        File photo = tmp.newFile("room.jpg");
        byte[] bytes = new byte[70000];
        new SecureRandom().nextBytes(bytes);
        java.nio.file.Files.write(photo.toPath(), bytes);
        MessageId fid = a.sendFileToGroup(id, photo.getPath(), null, "image/jpeg", null);
        assertTrue("a file in the room", rb.await(() -> rb.count(Message.Kind.FILE, id, "jra", "room.jpg") == 1, 20000));
        b.downloadAttachment(fid);
        assertTrue(rb.await(() -> rb.hasFile(fid, FileState.READY), 20000));
        File got = new File(tmp.getRoot(), "room-got.jpg");
        b.saveAttachment(fid, got.getPath());
        assertArrayEquals(bytes, java.nio.file.Files.readAllBytes(got.toPath()));
        assertFalse(a.groupInfo(id).sharesPresence());
        a.shareGroupPresence(id, true);
        assertTrue(a.groupInfo(id).sharesPresence());
        assertTrue("presence shared with the room", rb.await(() -> {
            for (Object[] p : rb.presence) {
                if ("jra".equals(p[0]) && Boolean.TRUE.equals(p[1])) {
                    return true;
                }
            }
            return false;
        }, 20000));
        a.removeFromGroup(id, "jrc");
        assertTrue(rc.await(() -> rc.count(Message.Kind.GROUP_CHANGE, id, "jra", "removed jrc") == 1, 20000));
        try {
            c.shareGroupPresence(id, true);
            fail("a removed member shared its presence with the room");
        } catch (HushException e) {
            assertEquals(HushError.NOT_ALLOWED, e.error());
        }
        assertFalse(c.groupInfo(id).isMember());
        try {
            c.sendToGroup(id, "still here?");
            fail("a removed member sent to the room");
        } catch (HushException e) {
            assertEquals(HushError.NOT_ALLOWED, e.error());
        }
        a.renameGroup(id, "team");
        assertTrue(rb.await(() -> rb.count(Message.Kind.GROUP_CHANGE, id, "jra", "renamed") == 1, 20000));
        assertEquals("team", b.groups().get(0).name());
        List<HistoryEntry> h = b.groupHistory(id, 0, 50);
        int changes = 0, texts = 0;
        for (HistoryEntry e : h) {
            if (e.isGroupChange()) {
                changes++;
            } else if (e.text().equals("hello room")) {
                texts++;
                assertEquals("jra", e.peer());
            }
        }
        assertEquals(3, changes);
        assertEquals(1, texts);
        try {
            a.groupInfo("00000000000000000000000000000000");
            fail("an unknown room was found");
        } catch (HushException e) {
            assertEquals(HushError.NOT_FOUND, e.error());
        }
    }

    @Test
    public void sendAndReceiveFile() throws Exception {
        Recorder ra = new Recorder(), rb = new Recorder();
        HushClient a = online("jfa", ra), b = online("jfb", rb);
        File src = tmp.newFile("photo.jpg");
        byte[] content = new byte[3 * 1024 * 1024 + 17];
        new SecureRandom().nextBytes(content);
        java.nio.file.Files.write(src.toPath(), content);
        byte[] thumb = "tiny".getBytes(StandardCharsets.UTF_8);
        MessageId id = a.sendFile("jfb", src.getPath(), null, "image/jpeg", thumb);
        assertTrue("uploaded", ra.await(() -> ra.hasFile(id, FileState.SENT), 30000));
        assertTrue("progress was reported", ra.await(() -> {
            for (Object[] f : ra.files) {
                if (f[1] == FileState.UPLOADING) {
                    return true;
                }
            }
            return false;
        }, 1000));
        assertTrue("the file message", rb.await(() -> {
            for (Message m : rb.messages) {
                if (m.kind() == Message.Kind.FILE) {
                    return true;
                }
            }
            return false;
        }, 20000));
        Message m = null;
        synchronized (rb) {
            for (Message x : rb.messages) {
                if (x.kind() == Message.Kind.FILE) {
                    m = x;
                }
            }
        }
        assertEquals(id, m.id());
        assertEquals("photo.jpg", m.text());
        Attachment att = b.attachment(id);
        assertEquals("photo.jpg", att.fileName());
        assertEquals("image/jpeg", att.contentType());
        assertEquals(content.length, att.size());
        assertEquals(FileState.REMOTE, att.state());
        assertFalse(att.isOutgoing());
        assertArrayEquals(thumb, att.thumbnail());
        try {
            b.saveAttachment(id, new File(tmp.getRoot(), "early.jpg").getPath());
            fail("saved before it was downloaded");
        } catch (HushException e) {
            assertEquals(HushError.NOT_FOUND, e.error());
        }
        b.downloadAttachment(id);
        assertTrue("downloaded", rb.await(() -> rb.hasFile(id, FileState.READY), 30000));
        File out = new File(tmp.getRoot(), "received.jpg");
        b.saveAttachment(id, out.getPath());
        assertArrayEquals(content, java.nio.file.Files.readAllBytes(out.toPath()));
        List<HistoryEntry> h = b.history("jfa", 0, 10);
        assertEquals(1, h.size());
        assertTrue(h.get(0).isFile());
        assertEquals("photo.jpg", h.get(0).text());
        assertEquals(FileState.SENT, a.attachment(id).state());
        try {
            a.sendFile("jfb", new File(tmp.getRoot(), "missing").getPath(), null, null, null);
            fail("a missing file was accepted");
        } catch (HushException e) {
            assertEquals(HushError.INVALID_ARG, e.error());
        }
        try {
            b.attachment(MessageId.of(new byte[16]));
            fail("an unknown id was found");
        } catch (HushException e) {
            assertEquals(HushError.NOT_FOUND, e.error());
        }
    }

    @Test
    public void pushWakeUp() throws Exception {
        // the push service: the JDK's own HTTP server on loopback, keeping what it is sent
        List<byte[]> bodies = new ArrayList<>();
        List<String> urgency = new ArrayList<>();
        List<String> authorization = new ArrayList<>();
        HttpServer push = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
        push.createContext("/", ex -> {
            byte[] b = ex.getRequestBody().readAllBytes();
            synchronized (bodies) {
                bodies.add(b);
                urgency.add(ex.getRequestHeaders().getFirst("Urgency"));
                authorization.add(ex.getRequestHeaders().getFirst("Authorization"));
                bodies.notifyAll();
            }
            ex.sendResponseHeaders(201, -1);
            ex.close();
        });
        push.start();
        try {
            KeyPairGenerator g = KeyPairGenerator.getInstance("EC");
            g.initialize(new ECGenParameterSpec("secp256r1"));
            KeyPair ua = g.generateKeyPair();
            byte[] auth = new byte[16];
            new SecureRandom().nextBytes(auth);

            Recorder rb = new Recorder();
            HushClient bob = online("pushbob", rb);
            try {
                bob.pushRegister("http://127.0.0.1:2/up", new byte[64], auth);
                fail("a 64-byte key was accepted");
            } catch (HushException e) {
                assertEquals(HushError.INVALID_ARG, e.error());
            }
            bob.pushRegister("http://127.0.0.1:" + push.getAddress().getPort() + "/up/bob", point((ECPublicKey) ua.getPublic()), auth);
            long deadline = System.currentTimeMillis() + 10000;
            while (relay.count("SELECT count(*) FROM push_endpoints WHERE username = 'pushbob'") != 1) {
                assertTrue("the relay has the endpoint (errors: " + rb.errors + ")", System.currentTimeMillis() < deadline);
                Thread.sleep(50);
            }
            bob.stop();

            HushClient alice = online("pushalice", new Recorder());
            for (int i = 0; i < 3; i++) {
                alice.send("pushbob", "wake up " + i);
            }
            alice.flush(15000);
            synchronized (bodies) {
                long end = System.currentTimeMillis() + 10000;
                while (bodies.isEmpty() && System.currentTimeMillis() < end) {
                    bodies.wait(200);
                }
            }
            Thread.sleep(1200); // nothing more for this burst
            synchronized (bodies) {
                assertEquals("one wake-up for the burst", 1, bodies.size());
                assertEquals("high", urgency.get(0));
                assertArrayEquals("{\"v\":1}".getBytes(StandardCharsets.US_ASCII), decryptPush(bodies.get(0), ua, auth));
                // the key the app gives a distributor is the one that signs the wake-ups
                String vapid = bob.pushVapidKey();
                assertNotNull(vapid);
                assertEquals(87, vapid.length());
                assertTrue(authorization.get(0), authorization.get(0).endsWith(", k=" + vapid));
            }
            // what the push receiver runs: connect, take everything, stop
            bob.wake(15000);
            assertEquals(3, rb.messageCount());
            assertEquals(ConnectionState.STOPPED, bob.connectionState());
            bob.pushUnregister();
        } finally {
            push.stop(0);
        }
    }

    // ---- tests -----------------------------------------------------------------------------

    @Test
    public void linkedDeviceRemovalAndRecovery() throws Exception {
        Recorder rp = new Recorder();
        Recorder rb = new Recorder();
        HushClient phone = online("pia", rp);
        String recovery = phone.recoveryCode();
        assertNotNull("a recovery code after the first registration", recovery);
        phone.forgetRecoveryCode();
        assertNull(phone.recoveryCode());
        HushClient bob = online("rob", rb);

        // the laptop: no device yet; it shows a code, the phone links it
        Recorder rl = new Recorder();
        HushClient laptop = open("pia-laptop", rl);
        laptop.setDeviceName("laptop");
        laptop.startLink();
        assertTrue("link code", rl.await(() -> !rl.linkCodes.isEmpty(), 15000));
        String code;
        synchronized (rl) {
            code = rl.linkCodes.get(0);
        }
        assertTrue(code.startsWith("hush-link-1:"));
        assertEquals(2, phone.linkDevice(code, 15000));
        laptop.waitOnline(15000);
        assertEquals("pia", laptop.username());
        assertEquals(2, laptop.deviceId());
        try {
            phone.linkDevice("not a link code", 1000);
            fail("a malformed code");
        } catch (HushException e) {
            assertEquals(HushError.INVALID_ARG, e.error());
        }

        // rob writes: both devices get it; the laptop answers and the phone sees it as sent elsewhere
        bob.send("pia", "to both");
        assertTrue(rp.await(() -> rp.messageCount() == 1, 15000));
        assertTrue(rl.await(() -> rl.messageCount() == 1, 15000));
        laptop.send("rob", "from the laptop");
        assertTrue(rb.await(() -> rb.messageCount() == 1, 15000));
        assertTrue(rp.await(() -> rp.messageCount() == 2, 15000));
        Message copy;
        synchronized (rp) {
            copy = rp.messages.get(1);
        }
        assertEquals(Message.Kind.SENT_ELSEWHERE, copy.kind());
        assertEquals("pia", copy.sender());
        assertEquals(2, copy.senderDevice());
        assertEquals("rob", copy.conversation());
        assertEquals("from the laptop", copy.text());
        assertEquals("pia", rb.messages.get(0).conversation()); // a received message: its sender
        assertEquals(bob.safetyNumber("pia", 1), bob.safetyNumber("pia", 2));
        List<DeviceInfo> devs = phone.devices(15000);
        assertEquals(2, devs.size());
        assertTrue(devs.get(0).isThisDevice());
        assertEquals(2, devs.get(1).deviceId());
        assertEquals("laptop", devs.get(1).name());
        assertTrue(devs.get(1).isOnline());

        // the phone removes the laptop: it stops for good
        phone.removeDevice(2, 15000);
        assertTrue(rl.await(() -> rl.errors.contains(HushError.DEVICE_REMOVED), 15000));
        try {
            phone.removeDevice(1, 15000);
            fail("the last device");
        } catch (HushException e) {
            assertEquals(HushError.INVALID_ARG, e.error());
        }

        // every device lost: the recovery code gives a new one, and the phone is removed
        closeClient(laptop);
        Recorder rn = new Recorder();
        HushClient fresh = open("pia-new", rn);
        fresh.startRecover("pia", recovery);
        fresh.waitOnline(15000);
        assertEquals("pia", fresh.username());
        assertTrue(fresh.deviceId() > 2);
        assertNotNull("a new recovery code", fresh.recoveryCode());
        assertNotEquals(recovery, fresh.recoveryCode());
        assertTrue(rp.await(() -> rp.errors.contains(HushError.DEVICE_REMOVED), 15000));
    }

    @Test
    public void sendReceiveReceiptsAndHistory() throws Exception {
        Recorder ra = new Recorder();
        Recorder rb = new Recorder();
        HushClient alice = online("alice", ra);
        HushClient bob = online("bob", rb);
        assertEquals("alice", alice.username());
        assertEquals(1, alice.deviceId());
        assertEquals(ConnectionState.ONLINE, alice.connectionState());

        String text = "héllo ☃ 😀 \u0000 end"; // non-ASCII, a supplementary character and a NUL
        MessageId id = alice.send("bob", text);
        assertTrue("bob receives", rb.await(() -> rb.messages.size() == 1, 15000));
        Message m = rb.messages.get(0);
        assertEquals(text, m.text());
        assertEquals("alice", m.sender());
        assertEquals(1, m.senderDevice());
        assertEquals(id, m.id());
        assertEquals(Message.Kind.TEXT, m.kind());
        assertNull(m.groupId());
        assertTrue(m.localId() > 0);
        assertTrue("receipts on the network thread", rb.threads.contains("hush-network"));

        assertTrue("SENT", ra.await(() -> ra.hasReceipt(id, MessageState.SENT), 15000));
        assertTrue("DELIVERED", ra.await(() -> ra.hasReceipt(id, MessageState.DELIVERED), 15000));
        bob.markRead(m.localId());
        assertTrue("READ", ra.await(() -> ra.hasReceipt(id, MessageState.READ), 15000));
        assertEquals(MessageState.READ, alice.messageState(id));

        List<HistoryEntry> ha = alice.history("bob", 0, 10);
        assertEquals(1, ha.size());
        assertTrue(ha.get(0).isOutgoing());
        assertEquals(text, ha.get(0).text());
        assertEquals(id, ha.get(0).id());
        List<HistoryEntry> hb = bob.history("alice", 0, 10);
        assertEquals(1, hb.size());
        assertFalse(hb.get(0).isOutgoing());
        assertTrue(hb.get(0).isRead());
        assertEquals(1, hb.get(0).peerDevice());
        bob.deleteMessage(hb.get(0).localId());
        assertEquals(0, bob.history("alice", 0, 10).size());
        assertArrayEquals(new int[] {1}, alice.peerDevices("bob"));

        // and back, many times: local references must not pile up on the network thread
        for (int i = 0; i < 300; i++) {
            bob.send("alice", "reply " + i);
        }
        assertTrue(ra.await(() -> ra.messages.size() == 300, 60000));
        for (int i = 0; i < 300; i++) {
            assertEquals("reply " + i, ra.messages.get(i).text());
        }
        alice.checkIntegrity();
    }

    @Test
    public void offlineDeliveryExactlyOnceAcrossReopen() throws Exception {
        Recorder ra = new Recorder();
        HushClient alice = online("carol", ra);
        Recorder rb0 = new Recorder();
        HushClient dave = online("dave", rb0); // registers dave, then goes away
        closeClient(dave);

        final int n = 200;
        List<MessageId> ids = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            ids.add(alice.send("dave", "offline " + i));
        }
        alice.flush(30000);
        assertEquals(0, alice.pendingCount());
        assertEquals(MessageState.SENT, alice.messageState(ids.get(n - 1)));

        Recorder rb = new Recorder();
        dave = online("dave", rb);
        assertTrue(rb.await(() -> rb.messages.size() >= n, 60000));
        Set<Long> local = new HashSet<>();
        for (int i = 0; i < n; i++) {
            Message m = rb.messages.get(i);
            assertEquals("offline " + i, m.text());
            assertEquals(ids.get(i), m.id());
            assertTrue(local.add(m.localId()));
        }
        closeClient(dave);

        // reopened: nothing is reported twice
        Recorder rb2 = new Recorder();
        dave = online("dave", rb2);
        alice.send("dave", "after reopen");
        assertTrue(rb2.await(() -> rb2.messages.size() >= 1, 15000));
        Thread.sleep(300);
        assertEquals(1, rb2.messageCount());
        assertEquals("after reopen", rb2.messages.get(0).text());
        assertEquals(n, rb.messageCount());
    }

    @Test
    public void typingAndPresence() throws Exception {
        Recorder ra = new Recorder();
        Recorder rb = new Recorder();
        HushClient erin = online("erin", ra);
        HushClient fred = online("fred", rb);
        erin.send("fred", "hi");
        assertTrue(rb.await(() -> rb.messages.size() == 1, 15000));
        erin.typing("fred", true);
        assertTrue(rb.await(() -> !rb.typing.isEmpty(), 10000));
        assertEquals("erin", rb.typing.get(0)[0]);
        assertEquals(1, rb.typing.get(0)[1]);
        assertEquals(true, rb.typing.get(0)[2]);
        erin.typing("fred", false);
        assertTrue(rb.await(() -> rb.typing.size() == 2, 10000));
        assertEquals(false, rb.typing.get(1)[2]);

        fred.presenceAllow("erin");
        erin.presenceSubscribe("fred");
        assertTrue(ra.await(() -> !ra.presence.isEmpty(), 10000));
        assertEquals("fred", ra.presence.get(0)[0]);
        assertEquals(true, ra.presence.get(0)[1]);
        int before = ra.presence.size();
        fred.stop();
        assertTrue(ra.await(() -> ra.presence.size() > before, 10000));
        assertEquals(false, ra.presence.get(ra.presence.size() - 1)[1]);
        assertTrue(rb.states.contains(ConnectionState.STOPPED));
    }

    @Test
    public void safetyNumbers() throws Exception {
        Recorder ra = new Recorder();
        Recorder rb = new Recorder();
        HushClient gina = online("gina", ra);
        HushClient hank = online("hank", rb);
        gina.send("hank", "hello");
        assertTrue(rb.await(() -> rb.messages.size() == 1, 15000));
        String sa = gina.safetyNumber("hank", 1);
        String sb = hank.safetyNumber("gina", 1);
        assertEquals(60, sa.length());
        assertTrue(sa.matches("[0-9]{60}"));
        assertEquals(sa, sb);
        byte[] scanned = hank.safetyScannable("gina", 1);
        assertTrue(gina.safetyMatches("hank", 1, scanned));
        byte[] wrong = scanned.clone();
        wrong[wrong.length - 1] ^= 1;
        assertFalse(gina.safetyMatches("hank", 1, wrong));
        assertFalse(gina.safetyMatches("hank", 1, new byte[] {1, 2, 3}));
        assertFalse("a code is not its own mirror", gina.safetyMatches("hank", 1, gina.safetyScannable("hank", 1)));
        try {
            gina.safetyNumber("nobody", 1);
            fail("no identity known");
        } catch (HushException e) {
            assertEquals(HushError.NOT_FOUND, e.error());
        }
        assertNull(gina.identityPending("hank", 1));
    }

    @Test
    public void identityChange() throws Exception {
        Recorder ra = new Recorder();
        HushClient ivan = online("ivan", ra);
        Recorder rb = new Recorder();
        HushClient judy = online("judy", rb);
        judy.send("ivan", "before");
        assertTrue(ra.await(() -> ra.messages.size() == 1, 15000));
        String before = ivan.safetyNumber("judy", 1);

        // judy reinstalls: a new database (new keys) under the same name and device; the relay
        // would refuse the name, so the relay side of the reinstall is done by hand
        closeClient(judy);
        for (String suffix : new String[] {"", "-wal", "-shm"}) {
            new File(tmp.getRoot(), "judy.db" + suffix).delete();
        }
        relay.stop();
        relay.sql("DELETE FROM one_time_prekeys WHERE username='judy'; DELETE FROM devices WHERE username='judy'; "
                + "DELETE FROM users WHERE username='judy';");
        relay.start();
        ivan.waitOnline(20000);
        Recorder rb2 = new Recorder();
        judy = online("judy", rb2);
        judy.send("ivan", "new phone");
        assertTrue(ra.await(() -> ra.identity.size() == 1, 20000));
        IdentityChange c = ra.identity.get(0);
        assertEquals("judy", c.peer());
        assertEquals(1, c.deviceId());
        assertEquals(before, c.oldSafetyNumber());
        assertNotEquals(c.oldSafetyNumber(), c.newSafetyNumber());
        assertEquals(1, ra.messageCount()); // held back until the user decides
        IdentityChange pending = ivan.identityPending("judy", 1);
        assertNotNull(pending);
        assertEquals(c.newSafetyNumber(), pending.newSafetyNumber());
        try {
            ivan.acceptIdentity("judy", 1, c.oldSafetyNumber()); // not the number of the new key
            fail("a number no pending key has");
        } catch (HushException e) {
            assertEquals(HushError.SAFETY_MISMATCH, e.error());
        }
        ivan.acceptIdentity("judy", 1, c.newSafetyNumber()); // the number the user compared
        assertTrue(ra.await(() -> ra.messages.size() == 2, 15000));
        assertEquals("new phone", ra.messages.get(1).text());
        assertEquals(c.newSafetyNumber(), ivan.safetyNumber("judy", 1));
        try {
            ivan.acceptIdentity("judy", 1);
            fail("nothing pending any more");
        } catch (HushException e) {
            assertEquals(HushError.NOT_FOUND, e.error());
        }
    }

    @Test
    public void errorMapping() throws Exception {
        for (HushError e : HushError.values()) {
            assertSame(e, HushError.fromCode(e.code()));
            if (e.code() > 0) {
                assertFalse(HushClient.describe(e).isEmpty());
            }
        }
        assertSame(HushError.UNKNOWN, HushError.fromCode(9999));
        assertNotNull(HushClient.version());

        Recorder r = new Recorder();
        HushClient kim = open("kim", r);
        assertFalse(kim.hasDevice());
        expect(HushError.NO_DEVICE, () -> kim.username());
        expect(HushError.NO_DEVICE, () -> kim.start());
        expect(HushError.INVALID_ARG, () -> kim.createDevice("Not Valid!", 1));
        expect(HushError.INVALID_ARG, () -> kim.createDevice(null, 1));
        expect(HushError.INVALID_ARG, () -> kim.createDevice("kim", 0));
        expect(HushError.TOO_BIG, () -> kim.createDevice(new String(new char[5000]).replace('\0', 'k'), 1));
        kim.createDevice("kim", 1);
        expect(HushError.DEVICE_EXISTS, () -> kim.createDevice("kim", 1));
        expect(HushError.NOT_RUNNING, () -> kim.waitOnline(10));
        expect(HushError.INVALID_ARG, () -> kim.send("someone", null));
        expect(HushError.INVALID_ARG, () -> kim.send(null, "x"));
        char[] big = new char[HushClient.MAX_BODY_BYTES + 1];
        java.util.Arrays.fill(big, 'a');
        expect(HushError.TOO_BIG, () -> kim.send("someone", new String(big)));
        expect(HushError.INVALID_ARG, () -> kim.history("someone", 0, 0));
        expect(HushError.INVALID_ARG, () -> kim.presenceAllow("ok", null));
        expect(HushError.NOT_FOUND, () -> kim.deleteMessage(123456));
        kim.start();
        expect(HushError.INVALID_ARG, () -> kim.start()); // already running
        kim.waitOnline(15000);

        // a message to a user the relay does not know fails (state FAILED), reported as a receipt
        MessageId id = kim.send("nosuchuser", "hello?");
        assertTrue(r.await(() -> r.hasReceipt(id, MessageState.FAILED), 15000));
        assertEquals(MessageState.FAILED, kim.messageState(id));

        // wrong database key
        closeClient(kim);
        try {
            HushClient.builder(new File(tmp.getRoot(), "kim.db").getPath(), key(42)).build().close();
            fail("wrong key accepted");
        } catch (HushException e) {
            assertEquals(HushError.DB_KEY, e.error());
            assertEquals(6, e.code());
            assertTrue(e.getMessage(), e.getMessage().contains(HushClient.describe(HushError.DB_KEY)));
        }
        expect(HushError.INVALID_ARG, () -> HushClient.builder(tmp.getRoot() + "/x.db", new byte[16]).build());
        expect(HushError.INVALID_ARG, () -> HushClient.builder(null, key(1)).build());
        // a file that is not a database
        File junk = tmp.newFile("junk.db");
        java.nio.file.Files.write(junk.toPath(), "this is not a database at all".getBytes("UTF-8"));
        expect(HushError.DB_CORRUPT, () -> HushClient.builder(junk.getPath(), key(1)).build());
    }

    interface Call {
        void run() throws Exception;
    }

    static void expect(HushError want, Call c) throws Exception {
        try {
            c.run();
        } catch (HushException e) {
            assertEquals(e.getMessage(), want, e.error());
            return;
        }
        fail("expected " + want);
    }

    @Test
    public void closeSemantics() throws Exception {
        Recorder r = new Recorder();
        HushClient lee = online("lee", r);
        lee.close();
        lee.close(); // harmless
        assertTrue(lee.isClosed());
        expect(HushError.CLOSED, () -> lee.send("x", "y"));
        expect(HushError.CLOSED, () -> lee.username());
        expect(HushError.CLOSED, () -> lee.start());
        expect(HushError.CLOSED, () -> lee.stop());
        expect(HushError.CLOSED, () -> lee.history("x", 0, 10));
        expect(HushError.CLOSED, () -> lee.connectionState());
        assertTrue(r.states.contains(ConnectionState.STOPPED));

        // close from another thread while this one waits: the wait ends at once
        HushClient offline = HushClient.builder(new File(tmp.getRoot(), "mia.db").getPath(), key(3))
                .relayUrl("ws://127.0.0.1:1").build(); // nothing listens there: stays offline
        offline.createDevice("mia", 1);
        offline.start();
        offline.send("someone", "queued");
        AtomicReference<HushError> seen = new AtomicReference<>();
        Thread waiter = new Thread(() -> {
            try {
                offline.flush(60000);
            } catch (HushException e) {
                seen.set(e.error());
            }
        });
        waiter.start();
        Thread.sleep(300);
        long t0 = System.nanoTime();
        offline.close();
        waiter.join(20000);
        assertFalse(waiter.isAlive());
        assertTrue("wait ended by close, not by its timeout", System.nanoTime() - t0 < 20_000_000_000L);
        assertTrue(String.valueOf(seen.get()), seen.get() == HushError.NOT_RUNNING || seen.get() == HushError.CLOSED);

        // close() and stop() from inside a listener are refused (they would wait for themselves)
        AtomicReference<Throwable> fromCallback = new AtomicReference<>();
        AtomicReference<HushClient> self = new AtomicReference<>();
        Recorder r3 = new Recorder() {
            @Override
            public synchronized void onConnectionStateChanged(ConnectionState s, HushError e) {
                super.onConnectionStateChanged(s, e);
                if (s == ConnectionState.ONLINE && fromCallback.get() == null) {
                    try {
                        self.get().close();
                        fromCallback.set(new AssertionError("close() from a callback returned"));
                    } catch (IllegalStateException expected) {
                        fromCallback.set(expected);
                    }
                }
            }
        };
        HushClient ned = open("ned", r3);
        ned.createDevice("ned", 1);
        self.set(ned);
        ned.start();
        ned.waitOnline(15000);
        assertTrue(r3.await(() -> fromCallback.get() != null, 10000));
        assertTrue(String.valueOf(fromCallback.get()), fromCallback.get() instanceof IllegalStateException);
        assertFalse(ned.isClosed());
        ned.send("lee", "still works");
        ned.flush(15000);
    }

    @Test
    public void listenerIsCollectedAfterClose() throws Exception {
        WeakReference<Recorder> weak = useAndClose();
        for (int i = 0; i < 50 && weak.get() != null; i++) {
            System.gc();
            Thread.sleep(20);
        }
        assertNull("listener still reachable after close", weak.get());
    }

    /** A client with a listener that sees traffic, then closed; only a weak reference escapes. */
    private WeakReference<Recorder> useAndClose() throws Exception {
        Recorder r = new Recorder();
        HushClient olga = online("olga", r);
        MessageId id = olga.send("nobody", "x"); // traffic through the callbacks
        assertTrue(r.await(() -> r.hasReceipt(id, MessageState.FAILED), 15000));
        olga.close();
        clients.remove(olga);
        return new WeakReference<>(r);
    }

    @Test
    public void listenerExceptionsAndExecutor() throws Exception {
        ExecutorService ui = Executors.newSingleThreadExecutor(task -> new Thread(task, "fake-ui-thread"));
        try {
            Recorder throwing = new Recorder() {
                @Override
                public synchronized void onMessage(Message m) {
                    super.onMessage(m);
                    throw new RuntimeException("listener bug (expected in this test)");
                }
            };
            HushClient pam = HushClient.builder(new File(tmp.getRoot(), "pam.db").getPath(), key(7))
                    .durability(Durability.NORMAL).relayUrl(relay.url()).listener(throwing)
                    .callbackExecutor(ui).build();
            clients.add(pam);
            pam.createDevice("pam", 1);
            pam.start();
            pam.waitOnline(15000);
            Recorder rq = new Recorder();
            HushClient quin = online("quin", rq);
            for (int i = 0; i < 5; i++) {
                quin.send("pam", "n" + i);
            }
            assertTrue("a throwing listener does not stop delivery", throwing.await(() -> throwing.messages.size() == 5, 15000));
            assertEquals(Set.of("fake-ui-thread"), throwing.threads);
        } finally {
            ui.shutdownNow();
        }
    }

    @Test
    public void networkThreadIsDetachedWhenStopped() throws Exception {
        Recorder r = new Recorder();
        HushClient rex = online("rex", r);
        assertTrue(r.await(() -> r.threads.contains("hush-network"), 5000));
        for (int i = 0; i < 5; i++) {
            rex.stop();
            rex.start();
            rex.waitOnline(15000);
        }
        rex.stop();
        // a thread attached to the JVM and never detached would still be listed
        for (int i = 0; i < 50 && liveNetworkThreads() > 0; i++) {
            Thread.sleep(20);
        }
        assertEquals(0, liveNetworkThreads());
    }

    private static int liveNetworkThreads() {
        int n = 0;
        for (Thread t : Thread.getAllStackTraces().keySet()) {
            if (t.getName().equals("hush-network") && t.isAlive()) {
                n++;
            }
        }
        return n;
    }
}
