#!/usr/bin/env python3
"""Soak: `vfstrace record --tier kprobe` for N minutes under a pruning storm, per kernel.

Issue 16 item 2: the kprobe-tier recorder died with SIGSEGV 64 s into a
stress run in a 5.10 guest. This boots each guest kernel under qemu and
runs, inside, `vfstrace record --tier kprobe -- vfstrace stress --churn
--pressure drop_caches` (parallel cp -a, a stat loop, unlink/rename churn
and drop_caches in a loop, on the overlay root whose dentries prune) for
--minutes, with Python's fault handler on (a native crash prints every
thread's Python stack to the recorder's stderr, kept in the result).
Sampled every --every seconds: the recorder's resident memory (VmRSS);
at the end: its exit status (a signal is named), events and losses from
its JSON summary, the stop reason, and the workload's exit.

Printed side by side, one row per kernel, then each kernel's RSS series.
Numbers only: nothing is asserted (a crash shows as the exit column).

    .venv/bin/python bench/soak.py --minutes 10 --kernel all
    .venv/bin/python bench/soak.py --minutes 1 --kernel all     # CI size
    .venv/bin/python bench/soak.py --inside OUT --minutes 1     # on this kernel (needs kprobes)
    .venv/bin/python bench/soak.py --inside OUT --tier tracepoint --pressure none --minutes 3
    .venv/bin/python bench/soak.py --inside OUT --command watch --tier tracepoint --minutes 60 --every 30
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PY = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
VFSTRACE = [PY, "-m", "vfstrace.cli"]


def rss_kib(pid: int) -> int | None:
    return rss_parts_kib(pid).get("VmRSS")


def rss_parts_kib(pid: int) -> dict[str, int]:
    """VmRSS and its parts (kB): RssAnon (heap, Python's and Arrow's memory: what a leak grows),
    RssFile (the mapped libraries, LLVM's among them, and the BPF rings' double-mapped pages),
    RssShmem."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def exit_text(rc: int | None) -> str:
    if rc is None:
        return "running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit {rc}"


def rss_marks(samples: list, marks=(60, 600, 1800, 3600)) -> dict:
    """RSS (MiB) at each mark (seconds; the first sample at or after it) and the slope in MiB per
    hour over the samples after the first five minutes (least squares): flat memory is a slope
    near 0 there, whatever the start-up took."""
    out = {}
    for m in marks:
        at = [r for t, r in samples if t >= m]
        out[f"{m // 60} min"] = at[0] if at else None
    late = [(t, r) for t, r in samples if t >= 300]
    if len(late) >= 3:
        ts = np.array([t for t, _ in late]) / 3600.0
        rs = np.array([r for _, r in late])
        out["slope MiB/h after 5 min"] = round(float(np.polyfit(ts, rs, 1)[0]), 2)
    else:
        out["slope MiB/h after 5 min"] = None
    return out


