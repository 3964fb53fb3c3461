#!/usr/bin/env python3
"""The detector measured against real kernels' ground truth: each line's prepatch build vs its control.

<line>-prepatch (`vfstrace vm build`; lines 6.1, 6.12, 5.10) has the 2011
race put back and logs each spurious ENOENT it returns (task, dentry,
CLOCK_MONOTONIC time, name), apart from anything vfstrace's tracers read.
This boots it and <line>-control (same source and config, unmodified) and,
per tier (fentry, kprobe, tracepoint),
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
On the control every suspect is a false one (it has no such bug). Last, a
table of precision and recall per kernel line and tier, with each line's
control's false suspects beside them.

    .venv/bin/python bench/eval_kernel.py              # every line built, 45 s per tier
    .venv/bin/python bench/eval_kernel.py --small      # CI size: the 6.1 line, 20 s, the fentry tier only
    .venv/bin/python bench/eval_kernel.py --lines 6.12,5.10 --tiers kprobe,fentry
    .venv/bin/python bench/eval_kernel.py --kernel 6.12-prepatch --tiers kprobe -d 60
    .venv/bin/python bench/eval_kernel.py --kernel 6.1-control --tiers tracepoint --churn   # false transients
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vfstrace.vm.build import BUILT, LINES  # noqa: E402 (after the path set-up)

# per line, the prepatch kernel then its control
KERNELS = [f"{ln}-{kind}" for ln in LINES for kind in ("prepatch", "control")]
assert set(KERNELS) == set(BUILT)
TIERS = ["fentry", "kprobe", "tracepoint"]


def guest_argv(tiers: list[str], seconds: float, widen: str, share: str | None, churn: bool = False) -> list[str]:
    """tests/vm/prepatch_check.py as the guest runs it; ``churn``: its stress runs with --churn."""
    argv = [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "tests" / "vm" / "prepatch_check.py"), "/vmout",
            "--tiers", ",".join(tiers), "--seconds", str(seconds), "--widen", widen]
    if share:
        argv += ["--widen-share", share]
    if churn:
        argv.append("--churn")
    return argv


def _boot(kernel: str, tiers: list[str], seconds: float, widen: str, share: str | None, churn: bool = False) -> dict:
    from vfstrace import vm

    out = ROOT / ".cache" / "bench-eval-kernel" / kernel
    # A fresh directory each run: an earlier run's summary or traces must
    # never stand in for this one's.
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    argv = guest_argv(tiers, seconds, widen, share, churn)
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
        # No spurious ENOENT on an unmodified kernel: every suspect is a false one (under --churn, a real
        # ENOENT a real unlink or rename explains, judged `transient`), so precision is 0 wherever there is one.
        return (head + f"precision {_ratio(m, s)} recall {_ratio(m, t)} ({m} matched / {s} {r['suspect']} / {t} "
                f"spurious ENOENT logged{', stress --churn' if r.get('churn') else ''}); "
                f"false {r['suspect']} {s}; ground truth: none (unmodified kernel); "
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


def table(results: dict, tiers: list[str]) -> list[str]:
    """Precision and recall per kernel line and tier, each line's control's false suspects beside them."""
    out = [f"{'line':6} {'tier':10} {'precision':>9} {'recall':>6}  matched/suspects/truth  control: false suspects"]
    for ln in LINES:
        pre, ctl = results.get(f"{ln}-prepatch"), results.get(f"{ln}-control")
        if pre is None and ctl is None:
            continue
        for t in tiers:
            r = (pre or {}).get("runs", {}).get(t) or {}
            c = (ctl or {}).get("runs", {}).get(t) or {}
            if "suspects" in r:
                m, s, n = r["matched"], r["suspects"], r["truth"]
                head = f"{ln:6} {t:10} {_ratio(m, s):>9} {_ratio(m, n):>6}  {f'{m}/{s}/{n}':22}"
            else:
                head = f"{ln:6} {t:10} {'-':>9} {'-':>6}  {'(no prepatch run)':22}"
            false = f"{c['suspects']} {c['suspect']}" if "suspects" in c else "(no control run)"
            out.append(f"{head}  {false}")
    return out


def _kernels(kernel: str | None, lines: str | None, small: bool) -> tuple[list[str], bool]:
    """The kernels to boot, and whether they were asked for by name (else unbuilt ones are skipped)."""
    if kernel:
        return [kernel], True
    if lines:
        want = [x.strip() for x in lines.split(",") if x.strip()]
        bad = [x for x in want if x not in LINES]
        if bad:
            raise SystemExit(f"eval_kernel: unknown line(s) {', '.join(bad)}: the lines are {', '.join(LINES)}")
        return [k for k in KERNELS if k.rsplit("-", 1)[0] in want], True
    # CI's size keeps CI's one line; a full run measures every line that is built
    return ([k for k in KERNELS if k.startswith("6.1-")], True) if small else (list(KERNELS), False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", choices=KERNELS, default=None, help="one kernel (default: both of each line)")
    ap.add_argument("--lines", default=None,
                    help=f"comma-separated kernel lines, from {','.join(LINES)} (default: every line built; "
                         "--small: 6.1)")
    ap.add_argument("--tiers", default=None,
                    help="comma-separated, from fentry,kprobe,tracepoint (default: all; --small: fentry, the tier "
                         "watch picks on 6.1)")
    ap.add_argument("-d", "--seconds", type=float, default=45.0, help="stress duration per tier")
    ap.add_argument("--widen", default="200us")
    ap.add_argument("--widen-share", default=None, help="stress --widen-share (default: stress's own)")
    ap.add_argument("--churn", action="store_true",
                    help="stress --churn in every run: real ENOENTs a real unlink or rename explains (on a control "
                         "kernel, each `transient` is then a false one, its precision printed)")
    ap.add_argument("--small", action="store_true", help="CI size: 20 s per tier, fentry only unless --tiers")
    ap.add_argument("--json", action="store_true", help="print the guests' summaries as JSON too")
    a = ap.parse_args(argv)
    tiers = [t for t in (a.tiers or ("fentry" if a.small else ",".join(TIERS))).split(",") if t]
    bad = [t for t in tiers if t not in TIERS]
    if bad:
        ap.error(f"unknown tier(s) {', '.join(bad)}")
    seconds = 20.0 if a.small else a.seconds
    from vfstrace import vm

    kernels, named = _kernels(a.kernel, a.lines, a.small)
    for k in list(kernels):
        ok, why = vm.can_boot(k)
        if not ok and named:
            print(f"eval_kernel: cannot boot {k}: {why}", file=sys.stderr)
            return 2
        if not ok:
            print(f"eval_kernel: {k} skipped: {why}", flush=True)
            kernels.remove(k)
    if not kernels:
        print("eval_kernel: no kernel to boot: run `vfstrace vm build --kernel all`", file=sys.stderr)
        return 2
    results = {}
    print(f"== eval_kernel: stress --widen {a.widen}{' --churn' if a.churn else ''}, {seconds:g} s per tier", flush=True)
    for k in kernels:
        # Each kernel's lines as soon as its guest is done: a run cut short
        # (CI's time budget) still shows the kernels it finished.
        results[k] = s = _boot(k, tiers, seconds, a.widen, a.widen_share, a.churn)
        print(f"-- {k} ({s['kernel_release']}), boot + {len(tiers)} runs {s['boot_seconds']:.0f} s")
        for t in tiers:
            print(line(k, t, s["runs"].get(t, {})))
        sys.stdout.flush()
    print("== eval_kernel: precision and recall per kernel line and tier")
    for row in table(results, tiers):
        print(row)
    if a.json:
        print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
