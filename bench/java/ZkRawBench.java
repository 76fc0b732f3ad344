// ZkRawBench: the plain Apache ZooKeeper Java client (org.apache.zookeeper.ZooKeeper, 3.8) peer of
// `zkr-bench raw` (W0-raw-floor, bench/zkr-bench/src/raw.rs; see docs/benchmarking.md): the bare
// operations every recipe is built from, with no recipe library in between. One client (one
// session), under a fresh root /zkr-bench/raw-<unix-ms> (parent /zkr-bench a container node),
// removed afterwards:
//
//   warm-up  500 getData, 64 in flight (untimed)
//   1.       2,000 serial getData of a 64-byte node        (sync API: zk.getData(path, false, null))
//   2.       20,000 getData with 64 in flight              (async API: DataCallback)
//   3.       5,000 create+delete pairs with 64 in flight   (async: create's StringCallback issues
//            (persistent node, then delete at version 0)    the delete; its VoidCallback ends the pair)
//
// Every count is multiplied by --scale. "64 in flight" is a Semaphore(64): the main thread acquires
// a permit before each request (pair), the completion callback releases it.
//
// Reported (the same field names as zkr-bench raw): serial_get_per_s, concurrent_get_per_s,
// create_delete_pairs_per_s; ops = every request of the timed phases (a pair counts 2), seconds =
// sum of the three phases, ops_per_s = ops / seconds; p50_ms/p99_ms/max_ms = one serial getData
// (latency_of: serial_get); concurrent_get_p50/p99_ms (one getData among 64 in flight);
// pair_p50/p99_ms (one create+delete). Percentiles are nearest-rank. ok is false if any request
// failed, a read returned the wrong data, or a created node was left behind.
//
// Usage: java -cp <zookeeper jars>:<dir> ZkRawBench [raw] --zk HOST:PORT [--scale F] [--session-ms N]
// Prints exactly one JSON line on stdout (logs go to stderr); exit 0 iff ok: true.

import java.math.BigDecimal;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;

import org.apache.zookeeper.CreateMode;
import org.apache.zookeeper.KeeperException;
import org.apache.zookeeper.Version;
import org.apache.zookeeper.Watcher;
import org.apache.zookeeper.ZKUtil;
import org.apache.zookeeper.ZooDefs;
import org.apache.zookeeper.ZooKeeper;

public class ZkRawBench {
    static final String WORKLOAD = "W0-raw-floor";
    static final int SERIAL_GETS = 2_000, CONCURRENT_GETS = 20_000, PAIRS = 5_000;
    static final int IN_FLIGHT = 64, DATA_BYTES = 64, WARM_UP = 500;
    static final long PHASE_TIMEOUT_S = 300;

    static String zkConnect;
    static double scale = 1.0;
    static int sessionMs = 10_000;

    static String peer() { // "zookeeper-java-3.8.0"
        String v = Version.getVersion();
        return "zookeeper-java-" + (v == null ? "unknown" : v.split("[- ]")[0]);
    }

    static int scaled(int n) {
        return (int) Math.max(1, Math.round(n * scale));
    }

    static void log(String s) {
        System.err.println("ZkRawBench: " + s);
    }

    /** One timed phase: latency samples (ns), errors. Callbacks and the main thread both record. */
    static final class Phase {
        final long[] lat;
        int n, errors;
        String firstError;
        long elapsed;

        Phase(int cap) { lat = new long[cap]; }

        synchronized void ok(long nanos) { lat[n++] = nanos; }

        synchronized void fail(String e) {
            errors++;
            if (firstError == null) firstError = e;
        }

        /** Nearest-rank percentile in ms (rounded to µs); null without samples. */
        synchronized Double pct(double p) {
            if (n == 0) return null;
            long[] a = Arrays.copyOf(lat, n);
            Arrays.sort(a);
            int rank = Math.max(1, Math.min(n, (int) Math.ceil(p / 100.0 * n)));
            return round(a[rank - 1] / 1e6, 3);
        }
    }

    static double round(double x, int digits) {
        double f = Math.pow(10, digits);
        return Math.round(x * f) / f;
    }

    static Double perS(long count, long nanos) {
        return nanos <= 0 ? null : round(count / (nanos / 1e9), 1);
    }

    static String err(int rc, String path) {
        return KeeperException.create(KeeperException.Code.get(rc), path).getMessage();
    }

    static void await(CountDownLatch done, String phase) throws InterruptedException {
        if (!done.await(PHASE_TIMEOUT_S, TimeUnit.SECONDS))
            throw new IllegalStateException(phase + " did not complete within " + PHASE_TIMEOUT_S + " s");
    }

