#!/usr/bin/env python3
"""ns per stat() call, untraced vs traced, ENOENT and hit paths, side by side in one run.

    sudo .venv/bin/python bench/overhead.py [--calls N] [--tier auto|tracepoint|kprobe|fentry] [--small]
                                            [--syscall-args auto|regs|map] [--coalesce-ns NS]
                                            [--kmem-probe auto|raw|tracepoint] [--wall]

Every traced ENOENT call streams one event (a PATH_SYSCALL record on the
tracepoint tier), so "added ns per streamed event" is traced minus
untraced on the ENOENT path; the hit path streams nothing and shows the
cost of having the syscall tracepoints on at all. Events are drained while
the loop runs, and drops are counted and printed. Repeats are interleaved
(untraced, traced, untraced, ...) so drift affects both sides alike; the
median of the repeats is reported. On the tracepoint tier the header line
names how the syscall arguments reached the exit programs (``--syscall-args``
chooses; see tracers/tracepoint.py). ``--coalesce-ns 0`` turns the tracepoint
tier's in-kernel folding of identical repeated failures off, to measure it
alone. The loops report their own CPU time per call (user + kernel, where the
BPF programs run; ``--wall`` for wall time): other work on a shared machine
inflates wall time far more.
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _statgen import StatGen  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tier", default="auto")
    ap.add_argument("--small", action="store_true", help="CI size: 50k calls, 1 repeat")
    ap.add_argument("--syscall-args", default="auto", choices=("auto", "regs", "map"),
                    help="tracepoint tier: syscall arguments from saved registers at exit, or kept from enter in a map")
    ap.add_argument("--coalesce-ns", type=int, default=None,
                    help="tracepoint tier: window for folding identical repeated failures (0: off; default the tier's)")
    ap.add_argument("--kmem-probe", default=None, choices=("auto", "raw", "tracepoint"),
                    help="tracepoint tier: dentry-cache probes as raw tracepoints (a pointer compare) or classic ones")
    ap.add_argument("--wall", action="store_true", help="time the loops in wall time, not their CPU time")
    a = ap.parse_args()
    if a.small:
        a.calls, a.repeats = 50_000, 1
    if os.geteuid() != 0:
        raise SystemExit("bench/overhead.py: needs root (BPF)")

    from tracers import make_tracer
    from vfstrace.kernel.doctor import choose_tier
    from vfstrace.options import TraceOptions
    from vfstrace.recorder import Recorder

    gen = StatGen()
    work = tempfile.mkdtemp(prefix="vfstrace-overhead-", dir="/var/tmp")
    hit = os.path.join(work, "present")
    open(hit, "w").close()
    miss = os.path.join(work, "absent")
    choice = choose_tier(a.tier)
    extra = {"syscall_args": a.syscall_args}
    if a.coalesce_ns is not None:
        extra["coalesce_ns"] = a.coalesce_ns
    if a.kmem_probe is not None:
        extra["kmem_probe"] = a.kmem_probe
    tracer = make_tracer(choice, TraceOptions(extra=extra))
    cpu = not a.wall
    res = {(p, t): [] for p in ("enoent", "hit") for t in ("untraced", "traced")}
    got = lost = 0
    try:
        for p, path in (("enoent", miss), ("hit", hit)):
            gen.run(path, a.calls // 10)  # warm the dcache (negative dentry for the miss)
        for _ in range(a.repeats):
            for p, path in (("enoent", miss), ("hit", hit)):
                res[(p, "untraced")].append(gen.run(path, a.calls, cpu_time=cpu)["ns_per_call"])
            tracer.load()
            stop = threading.Event()
            # Drained as `record` drains: the recorder numbers the events and
            # turns the tracer's loss counters into LOST rows (not counted here).
            rec = Recorder(tracer)

            def drain(stop, rec):
                while not stop.is_set():
                    rec.poll(50)
                rec.drain()

            th = threading.Thread(target=drain, args=(stop, rec))
            th.start()
            for p, path in (("enoent", miss), ("hit", hit)):
                res[(p, "traced")].append(gen.run(path, a.calls, cpu_time=cpu)["ns_per_call"])
            stop.set()
            th.join()
            got += rec.events - rec.kind_counts.get("lost", 0)
            lost += rec.lost_total
            mode = getattr(tracer, "mode", None)
            tracer.close()
    finally:
        tracer.close()
        gen.close()
        os.unlink(hit)
        os.rmdir(work)
    med = {k: statistics.median(v) for k, v in res.items()}
    how = f"   syscall args: {mode}" if mode else ""
    fold = f"   coalesce_ns: {tracer.coalesce_ns}   kmem: {tracer.kmem_probe}" if hasattr(tracer, "coalesce_ns") else ""
    print(f"tier: {choice.tier}{how}{fold}   kernel: {choice.kernel_release}   calls per run: {a.calls}   "
          f"repeats: {a.repeats}   ns: {'wall' if a.wall else 'CPU'} time")
    print(f"{'path':<8} {'untraced ns':>12} {'traced ns':>10} {'ratio':>6} {'added ns':>9}")
    for p in ("enoent", "hit"):
        u, t = med[(p, "untraced")], med[(p, "traced")]
        print(f"{p:<8} {u:12.1f} {t:10.1f} {t / u:6.2f} {t - u:9.1f}")
    print(f"added ns per streamed event (ENOENT path): {med[('enoent', 'traced')] - med[('enoent', 'untraced')]:.1f}")
    print(f"events received: {got}   lost: {lost}")


if __name__ == "__main__":
    main()
