#!/usr/bin/env python3
"""Events/s the live stream sustains into a trace with nothing lost, at offered rates stepped up.

    sudo .venv/bin/python bench/stream.py [--rates 100k,250k,500k,1M,2M] [--seconds 3] [--small]
    sudo .venv/bin/python bench/stream.py --profile 1M      # where the consumer's time goes

Why synthetic: a real stat() storm on this class of machine offers a few
hundred thousand events/s at most, so it cannot show whether the consumer
holds 1M/s. Here bpf/stream_bench.c (loaded by tracers/stream_bench.py)
emits K records of the real ``struct vfs_path_event`` per getppid() of a
C generator compiled at bench time, every one naming a different absent
path (PATH_SYSCALL, -ENOENT: a storm over distinct names), into the real
ring; the generator paces its triggers to the offered rate. The consumer
is what ``vfstrace record`` runs: RingStream -> Recorder (numbering, LOST
rows) -> TraceWriter into a private trace directory, with the streaming
correlator fed every batch and its verdicts counted as ``record`` counts
them. Each step loads a fresh program, so its loss counters start at 0.

Columns: offered (the rate asked for) and the rate the generator reached,
produced (K x triggers, counted in the kernel), kept (rows of the trace
read back from its parts), lost (the kernel's drop counters, which are the
trace's LOST rows), unaccounted (produced - kept - lost: 0 or a bug),
consumer CPU µs per produced event (this process's user+system time over
the step, the trace's close included), and the trace writer's encoder
process's busy seconds (it runs beside the consumer, see
vfstrace/store/encoder.py). It prints numbers; it asserts nothing.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

COMM = "vfs-streamgen"
DEFAULT_RATES = "100k,250k,500k,1M,2M"

GEN_SRC = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    /* streamgen TRIGGERS RATE COMM: TRIGGERS getppid() calls, RATE per second, paced every 8 */
    long n = atol(argv[1]); double rate = atof(argv[2]);
    prctl(PR_SET_NAME, argv[3], 0, 0, 0);
    double t0 = now();
    for (long i = 0; i < n; i++) {
        syscall(SYS_getppid);
        if ((i & 7) == 7) {
            double due = t0 + (i + 1) / rate, d;
            while ((d = due - now()) > 0) { struct timespec s = {0, (long)(d * 1e9)}; nanosleep(&s, 0); }
        }
    }
    printf("%ld %.6f\n", n, now() - t0);
    return 0;
}
"""


