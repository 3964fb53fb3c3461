"""The tracepoint tier's re-checks of failed paths, on a thread of their own.

A failure's re-check proves existence at the failure only if it comes
"right after" it (``syscall_window_ns``, docs/verdicts.md). Made by the
consumer, it came as late as the consumer ran behind the ring: under a
dentry-free burst, or in a slow guest, many seconds, when the task had
often exited (-ESRCH) and the re-check no longer counted. Made on the
ring's drain thread, its stat() calls held up the drain, the one thing
that must never wait. So the drain thread only hands the failed records
over (:meth:`RecheckWorker.submit`, a copy of a few rows), and this thread
makes the re-checks; the consumer collects their RECHECK rows once it has
read the failures they belong to (:meth:`RecheckWorker.take`), so a trace
holds each re-check after its failure.

The backlog is bounded (RECHECK_BACKLOG failures): past it, failures are
not re-checked and are counted (``recheck_dropped``); their verdict then
rests on the trace alone, as a recording without re-checks does.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from vfstrace.events import ENOENT, Kind

# Failures waiting for a re-check, at most; a storm past it is counted, not queued.
RECHECK_BACKLOG = 8192


class RecheckWorker:
    """Re-checks failures handed over by the drain thread; ``check(frame)`` -> RECHECK row dicts,
    each with the failure's stamp under ``_fail_ts`` (the tracer's row builder)."""

    def __init__(self, check, to_frame, backlog: int = RECHECK_BACKLOG):
        self._check = check
        self._to_frame = to_frame
        self._backlog = backlog
        self._in: deque = deque()
        self._pending = 0  # failures submitted and not yet re-checked
        self._out: list[dict] = []
        self._cond = threading.Condition()
        self._stop = False
        self.dropped = 0
        self.rechecked = 0
        self._thread = threading.Thread(target=self._run, name="vfstrace-recheck", daemon=True)
        self._thread.start()

    def submit(self, recs: np.ndarray) -> None:
        """On the drain thread: hand over the failed path records of a batch (a copy), never waiting."""
        sel = np.flatnonzero((recs["kind"] == int(Kind.PATH_SYSCALL)) & (recs["ret"] == ENOENT))
        if not len(sel):
            return
        with self._cond:
            room = max(0, self._backlog - self._pending)
            if len(sel) > room:
                self.dropped += len(sel) - room
                sel = sel[:room]
            if not len(sel):
                return
            self._in.append(recs[sel].copy())
            self._pending += len(sel)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._in and not self._stop:
                    self._cond.wait()
                if self._stop and not self._in:
                    return
                recs = self._in.popleft()
            rows = self._check(self._to_frame(recs))
            with self._cond:
                self._out.extend(rows)
                self.rechecked += len(rows)
                self._pending -= len(recs)
                self._cond.notify_all()

    def take(self, upto_ts: int | None, wait_s: float = 0.0) -> list[dict]:
        """The RECHECK rows made so far of failures stamped at or before ``upto_ts`` (None: all),
        after waiting up to ``wait_s`` for the backlog to empty (a final drain)."""
        with self._cond:
            if wait_s > 0:
                end = time.monotonic() + wait_s
                while self._pending and time.monotonic() < end:
                    self._cond.wait(max(0.0, end - time.monotonic()))
            if upto_ts is None:
                out, self._out = self._out, []
            else:
                out = [r for r in self._out if r["_fail_ts"] <= upto_ts]
                if out:
                    self._out = [r for r in self._out if r["_fail_ts"] > upto_ts]
        return out

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
