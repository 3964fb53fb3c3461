#!/usr/bin/env python3
"""Widening delays only the workload: a stat() loop in another cgroup keeps its pace.

Two lookup loops (vfstrace/workload/statloop.c, flat out, faccessat like the
selftest's) over the same files run side by side, each in a cgroup of its
own; the widening program targets the FIRST cgroup only. Phases of SECONDS
each, both loops restarted per phase:

  plain      nothing attached
  disarmed   widening program attached, not holding anyone (the probe's
             own cost, paid by every task that looks a name up)
  armed      widening program holding the target cgroup's RCU lookups
  ...        disarmed/armed alternate --rounds times, then plain again
             (drift check)

Printed per mode (fexit, kretprobe; each compiled once): the other
cgroup's lookups/s in every phase and the ratios armed/disarmed (what the
delay itself costs others: 1.0 means untouched), armed/plain (delay and
probe together) and disarmed/plain (the probe alone), with the target's
rates and the delayed lookups.

Needs kprobes, so by default it boots a kernel under qemu and runs itself
there (vfstrace.vm.run); --inside runs it on the current kernel.

    .venv/bin/python bench/widen_isolation.py --kernel 6.12 -d 5
    .venv/bin/python bench/widen_isolation.py --small        # CI size
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _measure(cgs, argv, seconds):
    from vfstrace.workload.statloop import run_in_cgroups

    return [r["stats_per_s"] for r in run_in_cgroups(argv, cgs, seconds)]


def _one_mode(mode, choice, delay_ns, cgs, argv, seconds, rounds):
    from tracers.widen import Widener

    target, other = cgs
    w = Widener(choice, delay_ns, cgroup_id=target.id, mode=mode)
    phases = []

    def phase(name):
        s0 = w.stats().to_dict() if w.bpf is not None else None
        t, o = _measure(cgs, argv, seconds)
        row = {"phase": name, "target": t, "other": o}
        if s0 is not None:
            s1 = w.stats().to_dict()
            row["delayed"] = s1["delayed"] - s0["delayed"]
            row["delay_ns_total"] = s1["delay_ns_total"] - s0["delay_ns_total"]
        phases.append(row)

    phase("plain")
    try:
        w.compile()
        w.attach(arm=False)
        for _ in range(rounds):
            w.arm(False)
            phase("disarmed")
            w.arm(True)
            phase("armed")
        w.arm(False)
    finally:
        how, note = w.how, w.mode_note
        w.close()
    phase("plain")

    def mean(name, who):
        vals = [p[who] for p in phases if p["phase"] == name]
        return statistics.fmean(vals) if vals else 0.0

    def ratio(a, b, who="other"):
        return round(mean(a, who) / mean(b, who), 3) if mean(b, who) else None

    delayed = sum(p.get("delayed", 0) for p in phases if p["phase"] == "armed")
    held = sum(p.get("delay_ns_total", 0) for p in phases if p["phase"] == "armed")
    return {
        "mode": w.mode, "how": how, "note": note,
        "phases": [{**p, "target": round(p["target"]), "other": round(p["other"])} for p in phases],
        "other": {k: round(mean(k, "other")) for k in ("plain", "disarmed", "armed")},
        "target": {k: round(mean(k, "target")) for k in ("plain", "disarmed", "armed")},
        "other_armed_over_disarmed": ratio("armed", "disarmed"),
        "other_armed_over_plain": ratio("armed", "plain"),
        "other_disarmed_over_plain": ratio("disarmed", "plain"),
        "other_plain_spread": round(abs(phases[0]["other"] - phases[-1]["other"]) / max(1, mean("plain", "other")), 3),
        "target_armed_over_disarmed": ratio("armed", "disarmed", "target"),
        # what the attached probe adds to each lookup of a task it does not hold
        "probe_ns_per_lookup": round(1e9 / mean("disarmed", "other") - 1e9 / mean("plain", "other"))
        if mean("disarmed", "other") and mean("plain", "other") else None,
        "delayed": delayed,
        "mean_delay_ns": round(held / delayed) if delayed else 0,
    }


def inside(seconds: float, delay: str, files: int, modes: list[str], rounds: int) -> dict:
    from tracers.widen import WorkloadCgroup, parse_delay
    from vfstrace.workload import statloop
    from vfstrace.kernel.doctor import choose_tier
    from vfstrace.selftest import STAT_OP, _stat_dir

    choice = choose_tier("auto")
    argv, notice = statloop.command(_stat_dir(), files, 0, STAT_OP)
    if notice:
        print(notice, file=sys.stderr)
    out = {"kernel": os.uname().release, "tier": choice.tier, "cpus": os.cpu_count(), "loop": argv[0],
           "delay": delay, "seconds_per_phase": seconds, "rounds": rounds, "modes": []}
    target, other = WorkloadCgroup("vfstrace-bench-target"), WorkloadCgroup("vfstrace-bench-other")
    try:
        for mode in modes:
            if mode == "fentry" and choice.tier != "fentry":
                out["modes"].append({"mode": "fentry", "skipped": f"this kernel's tier is {choice.tier}"})
                continue
            out["modes"].append(_one_mode(mode, choice, parse_delay(delay), (target, other), argv, seconds, rounds))
    finally:
        target.close()
        other.close()
    return out


def show(r) -> None:
    print(f"kernel {r['kernel']} ({r['cpus']} CPUs), widening {r['delay']} on the target cgroup, "
          f"{r['seconds_per_phase']:g} s per phase, {r['rounds']} disarmed/armed rounds")
    for m in r["modes"]:
        if "skipped" in m:
            print(f"  {m['mode']}: not run ({m['skipped']})")
            continue
        print(f"  {m['how']}" + (f" ({m['note']})" if m["note"] else ""))
        print("    phases, lookups/s other | target: " + ", ".join(
            f"{p['phase']} {p['other']:,} | {p['target']:,}" for p in m["phases"]))
        o, t = m["other"], m["target"]
        print(f"    other cgroup : plain {o['plain']:>9,}  disarmed {o['disarmed']:>9,}  armed {o['armed']:>9,}")
        print(f"    target cgroup: plain {t['plain']:>9,}  disarmed {t['disarmed']:>9,}  armed {t['armed']:>9,}")
        print(f"    other ratio armed/disarmed {m['other_armed_over_disarmed']}  (the delay's cost to others)")
        print(f"    other ratio armed/plain    {m['other_armed_over_plain']}  (delay and probe together)")
        print(f"    other ratio disarmed/plain {m['other_disarmed_over_plain']}  (the probe alone: "
              f"{m['probe_ns_per_lookup']} ns per lookup; plain-to-plain spread {m['other_plain_spread']})")
        print(f"    target ratio armed/disarmed {m['target_armed_over_disarmed']}; delayed lookups "
              f"{m['delayed']:,} (mean {m['mean_delay_ns'] / 1000:.0f} us)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", default="6.12", help="VM kernel (5.10, 6.1, 6.12, or all)")
    ap.add_argument("-d", "--seconds", type=float, default=5.0, help="seconds per phase")
    ap.add_argument("--rounds", type=int, default=2, help="disarmed/armed pairs per mode")
    ap.add_argument("--modes", default="fentry,kprobe", help="comma list of fentry (fexit), kprobe (kretprobe)")
    ap.add_argument("--widen", default="200us")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--small", action="store_true", help="CI size (3 s per phase, 1 round)")
    ap.add_argument("--inside", action="store_true", help="run on this kernel, not in a VM")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    a = ap.parse_args()
    if a.small:
        a.seconds, a.rounds = 3.0, 1
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not modes or any(m not in ("fentry", "kprobe") for m in modes):
        ap.error("--modes: a comma list of fentry, kprobe")
    if a.inside:
        print(json.dumps(inside(a.seconds, a.widen, a.files, modes, a.rounds)), flush=True)
        return 0
    from vfstrace import vm
    from vfstrace.workload import statloop

    statloop.build()  # on the host: the guest sees the same cache read-only
    argv = [str(ROOT / ".venv/bin/python"), str(ROOT / "bench/widen_isolation.py"), "--inside",
            "-d", str(a.seconds), "--rounds", str(a.rounds), "--modes", ",".join(modes),
            "--widen", a.widen, "--files", str(a.files)]
    rc = 0
    for kernel in (vm.SERIES if a.kernel == "all" else [a.kernel]):
        res = vm.run(kernel, argv, timeout=1800, cwd=str(ROOT))
        if res.returncode != 0:
            sys.stderr.write(f"{kernel}: guest exited {res.returncode}\n{res.stderr[-3000:]}")
            rc = rc or res.returncode
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(json.dumps(r)) if a.json else show(r)
    return rc


if __name__ == "__main__":
    sys.exit(main())
