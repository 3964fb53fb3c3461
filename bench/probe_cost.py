#!/usr/bin/env python3
"""The kprobe/fentry tier's own cost, per kernel: vfstrace's added ns per stat() over an empty program's.

    .venv/bin/python bench/probe_cost.py --kernel all            # 5.10, 6.1, 6.12: one guest each
    .venv/bin/python bench/probe_cost.py --small                 # CI size: one kernel (6.12), fewer calls
    .venv/bin/python bench/probe_cost.py --inside OUT [--calls N --rounds R]   # on this kernel (needs kprobes)
    .venv/bin/python bench/probe_cost.py --kernel 6.1 --ab /path/to/other/checkout   # A/B in one boot

Each kernel boots one guest (`vfstrace vm run`); inside, in one process, a
C loop of N stat() calls (bench/_statgen.py) runs on a hit path (a file
that exists: every walk returns 0 and vfstrace streams nothing) and an
ENOENT path, under, interleaved round by round (the order rotating):

  untraced          no program attached
  empty kprobe      bpf/empty.c on exactly the attach points of the kprobe
                    tier (tracers/kprobe.py EmptyKprobeTracer: the same
                    symbols, the same kprobe/kretprobe per probe)
  vfstrace kprobe   the kprobe tier itself (bpf/kprobe.c), its events drained
                    by vfstrace.recorder.Recorder as `record` drains them
  empty fentry, vfstrace fentry   the same in fentry mode, where the kernel has it

Every program is compiled once and detached between its rounds
(KprobeTracer.detach_probes/attach_probes): BCC takes tens of seconds per
compile under emulation. Both files live on the guest's tmpfs /tmp: the
root is 9p, where every getattr is a round trip to the host that would
bury what a probe costs. On tmpfs a missing name leaves no negative dentry
(simple_lookup's always-delete dentry operations), so each ENOENT stat()
also allocates and kills one dentry: the prune-side probes fire too, and
vfstrace streams a WALK_RETURN and a PRUNE for it.

--ab DIR adds, per mode, "vfstrace-B": the same tier built from DIR/bpf
(another checkout's kprobe.c and common.h, with this tree's tracer and
defines), run in the same rounds. Two versions of the kernel-side code
measured in one boot share every disturbance of the machine; printed as
B's added ns over A's per round (median [min-max]). For development: a
change to the programs is judged this way, not from two runs' ratios.

Printed per kernel: ns per stat() (the loop's own CPU time): the best run
and the median [min-max] over rounds; added ns over untraced (best runs);
walk_component calls per stat() (from the tier's own counter); and ratio =
vfstrace added / empty added of the same mode, from the best runs, then
computed per round against that round's untraced run (median [min-max]).
Guests run under TCG software emulation on a shared machine: other work
only ever adds time to a run, so the best of R interleaved runs is the
steadiest estimate and the per-round spread shows how much the rest moved.
Absolute numbers are slow; the ratios are what compare. Then, once per
tracer, the programs' own run time on the hit path (kernel.bpf_stats_enabled,
read with bpftool, apart from the timed rounds): what each program body
costs per stat(), vfstrace's against the empty ones', program by program
(one run each, so it moves with the machine too). Numbers only: nothing
is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PY = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
PATHS = ("hit", "enoent")
FULL = {"calls": 20_000, "rounds": 7}
SMALL = {"calls": 4_000, "rounds": 3}


class Config:
    """One way of running the loop: a tracer (None: untraced), attached only during its runs."""

    def __init__(self, name: str, tracer=None, streams: bool = False):
        self.name = name
        self.tracer = tracer
        self.streams = streams
        self.rec = None
        self._stop = None
        self._thread = None

    def on(self):
        if self.tracer is None:
            return
        self.tracer.attach_probes()
        if self.streams:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._drain, daemon=True)
            self._thread.start()

    def _drain(self):
        while not self._stop.is_set():
            self.rec.poll(50)
        self.rec.drain()

    def off(self):
        if self.tracer is None:
            return
        self.tracer.detach_probes()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def walks(self) -> int | None:
        c = self.tracer.counters() if self.tracer is not None else {}
        return c.get("walk")


def inside(out: Path, calls: int, rounds: int, ab: str | None = None) -> dict:
    """Run every configuration on this kernel; the result also goes to OUT/probe_cost.json."""
    from _statgen import StatGen
    from tracers import make_tracer
    from tracers.kprobe import EmptyKprobeTracer
    from vfstrace.kernel.doctor import choose_tier
    from vfstrace.options import TraceOptions
    from vfstrace.recorder import Recorder

    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/vt-probe-cost")
    work.mkdir(mode=0o700, exist_ok=True)
    paths = {"hit": str(work / "present"), "enoent": str(work / "absent")}
    Path(paths["hit"]).touch()
    kchoice = choose_tier("kprobe")
    modes = ["kprobe"] + (["fentry"] if kchoice.kfunc else [])
    configs = [Config("untraced")]
    notes: list[str] = []
    t0 = time.monotonic()
    try:
        for mode in modes:
            choice = kchoice if mode == "kprobe" else choose_tier("fentry")
            empty = EmptyKprobeTracer(TraceOptions(), choice)
            real = make_tracer(choice, TraceOptions())
            tracers = [(f"empty {mode}", empty, False), (f"vfstrace {mode}", real, True)]
            if ab:
                other = make_tracer(choice, TraceOptions())
                other.source_dir = Path(ab) / "bpf"
                tracers.append((f"vfstrace-B {mode}", other, True))
            for name, tr, streams in tracers:
                tr.load()
                tr.detach_probes()
                c = Config(name, tr, streams)
                if streams:
                    c.rec = Recorder(tr)
                configs.append(c)
            notes += [f"{mode}: {n}" for n in real.notes]
            notes.append(f"{mode} attach points: {', '.join(real.attached())}")
        compile_s = time.monotonic() - t0
        gen = StatGen()
        for p in PATHS:
            gen.run(paths[p], calls // 10)  # warm the dcache and the loop's pages
        ns = {(c.name, p): [] for c in configs for p in PATHS}
        walks = {(c.name, p): [] for c in configs for p in PATHS}
        for r in range(rounds):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for c in order:
                c.on()
                try:
                    for p in PATHS:
                        w0 = c.walks()
                        ns[(c.name, p)].append(gen.run(paths[p], calls, cpu_time=True)["ns_per_call"])
                        if w0 is not None:
                            walks[(c.name, p)].append((c.walks() - w0) / calls)
                finally:
                    c.off()
        programs = program_times(configs, gen, paths["hit"], calls)
        gen.close()
        events = {c.name: {"events": c.rec.events, "lost": c.rec.lost_total} for c in configs if c.rec}
    finally:
        for c in configs:
            if c.tracer is not None:
                c.tracer.close()
        os.unlink(paths["hit"])
    res = {"kernel_release": os.uname().release, "calls": calls, "rounds": rounds, "modes": modes,
           "configs": [c.name for c in configs], "compile_s": round(compile_s, 1), "notes": notes,
           "ns": {f"{k[0]}|{k[1]}": v for k, v in ns.items()},
           "walks_per_stat": {f"{k[0]}|{k[1]}": v for k, v in walks.items() if v}, "events": events,
           "programs": programs, "ab": ab}
    (out / "probe_cost.json").write_text(json.dumps(res, indent=1))
    return res


def _prog_stats() -> dict[int, tuple[str, int, int]]:
    """Every loaded BPF program: id -> (name, run_cnt, run_time_ns), from bpftool."""
    import subprocess

    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=60)
    return {p["id"]: (p.get("name", "?"), p.get("run_cnt", 0), p.get("run_time_ns", 0))
            for p in json.loads(r.stdout or "[]")}


def program_times(configs, gen, path: str, calls: int) -> dict:
    """The programs' own run time on the hit path, per stat(), with kernel.bpf_stats_enabled.

    Apart from the timed rounds because the statistics cost every program run
    two clock reads, which would weigh on the empty programs' added ns most.
    What the trampoline or kprobe costs is not in it: this is the bodies,
    vfstrace's against the empty programs', program by program.
    """
    import shutil

    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    if not shutil.which("bpftool") or not knob.exists():
        return {"note": "no bpftool or no kernel.bpf_stats_enabled: program times not measured"}
    was = knob.read_text().strip()
    out = {}
    knob.write_text("1")
    try:
        for c in configs:
            if c.tracer is None:
                continue
            c.on()
            try:
                a = _prog_stats()
                gen.run(path, calls, cpu_time=True)
                b = _prog_stats()
            finally:
                c.off()
            progs, total, walk = {}, 0, 0
            for i, (name, cnt, ns) in b.items():
                n0, t0 = a.get(i, (name, 0, 0))[1:]
                if cnt > n0:
                    progs[f"{name}#{i}"] = [round((cnt - n0) / calls, 3), round((ns - t0) / (cnt - n0))]
                    total += ns - t0
                    if cnt - n0 >= calls // 2:  # the walk's own probes, not a prune now and then
                        walk += ns - t0
            out[c.name] = {"ns_per_stat": round(total / calls), "walk_ns_per_stat": round(walk / calls),
                           "programs": progs}
    finally:
        knob.write_text(was)
    return out


def programs_table(res: dict) -> str:
    progs = res.get("programs") or {}
    if "note" in progs or not progs:
        return progs.get("note", "program times: not measured")
    lines = ["programs' own run time on the hit path (kernel.bpf_stats_enabled, one run each):"]
    for mode in res["modes"]:
        e, v = progs.get(f"empty {mode}"), progs.get(f"vfstrace {mode}")
        if not (e and v):
            continue
        ew, vw = e.get("walk_ns_per_stat"), v.get("walk_ns_per_stat")
        walk = f" (programs run at least every other stat(): {ew} and {vw}, +{vw - ew})" if ew is not None else ""
        lines.append(f"  {mode}: empty {e['ns_per_stat']} ns/stat, vfstrace {v['ns_per_stat']} ns/stat, "
                     f"bodies +{v['ns_per_stat'] - e['ns_per_stat']} ns/stat{walk}; vfstrace per program "
                     "(runs/stat, ns/run): "
                     + ", ".join(f"{n} {r}x {ns}" for n, (r, ns) in sorted(v["programs"].items())))
    return "\n".join(lines)


def _spread(v: list[float]) -> str:
    return f"{min(v):.0f}  ({statistics.median(v):.0f} [{min(v):.0f}-{max(v):.0f}])"


def best_ratio(res: dict, path: str, mode: str, name: str = "vfstrace") -> float:
    """vfstrace added / empty added, each from its best run."""
    ns = res["ns"]
    u, e, v = (min(ns[f"{n}|{path}"]) for n in ("untraced", f"empty {mode}", f"{name} {mode}"))
    return (v - u) / (e - u) if e > u else float("inf")


def _ratio_text(res: dict, path: str, mode: str, name: str = "vfstrace") -> str:
    rr = sorted(ratios(res, path, mode, name=name))
    return f"{best_ratio(res, path, mode, name):.2f}  ({statistics.median(rr):.2f} [{rr[0]:.2f}-{rr[-1]:.2f}])"


def ratios(res: dict, path: str, mode: str, over: str = "empty", name: str = "vfstrace") -> list[float]:
    """``name`` added / ``over`` added per round, each against that round's untraced run."""
    ns = res["ns"]
    u, e, v = ns[f"untraced|{path}"], ns[f"{over} {mode}|{path}"], ns[f"{name} {mode}|{path}"]
    return [(vi - ui) / (ei - ui) if ei > ui else float("inf") for ui, ei, vi in zip(u, e, v)]


