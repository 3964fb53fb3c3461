"""The BPF ring reader against every producer state the kernel can leave (hypothesis).

A model of the producer side of kernel/bpf/ringbuf.c drives the real
reader (tracers.stream.RingView) over a fake mapping built the way the
kernel builds its own: the data pages mapped twice, back to back (a memfd
mapped at two adjacent addresses), so a record that wraps past the end of
the data area is read through the second mapping, and a record written
once at ``pos & mask`` is seen at both. The producer reserves records
(header ``len | BUSY`` written, producer position published), commits
them in any order, possibly discarding (``len`` without BUSY, with
DISCARD), and fails a reservation when ``new_prod - cons > mask``, as
__bpf_ringbuf_reserve() does. After every read:

* the records returned so far are exactly the committed, not discarded
  records in reservation order, up to the first one still BUSY;
* the consumer position never passes a BUSY record or the producer;
* nothing outside the double mapping is read: committed-looking records
  with a poison timestamp sit right after the mapping and never appear.

Hostile states (garbage lengths, positions out of protocol, random bytes
under random positions) must end in RingError, one line, never another
exception and never a consumer position past the producer; a read after
close raises RingError too.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracers.stream import BUSY_BIT, DISCARD_BIT, HDR_SZ, RingError, RingView, record_stride
from vfstrace.events import BPF_EVENT_DTYPE, BPF_PATH_EVENT_DTYPE

POISON_TS = 0xDEADBEEFDEADBEEF
DTYPES = [BPF_EVENT_DTYPE, BPF_PATH_EVENT_DTYPE]
PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FIXED = 0x10
MAP_FAILED = ctypes.c_void_p(-1).value


class DoubleMapping:
    """``size`` bytes of a memfd mapped twice back to back, then ``guard`` bytes
    of poison: the kernel's layout of a ring's data area, and what lies past it."""

    def __init__(self, size: int, guard: int = PAGE):
        self.size, self.guard = size, guard
        total = 2 * size + guard
        self.fd = os.memfd_create("vfstrace-ring-test")
        os.ftruncate(self.fd, size)
        prot, shared, private_anon = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        self.base = _libc.mmap(None, total, prot, private_anon, -1, 0)
        assert self.base not in (None, MAP_FAILED)
        for half in (0, size):
            got = _libc.mmap(self.base + half, size, prot, shared | MAP_FIXED, self.fd, 0)
            assert got == self.base + half, ctypes.get_errno()
        self.raw = (ctypes.c_char * total).from_address(self.base)
        self.view = memoryview(self.raw).cast("B")

    def close(self):
        self.view.release()
        _libc.munmap(self.base, 2 * self.size + self.guard)
        os.close(self.fd)


class Producer:
    """The producer side of a BPF ring (kernel/bpf/ringbuf.c), one record size."""

    def __init__(self, dtype: np.dtype, size: int):
        self.dtype = np.dtype(dtype)
        self.size, self.mask = size, size - 1
        self.stride = record_stride(self.dtype)
        self.mem = DoubleMapping(size)
        self.cons = np.zeros(1, dtype="<u8")
        self.prod = np.zeros(1, dtype="<u8")
        self.pending: list[tuple[int, int]] = []  # (position, seq) reserved, not committed
        self.kept: list[tuple[int, int]] = []  # (position, seq) committed, not discarded
        self.seq = 0
        self.failed = 0
        self._poison_guard()
        # the whole mapping, guard included: staying inside 2 * size is the reader's job
        self.ring = RingView(self.cons, self.prod, self.mem.view, size, self.dtype)

    def _poison_guard(self):
        """Committed records with POISON_TS right after the mapping: a reader that
        went past it would hand them out."""
        rec = np.zeros(1, dtype=self.dtype)
        rec["ts_ns"] = POISON_TS
        one = int(self.dtype.itemsize).to_bytes(4, "little") + bytes(4) + rec.tobytes()
        one += bytes(self.stride - len(one))
        start = 2 * self.size
        for off in range(0, self.mem.guard - self.stride + 1, self.stride):
            self.mem.view[start + off : start + off + self.stride] = one

    def write(self, pos: int, data: bytes):
        """Write at ring position ``pos`` into the first copy only, split at the end
        of the data area: the second mapping shows the same pages."""
        off = pos & self.mask
        first = min(len(data), self.size - off)
        self.mem.view[off : off + first] = data[:first]
        if first < len(data):
            self.mem.view[0 : len(data) - first] = data[first:]

    def reserve(self) -> bool:
        prod, cons = int(self.prod[0]), int(self.cons[0])
        if prod + self.stride - cons > self.mask:
            self.failed += 1
            return False
        self.write(prod, (self.dtype.itemsize | BUSY_BIT).to_bytes(4, "little") + (prod // 8 & 0xFFFFFFFF).to_bytes(4, "little"))
        rec = np.zeros(1, dtype=self.dtype)
        rec["ts_ns"] = self.seq
        rec["pid"] = self.seq & 0xFFFFFFFF
        self.write(prod + HDR_SZ, rec.tobytes())  # the body is filled while the record is BUSY
        self.pending.append((prod, self.seq))
        self.seq += 1
        self.prod[0] = prod + self.stride  # smp_store_release(&rb->producer_pos, ...)
        return True

    def commit(self, i: int, discard: bool):
        pos, seq = self.pending.pop(i)
        self.write(pos, (self.dtype.itemsize | (DISCARD_BIT if discard else 0)).to_bytes(4, "little"))
        if not discard:
            self.kept.append((pos, seq))

    def expected_prefix(self) -> list[int]:
        """Seqs a correct reader has handed out once it has read up to the first BUSY record."""
        limit = min((p for p, _ in self.pending), default=int(self.prod[0]))
        return [s for p, s in sorted(self.kept) if p < limit]

    def close(self):
        self.ring.close()
        self.mem.close()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(1, 40)),
        st.tuples(st.just("commit"), st.floats(0, 1, exclude_max=True), st.booleans()),
        st.tuples(st.just("commit_all"), st.booleans()),
        st.tuples(st.just("read")),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype_i=st.sampled_from([0, 1]), pages=st.sampled_from([1, 2, 4]), script=ops)
def test_reader_returns_committed_records_in_order(dtype_i, pages, script):
    p = Producer(DTYPES[dtype_i], pages * PAGE)
    got: list[int] = []
    try:
        for op in script + [("read",), ("commit_all", False), ("read",)]:
            if op[0] == "reserve":
                for _ in range(op[1]):
                    if not p.reserve():
                        break
            elif op[0] == "commit" and p.pending:
                p.commit(int(op[1] * len(p.pending)), op[2])
            elif op[0] == "commit_all":
                while p.pending:
                    p.commit(0, op[1])
            elif op[0] == "read":
                recs = p.ring.drain()
                assert not (recs["ts_ns"] == POISON_TS).any(), "read past the double mapping"
                got += recs["ts_ns"].tolist()
                assert got == p.expected_prefix()
                cons = int(p.cons[0])
                assert cons <= int(p.prod[0])
                assert all(cons <= pos for pos, _ in p.pending), "consumer passed a BUSY record"
                if not p.pending:
                    assert cons == int(p.prod[0])
        assert got == [s for _, s in sorted(p.kept)]
    finally:
        p.close()


def test_wrapped_record_is_read_through_the_second_mapping():
    """A record straddling the end of the data area comes out whole."""
    p = Producer(BPF_PATH_EVENT_DTYPE, PAGE)  # 672-byte stride: the 7th record wraps a 4096-byte ring
    try:
        for _ in range(5):
            assert p.reserve()
        while p.pending:
            p.commit(0, False)
        assert len(p.ring.drain()) == 5
        for _ in range(3):
            assert p.reserve()
        pos = p.pending[1][0]
        assert (pos & p.mask) + p.stride > p.size  # really wraps
        while p.pending:
            p.commit(0, False)
        recs = p.ring.drain()
        assert recs["ts_ns"].tolist() == [5, 6, 7] and recs["pid"].tolist() == [5, 6, 7]
    finally:
        p.close()


BAD_LENGTHS = st.one_of(
    st.sampled_from([0, 1, 8, BPF_EVENT_DTYPE.itemsize - 8, BPF_EVENT_DTYPE.itemsize + 8, PAGE, PAGE - HDR_SZ, (1 << 30) - 1]),
    st.integers(0, (1 << 30) - 1),
).filter(lambda n: n != BPF_EVENT_DTYPE.itemsize)


@settings(max_examples=100, deadline=None)
@given(good=st.integers(0, 10), bad_len=BAD_LENGTHS, discard=st.booleans())
def test_garbage_length_stops_the_reader(good, bad_len, discard):
    """A committed header whose length is not the ring's record size is never
    used to find the next record: RingError, consumer position unmoved."""
    p = Producer(BPF_EVENT_DTYPE, 2 * PAGE)
    try:
        for _ in range(good + 2):
            assert p.reserve()
        while p.pending:
            p.commit(0, False)
        bad_pos = good * p.stride
        p.write(bad_pos, (bad_len | (DISCARD_BIT if discard else 0)).to_bytes(4, "little"))
        before = int(p.cons[0])
        with pytest.raises(RingError):
            p.ring.drain()
        assert int(p.cons[0]) == before
    finally:
        p.close()


@settings(max_examples=100, deadline=None)
@given(cons=st.integers(0, (1 << 64) - 1), delta=st.integers(-(1 << 20), 1 << 20))
def test_positions_out_of_protocol_raise(cons, delta):
    p = Producer(BPF_EVENT_DTYPE, PAGE)
    try:
        prod = cons + delta
        if not 0 <= prod < 1 << 64:
            return
        p.cons[0], p.prod[0] = cons, prod
        ok = cons % 8 == 0 and 0 <= delta <= p.size
        if ok:
            try:
                p.ring.drain()
            except RingError:
                pass  # random bytes in a span that is in protocol: a bad header is still refused
        else:
            with pytest.raises(RingError):
                p.ring.drain()
            assert int(p.cons[0]) == cons
        assert int(p.cons[0]) <= max(prod, cons)
    finally:
        p.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=0, max_size=PAGE), cons=st.integers(0, PAGE // 8).map(lambda n: n * 8),
       pending=st.integers(0, PAGE), dtype_i=st.sampled_from([0, 1]))
def test_random_bytes_never_escape_the_span(data, cons, pending, dtype_i):
    """Whatever the producer left, the reader returns only whole records from
    inside [cons, prod), or raises RingError; it never passes the producer."""
    p = Producer(DTYPES[dtype_i], PAGE)
    try:
        p.write(0, data.ljust(PAGE, b"\0"))
        p.cons[0], p.prod[0] = cons, cons + pending
        try:
            recs = p.ring.drain()
        except RingError:
            assert int(p.cons[0]) == cons
            return
        used = int(p.cons[0]) - cons
        assert 0 <= used <= pending and used % p.stride == 0
        assert len(recs) <= used // p.stride
        assert not (recs["ts_ns"] == POISON_TS).any()
    finally:
        p.close()


def test_read_after_close_raises():
    p = Producer(BPF_EVENT_DTYPE, PAGE)
    assert p.reserve()
    p.commit(0, False)
    p.ring.close()
    with pytest.raises(RingError, match="closed"):
        p.ring.drain()
    with pytest.raises(RingError):
        p.ring.pending_bytes()
    p.ring.close()  # twice is fine
    p.mem.close()


def test_mapping_too_small_for_both_copies_is_refused():
    with pytest.raises(RingError):
        RingView(np.zeros(1, "<u8"), np.zeros(1, "<u8"), bytearray(PAGE + 8), PAGE, BPF_EVENT_DTYPE)
