"""The tracepoint tier's re-check of a failed path reflects the filesystem
when the ring's drain thread read the failure, not when the consumer got to it.

The property: a name that exists at the instant of the failure's re-check
is found (RECHECK ret 0, EXISTS_AFTER on the failure) even if it is gone by
the time the consumer builds the batch, and every failure of one key
pairs with one re-check. No BPF: the records are built as the kernel side
writes them (struct vfs_path_event) and handed to the tracer's hooks.
"""

from __future__ import annotations

import os
import time

import numpy as np

from tracers.tracepoint import TracepointTracer
from tracers.text import records_to_frame
from vfstrace.events import BPF_PATH_EVENT_DTYPE, ENOENT, Flag, Kind
from vfstrace.options import TraceOptions


def _failures(path: str, n: int) -> np.ndarray:
    """``n`` failed lookups of ``path`` by this task, as the ring carries them."""
    rec = np.zeros(n, dtype=BPF_PATH_EVENT_DTYPE)
    rec["ts_ns"] = time.monotonic_ns()
    rec["kind"] = int(Kind.PATH_SYSCALL)
    rec["ret"] = ENOENT
    rec["pid"] = rec["tid"] = os.getpid()  # the main thread: its tid is the pid
    rec["comm"] = b"pytest"
    rec["path"] = path.encode()
    return rec


def _rechecks(df):
    return df[df["kind"] == int(Kind.RECHECK)]


def test_a_name_there_when_the_drain_read_the_failure_is_found_though_gone_at_the_poll(tmp_path):
    f = tmp_path / "there-then-gone"
    f.write_text("x")
    t = TracepointTracer(TraceOptions())
    rec = _failures(str(f), 2)
    t._recheck_early(rec)  # the drain thread, as it reads the batch
    checked_by = time.monotonic_ns()
    f.unlink()  # removed before the consumer's poll
    df = t._recheck(records_to_frame(rec))
    r = _rechecks(df)
    assert len(r) == 1 and int(r["ret"].iloc[0]) == 0
    assert int(r["ts_ns"].iloc[0]) <= checked_by
    failed = df[df["kind"] == int(Kind.PATH_SYSCALL)]
    assert ((failed["flags"].to_numpy() & int(Flag.EXISTS_AFTER)) != 0).all()
    assert t._early == {}  # nothing waits for a failure that will not come


def test_without_the_drain_threads_recheck_the_poll_rechecks_then(tmp_path):
    f = tmp_path / "gone-before-the-poll"
    f.write_text("x")
    t = TracepointTracer(TraceOptions())
    rec = _failures(str(f), 1)
    f.unlink()
    df = t._recheck(records_to_frame(rec))
    r = _rechecks(df)
    assert len(r) == 1 and int(r["ret"].iloc[0]) == ENOENT
    assert (int(df.loc[df["kind"] == int(Kind.PATH_SYSCALL), "flags"].iloc[0]) & int(Flag.EXISTS_AFTER)) == 0


def test_each_batch_read_pairs_with_its_own_failures(tmp_path):
    """Two batches of one key, both in one poll: one RECHECK row (the first
    batch's), and no re-check left waiting."""
    f = tmp_path / "twice"
    f.write_text("x")
    t = TracepointTracer(TraceOptions())
    a, b = _failures(str(f), 1), _failures(str(f), 3)
    t._recheck_early(a)
    f.unlink()
    t._recheck_early(b)
    df = t._recheck(records_to_frame(np.concatenate([a, b])))
    r = _rechecks(df)
    assert len(r) == 1 and int(r["ret"].iloc[0]) == 0
    assert t._early == {}


def test_failures_past_the_cap_leave_no_recheck_waiting(tmp_path, monkeypatch):
    import tracers.tracepoint as tp

    monkeypatch.setattr(tp, "RECHECK_CAP", 2)
    t = TracepointTracer(TraceOptions())
    recs = np.concatenate([_failures(str(tmp_path / f"n{i}"), 1) for i in range(5)])
    t._recheck_early(recs[:2])
    t._recheck_early(recs[2:4])
    t._recheck_early(recs[4:])
    df = t._recheck(records_to_frame(recs))
    assert len(_rechecks(df)) == 2
    assert t._early == {}
