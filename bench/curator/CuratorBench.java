// CuratorBench: the Apache Curator 5.4.0 peer of `zkr-bench` (see docs/benchmarking.md).
//
// Same workloads, same op counts, same root-path convention (/zkr-bench/<cmd>-<unix-ms>, removed
// afterwards) and the same JSON field names, so that scripts/bench-compare can print zkr/Curator
// ratios from one run on one machine. Every client is its own CuratorFramework (own session),
// built the way a normal Curator user builds one (ExponentialBackoffRetry(10, 3)); every workload
// uses the idiomatic Curator recipe:
//
//   w1, w2     InterProcessMutex
//   w3         InterProcessReadWriteLock
//   w4         LeaderLatch (leader: latch.close() then client.close())
//   w5         CuratorCache(SINGLE_NODE_CACHE) per subscriber + setData by the publisher
//   w6seq      create().withMode(PERSISTENT_SEQUENTIAL) (+ delete), pipelined with inBackground
//              in batches like zkr's SequentialIds (--batch 1: plain synchronous calls;
//              --multi N: each batch as transactions of up to N creates + one delete
//              transaction each, all in flight, exactly like zkr's next_batch)
//   w6counter  DistributedAtomicLong (BoundedExponentialBackoffRetry(1, 50, 29): zkr's backoff)
//   w7         ephemeral nodes with a ServiceInstance-like JSON payload (curator-x-discovery is
//              not packaged on this machine), created inBackground; a CuratorCache watcher
//   w8         ephemeral progress nodes updated with setData; a CuratorCache coordinator
//              (--in-flight N: up to N inBackground setData per worker, like zkr's pipelining;
//              default 1: plain synchronous setData)
//   w9         CuratorCache (default options) of a 10,000-node tree: first load, change latency
//   s-handoff     InterProcessMutex: 1, 10, 100, 1,000 waiters (one thread and one mutex each)
//   s-configtree  CuratorCache over a node with 10 .. 10,000 children
//   s-discovery   ephemeral ServiceInstance-like nodes and a CuratorCache, as in w7
//   (the scale workloads print a "series" array, one object per step, like zkr-bench's;
//   memory: VmRSS and the used heap after a full GC; s-watches has no Curator peer)
//
// Usage: java -cp <curator jars>:<dir> CuratorBench <w1|...|w9|s-handoff|s-configtree|s-discovery>
//            --zk HOST:PORT [--scale F] [--session-ms N] [--batch N] [--multi N] [--in-flight N]
// Prints exactly one JSON line on stdout; exit 0 iff the run's own check passed (ok: true).

import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.curator.RetryPolicy;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.api.transaction.CuratorOp;
import org.apache.curator.framework.api.transaction.CuratorTransactionResult;
import org.apache.curator.framework.recipes.atomic.AtomicValue;
import org.apache.curator.framework.recipes.atomic.DistributedAtomicLong;
import org.apache.curator.framework.recipes.cache.ChildData;
import org.apache.curator.framework.recipes.cache.CuratorCache;
import org.apache.curator.framework.recipes.cache.CuratorCacheListener;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderLatchListener;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.InterProcessReadWriteLock;
import org.apache.curator.retry.BoundedExponentialBackoffRetry;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.zookeeper.CreateMode;

public class CuratorBench {
    static final String PEER = "curator-5.4.0";
    static final long ACQUIRE_TIMEOUT_S = 60;
    static final long CONVERGE_TIMEOUT_MS = 10_000;

    static String zk;
    static double scale = 1.0;
    static int sessionMs = 10_000;
    static int batch = 125;
    static int inFlight = 1;
    static int multi = 0;
    static String cmd;

    // ---------------------------------------------------------------- plumbing

    static int scaled(int n) {
        return (int) Math.max(1, Math.round(n * scale));
    }

    static CuratorFramework client() throws Exception {
        CuratorFramework c = CuratorFrameworkFactory.builder()
                .connectString(zk)
                .sessionTimeoutMs(sessionMs)
                .connectionTimeoutMs(15_000)
                .retryPolicy(new ExponentialBackoffRetry(10, 3))
                .build();
        c.start();
        if (!c.blockUntilConnected(30, TimeUnit.SECONDS)) {
            c.close();
            throw new IllegalStateException("could not connect to " + zk + " within 30 s");
        }
        return c;
    }

