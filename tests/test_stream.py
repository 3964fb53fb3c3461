"""The shared stream path: bulk ring parsing (synthetic bytes) and a live exact count."""

import os
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest

from conftest import is_root, need
from tracers.stream import BUSY_BIT, DISCARD_BIT, parse_ring_span, record_stride, records_to_frame
from vfstrace.events import BPF_EVENT_DTYPE, BPF_PATH_EVENT_DTYPE, ENOENT, Kind, frame_from_records


def _records(n, dtype=BPF_EVENT_DTYPE, start=0):
    r = np.zeros(n, dtype=dtype)
    r["ts_ns"] = np.arange(start, start + n) * 10
    r["dentry"] = np.uint64(0xFFFF888000000000) + np.arange(start, start + n, dtype=np.uint64) * np.uint64(192)
    r["kind"] = int(Kind.D_FREE)
    r["comm"] = b"cp"
    return r


def _frame(recs, flags=None):
    """Lay records out as a ring would: header (len, pg_off) + body, 8-aligned."""
    stride = record_stride(recs.dtype)
    buf = bytearray(stride * len(recs))
    for i, rec in enumerate(recs):
        ln = recs.dtype.itemsize | (flags[i] if flags is not None else 0)
        buf[i * stride : i * stride + 4] = int(ln).to_bytes(4, "little")
        buf[i * stride + 8 : i * stride + 8 + recs.dtype.itemsize] = rec.tobytes()
    return bytes(buf)


def test_parse_all_committed():
    recs = _records(100)
    out, used = parse_ring_span(_frame(recs), BPF_EVENT_DTYPE)
    assert used == 100 * record_stride(BPF_EVENT_DTYPE)
    assert np.array_equal(out, recs)


def test_parse_stops_at_busy_record():
    recs = _records(10)
    flags = [0] * 10
    flags[6] = BUSY_BIT
    out, used = parse_ring_span(_frame(recs, flags), BPF_EVENT_DTYPE)
    assert len(out) == 6 and used == 6 * record_stride(BPF_EVENT_DTYPE)
    assert np.array_equal(out, recs[:6])


def test_parse_skips_discarded_but_consumes_them():
    recs = _records(8, BPF_PATH_EVENT_DTYPE)
    flags = [0, DISCARD_BIT, 0, 0, DISCARD_BIT, 0, 0, 0]
    out, used = parse_ring_span(_frame(recs, flags), BPF_PATH_EVENT_DTYPE)
    assert used == 8 * record_stride(BPF_PATH_EVENT_DTYPE)
    assert list(out["ts_ns"]) == [0, 20, 30, 50, 60, 70]


def test_parse_partial_record_left_for_next_poll():
    recs = _records(3)
    raw = _frame(recs)
    out, used = parse_ring_span(raw[:-10], BPF_EVENT_DTYPE)
    assert len(out) == 2 and used == 2 * record_stride(BPF_EVENT_DTYPE)


def test_parse_wraparound_via_double_mapping():
    # The kernel maps the data area twice, so a span that wraps the ring end
    # reads contiguously; emulate it with a ring of 4 slots whose consumer is
    # at slot 3 and producer at slot 3 + 3 (wrapped).
    stride = record_stride(BPF_EVENT_DTYPE)
    size = 4 * stride
    ring = bytearray(size)
    recs = _records(3, start=7)
    framed = _frame(recs)
    for i in range(3):
        slot = (3 + i) % 4
        ring[slot * stride : (slot + 1) * stride] = framed[i * stride : (i + 1) * stride]
    doubled = bytes(ring) + bytes(ring)
    cons = 3 * stride
    out, used = parse_ring_span(doubled[cons : cons + 3 * stride], BPF_EVENT_DTYPE)
    assert used == 3 * stride and np.array_equal(out, recs)


def test_parse_rejects_foreign_record_size():
    recs = _records(2)
    raw = bytearray(_frame(recs))
    raw[0:4] = (40).to_bytes(4, "little")
    with pytest.raises(ValueError):
        parse_ring_span(bytes(raw), BPF_EVENT_DTYPE)


def test_records_to_frame_matches_schema_conversion():
    recs = _records(50, BPF_PATH_EVENT_DTYPE)
    recs["path"][::3] = "/tmp/dir/f\u00e9".encode()
    recs["path2"][1] = b"\xff\xfe bad utf8"
    recs["name"][2] = b"abc\0stale"
    pd.testing.assert_frame_equal(records_to_frame(recs), frame_from_records(recs))
    pd.testing.assert_frame_equal(records_to_frame(recs[:0]), frame_from_records(recs[:0]))


STAT_LOOP = """
import os, sys, ctypes
libc = ctypes.CDLL(None)
libc.prctl(15, sys.argv[2].encode(), 0, 0, 0)  # PR_SET_NAME: a unique comm
for _ in range(int(sys.argv[3])):
    try:
        os.stat(sys.argv[1])
    except FileNotFoundError:
        pass
"""


@pytest.mark.live
def test_live_ring_stream_counts_exactly(tmp_path):
    need(is_root(), "needs root for BPF")
    from tracers.tracepoint import TracepointTracer, tracefs
    from vfstrace.options import TraceOptions

    try:
        tracefs()
        import bcc  # noqa: F401
    except Exception as e:  # noqa: BLE001
        need(False, f"needs tracefs and bcc: {e}")
    comm = "vst" + uuid.uuid4().hex[:8]
    missing = str(tmp_path / "no-such-file")
    n = 20000
    # one record per call through the ring: identical repeats are not folded here
    t = TracepointTracer(TraceOptions(comm=comm, extra={"coalesce_ns": 0}))
    t.load()
    try:
        subprocess.run([sys.executable, "-c", STAT_LOOP, missing, comm, str(n)], check=True)
        got = []
        for _ in range(20):
            df = t.poll(50)
            # the failures themselves, not the tracer's re-checks of them (RECHECK rows)
            got.append(df[(df.comm == comm) & (df.path == missing) & (df.kind == int(Kind.PATH_SYSCALL))])
            if sum(len(g) for g in got) >= n:
                break
        rows = pd.concat(got)
        assert len(rows) == n
        assert (rows.ret == ENOENT).all()
        assert t.lost() == {}
        c = t.counters()
        assert c["dropped_path_events"] == 0
    finally:
        t.close()


def test_counters_are_read_from_one_per_cpu_element():
    """bpf/common.h keeps every counter slot in element 0 of `counts` (struct
    vfs_counts): BCC hands that element back as one struct per CPU, and the
    readers sum each slot over CPUs and give one slot per CPU for losses."""
    import ctypes

    from tracers.stream import counter_totals, percpu_slots, percpu_sum

    class Counts(ctypes.Structure):
        _fields_ = [("c", ctypes.c_uint64 * 3)]

    per_cpu = [Counts((ctypes.c_uint64 * 3)(5, 0, 7)), Counts((ctypes.c_uint64 * 3)(1, 0, 0))]

    class Table(dict):
        def __getitem__(self, key):
            if key.value != 0:
                raise KeyError(key.value)  # a one-element array
            return per_cpu

    t = Table()
    assert percpu_slots(t) == [[5, 0, 7], [1, 0, 0]]
    assert counter_totals(t, ["walk", "lost", "prune"]) == {"walk": 6, "lost": 0, "prune": 7}
    assert percpu_sum(t, 0) == {0: 5, 1: 1}
    assert percpu_sum(t, 2) == {0: 7}  # CPUs with nothing are left out
    assert percpu_sum(t, 1) == {}
