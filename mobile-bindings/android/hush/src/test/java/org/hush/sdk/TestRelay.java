package org.hush.sdk;

import java.io.File;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/** The real hushd, started on a free loopback port with a throw-away database. */
final class TestRelay {
    final File dir;
    final int port;
    private Process proc;

    TestRelay(File dir) throws IOException, InterruptedException {
        this.dir = dir;
        if (!dir.isDirectory() && !dir.mkdirs()) {
            throw new IOException("cannot create " + dir);
        }
        try (ServerSocket s = new ServerSocket(0)) {
            port = s.getLocalPort();
        }
        start();
    }

    static String hushd() {
        String p = System.getProperty("hush.hushd");
        if (p == null) {
            throw new IllegalStateException("set -Dhush.hushd=/path/to/hushd");
        }
        return p;
    }

    String url() {
        return "ws://127.0.0.1:" + port;
    }

    File db() {
        return new File(dir, "hushd.db");
    }

    void start() throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>();
        cmd.add(hushd());
        cmd.add("--listen");
        cmd.add("127.0.0.1:" + port);
        cmd.add("--metrics-listen");
        cmd.add("off");
        cmd.add("--db");
        cmd.add(db().getPath());
        cmd.add("--workers");
        cmd.add("1");
        cmd.add("--durability");
        cmd.add("normal");
        cmd.add("--log-file");
        cmd.add(new File(dir, "hushd.log").getPath());
        // push wake-ups to the test's own HTTP receiver on loopback
        cmd.add("--set");
        cmd.add("push_allow_http=on");
        cmd.add("--set");
        cmd.add("push_allow_private=on");
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true)
                .redirectOutput(ProcessBuilder.Redirect.appendTo(new File(dir, "hushd.out")));
        proc = pb.start();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
        while (System.nanoTime() < deadline) {
            if (!proc.isAlive()) {
                throw new IOException("hushd exited with " + proc.exitValue() + " (see " + dir + "/hushd.out)");
            }
            try (Socket s = new Socket()) {
                s.connect(new InetSocketAddress("127.0.0.1", port), 200);
                return;
            } catch (IOException notYet) {
                Thread.sleep(50);
            }
        }
        throw new IOException("hushd did not listen on " + port);
    }

    /** SIGTERM and wait; returns the exit status (0 for a clean stop). */
    int stop() throws InterruptedException {
        if (proc == null) {
            return 0;
        }
        proc.destroy();
        if (!proc.waitFor(20, TimeUnit.SECONDS)) {
            proc.destroyForcibly();
            proc.waitFor();
        }
        int rc = proc.exitValue();
        proc = null;
        return rc;
    }

    /** One number the sqlite3 shell reads from the relay's database (WAL: while it runs too). */
    long count(String query) throws IOException, InterruptedException {
        // stdout only, and without the JVM's LD_PRELOAD (libjsig warns on stderr in every child)
        ProcessBuilder pb = new ProcessBuilder("sqlite3", db().getPath(), query)
                .redirectError(ProcessBuilder.Redirect.INHERIT);
        pb.environment().remove("LD_PRELOAD");
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes(), java.nio.charset.StandardCharsets.UTF_8).trim();
        p.waitFor();
        try {
            return Long.parseLong(out);
        } catch (NumberFormatException e) {
            throw new IOException("sqlite3 said: " + out);
        }
    }

    /** Runs an SQL statement on the relay's database with the sqlite3 shell (relay stopped). */
    void sql(String statement) throws IOException, InterruptedException {
        Process p = new ProcessBuilder("sqlite3", db().getPath(), statement).inheritIO().start();
        if (p.waitFor() != 0) {
            throw new IOException("sqlite3 failed: " + statement);
        }
    }
}