    /** n clients, started concurrently. */
    static List<CuratorFramework> clients(int n) throws Exception {
        List<CuratorFramework> cs = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            CuratorFramework c = CuratorFrameworkFactory.builder()
                    .connectString(zk)
                    .sessionTimeoutMs(sessionMs)
                    .connectionTimeoutMs(15_000)
                    .retryPolicy(new ExponentialBackoffRetry(10, 3))
                    .build();
            c.start();
            cs.add(c);
        }
        for (CuratorFramework c : cs) {
            if (!c.blockUntilConnected(30, TimeUnit.SECONDS)) {
                closeAll(cs);
                throw new IllegalStateException("could not connect to " + zk + " within 30 s");
            }
        }
        return cs;
    }

    static void closeAll(List<CuratorFramework> cs) {
        for (CuratorFramework c : cs) {
            try {
                c.close();
            } catch (Throwable t) {
                // ignore
            }
        }
    }

    static String setupRoot(CuratorFramework c) throws Exception {
        String root = "/zkr-bench/" + cmd + "-" + System.currentTimeMillis();
        c.create().creatingParentContainersIfNeeded().forPath(root, new byte[0]);
        return root;
    }

    static void teardownRoot(CuratorFramework c, String root) {
        try {
            c.delete().deletingChildrenIfNeeded().forPath(root);
        } catch (Throwable t) {
            System.err.println("CuratorBench: could not remove " + root + ": " + t);
        }
    }

    static Map<String, Object> baseParams() {
        Map<String, Object> p = new LinkedHashMap<>();
        p.put("scale", scale);
        p.put("session_ms", sessionMs);
        p.put("throwaway_server", false);
        return p;
    }

    /** Latency samples (nanoseconds), nearest-rank percentiles. */
    static final class Lat {
        final List<Long> v = Collections.synchronizedList(new ArrayList<>());

        void add(long nanos) {
            v.add(nanos);
        }

        int size() {
            return v.size();
        }

        Double pct(double p) {
            long[] a;
            synchronized (v) {
                a = new long[v.size()];
                for (int i = 0; i < a.length; i++) a[i] = v.get(i);
            }
            if (a.length == 0) return null;
            Arrays.sort(a);
            int rank = (int) Math.ceil(p / 100.0 * a.length);
            rank = Math.max(1, Math.min(a.length, rank));
            return ms(a[rank - 1]);
        }
    }

    static double ms(long nanos) {
        return round(nanos / 1e6, 3);
    }

    static double round(double x, int digits) {
        double f = Math.pow(10, digits);
        return Math.round(x * f) / f;
    }

    static Double perS(long count, long nanos) {
        if (nanos <= 0) return null;
        return round(count / (nanos / 1e9), 1);
    }

    /** The one JSON line: common fields in zkr-bench's order, then extras. */
    static final class Report {
        final Map<String, Object> m = new LinkedHashMap<>();

        Report(String workload, Map<String, Object> params, long ops, long nanos, Lat lat, boolean ok) {
            m.put("peer", PEER);
            m.put("workload", workload);
            m.put("params", params);
            m.put("ops", ops);
            m.put("seconds", round(nanos / 1e9, 3));
            m.put("ops_per_s", perS(ops, nanos));
            m.put("p50_ms", lat == null ? null : lat.pct(50));
            m.put("p99_ms", lat == null ? null : lat.pct(99));
            m.put("max_ms", lat == null ? null : lat.pct(100));
            m.put("ok", ok);
        }

        Report field(String k, Object v) {
            m.put(k, v);
            return this;
        }

        boolean ok() {
            return Boolean.TRUE.equals(m.get("ok"));
        }

        String json() {
            StringBuilder sb = new StringBuilder();
            value(sb, m);
            return sb.toString();
        }
    }

    @SuppressWarnings("unchecked")
    static void value(StringBuilder sb, Object v) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof Map) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<String, Object> e : ((Map<String, Object>) v).entrySet()) {
                if (!first) sb.append(',');
                first = false;
                str(sb, e.getKey());
                sb.append(':');
                value(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof List) {
            sb.append('[');
            boolean first = true;
            for (Object o : (List<Object>) v) {
                if (!first) sb.append(',');
                first = false;
                value(sb, o);
            }
            sb.append(']');
        } else if (v instanceof Double || v instanceof Float) {
            double d = ((Number) v).doubleValue();
            if (Double.isNaN(d) || Double.isInfinite(d)) {
                sb.append("null");
            } else {
                String s = BigDecimal.valueOf(d).stripTrailingZeros().toPlainString();
                if (!s.contains(".")) s = s + ".0";
                sb.append(s);
            }
        } else if (v instanceof Number || v instanceof Boolean) {
            sb.append(v);
        } else {
            str(sb, v.toString());
        }
    }

    static void str(StringBuilder sb, String s) {
        sb.append('"');
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (ch < 0x20) sb.append(String.format("\\u%04x", (int) ch));
                    else sb.append(ch);
            }
        }
        sb.append('"');
    }

    interface Body {
        void run(int i) throws Exception;
    }

    /** Runs body(0..n) on n threads released together; rethrows the first failure. */
    static void fanOut(int n, Body body) throws Exception {
        CyclicBarrier barrier = new CyclicBarrier(n);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        List<Thread> ts = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            final int idx = i;
            Thread t = new Thread(() -> {
                try {
                    barrier.await();
                    body.run(idx);
                } catch (Throwable e) {
                    failure.compareAndSet(null, e);
                }
            }, "bench-" + i);
            ts.add(t);
            t.start();
        }
        for (Thread t : ts) t.join();
        if (failure.get() != null) {
            Throwable e = failure.get();
            if (e instanceof Exception) throw (Exception) e;
            throw new RuntimeException(e);
        }
    }

    static final Object MON = new Object();

    /** Waits (on MON) until cond holds or the deadline passes. */
    static boolean await(java.util.function.BooleanSupplier cond, long timeoutMs) throws InterruptedException {
        long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
        synchronized (MON) {
            while (!cond.getAsBoolean()) {
                long left = (deadline - System.nanoTime()) / 1_000_000L;
                if (left <= 0) return false;
                MON.wait(Math.min(left, 50));
            }
            return true;
        }
    }

    static void signal() {
        synchronized (MON) {
            MON.notifyAll();
        }
    }

    // ---------------------------------------------------------------- W1..W3: locks

    static final int LOCK_CLIENTS = 8;
    static final int PER_CLIENT = 250;

    static Map<String, Object> contendedParams() {
        Map<String, Object> p = baseParams();
        p.put("clients", LOCK_CLIENTS);
        p.put("ops_per_client", scaled(PER_CLIENT));
        return p;
    }

    static Report w1() throws Exception {
        CuratorFramework c = client();
        String root = setupRoot(c);
        try {
            InterProcessMutex lock = new InterProcessMutex(c, root + "/lock");
            int warm = 100;
            int n = scaled(2000);
            for (int i = 0; i < warm; i++) {
                lock.acquire();
                lock.release();
            }
            Lat lat = new Lat();
            long start = System.nanoTime();
            for (int i = 0; i < n; i++) {
                long t = System.nanoTime();
                lock.acquire();
                lock.release();
                lat.add(System.nanoTime() - t);
            }
            long el = System.nanoTime() - start;
            Map<String, Object> p = baseParams();
            p.put("cycles", n);
            p.put("warm_up", warm);
            return new Report("W1-lock-uncontended", p, n, el, lat, true);
        } finally {
            teardownRoot(c, root);
            c.close();
        }
    }

    static Report w2() throws Exception {
        List<CuratorFramework> cs = clients(LOCK_CLIENTS);
        String root = setupRoot(cs.get(0));
        String path = root + "/lock";
        int per = scaled(PER_CLIENT);
        AtomicInteger inside = new AtomicInteger();
        AtomicInteger violations = new AtomicInteger();
        AtomicInteger timeouts = new AtomicInteger();
        int[] counter = new int[1];
        Lat lat = new Lat();
        long start = System.nanoTime();
        try {
            fanOut(LOCK_CLIENTS, i -> {
                InterProcessMutex lock = new InterProcessMutex(cs.get(i), path);
                for (int j = 0; j < per; j++) {
                    long t = System.nanoTime();
                    if (!lock.acquire(ACQUIRE_TIMEOUT_S, TimeUnit.SECONDS)) {
                        timeouts.incrementAndGet();
                        continue;
                    }
                    lat.add(System.nanoTime() - t);
                    if (inside.getAndIncrement() != 0) violations.incrementAndGet();
                    int v;
                    synchronized (counter) {
                        v = counter[0];
                    }
                    Thread.yield();
                    synchronized (counter) {
                        counter[0] = v + 1;
                    }
                    inside.decrementAndGet();
                    lock.release();
                }
            });
        } finally {
            teardownRoot(cs.get(0), root);
            closeAll(cs);
        }
        long el = System.nanoTime() - start;
        int done = lat.size();
        int lost = Math.max(0, done - counter[0]);
        boolean ok = violations.get() == 0 && lost == 0 && timeouts.get() == 0;
        return new Report("W2-lock-contended", contendedParams(), done, el, lat, ok)
                .field("violations", violations.get())
                .field("lost_updates", lost)
                .field("acquire_timeouts", timeouts.get())
                .field("latency_of", "acquire_wait");
    }

    static Report w3() throws Exception {
        List<CuratorFramework> cs = clients(LOCK_CLIENTS);
        String root = setupRoot(cs.get(0));
        String path = root + "/rwlock";
        int per = scaled(PER_CLIENT);
        AtomicInteger readers = new AtomicInteger();
        AtomicInteger writers = new AtomicInteger();
        AtomicInteger maxReaders = new AtomicInteger();
        AtomicInteger violations = new AtomicInteger();
        AtomicInteger timeouts = new AtomicInteger();
        Lat lat = new Lat();
        long start = System.nanoTime();
        try {
            fanOut(LOCK_CLIENTS, i -> {
                InterProcessReadWriteLock rw = new InterProcessReadWriteLock(cs.get(i), path);
                InterProcessMutex read = rw.readLock();
                InterProcessMutex write = rw.writeLock();
                for (int j = 0; j < per; j++) {
                    boolean isWrite = (37 * j + 11 * i) % 5 == 0;
                    InterProcessMutex lock = isWrite ? write : read;
                    long t = System.nanoTime();
                    if (!lock.acquire(ACQUIRE_TIMEOUT_S, TimeUnit.SECONDS)) {
                        timeouts.incrementAndGet();
                        continue;
                    }
                    lat.add(System.nanoTime() - t);
                    if (isWrite) {
                        if (writers.getAndIncrement() != 0 || readers.get() != 0) violations.incrementAndGet();
                        Thread.yield();
                        writers.decrementAndGet();
                    } else {
                        int now = readers.incrementAndGet();
                        maxReaders.accumulateAndGet(now, Math::max);
                        if (writers.get() != 0) violations.incrementAndGet();
                        Thread.yield();
                        readers.decrementAndGet();
                    }
                    lock.release();
                }
            });
        } finally {
            teardownRoot(cs.get(0), root);
            closeAll(cs);
        }
        long el = System.nanoTime() - start;
        boolean ok = violations.get() == 0 && timeouts.get() == 0;
        return new Report("W3-rwlock", contendedParams(), lat.size(), el, lat, ok)
                .field("violations", violations.get())
                .field("max_concurrent_readers", maxReaders.get())
                .field("acquire_timeouts", timeouts.get())
                .field("latency_of", "acquire_wait");
    }

    // ---------------------------------------------------------------- W4: LeaderLatch failover

    static final class Cand {
        final CuratorFramework client;
        final LeaderLatch latch;
        volatile boolean leader;
        volatile long leaderAt; // nanoTime when told it leads (0: never)

        Cand(String path, String id) throws Exception {
            client = client();
            latch = new LeaderLatch(client, path, id);
            latch.addListener(new LeaderLatchListener() {
                @Override
                public void isLeader() {
                    leaderAt = System.nanoTime();
                    leader = true;
                    signal();
                }

                @Override
                public void notLeader() {
                    leader = false;
                    signal();
                }
            });
            latch.start();
        }
    }

    static Report w4() throws Exception {
        CuratorFramework admin = client();
        String root = setupRoot(admin);
        String path = root + "/election";
        int rounds = scaled(10);
        List<Cand> cands = new ArrayList<>();
        Lat fromStart = new Lat();
        Lat closeCall = new Lat();
        List<Double> fromReturn = new ArrayList<>();
        int dual = 0;
        long started;
        long el;
        try {
            for (int i = 0; i < 3; i++) cands.add(new Cand(path, "c" + i));
            int nextId = 3;
            started = System.nanoTime();
            for (int r = 0; r < rounds; r++) {
                final List<Cand> now = new ArrayList<>(cands);
                if (!await(() -> now.stream().anyMatch(c -> c.leader), 15_000)) {
                    throw new IllegalStateException("no leader within 15 s");
                }
                Cand leader = now.stream().filter(c -> c.leader).findFirst().get();
                cands.remove(leader);
                final List<Cand> rest = new ArrayList<>(cands);
                long t0 = System.nanoTime();
                leader.latch.close();
                leader.client.close();
                long tRet = System.nanoTime();
                if (!await(() -> rest.stream().anyMatch(c -> c.leader), 15_000)) {
                    throw new IllegalStateException("no candidate took over within 15 s");
                }
                Cand next = rest.stream().filter(c -> c.leader).findFirst().get();
                long at = next.leaderAt;
                long others = rest.stream().filter(c -> c != next && c.leader).count();
                if (others > 0 || leader.latch.hasLeadership()) dual++;
                fromStart.add(Math.max(0, at - t0));
                closeCall.add(tRet - t0);
                fromReturn.add(at >= tRet ? ms(at - tRet) : -ms(tRet - at));
                cands.add(new Cand(path, "c" + nextId++));
            }
            el = System.nanoTime() - started;
        } finally {
            for (Cand c : cands) {
                try {
                    c.latch.close();
                } catch (Throwable t) {
                    // ignore
                }
                c.client.close();
            }
            teardownRoot(admin, root);
            admin.close();
        }
        Collections.sort(fromReturn);
        Double retP50 = fromReturn.isEmpty() ? null
                : fromReturn.get(Math.max(1, (int) Math.ceil(0.5 * fromReturn.size())) - 1);
        Map<String, Object> p = baseParams();
        p.put("candidates", 3);
        p.put("rounds", rounds);
        p.put("close", "LeaderLatch.close() then CuratorFramework.close()");
        Report rep = new Report("W4-election-failover-close", p, rounds, el, fromStart, dual == 0);
        rep.m.put("ops_per_s", null);
        return rep.field("from_close_start_p50_ms", fromStart.pct(50))
                .field("from_close_start_max_ms", fromStart.pct(100))
                .field("from_close_return_p50_ms", retP50)
                .field("close_call_p50_ms", closeCall.pct(50))
                .field("dual_leader_rounds", dual);
    }

    // ---------------------------------------------------------------- W5: config propagation

    static byte[] configValue(long seq) {
        StringBuilder x = new StringBuilder();
        for (int i = 0; i < 100; i++) x.append('x');
        String s = "{\"seq\":" + seq + ",\"service\":\"orders\",\"endpoints\":[\"10.0.0.1:8080\",\"10.0.0.2:8080\"],"
                + "\"payload\":\"" + x + "\"}";
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static long parseSeq(byte[] data) {
        if (data == null) return -1;
        String s = new String(data, StandardCharsets.UTF_8);
        int i = s.indexOf("\"seq\":");
        if (i < 0) return -1;
        i += 6;
        int j = i;
        while (j < s.length() && Character.isDigit(s.charAt(j))) j++;
        return j > i ? Long.parseLong(s.substring(i, j)) : -1;
    }

    static final class Sub {
        final List<long[]> firsts = Collections.synchronizedList(new ArrayList<>()); // {seq, nanos}
        volatile long lastSeq = -1;
        volatile long finalAt = 0;
    }

    static Report w5() throws Exception {
        final int subsN = 50;
        final long n = scaled(200);
        CuratorFramework pub = client();
        List<CuratorFramework> subClients = clients(subsN);
        String root = setupRoot(pub);
        String path = root + "/config";
        List<CuratorCache> caches = new ArrayList<>();
        List<Sub> subs = new ArrayList<>();
        long[] setAt = new long[(int) n + 1];
        long start, el, lastSetDone = 0;
        try {
            pub.create().forPath(path, configValue(0));
            for (CuratorFramework c : subClients) {
                Sub s = new Sub();
                CuratorCache cache = CuratorCache.build(c, path, CuratorCache.Options.SINGLE_NODE_CACHE);
                cache.listenable().addListener(CuratorCacheListener.builder()
                        .forCreatesAndChanges((oldNode, node) -> {
                            long now = System.nanoTime();
                            long seq = parseSeq(node.getData());
                            if (seq > s.lastSeq) {
                                if (seq > 0) s.firsts.add(new long[] {seq, now});
                                s.lastSeq = seq;
                                if (seq == n) {
                                    s.finalAt = now;
                                    signal();
                                }
                            }
                            if (seq == 0) signal();
                        })
                        .build());
                cache.start();
                caches.add(cache);
                subs.add(s);
            }
            if (!await(() -> subs.stream().allMatch(s -> s.lastSeq >= 0), CONVERGE_TIMEOUT_MS)) {
                throw new IllegalStateException("subscribers did not see version 0 within 10 s");
            }
            start = System.nanoTime();
            long lastTick = 0;
            for (long seq = 1; seq <= n; seq++) {
                if (seq > 1) {
                    long wait = lastTick + 10_000_000L - System.nanoTime();
                    if (wait > 0) TimeUnit.NANOSECONDS.sleep(wait);
                }
                lastTick = System.nanoTime();
                setAt[(int) seq] = lastTick;
                pub.setData().forPath(path, configValue(seq));
                lastSetDone = System.nanoTime();
            }
            await(() -> subs.stream().allMatch(s -> s.finalAt != 0), CONVERGE_TIMEOUT_MS);
            el = System.nanoTime() - start;
        } finally {
            for (CuratorCache c : caches) c.close();
            teardownRoot(pub, root);
            closeAll(subClients);
            pub.close();
        }
        Lat lat = new Lat();
        int missed = 0, min = Integer.MAX_VALUE;
        long sum = 0, finalAfter = 0;
        for (Sub s : subs) {
            synchronized (s.firsts) {
                for (long[] f : s.firsts) lat.add(Math.max(0, f[1] - setAt[(int) f[0]]));
                sum += s.firsts.size();
                min = Math.min(min, s.firsts.size());
            }
            if (s.finalAt == 0) missed++;
            else finalAfter = Math.max(finalAfter, s.finalAt - lastSetDone);
        }
        Map<String, Object> p = baseParams();
        p.put("subscribers", subsN);
        p.put("versions", n);
        p.put("interval_ms", 10);
        p.put("value_bytes", configValue(100).length);
        Report r = new Report("W5-config-propagation", p, n, el, lat, missed == 0);
        r.m.put("ops_per_s", null);
        return r.field("avg_distinct_versions_seen", round((double) sum / subs.size(), 1))
                .field("min_distinct_versions_seen", subs.isEmpty() ? 0 : min)
                .field("missed_final", missed)
                .field("final_seen_after_last_set_ms", ms(Math.max(0, finalAfter)))
                .field("latency_of", "setData start -> subscriber's CuratorCache sees the version");
    }

    // ---------------------------------------------------------------- W6: IDs

    static final int ID_CLIENTS = 4;

    static int share(int total, int i) {
        return total / ID_CLIENTS + (i < total % ID_CLIENTS ? 1 : 0);
    }

    static long seqOf(String name) {
        return Long.parseLong(name.substring(name.length() - 10));
    }

    /** k sequential IDs: PERSISTENT_SEQUENTIAL creates, each followed by its delete. */
    static List<Long> nextBatch(CuratorFramework c, String dir, int k) throws Exception {
        List<Long> ids = Collections.synchronizedList(new ArrayList<>());
        if (k == 1 || batch <= 1) {
            for (int i = 0; i < k; i++) {
                String p = c.create().withMode(CreateMode.PERSISTENT_SEQUENTIAL).forPath(dir + "/id-");
                ids.add(seqOf(p));
                c.delete().forPath(p);
            }
            return ids;
        }
        if (multi > 0) return nextBatchMulti(c, dir, k);
        CountDownLatch done = new CountDownLatch(k);
        AtomicReference<String> error = new AtomicReference<>();
        for (int i = 0; i < k; i++) {
            c.create().withMode(CreateMode.PERSISTENT_SEQUENTIAL)
                    .inBackground((cl, ev) -> {
                        if (ev.getResultCode() != 0) {
                            error.compareAndSet(null, "create rc " + ev.getResultCode());
                            done.countDown();
                            return;
                        }
                        ids.add(seqOf(ev.getName()));
                        cl.delete().inBackground((cl2, ev2) -> {
                            if (ev2.getResultCode() != 0) error.compareAndSet(null, "delete rc " + ev2.getResultCode());
                            done.countDown();
                        }).forPath(ev.getName());
                    })
                    .forPath(dir + "/id-");
        }
        if (!done.await(60, TimeUnit.SECONDS)) throw new IllegalStateException("batch timed out");
        if (error.get() != null) throw new IllegalStateException(error.get());
        return ids;
    }

    /**
     * k sequential IDs as zkr's SequentialIds.next_batch makes them: transactions (multi) of up
     * to `multi` PERSISTENT_SEQUENTIAL creates, all in flight at once (inBackground), each
     * followed by one transaction deleting its nodes.
     */
    static List<Long> nextBatchMulti(CuratorFramework c, String dir, int k) throws Exception {
        List<Long> ids = Collections.synchronizedList(new ArrayList<>());
        int chunks = (k + multi - 1) / multi;
        CountDownLatch done = new CountDownLatch(chunks);
        AtomicReference<String> error = new AtomicReference<>();
        for (int ch = 0; ch < chunks; ch++) {
            int m = Math.min(multi, k - ch * multi);
            List<CuratorOp> ops = new ArrayList<>();
            for (int j = 0; j < m; j++) {
                ops.add(c.transactionOp().create().withMode(CreateMode.PERSISTENT_SEQUENTIAL).forPath(dir + "/id-"));
            }
            c.transaction().inBackground((cl, ev) -> {
                if (ev.getResultCode() != 0 || ev.getOpResults() == null) {
                    error.compareAndSet(null, "multi create rc " + ev.getResultCode());
                    done.countDown();
                    return;
                }
                List<CuratorOp> dels = new ArrayList<>();
                for (CuratorTransactionResult r : ev.getOpResults()) {
                    ids.add(seqOf(r.getResultPath()));
                    dels.add(cl.transactionOp().delete().forPath(r.getResultPath()));
                }
                cl.transaction().inBackground((cl2, ev2) -> {
                    if (ev2.getResultCode() != 0) error.compareAndSet(null, "multi delete rc " + ev2.getResultCode());
                    done.countDown();
                }).forOperations(dels);
            }).forOperations(ops);
        }
        if (!done.await(60, TimeUnit.SECONDS)) throw new IllegalStateException("batch timed out");
        if (error.get() != null) throw new IllegalStateException(error.get());
        return ids;
    }

    static int duplicates(List<Long> ids) {
        return ids.size() - new HashSet<>(ids).size();
    }

    static Report w6seq() throws Exception {
        List<CuratorFramework> cs = clients(ID_CLIENTS);
        String root = setupRoot(cs.get(0));
        String dir = root + "/ids";
        int total = scaled(5000);
        int bsz = Math.max(1, batch);
        try {
            cs.get(0).create().forPath(dir, new byte[0]);
            nextBatch(cs.get(0), dir, 50); // warm-up
            List<Long> all = Collections.synchronizedList(new ArrayList<>());
            Lat lat = new Lat();
            long start = System.nanoTime();
            fanOut(ID_CLIENTS, i -> {
                int n = share(total, i);
                int got = 0;
                while (got < n) {
                    int k = Math.min(bsz, n - got);
                    long t = System.nanoTime();
                    List<Long> ids = nextBatch(cs.get(i), dir, k);
                    lat.add(System.nanoTime() - t);
                    got += ids.size();
                    all.addAll(ids);
                }
            });
            long el = System.nanoTime() - start;
            int dups = duplicates(all);
            int left = cs.get(0).getChildren().forPath(dir).size();
            boolean ok = dups == 0 && all.size() == total && left == 0;
            Map<String, Object> p = baseParams();
            p.put("clients", ID_CLIENTS);
            p.put("ids", total);
            p.put("batch", bsz);
            p.put("multi", bsz > 1 ? multi : 0);
            return new Report("W6a-ids-sequential", p, all.size(), el, lat, ok)
                    .field("duplicates", dups)
                    .field("nodes_left", left)
                    .field("latency_of", bsz == 1 ? "one create+delete"
                            : multi > 0 ? "batch of " + bsz + " via inBackground transactions of <= " + multi + " creates + 1 delete transaction"
                            : "batch of " + bsz + " inBackground create+delete");
        } finally {
            teardownRoot(cs.get(0), root);
            closeAll(cs);
        }
    }

    static RetryPolicy counterRetry() {
        return new BoundedExponentialBackoffRetry(1, 50, 29);
    }

    static Report w6counter() throws Exception {
        List<CuratorFramework> cs = clients(ID_CLIENTS);
        String root = setupRoot(cs.get(0));
        String path = root + "/counter";
        int total = scaled(2000);
        try {
            List<Long> posts = Collections.synchronizedList(new ArrayList<>());
            Lat lat = new Lat();
            AtomicLong tries = new AtomicLong();
            long start = System.nanoTime();
            fanOut(ID_CLIENTS, i -> {
                DistributedAtomicLong counter = new DistributedAtomicLong(cs.get(i), path, counterRetry());
                int n = share(total, i);
                for (int j = 0; j < n; j++) {
                    long t = System.nanoTime();
                    AtomicValue<Long> v;
                    while (true) {
                        v = counter.increment();
                        tries.addAndGet(v.getStats().getOptimisticTries() + v.getStats().getPromotedLockTries());
                        if (v.succeeded()) break;
                    }
                    lat.add(System.nanoTime() - t);
                    posts.add(v.postValue());
                }
            });
            long el = System.nanoTime() - start;
            long finalValue = new DistributedAtomicLong(cs.get(0), path, counterRetry()).get().postValue();
            int dups = duplicates(posts);
            boolean ok = dups == 0 && finalValue == total;
            Map<String, Object> p = baseParams();
            p.put("clients", ID_CLIENTS);
            p.put("increments", total);
            p.put("retry", "BoundedExponentialBackoffRetry(1 ms, 50 ms, 29)");
            return new Report("W6b-ids-counter", p, posts.size(), el, lat, ok)
                    .field("tries_per_increment", posts.isEmpty() ? 0.0 : round((double) tries.get() / posts.size(), 2))
                    .field("duplicates", dups)
                    .field("final_value", finalValue)
                    .field("latency_of", "DistributedAtomicLong.increment (until succeeded)");
        } finally {
            teardownRoot(cs.get(0), root);
            closeAll(cs);
        }
    }

    // ---------------------------------------------------------------- W7: registration

    static String instId(int i) {
        return String.format("inst-%05d", i);
    }

    static Report w7() throws Exception {
        final int sessions = 10, closed = 5;
        final int n = scaled(500);
        CuratorFramework watcher = client();
        List<CuratorFramework> cs = clients(sessions);
        String root = setupRoot(watcher);
        String base = root + "/services/bench-svc";
        Set<String> view = ConcurrentHashMap.newKeySet();
        AtomicReference<Set<String>> target = new AtomicReference<>(Collections.emptySet());
        AtomicLong convergedAt = new AtomicLong();
        CuratorCache cache = CuratorCache.build(watcher, base);
        Lat lat = new Lat();
        boolean regOk, closeOk = false;
        Long registerConverge = null, closeConverge = null;
        long registeredIn;
        List<CuratorFramework> open = new ArrayList<>(cs);
        try {
            watcher.create().creatingParentContainersIfNeeded().forPath(base, new byte[0]);
            Runnable check = () -> {
                Set<String> t = target.get();
                if (convergedAt.get() == 0 && view.size() == t.size() && view.containsAll(t)) {
                    convergedAt.compareAndSet(0, System.nanoTime());
                    signal();
                }
            };
            String prefix = base + "/";
            cache.listenable().addListener(CuratorCacheListener.builder()
                    .forCreates(node -> {
                        if (node.getPath().startsWith(prefix)) {
                            view.add(node.getPath().substring(prefix.length()));
                            check.run();
                        }
                    })
                    .forDeletes(node -> {
                        if (node.getPath().startsWith(prefix)) {
                            view.remove(node.getPath().substring(prefix.length()));
                            check.run();
                        }
                    })
                    .build());
            CountDownLatch initialized = new CountDownLatch(1);
            cache.listenable().addListener(CuratorCacheListener.builder().forInitialized(initialized::countDown).build());
            cache.start();
            if (!initialized.await(10, TimeUnit.SECONDS)) throw new IllegalStateException("cache not initialized");

            Set<String> all = new HashSet<>();
            for (int i = 0; i < n; i++) all.add(instId(i));
            convergedAt.set(0);
            target.set(all);
            CountDownLatch registered = new CountDownLatch(n);
            AtomicReference<String> error = new AtomicReference<>();
            long start = System.nanoTime();
            for (int i = 0; i < n; i++) {
                String id = instId(i);
                String json = "{\"name\":\"bench-svc\",\"id\":\"" + id + "\",\"address\":\"10.0.0.1\",\"port\":"
                        + (8000 + i % 1000) + ",\"sslPort\":null,\"payload\":{\"zone\":\"z" + (i % 3)
                        + "\",\"weight\":" + (i % 10) + "},\"registrationTimeUTC\":" + System.currentTimeMillis()
                        + ",\"serviceType\":\"DYNAMIC\",\"uriSpec\":null}";
                long t = System.nanoTime();
                cs.get(i % sessions).create().withMode(CreateMode.EPHEMERAL)
                        .inBackground((cl, ev) -> {
                            lat.add(System.nanoTime() - t);
                            if (ev.getResultCode() != 0) error.compareAndSet(null, "create rc " + ev.getResultCode());
                            registered.countDown();
                        })
                        .forPath(base + "/" + id, json.getBytes(StandardCharsets.UTF_8));
            }
            if (!registered.await(60, TimeUnit.SECONDS)) throw new IllegalStateException("registrations timed out");
            if (error.get() != null) throw new IllegalStateException(error.get());
            regOk = await(() -> convergedAt.get() != 0, CONVERGE_TIMEOUT_MS);
            if (regOk) registerConverge = convergedAt.get() - start;
            registeredIn = System.nanoTime() - start;

            Set<String> survivors = new HashSet<>();
            for (int i = 0; i < n; i++) if (i % sessions >= closed) survivors.add(instId(i));
            convergedAt.set(0);
            target.set(survivors);
            List<Thread> closers = new ArrayList<>();
            long start2 = System.nanoTime();
            for (int k = 0; k < closed; k++) {
                CuratorFramework c = cs.get(k);
                Thread th = new Thread(c::close);
                closers.add(th);
                th.start();
                open.remove(c);
            }
            check.run();
            closeOk = await(() -> convergedAt.get() != 0, CONVERGE_TIMEOUT_MS);
            if (closeOk) closeConverge = convergedAt.get() - start2;
            for (Thread th : closers) th.join();
        } finally {
            cache.close();
            teardownRoot(watcher, root);
            closeAll(open);
            watcher.close();
        }
        Map<String, Object> p = baseParams();
        p.put("sessions", sessions);
        p.put("instances", n);
        p.put("closed_sessions", closed);
        Report r = new Report("W7-registration", p, n, registeredIn, lat, regOk && closeOk);
        r.m.put("ops_per_s", null);
        return r.field("register_converge_ms", registerConverge == null ? null : ms(registerConverge))
                .field("close_converge_ms", closeConverge == null ? null : ms(closeConverge))
                .field("latency_of", "one inBackground EPHEMERAL create (ServiceInstance-like JSON)");
    }

    // ---------------------------------------------------------------- W8: progress

    static byte[] progress(String owner, double pct, String msg) {
        return ("{\"owner\":\"" + owner + "\",\"state\":\"running\",\"percent\":" + pct + ",\"message\":\"" + msg + "\"}")
                .getBytes(StandardCharsets.UTF_8);
    }

    static Report w8() throws Exception {
        final int workers = 20;
        final int updates = scaled(100);
        CuratorFramework admin = client();
        List<CuratorFramework> cs = clients(workers);
        String root = setupRoot(admin);
        String dir = root + "/progress";
        Map<String, String> view = new ConcurrentHashMap<>();
        CuratorCache cache = CuratorCache.build(admin, dir);
        Lat lat = new Lat();
        long[] doneAt = new long[workers];
        AtomicReference<String> failed = new AtomicReference<>();
        String lastMsg = "step " + updates;
        boolean equals;
        Long converge = null;
        long el;
        try {
            admin.create().forPath(dir, new byte[0]);
            String prefix = dir + "/";
            AtomicLong convergedAt = new AtomicLong();
            java.util.function.BooleanSupplier isTruth = () -> {
                if (view.size() != workers) return false;
                for (Map.Entry<String, String> e : view.entrySet()) {
                    String v = e.getValue();
                    if (!v.contains("\"owner\":\"" + e.getKey() + "\"") || !v.contains("\"percent\":100.0")
                            || !v.contains("\"message\":\"" + lastMsg + "\"")) {
                        return false;
                    }
                }
                return true;
            };
            cache.listenable().addListener(CuratorCacheListener.builder()
                    .forCreatesAndChanges((oldNode, node) -> {
                        if (node.getPath().startsWith(prefix)) {
                            view.put(node.getPath().substring(prefix.length()),
                                    new String(node.getData(), StandardCharsets.UTF_8));
                            if (convergedAt.get() == 0 && isTruth.getAsBoolean()) convergedAt.set(System.nanoTime());
                            signal();
                        }
                    })
                    .forDeletes(node -> {
                        view.remove(node.getPath().substring(Math.min(prefix.length(), node.getPath().length())));
                        signal();
                    })
                    .build());
            cache.start();
            // Each worker owns one ephemeral progress node (not timed).
            for (int i = 0; i < workers; i++) {
                String w = String.format("w%02d", i);
                cs.get(i).create().withMode(CreateMode.EPHEMERAL).forPath(prefix + w, progress(w, 0.0, ""));
            }
            if (!await(() -> view.size() == workers, CONVERGE_TIMEOUT_MS)) {
                throw new IllegalStateException("coordinator did not see the workers within 10 s");
            }
            long start = System.nanoTime();
            fanOut(workers, i -> {
                String w = String.format("w%02d", i);
                try {
                    if (inFlight <= 1) {
                        for (int u = 1; u <= updates; u++) {
                            double pct = 100.0 * u / updates;
                            long t = System.nanoTime();
                            cs.get(i).setData().forPath(prefix + w, progress(w, pct, "step " + u));
                            lat.add(System.nanoTime() - t);
                        }
                    } else {
                        // Pipelined: up to inFlight inBackground setData calls on the session
                        // (ZooKeeper applies one session's requests in order).
                        Semaphore slots = new Semaphore(inFlight);
                        for (int u = 1; u <= updates; u++) {
                            double pct = 100.0 * u / updates;
                            slots.acquire();
                            long t = System.nanoTime();
                            cs.get(i).setData().inBackground((cl, ev) -> {
                                lat.add(System.nanoTime() - t);
                                if (ev.getResultCode() != 0) failed.compareAndSet(null, "setData rc " + ev.getResultCode());
                                slots.release();
                            }).forPath(prefix + w, progress(w, pct, "step " + u));
                        }
                        if (!slots.tryAcquire(inFlight, 60, TimeUnit.SECONDS)) failed.compareAndSet(null, "updates timed out");
                    }
                } catch (Exception e) {
                    failed.compareAndSet(null, e.toString());
                }
                doneAt[i] = System.nanoTime();
            });
            el = System.nanoTime() - start;
            long lastWrite = start;
            for (long d : doneAt) lastWrite = Math.max(lastWrite, d);
            equals = await(() -> convergedAt.get() != 0, CONVERGE_TIMEOUT_MS);
            if (equals) converge = Math.max(0, convergedAt.get() - lastWrite);
        } finally {
            cache.close();
            teardownRoot(admin, root);
            closeAll(cs);
            admin.close();
        }
        Map<String, Object> p = baseParams();
        p.put("workers", workers);
        p.put("updates_per_worker", updates);
        p.put("in_flight_per_worker", Math.max(1, inFlight));
        Report r = new Report("W8-progress", p, (long) workers * updates, el, lat, equals && failed.get() == null)
                .field("coordinator_view_equals_truth", equals)
                .field("converge_after_last_write_ms", converge == null ? null : ms(converge))
                .field("latency_of", inFlight <= 1 ? "one setData of the worker's ephemeral progress node"
                        : "one inBackground setData of the worker's ephemeral progress node");
        if (failed.get() != null) r.field("errors", failed.get());
        return r;
    }

    // ---------------------------------------------------------------- scale workloads
    // s-handoff (InterProcessMutex), s-configtree (CuratorCache), s-discovery (ephemeral
    // ServiceInstance-like nodes + CuratorCache: curator-x-discovery is not packaged here).
    // Each prints one line whose "series" holds one object per step, as zkr-bench's do.

    static final int SCALE_CHANGES = 5;
    static final long SCALE_WAIT_S = 300;

    /** The steps of a curve: each scaled (at least 1), consecutive duplicates dropped. */
    static List<Integer> steps(int... base) {
        List<Integer> out = new ArrayList<>();
        for (int n : base) {
            int s = scaled(n);
            if (out.isEmpty() || out.get(out.size() - 1) != s) out.add(s);
        }
        return out;
    }

    /** VmRSS of this process in MiB (one decimal), or null. */
    static Double rssMb() {
        try {
            for (String l : java.nio.file.Files.readAllLines(java.nio.file.Paths.get("/proc/self/status"))) {
                if (l.startsWith("VmRSS:")) {
                    long kb = Long.parseLong(l.substring(6).replace("kB", "").trim());
                    return round(kb / 1024.0, 1);
                }
            }
        } catch (Exception e) {
            // unknown
        }
        return null;
    }

    /** Used heap after a full GC, in MiB (one decimal). */
    static double heapAfterGcMb() {
        System.gc();
        long used = java.lang.management.ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed();
        return round(used / (1024.0 * 1024.0), 1);
    }

    /** "Total watches" of the wchs four-letter word, summed over the servers; null if one fails. */
    static Long serverWatches() {
        long total = 0;
        for (String host : zk.split("/")[0].split(",")) {
            host = host.trim();
            if (host.isEmpty()) continue;
            int colon = host.lastIndexOf(':');
            try (java.net.Socket s = new java.net.Socket()) {
                s.connect(new java.net.InetSocketAddress(host.substring(0, colon),
                        Integer.parseInt(host.substring(colon + 1))), 5000);
                s.setSoTimeout(5000);
                s.getOutputStream().write("wchs".getBytes(StandardCharsets.US_ASCII));
                s.getOutputStream().flush();
                String text = new String(s.getInputStream().readAllBytes(), StandardCharsets.US_ASCII);
                Long w = null;
                for (String l : text.split("\n")) {
                    if (l.startsWith("Total watches:")) w = Long.parseLong(l.substring(14).trim());
                }
                if (w == null) return null;
                total += w;
            } catch (Exception e) {
                return null;
            }
        }
        return total;
    }

    static Map<String, Object> obj(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i + 1 < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        return m;
    }

    static Report curve(String workload, Map<String, Object> params, long ops, long nanos, Lat lat, boolean ok,
                        List<Object> series) {
        Report r = new Report(workload, params, ops, nanos, lat, ok);
        r.m.put("ops_per_s", null);
        return r.field("series", series);
    }

    /** Creates persistent nodes (path -> data), up to 200 in flight. */
    static void createMany(CuratorFramework c, Map<String, byte[]> nodes) throws Exception {
        Semaphore slots = new Semaphore(200);
        CountDownLatch done = new CountDownLatch(nodes.size());
        AtomicReference<String> error = new AtomicReference<>();
        for (Map.Entry<String, byte[]> e : nodes.entrySet()) {
            slots.acquire();
            c.create().inBackground((cl, ev) -> {
                if (ev.getResultCode() != 0) error.compareAndSet(null, "create rc " + ev.getResultCode());
                slots.release();
                done.countDown();
            }).forPath(e.getKey(), e.getValue());
        }
        if (!done.await(SCALE_WAIT_S, TimeUnit.SECONDS)) throw new IllegalStateException("creates timed out");
        if (error.get() != null) throw new IllegalStateException(error.get());
    }

    static Report sHandoff() throws Exception {
        List<Integer> steps = steps(1, 10, 100, 1000);
        int max = Collections.max(steps);
        CuratorFramework admin = client();
        List<CuratorFramework> pool = clients(Math.min(20, max));
        String root = setupRoot(admin);
        List<Object> series = new ArrayList<>();
        Lat last = new Lat();
        long ops = 0;
        boolean ok = true;
        long start = System.nanoTime();
        try {
            for (int n : steps) {
                String path = root + "/lock-" + n;
                InterProcessMutex holder = new InterProcessMutex(admin, path);
                if (!holder.acquire(SCALE_WAIT_S, TimeUnit.SECONDS)) throw new IllegalStateException("holder timed out");
                Long w0 = serverWatches();
                List<long[]> log = Collections.synchronizedList(new ArrayList<>());
                AtomicInteger inside = new AtomicInteger();
                AtomicInteger violations = new AtomicInteger();
                AtomicInteger failures = new AtomicInteger();
                AtomicReference<String> error = new AtomicReference<>();
                long q0 = System.nanoTime();
                List<Thread> ts = new ArrayList<>();
                for (int i = 0; i < n; i++) {
                    CuratorFramework c = pool.get(i % pool.size());
                    Thread t = new Thread(() -> {
                        try {
                            InterProcessMutex m = new InterProcessMutex(c, path);
                            if (!m.acquire(SCALE_WAIT_S, TimeUnit.SECONDS)) {
                                failures.incrementAndGet();
                                error.compareAndSet(null, "acquire timed out");
                                return;
                            }
                            long got = System.nanoTime();
                            if (inside.getAndIncrement() != 0) violations.incrementAndGet();
                            inside.decrementAndGet();
                            long rel = System.nanoTime();
                            log.add(new long[] {got, rel});
                            m.release();
                        } catch (Throwable e) {
                            failures.incrementAndGet();
                            error.compareAndSet(null, e.toString());
                        }
                    }, "waiter-" + i);
                    ts.add(t);
                    t.start();
                }
                long deadline = System.nanoTime() + SCALE_WAIT_S * 1_000_000_000L;
                while (holder.getParticipantNodes().size() <= n && System.nanoTime() < deadline) Thread.sleep(20);
                Long w = serverWatches();
                while (w0 != null && w != null && w < w0 + n && System.nanoTime() < deadline) {
                    Thread.sleep(20);
                    w = serverWatches();
                }
                long queued = System.nanoTime() - q0;
                Double rss = rssMb();
                double heap = heapAfterGcMb();
                long t0 = System.nanoTime();
                holder.release();
                for (Thread t : ts) t.join();
                long drain = System.nanoTime() - t0;
                Lat lat = new Lat();
                long prev = t0;
                List<long[]> entries;
                synchronized (log) {
                    entries = new ArrayList<>(log);
                }
                for (long[] e : entries) {
                    lat.add(Math.max(0, e[0] - prev));
                    prev = e[1];
                }
                int leftover = holder.getParticipantNodes().size();
                boolean stepOk = failures.get() == 0 && violations.get() == 0 && leftover == 0 && lat.size() == n;
                ok &= stepOk;
                ops += lat.size();
                Map<String, Object> s = obj("waiters", n, "sessions", Math.min(pool.size(), n),
                        "handoffs", lat.size(), "p50_ms", lat.pct(50), "p99_ms", lat.pct(99), "max_ms", lat.pct(100),
                        "queue_ms", ms(queued), "drain_ms", ms(drain), "rss_mb", rss, "heap_after_gc_mb", heap,
                        "server_watches", w, "server_watches_before", w0, "violations", violations.get(),
                        "failures", failures.get());
                if (error.get() != null) s.put("error", error.get());
                series.add(s);
                last = lat;
            }
        } finally {
            teardownRoot(admin, root);
            closeAll(pool);
            admin.close();
        }
        Map<String, Object> p = baseParams();
        p.put("steps", new ArrayList<Object>(steps));
        p.put("max_sessions", 20);
        return curve("S1-lock-handoff", p, ops, System.nanoTime() - start, last, ok, series)
                .field("latency_of", "hand-off: one holder's release starting -> the next holder acquired"
                        + " (top-level percentiles: the largest step)");
    }

    static String treeKey(int i) {
        return String.format("key-%05d", i);
    }

    static String treeValue(int i, int v) {
        return "{\"enabled\":" + (i % 2 == 0) + ",\"limit\":" + (100 + i % 50) + ",\"name\":\"" + treeKey(i)
                + "\",\"v\":" + v + "}";
    }

    static Report sConfigtree() throws Exception {
        List<Integer> steps = steps(10, 100, 1000, 10000);
        CuratorFramework writer = client();
        String root = setupRoot(writer);
        List<Object> series = new ArrayList<>();
        long ops = 0;
        long start = System.nanoTime();
        try {
            for (int n : steps) {
                String dir = root + "/tree-" + n;
                writer.create().forPath(dir, new byte[0]);
                Map<String, byte[]> nodes = new LinkedHashMap<>();
                for (int i = 0; i < n; i++) nodes.put(dir + "/" + treeKey(i), treeValue(i, 0).getBytes(StandardCharsets.UTF_8));
                createMany(writer, nodes);
                CuratorFramework reader = client();
                Map<String, String> view = new ConcurrentHashMap<>();
                String prefix = dir + "/";
                CountDownLatch init = new CountDownLatch(1);
                double heap0 = heapAfterGcMb();
                long t = System.nanoTime();
                CuratorCache cache = CuratorCache.build(reader, dir);
                try {
                    cache.listenable().addListener(CuratorCacheListener.builder()
                            .forCreatesAndChanges((oldNode, node) -> {
                                if (node.getPath().startsWith(prefix)) {
                                    view.put(node.getPath(), new String(node.getData(), StandardCharsets.UTF_8));
                                    signal();
                                }
                            })
                            .forInitialized(init::countDown)
                            .build());
                    cache.start();
                    if (!init.await(SCALE_WAIT_S, TimeUnit.SECONDS)) throw new IllegalStateException("cache not initialized");
                    long firstLoad = System.nanoTime() - t;
                    int loaded = view.size();
                    Double rss = rssMb();
                    double heap = heapAfterGcMb();
                    Long watches = serverWatches();
                    Lat lat = new Lat();
                    for (int j = 0; j < SCALE_CHANGES; j++) {
                        int i = (j * 7919 + 3) % n;
                        String path = prefix + treeKey(i);
                        String v = treeValue(i, j + 1);
                        long t1 = System.nanoTime();
                        writer.setData().forPath(path, v.getBytes(StandardCharsets.UTF_8));
                        if (!await(() -> v.equals(view.get(path)), CONVERGE_TIMEOUT_MS * 6)) {
                            throw new IllegalStateException("change not seen");
                        }
                        lat.add(System.nanoTime() - t1);
                    }
                    ops += n;
                    series.add(obj("keys", n, "first_load_ms", ms(firstLoad), "keys_loaded", loaded, "rss_mb", rss,
                            "heap_after_gc_mb", heap, "heap_delta_bytes_per_key",
                            Math.max(0, Math.round((heap - heap0) * 1024 * 1024 / n)),
                            "change_p50_ms", lat.pct(50), "change_max_ms", lat.pct(100), "server_watches", watches));
                } finally {
                    cache.close();
                    reader.close();
                }
                writer.delete().deletingChildrenIfNeeded().forPath(dir);
            }
        } finally {
            teardownRoot(writer, root);
            writer.close();
        }
        Map<String, Object> p = baseParams();
        p.put("steps", new ArrayList<Object>(steps));
        p.put("changes_per_step", SCALE_CHANGES);
        return curve("S3-config-tree", p, ops, System.nanoTime() - start, new Lat(), true, series)
                .field("latency_of", "first_load: CuratorCache start -> initialized; change: the writer's setData"
                        + " starting -> the cache holding the new value");
    }

    static Report sDiscovery() throws Exception {
        List<Integer> steps = steps(10, 100, 1000);
        CuratorFramework watcher = client();
        String root = setupRoot(watcher);
        List<Object> series = new ArrayList<>();
        long ops = 0;
        boolean ok = true;
        long start = System.nanoTime();
        try {
            for (int n : steps) {
                int sessions = Math.min(10, n);
                List<CuratorFramework> cs = clients(sessions);
                String base = root + "/services-" + n + "/bench-svc";
                String prefix = base + "/";
                watcher.create().creatingParentContainersIfNeeded().forPath(base, new byte[0]);
                Set<String> view = ConcurrentHashMap.newKeySet();
                AtomicReference<Set<String>> target = new AtomicReference<>(Collections.emptySet());
                AtomicLong convergedAt = new AtomicLong();
                Runnable check = () -> {
                    Set<String> tg = target.get();
                    if (convergedAt.get() == 0 && view.size() == tg.size() && view.containsAll(tg)) {
                        convergedAt.compareAndSet(0, System.nanoTime());
                        signal();
                    }
                };
                CuratorCache cache = CuratorCache.build(watcher, base);
                List<CuratorFramework> open = new ArrayList<>(cs);
                try {
                    CountDownLatch init = new CountDownLatch(1);
                    cache.listenable().addListener(CuratorCacheListener.builder()
                            .forCreates(node -> {
                                if (node.getPath().startsWith(prefix)) {
                                    view.add(node.getPath().substring(prefix.length()));
                                    check.run();
                                }
                            })
                            .forDeletes(node -> {
                                if (node.getPath().startsWith(prefix)) {
                                    view.remove(node.getPath().substring(prefix.length()));
                                    check.run();
                                }
                            })
                            .forInitialized(init::countDown)
                            .build());
                    cache.start();
                    if (!init.await(60, TimeUnit.SECONDS)) throw new IllegalStateException("cache not initialized");
                    Set<String> all = new HashSet<>();
                    for (int i = 0; i < n; i++) all.add(instId(i));
                    convergedAt.set(0);
                    target.set(all);
                    CountDownLatch registered = new CountDownLatch(n);
                    AtomicReference<String> error = new AtomicReference<>();
                    long t0 = System.nanoTime();
                    for (int i = 0; i < n; i++) {
                        String id = instId(i);
                        String json = "{\"name\":\"bench-svc\",\"id\":\"" + id + "\",\"address\":\"10.0.0.1\",\"port\":"
                                + (8000 + i % 1000) + ",\"sslPort\":null,\"payload\":{\"zone\":\"z" + (i % 3)
                                + "\",\"weight\":" + (i % 10) + "},\"registrationTimeUTC\":" + System.currentTimeMillis()
                                + ",\"serviceType\":\"DYNAMIC\",\"uriSpec\":null}";
                        cs.get(i % sessions).create().withMode(CreateMode.EPHEMERAL)
                                .inBackground((cl, ev) -> {
                                    if (ev.getResultCode() != 0) error.compareAndSet(null, "create rc " + ev.getResultCode());
                                    registered.countDown();
                                })
                                .forPath(prefix + id, json.getBytes(StandardCharsets.UTF_8));
                    }
                    if (!registered.await(SCALE_WAIT_S, TimeUnit.SECONDS)) throw new IllegalStateException("registrations timed out");
                    long registeredIn = System.nanoTime() - t0;
                    if (error.get() != null) throw new IllegalStateException(error.get());
                    boolean regOk = await(() -> convergedAt.get() != 0, CONVERGE_TIMEOUT_MS * 6);
                    Long regConv = regOk ? convergedAt.get() - t0 : null;
                    Double rss = rssMb();
                    double heap = heapAfterGcMb();

                    convergedAt.set(0);
                    target.set(Collections.emptySet());
                    List<Thread> closers = new ArrayList<>();
                    long t1 = System.nanoTime();
                    for (CuratorFramework c : cs) {
                        Thread th = new Thread(c::close);
                        closers.add(th);
                        th.start();
                    }
                    open.clear();
                    check.run();
                    boolean closeOk = await(() -> convergedAt.get() != 0, CONVERGE_TIMEOUT_MS * 6);
                    Long closeConv = closeOk ? convergedAt.get() - t1 : null;
                    for (Thread th : closers) th.join();
                    ok &= regOk && closeOk;
                    ops += n;
                    series.add(obj("instances", n, "sessions", sessions, "register_ms", ms(registeredIn),
                            "register_converge_ms", regConv == null ? null : ms(regConv),
                            "close_converge_ms", closeConv == null ? null : ms(closeConv),
                            "rss_mb", rss, "heap_after_gc_mb", heap));
                } finally {
                    cache.close();
                    closeAll(open);
                }
            }
        } finally {
            teardownRoot(watcher, root);
            watcher.close();
        }
        Map<String, Object> p = baseParams();
        p.put("steps", new ArrayList<Object>(steps));
        p.put("max_sessions", 10);
        p.put("recipe", "ephemeral ServiceInstance-like nodes + CuratorCache (curator-x-discovery is not packaged here)");
        return curve("S4-discovery", p, ops, System.nanoTime() - start, new Lat(), ok, series)
                .field("latency_of", "register_converge: the registrations starting -> the watcher sees all N;"
                        + " close_converge: closing every registering session starting -> the watcher sees 0");
    }

    // ---------------------------------------------------------------- W9: tree cache

    static Report w9() throws Exception {
        final int dirs = 100;
        final int nodes = Math.max(dirs * 2, scaled(10_000));
        final int leaves = nodes / dirs - 1;
        final int changes = scaled(200);
        final int total = 1 + dirs * (leaves + 1);
        CuratorFramework admin = client();
        CuratorFramework cached = client();
        String root = setupRoot(admin);
        CuratorCache cache = null;
        Lat lat = new Lat();
        long firstLoad, el;
        int nodesCached, missed = 0;
        try {
            // The tree (not timed): creates pipelined with inBackground (createMany).
            List<String> leafPaths = new ArrayList<>();
            List<String> dirPaths = new ArrayList<>();
            for (int d = 0; d < dirs; d++) dirPaths.add(String.format("%s/d%03d", root, d));
            Map<String, byte[]> dirNodes = new LinkedHashMap<>();
            for (String d : dirPaths) dirNodes.put(d, "directory".getBytes(StandardCharsets.UTF_8));
            createMany(admin, dirNodes);
            for (String d : dirPaths) {
                for (int l = 0; l < leaves; l++) leafPaths.add(String.format("%s/leaf%03d", d, l));
            }
            Map<String, byte[]> leafNodes = new LinkedHashMap<>();
            for (int i = 0; i < leafPaths.size(); i++) {
                leafNodes.put(leafPaths.get(i), String.format("%032d", i % 1000).getBytes(StandardCharsets.UTF_8));
            }
            createMany(admin, leafNodes);

            final CountDownLatch loaded = new CountDownLatch(1);
            final AtomicReference<String> wantPath = new AtomicReference<>("");
            final AtomicReference<byte[]> wantData = new AtomicReference<>(new byte[0]);
            final AtomicLong seenAt = new AtomicLong(0);
            long t0 = System.nanoTime();
            cache = CuratorCache.build(cached, root);
            cache.listenable().addListener(CuratorCacheListener.builder()
                    .forInitialized(loaded::countDown)
                    .forChanges((oldNode, node) -> {
                        if (node.getPath().equals(wantPath.get())
                                && Arrays.equals(node.getData(), wantData.get())) {
                            seenAt.set(System.nanoTime());
                            signal();
                        }
                    })
                    .build());
            cache.start();
            if (!loaded.await(120, TimeUnit.SECONDS)) {
                throw new IllegalStateException("CuratorCache did not initialise within 120 s");
            }
            firstLoad = System.nanoTime() - t0;
            nodesCached = (int) cache.size();

            long start = System.nanoTime();
            for (int i = 0; i < changes; i++) {
                String path = leafPaths.get((i * 37) % Math.max(1, leafPaths.size()));
                byte[] data = String.format("change-%026d", i).getBytes(StandardCharsets.UTF_8);
                seenAt.set(0);
                wantData.set(data);
                wantPath.set(path);
                long t = System.nanoTime();
                admin.setData().forPath(path, data);
                if (await(() -> seenAt.get() != 0, CONVERGE_TIMEOUT_MS)) {
                    lat.add(seenAt.get() - t);
                } else {
                    missed++;
                }
            }
            el = System.nanoTime() - start;
        } finally {
            if (cache != null) cache.close();
            teardownRoot(admin, root);
            cached.close();
            admin.close();
        }
        Map<String, Object> p = baseParams();
        p.put("changes", changes);
        p.put("dirs", dirs);
        p.put("leaves_per_dir", leaves);
        p.put("nodes", dirs * (leaves + 1));
        p.put("value_bytes", 32);
        Report r = new Report("W9-tree-cache", p, changes, el, lat, nodesCached == total && missed == 0);
        r.m.put("ops_per_s", null);
        return r.field("first_load_ms", ms(firstLoad))
                .field("first_load_nodes_per_s", (double) Math.round(total / (firstLoad / 1e9)))
                .field("latency_of", "setData start -> the CuratorCache listener sees the change")
                .field("missed_changes", missed)
                .field("nodes_cached", nodesCached);
    }

    // ---------------------------------------------------------------- main

    static String workloadName(String c) {
        switch (c) {
            case "w1": return "W1-lock-uncontended";
            case "w2": return "W2-lock-contended";
            case "w3": return "W3-rwlock";
            case "w4": return "W4-election-failover-close";
            case "w5": return "W5-config-propagation";
            case "w6seq": return "W6a-ids-sequential";
            case "w6counter": return "W6b-ids-counter";
            case "w7": return "W7-registration";
            case "w8": return "W8-progress";
            case "s-handoff": return "S1-lock-handoff";
            case "s-configtree": return "S3-config-tree";
            case "s-discovery": return "S4-discovery";
            case "w9": return "W9-tree-cache";
            default: return null;
        }
    }

    static void usage(String why) {
        System.err.println("CuratorBench: " + why);
        System.err.println("usage: CuratorBench <w1|w2|w3|w4|w5|w6seq|w6counter|w7|w8|w9|s-handoff|s-configtree|s-discovery>"
                + " --zk HOST:PORT"
                + " [--scale F] [--session-ms N] [--batch N] [--multi N] [--in-flight N]");
        System.exit(2);
    }

    public static void main(String[] args) {
        try {
            for (int i = 0; i < args.length; i++) {
                String a = args[i];
                if (a.equals("--zk") && i + 1 < args.length) zk = args[++i];
                else if (a.equals("--scale") && i + 1 < args.length) scale = Double.parseDouble(args[++i]);
                else if (a.equals("--session-ms") && i + 1 < args.length) sessionMs = Integer.parseInt(args[++i]);
                else if (a.equals("--batch") && i + 1 < args.length) batch = Integer.parseInt(args[++i]);
                else if (a.equals("--in-flight") && i + 1 < args.length) inFlight = Integer.parseInt(args[++i]);
                else if (a.equals("--multi") && i + 1 < args.length) multi = Integer.parseInt(args[++i]);
                else if (a.startsWith("--")) usage("unknown flag " + a);
                else if (cmd == null) cmd = a;
                else usage("unexpected argument " + a);
            }
        } catch (NumberFormatException e) {
            usage("bad number: " + e.getMessage());
        }
        if (cmd == null || workloadName(cmd) == null) usage("missing or unknown workload");
        if (zk == null) usage("--zk is required");
        if (!(scale > 0) || Double.isInfinite(scale)) usage("--scale must be a positive number");
        Report r;
        try {
            switch (cmd) {
                case "w1": r = w1(); break;
                case "w2": r = w2(); break;
                case "w3": r = w3(); break;
                case "w4": r = w4(); break;
                case "w5": r = w5(); break;
                case "w6seq": r = w6seq(); break;
                case "w6counter": r = w6counter(); break;
                case "w7": r = w7(); break;
                case "w8": r = w8(); break;
                case "s-handoff": r = sHandoff(); break;
                case "s-configtree": r = sConfigtree(); break;
                case "s-discovery": r = sDiscovery(); break;
                case "w9": r = w9(); break;
                default: throw new IllegalStateException("unreachable");
            }
        } catch (Throwable t) {
            System.err.println("CuratorBench: " + cmd + " failed: " + t);
            t.printStackTrace();
            Map<String, Object> p = baseParams();
            r = new Report(workloadName(cmd), p, 0, 0, null, false).field("error", String.valueOf(t));
            r.m.put("seconds", 0.0);
        }
        System.out.println(r.json());
        System.out.flush();
        System.exit(r.ok() ? 0 : 1);
    }
}