    /** n async getData of node, IN_FLIGHT at a time, recorded in ph (null: not recorded). */
    static void concurrentGets(ZooKeeper zk, String node, byte[] want, int n, Phase ph) throws Exception {
        Semaphore permits = new Semaphore(IN_FLIGHT);
        CountDownLatch done = new CountDownLatch(n);
        for (int i = 0; i < n; i++) {
            permits.acquire();
            zk.getData(node, false, (rc, path, ctx, data, stat) -> {
                long d = System.nanoTime() - (Long) ctx;
                if (ph != null) {
                    if (rc != 0) ph.fail(err(rc, path));
                    else if (!Arrays.equals(data, want)) ph.fail("getData returned " + (data == null ? 0 : data.length)
                            + " bytes, not the " + want.length + " written");
                    else ph.ok(d);
                }
                permits.release();
                done.countDown();
            }, System.nanoTime());
        }
        await(done, "concurrent getData");
    }

    static Map<String, Object> run(ZooKeeper zk, String root) throws Exception {
        int nSerial = scaled(SERIAL_GETS), nConc = scaled(CONCURRENT_GETS), nPairs = scaled(PAIRS);
        byte[] data = new byte[DATA_BYTES];
        Arrays.fill(data, (byte) 'x');
        String node = root + "/node", pairsDir = root + "/pairs";
        zk.create(node, data, ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT);
        zk.create(pairsDir, new byte[0], ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT);

        concurrentGets(zk, node, data, WARM_UP, null); // warm-up: connection, JIT on both sides

        log("phase 1: " + nSerial + " serial getData");
        Phase serial = new Phase(nSerial);
        long t = System.nanoTime();
        for (int i = 0; i < nSerial; i++) {
            long t0 = System.nanoTime();
            try {
                byte[] got = zk.getData(node, false, null);
                if (Arrays.equals(got, data)) serial.ok(System.nanoTime() - t0);
                else serial.fail("getData returned " + got.length + " bytes, not the " + data.length + " written");
            } catch (KeeperException e) {
                serial.fail(e.getMessage());
            }
        }
        serial.elapsed = System.nanoTime() - t;

        log("phase 2: " + nConc + " concurrent getData, " + IN_FLIGHT + " in flight");
        Phase conc = new Phase(nConc);
        t = System.nanoTime();
        concurrentGets(zk, node, data, nConc, conc);
        conc.elapsed = System.nanoTime() - t;

        log("phase 3: " + nPairs + " create+delete pairs, " + IN_FLIGHT + " in flight");
        Phase pairs = new Phase(nPairs);
        Semaphore permits = new Semaphore(IN_FLIGHT);
        CountDownLatch done = new CountDownLatch(nPairs);
        t = System.nanoTime();
        for (int i = 0; i < nPairs; i++) {
            permits.acquire();
            String p = String.format("%s/p%08d", pairsDir, i);
            long t0 = System.nanoTime();
            Runnable end = () -> { permits.release(); done.countDown(); };
            zk.create(p, new byte[0], ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT, (rc, path, ctx, name) -> {
                if (rc != 0 || !p.equals(name)) {
                    pairs.fail(rc != 0 ? err(rc, path) : "create returned " + name + ", expected " + p);
                    end.run();
                    return;
                }
                zk.delete(p, 0, (rc2, path2, ctx2) -> {
                    if (rc2 != 0) pairs.fail(err(rc2, path2));
                    else pairs.ok(System.nanoTime() - t0);
                    end.run();
                }, null);
            }, null);
        }
        await(done, "create+delete pairs");
        pairs.elapsed = System.nanoTime() - t;

        Integer leftover = null;
        try {
            leftover = zk.getChildren(pairsDir, false).size();
        } catch (KeeperException e) {
            log("could not list the pairs directory: " + e.getMessage());
        }

        int errors = serial.errors + conc.errors + pairs.errors;
        String firstError = serial.firstError != null ? serial.firstError
                : conc.firstError != null ? conc.firstError : pairs.firstError;
        if (firstError != null) log(errors + " requests failed, the first: " + firstError);
        long ops = nSerial + nConc + 2L * nPairs, elapsed = serial.elapsed + conc.elapsed + pairs.elapsed;

        Map<String, Object> params = new LinkedHashMap<>();
        params.put("scale", scale);
        params.put("session_ms", sessionMs);
        params.put("throwaway_server", false);
        params.put("serial_gets", nSerial);
        params.put("concurrent_gets", nConc);
        params.put("create_delete_pairs", nPairs);
        params.put("in_flight", IN_FLIGHT);
        params.put("data_bytes", DATA_BYTES);

        Map<String, Object> r = report(params, ops, elapsed, serial.pct(50), serial.pct(99), serial.pct(100),
                errors == 0 && leftover != null && leftover == 0);
        r.put("latency_of", "serial_get");
        r.put("serial_get_per_s", perS(nSerial, serial.elapsed));
        r.put("concurrent_get_per_s", perS(nConc, conc.elapsed));
        r.put("create_delete_pairs_per_s", perS(nPairs, pairs.elapsed));
        r.put("concurrent_get_p50_ms", conc.pct(50));
        r.put("concurrent_get_p99_ms", conc.pct(99));
        r.put("pair_p50_ms", pairs.pct(50));
        r.put("pair_p99_ms", pairs.pct(99));
        r.put("errors", errors);
        r.put("leftover_nodes", leftover);
        if (firstError != null) r.put("first_error", firstError);
        return r;
    }

