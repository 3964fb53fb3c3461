"""The 2011 race on real kernels: each line's prepatch build has it, its control does not.

On each kernel line (6.1; 6.12 and 5.10 too when VFSTRACE_VM_KERNEL_LINES
names it, as `make test-kernels` does) both kernels are built by `vfstrace
vm build` from Debian's linux-source-<line> with the same config; the
prepatch one reverts the seed fix (in step_into() on 6.1 and 6.12, in
lookup_fast() on 5.10) and logs each spurious ENOENT it causes (its ground
truth). One boot per kernel (TCG is slow) runs tests/vm/prepatch_check.py: `vfstrace watch
--tier kprobe -o TRACE` around `vfstrace stress --widen 200us` (on the
prepatch kernel then again with --tier fentry, whose programs read their
arguments through BTF and tell a live dentry by a typed load), then
`vfstrace selftest --kernel-only`. The tests assert on its summary:

* prepatch: cp fails with "No such file or directory" on files that exist,
  the kernel counts spurious ENOENTs, at least one `race` verdict matches a
  ground-truth event by (task, dentry, time), every `race` cites a prune
  event of its own dentry, those on an open()'s last component
  (open_last_lookups; the stress's compiled loop open()s its names every
  other pass, so they are not left to cp's opens alone) are matched at the
  step_into site, and selftest says FAIL (exit 1);
* control: no cp error, no `race`, selftest PASS (exit 0).
"""

from __future__ import annotations

import json
import shutil
import os

import pytest

import guests
import readme
from conftest import ROOT, is_root, need

SECONDS = float(os.environ.get("VFSTRACE_VM_PREPATCH_SECONDS", "60"))
SELFTEST_SECONDS = float(os.environ.get("VFSTRACE_VM_PREPATCH_SELFTEST_SECONDS", "20"))


def _lines() -> tuple[str, ...]:
    """The kernel lines this session checks: VFSTRACE_VM_KERNEL_LINES, a comma list (default, and CI: 6.1;
    `make test-kernels`: all three). A line is two boots of about 25 guest-minutes together under TCG,
    more than CI's time leaves for a second line."""
    from vfstrace.vm.build import LINES

    lines = tuple(x.strip() for x in os.environ.get("VFSTRACE_VM_KERNEL_LINES", "6.1").split(",") if x.strip())
    bad = [x for x in lines if x not in LINES]
    if bad:
        raise pytest.UsageError(f"VFSTRACE_VM_KERNEL_LINES names {', '.join(bad)}: the lines are {', '.join(LINES)}")
    return lines


LINES = _lines()
# The kprobe tier on every kernel; the fentry tier too where the race is
# (the control kernel's no-race check is the kprobe tier's: each tier run
# is minutes under TCG). Only the kernels of the lines this session checks.
TIERS = {k: t for k, t in {
    "6.1-prepatch": ("kprobe", "fentry"), "6.1-control": ("kprobe",),
    "6.12-prepatch": ("kprobe", "fentry"), "6.12-control": ("kprobe",),
    "5.10-prepatch": ("kprobe", "fentry"), "5.10-control": ("kprobe",),
}.items() if k.rsplit("-", 1)[0] in LINES}


# Estimated guest seconds, for the order tests/guests.py starts boots in; the
# first of a line also builds its tree in full (the other's build is then
# incremental: the patch applied or reversed, what it touches rebuilt).
BOOT_ESTIMATE_S = {"6.1-prepatch": 1850, "6.1-control": 950, "6.12-prepatch": 1850, "6.12-control": 950,
                   "5.10-prepatch": 2000, "5.10-control": 1100}
PREPATCH = [k for k in TIERS if k.endswith("-prepatch")]
CONTROL = [k for k in TIERS if k.endswith("-control")]


def guest_boots(items) -> list:
    """The boots this session's tests of this module read (conftest starts them): each test names its kernel."""
    kernels = {it.callspec.params["kernel"] for it in items
               if hasattr(it, "callspec") and "kernel" in it.callspec.params}
    return [(BOOT_ESTIMATE_S[k], *_job(k)) for k in sorted(kernels & set(TIERS))]


