"""The one owner of a live event stream: numbering, losses, writer and correlator.

Why one owner: when the ids and the LOST rows of a live run were made in
more than one place (the session numbered batches, the trace writer
numbered the LOST rows it wrote, the kprobe tier turned its own loss
counter into rows as well), a LOST row took the id of the next batch's first
event and one loss could be written twice, so every recording that lost
events failed ``analyze`` with duplicate ids. Here a tracer only produces
records (``poll``) and loss counters (``lost() -> {cpu: n}``, cumulative);
:class:`Recorder` is the only code that

* turns a counter's growth into LOST rows: one row per CPU whose counter
  moved since the last look, its ``ret`` the number lost, so a trace's LOST
  rows sum to exactly the tracer's final counters. The counters are read
  just before each poll and the rows stamped with the events' clock at that
  moment: every drop they count happened before the stamp (as the
  correlator's ``loss_horizon_ns`` assumes), and the stamp is never ahead of
  the events still to come, which the streaming correlator needs;
* numbers every row it hands on (events and LOST rows alike) 1, 2, 3, ...
  in the order it hands them on;
* hands each numbered batch to the trace writer (whose metadata
  ``lost_per_cpu`` it keeps equal to the rows written) and to the streaming
  correlator, so the live verdicts and the verdicts of ``analyze`` on the
  trace are computed from the same rows. The correlator gets them gathered,
  at least CORR_FEED_ROWS rows or CORR_FEED_S seconds' worth at a time (and
  everything at ``drain``/``finish``): its cost per feed grows with the
  failures still waiting for their window (a second of them), so feeding it
  every small batch of a busy ring would re-examine those rows hundreds of
  times a second. Its verdicts do not depend on how the rows are cut into
  feeds (the property tests cut them at random); they only arrive a feed
  later, well inside the window they wait for anyway.

Loading and attaching stay with the caller (``tracer.load()``), apart from
polling, so a command can fail with one clear line before anything runs.
``watch``/``record`` (vfstrace/watch.py), ``selftest`` (vfstrace/selftest/
live.py) and the benchmarks that drain a tracer use this class.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from vfstrace.events import BPF_EVENT_DTYPE, Kind, kind_name

POLL_MS = 200
CORR_FEED_ROWS = 262144
CORR_FEED_S = 0.25
# The cpu of drops the kernel does not place (a perf buffer's lost callback,
# which tracers report as cpu -1): in LOST rows and in lost_per_cpu alike,
# so the two agree and the cpu column stays an unsigned 32-bit number.
UNKNOWN_CPU = 0xFFFFFFFF


def lost_frame(deltas: dict[int, int], ts_ns: int) -> pd.DataFrame:
    """LOST rows, one per CPU, ``ret`` = events lost there, stamped ``ts_ns``."""
    from tracers.stream import records_to_frame

    rec = np.zeros(len(deltas), dtype=BPF_EVENT_DTYPE)
    for i, (cpu, n) in enumerate(sorted(deltas.items())):
        rec[i]["ts_ns"] = ts_ns
        rec[i]["cpu"] = cpu
        rec[i]["kind"] = int(Kind.LOST)
        rec[i]["ret"] = n
    return records_to_frame(rec)


class Recorder:
    """Drains one loaded tracer; numbers, counts, writes and correlates what it drains.

    ``writer``: a vfstrace.store.TraceWriter or None; ``correlator``: a
    vfstrace.correlate.StreamingCorrelator or None; ``on_verdicts(df)`` is
    called with every non-empty frame of verdicts that became final.
    ``clock`` stamps LOST rows; by default the tracer's own (``now_ns()``,
    CLOCK_MONOTONIC like bpf_ktime_get_ns), so they sort among its events.
    """

    def __init__(self, tracer, *, writer=None, correlator=None, on_verdicts=None, clock=None):
        self.tracer = tracer
        self.writer = writer
        self.corr = correlator
        self.on_verdicts = on_verdicts
        self.clock = clock or getattr(tracer, "now_ns", time.monotonic_ns)
        self.next_id = 1
        self.events = 0  # rows handed on, LOST rows included
        self.kind_counts: dict[str, int] = {}
        self.lost_seen: dict[int, int] = {}  # cpu -> lost, as already turned into rows
        self.finished = False
        self._corr_batches: list[pd.DataFrame] = []  # numbered rows not yet fed to the correlator
        self._corr_rows = 0
        self._corr_fed_at = time.monotonic()

    @property
    def lost_total(self) -> int:
        return int(sum(self.lost_seen.values()))

    def poll(self, timeout_ms: int = POLL_MS) -> pd.DataFrame:
        """One batch: a LOST row per CPU whose counter grew since the last
        look, then the tracer's records; numbered, written and correlated.
        Returns the numbered batch."""
        lost = self._lost_rows()
        df = self.tracer.poll(timeout_ms)
        if lost is not None:
            df = pd.concat([lost, df], ignore_index=True) if len(df) else lost
        self._hand_on(df)
        if self._corr_rows and time.monotonic() - self._corr_fed_at >= CORR_FEED_S:
            self._feed()
        return df

    def drain(self, max_polls: int = 50) -> list[pd.DataFrame]:
        """What the kernel has produced up to now, without waiting, and every
        loss counted up to then; the batches."""
        out = []
        for _ in range(max_polls):
            df = self.poll(0)
            if not len(df):
                break
            out.append(df)
        tail = self._lost_rows()  # drops counted during the last poll
        if tail is not None:
            self._hand_on(tail)
            out.append(tail)
        self._feed()
        return out

    def finish(self) -> pd.DataFrame:
        """The correlator's remaining verdicts (also passed to ``on_verdicts``). Safe to call twice."""
        if self.finished:
            return pd.DataFrame()
        self.finished = True
        if self.corr is None:
            return pd.DataFrame()
        self._feed()
        v = self.corr.finish()
        self._verdicts(v)
        return v

    # -- internals -----------------------------------------------------------

    def _lost_rows(self):
        cur: dict[int, int] = {}
        for c, n in self.tracer.lost().items():
            c = int(c) if int(c) >= 0 else UNKNOWN_CPU
            cur[c] = cur.get(c, 0) + int(n)
        deltas = {c: n - self.lost_seen.get(c, 0) for c, n in cur.items() if n > self.lost_seen.get(c, 0)}
        if not deltas:
            return None
        for c, d in deltas.items():
            self.lost_seen[c] = self.lost_seen.get(c, 0) + d
        if self.writer is not None:  # before the write below, whose flush saves the metadata
            self.writer.update_meta(lost_per_cpu=dict(self.lost_seen))
        return lost_frame(deltas, self.clock())

    def _hand_on(self, df: pd.DataFrame) -> None:
        n = len(df)
        if n == 0:
            return
        df["event_id"] = np.arange(self.next_id, self.next_id + n, dtype=np.uint64)
        self.next_id += n
        self.events += n
        kinds, cnts = np.unique(df["kind"].to_numpy(), return_counts=True)
        for k, c in zip(kinds, cnts):
            name = kind_name(k)
            self.kind_counts[name] = self.kind_counts.get(name, 0) + int(c)
        if self.writer is not None:
            self.writer.write(df)
        if self.corr is not None:
            self._corr_batches.append(df)
            self._corr_rows += n
            if self._corr_rows >= CORR_FEED_ROWS:
                self._feed()

    def _feed(self) -> None:
        """The rows gathered for the correlator, in one feed (see the module docstring)."""
        self._corr_fed_at = time.monotonic()
        if not self._corr_batches:
            return
        b, self._corr_batches, self._corr_rows = self._corr_batches, [], 0
        self._verdicts(self.corr.feed(pd.concat(b, ignore_index=True) if len(b) > 1 else b[0]))

    def _verdicts(self, v) -> None:
        if v is not None and len(v) and self.on_verdicts is not None:
            self.on_verdicts(v)
