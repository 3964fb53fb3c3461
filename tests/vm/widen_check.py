"""Runs inside a vfstrace guest: what the widening program did, next to what was done.

For each MODE (fentry: fexit program; kprobe: kretprobe) one Widener on the
RCU dcache lookup targets cgroup A. Two lookup loops (vfstrace/workload/statloop.c,
flat out) run side by side, one in A and one in cgroup B, for SECONDS
disarmed, then SECONDS armed. Printed as one JSON line per mode: the loops'
own call counts and rates, the program's counters per phase, and what is
left after close() (kprobes still registered, BPF programs still loaded,
cgroups still there). Then, unless --no-stress, `vfstrace stress --widen`
runs for STRESS seconds and its JSON result and the leftovers follow.

The host-side test (tests/test_widen_vm.py) makes the assertions.

usage: widen_check.py [--modes fentry,kprobe] [-d SECONDS] [--stress SECONDS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DELAY = "200us"


def _phase(w, cgs, argv, seconds):
    from vfstrace.workload.statloop import run_in_cgroups

    s0 = w.stats().to_dict()
    loops = run_in_cgroups(argv, cgs, seconds)
    s1 = w.stats().to_dict()
    delta = {k: s1[k] - s0[k] for k in ("target_lookups", "delayed", "delay_ns_total", "capped", "no_dentry", "unarmed")}
    return {"target_loop": loops[0], "other_loop": loops[1], "widen": delta}


def leftovers() -> dict:
    """What a widening run must not leave behind."""
    out = {"kprobes": [], "progs": [], "cgroups": []}
    kl = Path("/sys/kernel/debug/kprobes/list")
    if not kl.exists():
        subprocess.run(["mount", "-t", "debugfs", "none", "/sys/kernel/debug"], capture_output=True)
    try:
        out["kprobes"] = [ln for ln in kl.read_text().splitlines() if "__d_lookup_rcu" in ln or "lookup_fast" in ln]
    except OSError as e:
        out["kprobes_error"] = str(e)
    for _ in range(20):  # a closed program is freed after an RCU grace period
        r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
        try:
            progs = json.loads(r.stdout or "[]")
        except ValueError:
            out["progs_error"] = (r.stderr or r.stdout)[:300]
            break
        out["progs"] = [p.get("name", "") for p in progs
                        if str(p.get("name", "")).startswith(("widen_ret", "kretfunc__"))]
        if not out["progs"]:
            break
        time.sleep(0.1)
    for root in Path("/sys/fs/cgroup").rglob("vfstrace-*"):
        out["cgroups"].append(str(root))
    return out


def one_mode(mode: str, seconds: float) -> dict:
    from tracers.widen import Widener, WorkloadCgroup, parse_delay
    from vfstrace.workload import statloop
    from vfstrace.kernel.doctor import choose_tier
    from vfstrace.selftest import STAT_OP, _stat_dir

    choice = choose_tier("auto")
    argv, notice = statloop.command(_stat_dir(), 8, 0, STAT_OP)
    assert not notice, notice
    a, b = WorkloadCgroup("vfstrace-check-a"), WorkloadCgroup("vfstrace-check-b")
    res = {"mode_requested": mode, "tier": choice.tier}
    try:
        w = Widener(choice, parse_delay(DELAY), cgroup_id=a.id, mode=mode)
        res.update(mode=w.mode, how=w.how, note=w.mode_note)
        try:
            w.compile()
            w.attach(arm=False)
            res["disarmed"] = _phase(w, (a, b), argv, seconds)
            w.arm(True)
            res["armed"] = _phase(w, (a, b), argv, seconds)
        finally:
            w.close()
    finally:
        a.close()
        b.close()
    res["after"] = leftovers()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="fentry,kprobe")
    ap.add_argument("-d", "--seconds", type=float, default=3.0)
    ap.add_argument("--stress", type=float, default=10.0, help="seconds of `vfstrace stress --widen`; 0: none")
    a = ap.parse_args()
    for mode in a.modes.split(","):
        print(json.dumps({"check": "mode", **one_mode(mode, a.seconds)}), flush=True)
    if a.stress > 0:
        r = subprocess.run([sys.executable, "-m", "vfstrace.cli", "stress", "--widen", DELAY, "-d", str(a.stress),
                            "--files", "40", "--depth", "1", "--json"], capture_output=True, text=True)
        out = {"check": "stress", "returncode": r.returncode, "stderr_tail": r.stderr[-1500:]}
        try:
            out["result"] = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            out["stdout_tail"] = r.stdout[-1500:]
        out["after"] = leftovers()
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
