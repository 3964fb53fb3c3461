#!/usr/bin/env python3
"""The detector measured against a real kernel's ground truth: 6.1-prepatch vs 6.1-control.

6.1-prepatch (`vfstrace vm build`) has the 2011 race put back and logs each
spurious ENOENT it returns (task, dentry, CLOCK_MONOTONIC time, name), apart
from anything vfstrace's tracers read. This boots it and 6.1-control (same
source and config, unmodified) and, per tier (fentry, kprobe, tracepoint),
runs `vfstrace watch -o TRACE -d N -- vfstrace stress --widen DELAY` in one
boot per kernel (tests/vm/prepatch_check.py inside). Each suspect verdict
(`race` on fentry/kprobe, `transient` on tracepoint) is matched one to one
to a ground-truth event by task, dentry (name on tracepoint) and time.

Printed per kernel and tier: `precision P recall R` with the counts behind
them (matched / suspects, matched / ground truth), on fentry/kprobe also
with step_into's walk returns (an open()'s last component) left out, side
by side; the time from the start
of tracing to the first suspect and to the first spurious ENOENT, how many
suspects cite a prune event of their own dentry, and cp's ENOENT errors.
On the control every suspect is a false one (it has no such bug).

    .venv/bin/python bench/eval_kernel.py              # 45 s per tier
    .venv/bin/python bench/eval_kernel.py --small      # CI size: 20 s, the fentry tier only
    .venv/bin/python bench/eval_kernel.py --kernel 6.1-prepatch --tiers kprobe -d 60
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KERNELS = ["6.1-prepatch", "6.1-control"]
TIERS = ["fentry", "kprobe", "tracepoint"]


def _boot(kernel: str, tiers: list[str], seconds: float, widen: str, share: str | None) -> dict:
    from vfstrace import vm

    out = ROOT / ".cache" / "bench-eval-kernel" / kernel
    # A fresh directory each run: an earlier run's summary or traces must
    # never stand in for this one's.
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    argv = [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "tests" / "vm" / "prepatch_check.py"), "/vmout",
            "--tiers", ",".join(tiers), "--seconds", str(seconds), "--widen", widen]
    if share:
        argv += ["--widen-share", share]
    res = vm.run(kernel, argv, timeout=len(tiers) * (seconds + 400) + 300, out_dir=out, cwd=str(ROOT))
    try:
        s = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        raise SystemExit(f"eval_kernel: {kernel}: guest wrote no summary (exit {res.returncode}): "
                         f"{res.stderr[-1500:]}")
    s["boot_seconds"] = res.duration_s
    return s


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def line(kernel: str, tier: str, r: dict) -> str:
    if "judge_error" in r or "suspects" not in r:
        return f"{kernel:13} {tier:10} no result: {r.get('judge_error') or r.get('stderr_tail', '')[-300:]}"
    st = r.get("stress") or {}
    s, t, m = r["suspects"], r["truth"], r["matched"]
    first = f"{r['first_suspect_s']} s" if r["first_suspect_s"] is not None else "-"
    first_t = f"{r['first_truth_s']} s" if r["first_truth_s"] is not None else "-"
    head = f"{kernel:13} {tier:10} "
    if kernel.endswith("control"):
        return (head + f"false {r['suspect']} {s}; ground truth: none (unmodified kernel); "
                f"cp ENOENT {st.get('cp_enoent')} in {st.get('copy_rounds')} rounds; verdicts {r['verdicts']}; "
                f"lost {r['lost']}")
    return (head + f"precision {_ratio(m, s)} recall {_ratio(m, t)} "
            f"({m} matched / {s} {r['suspect']} / {t} spurious ENOENT logged, kernel count {r.get('truth_count')}); "
            f"first {r['suspect']} {first}, first spurious ENOENT {first_t}; "
            f"{r['suspects_citing_prune']}/{s} cite their prune; "
            f"cp ENOENT {st.get('cp_enoent')} in {st.get('copy_rounds')} rounds; lost {r['lost']}"
            + _step_part(r, m, s, t))


def _step_part(r: dict, m: int, s: int, t: int) -> str:
    """Side by side: the same trace judged with and without step_into's walk returns (the open() site)."""
    wo = r.get("without_step_site")
    if wo is None:
        return ""
    return (f"\n{'':24}walk_component site only: precision {_ratio(wo['matched'], wo['suspects'])} "
            f"recall {_ratio(wo['matched'], t)} ({wo['matched']} / {wo['suspects']} / {t})"
            f"\n{'':24}with the step_into site:  precision {_ratio(m, s)} recall {_ratio(m, t)} ({m} / {s} / {t}); "
            f"{r.get('matched_at_step_site')} matched at that site (of {r.get('suspects_at_step_site')} "
            f"{r['suspect']} there, {r.get('step_walk_returns')} step_into returns in the trace)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", choices=[*KERNELS, "all"], default="all")
    ap.add_argument("--tiers", default=None,
                    help="comma-separated, from fentry,kprobe,tracepoint (default: all; --small: fentry, the tier "
                         "watch picks on 6.1)")
    ap.add_argument("-d", "--seconds", type=float, default=45.0, help="stress duration per tier")
    ap.add_argument("--widen", default="200us")
    ap.add_argument("--widen-share", default=None, help="stress --widen-share (default: stress's own)")
    ap.add_argument("--small", action="store_true", help="CI size: 20 s per tier, fentry only unless --tiers")
    ap.add_argument("--json", action="store_true", help="print the guests' summaries as JSON too")
    a = ap.parse_args(argv)
    tiers = [t for t in (a.tiers or ("fentry" if a.small else ",".join(TIERS))).split(",") if t]
    bad = [t for t in tiers if t not in TIERS]
    if bad:
        ap.error(f"unknown tier(s) {', '.join(bad)}")
    seconds = 20.0 if a.small else a.seconds
    from vfstrace import vm

    kernels = KERNELS if a.kernel == "all" else [a.kernel]
    for k in kernels:
        ok, why = vm.can_boot(k)
        if not ok:
            print(f"eval_kernel: cannot boot {k}: {why}", file=sys.stderr)
            return 2
    results = {}
    print(f"== eval_kernel: stress --widen {a.widen}, {seconds:g} s per tier", flush=True)
    for k in kernels:
        # Each kernel's lines as soon as its guest is done: a run cut short
        # (CI's time budget) still shows the kernels it finished.
        results[k] = s = _boot(k, tiers, seconds, a.widen, a.widen_share)
        print(f"-- {k} ({s['kernel_release']}), boot + {len(tiers)} runs {s['boot_seconds']:.0f} s")
        for t in tiers:
            print(line(k, t, s["runs"].get(t, {})))
        sys.stdout.flush()
    if a.json:
        print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