def inside(out: Path, minutes: float, every: float, tier: str = "kprobe", pressure: str = "drop_caches",
           all_paths: bool = False, command: str = "record") -> dict:
    """Run the soak on the current kernel; the result also goes to OUT/soak.json.

    ``command`` is `record` (the trace only) or `watch` (the trace, the
    streaming correlator and the live verdict lines: what a watch left
    running for days holds)."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/var/tmp/vt-soak")
    work.mkdir(parents=True, exist_ok=True)
    seconds = minutes * 60
    trace = out / "soak.trace"
    argv = VFSTRACE + [command, "--tier", tier, "-o", str(trace), "-d", str(seconds + 120), "--json"]
    argv += (["--all-paths"] if all_paths else []) + ["--"] + VFSTRACE + [
        "stress", "-d", str(seconds), "--churn", "--pressure", pressure, "--files", "1500", "-j", "3",
        "--workdir", str(work), "--json"]
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    err_path = out / "record.stderr"
    t0 = time.monotonic()
    out_path = out / "command.stdout"  # a file, not a pipe: watch's verdict lines would fill a pipe read at the end
    with open(err_path, "w") as err, open(out_path, "w") as sout:
        proc = subprocess.Popen(argv, stdout=sout, stderr=err, text=True, env=env, cwd=str(ROOT))
        samples, anon, parts = [], [], {}
        while proc.poll() is None:
            got = rss_parts_kib(proc.pid)
            if "VmRSS" in got:
                t = round(time.monotonic() - t0, 1)
                samples.append([t, round(got["VmRSS"] / 1024, 1)])
                anon.append([t, round(got.get("RssAnon", 0) / 1024, 1)])
                if got["VmRSS"] >= parts.get("VmRSS", 0):
                    parts = got  # the parts at the largest RSS seen
            try:
                proc.wait(timeout=every)
            except subprocess.TimeoutExpired:
                pass
    stdout = out_path.read_text(errors="replace")
    wall = time.monotonic() - t0
    res = {"kernel_release": os.uname().release, "command": command, "tier": tier, "pressure": pressure,
           "all_paths": all_paths, "rss_marks": rss_marks(samples),
           "anon_marks": rss_marks(anon), "rss_anon_mib": anon,
           "peak_rss_parts_mib": {k: round(v / 1024, 1) for k, v in parts.items()},
           "minutes": minutes, "wall_s": round(wall, 1),
           "returncode": proc.returncode, "exit": exit_text(proc.returncode), "rss_mib": samples,
           "stderr_tail": err_path.read_text(errors="replace")[-4000:]}
    res["stdout_tail"] = stdout[-2000:]
    res.update(trace_numbers(trace))
    (out / "soak.json").write_text(json.dumps(res, indent=1))
    return res


def trace_numbers(trace: Path) -> dict:
    """Events, losses, stop reason and workload exit from the trace's metadata
    (docs/trace-format.md), which the recorder writes whatever its stdout held."""
    try:
        m = json.loads((trace / "_meta.json").read_text())
    except (OSError, ValueError):
        return {"events": None}
    out = {k: m.get(k) for k in ("events", "lost_total", "stop_reason", "workload_exit", "closed")}
    t0, t1 = m.get("start_monotonic_ns"), m.get("end_monotonic_ns")
    secs = (t1 - t0) / 1e9 if isinstance(t0, int) and isinstance(t1, int) and t1 > t0 else None
    out["recorded_s"] = round(secs, 1) if secs else None
    out["events_per_s"] = round(m["events"] / secs) if secs and isinstance(m.get("events"), int) else None
    out["kernel_counters"] = {k: v for k, v in (m.get("kernel_counters") or {}).items()
                              if k in ("walk", "prune", "emitted", "lost", "inflight_stale")}
    return out


def table(results: dict[str, dict]) -> str:
    from tabulate import tabulate

    rows = []
    for kernel, r in results.items():
        rss = [m for _, m in r.get("rss_mib") or []]
        rows.append([kernel, r.get("kernel_release"), r.get("minutes"), r.get("recorded_s"), r.get("boot_wall_s", "-"),
                     r.get("exit"),
                     r.get("events"), r.get("events_per_s"), r.get("lost_total"),
                     f"{rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f}" if rss else "-",
                     r.get("stop_reason"), r.get("workload_exit")])
    head = ["kernel", "release", "stress min", "trace open s (guest clock)", "boot+run s (host)", "recorder", "events",
            "events/s", "lost",
            "RSS MiB first/max/last",
            "stop", "workload exit"]
    out = [tabulate(rows, headers=head, disable_numparse=True)]
    for kernel, r in results.items():
        series = " ".join(f"{t:.0f}s:{m:.0f}" for t, m in (r.get("rss_mib") or []))
        out.append(f"{kernel} RSS MiB over time: {series or '-'}")
        marks = r.get("rss_marks") or rss_marks(r.get("rss_mib") or [])
        out.append(f"{kernel} {r.get('command', 'record')} RSS MiB at " + ", ".join(f"{k}: {v}" for k, v in marks.items()))
        if r.get("anon_marks"):
            out.append(f"{kernel} of which anonymous (RssAnon) MiB at "
                       + ", ".join(f"{k}: {v}" for k, v in r["anon_marks"].items()))
            out.append(f"{kernel} RSS parts at its peak, MiB: {r.get('peak_rss_parts_mib')}")
        if r.get("returncode") not in (0, None):
            out.append(f"{kernel} recorder stderr (tail):\n{r.get('stderr_tail', '')[-1500:]}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--kernel", default="all", help="VM kernel (5.10, 6.1, 6.12, or all)")
    ap.add_argument("--every", type=float, default=None, help="seconds between RSS samples (default: minutes*3)")
    ap.add_argument("--inside", metavar="OUT", help="run on this kernel, results in OUT")
    ap.add_argument("--report", metavar="DIR", help="print the table again from DIR/<kernel>/ of an earlier run")
    ap.add_argument("--tier", default="kprobe", choices=["kprobe", "fentry", "tracepoint"],
                    help="with --inside: the tier to record (tracepoint where kprobes are missing)")
    ap.add_argument("--pressure", default="drop_caches", choices=["drop_caches", "cgroup", "none"],
                    help="with --inside: stress's memory pressure (drop_caches empties every cache on the machine)")
    ap.add_argument("--all-paths", action="store_true",
                    help="with --inside --tier tracepoint: stream successful path syscalls too (the ring at full rate)")
    ap.add_argument("--command", default="record", choices=["record", "watch"],
                    help="with --inside: what runs under the stress (watch also runs the live correlator)")
    a = ap.parse_args()
    if not (0 < a.minutes <= 24 * 60):
        ap.error("--minutes must be in (0, 1440]")
    every = a.every or max(5.0, a.minutes * 3)
    if a.inside:
        res = inside(Path(a.inside), a.minutes, every, a.tier, a.pressure, a.all_paths, a.command)
        print(json.dumps(res), flush=True)
        print(table({res["kernel_release"]: res}), flush=True)
        return
    if a.report:
        results = {}
        for d in sorted(Path(a.report).iterdir()):
            try:
                r = json.loads((d / "soak.json").read_text())
            except (OSError, ValueError):
                continue
            r.update({k: v for k, v in trace_numbers(d / "soak.trace").items() if v is not None})
            results[d.name] = r
        print(table(results))
        return
    from vfstrace import vm

    results = {}
    for kernel in (vm.SERIES if a.kernel == "all" else [a.kernel]):
        out = ROOT / ".cache" / "soak" / kernel
        argv = [PY, str(ROOT / "bench/soak.py"), "--inside", vm.GUEST_OUT, "--minutes", str(a.minutes),
                "--every", str(every)]
        t0 = time.monotonic()
        try:
            res = vm.run(kernel, argv, timeout=a.minutes * 60 + 1200, out_dir=out, cwd=str(ROOT))
        except vm.VmError as e:
            results[kernel] = {"exit": f"no result: {e}"}
            continue
        try:
            results[kernel] = json.loads((out / "soak.json").read_text())
        except (OSError, ValueError):
            results[kernel] = {"exit": f"no soak.json (guest exit {res.returncode})",
                               "stderr_tail": res.stderr[-2000:] + res.console[-2000:]}
        results[kernel]["boot_wall_s"] = round(time.monotonic() - t0)
        if (out / "soak.json").exists():  # the guest's clock can run fast under TCG: keep the host's
            (out / "soak.json").write_text(json.dumps(results[kernel], indent=1))
        print(f"{kernel}: done in {results[kernel]['boot_wall_s']} s: {results[kernel].get('exit')}", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
