"""The batch correlator: whole columns at once, for `analyze` and `report`.

The rules and the verdicts are described in vfstrace/correlate/__init__.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from vfstrace.correlate.syscall import (
    ACTIVITY_KINDS,
    judge_syscalls,
    judged_syscalls,
    neighbours,
    presences,
)
from vfstrace.correlate.walk import (
    BOUNDARY_KINDS,
    PRUNE_KINDS,
    WALK_KINDS,
    judge_walks,
    walk_segments,
)
from vfstrace.errors import VfstraceError
from vfstrace.events import Kind

# ``overlap``: a prune of the walk's own dentry (same incarnation) overlapped
# it -- what a selftest counts; docs/verdicts.md has the table of verdicts.
# ``count``: how many failed lookups the verdict stands for: 1, but for a
# record the kernel folded identical repeats into (events.Flag.COALESCED),
# whose repeats share its verdict; totals of judged lookups sum it.
VERDICT_COLUMNS = ["event_id", "verdict", "ts_ns", "tid", "pid", "comm", "dentry", "name", "path", "evidence", "reason",
                   "overlap", "count"]
VERDICTS = ("race", "retried", "explained", "absent", "uncertain", "transient")
# Verdicts whose events deserve a look, most alarming first: race, uncertain
# and transient may be the bug; retried is the fixed kernel's re-check seen
# at work (the positive control). watch prints them as they happen, analyze
# lists them and report draws their timelines.
SUSPECT_VERDICTS = ("race", "uncertain", "transient", "retried")

_EVIDENCE_KINDS = np.concatenate([PRUNE_KINDS, BOUNDARY_KINDS, ACTIVITY_KINDS,
                                  np.array([Kind.NS_OP, Kind.LOST, Kind.RECHECK], dtype=np.uint8)])
_NEEDED = ("event_id", "ts_ns", "tid", "pid", "comm", "kind", "op", "dentry", "parent", "ino", "seq", "name", "path",
           "path2", "ret", "flags")


@dataclass(frozen=True)
class Windows:
    """How far apart (ns) events may be and still bear on one verdict."""

    skew_ns: int = 20_000                   # clock skew between CPUs tolerated on every comparison
    max_walk_ns: int = 1_000_000            # a walk's events older than this before its return are ignored
    walk_ns: int = 100_000                  # assumed walk length when nothing before its return was seen
    explain_before_ns: int = 1_000_000      # a namespace op this long before a walk still explains it
    explain_after_ns: int = 100_000         # ... or this long after (syscall exit comes late)
    loss_horizon_ns: int = 1_000_000        # a LOST record covers drops this long before its stamp
    syscall_window_ns: int = 1_000_000_000  # syscall level: "just before / just after"
    activity_ns: int = 10_000_000           # syscall level: dentry frees/shrinks this close count

    def check(self) -> "Windows":
        for k, v in asdict(self).items():
            if not isinstance(v, (int, np.integer)) or v < 0:
                raise VfstraceError(f"correlator window {k} must be a non-negative integer (ns), got {v!r}")
        if self.walk_ns > self.max_walk_ns:
            raise VfstraceError("correlator window walk_ns must not exceed max_walk_ns")
        return self

    @property
    def walk_forward_ns(self) -> int:
        return max(self.skew_ns, self.explain_after_ns, self.skew_ns + self.loss_horizon_ns)

    @property
    def reach_ns(self) -> int:
        """How far apart an event and a verdict it could change may lie: every window added up.

        Wider than any one verdict's reach (a syscall's window with its
        explanations, a walk's with its prunes and losses), so an event
        misplaced in time can change no verdict further from it than this.
        """
        return sum(asdict(self).values())


def empty_verdicts() -> pd.DataFrame:
    """No verdicts, in the verdict columns' dtypes: a copy of one frame built once (every part without a final
    verdict returns it)."""
    return _EMPTY.copy()


def _empty_verdicts() -> pd.DataFrame:
    return pd.DataFrame({
        "event_id": np.zeros(0, np.uint64), "verdict": np.zeros(0, object), "ts_ns": np.zeros(0, np.uint64),
        "tid": np.zeros(0, np.uint32), "pid": np.zeros(0, np.uint32), "comm": np.zeros(0, object),
        "dentry": np.zeros(0, np.uint64), "name": np.zeros(0, object), "path": np.zeros(0, object),
        "evidence": np.zeros(0, object), "reason": np.zeros(0, object), "overlap": np.zeros(0, bool),
        "count": np.zeros(0, np.uint32),
    })


_EMPTY = _empty_verdicts()


def _prepare(df) -> pd.DataFrame:
    """Check the columns, fill optional ones, sort by event_id."""
    if not isinstance(df, pd.DataFrame):
        raise VfstraceError("the correlator takes a pandas DataFrame of events")
    missing = [c for c in ("event_id", "ts_ns", "kind") if c not in df.columns]
    if missing:
        raise VfstraceError(f"events lack column(s) {', '.join(missing)}; expected the vfstrace event schema")
    df = df.copy() if any(c not in df.columns for c in _NEEDED) else df
    n = len(df)
    for c in _NEEDED:
        if c not in df.columns:
            df[c] = np.full(n, "", dtype=object) if c in ("comm", "name", "path", "path2") else np.zeros(n, np.int64)
    try:
        # name and path are compared over whole columns; comm and path2 only
        # on a few rows, where a missing value is harmless.
        for c in ("name", "path"):
            col = df[c]
            if col.isna().any():
                df[c] = col.fillna("")
        num = {c: df[c].to_numpy() for c in _NEEDED if c not in ("comm", "name", "path", "path2")}
        for c, v in num.items():
            if v.dtype.kind not in "iu":
                raise VfstraceError(f"events column {c} is not integer ({v.dtype})")
    except (TypeError, ValueError) as e:
        raise VfstraceError(f"events are not in the vfstrace schema: {e}") from None
    ids = df["event_id"].to_numpy()
    if n > 1 and not (ids[1:] > ids[:-1]).all():
        df = df.sort_values("event_id", kind="stable")
        ids = df["event_id"].to_numpy()
        if (ids[1:] == ids[:-1]).any():
            raise VfstraceError("events have duplicate event_id values")
    return df.reset_index(drop=True)


def _finish(parts) -> pd.DataFrame:
    parts = [p for p in parts if p is not None and len(p)]
    if not parts:
        return empty_verdicts()
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    out = out.sort_values("event_id", kind="stable").reset_index(drop=True)[VERDICT_COLUMNS]
    for c in ("verdict", "comm", "name", "path", "reason"):
        if out[c].dtype != object:
            out[c] = out[c].astype(object)  # one dtype whatever pandas infers when concatenating
    return out


def count_verdicts(counts: dict[str, int], vdf) -> None:
    """Add a frame of verdicts to ``counts`` (verdict -> judged lookups), in
    first-seen order. A record the kernel folded stands for ``count``
    lookups (at least 1). Whole columns at once: in a storm every failure is
    a verdict, and a Python dict per verdict would cost the live stream
    more than all the rest of its work on that row."""
    if not len(vdf):
        return
    names = vdf["verdict"].astype(str).to_numpy(dtype=object)
    if "count" in vdf:
        n = np.maximum(1, pd.to_numeric(vdf["count"], errors="coerce").fillna(1).to_numpy().astype(np.int64))
    else:
        n = np.ones(len(vdf), dtype=np.int64)
    for name, k in pd.Series(n).groupby(names, sort=False).sum().items():
        counts[name] = counts.get(name, 0) + int(k)


def unplaced_losses(df, lost_total=None) -> int:
    """Lost events the trace reports (metadata ``lost_total``) beyond what its LOST records place in time."""
    if lost_total is None:
        meta = getattr(df, "attrs", {}).get("meta") or {}
        lost_total = meta.get("lost_total")
    if "kind" not in df.columns:
        return unplaced(lost_total, 0)
    placed = int(df.loc[df["kind"].to_numpy() == Kind.LOST, "ret"].clip(lower=0).sum()) if "ret" in df.columns else 0
    return unplaced(lost_total, placed)


def unplaced(lost_total, placed: int) -> int:
    """``lost_total`` (trace metadata) less the ``placed`` losses LOST records stamp, never below 0."""
    try:
        total = int(lost_total or 0)
    except (TypeError, ValueError):
        raise VfstraceError(f"trace metadata lost_total is not a number: {lost_total!r}") from None
    return max(0, total - placed) if total > 0 else 0


def correlate(df: pd.DataFrame, windows: Windows | None = None, *, unplaced_lost: int | None = None,
              **kw) -> pd.DataFrame:
    """Verdicts for every judged event in ``df`` (see the module docstring), sorted by event_id.

    ``windows`` (or keyword overrides of its fields, e.g. ``skew_ns=50_000``)
    sets the time windows. ``unplaced_lost`` is the number of lost events no
    LOST record places in time; by default, what ``df.attrs["meta"]``
    reports beyond the LOST records (a trace whose metadata counted drops the
    recorder could not stamp): then no verdict may rest on a window being
    complete (``race``/``absent``/``transient`` become ``uncertain``).
    """
    win = (windows or Windows())
    if kw:
        win = Windows(**{**asdict(win), **kw})
    win.check()
    if unplaced_lost is None:
        unplaced_lost = unplaced_losses(df) if isinstance(df, pd.DataFrame) else 0
    df = _prepare(df)
    kind = df["kind"].to_numpy()
    W = df.loc[np.isin(kind, WALK_KINDS)]
    E = df.loc[np.isin(kind, _EVIDENCE_KINDS)]
    J, _ = walk_segments(W.reset_index(drop=True), win)
    vw = judge_walks(J, E, win, unplaced_lost)
    js = judged_syscalls(df)
    vs = None
    if js.any():
        S = neighbours(df.loc[js], presences(df), win)
        vs = judge_syscalls(S, E, win, unplaced_lost)
    return _finish([vw, vs])
