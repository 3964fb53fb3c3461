"""The streaming correlator: verdicts for `watch` as chunks arrive, judged by the batch rules."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd

from vfstrace.correlate.batch import (
    _EVIDENCE_KINDS,
    Windows,
    _finish,
    _prepare,
    empty_verdicts,
)
from vfstrace.correlate.existence import recheck_of
from vfstrace.correlate.syscall import (
    ACTIVITY_KINDS,
    Successes,
    final_at,
    judge_syscalls,
    judged_syscalls,
    neighbours,
    presences,
)
from vfstrace.correlate.walk import WALK_KINDS, judge_walks, walk_segments
from vfstrace.errors import VfstraceError
from vfstrace.events import Kind


# How far out of time order a live stream may deliver events by default
# (per-CPU buffers drained in turns): what watch waits for.
REORDER_NS = 100_000_000


class StreamingCorrelator:
    """The batch rules applied chunk by chunk, with bounded state.

    ``feed(chunk)`` returns the verdicts that became final; ``finish()`` the
    rest. A verdict is final once the stream's clock (the largest ts seen,
    less ``skew_ns`` and ``reorder_ns``) has passed the end of every window
    it depends on. ``reorder_ns`` is how far out of order the source may
    deliver events (per-CPU buffers drained in turns); it delays verdicts,
    never changes them.
    """

    def __init__(self, windows: Windows | None = None, *, reorder_ns: int = REORDER_NS, unplaced_lost: int = 0,
                 **kw):
        win = windows or Windows()
        if kw:
            win = Windows(**{**asdict(win), **kw})
        self.win = win.check()
        if reorder_ns < 0:
            raise VfstraceError("reorder_ns must not be negative")
        self.reorder_ns = int(reorder_ns)
        # Losses no LOST record places (see correlate()): a live recorder
        # stamps each drop, so this is for replaying stored traces.
        self.unplaced_lost = int(unplaced_lost)
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
        safe = self._safe()

        # Walks: carried rows of walks in flight + this chunk's walk rows.
        W = self._cat(self._open, df.loc[np.isin(kind, WALK_KINDS)])
        if W is not None and len(W):
            self._segment(W, safe)
        self._evidence = self._cat(self._evidence, df.loc[np.isin(kind, _EVIDENCE_KINDS)])
        js = judged_syscalls(df)
        if js.any():
            S = df.loc[js].copy()
            for c in ("before_ts", "before_id", "after_ts", "after_id"):
                S[c] = np.int64(-1)
            S["before_done"] = False
            self._pending_sc = self._cat(self._pending_sc, S)
        pr = presences(df)
        if len(pr):
            self._succ = self._cat(self._succ, pr)
        out = self._judge(safe)
        self._trim(safe)
        self._peak = max(self._peak, self._state_rows())
        return out

    def _segment(self, W, safe, final=False):
        """Cut walk rows into walks; rows not yet ``safe`` wait (a task's
        earlier event may still arrive from another CPU's buffer)."""
        win = self.win
        late = np.zeros(len(W), dtype=bool) if final else W["ts_ns"].to_numpy().astype(np.int64) >= safe
        ready = W.loc[~late]
        J, open_mask = walk_segments(ready.reset_index(drop=True), win)
        op = ready.loc[open_mask]
        # A walk row this old can no longer be inside any future walk's window.
        old = op["ts_ns"].to_numpy().astype(np.int64) < safe - win.max_walk_ns
        self._evicted += int(old.sum())
        self._open = self._cat(op.loc[~old].reset_index(drop=True), W.loc[late])
        if len(J):
            self._pending_walks = self._cat(self._pending_walks, J)

    def finish(self) -> pd.DataFrame:
        if self._finished:
            return empty_verdicts()
        if self._open is not None and len(self._open):
            self._segment(self._open, self._safe(final=True), final=True)
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
                parts.append(judge_walks(pw.loc[done].reset_index(drop=True), E, win, self.unplaced_lost))
                self._pending_walks = pw.loc[~done].reset_index(drop=True)
        ps = self._pending_sc
        if ps is not None and len(ps):
            t = ps["ts_ns"].to_numpy().astype(np.int64)
            succ = Successes(self._succ if self._succ is not None else
                             pd.DataFrame({"event_id": [], "ts_ns": [], "path": []}))  # indexed once for both sides
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
            _, rts = recheck_of(ps, E, win)
            done = bd & ((final_at(ps, win, rts) < safe) | final)
            if done.any():  # else the pending rows stay as they are: no copy of them per feed
                parts.append(judge_syscalls(ps.loc[done].reset_index(drop=True), E, win, self.unplaced_lost))
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
            # Namespace operations, losses and re-checks: a pending syscall's window reaches back to them.
            ns_or_lost = (k == Kind.NS_OP) | (k == Kind.LOST) | (k == Kind.RECHECK)
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
