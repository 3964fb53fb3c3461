"""Judging events: phases, overlaps, and the PASS/FAIL/INCONCLUSIVE verdict.

An *overlap* is a lookup whose own dentry (same incarnation) was being
pruned while the lookup ran: the correlator's ``overlap`` column. Only those
test the kernel's re-check. A lookup the kernel retried (-ECHILD) with no
prune of its dentry in sight is the kernel's own retry, counted apart
(``retried_no_prune``) and never towards a PASS: a trace full of unrelated
-ECHILD walks and not one prune proves nothing. So: FAIL on any race; PASS
only on enough lookups retried with a prune seen; INCONCLUSIVE otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from vfstrace.correlate import correlate
from vfstrace.correlate.batch import unplaced_losses
from vfstrace.errors import VfstraceError
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
    retried_no_prune: int = 0
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


def _int(x) -> int:
    try:
        return int(x)
    except (TypeError, ValueError):
        return 0


def judge_events(df, name: str = "trace", duration_s: float | None = None, counters: dict | None = None,
                 verdicts=None, unplaced_lost: int = 0) -> Phase:
    """Correlate one phase's events and count what a selftest reports.

    ``counters`` are the kernel-side totals (tracers.kprobe COUNTERS), which
    see every lookup and prune even when only the interesting ones crossed
    to user space; without them the counts come from the events.
    ``unplaced_lost``: lost events of the whole trace that no LOST record
    places (a phase is a slice: its own LOST rows cannot tell).
    """
    if duration_s is None:
        ts = df["ts_ns"].to_numpy(dtype=np.uint64) if len(df) else np.zeros(0, dtype=np.uint64)
        duration_s = float(ts.max() - ts.min()) / 1e9 if len(ts) > 1 else 0.0
    kind = df["kind"].to_numpy() if len(df) else np.zeros(0, dtype=np.uint8)
    lookups = int(np.isin(kind, _LOOKUP_RETURNS).sum())
    prunes = int((kind == int(Kind.PRUNE)).sum())
    lost = int(df.loc[kind == int(Kind.LOST), "ret"].sum()) if len(df) else 0
    v = correlate(df, unplaced_lost=unplaced_lost) if verdicts is None else verdicts
    counts = v["verdict"].value_counts().to_dict() if len(v) else {}
    ph = _phase(name, duration_s, counters, lookups, prunes, lost, counts, _retried_no_prune(v))
    if ph.race:
        ph.races = _race_rows(df, v)
    return ph


def _retried_no_prune(v) -> int:
    """Retried verdicts with no prune seen (the kernel's own retries, not overlaps)."""
    if v is None or not len(v):
        return 0
    retried = v["verdict"].to_numpy() == "retried"
    with_prune = v["overlap"].to_numpy(dtype=bool) if "overlap" in v.columns else np.zeros(len(v), dtype=bool)
    return int((retried & ~with_prune).sum())


def _phase(name: str, duration_s: float, counters: dict | None, lookups: int, prunes: int, lost: int,
           counts: dict, retried_no_prune: int) -> Phase:
    """One Phase from what its events gave, whole or part by part. Lookups and
    prunes come from the kernel-side ``counters`` when there are any (they
    see every lookup and prune), else from the events."""
    if counters:
        lookups = _int(counters.get("lookup")) or _int(counters.get("walk"))
        prunes = _int(counters.get("prune"))
    ph = Phase(name=name, duration_s=round(float(duration_s), 3), lookups=lookups, prunes=prunes,
               retried=int(counts.get("retried", 0)), race=int(counts.get("race", 0)),
               uncertain=int(counts.get("uncertain", 0)), lost=lost)
    ph.retried_no_prune = retried_no_prune
    ph.overlaps = ph.retried - ph.retried_no_prune + ph.race
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
    retried = sum(p.retried - p.retried_no_prune for p in phases)
    unrelated = sum(p.retried_no_prune for p in phases)
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
        extra = (f" ({unrelated} -ECHILD retr{'y' if unrelated == 1 else 'ies'} with no prune of their dentry "
                 "seen do not count)") if unrelated else ""
        return INCONCLUSIVE, (f"only {overlaps} lookup(s) overlapped a prune of the same dentry in "
                              f"{seconds:.0f} s (need {min_overlaps}){extra}; {how}")
    if uncertain > MAX_UNCERTAIN_SHARE * (overlaps + uncertain):
        return INCONCLUSIVE, (f"{uncertain} lookups are uncertain (events lost) against {overlaps} overlaps; "
                              "enlarge the ring (--ring-pages) or shorten the run")
    return PASS, (f"{overlaps} lookups overlapped a prune of the same dentry and the kernel re-checked "
                  f"d_seq and retried every one ({retried} retried with the prune seen, 0 race; "
                  f"{unrelated} other -ECHILD retries not counted)")


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
    from vfstrace.workload.simulate import simulate  # here: the simulator is large and only this check runs it

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
    """Judge a recorded or simulated trace. A trace recorded by selftest keeps its phases.

    A trace directory is judged part by part (judge_parts(): memory flat in
    its size); a JSON Lines trace, a single Parquet part, or one whose ids do
    not rise in file order is loaded whole (judge_frame()), with the same
    Result.
    """
    from vfstrace.report.analyze import first_pass

    first = first_pass(path)
    if first is None:
        from vfstrace.store import load

        meta, phases = judge_frame(load(path))
    else:
        meta, phases = first.meta, judge_parts(first)
    return result_of(meta, phases, path, min_overlaps)


def result_of(meta: dict, phases: list[Phase], path, min_overlaps: int = MIN_OVERLAPS) -> Result:
    """The Result of a trace's judged phases (its metadata names the kernel, tier and probes)."""
    verdict, reason = verdict_of(phases, min_overlaps)
    return Result(verdict, reason, str(meta.get("kernel_release") or "?"), str(meta.get("tier") or "?"),
                  list(meta.get("probes") or []), phases, str(path), factor=widening_factor(phases))


def judge_frame(df) -> tuple[dict, list[Phase]]:
    """The phases of a trace loaded whole: its metadata and one Phase a phase (or one for the trace)."""
    meta = df.attrs.get("meta") or {}
    unplaced = unplaced_losses(df)
    st = meta.get("selftest") or {}
    phases = []
    if st.get("phases"):
        ts = df["ts_ns"].to_numpy(dtype=np.uint64)
        for p in st["phases"]:
            sel = df[(ts >= int(p["start_ns"])) & (ts < int(p["end_ns"]))]
            ph = judge_events(sel, name=p["name"], duration_s=(int(p["end_ns"]) - int(p["start_ns"])) / 1e9,
                              counters=p.get("counters"), unplaced_lost=unplaced)
            ph.widen, ph.workload = p.get("widen"), p.get("workload")
            phases.append(ph)
    else:
        phases.append(judge_events(df, name="trace", counters=meta.get("kernel_counters"), unplaced_lost=unplaced))
    return meta, phases


class _PhaseParts:
    """What judge_events() takes from one phase's events, added part by part (memory: a correlator's state).

    Why these and no more: a Phase needs the lookups, prunes and lost events
    of its rows, the verdicts by kind (records, as value_counts() counts
    them), the retried ones with no prune seen, and the first racing
    lookups (by event id) with their events.
    """

    def __init__(self, first, name: str, start_ns=None, end_ns=None, counters=None):
        self.name, self.start_ns, self.end_ns, self.counters = name, start_ns, end_ns, counters
        self.corr = first.correlator()
        self.lookups = self.prunes = self.lost = 0
        self.counts: dict[str, int] = {}
        self.retried_no_prune = 0
        self.races = None

    def feed(self, t, ts: np.ndarray) -> None:
        import pyarrow as pa

        if self.start_ns is not None:
            m = (ts >= self.start_ns) & (ts < self.end_ns)
            if not m.all():
                t = t.filter(pa.array(m))
        kind = t.column("kind").to_numpy()
        if not self.counters:
            self.lookups += int(np.isin(kind, _LOOKUP_RETURNS).sum())
            self.prunes += int((kind == int(Kind.PRUNE)).sum())
        lost = kind == int(Kind.LOST)
        if lost.any():
            self.lost += int(t.column("ret").to_numpy()[lost].astype(np.int64).sum())
        self._verdicts(self.corr.feed(t))

    def _verdicts(self, v) -> None:
        if v is None or not len(v):
            return
        for k, c in v["verdict"].value_counts().items():
            self.counts[k] = self.counts.get(k, 0) + int(c)
        self.retried_no_prune += _retried_no_prune(v)
        race = v[v["verdict"] == "race"]
        if len(race):
            import pandas as pd

            both = race if self.races is None else pd.concat([self.races, race], ignore_index=True)
            self.races = both.sort_values("event_id", kind="stable").head(MAX_RACES_SHOWN).reset_index(drop=True)

    def phase(self, first, duration_s: float) -> Phase:
        self._verdicts(self.corr.finish())
        ph = _phase(self.name, duration_s, self.counters, self.lookups, self.prunes, self.lost, self.counts,
                    self.retried_no_prune)
        if ph.race:
            ph.races = _race_rows(_events_by_id(first, self.races["event_id"].to_numpy()), self.races)
        return ph


def _events_by_id(first, ids: np.ndarray):
    """The events with these ids (a DataFrame), read from the parts whose id span holds them."""
    import pyarrow as pa

    from vfstrace.correlate.parts import to_frame

    cols = ("ts_ns", "tid", "comm", "dentry", "name")
    got = []
    for t in first.parts(cols, first.holding(ids)):
        m = np.isin(t.column("event_id").to_numpy(), ids)
        if m.any():
            got.append(t.filter(pa.array(m)))
    if not got:
        from vfstrace.events import ARROW_SCHEMA

        got = [ARROW_SCHEMA.empty_table().select(["event_id", *cols])]
    return to_frame(pa.concat_tables(got))


def judge_parts(first) -> list[Phase]:
    """judge_frame()'s phases of a trace directory, read part by part after its first pass (``first``).

    One pass over the parts feeds each phase its rows (ts in [start, end),
    as judge_frame() selects them) through a part-by-part correlator of its
    own, which judges them as correlate() judges the phase's slice.
    """
    from vfstrace.correlate.parts import COLUMNS

    meta = first.meta
    st = meta.get("selftest") or {}
    if st.get("phases"):
        judges = [_PhaseParts(first, p["name"], int(p["start_ns"]), int(p["end_ns"]), p.get("counters"))
                  for p in st["phases"]]
    else:
        judges = [_PhaseParts(first, "trace", counters=meta.get("kernel_counters"))]
    for t in first.parts(COLUMNS):
        ts = t.column("ts_ns").to_numpy()
        for j in judges:
            j.feed(t, ts)
    if not st.get("phases"):
        # judge_events()'s own duration: the trace's stamps, first to last (zeros included).
        span = (first.ts_hi - first.ts_lo) / 1e9 if first.events > 1 else 0.0
        return [judges[0].phase(first, span)]
    phases = []
    for j, p in zip(judges, st["phases"]):
        ph = j.phase(first, (int(p["end_ns"]) - int(p["start_ns"])) / 1e9)
        ph.widen, ph.workload = p.get("widen"), p.get("workload")
        phases.append(ph)
    return phases
