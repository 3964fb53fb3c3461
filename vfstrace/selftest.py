"""`vfstrace selftest`: does this kernel re-check d_seq when a prune hits an RCU lookup?

A verdict a kernel developer can paste in a mail. On the running kernel it
runs the stress workload (a stat() loop, parallel `cp -a`, drop_caches
pressure) under the kprobe tier twice, each phase ``-d`` seconds: once as
is and once with the race window widened (tracers/widen.py holds the
workload's own RCU walks between finding a dentry and re-checking its
d_seq). Both phases are recorded and correlated (vfstrace/correlate.py);
every lookup that overlapped a prune of the same dentry is either
``retried`` (the kernel saw d_seq change and retried in ref-walk: the 2011
fix at work) or ``race`` (trusted without a re-check: the bug).

* PASS: enough overlaps, every one retried (exit 0);
* FAIL: at least one ``race``, each cited by event id, dentry, name, tid (exit 1);
* INCONCLUSIVE: too few overlaps to say; it says how long to run (exit 2).

Before judging the kernel it judges the judge: the correlator must call a
simulated pre-patch trace FAIL and a fixed one clean, else a PASS would mean
nothing (``--kernel-only`` skips this). ``--from-trace`` judges a recorded or
simulated trace instead of the live kernel (no root needed).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import click
import numpy as np

from vfstrace.errors import TierUnavailable, VfstraceError
from vfstrace.events import Kind

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
EXIT = {PASS: 0, FAIL: 1, INCONCLUSIVE: 2}
# Fewer overlaps than this and a clean run proves little.
MIN_OVERLAPS = 20
# More of the overlaps uncertain (lost events) than this share: not clean either.
MAX_UNCERTAIN_SHARE = 0.10
DEFAULT_SECONDS = 30.0
MAX_RACES_SHOWN = 20

_LOOKUP_RETURNS = (int(Kind.WALK_RETURN), int(Kind.LOOKUP_RETURN))


@dataclass
class Phase:
    """What one phase (or one judged trace) showed."""

    name: str
    duration_s: float
    lookups: int
    prunes: int
    overlaps: int = 0
    retried: int = 0
    race: int = 0
    uncertain: int = 0
    lost: int = 0
    races: list = field(default_factory=list)
    widen: dict | None = None
    workload: dict | None = None

    @property
    def overlaps_per_min(self) -> float:
        return self.overlaps * 60.0 / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["overlaps_per_min"] = round(self.overlaps_per_min, 2)
        return d


@dataclass
class Result:
    verdict: str
    reason: str
    kernel_release: str
    tier: str
    probes: list
    phases: list
    source: str  # "live" or the trace path
    detector: dict | None = None
    factor: float | None = None
    notes: list = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT[self.verdict]

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "kernel_release": self.kernel_release,
            "tier": self.tier,
            "probes": list(self.probes),
            "source": self.source,
            "detector": self.detector,
            "phases": [p.to_dict() for p in self.phases],
            "widening_factor": None if self.factor is None else round(self.factor, 2),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------
# judging events


def _correlate(df):
    try:
        from vfstrace.correlate import correlate
    except ImportError:
        raise VfstraceError("selftest needs the correlator (vfstrace.correlate), which this build lacks") from None
    return correlate(df)


def _int(x) -> int:
    try:
        return int(x)
    except (TypeError, ValueError):
        return 0


def judge_events(df, name: str = "trace", duration_s: float | None = None, counters: dict | None = None,
                 verdicts=None) -> Phase:
    """Correlate one phase's events and count what a selftest reports.

    ``counters`` are the kernel-side totals (tracers.kprobe COUNTERS), which
    see every lookup and prune even when only the interesting ones crossed
    to user space; without them the counts come from the events.
    """
    if duration_s is None:
        ts = df["ts_ns"].to_numpy(dtype=np.uint64) if len(df) else np.zeros(0, dtype=np.uint64)
        duration_s = float(ts.max() - ts.min()) / 1e9 if len(ts) > 1 else 0.0
    kind = df["kind"].to_numpy() if len(df) else np.zeros(0, dtype=np.uint8)
    if counters:
        lookups = _int(counters.get("lookup")) or _int(counters.get("walk"))
        prunes = _int(counters.get("prune"))
    else:
        lookups = int(np.isin(kind, _LOOKUP_RETURNS).sum())
        prunes = int((kind == int(Kind.PRUNE)).sum())
    lost = int(df.loc[kind == int(Kind.LOST), "ret"].sum()) if len(df) else 0
    v = _correlate(df) if verdicts is None else verdicts
    counts = v["verdict"].value_counts().to_dict() if len(v) else {}
    ph = Phase(
        name=name,
        duration_s=round(float(duration_s), 3),
        lookups=lookups,
        prunes=prunes,
        retried=int(counts.get("retried", 0)),
        race=int(counts.get("race", 0)),
        uncertain=int(counts.get("uncertain", 0)),
        lost=lost,
    )
    ph.overlaps = ph.retried + ph.race
    if ph.race:
        ph.races = _race_rows(df, v)
    return ph


def _race_rows(df, v) -> list[dict]:
    """The racing lookups with what identifies them: event id, dentry, name, tid."""
    races = v[v["verdict"] == "race"]
    ev = df.set_index("event_id", drop=False)
    out = []
    for r in races.head(MAX_RACES_SHOWN).to_dict("records"):
        eid = _int(r.get("event_id"))
        row = ev.loc[eid] if eid in ev.index else None
        if row is not None and getattr(row, "ndim", 1) > 1:  # duplicate ids: take the first
            row = row.iloc[0]

        def pick(col, row=row, r=r):
            val = r.get(col)
            if (val is None or val == "" or (isinstance(val, float) and math.isnan(val))) and row is not None:
                val = row[col]
            return val

        out.append({
            "event_id": eid,
            "dentry": _int(pick("dentry")),
            "name": str(pick("name") or ""),
            "tid": _int(pick("tid")),
            "comm": str(pick("comm") or ""),
            "ts_ns": _int(pick("ts_ns")),
            "evidence": [int(x) for x in _evidence(r.get("evidence"))],
        })
    return out


def _evidence(e) -> list:
    if e is None:
        return []
    if isinstance(e, str):
        return [int(x) for x in e.replace(",", " ").split() if x.strip().isdigit()]
    try:
        return list(e)
    except TypeError:
        return [e]


def verdict_of(phases: list[Phase], min_overlaps: int = MIN_OVERLAPS) -> tuple[str, str]:
    """(PASS|FAIL|INCONCLUSIVE, the one-sentence reason)."""
    race = sum(p.race for p in phases)
    retried = sum(p.retried for p in phases)
    overlaps = sum(p.overlaps for p in phases)
    uncertain = sum(p.uncertain for p in phases)
    seconds = sum(p.duration_s for p in phases)
    if race:
        first = next(r for p in phases for r in p.races) if any(p.races for p in phases) else None
        cite = ""
        if first:
            cite = (f"; first: event {first['event_id']}, dentry 0x{first['dentry']:x} "
                    f"name {first['name']!r} tid {first['tid']}")
        return FAIL, (f"{race} lookup(s) overlapped a prune of the same dentry and were trusted "
                      f"without a d_seq re-check (race){cite}")
    if overlaps < min_overlaps:
        best = max(phases, key=lambda p: p.overlaps_per_min) if phases else None
        if best is not None and best.overlaps_per_min > 0:
            need_s = math.ceil(min_overlaps / best.overlaps_per_min * 60.0 * 1.5)
            how = f"run about {need_s} s per phase (-d {need_s})"
        else:
            how = f"run at least {max(4 * int(seconds or DEFAULT_SECONDS), 120)} s (-d) or widen more (--widen 500us)"
        return INCONCLUSIVE, (f"only {overlaps} lookup(s) overlapped a prune of the same dentry in "
                              f"{seconds:.0f} s (need {min_overlaps}); {how}")
    if uncertain > MAX_UNCERTAIN_SHARE * (overlaps + uncertain):
        return INCONCLUSIVE, (f"{uncertain} lookups are uncertain (events lost) against {overlaps} overlaps; "
                              "enlarge the ring (--ring-pages) or shorten the run")
    return PASS, (f"{overlaps} lookups overlapped a prune of the same dentry and the kernel re-checked "
                  f"d_seq and retried every one ({retried} retried, 0 race)")


def widening_factor(phases: list[Phase]) -> float | None:
    base = next((p for p in phases if p.widen is None and p.name == "baseline"), None)
    wide = next((p for p in phases if p.widen is not None), None)
    if base is None or wide is None:
        return None
    if base.overlaps_per_min == 0:
        return math.inf if wide.overlaps_per_min > 0 else None
    return wide.overlaps_per_min / base.overlaps_per_min


# --------------------------------------------------------------------------
# the judge judged: the correlator on simulated kernels


def detector_check(seed: int = 7) -> dict:
    """Run the correlator on simulated buggy and fixed kernels: it must see races only in the buggy one."""
    try:
        from vfstrace.simulate import simulate
    except ImportError:
        raise VfstraceError("selftest's detector check needs vfstrace.simulate (use --kernel-only to skip it)") from None
    out = {"seed": seed}
    for sem in ("buggy", "fixed"):
        events, truth = simulate(seed, semantics=sem)
        ph = judge_events(events, name=f"simulated-{sem}")
        out[sem] = {"events": int(len(events)), "race": ph.race, "retried": ph.retried}
    out["ok"] = out["buggy"]["race"] > 0 and out["fixed"]["race"] == 0
    if not out["ok"]:
        raise VfstraceError(
            f"the correlator failed its own check (simulated pre-patch: {out['buggy']['race']} race, "
            f"fixed: {out['fixed']['race']} race): no kernel verdict would mean anything"
        )
    return out


# --------------------------------------------------------------------------
# judging a recorded trace


def from_trace(path, min_overlaps: int = MIN_OVERLAPS) -> Result:
    """Judge a recorded or simulated trace. A trace recorded by selftest keeps its phases."""
    from vfstrace.store import load

    df = load(path)
    meta = df.attrs.get("meta") or {}
    st = meta.get("selftest") or {}
    phases = []
    if st.get("phases"):
        ts = df["ts_ns"].to_numpy(dtype=np.uint64)
        for p in st["phases"]:
            sel = df[(ts >= int(p["start_ns"])) & (ts < int(p["end_ns"]))]
            ph = judge_events(sel, name=p["name"], duration_s=(int(p["end_ns"]) - int(p["start_ns"])) / 1e9,
                              counters=p.get("counters"))
            ph.widen, ph.workload = p.get("widen"), p.get("workload")
            phases.append(ph)
    else:
        phases.append(judge_events(df, name="trace", counters=meta.get("kernel_counters")))
    verdict, reason = verdict_of(phases, min_overlaps)
    return Result(verdict, reason, str(meta.get("kernel_release") or "?"), str(meta.get("tier") or "?"),
                  list(meta.get("probes") or []), phases, str(path), factor=widening_factor(phases))


# --------------------------------------------------------------------------
# output


def _fmt_int(n) -> str:
    return "-" if n is None else f"{int(n):,}"


def render_text(res: Result) -> str:
    from tabulate import tabulate

    lines = [f"vfstrace selftest: kernel {res.kernel_release}, tier {res.tier}"]
    if res.source != "live":
        lines[0] += f", judged from trace {res.source}"
    if res.probes:
        lines.append("probes: " + ", ".join(res.probes))
    wide = next((p.widen for p in res.phases if p.widen), None)
    if wide:
        lines.append(
            f"widening: kretprobe on {wide['site']} holds the workload's RCU walks {wide['delay_ns'] / 1000:g} us "
            f"({'RCU mode only' if wide.get('rcu_only') else 'every lookup of the workload'}); nothing else is delayed"
        )
    if res.detector:
        d = res.detector
        lines.append(
            f"detector check: simulated pre-patch kernel -> {d['buggy']['race']} race; "
            f"simulated fixed kernel -> {d['fixed']['race']} race, {d['fixed']['retried']} retried (ok)"
        )
    lines.append("")
    rows = [
        ("duration (s)", *[f"{p.duration_s:.1f}" for p in res.phases]),
        ("lookups observed", *[_fmt_int(p.lookups) for p in res.phases]),
        ("prunes", *[_fmt_int(p.prunes) for p in res.phases]),
        ("lookups overlapping a prune of their dentry", *[_fmt_int(p.overlaps) for p in res.phases]),
        ("  re-checked and retried (retried)", *[_fmt_int(p.retried) for p in res.phases]),
        ("  trusted without re-check (race)", *[_fmt_int(p.race) for p in res.phases]),
        ("  uncertain (events lost)", *[_fmt_int(p.uncertain) for p in res.phases]),
        ("overlaps per minute", *[f"{p.overlaps_per_min:,.1f}" for p in res.phases]),
        ("lost events", *[_fmt_int(p.lost) for p in res.phases]),
    ]
    if wide:
        rows.append(("delayed lookups", *[_fmt_int(p.widen["delayed"]) if p.widen else "-" for p in res.phases]))
        rows.append(("mean delay (us)",
                     *[f"{p.widen['mean_delay_ns'] / 1000:.1f}" if p.widen else "-" for p in res.phases]))
    lines.append(tabulate(rows, headers=["", *[p.name for p in res.phases]], disable_numparse=True,
                          colalign=("left", *["right"] * len(res.phases))))
    if res.factor is not None:
        base = next(p for p in res.phases if p.name == "baseline")
        widened = next(p for p in res.phases if p.widen)
        f = "inf" if math.isinf(res.factor) else f"{res.factor:.1f}"
        lines.append(f"overlaps/min without vs with widening: {base.overlaps_per_min:,.1f} vs "
                     f"{widened.overlaps_per_min:,.1f} (x{f})")
    races = [r for p in res.phases for r in p.races]
    if races:
        lines.append("")
        lines.append("racing lookups (trusted a dentry whose prune overlapped them):")
        for r in races[:MAX_RACES_SHOWN]:
            ev = ",".join(str(x) for x in r["evidence"][:8])
            lines.append(f"  event {r['event_id']}: dentry 0x{r['dentry']:x} name {r['name']!r} "
                         f"tid {r['tid']} comm {r['comm']!r}" + (f" (evidence: {ev})" if ev else ""))
    for n in res.notes:
        lines.append(f"note: {n}")
    lines.append("")
    lines.append(f"{res.verdict}: {res.reason}")
    return "\n".join(lines)


def _emit(res: Result, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2, default=_json_default))
    else:
        click.echo(render_text(res))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and math.isinf(o):
        return "inf"
    return str(o)


# --------------------------------------------------------------------------
# the live workload: a stat() loop and `cp -a` in the widened cgroup, the
# drop_caches pruner outside it (delaying the pruner would only slow pruning)

# Each worker is a constant program run as `python3 -c CODE ARG...`: paths
# travel as argv, never spliced into code or a shell. Each prints "ready",
# loops until SIGTERM, then prints one JSON line of what it did.
_WORKER_PRELUDE = r"""
import json, os, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
def done(d):
    sys.stdout.write(json.dumps(d) + "\n"); sys.stdout.flush()
