"""Runs inside a vfstrace guest: every failed walk reported, whoever holds the task slots.

bpf/kprobe.c keeps a walk's state in task_walks[tid & (VFS_TASK_SLOTS - 1)];
a walk whose slot another task's walk holds keeps its state in the `walks`
hash instead. With one slot (options.extra task_slots=1) every task shares
it, so parallel stat() loops on two CPUs drive walks through the claim, the
read-back and the fallback all the time. Each loop stat()s a name that does
not exist N times: each call is one walk_component returning -ENOENT, so a
tier that loses no walk state reports exactly N failed walks per loop.

For each configuration (fentry with one slot, kprobe with one slot, and the
default slots), the tier is loaded, the loops run under it, and the failed
walks of the loops' comms are counted from the records drained, with the
lost count and the kernel counters, into OUT/slots.json; the host-side test
(tests/test_kprobe_vm.py) makes the assertions.

usage: slots_check.py OUT [--calls N] [--loops K]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def one(choice, slots, calls: int, loops: int, gen, absent: str) -> dict:
    from tracers import make_tracer
    from vfstrace.events import ENOENT, Kind
    from vfstrace.options import TraceOptions
    from vfstrace.recorder import Recorder

    extra = {} if slots is None else {"task_slots": slots}
    tr = make_tracer(choice, TraceOptions(extra=extra))
    tr.load()
    rec = Recorder(tr)
    comms = [f"vt-slot{i}" for i in range(loops)]
    got = {c: 0 for c in comms}
    stop = threading.Event()

    def take(frames):
        for df in frames:
            w = df[(df["kind"] == int(Kind.WALK_RETURN)) & (df["ret"] == ENOENT) & df["comm"].isin(comms)]
            for c, n in w.groupby("comm")["count"].sum().items():
                got[c] += int(n)

    def drain():
        while not stop.is_set():
            take([rec.poll(50)])

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        procs = [gen.start(absent, calls, comm=c) for c in comms]
        fails = [gen.result(p)["fails"] for p in procs]
    finally:
        stop.set()
        t.join()
        take(rec.drain())
        counters = tr.counters()
        tr.close()
    return {"tier": choice.tier, "slots": slots, "calls": calls, "fails": fails, "enoent_walks": got,
            "lost": rec.lost_total, "counters": counters}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--loops", type=int, default=4)
    a = ap.parse_args()
    from _statgen import StatGen
    from vfstrace.kernel.doctor import choose_tier

    work = Path("/tmp/vt-slots")
    work.mkdir(mode=0o700, exist_ok=True)
    absent = str(work / "absent")
    gen = StatGen()
    kchoice = choose_tier("kprobe")
    configs = [(kchoice, 1)]
    if kchoice.kfunc:
        fchoice = choose_tier("fentry")
        configs = [(fchoice, 1), (kchoice, 1), (fchoice, None)]
    else:
        configs.append((kchoice, None))
    runs = []
    try:
        for choice, slots in configs:
            try:
                runs.append(one(choice, slots, a.calls, a.loops, gen, absent))
            except Exception as e:  # reported, the host-side test fails on it
                runs.append({"tier": choice.tier, "slots": slots, "error": f"{type(e).__name__}: {e}"})
            print(json.dumps(runs[-1]), flush=True)
    finally:
        gen.close()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "slots.json").write_text(json.dumps({"runs": runs}, indent=1))


if __name__ == "__main__":
    main()
