#!/usr/bin/env python3
"""Widening delays only the workload: a stat() loop in another cgroup keeps its pace.

Two lookup loops (vfstrace/statloop.c, flat out, faccessat like the
selftest's) over the same files run side by side, each in a cgroup of its
own. For SECONDS the rates are measured with nothing attached, then for
SECONDS with tracers/widen.py holding the RCU lookups of the FIRST cgroup
only. Printed: stats/s of both loops in both phases, the other cgroup's
ratio (widened / plain: 1.0 means untouched) and the delayed lookups.

Needs kprobes, so by default it boots a kernel under qemu and runs itself
there (vfstrace.vm.run); --inside runs it on the current kernel.

    .venv/bin/python bench/widen_isolation.py --kernel 6.12 -d 10
    .venv/bin/python bench/widen_isolation.py --small        # CI size: -d 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

def _loop(cg, argv):
    """One lookup loop (vfstrace/statloop.c, flat out) moved into ``cg``."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    cg.add(p.pid)
    assert p.stdout.readline().strip() == "ready"
    return p


def _measure(cgs, argv, seconds):
    procs = [_loop(cg, argv) for cg in cgs]
    time.sleep(seconds)
    for p in procs:
        p.terminate()
    # each loop reports its own count and running time
    return [json.loads(p.communicate()[0].strip().splitlines()[-1])["stats_per_s"] for p in procs]


def inside(seconds: float, delay: str, files: int) -> dict:
    from tracers.widen import Widener, WorkloadCgroup, parse_delay
    from vfstrace import statloop
    from vfstrace.doctor import choose_tier
    from vfstrace.selftest import STAT_OP, _stat_dir

    choice = choose_tier("auto")
    argv, notice = statloop.command(_stat_dir(), files, 0, STAT_OP)
    if notice:
        print(notice, file=sys.stderr)
    target, other = WorkloadCgroup("vfstrace-bench-target"), WorkloadCgroup("vfstrace-bench-other")
    try:
        plain = _measure([target, other], argv, seconds)
        w = Widener(choice, parse_delay(delay), cgroup_id=target.id)
        w.compile()
        w.attach()
        try:
            widened = _measure([target, other], argv, seconds)
            st = w.stats().to_dict()
        finally:
            w.close()
    finally:
        target.close()
        other.close()
    return {
        "kernel": os.uname().release,
        "loop": argv[0],
        "delay": delay,
        "seconds_per_phase": seconds,
        "target_stats_per_s": {"plain": round(plain[0]), "widened": round(widened[0])},
        "other_stats_per_s": {"plain": round(plain[1]), "widened": round(widened[1])},
        "other_ratio": round(widened[1] / plain[1], 3) if plain[1] else None,
        "target_ratio": round(widened[0] / plain[0], 3) if plain[0] else None,
        "widen": st,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", default="6.12", help="VM kernel (5.10, 6.1, 6.12)")
    ap.add_argument("-d", "--seconds", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--widen", default="200us")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--small", action="store_true", help="CI size (3 s per phase)")
    ap.add_argument("--inside", action="store_true", help="run on this kernel, not in a VM")
    a = ap.parse_args()
    if a.small:
        a.seconds = 3.0
    if a.inside:
        print(json.dumps(inside(a.seconds, a.widen, a.files)), flush=True)
        return 0
    from vfstrace import vm

    argv = [str(ROOT / ".venv/bin/python"), str(ROOT / "bench/widen_isolation.py"), "--inside",
            "-d", str(a.seconds), "--widen", a.widen, "--files", str(a.files)]
    res = vm.run(a.kernel, argv, timeout=900, cwd=str(ROOT))
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-3000:])
        return res.returncode
    r = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"kernel {r['kernel']}, widening {r['delay']} on the target cgroup, {r['seconds_per_phase']:g} s per phase")
    print(f"  other cgroup lookups/s : plain {r['other_stats_per_s']['plain']:>8,}  widened {r['other_stats_per_s']['widened']:>8,}"
          f"  ratio {r['other_ratio']}")
    print(f"  target cgroup lookups/s: plain {r['target_stats_per_s']['plain']:>8,}  widened {r['target_stats_per_s']['widened']:>8,}"
          f"  ratio {r['target_ratio']}")
    print(f"  delayed lookups {r['widen']['delayed']:,} (mean {r['widen']['mean_delay_ns'] / 1000:.0f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