"""

CP_LOOP = _WORKER_PRELUDE + r"""
import shutil, subprocess
src, dst = sys.argv[1], sys.argv[2]
print("ready", flush=True)
copies = errors = 0
while not stop:
    r = subprocess.run(["cp", "-a", src, dst], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    copies += 1
    errors += r.returncode != 0
    shutil.rmtree(dst, ignore_errors=True)
done({"worker": "cp", "src": src, "copies": copies, "cp_errors": errors})
"""

PRUNE_LOOP = _WORKER_PRELUDE + r"""
gap = float(sys.argv[1])
print("ready", flush=True)
drops = 0
while not stop:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    drops += 1
    if gap:
        time.sleep(gap)
done({"worker": "drop_caches", "passes": drops})
"""

# Few files, looked up again and again: a drop_caches pass kills every unused
# dentry, so a file's dentry lives from its re-creation (the next miss) to the
# next pass. With a handful of files the stat loop comes back to each well
# inside that life and finds it in RCU mode; a pass then meets one of its
# lookups inside the window about as often as the loop spends time there
# (its duty cycle: stats/s x window). A long list is looked up too rarely:
# every lookup then misses the dcache.
STAT_FILES = 2
PRUNE_GAP_S = 0.02
# The stat loop (vfstrace/statloop.c) is offered the same pace in both
# phases: one lookup per widening delay, the most a loop holding each of its
# lookups that long could sustain. Unwidened it keeps that pace; widened it
# falls short of it (retries, misses and the guest's other work take their
# share), so the factor between the phases understates the widening rather
# than inflating it. Under emulation (~20 drop_caches passes/s) this gave the
# unwidened phase a few overlaps per minute.
STAT_DUTY = 1.0
MAX_STAT_RATE = 20_000
# The loop looks names up with faccessat(F_OK): the same RCU walk and d_seq
# re-check as stat(), minus ->getattr, which on the VM harness's 9p root is
# a round trip to the host per call and held a stat() loop to ~300/s under
# emulation, too few lookups for the unwidened phase to meet any prune.
STAT_OP = "access"


def stat_rate_for(delay_ns: int) -> float:
    """Lookups per second for a widening of ``delay_ns``: STAT_DUTY of each second held."""
    return float(min(MAX_STAT_RATE, round(STAT_DUTY * 1e9 / max(1, int(delay_ns)))))


def _stat_dir() -> str:
    """A directory of plain files on a filesystem whose dentries can be pruned.

    The host's read-only tree (in the VM: overlayfs over 9p); tmpfs would not
    do, its dentries are pinned.
    """
    for d in ("/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/share/doc"):
        try:
            if sum(1 for e in os.scandir(d) if e.is_file(follow_symlinks=False)) >= 16:
                return d
        except OSError:
            continue
    raise VfstraceError("no directory with plain files to stat (looked in /usr/bin, /usr/lib)")


def _cp_source() -> str:
    for d in ("/usr/share/doc/python3.11", "/usr/share/doc", "/usr/include/linux"):
        if os.path.isdir(d):
            return d
    raise VfstraceError("no source tree for `cp -a` (/usr/share/doc missing)")


class Workload:
    """The selftest's processes; ``stop()`` ends them and returns what each did."""

    def __init__(self, workdir: str, cgroup=None, on_target=None, stat_files: int = STAT_FILES,
                 stat_rate: float = 0.0, stat_argv=None):
        import subprocess
        import sys

        from vfstrace import statloop

        self.procs = []
        self.notice = ""
        py = sys.executable
        if stat_argv is None:
            stat_argv, self.notice = statloop.command(_stat_dir(), stat_files, stat_rate, STAT_OP)
        # (name, argv, widened): only the stat loop is held; `cp -a` and the
        # pruner keep their pace (on a 2-CPU guest a held cp would take the
        # CPU the pruner needs).
        workers = [
            ("stat", list(stat_argv), True),
            ("cp", [py, "-c", CP_LOOP, _cp_source(), os.path.join(workdir, "cp-dst")], False),
        ]
        try:
            for name, argv, widened in workers:
                p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self.procs.append((name, p))
                if widened and cgroup is not None:
                    cgroup.add(p.pid)
                if widened and on_target is not None:
                    on_target(p.pid)
            p = subprocess.Popen([py, "-c", PRUNE_LOOP, str(PRUNE_GAP_S)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
            self.procs.append(("drop_caches", p))
            for name, p in self.procs:
                line = p.stdout.readline()
                if line.strip() != "ready":
                    raise VfstraceError(f"selftest workload {name} did not start (exit {p.poll()})")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict:
        import signal
        import subprocess

        out = {}
        for name, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs:
            try:
                rest, _ = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                rest, _ = p.communicate()
            for line in (rest or "").splitlines():
                try:
                    out[name] = json.loads(line)
                except ValueError:
                    continue
        self.procs = []
        return out


# --------------------------------------------------------------------------
# the live run


POLL_MS = 100


def _drain(tracer, frames, until_ns=None, budget_s: float = 5.0):
    t_end = time.monotonic() + budget_s
    while time.monotonic() < t_end:
        df = tracer.poll(0)
        if not len(df):
            break
        frames.append(df)


def _counter_delta(a: dict, b: dict) -> dict:
    return {k: int(b.get(k, 0)) - int(a.get(k, 0)) for k in b}


def run_live(seconds: float = DEFAULT_SECONDS, widen_ns: int | None = None, kernel_only: bool = False,
             output=None, min_overlaps: int = MIN_OVERLAPS, phases=("baseline", "widened"), say=None,
             stat_rate: float | None = None) -> Result:
    """Run the workload on this kernel, without and with widening, and judge it.

    ``stat_rate``: stats/s of the stat loop in both phases (None: paced for
    the widening, :func:`stat_rate_for`; 0: flat out).
    """
    import shutil
    import tempfile

    import pandas as pd

    from tracers import make_tracer
    from tracers.widen import DEFAULT_DELAY_NS, Widener, WorkloadCgroup
    from vfstrace import statloop
    from vfstrace.doctor import choose_tier
    from vfstrace.options import TraceOptions

    say = say or (lambda msg: click.echo(f"selftest: {msg}", err=True))
    if seconds <= 0:
        raise VfstraceError("-d/--duration must be positive")
    choice = choose_tier("auto")
    if choice.tier not in ("kprobe", "fentry"):
        raise TierUnavailable(
            f"selftest needs kprobes (widening holds the walk inside the dcache lookup); "
            f"{choice.kernel_release} offers only the {choice.tier} tier ({choice.reason})"
        )
    detector = None if kernel_only else detector_check()
    delay = int(widen_ns or DEFAULT_DELAY_NS)
    rate = stat_rate_for(delay) if stat_rate is None else float(stat_rate)
    cg = WorkloadCgroup("vfstrace-selftest")
    workdir = tempfile.mkdtemp(prefix="vfstrace-selftest-")
    tracer = widener = work = None
    frames: list = []
    marks = []
    notes: list = []
    try:
        widener = Widener(choice, delay, cgroup_id=cg.id or 0)
        tracer = make_tracer(choice, TraceOptions(ring_pages=1024))
        say(f"compiling and attaching the {choice.tier} tracer on {choice.kernel_release}")
        try:
            tracer.load()
        except VfstraceError as e:
            # fentry programs can be refused where kprobes on the same
            # functions load (the verifier checks BTF argument types for
            # fentry only); widening needs kprobes anyway, so judge with them.
            if choice.tier != "fentry":
                raise
            first = str(e).splitlines()[0]
            tracer.close()
            choice = choose_tier("kprobe")
            notes.append(f"fentry tier refused ({first[:160]}); traced with kprobes instead")
            say("fentry refused; compiling and attaching the kprobe tracer instead")
            tracer = make_tracer(choice, TraceOptions(ring_pages=1024))
            tracer.load()
        if "widened" in phases:
            say(f"compiling the widening program ({widener.how}, {delay / 1000:g} us)")
            if widener.mode_note:
                say(widener.mode_note)
            try:
                widener.compile()
            except VfstraceError as e:
                if widener.mode != "fentry":
                    raise
                notes.append(f"fexit widening refused ({str(e)[:160]}); kretprobe used instead")
                say("fexit widening refused; compiling it as a kretprobe")
                widener = Widener(choice, delay, cgroup_id=cg.id or 0, mode="kprobe")
                widener.compile()
            # attached disarmed for every phase: the phases differ in the
            # delay alone, not in the probe's own cost
            widener.attach(arm=False)
        stat_argv, notice = statloop.command(_stat_dir(), STAT_FILES, rate, STAT_OP)
        if notice:
            say(notice)
        workload = {}
        for name in phases:
            if name == "widened":
                widener.arm(True)
            # A fresh workload per phase: each phase's stat count is its own.
            work = Workload(workdir, cgroup=cg, on_target=widener.add_tgid, stat_argv=stat_argv)
            c0, w0 = tracer.counters(), widener.stats().to_dict() if name == "widened" else None
            t0 = time.monotonic_ns()
            say(f"phase {name}: {seconds:g} s")
            while time.monotonic_ns() - t0 < seconds * 1e9:
                df = tracer.poll(POLL_MS)
                if len(df):
                    frames.append(df)
            t1 = time.monotonic_ns()
            c1 = tracer.counters()
            wst = None
            if name == "widened":
                w1 = widener.stats().to_dict()
                wst = dict(w1)
                for k in ("target_lookups", "delayed", "delay_ns_total", "capped", "no_dentry", "unarmed"):
                    wst[k] = w1[k] - w0[k]
                wst["mean_delay_ns"] = round(wst["delay_ns_total"] / wst["delayed"], 1) if wst["delayed"] else 0.0
            workload[name] = work.stop()
            work = None
            if name == "widened":
                widener.arm(False)
            _drain(tracer, frames)
            marks.append({"name": name, "start_ns": t0, "end_ns": t1, "counters": _counter_delta(c0, c1),
                          "widen": wst, "workload": workload[name]})
        _drain(tracer, frames)
        probes = tracer.attached()
    finally:
        if work is not None:
            work.stop()
        if widener is not None:
            widener.close()
        if tracer is not None:
            tracer.close()
        cg.close()
        shutil.rmtree(workdir, ignore_errors=True)

    from vfstrace.events import empty_frame

    df = pd.concat(frames, ignore_index=True) if frames else empty_frame()
    df["event_id"] = np.arange(1, len(df) + 1, dtype=np.uint64)
    if output:  # written before judging: the events are kept whatever the judge says
        from vfstrace.store import save

        meta = {"kernel_release": choice.kernel_release, "tier": choice.tier, "probes": probes,
                "workload": "vfstrace selftest " + json.dumps(workload, default=str),
                "selftest": {"phases": marks}}
        save(df, output, meta)
    ts = df["ts_ns"].to_numpy(dtype=np.uint64)
    out_phases = []
    for m in marks:
        sel = df[(ts >= m["start_ns"]) & (ts < m["end_ns"])]
        ph = judge_events(sel, name=m["name"], duration_s=(m["end_ns"] - m["start_ns"]) / 1e9, counters=m["counters"])
        ph.widen, ph.workload = m["widen"], m["workload"]
        ph.lost = max(ph.lost, int(m["counters"].get("lost", 0)))
        out_phases.append(ph)
    verdict, reason = verdict_of(out_phases, min_overlaps)
    res = Result(verdict, reason, choice.kernel_release, choice.tier, probes, out_phases, "live",
                 detector=detector, factor=widening_factor(out_phases))
    res.notes.extend(notes)
    for m in marks:
        res.notes.append(f"workload ({m['name']}): " + describe_workload(m["workload"]))
    if notice:
        res.notes.append(notice)
    if output:
        res.notes.append(f"trace written to {output}")
    return res


def describe_workload(w: dict) -> str:
    parts = []
    if "stat" in w:
        st = w["stat"]
        parts.append(f"{st['stats']:,} {st.get('op', 'stat')}() of {st['files']} files in {st['dir']} "
                     f"({st.get('stats_per_s', 0):,.0f}/s, {st.get('impl', 'python')} loop"
                     + (f", paced at {st['rate']:,.0f}/s)" if st.get("rate") else ", unpaced)"))
    if "cp" in w:
        parts.append(f"{w['cp']['copies']} cp -a of {w['cp']['src']} ({w['cp']['cp_errors']} failed)")
    if "drop_caches" in w:
        parts.append(f"{w['drop_caches']['passes']:,} drop_caches passes")
    return "; ".join(parts) or "no worker reported"


@click.command("selftest")
@click.option("--kernel-only", is_flag=True, help="Skip the correlator's own check on simulated kernels.")
@click.option("-d", "--duration", "seconds", type=float, default=DEFAULT_SECONDS, show_default=True,
              help="Seconds per phase (without and with widening).")
@click.option("--widen", "widen", default="200us", show_default=True,
              help="Hold each RCU lookup of the workload this long (1us..1ms).")
@click.option("--stat-rate", type=click.FloatRange(0), default=None,
              help="stat() calls per second of the workload's loop in both phases "
                   "(default: one per widening delay; 0: flat out).")
@click.option("--no-baseline", is_flag=True, help="Run only the widened phase.")
@click.option("--from-trace", "trace", type=click.Path(), help="Judge a recorded or simulated trace instead.")
@click.option("-o", "--output", type=click.Path(), help="Keep the recorded events as a trace (.vft dir or .jsonl).")
@click.option("--min-overlaps", type=click.IntRange(1), default=MIN_OVERLAPS, show_default=True,
              help="Overlaps needed before a clean run counts as PASS.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def selftest_cmd(kernel_only, seconds, widen, stat_rate, no_baseline, trace, output, min_overlaps, as_json):
    """Tell whether this kernel re-checks d_seq when a prune hits an RCU lookup.

    \b
    Runs a stat() loop, `cp -a` and drop_caches pressure under the kprobe
    tier, once as is and once with the race window widened, and prints:
    lookups, prunes, lookups that overlapped a prune of the same dentry,
    how many the kernel re-checked and retried (retried) or trusted without
    a re-check (race), and overlaps per minute side by side.

    \b
    Exit status: 0 PASS (overlaps seen, every one retried), 1 FAIL (a race;
    the racing lookups are cited), 2 INCONCLUSIVE (too few overlaps: it
    says how long to run), 4 no kprobe tier on this kernel.

    \b
    EXAMPLES
      vfstrace selftest                      # 30 s without + 30 s with widening
      vfstrace selftest -d 60 --widen 500us
      vfstrace selftest --from-trace buggy.jsonl   # judge a recorded/simulated trace
    """
    from tracers.widen import parse_delay

    if trace:
        res = from_trace(trace, min_overlaps)
    else:
        if os.geteuid() != 0:
            from vfstrace.errors import PrivilegeError

            raise PrivilegeError("selftest on the live kernel needs root (or judge a trace with --from-trace)")
        phases = ("widened",) if no_baseline else ("baseline", "widened")
        res = run_live(seconds, parse_delay(widen), kernel_only, output, min_overlaps, phases,
                       stat_rate=stat_rate)
    _emit(res, as_json)
    return res.exit_code