def _job(kernel: str) -> tuple:
    """The pool's key for ``kernel``'s boot, and the boot."""
    return ("prepatch-vm", kernel), lambda: _boot_now(kernel)


def _boot(kernel: str) -> dict:
    """``kernel``'s one boot, shared by all tests of this module; its summary."""
    return guests.result(*_job(kernel))


def _build(kernel: str) -> None:
    """Build ``kernel`` unless the VM cache has it (then this takes seconds).

    Here rather than before the session, so that the build, which only
    these boots need, runs beside the first guests instead of before all.
    """
    from vfstrace.errors import MissingDependency
    from vfstrace.vm import build

    try:
        build.build(kernel)
    except MissingDependency as e:
        need(False, str(e))
    except build.BuildError as e:
        pytest.fail(f"{kernel}: {e}")


def _boot_now(kernel: str) -> dict:
    from vfstrace import vm
    from vfstrace.workload import statloop

    need(is_root(), "booting guests with the host root shared needs root")
    _build(kernel)
    ok, why = vm.can_boot(kernel)
    need(ok, why)
    statloop.build()  # the selftest's compiled lookup loop, built on the host (the guest's root is read-only)
    out = ROOT / ".cache" / "vm-tests" / kernel
    # A fresh directory each run: an earlier run's summary must never stand in
    # for this one's, and its traces would make `record -o` refuse to start.
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    script = ROOT / "tests" / "vm" / "prepatch_check.py"
    py = str(ROOT / ".venv" / "bin" / "python")
    tiers = TIERS[kernel]
    # The README's examples for this kernel run in this boot too, after the checks (tests/test_readme.py).
    examples = [e.to_dict() for e in readme.for_kernel(kernel)]
    (out / "readme-commands.json").write_text(json.dumps(examples))
    readme_s = sum(2 * readme.seconds(e["argv"]) + 400 for e in examples)
    res = vm.run(kernel, [py, str(script), "/vmout", "--tiers", ",".join(tiers), "--seconds", str(SECONDS),
                          "--selftest-seconds", str(SELFTEST_SECONDS), "--readme", "/vmout/readme-commands.json"],
                 timeout=guests.timeout(len(tiers) * (SECONDS + 400) + 2 * SELFTEST_SECONDS + 500 + readme_s),
                 out_dir=out, cwd=str(ROOT))
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        pytest.fail(f"{kernel}: guest wrote no summary (exit {res.returncode}); stderr: {res.stderr[-3000:]}")
    summary["boot_seconds"] = res.duration_s
    k = summary["runs"]["kprobe"]
    st = k.get("stress") or {}
    sel = (summary.get("selftest") or {}).get("result") or {}
    print(f"{kernel} ({summary['kernel_release']}): cp ENOENT {st.get('cp_enoent')}, {st.get('files_copied')} files "
          f"copied in {st.get('copy_rounds')} full rounds, spurious ENOENT (kernel) {k.get('truth_count')}, race {k.get('suspects')} "
          f"(matched {k.get('matched')}{_scores(k)}), verdicts {k.get('verdicts')}, selftest {sel.get('verdict')}; "
          f"boot+run {res.duration_s:.0f} s")
    for t in tiers[1:]:
        r = summary["runs"].get(t) or {}
        print(f"{kernel} {t}: spurious ENOENT (kernel) {r.get('truth_count')}, race {r.get('suspects')} "
              f"(matched {r.get('matched')}{_scores(r)}), verdicts {r.get('verdicts')}")
    return summary


def _scores(r: dict) -> str:
    """", precision P, recall R" of a tier run against the ground truth, and the returns its kretprobes lost
    where the kernel says (named kprobe_events: tracers/kprobe_events.py kretprobe_maxactive)."""
    out = ""
    if r.get("suspects"):
        out += f", precision {r['matched'] / r['suspects']:.2f}"
    if r.get("truth"):
        out += f", recall {r['matched'] / r['truth']:.2f}"
    if r.get("kretprobe_missed") is not None:
        out += f", kretprobe returns missed {r['kretprobe_missed']}"
    return out