    /** The common fields, in the order zkr-bench prints them. */
    static Map<String, Object> report(Map<String, Object> params, long ops, long nanos,
                                      Double p50, Double p99, Double max, boolean ok) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("peer", peer());
        m.put("workload", WORKLOAD);
        m.put("params", params);
        m.put("ops", ops);
        m.put("seconds", round(nanos / 1e9, 3));
        m.put("ops_per_s", perS(ops, nanos));
        m.put("p50_ms", p50);
        m.put("p99_ms", p99);
        m.put("max_ms", max);
        m.put("ok", ok);
        return m;
    }

    /** Minimal JSON encoder for maps of strings, numbers, booleans, null and nested maps. */
    @SuppressWarnings("unchecked")
    static void json(StringBuilder sb, Object v) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof Map) {
            sb.append('{');
            String sep = "";
            for (Map.Entry<String, Object> e : ((Map<String, Object>) v).entrySet()) {
                sb.append(sep);
                sep = ",";
                json(sb, e.getKey());
                sb.append(':');
                json(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof Double) {
            double d = (Double) v;
            if (Double.isNaN(d) || Double.isInfinite(d)) { sb.append("null"); return; }
            String s = BigDecimal.valueOf(d).stripTrailingZeros().toPlainString();
            sb.append(s.contains(".") ? s : s + ".0");
        } else if (v instanceof Number || v instanceof Boolean) {
            sb.append(v);
        } else {
            sb.append('"');
            for (char c : v.toString().toCharArray()) {
                if (c == '"' || c == '\\') sb.append('\\').append(c);
                else if (c < 0x20) sb.append(String.format("\\u%04x", (int) c));
                else sb.append(c);
            }
            sb.append('"');
        }
    }

    static void usage(String why) {
        System.err.println("ZkRawBench: " + why + "\nusage: ZkRawBench [raw] --zk HOST:PORT [--scale F] [--session-ms N]");
        System.exit(2);
    }

    public static void main(String[] args) throws Exception {
        try {
            for (int i = 0; i < args.length; i++) {
                String a = args[i];
                if (a.equals("--zk") && i + 1 < args.length) zkConnect = args[++i];
                else if (a.equals("--scale") && i + 1 < args.length) scale = Double.parseDouble(args[++i]);
                else if (a.equals("--session-ms") && i + 1 < args.length) sessionMs = Integer.parseInt(args[++i]);
                else if (!a.equals("raw")) usage("unexpected argument " + a);
            }
        } catch (NumberFormatException e) {
            usage("bad number: " + e.getMessage());
        }
        if (zkConnect == null) usage("--zk is required");
        if (!(scale > 0) || Double.isInfinite(scale)) usage("--scale must be a positive number");

        Map<String, Object> r;
        ZooKeeper zk = null;
        String root = null;
        try {
            CountDownLatch connected = new CountDownLatch(1);
            zk = new ZooKeeper(zkConnect, sessionMs, ev -> {
                if (ev.getState() == Watcher.Event.KeeperState.SyncConnected) connected.countDown();
            });
            if (!connected.await(30, TimeUnit.SECONDS))
                throw new IllegalStateException("could not connect to " + zkConnect + " within 30 s");
            try {
                zk.create("/zkr-bench", new byte[0], ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.CONTAINER);
            } catch (KeeperException.NodeExistsException e) {
                // another run's container, or one not yet reaped: fine
            }
            root = zk.create("/zkr-bench/raw-" + System.currentTimeMillis(), new byte[0],
                    ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT);
            log("run root " + root + " created");
            r = run(zk, root);
        } catch (Throwable t) {
            log("raw failed: " + t);
            t.printStackTrace();
            Map<String, Object> p = new LinkedHashMap<>();
            p.put("scale", scale);
            p.put("session_ms", sessionMs);
            p.put("throwaway_server", false);
            r = report(p, 0, 0, null, null, null, false);
            r.put("error", String.valueOf(t));
        } finally {
            if (zk != null) {
                if (root != null) {
                    try {
                        ZKUtil.deleteRecursive(zk, root);
                        log("run root " + root + " removed");
                    } catch (Throwable t) {
                        log("could not remove " + root + ": " + t);
                    }
                }
                zk.close();
            }
        }
        StringBuilder sb = new StringBuilder();
        json(sb, r);
        System.out.println(sb);
        System.out.flush();
        System.exit(Boolean.TRUE.equals(r.get("ok")) ? 0 : 1);
    }
}
