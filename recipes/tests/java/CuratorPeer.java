// A small Apache Curator peer driven by a line protocol on stdin/stdout, for interop tests:
// Rust and Java clients taking part in the same election or contending for the same lock.
//
// Usage: java -cp <curator + zookeeper jars>:<dir> CuratorPeer CONNECT [SESSION_MS]
//
// Prints "READY" once connected. Then reads one command per line and answers with one line:
//   latch PATH ID         start a LeaderLatch           -> LATCH_STARTED
//   latch-close           close it (resigns at once)    -> LATCH_CLOSED
//   is-leader                                           -> IS_LEADER true|false
//   leader                current leader's id           -> LEADER_ID <id>   (empty: none)
//   participants          ids in line order             -> PARTICIPANTS a,b,c
//   mutex-acquire PATH [TIMEOUT_MS]  InterProcessMutex  -> ACQUIRED | TIMEOUT
//   mutex-release                                       -> RELEASED
//   read-acquire PATH [TIMEOUT_MS]   InterProcessReadWriteLock read lock  -> ACQUIRED | TIMEOUT
//   write-acquire PATH [TIMEOUT_MS]  InterProcessReadWriteLock write lock -> ACQUIRED | TIMEOUT
//   rw-release            release the read/write lock held                -> RELEASED
//   quit                  close everything              -> BYE, then exit
// Asynchronous events, printed when they happen: LEADER, NOT_LEADER (latch listener),
// STATE <curator connection state>. Failures: "ERROR <message>".
// The program exits when stdin is closed (the test process died), so it never outlives a test.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderLatchListener;
import org.apache.curator.framework.recipes.leader.Participant;
import org.apache.curator.framework.recipes.locks.InterProcessLock;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.InterProcessReadWriteLock;
import org.apache.curator.retry.ExponentialBackoffRetry;

public class CuratorPeer {
    private static final Object OUT = new Object();

    static void say(String line) {
        synchronized (OUT) {
            System.out.println(line);
            System.out.flush();
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: CuratorPeer CONNECT [SESSION_MS]");
            System.exit(2);
        }
        int sessionMs = args.length > 1 ? Integer.parseInt(args[1]) : 10000;
        CuratorFramework client = CuratorFrameworkFactory.builder()
                .connectString(args[0])
                .sessionTimeoutMs(sessionMs)
                .connectionTimeoutMs(10000)
                .retryPolicy(new ExponentialBackoffRetry(20, 10))
                .build();
        client.getConnectionStateListenable().addListener((c, s) -> say("STATE " + s));
        client.start();
        if (!client.blockUntilConnected(20, TimeUnit.SECONDS)) {
            say("ERROR could not connect to " + args[0]);
            System.exit(1);
        }
        say("READY");

        LeaderLatch latch = null;
        InterProcessMutex mutex = null;
        InterProcessLock rw = null;
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] a = line.trim().split("\\s+");
            if (a.length == 0 || a[0].isEmpty()) {
                continue;
            }
            try {
                switch (a[0]) {
                    case "latch": {
                        latch = new LeaderLatch(client, a[1], a.length > 2 ? a[2] : "");
                        latch.addListener(new LeaderLatchListener() {
                            public void isLeader() { say("LEADER"); }
                            public void notLeader() { say("NOT_LEADER"); }
                        });
                        latch.start();
                        say("LATCH_STARTED");
                        break;
                    }
                    case "latch-close": {
                        if (latch != null) {
                            latch.close();
                            latch = null;
                        }
                        say("LATCH_CLOSED");
                        break;
                    }
                    case "is-leader":
                        say("IS_LEADER " + (latch != null && latch.hasLeadership()));
                        break;
                    case "leader": {
                        Participant p = latch.getLeader();
                        say("LEADER_ID " + (p.isLeader() ? p.getId() : ""));
                        break;
                    }
                    case "participants": {
                        List<String> ids = new ArrayList<>();
                        for (Participant p : latch.getParticipants()) {
                            ids.add(p.getId());
                        }
                        say("PARTICIPANTS " + String.join(",", ids));
                        break;
                    }
                    case "mutex-acquire": {
                        mutex = new InterProcessMutex(client, a[1]);
                        long t = a.length > 2 ? Long.parseLong(a[2]) : 30000;
                        say(mutex.acquire(t, TimeUnit.MILLISECONDS) ? "ACQUIRED" : "TIMEOUT");
                        break;
                    }
                    case "mutex-release": {
                        if (mutex != null) {
                            mutex.release();
                            mutex = null;
                        }
                        say("RELEASED");
                        break;
                    }
                    case "read-acquire":
                    case "write-acquire": {
                        InterProcessReadWriteLock l = new InterProcessReadWriteLock(client, a[1]);
                        rw = a[0].equals("read-acquire") ? l.readLock() : l.writeLock();
                        long t = a.length > 2 ? Long.parseLong(a[2]) : 30000;
                        say(rw.acquire(t, TimeUnit.MILLISECONDS) ? "ACQUIRED" : "TIMEOUT");
                        break;
                    }
                    case "rw-release": {
                        if (rw != null) {
                            rw.release();
                            rw = null;
                        }
                        say("RELEASED");
                        break;
                    }
                    case "quit":
                        if (latch != null) {
                            latch.close();
                        }
                        client.close();
                        say("BYE");
                        System.exit(0);
                        break;
                    default:
                        say("ERROR unknown command " + a[0]);
                }
            } catch (Exception e) {
                say("ERROR " + e.getClass().getSimpleName() + ": " + e.getMessage());
            }
        }
        // stdin closed: the test process is gone.
        System.exit(0);
    }
}
