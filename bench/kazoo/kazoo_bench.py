#!/usr/bin/python3
"""The kazoo peer of zkr-bench's `w4` (W4-election-failover-close), for scripts/bench-compare.

3 candidates, each its own KazooClient (session), run kazoo's Election on one path; 10 rounds
(x --scale): the leader's process shuts down gracefully -- its leader function returns (kazoo
releases the election lock: deletes its node) and the client stops (closes the session) -- and
the time until another candidate's leader function starts is measured. A fresh candidate joins
each round. Prints one JSON line with zkr-bench's field names (docs/benchmarking.md).

Usage: kazoo_bench.py w4 --zk HOST:PORT[,...] [--scale F] [--session-ms N]
Needs Debian's python3-kazoo (kazoo 2.8).
"""

import argparse
import json
import sys
import threading
import time

from kazoo.client import KazooClient

ROUNDS = 10
CANDIDATES = 3
WAIT = 15.0


class Candidate:
    def __init__(self, zk, session_s, path, ident, on_lead):
        self.client = KazooClient(hosts=zk, timeout=session_s)
        self.client.start(timeout=15)
        self.ident = ident
        self.step_down = threading.Event()
        self.leading = False
        self.election = self.client.Election(path, ident)

        def lead():
            self.leading = True
            on_lead(self, time.monotonic())
            self.step_down.wait()
            self.leading = False

        self.thread = threading.Thread(target=self.election.run, args=(lead,), daemon=True)
        self.thread.start()


def nearest_rank(sorted_values, pct):
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(-(-pct * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def w4(args):
    rounds = max(1, round(ROUNDS * args.scale))
    session_s = args.session_ms / 1000.0
    admin = KazooClient(hosts=args.zk, timeout=session_s)
    admin.start(timeout=15)
    root = "/zkr-bench/kazoo-w4-%d" % int(time.time() * 1000)
    path = root + "/election"
    admin.ensure_path(path)

    lock = threading.Condition()
    leaders = []  # (candidate, monotonic time told)

    def on_lead(cand, at):
        with lock:
            leaders.append((cand, at))
            lock.notify_all()

    def wait_leader(after):
        deadline = time.monotonic() + WAIT
        with lock:
            while True:
                fresh = [x for x in leaders[after:]]
                if fresh:
                    return fresh[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                lock.wait(left)

    cands = [Candidate(args.zk, session_s, path, "c%d" % i, on_lead) for i in range(CANDIDATES)]
    from_start, close_call, dual = [], [], 0
    ok, error = True, None
    started = time.monotonic()
    seen = 0
    first = wait_leader(0)
    if first is None:
        ok, error = False, "no leader within 15 s"
    else:
        seen = 1
        leader = first[0]
        for next_id in range(CANDIDATES, CANDIDATES + rounds):
            t0 = time.monotonic()
            leader.step_down.set()
            leader.thread.join(WAIT)
            leader.client.stop()
            leader.client.close()
            t_ret = time.monotonic()
            got = wait_leader(seen)
            if got is None:
                ok, error = False, "no candidate took over within 15 s"
                break
            seen += 1
            new, at = got
            if any(c.leading for c in cands if c is not new and c is not leader):
                dual += 1
            from_start.append((at - t0) * 1000.0)
            close_call.append((t_ret - t0) * 1000.0)
            cands.remove(leader)
            cands.append(Candidate(args.zk, session_s, path, "c%d" % next_id, on_lead))
            leader = new
    elapsed = time.monotonic() - started
    for c in cands:
        c.step_down.set()
        c.election.cancel()
        c.client.stop()
        c.client.close()
    try:
        admin.delete(root, recursive=True)
    except Exception:  # noqa: BLE001 - best effort clean-up
        pass
    admin.stop()
    admin.close()
    s = sorted(from_start)
    r3 = lambda x: None if x is None else round(x, 3)  # noqa: E731
    line = {
        "peer": "kazoo-2.8",
        "workload": "W4-election-failover-close",
        "params": {"scale": args.scale, "session_ms": args.session_ms, "candidates": CANDIDATES,
                   "rounds": rounds, "close": "leader function returns, then KazooClient.stop()"},
        "ops": len(s),
        "seconds": round(elapsed, 3),
        "ops_per_s": None,
        "p50_ms": r3(nearest_rank(s, 50)),
        "p99_ms": r3(nearest_rank(s, 99)),
        "max_ms": r3(s[-1] if s else None),
        "ok": ok and dual == 0 and len(s) == rounds,
        "from_close_start_p50_ms": r3(nearest_rank(s, 50)),
        "from_close_start_max_ms": r3(s[-1] if s else None),
        "close_call_p50_ms": r3(nearest_rank(sorted(close_call), 50)),
        "dual_leader_rounds": dual,
    }
    if error:
        line["error"] = error
    print(json.dumps(line, separators=(",", ":")), flush=True)
    return 0 if line["ok"] else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=["w4"])
    p.add_argument("--zk", required=True)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--session-ms", type=int, default=10000)
    args = p.parse_args()
    return w4(args)


if __name__ == "__main__":
    sys.exit(main())
