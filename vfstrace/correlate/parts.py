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
  the task begins after its return either way. Walks not final yet wait,
  whole, for a later part.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from vfstrace.correlate.batch import _EVIDENCE_KINDS
from vfstrace.correlate.streaming import StreamingCorrelator
from vfstrace.correlate.walk import WALK_KINDS, task_order
from vfstrace.events import ECHILD, ENOENT, NUMPY_DTYPES, Kind, kind_mask
from vfstrace.store.table import _column_numpy

# The columns the correlator reads (vfstrace/correlate/batch.py _NEEDED).
COLUMNS = ("event_id", "ts_ns", "tid", "pid", "comm", "kind", "op", "dentry", "parent", "ino", "name", "path",
           "path2", "ret", "flags")
_OTHER_KINDS = np.concatenate([_EVIDENCE_KINDS, np.array([Kind.PATH_SYSCALL, Kind.NS_OP], dtype=np.uint8)])
_WR = int(Kind.WALK_RETURN)
_IS_WALK = kind_mask(WALK_KINDS.tolist())
_IS_OTHER = kind_mask(_OTHER_KINDS.tolist())


class Disorder:
    """Event ids rising, and how far timestamps fall below the largest before them, over parts in file order."""

    def __init__(self):
        self.last_id = 0
        self.max_ts = None
        self.disorder_ns = 0
        self.ids_rise = True

    def add(self, ids: np.ndarray, ts: np.ndarray) -> None:
        if not len(ids):
            return
        if int(ids[0]) <= self.last_id or (len(ids) > 1 and not (ids[1:] > ids[:-1]).all()):
            self.ids_rise = False
        self.last_id = max(self.last_id, int(ids.max()))
        if int(ts[-1]) < 2**63 and (ts[1:] >= ts[:-1]).all():
            # Stamps rising within the part (mostly so): none falls below one before it.
            worst, lo, hi = 0, int(ts[0]), int(ts[-1])
        else:
            t = ts.astype(np.int64)
            run = np.maximum.accumulate(t)
            below = run[:-1] - t[1:]
            worst = int(below.max()) if len(below) else 0
            lo, hi = int(t.min()), int(run[-1])
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

    def __init__(self, disorder_ns: int):
        self.disorder_ns = int(disorder_ns)
        self.carry = None  # rows of walks not final yet, whole
        self._carry_keys = None  # their _KEYS columns as numpy arrays
        self.dropped = 0

    def cut(self, t: pa.Table, rows: np.ndarray, max_seen: int | None) -> tuple[pa.Table | None, np.ndarray]:
        """The rows of judged final walks among the carried rows and ``t``'s walk rows ``rows``.

        Returns the carried rows kept (a Table, None if none) and the
        indices into ``t`` of its rows kept (rising).
        """
        keys = {c: t.column(c).to_numpy()[rows] for c in self._KEYS}
        nc = self.carry.num_rows if self.carry is not None else 0
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
        self.dropped += n - int(keep.sum()) - int(wait.sum())
        kept = self.carry.filter(pa.array(keep[:nc])) if nc and keep[:nc].any() else None
        mine = rows[keep[nc:]]
        waiting = t.take(pa.array(rows[wait[nc:]]))
        self.carry = pa.concat_tables([self.carry.filter(pa.array(wait[:nc])), waiting]) if nc else waiting
        self._carry_keys = {c: v[wait] for c, v in keys.items()}
        return kept, mine


def to_frame(t: pa.Table) -> pd.DataFrame:
    """A part's rows as the correlator takes them (the event schema's dtypes; strings as objects)."""
    # One dictionary per string column: each distinct string becomes one Python object, once.
    t = t.unify_dictionaries().combine_chunks()
    return pd.DataFrame({c: pd.Series(_column_numpy(t.column(c), c), dtype=NUMPY_DTYPES[c], copy=False)
                         for c in t.column_names})


class PartsCorrelator:
    """Feed parts (pyarrow Tables of :data:`COLUMNS`, event ids rising) in file order; verdicts as they are final."""

    def __init__(self, disorder_ns: int, *, unplaced_lost: int = 0, windows=None, feed_rows: int = 400_000):
        self.cut = WalkCut(disorder_ns)
        # Rows handed to the streaming correlator at once: each feed costs it a
        # fixed pandas overhead, so a few parts' worth of kept rows go together
        # (memory: feed_rows rows, whatever the trace's size).
        self.feed_rows = int(feed_rows)
        self._buf: list[pa.Table] = []
        self._buf_rows = 0
        self.corr = StreamingCorrelator(windows, reorder_ns=int(disorder_ns), unplaced_lost=unplaced_lost)
        self.max_seen = None
        self.rows_fed = 0

    def feed(self, t: pa.Table) -> pd.DataFrame:
        if not t.num_rows:
            return self.corr.feed(None)
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
        if self.cut.carry is not None:
            kept, _ = self.cut.cut(self.cut.carry.slice(0, 0), np.zeros(0, dtype=np.int64), None)
            if kept is not None:
                self._buf.append(kept)
        out = [self._feed(), self.corr.finish()]
        return pd.concat(out, ignore_index=True)

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


__all__ = ["COLUMNS", "Disorder", "PartsCorrelator", "WalkCut"]
