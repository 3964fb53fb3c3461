"""tracers/recheck.py: the re-check thread the drain thread hands failures to."""

import numpy as np

from tracers.recheck import RecheckWorker
from vfstrace.events import ENOENT, Kind

DT = np.dtype([("ts_ns", "<u8"), ("kind", "u1"), ("ret", "<i4")])


def recs(rows):
    return np.array(rows, dtype=DT)


def check(frame):
    return [{"_fail_ts": int(t), "ret": 0} for t in frame["ts_ns"]]


def to_frame(r):
    return {"ts_ns": r["ts_ns"]}


def test_only_failures_are_handed_over_and_each_comes_back_once_its_failure_is_read():
    w = RecheckWorker(check, to_frame)
    try:
        w.submit(recs([(10, Kind.PATH_SYSCALL, ENOENT), (20, Kind.PATH_SYSCALL, 0), (30, Kind.D_FREE, ENOENT),
                       (40, Kind.PATH_SYSCALL, ENOENT)]))
        # the consumer has read up to 15: only the failure at 10 is released (the trace holds it after its failure)
        got = w.take(15, wait_s=0)
        while not got:
            got = w.take(15, wait_s=0.05)
        assert [r["_fail_ts"] for r in got] == [10]
        assert [r["_fail_ts"] for r in w.take(None, wait_s=2.0)] == [40]
        assert w.take(None) == [] and w.dropped == 0 and w.rechecked == 2
    finally:
        w.stop()


def test_a_backlog_past_its_bound_is_counted_not_queued():
    import threading

    gate = threading.Event()

    def slow(frame):
        gate.wait(5)
        return check(frame)

    w = RecheckWorker(slow, to_frame, backlog=3)
    try:
        w.submit(recs([(t, Kind.PATH_SYSCALL, ENOENT) for t in range(5)]))
        w.submit(recs([(9, Kind.PATH_SYSCALL, ENOENT)]))
        assert w.dropped == 3  # 5 offered to a room of 3, then 1 to a room of 0
        gate.set()
        assert sorted(r["_fail_ts"] for r in w.take(None, wait_s=5.0)) == [0, 1, 2]
    finally:
        w.stop()