def ab_text(res: dict) -> str:
    """B against A (--ab), per round in the same boot: B's added ns / A's."""
    if not res.get("ab"):
        return ""
    lines = [f"vfstrace-B: bpf/ of {res['ab']}; B added / A added per round, median [min-max] "
             "(below 1: B costs less):"]
    for mode in res["modes"]:
        for p in PATHS:
            rr = sorted(ratios(res, p, mode, over="vfstrace", name="vfstrace-B"))
            lines.append(f"  {mode} {p}: {statistics.median(rr):.3f} [{rr[0]:.3f}-{rr[-1]:.3f}]  "
                         f"(B/empty best {_ratio_text(res, p, mode, 'vfstrace-B')})")
    return "\n".join(lines) + "\n"


def table(res: dict) -> str:
    from tabulate import tabulate

    ns = res["ns"]
    rows = []
    for p in PATHS:
        base = min(ns[f"untraced|{p}"])
        for name in res["configs"]:
            v = ns[f"{name}|{p}"]
            added = min(v) - base
            w = res["walks_per_stat"].get(f"{name}|{p}")
            wps = statistics.median(w) if w else None
            ratio = "-"
            if name.startswith("vfstrace"):
                ratio = _ratio_text(res, p, name.split()[1], name.split()[0])
            rows.append([p, name, _spread(v), "-" if name == "untraced" else f"{added:.0f}",
                         f"{wps:.2f}" if wps else "-",
                         f"{added / wps:.0f}" if wps else "-", ratio])
    head = ["path", "config", "ns/stat best (median [min-max])", "added ns", "walks/stat", "added ns/walk",
            "ratio vfstrace/empty added: best (per round median [min-max])"]
    ev = "   ".join(f"{k}: {v['events']} events, {v['lost']} lost" for k, v in res["events"].items())
    return (f"kernel {res['kernel_release']}   calls per run: {res['calls']}   rounds: {res['rounds']}   "
            f"ns: the loop's CPU time   compile+attach: {res['compile_s']} s\n"
            + tabulate(rows, headers=head, disable_numparse=True) + f"\n{ev}\n" + ab_text(res) + programs_table(res))


