"""The batch verdicts of a stored trace, judged part by part with memory flat in its size.

Why: a trace of 10^8 events does not fit in memory as one frame, and most of
its rows bear on no verdict. :class:`PartsCorrelator` feeds the streaming
correlator (vfstrace/correlate/streaming.py) one trace part at a time, and
only the rows a verdict can rest on: evidence, path syscalls and namespace
operations, and the walk events of walks that returned -ENOENT or -ECHILD.

What makes its verdicts the batch ones:

* ``disorder_ns``, measured over the whole trace beforehand (see
  :class:`Disorder`): how far a timestamp may lie below one already seen in
  event-id order. The streaming correlator is given it as ``reorder_ns``,
  the bound under which its rules decide as the batch ones do;
* the walk cut (:class:`WalkCut`) is walk_segments()' own: a task's walk
  events in (ts, event id) order, a walk everything since the task's
  previous WALK_RETURN. A walk is dropped only when it returned something
  else than -ENOENT/-ECHILD (never judged) and is final: its return lies
  more than ``disorder_ns`` below the largest timestamp seen, so no later
  row can sort into it. Its rows bear on no other walk: the next walk of
  the task begins after its return either way. Walks not final yet wait
  for a later part, but for their rows older than ``max_walk_ns`` before
  any return still to come (no walk counts them: walk_segments() says
  why), so a task whose walk never returns holds no growing carry.

What keeps the work per event bounded, whatever the input:

* the wait is capped at :data:`MAX_DISORDER_NS`, the bound ``watch`` puts
  on a live stream's disorder. A row further below the rows before it
  than that (timestamps that step back, a trace assembled from pieces) is
  an *ordering loss*: :class:`Disorder` notes where (:class:`OrderingLoss`)
  and every verdict judged within the correlator's reach of it
  (``Windows.reach_ns``) says ``uncertain``, as a verdict near lost events
  does, instead of the correlator carrying the whole trace in the hope
  of putting that row in its place;
* tiny parts are cut together (:class:`PartsCorrelator` ``cut_rows``):
  the walks carried over are re-cut only once at least as many new rows
  have come, not at every part.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from vfstrace.correlate.batch import _EVIDENCE_KINDS, Windows
from vfstrace.correlate.streaming import REORDER_NS, StreamingCorrelator
from vfstrace.correlate.walk import WALK_KINDS, task_order
from vfstrace.events import ECHILD, ENOENT, NUMPY_DTYPES, Kind, kind_mask
from vfstrace.store.table import _column_numpy

# The columns the correlator reads (vfstrace/correlate/batch.py _NEEDED).
COLUMNS = ("event_id", "ts_ns", "tid", "pid", "comm", "kind", "op", "dentry", "parent", "ino", "seq", "name",
           "path", "path2", "ret", "flags")
_OTHER_KINDS = np.concatenate([_EVIDENCE_KINDS, np.array([Kind.PATH_SYSCALL, Kind.NS_OP], dtype=np.uint8)])
_WR = int(Kind.WALK_RETURN)
_IS_WALK = kind_mask(WALK_KINDS.tolist())
_IS_OTHER = kind_mask(_OTHER_KINDS.tolist())


# The most a stored trace's stamps may fall below earlier ones and still be
# put in order part by part: what watch allows a live stream (REORDER_NS).
MAX_DISORDER_NS = REORDER_NS


class OrderingLoss:
    """Where a trace's events came more than the bound behind the events before them: spans of their stamps.

    Why spans, merged and few: the verdicts near such an event are what it
    costs (PartsCorrelator makes them ``uncertain``), so memory holds at
    most :attr:`MAX_SPANS` spans whatever the number of late events; past
    that, the closest spans are merged, which only widens what is said
    ``uncertain``, never narrows it.
    """

    MAX_SPANS = 1024

    def __init__(self):
        self.lo = np.zeros(0, dtype=np.int64)
        self.hi = np.zeros(0, dtype=np.int64)
        self.events = 0

    def __bool__(self) -> bool:
        return bool(self.events)

    def add(self, ts: np.ndarray) -> None:
        """Take the stamps of late events."""
        if not len(ts):
            return
        self.events += len(ts)
        t = ts.astype(np.int64)
        lo, hi = np.concatenate([self.lo, t]), np.concatenate([self.hi, t])
        order = np.argsort(lo, kind="stable")
        lo, hi = lo[order], hi[order]
        run = np.maximum.accumulate(hi)
        starts = np.flatnonzero(np.r_[True, lo[1:] > run[:-1]])
        lo, hi = lo[starts], np.maximum.reduceat(hi, starts)
        if len(lo) > self.MAX_SPANS:
            # Keep the widest gaps, closing the rest, until half the budget is left.
            gaps = lo[1:] - hi[:-1]
            wide = len(gaps) - (self.MAX_SPANS // 2 - 1)
            open_ = np.zeros(len(gaps), dtype=bool)
            open_[np.argpartition(gaps, wide)[wide:]] = True
            starts = np.flatnonzero(np.r_[True, open_])
            lo, hi = lo[starts], np.maximum.reduceat(hi, starts)
        self.lo, self.hi = lo, hi

    def near(self, ts: np.ndarray, reach_ns: int) -> np.ndarray:
        """Which of the stamps ``ts`` lie within ``reach_ns`` of a late event."""
        t = np.asarray(ts).astype(np.int64)
        if not len(self.lo) or not len(t):
            return np.zeros(len(t), dtype=bool)
        # Spans are disjoint and sorted: the last one starting (widened) at or
        # before a stamp ends furthest right of those that could hold it.
        i = np.searchsorted(self.lo - reach_ns, t, side="right") - 1
        return (i >= 0) & (t <= self.hi[np.maximum(i, 0)] + reach_ns)


class Disorder:
    """Event ids rising, and how far timestamps fall below the largest before them, over parts in file order.

    ``disorder_ns`` is the largest fall; ``reorder_ns`` what the part-by-part
    correlator waits for, at most ``bound_ns``; events that fall further
    than that are ``lost`` (an OrderingLoss).
    """

    def __init__(self, bound_ns: int = MAX_DISORDER_NS):
        self.last_id = 0
        self.max_ts = None
        self.disorder_ns = 0
        self.ids_rise = True
        self.bound_ns = int(bound_ns)
        self.lost = OrderingLoss()

    @property
    def reorder_ns(self) -> int:
        return min(self.disorder_ns, self.bound_ns)

    def add(self, ids: np.ndarray, ts: np.ndarray) -> None:
        if not len(ids):
            return
        if int(ids[0]) <= self.last_id or (len(ids) > 1 and not (ids[1:] > ids[:-1]).all()):
            self.ids_rise = False
        self.last_id = max(self.last_id, int(ids.max()))
        if int(ts[-1]) < 2**63 and (ts[1:] >= ts[:-1]).all():
            # Stamps rising within the part (mostly so): none falls below one before it.
            worst, lo, hi = 0, int(ts[0]), int(ts[-1])
            if self.max_ts is not None and self.max_ts - lo > self.bound_ns:
                # Only the part's first rows can lie below the stamps before it.
                self.lost.add(ts[:np.searchsorted(ts, self.max_ts - self.bound_ns, side="left")])
        else:
            t = ts.astype(np.int64)
            run = np.maximum.accumulate(t)
            below = run[:-1] - t[1:]
            worst = int(below.max()) if len(below) else 0
            lo, hi = int(t.min()), int(run[-1])
            # The largest stamp before each row, this part's and the parts' before it.
            before = np.r_[t[0] if self.max_ts is None else self.max_ts, run[:-1]]
            if self.max_ts is not None:
                before = np.maximum(before, self.max_ts)
            late = before - t > self.bound_ns
            if late.any():
                self.lost.add(t[late])
        if self.max_ts is not None:
            worst = max(worst, self.max_ts - lo)
            self.max_ts = max(self.max_ts, hi)
        else:
            self.max_ts = hi
        self.disorder_ns = max(self.disorder_ns, worst)


class WalkCut:
    """Walk rows of judged walks, part by part; see the module docstring.

    The cut is made on four numeric columns; only the rows kept are named
    (and those of walks not final yet, carried to the next part, taken
    whole), so the walk rows that bear on no verdict, most of them, are
    never copied.
    """

    _KEYS = ("ts_ns", "tid", "kind", "ret")

    def __init__(self, disorder_ns: int, max_walk_ns: int = Windows().max_walk_ns):
        self.disorder_ns = int(disorder_ns)
        self.max_walk_ns = int(max_walk_ns)
        self.carry = None  # rows of walks not final yet
        self._carry_keys = None  # their _KEYS columns as numpy arrays
        self.dropped = 0

    @property
    def carried(self) -> int:
        return 0 if self.carry is None else self.carry.num_rows

    def cut(self, t: pa.Table, rows: np.ndarray, max_seen: int | None) -> tuple[pa.Table | None, np.ndarray]:
        """The rows of judged final walks among the carried rows and ``t``'s walk rows ``rows``.

        Returns the carried rows kept (a Table, None if none) and the
        indices into ``t`` of its rows kept (rising).
        """
        keys = {c: t.column(c).to_numpy()[rows] for c in self._KEYS}
        nc = self.carried
        if nc:
            keys = {c: np.concatenate([self._carry_keys[c], v]) for c, v in keys.items()}
        n = nc + len(rows)
        if not n:
            return None, rows[:0]
        if max_seen is None:  # the end of the trace: every walk is final
            limit = np.iinfo(np.int64).max
        else:
            limit = int(max_seen) - self.disorder_ns
        ts = keys["ts_ns"].astype(np.int64)
        # Carried rows first: their ids are lower, so the rows are in event-id order.
        order = task_order(keys["tid"], ts)
        tid = keys["tid"][order]
        is_wr = keys["kind"][order] == _WR
        boundary = np.ones(n, dtype=bool)
        boundary[1:] = (tid[1:] != tid[:-1]) | is_wr[:-1]
        seg = np.cumsum(boundary) - 1
        last = np.r_[np.flatnonzero(boundary)[1:], n] - 1  # each walk's last row, sorted
        ends = order[last]  # ... as an index into keys
        final = is_wr[last] & (ts[ends] < limit)
        end_ret = keys["ret"][ends]
        judged = final & ((end_ret == ENOENT) | (end_ret == ECHILD))
        keep = np.empty(n, dtype=bool)
        keep[order] = judged[seg]
        wait = np.empty(n, dtype=bool)
        wait[order] = ~final[seg]
        if max_seen is not None:
            # A return still to come lies at or above ``limit`` (or is an
            # ordering loss): rows more than max_walk_ns below it are no
            # walk's own (walk_segments()' ``valid``). A waiting walk's
            # return is at or above ``limit`` itself, so none is dropped.
            wait &= ts >= limit - self.max_walk_ns
        self.dropped += n - int(keep.sum()) - int(wait.sum())
        kept = self.carry.filter(pa.array(keep[:nc])) if nc and keep[:nc].any() else None
        mine = rows[keep[nc:]]
        waiting = t.take(pa.array(rows[wait[nc:]]))
        carry = pa.concat_tables([self.carry.filter(pa.array(wait[:nc])), waiting]) if nc else waiting
        # One chunk again: a carry that gained a chunk at every cut would cost more to filter at each.
        self.carry = carry.unify_dictionaries().combine_chunks()
        self._carry_keys = {c: v[wait] for c, v in keys.items()}
        return kept, mine


def to_frame(t: pa.Table) -> pd.DataFrame:
    """A part's rows as the correlator takes them (the event schema's dtypes; strings as objects)."""
    # One dictionary per string column: each distinct string becomes one Python object, once.
    t = t.unify_dictionaries().combine_chunks()
    return pd.DataFrame({c: pd.Series(_column_numpy(t.column(c), c), dtype=NUMPY_DTYPES[c], copy=False)
                         for c in t.column_names})


class PartsCorrelator:
    """Feed parts (pyarrow Tables of :data:`COLUMNS`, event ids rising) in file order; verdicts as they are final.

    ``disorder`` is the first pass's :class:`Disorder` (or, for a trace known
    to be ordered, how far its stamps fall in ns). Parts are cut together
    until at least as many rows as the walks carried over (and ``cut_rows``)
    are waiting: the module docstring says why.
    """

    def __init__(self, disorder, *, unplaced_lost: int = 0, windows=None, feed_rows: int = 400_000,
                 cut_rows: int = 0):
        if isinstance(disorder, Disorder):
            reorder_ns, self.lost, self.bound_ns = disorder.reorder_ns, disorder.lost, disorder.bound_ns
        else:  # a wait the caller chose: nothing is an ordering loss
            reorder_ns, self.lost, self.bound_ns = int(disorder), OrderingLoss(), int(disorder)
        self.win = (windows or Windows()).check()
        self.cut = WalkCut(reorder_ns, self.win.max_walk_ns)
        # Rows handed to the streaming correlator at once: each feed costs it a
        # fixed pandas overhead, so a few parts' worth of kept rows go together
        # (memory: feed_rows rows, whatever the trace's size).
        self.feed_rows = int(feed_rows)
        self.cut_rows = int(cut_rows)
        self._parts: list[pa.Table] = []
        self._parts_rows = 0
        self._buf: list[pa.Table] = []
        self._buf_rows = 0
        self.corr = StreamingCorrelator(self.win, reorder_ns=reorder_ns, unplaced_lost=unplaced_lost)
        self.max_seen = None
        self.rows_fed = 0

    def feed(self, t: pa.Table) -> pd.DataFrame:
        if t.num_rows:
            self._parts.append(t)
            self._parts_rows += t.num_rows
        if not self._parts_rows or self._parts_rows < max(self.cut_rows, self.cut.carried):
            return self.corr.feed(None)
        return self._marked(self._cut_parts())

    def _cut_parts(self) -> pd.DataFrame:
        t = pa.concat_tables(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts, self._parts_rows = [], 0
        kind = t.column("kind").to_numpy()
        ts = t.column("ts_ns").to_numpy()
        mx = int(ts.max())
        self.max_seen = mx if self.max_seen is None else max(self.max_seen, mx)
        carried, walks = self.cut.cut(t, np.flatnonzero(_IS_WALK[kind]), self.max_seen)
        # The part's rows kept, walks and the rest, in one filter (in id order).
        mine = _IS_OTHER[kind]
        mine[walks] = True
        if carried is not None:
            self._buf.append(carried)
        self._buf.append(t.filter(pa.array(mine)))
        self._buf_rows += self._buf[-1].num_rows + (carried.num_rows if carried is not None else 0)
        return self._feed() if self._buf_rows >= self.feed_rows else self.corr.feed(None)

    def finish(self) -> pd.DataFrame:
        out = [self._cut_parts()] if self._parts_rows else []
        if self.cut.carry is not None:
            kept, _ = self.cut.cut(self.cut.carry.slice(0, 0), np.zeros(0, dtype=np.int64), None)
            if kept is not None:
                self._buf.append(kept)
        out += [self._feed(), self.corr.finish()]
        return self._marked(pd.concat(out, ignore_index=True))

    def _marked(self, v: pd.DataFrame) -> pd.DataFrame:
        """``v`` with every verdict within reach of an ordering loss made ``uncertain`` (the module docstring)."""
        if not self.lost or not len(v):
            return v
        near = self.lost.near(v["ts_ns"].to_numpy(), self.win.reach_ns)
        if near.any():
            v = v.copy()
            v.loc[near, "verdict"] = "uncertain"
            v.loc[near, "reason"] = (f"ordering lost: an event within {self.win.reach_ns / 1e9:.3g} s of this one came "
                                     f"more than {self.bound_ns / 1e9:.3g} s behind the events before it in the "
                                     "trace, so the events it rests on may be missing or misplaced")
        return v

    def _feed(self) -> pd.DataFrame:
        t = pa.concat_tables(self._buf) if self._buf else None
        self._buf, self._buf_rows = [], 0
        if t is None or not t.num_rows:
            return self.corr.feed(None)
        self.rows_fed += t.num_rows
        # Carried walk rows come after the rows of later ids fed before them:
        # in event-id order here (a few sorted runs: cheap), where only the
        # dictionary indices of one chunk move, so the correlator need not
        # sort the frame.
        t = t.unify_dictionaries().combine_chunks()
        ids = t.column("event_id").to_numpy()
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            t = t.take(pa.array(np.argsort(ids, kind="stable")))
        return self.corr.feed(to_frame(t))


__all__ = ["COLUMNS", "MAX_DISORDER_NS", "Disorder", "OrderingLoss", "PartsCorrelator", "WalkCut"]