def parse_rate(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def build_generator(work: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise SystemExit("bench/stream.py: needs a C compiler (cc/gcc/clang)")
    src, exe = os.path.join(work, "streamgen.c"), os.path.join(work, "streamgen")
    with open(src, "w") as f:
        f.write(GEN_SRC)
    subprocess.run([cc, "-O2", "-o", exe, src], check=True)
    return exe


def trace_rows(path) -> tuple[int, int, int]:
    """(rows of the producer's kinds, LOST rows' sum, ids not 1..N in order) read back from the trace's parts."""
    import numpy as np
    import pyarrow.compute as pc

    from vfstrace.events import Kind
    from vfstrace.store.read import iter_parts

    _, _, parts = iter_parts(path, ["kind", "ret"])
    kept = lost = bad = 0
    expect = 1
    for t in parts:
        kind = t.column("kind").to_numpy()
        ids = t.column("event_id").to_numpy()
        bad += int(np.count_nonzero(ids != np.arange(expect, expect + len(ids), dtype=np.uint64)))
        expect += len(ids)
        is_lost = kind == int(Kind.LOST)
        kept += int(np.count_nonzero(np.isin(kind, (int(Kind.PATH_SYSCALL), int(Kind.D_FREE)))))
        lost += int(pc.sum(t.column("ret").filter(is_lost)).as_py() or 0)
    return kept, lost, bad


def run_step(exe, work, rate, seconds, per_trigger, dentry_every, profile=None):
    """One offered rate: a fresh program, trace and recorder; the row of the table."""
    from tracers.stream_bench import StreamBenchTracer
    from vfstrace.correlate import StreamingCorrelator
    from vfstrace.options import TraceOptions
    from vfstrace.recorder import POLL_MS, Recorder
    from vfstrace.store import TraceWriter
    from vfstrace.correlate.batch import count_verdicts

    triggers = max(1, int(rate * seconds / per_trigger))
    trace = os.path.join(work, f"step-{rate}.vft")
    tracer = StreamBenchTracer(TraceOptions(comm=COMM), per_trigger=per_trigger, dentry_every=dentry_every)
    tracer.load()
    writer = TraceWriter(trace, meta={"tier": tracer.tier, "workload": f"stream bench {rate}/s"})
    verdicts: dict[str, int] = {}
    rec = Recorder(tracer, writer=writer, correlator=StreamingCorrelator(),
                   on_verdicts=lambda v: count_verdicts(verdicts, v))
    c0, w0 = time.process_time(), time.monotonic()
    if profile is not None:
        profile.enable()
    try:
        gen = subprocess.Popen([exe, str(triggers), str(rate / per_trigger), COMM], stdout=subprocess.PIPE, text=True)
        while gen.poll() is None:
            rec.poll(POLL_MS)
        rec.drain()
        rec.finish()
        counters = tracer.counters()
    finally:
        tracer.close()
        writer.close()
        if profile is not None:
            profile.disable()
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    n, gen_s = gen.communicate()[0].split()
    produced = int(counters.get("triggers", 0)) * per_trigger
    kept, lost_rows, bad_ids = trace_rows(trace)
    shutil.rmtree(trace, ignore_errors=True)
    return {
        "offered": rate, "reached": produced / float(gen_s), "produced": produced, "kept": kept,
        "lost": rec.lost_total, "lost_rows": lost_rows, "bad_ids": bad_ids,
        "unaccounted": produced - kept - rec.lost_total, "us_per_event": cpu / max(produced, 1) * 1e6,
        "cpu_s": cpu, "wall_s": wall, "encoder_s": writer.encoder_busy_s, "verdicts": sum(verdicts.values()),
    }


def print_table(rows, per_trigger, seconds):
    print(f"kernel {os.uname().release}   {per_trigger} records per trigger   {seconds:g} s per step   "
          "records: struct vfs_path_event, each a distinct path")
    print(f"{'offered/s':>10} {'reached/s':>10} {'produced':>10} {'kept':>10} {'lost':>9} {'unacct':>7} "
          f"{'µs/event':>9} {'cpu s':>6} {'wall s':>6} {'encoder s':>9} {'verdicts':>9}")
    for r in rows:
        print(f"{r['offered']:>10,} {r['reached']:>10,.0f} {r['produced']:>10,} {r['kept']:>10,} {r['lost']:>9,} "
              f"{r['unaccounted']:>7,} {r['us_per_event']:>9.2f} {r['cpu_s']:>6.2f} {r['wall_s']:>6.2f} "
              f"{r['encoder_s']:>9.2f} {r['verdicts']:>9,}")
        if r["lost"] != r["lost_rows"] or r["bad_ids"]:
            print(f"{'':>10} trace disagrees: LOST rows sum to {r['lost_rows']:,}, {r['bad_ids']:,} event ids out of order")
    held = [r["offered"] for r in rows if r["lost"] == 0 and r["unaccounted"] == 0 and r["produced"]]
    print(f"highest offered rate held with 0 lost: {max(held):,}/s" if held else "no offered rate held with 0 lost")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default=DEFAULT_RATES, help=f"offered events/s, comma-separated (default {DEFAULT_RATES})")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per step (default 3)")
    ap.add_argument("--per-trigger", type=int, default=64, help="records per generator syscall (default 64)")
    ap.add_argument("--dentry-every", type=int, default=0, metavar="N",
                    help="every Nth record a struct vfs_event D_FREE on the other ring (default 0: none)")
    ap.add_argument("--small", action="store_true", help="CI size: 100k and 1M/s, 1 s each")
    ap.add_argument("--profile", metavar="RATE", help="one step at RATE under cProfile; prints where the time went")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/stream.py: needs root (it loads a BPF program)")
    if a.small:
        a.rates, a.seconds = "100k,1M", 1.0
    from vfstrace.errors import VfstraceError

    work = tempfile.mkdtemp(prefix="vfstrace-stream-", dir="/var/tmp")  # 0700
    try:
        exe = build_generator(work)
        if a.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            r = run_step(exe, work, parse_rate(a.profile), a.seconds, a.per_trigger, a.dentry_every, prof)
            print_table([r], a.per_trigger, a.seconds)
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(30)
            return
        rows = [run_step(exe, work, parse_rate(x), a.seconds, a.per_trigger, a.dentry_every) for x in a.rates.split(",")]
    except VfstraceError as e:
        raise SystemExit(f"bench/stream.py: {e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, a.per_trigger, a.seconds)


if __name__ == "__main__":
    main()