def summary(results: dict[str, dict]) -> str:
    from tabulate import tabulate

    rows = []
    for kernel, res in results.items():
        if "ns" not in res:
            rows.append([kernel, res.get("error", "no result")] + ["-"] * 4)
            continue
        row = [kernel, res["kernel_release"]]
        for p in PATHS:
            for mode in ("kprobe", "fentry"):
                if mode in res["modes"]:
                    row.append(_ratio_text(res, p, mode))
                else:
                    row.append("no fentry")
        rows.append(row)
    head = ["kernel", "release", "hit kprobe", "hit fentry", "enoent kprobe", "enoent fentry"]
    return ("ratio = vfstrace's added ns per stat() / the empty program's, same attach points: "
            "from the best runs (per round: median [min-max]); goal on the hit path: <= 1.5\n"
            + tabulate(rows, headers=head, disable_numparse=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", default=None, help="VM kernel: 5.10, 6.1, 6.12 or all (default all; 6.12 with --small)")
    ap.add_argument("--calls", type=int, default=None, help=f"stat() calls per run (default {FULL['calls']})")
    ap.add_argument("--rounds", type=int, default=None, help=f"interleaved rounds (default {FULL['rounds']})")
    ap.add_argument("--small", action="store_true",
                    help=f"CI size: one kernel, {SMALL['calls']} calls, {SMALL['rounds']} rounds")
    ap.add_argument("--inside", metavar="OUT", help="run on this kernel, results in OUT")
    ap.add_argument("--ab", metavar="DIR", help="also run the tier built from DIR/bpf (another checkout), "
                    "in the same rounds: an A/B of the kernel-side code in one boot")
    ap.add_argument("--report", metavar="DIR", help="print the tables again from DIR/<kernel>/probe_cost.json")
    a = ap.parse_args()
    size = SMALL if a.small else FULL
    calls = a.calls or size["calls"]
    rounds = a.rounds or size["rounds"]
    if calls < 100 or rounds < 1:
        ap.error("--calls must be at least 100 and --rounds at least 1")
    if a.ab and not (Path(a.ab) / "bpf" / "kprobe.c").is_file():
        ap.error(f"--ab {a.ab}: no bpf/kprobe.c there (a vfstrace checkout)")
    if a.inside:
        from vfstrace.errors import VfstraceError

        try:
            res = inside(Path(a.inside), calls, rounds, a.ab)
        except VfstraceError as e:
            raise SystemExit(f"bench/probe_cost.py: {e}")
        print(table(res), flush=True)
        return
    if a.report:
        results = {}
        for d in sorted(Path(a.report).iterdir()):
            try:
                results[d.name] = json.loads((d / "probe_cost.json").read_text())
            except (OSError, ValueError):
                continue
        for res in results.values():
            print(table(res) + "\n")
        print(summary(results))
        return
    from vfstrace import vm

    kernel = a.kernel or ("6.12" if a.small else "all")
    if kernel != "all" and kernel not in vm.SERIES:
        ap.error(f"--kernel must be one of {', '.join(vm.SERIES)} or all")
    results = {}
    for k in (vm.SERIES if kernel == "all" else [kernel]):
        out = ROOT / ".cache" / "probe_cost" / k
        (out / "probe_cost.json").unlink(missing_ok=True)
        argv = [PY, str(ROOT / "bench/probe_cost.py"), "--inside", vm.GUEST_OUT, "--calls", str(calls),
                "--rounds", str(rounds)] + (["--ab", str(Path(a.ab).resolve())] if a.ab else [])
        t0 = time.monotonic()
        try:
            r = vm.run(k, argv, timeout=1800, out_dir=out, cwd=str(ROOT))
        except vm.VmError as e:
            results[k] = {"error": f"no result: {e}"}
            continue
        try:
            results[k] = json.loads((out / "probe_cost.json").read_text())
        except (OSError, ValueError):
            tail = (r.stderr or "").strip().splitlines()[-1:] or [f"guest exit {r.returncode}"]
            results[k] = {"error": f"no probe_cost.json: {tail[0]}"}
            continue
        print(f"{k}: guest done in {time.monotonic() - t0:.0f} s", flush=True)
        print(table(results[k]) + "\n", flush=True)
    print(summary(results))


if __name__ == "__main__":
    main()
