"""Runs inside a vfstrace guest (or on the host): SIGKILL a recorder, then look for what it left.

1. `vfstrace record --tier TIER -- sleep` starts; once it has attached
   (`bpftool perf list` shows its perf events with programs, and their
   number has stopped growing), kprobe_events is read while it runs;
2. the recorder gets SIGKILL (no handler, no cleanup code runs);
3. after its death: the tracefs kprobe events whose names BCC gives
   (``*_bcc_<pid>``), the BPF programs it had attached (by id: one still
   attached anywhere would be listed) and its perf events are read again,
   for up to --settle seconds (the kernel frees programs after an RCU
   grace period);
4. kprobe tier only: a stale event is planted by hand, the way libbcc names
   one (``r128:kprobes/r_<walk symbol>_bcc_<dead pid>``), and the kprobe
   tracer's start-up cleanup (what the next recorder runs before it
   attaches) must remove it and say so.

Writes OUT/sigkill.json; tests/test_sigkill_vm.py asserts on it.

usage: sigkill_check.py OUT --tier kprobe|tracepoint [--settle S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from vfstrace.vm import pace  # noqa: E402

VFSTRACE = [sys.executable, "-m", "vfstrace.cli"]
CLEANUP = """
from vfstrace import log
from vfstrace.kernel.doctor import choose_tier
from vfstrace.options import TraceOptions
from tracers import make_tracer
log.setup(0)
make_tracer(choose_tier("kprobe"), TraceOptions())._remove_stale_kprobes()
"""


def tracefs() -> Path:
    for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.isdir(os.path.join(d, "events")):
            return Path(d)
    raise SystemExit("no tracefs")


def kprobe_events() -> list[str]:
    try:
        return [ln for ln in (tracefs() / "kprobe_events").read_text().splitlines() if ln.strip()]
    except OSError:
        return []


def bpftool(*args) -> list:
    r = subprocess.run(["bpftool", "--json", *args], capture_output=True, text=True)
    try:
        return json.loads(r.stdout or "[]")
    except ValueError:
        return []


def perf_of(pid: int) -> list[dict]:
    """Perf events of ``pid`` with a BPF program attached (`bpftool perf list`)."""
    return [p for p in bpftool("perf", "list") if p.get("pid") == pid]


def progs_of(pid: int) -> list[dict]:
    """The BPF programs ``pid`` has attached, by id (from its perf events)."""
    ids = {p.get("prog_id") for p in perf_of(pid)}
    return [{"id": p.get("id"), "type": p.get("type"), "name": p.get("name")}
            for p in bpftool("prog", "list") if p.get("id") in ids]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tier", required=True)
    ap.add_argument("--settle", type=float, default=20.0)
    # quiet-guest seconds (vfstrace/vm/pace.py): BCC compiles for minutes under TCG
    ap.add_argument("--attach-timeout", type=float, default=900.0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"tier": a.tier, "kernel_release": os.uname().release, "events_before": kprobe_events()}
    for old in out.glob(f"{a.tier}-*.trace"):
        shutil.rmtree(old, ignore_errors=True)
    argv = VFSTRACE + ["record", "--tier", a.tier, "-o", str(out / f"{a.tier}-killed.trace"), "-d", "900", "--",
                       "sleep", "900"]
    err = open(out / f"{a.tier}-killed.stderr", "w")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=str(ROOT), start_new_session=True)
    pid = proc.pid
    t0 = last = time.monotonic()
    n_seen = 0
    budget = pace.Budget(a.attach_timeout)
    while not budget.over() and proc.poll() is None:
        perf = perf_of(pid)
        if perf and len(perf) == n_seen:
            break  # attached, and no new attachment for a second and more
        n_seen = len(perf)
        time.sleep(1.5)
        slow = pace.slowdown(pace.probe())
        budget.charge(time.monotonic() - last, slow)
        last = time.monotonic()
    res["attach_s"] = round(time.monotonic() - t0, 1)
    res["recorder_alive_before_kill"] = proc.poll() is None
    res["progs_while_running"] = progs_of(pid)
    res["perf_while_running"] = perf_of(pid)
    res["bcc_events_while_running"] = [e for e in kprobe_events() if f"_bcc_{pid}" in e]
    if proc.poll() is not None:
        res["recorder_returncode"] = proc.returncode
        res["stderr_tail"] = (out / f"{a.tier}-killed.stderr").read_text()[-2000:]
        (out / f"sigkill-{a.tier}.json").write_text(json.dumps(res, indent=1))
        raise SystemExit(f"the recorder ended before it could be killed (exit {proc.returncode})")
    os.kill(pid, signal.SIGKILL)
    proc.wait()
    res["recorder_returncode"] = proc.returncode
    try:
        os.killpg(pid, signal.SIGKILL)  # its workload (`sleep`), which item 3 of issue 16 is about
    except ProcessLookupError:
        pass
    t1 = time.monotonic()
    ids = {p["id"] for p in res["progs_while_running"]}
    while True:
        # the programs it held, by id: one still attached somewhere would be listed with no pid
        left_progs = [p.get("id") for p in bpftool("prog", "list") if p.get("id") in ids]
        left_perf = perf_of(pid)
        left_events = [e for e in kprobe_events() if f"_bcc_{pid}" in e]
        if not (left_progs or left_perf or left_events) or time.monotonic() - t1 > a.settle:
            break
        time.sleep(0.5)
    res["settle_s"] = round(time.monotonic() - t1, 1)
    res["progs_after_kill"] = left_progs
    res["perf_after_kill"] = left_perf
    res["bcc_events_after_kill"] = left_events
    res["all_bcc_events_after_kill"] = [e for e in kprobe_events() if "_bcc_" in e]
    # kprobe.c's programs are all named vt_*: none may be left, whoever holds it
    res["vt_progs_after_kill"] = [p.get("name") for p in bpftool("prog", "list")
                                  if str(p.get("name", "")).startswith("vt_")]

    if a.tier == "kprobe":
        walk = next((p["func"] for p in res["perf_while_running"]
                     if str(p.get("func", "")).startswith("walk_component")), "walk_component")
        stale = f"r_{walk.replace('.', '_')}_bcc_{pid}"
        (out / f"sigkill-{a.tier}.json").write_text(json.dumps(res, indent=1))
        res["planted"] = stale
        res["plant_errors"] = []
        for spec in (f"r128:kprobes/{stale} {walk}", f"r:kprobes/{stale} {walk}"):
            fd = os.open(tracefs() / "kprobe_events", os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, (spec + "\n").encode())
                res["plant_line"] = spec
                break
            except OSError as e:
                res["plant_errors"].append(f"{spec}: {e}")
            finally:
                os.close(fd)
        res["tracing_error_log"] = (tracefs() / "error_log").read_text()[-1000:] if res["plant_errors"] else ""
        res["planted_present"] = any(stale in e for e in kprobe_events())
        # The recorder's own start-up step (KprobeTracer.load() runs it before
        # attaching), without a second BCC compile: minutes under emulation.
        r = subprocess.run([sys.executable, "-c", CLEANUP], capture_output=True, text=True, cwd=str(ROOT))
        res["cleanup_returncode"] = r.returncode
        res["cleanup_notes"] = [ln for ln in r.stderr.splitlines() if "kprobe event" in ln]
        res["cleanup_stderr_tail"] = r.stderr[-1500:]
        res["planted_after_cleanup"] = any(stale in e for e in kprobe_events())
        res["all_bcc_events_after_cleanup"] = [e for e in kprobe_events() if "_bcc_" in e]
    (out / f"sigkill-{a.tier}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