def readme_results(kernel: str) -> list[dict]:
    """What the README's examples for ``kernel`` did in its boot (tests/test_readme.py asserts on them)."""
    return _boot(kernel).get("readme") or []


def _kprobe(kernel, tier: str = "kprobe"):
    r = _boot(kernel)["runs"][tier]
    assert "judge_error" not in r, r["judge_error"]
    assert r["returncode"] == 0, r["stderr_tail"]
    return r


@pytest.mark.vm
@pytest.mark.parametrize("kernel", PREPATCH)
def test_prepatch_cp_fails_on_existing_files_and_the_kernel_counts_it(kernel):
    r = _kprobe(kernel)
    st = r["stress"]
    assert st["files_copied"] > 0, "cp copied nothing: widening stalls it"
    assert st["cp_enoent"] > 0, f"no cp ENOENT ({st['files_copied']} files copied, {st['copy_rounds']} rounds)"
    # the paths cp named exist in the source tree (they vanished only for a lookup)
    assert all("/src/" in p or "/copy" in p for p in st["cp_enoent_paths"])
    assert r["truth_count"] > 0 and r["truth_logged"] > 0


@pytest.mark.vm
@pytest.mark.parametrize("kernel,tier", [(k, t) for k in PREPATCH for t in TIERS[k]])
def test_prepatch_races_match_the_kernels_ground_truth_and_cite_their_prune(kernel, tier):
    r = _kprobe(kernel, tier)
    assert r["suspects"] >= 1, f"no race verdict; verdicts {r['verdicts']}, kernel count {r['truth_count']}"
    assert r["matched"] >= 1, f"no race matched the ground truth: {r['false_suspects'][:3]}"
    assert r["suspects_citing_prune"] == r["suspects"], [x for x in r["suspect_rows"] if not x["cites_prune"]][:3]


@pytest.mark.vm
@pytest.mark.parametrize("kernel", PREPATCH)
def test_prepatch_open_last_component_is_seen_at_the_step_into_site(kernel):
    """open_last_lookups() calls step_into() itself: its spurious ENOENTs are matched by step_into's walk returns.

    The same trace judged without those returns (the walk_component site
    alone) loses exactly the step_into site's matches: each lookup is
    reported at one site, never both.
    """
    r = _kprobe(kernel)
    assert r["without_step_site"]["matched"] == r["matched"] - r["matched_at_step_site"]
    need(r["matched_at_step_site"] > 0, f"no spurious ENOENT on an open()'s last component this run "
                                        f"({r['step_walk_returns']} step_into walk returns, {r['truth']} spurious ENOENT)")
    assert r["suspects_at_step_site"] >= r["matched_at_step_site"]


@pytest.mark.vm
@pytest.mark.parametrize("kernel", CONTROL)
def test_control_has_no_cp_error_no_race_and_no_ground_truth(kernel):
    s = _boot(kernel)
    r = _kprobe(kernel)
    assert s["ground_truth_available"] is False
    assert r["stress"]["files_copied"] > 0
    assert r["stress"]["cp_enoent"] == 0, r["stress"]["cp_enoent_paths"]
    assert r["verdicts"].get("race", 0) == 0, r["suspect_rows"][:3]


@pytest.mark.vm
@pytest.mark.parametrize("kernel,verdict,code", [(k, "FAIL", 1) if k in PREPATCH else (k, "PASS", 0) for k in TIERS])
def test_selftest_verdict(kernel, verdict, code):
    st = _boot(kernel)["selftest"]
    res = st["result"]
    assert res is not None, st
    base, wide = res["phases"]
    print(f"{kernel}: selftest {res['verdict']}: unwidened race {base['race']}, widened race {wide['race']}; "
          f"{res['reason']}")
    assert (res["verdict"], st["returncode"]) == (verdict, code), res["reason"]
    if verdict == "FAIL":
        assert wide["race"] > 0 and "race" in res["reason"]
    else:
        assert base["race"] == wide["race"] == 0
