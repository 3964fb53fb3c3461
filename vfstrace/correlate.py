"""The correlator: one verdict for every failed lookup, batch or streaming.

Given events in the schema of vfstrace/events.py, decide for each walk that
returned -ENOENT (or -ECHILD) whether it raced a prune of its dentry without
a d_seq re-check -- the bug fixed by "vfs: fix race in rcu lookup of pruned
dentry" -- and for each path syscall that returned -ENOENT what the
tracepoint tier can say about it. Two implementations, one set of rules:

* :func:`correlate` (batch, for ``analyze``/``report``): whole columns at once;
* :class:`StreamingCorrelator` (for ``watch``): ``feed()`` chunks as they
  arrive and get back the verdicts that can no longer change; memory holds
  only walks in flight, judged events still waiting for their window to
  close, and evidence young enough to matter (evicted by age).

Both call the same functions (vfstrace/correlate_walk.py,
vfstrace/correlate_syscall.py) on the same rows, so they agree exactly on any
trace whose timestamps are out of order by at most ``skew_ns``; the property
tests check that over simulated traces cut into random chunks.

Verdicts (column ``verdict``)
-----------------------------
Walk level (judged event: ``WALK_RETURN`` with -ENOENT or -ECHILD):
``race``      a prune (PRUNE/UNHASH/IPUT) of the same dentry -- same address,
              no D_FREE/D_ALLOC between, the dentry positive -- overlapped the
              walk, and the walk returned -ENOENT with no d_seq re-check;
``retried``   the walk returned -ECHILD, or a re-check failed (SEQ_CHECK or
              LOOKUP_RETURN -ECHILD) during an overlapping prune: the fixed
              kernel doing its job;
``explained`` an unlink, rmdir or rename removed that name (or that dentry)
              within the window;
``uncertain`` would be ``race`` or ``absent`` but events were lost (LOST) in
              the window: never a guess at ``race``;
``absent``    a plain miss.
Syscall level (judged event: ``PATH_SYSCALL`` -ENOENT, lower resolution):
``transient``, ``explained``, ``uncertain``, ``absent``; see
vfstrace/correlate_syscall.py.

Time windows (:class:`Windows`, all in ns) absorb clock skew between CPUs
(``skew_ns``), walks whose entry the kernel filtered out (``walk_ns``), syscall
exit tracepoints that fire after the namespace change (``explain_after_ns``)
and LOST records stamped when the drop was noticed (``loss_horizon_ns``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from vfstrace.correlate_syscall import (
    ACTIVITY_KINDS,
    final_at,
    judge_syscalls,
    judged_syscalls,
    neighbours,
    successes,
)
from vfstrace.correlate_walk import BOUNDARY_KINDS, PRUNE_KINDS, WALK_KINDS, judge_walks, walk_segments
from vfstrace.errors import VfstraceError
from vfstrace.events import COLUMNS, Kind

VERDICT_COLUMNS = ["event_id", "verdict", "ts_ns", "tid", "pid", "comm", "dentry", "name", "path", "evidence", "reason"]
VERDICTS = ("race", "retried", "explained", "absent", "uncertain", "transient")

_EVIDENCE_KINDS = np.concatenate([PRUNE_KINDS, BOUNDARY_KINDS, ACTIVITY_KINDS,
                                  np.array([Kind.NS_OP, Kind.LOST], dtype=np.uint8)])
_NEEDED = ("event_id", "ts_ns", "tid", "pid", "comm", "kind", "op", "dentry", "parent", "ino", "name", "path",
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


def empty_verdicts() -> pd.DataFrame:
    return pd.DataFrame({
        "event_id": np.zeros(0, np.uint64), "verdict": np.zeros(0, object), "ts_ns": np.zeros(0, np.uint64),
        "tid": np.zeros(0, np.uint32), "pid": np.zeros(0, np.uint32), "comm": np.zeros(0, object),
        "dentry": np.zeros(0, np.uint64), "name": np.zeros(0, object), "path": np.zeros(0, object),
        "evidence": np.zeros(0, object), "reason": np.zeros(0, object),
    })


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


def correlate(df: pd.DataFrame, windows: Windows | None = None, **kw) -> pd.DataFrame:
    """Verdicts for every judged event in ``df`` (see the module docstring), sorted by event_id.

    ``windows`` (or keyword overrides of its fields, e.g. ``skew_ns=50_000``)
    sets the time windows.
    """
    win = (windows or Windows())
    if kw:
        win = Windows(**{**asdict(win), **kw})
    win.check()
    df = _prepare(df)
    kind = df["kind"].to_numpy()
    W = df.loc[np.isin(kind, WALK_KINDS)]
    E = df.loc[np.isin(kind, _EVIDENCE_KINDS)]
    J, _ = walk_segments(W.reset_index(drop=True), win)
    vw = judge_walks(J, E, win)
    js = judged_syscalls(df)
    vs = None
    if js.any():
        S = neighbours(df.loc[js], df.loc[successes(df), ["event_id", "ts_ns", "path"]], win)
        vs = judge_syscalls(S, E, win)
    return _finish([vw, vs])


class StreamingCorrelator:
    """The batch rules applied chunk by chunk, with bounded state.

    ``feed(chunk)`` returns the verdicts that became final; ``finish()`` the
    rest. A verdict is final once the stream's clock (the largest ts seen,
    less ``skew_ns`` and ``reorder_ns``) has passed the end of every window
    it depends on. ``reorder_ns`` is how far out of order the source may
    deliver events (per-CPU buffers drained in turns); it delays verdicts,
    never changes them.
    """

    def __init__(self, windows: Windows | None = None, *, reorder_ns: int = 100_000_000, **kw):
        win = windows or Windows()
        if kw:
            win = Windows(**{**asdict(win), **kw})
        self.win = win.check()
        if reorder_ns < 0:
            raise VfstraceError("reorder_ns must not be negative")
        self.reorder_ns = int(reorder_ns)
        self._open = None  # walk rows of walks still in flight
        self._pending_walks = None  # judged walk summaries waiting for their window
        self._pending_sc = None  # judged syscalls (with before/after) waiting
        self._evidence = None  # evidence rows young enough to matter
        self._succ = None  # successful path syscalls still useful
        self._max_ts = None
        self._events = 0
        self._emitted = 0
        self._evicted = 0
        self._peak = 0
        self._finished = False

    # -- helpers -------------------------------------------------------------------

    @staticmethod
    def _cat(a, b):
        if a is None or not len(a):
            return b.reset_index(drop=True) if b is not None else None
        if b is None or not len(b):
            return a
        return pd.concat([a, b], ignore_index=True)

    def _safe(self, final=False):
        if final:
            return np.iinfo(np.int64).max
        if self._max_ts is None:
            return np.iinfo(np.int64).min
        return self._max_ts - self.win.skew_ns - self.reorder_ns

    def _state_rows(self):
        return sum(len(x) for x in (self._open, self._pending_walks, self._pending_sc, self._evidence, self._succ)
                   if x is not None)

    # -- public API ------------------------------------------------------------------

    def feed(self, chunk: pd.DataFrame) -> pd.DataFrame:
        if self._finished:
            raise VfstraceError("the streaming correlator was already finished")
        if chunk is None or not len(chunk):
            return empty_verdicts()
        df = _prepare(chunk)
        self._events += len(df)
        mx = int(df["ts_ns"].to_numpy().max())
        self._max_ts = mx if self._max_ts is None else max(self._max_ts, mx)
        kind = df["kind"].to_numpy()
        win = self.win
        safe = self._safe()

        # Walks: carried rows of walks in flight + this chunk's walk rows.
        W = self._cat(self._open, df.loc[np.isin(kind, WALK_KINDS)])
        if W is not None and len(W):
            J, open_mask = walk_segments(W, win)
            op = W.loc[open_mask]
            # A walk row this old can no longer be inside any future walk's window.
            old = op["ts_ns"].to_numpy().astype(np.int64) < safe - win.max_walk_ns
            self._evicted += int(old.sum())
            self._open = op.loc[~old].reset_index(drop=True)
            if len(J):
                self._pending_walks = self._cat(self._pending_walks, J)
        self._evidence = self._cat(self._evidence, df.loc[np.isin(kind, _EVIDENCE_KINDS)])
        js = judged_syscalls(df)
        if js.any():
            S = df.loc[js].copy()
            for c in ("before_ts", "before_id", "after_ts", "after_id"):
                S[c] = np.int64(-1)
            S["before_done"] = False
            self._pending_sc = self._cat(self._pending_sc, S)
        sm = successes(df)
        if sm.any():
            self._succ = self._cat(self._succ, df.loc[sm, ["event_id", "ts_ns", "path"]])
        out = self._judge(safe)
        self._trim(safe)
        self._peak = max(self._peak, self._state_rows())
        return out

    def finish(self) -> pd.DataFrame:
        if self._finished:
            return empty_verdicts()
        out = self._judge(self._safe(final=True), final=True)
        self._finished = True
        self._open = self._pending_walks = self._pending_sc = self._evidence = self._succ = None
        return out

    def stats(self) -> dict:
        """State held now and at most: rows and distinct dentries tracked, rows evicted."""
        dentries = set()
        for x in (self._open, self._pending_walks, self._evidence):
            if x is not None and len(x):
                d = x["dentry"].to_numpy()
                dentries.update(np.unique(d[d != 0]).tolist())
        return {
            "events": self._events,
            "verdicts": self._emitted,
            "dentries_tracked": len(dentries),
            "walks_in_flight": 0 if self._open is None else int(self._open["tid"].nunique()),
            "pending_walks": 0 if self._pending_walks is None else len(self._pending_walks),
            "pending_syscalls": 0 if self._pending_sc is None else len(self._pending_sc),
            "evidence_rows": 0 if self._evidence is None else len(self._evidence),
            "state_rows": self._state_rows(),
            "peak_state_rows": self._peak,
            "evicted_rows": self._evicted,
        }

    # -- internals ---------------------------------------------------------------------

    def _judge(self, safe, final=False):
        win = self.win
        E = self._evidence if self._evidence is not None else _prepare(pd.DataFrame({"event_id": np.zeros(0, np.uint64), "ts_ns": np.zeros(0, np.uint64), "kind": np.zeros(0, np.uint8)}))
        parts = []
        pw = self._pending_walks
        if pw is not None and len(pw):
            done = (pw["ts_ns"].to_numpy().astype(np.int64) + win.walk_forward_ns < safe) | final
            if done.any():
                parts.append(judge_walks(pw.loc[done].reset_index(drop=True), E, win))
                self._pending_walks = pw.loc[~done].reset_index(drop=True)
        ps = self._pending_sc
        if ps is not None and len(ps):
            t = ps["ts_ns"].to_numpy().astype(np.int64)
            succ = self._succ if self._succ is not None else pd.DataFrame({"event_id": [], "ts_ns": [], "path": []})
            # Before: fixed once every event earlier than the failure has been seen.
            need_b = (~ps["before_done"].to_numpy()) & ((t < safe) | final)
            if need_b.any():
                nb = neighbours(ps.loc[need_b], succ, win, after=False)
                ps.loc[need_b, "before_ts"] = nb["before_ts"].to_numpy()
                ps.loc[need_b, "before_id"] = nb["before_id"].to_numpy()
                ps.loc[need_b, "before_done"] = True
            # After: the earliest success after the failure seen so far.
            need_a = ps["before_done"].to_numpy() & (ps["before_ts"].to_numpy() != -1)
            if need_a.any():
                na = neighbours(ps.loc[need_a], succ, win, before=False)
                cur_ts, cur_id = ps.loc[need_a, "after_ts"].to_numpy(), ps.loc[need_a, "after_id"].to_numpy()
                new_ts, new_id = na["after_ts"].to_numpy(), na["after_id"].to_numpy()
                better = (new_ts != -1) & ((cur_ts == -1) | (new_ts < cur_ts) | ((new_ts == cur_ts) & (new_id < cur_id)))
                ps.loc[need_a, "after_ts"] = np.where(better, new_ts, cur_ts)
                ps.loc[need_a, "after_id"] = np.where(better, new_id, cur_id)
            bd = ps["before_done"].to_numpy()
            done = bd & ((final_at(ps, win) < safe) | final)
            if done.any():
                parts.append(judge_syscalls(ps.loc[done].reset_index(drop=True), E, win))
            self._pending_sc = ps.loc[~done].reset_index(drop=True)
        out = _finish(parts)
        self._emitted += len(out)
        return out

    def _trim(self, safe):
        """Drop evidence no pending or future verdict can depend on."""
        win = self.win
        horizon = safe
        pw = self._pending_walks
        if pw is not None and len(pw):
            horizon = min(horizon, int(pw["start"].to_numpy().min()))
        walk_lo = min(horizon, safe - win.max_walk_ns) - max(win.skew_ns, win.explain_before_ns) - win.skew_ns
        sc_t = safe
        ps = self._pending_sc
        if ps is not None and len(ps):
            sc_t = min(sc_t, int(ps["ts_ns"].to_numpy().min()))
        sc_ns_lo = sc_t - win.syscall_window_ns - win.explain_before_ns - win.skew_ns
        act_lo = sc_t - win.activity_ns
        E = self._evidence
        if E is not None and len(E):
            k = E["kind"].to_numpy()
            ts = E["ts_ns"].to_numpy().astype(np.int64)
            lo = np.full(len(E), walk_lo, dtype=np.int64)
            ns_or_lost = (k == Kind.NS_OP) | (k == Kind.LOST)
            lo[ns_or_lost] = min(walk_lo, sc_ns_lo)
            lo[np.isin(k, ACTIVITY_KINDS)] = min(walk_lo, act_lo)
            keep = ts >= lo
            # Only the latest activity row before the cut is needed for "activity around t".
            act_old = np.flatnonzero(np.isin(k, ACTIVITY_KINDS) & ~keep)
            if len(act_old):
                keep[act_old[np.argmax(ts[act_old])]] = True
            if not keep.all():
                self._evicted += int((~keep).sum())
                self._evidence = E.loc[keep].reset_index(drop=True)
        S = self._succ
        if S is not None and len(S):
            # Successes: all from the safe point on, and the latest per path before it.
            ts = S["ts_ns"].to_numpy().astype(np.int64)
            cut = min(safe, sc_t)
            recent = ts >= cut
            old = S.loc[~recent]
            keep_old = old.sort_values(["ts_ns", "event_id"]).drop_duplicates("path", keep="last")
            keep_old = keep_old[keep_old["ts_ns"].to_numpy().astype(np.int64) >= cut - win.syscall_window_ns]
            n0 = len(S)
            self._succ = pd.concat([keep_old, S.loc[recent]], ignore_index=True) if len(keep_old) else S.loc[recent].reset_index(drop=True)
            self._evicted += n0 - len(self._succ)
