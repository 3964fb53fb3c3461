"""selftest on the running kernel: the workload recorded without and with widening."""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from vfstrace.errors import TierUnavailable, VfstraceError
from vfstrace.selftest.judge import (
    DEFAULT_SECONDS,
    MIN_OVERLAPS,
    Result,
    detector_check,
    judge_events,
    verdict_of,
    widening_factor,
)
from vfstrace.workload.selftest_workers import (
    STAT_FILES,
    STAT_OP,
    Workload,
    _stat_dir,
    stat_rate_for,
)

log = logging.getLogger("vfstrace.selftest")

# --------------------------------------------------------------------------
# the live run


POLL_MS = 100


def _drain(rec, frames, budget_s: float = 5.0):
    t_end = time.monotonic() + budget_s
    while time.monotonic() < t_end:
        df = rec.poll(0)
        if not len(df):
            break
        frames.append(df)


def _counter_delta(a: dict, b: dict) -> dict:
    return {k: int(b.get(k, 0)) - int(a.get(k, 0)) for k in b}


def run_live(seconds: float = DEFAULT_SECONDS, widen_ns: int | None = None, kernel_only: bool = False,
             output=None, min_overlaps: int = MIN_OVERLAPS, phases=("baseline", "widened"), say=None,
             stat_rate: float | None = None, ring_pages: int = 1024) -> Result:
    """Run the workload on this kernel, without and with widening, and judge it.

    ``stat_rate``: stats/s of the stat loop in both phases (None: paced for
    the widening, :func:`stat_rate_for`; 0: flat out).
    """
    import shutil
    import tempfile

    import pandas as pd

    from tracers import make_tracer
    from tracers.widen import DEFAULT_DELAY_NS, Widener, WorkloadCgroup
    from vfstrace.kernel.doctor import choose_tier
    from vfstrace.options import TraceOptions
    from vfstrace.recorder import Recorder
    from vfstrace.workload import statloop

    say = say or (lambda msg: log.info(f"selftest: {msg}"))
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
        tracer = make_tracer(choice, TraceOptions(ring_pages=ring_pages))
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
            tracer = make_tracer(choice, TraceOptions(ring_pages=ring_pages))
            tracer.load()
        # The stream's one owner: numbers events and turns losses into LOST rows once.
        rec = Recorder(tracer)
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
                df = rec.poll(POLL_MS)
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
            _drain(rec, frames)
            marks.append({"name": name, "start_ns": t0, "end_ns": t1, "counters": _counter_delta(c0, c1),
                          "widen": wst, "workload": workload[name]})
        _drain(rec, frames)
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

    df = pd.concat(frames, ignore_index=True) if frames else empty_frame()  # numbered by the recorder
    if output:  # written before judging: the events are kept whatever the judge says
        from vfstrace.store import save

        meta = {"kernel_release": choice.kernel_release, "tier": choice.tier, "probes": probes,
                "workload": "vfstrace selftest " + json.dumps(workload, default=str),
                "lost_per_cpu": dict(rec.lost_seen),
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
