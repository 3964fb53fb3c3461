"""The event stream path every tier shares: kernel buffers -> columnar batches.

Why not a Python callback per event: on this class of machine a BCC perf
buffer with one Python callback per record drains about 100k events/s, while
a dentry-cache burst under drop_caches produces hundreds of thousands of
frees in well under a second. So the stream works in bulk:

* **BPF ring buffer** (kernel >= 5.8, commit 457f44363a88 "bpf: Implement BPF
  ring buffer and verifier support for it"). Each ring carries records of ONE
  fixed size (one ring for ``struct vfs_event``, one for ``struct
  vfs_path_event``). :class:`RingStream` mmaps the ring's map fd directly,
  the way libbpf's ring_buffer__add() does: the consumer page read-write at
  offset 0, the producer page plus the data area (which the kernel maps
  twice back to back, so a span that wraps is still contiguous) read-only at
  offset PAGE_SIZE. Every record starts with an 8-byte header ``u32 len;
  u32 pg_off`` whose top bits are BUSY (reserved, not yet committed) and
  DISCARD (dropped by the producer). One poll reads the producer position,
  lays a numpy structured dtype of stride ``round_up(8 + size, 8)`` over the
  whole pending span, stops at the first BUSY record, drops DISCARDed ones,
  copies the rest out and advances the consumer position once: no Python
  code runs per event.
* **Why the reader cannot read out of bounds** (:class:`RingView`, the
  protocol of kernel/bpf/ringbuf.c and libbpf's ringbuf_process_ring()):
  the ring's real size is asked of the kernel (the map's max_entries), never
  assumed; the mapping must hold the producer page and both copies of the
  data area; the positions must satisfy ``0 <= prod - cons <= size`` and
  ``cons % 8 == 0`` or the read stops with :class:`RingError`; the span read
  starts at ``cons & mask < size`` and is ``prod - cons <= size`` long, so
  it ends inside the double mapping, and every access is a bounds-checked
  Python buffer slice (no ctypes pointer into the mapping). A header that
  reads committed (BUSY clear) was cleared by the kernel's xchg after the
  body was written, and nothing before the first BUSY header can change
  until the consumer position passes it; a
  committed length other than the ring's record size is a producer bug,
  reported as :class:`RingError`, not trusted. Ordering: the kernel pairs
  ``smp_store_release(producer_pos)`` with the reader's acquire load; on
  x86-64 (TSO) a plain load is an acquire and a plain store a release, and
  each position access here is its own interpreter call the C compiler
  cannot move others across, so :class:`RingStream` refuses other
  architectures. After :meth:`RingView.close` every read raises
  :class:`RingError` instead of touching the unmapped pages, and records
  handed out are always copies, so none outlives the mapping it came from.
* Producers submit with ``BPF_RB_NO_WAKEUP``: the consumer polls on a short
  timer (:meth:`RingStream.poll` sleeps in small steps up to ``timeout_ms``),
  so the kernel never pays for a wake-up per event. At 1M events/s a 10 ms
  tick is 10k records; rings are sized in megabytes for dentry-free bursts.
* **Draining on a thread of its own** (:meth:`RingStream.start`): the
  records of a 16 MiB ring of path events last 25 ms at 1M events/s, less
  than one batch of the recorder's work (converting, writing, correlating
  a few hundred thousand rows), so a consumer that drains between batches
  loses whatever the ring cannot hold meanwhile, however fast it is on
  average. Started, a stream's thread copies the ring out as long as it
  has records and sleeps ``IDLE_S`` only when it is empty; it gets the GIL
  at least every switch interval (5 ms) even while the recorder is busy, and
  the copies it queues wait for ``poll_records``. The queue is bounded
  (``max_queued_bytes``, by default QUEUE_RINGS rings' worth): a consumer
  that falls behind for good stops the draining, the ring fills and the
  kernel counts the drops as before, so memory stays bounded and every
  loss is still counted, never hidden.
* **Perf buffer fallback** (:class:`PerfStream`) for kernels without the
  ring buffer: BCC's per-CPU perf buffers with a callback that only appends
  the raw bytes; parsing is still done in bulk per poll.

Loss is data, never hidden: producers count failed reservations in a
per-CPU array (``bpf_ringbuf_reserve`` returned NULL), perf buffers report
lost samples through BCC's lost callback; both surface as ``lost() ->
{cpu: n}`` (cpu -1 when the kernel does not say which CPU lost them).

Why one module: the reader's safety argument above (positions checked,
spans bounded, records copied before the consumer position moves, the
ring read by one thread at a time) is about the code of RingView and
RingStream together, their thread included; split, the argument would
live apart from code it covers. The conversion of records to the event
schema is apart (tracers/text.py).

Public API::

    s = RingStream(map_fd, BPF_EVENT_DTYPE, size_bytes, drops=percpu_table, drop_index=0)
    recs = s.poll_records(timeout_ms)   # numpy structured array (columnar batch)
    df = s.poll(timeout_ms)             # the same as an event-schema DataFrame
    s.lost()                            # {cpu: dropped}
    s.close()

:func:`parse_ring_span` is the pure parser (tested on synthetic bytes) and
:func:`records_to_frame` (tracers/text.py, importable from here) the fast
conversion to the event schema (the same frame as
vfstrace.events.frame_from_records, strings made in Arrow from the fixed-width
fields).
"""

from __future__ import annotations

import mmap
import platform
import threading
import time

import numpy as np

from tracers.text import records_to_frame
from vfstrace.errors import TierUnavailable, VfstraceError

BUSY_BIT = 1 << 31  # BPF_RINGBUF_BUSY_BIT (include/uapi/linux/bpf.h)
DISCARD_BIT = 1 << 30  # BPF_RINGBUF_DISCARD_BIT
HDR_SZ = 8  # BPF_RINGBUF_HDR_SZ
PAGE_SIZE = mmap.PAGESIZE
# Architectures whose memory model makes plain loads acquires and plain
# stores releases (TSO), which is what the reader's position accesses need.
TSO_MACHINES = {"x86_64", "amd64", "AMD64", "i386", "i686"}


class RingError(VfstraceError, ValueError):
    """The ring's contents or positions contradict the kernel's protocol
    (or it was read after close): reading on would mean trusting garbage."""


def record_stride(dtype: np.dtype) -> int:
    """Bytes one committed record of ``dtype`` occupies in a ring (header + body, 8-aligned)."""
    return (HDR_SZ + dtype.itemsize + 7) & ~7


def framed_dtype(dtype: np.dtype) -> np.dtype:
    """A dtype covering header + body + padding, for viewing a span of records at once."""
    return np.dtype(
        {
            "names": ["len", "pg_off", "rec"],
            "formats": ["<u4", "<u4", dtype],
            "offsets": [0, 4, HDR_SZ],
            "itemsize": record_stride(dtype),
        }
    )


def parse_ring_span(buf, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """Parse committed fixed-size records from the start of ``buf``.

    ``buf`` is the pending span, consumer position first (contiguous: the
    kernel double-maps the data area, and tests pass plain bytes).
    Returns ``(records, consumed_bytes)``: ``records`` is a copy (safe after
    the consumer position moves) without discarded records; parsing stops at
    the first BUSY record, which is still being written, so
    ``consumed_bytes`` never passes it. A committed header whose length is
    not ``dtype.itemsize`` means the ring does not hold only records of this
    type: that is a bug in the producer, reported as :class:`RingError`
    (a ValueError), and its length is never used to find the next record.
    """
    stride = record_stride(dtype)
    mv = memoryview(buf)
    n = len(mv) // stride
    if n == 0:
        return np.empty(0, dtype=dtype), 0
    framed = np.frombuffer(mv, dtype=framed_dtype(dtype), count=n)
    lens = framed["len"]
    busy = np.flatnonzero(lens & BUSY_BIT)
    k = int(busy[0]) if len(busy) else n
    if k == 0:
        return np.empty(0, dtype=dtype), 0
    lens = lens[:k]
    sizes = lens & ~np.uint32(BUSY_BIT | DISCARD_BIT)
    if np.any(sizes != dtype.itemsize):
        bad = int(sizes[sizes != dtype.itemsize][0])
        raise RingError(f"ring record of {bad} bytes where {dtype.itemsize} expected: the ring's producer "
                        "wrote a record this reader does not know; stopping rather than trusting its length")
    keep = (lens & DISCARD_BIT) == 0
    recs = framed["rec"][:k]
    out = recs[keep] if not keep.all() else recs.copy()
    return out, k * stride


def _grouped(batches: list[np.ndarray], limit: int) -> list[np.ndarray]:
    """Consecutive batches joined into runs of at most ``limit`` bytes (a
    batch larger than that alone): a thread that empties the ring as it
    fills copies out many small batches, each of which would cost the
    recorder a conversion of its own, while one joined copy of them all
    would be memory the process has not touched yet (RingStream.poll_batches)."""
    out, run, size = [], [], 0
    for b in batches:
        if run and size + b.nbytes > limit:
            out.append(run[0] if len(run) == 1 else np.concatenate(run))
            run, size = [], 0
        run.append(b)
        size += b.nbytes
    if run:
        out.append(run[0] if len(run) == 1 else np.concatenate(run))
    return out


def _joined(batches: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    if not batches:
        return np.empty(0, dtype=dtype)
    return batches[0] if len(batches) == 1 else np.concatenate(batches)


def poll_streams(streams, timeout_ms: int = 100, clock=time.monotonic) -> list[np.ndarray]:
    """Batches of raw records from every stream (a ring stream's as it copied
    them out, see RingStream.poll_batches); waits up to ``timeout_ms`` for the first record of any."""
    deadline = clock() + timeout_ms / 1000.0
    while True:
        out = []
        for s in streams:
            out += s.poll_batches(0) if hasattr(s, "poll_batches") else [s.poll_records(0)]
        if any(len(r) for r in out) or clock() >= deadline:
            return out
        time.sleep(min(0.005, max(0.0, deadline - clock())))


def batches_frame(batches, dtype: np.dtype):
    """Record batches of several streams -> one event-schema frame in time order (stable)."""
    import pandas as pd

    frames = [records_to_frame(r) for r in batches if len(r)]
    if not frames:
        return records_to_frame(np.empty(0, dtype=dtype))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return df.sort_values("ts_ns", kind="stable", ignore_index=True)


def percpu_slots(table) -> list[list[int]]:
    """A program's per-CPU counters (bpf/common.h ``struct vfs_counts``, one element): slot values per CPU."""
    import ctypes

    try:
        vals = table[ctypes.c_int(0)]
    except KeyError:
        return []
    return [[int(x) for x in v.c] for v in vals]


def percpu_sum(table, index: int = 0) -> dict[int, int]:
    """One counter slot as {cpu: value} (only non-zero CPUs)."""
    return {cpu: c[index] for cpu, c in enumerate(percpu_slots(table)) if index < len(c) and c[index]}


def counter_totals(table, names) -> dict[str, int]:
    """Every slot summed over CPUs, by name (``names`` in slot order)."""
    per_cpu = percpu_slots(table)
    return {name: sum(c[i] for c in per_cpu if i < len(c)) for i, name in enumerate(names)}


class RingView:
    """The consumer side of one BPF ring, over three buffers.

    ``cons`` (writable) and ``prod`` are one-element ``<u8`` arrays over the
    consumer and producer positions; ``data`` is a buffer of at least
    ``2 * size`` bytes in which byte ``i + size`` is byte ``i`` (the
    kernel's double mapping of the data pages). :class:`RingStream` passes
    the kernel's mapping; tests pass a fake one. See the module docstring
    for why no read leaves the buffers.
    """

    def __init__(self, cons, prod, data, size: int, dtype: np.dtype):
        if size <= 0 or size & (size - 1) or size % 8:
            raise ValueError("ring size must be a power of two and a multiple of 8")
        data = memoryview(data)
        if data.nbytes < 2 * size:
            raise RingError(f"ring data mapping of {data.nbytes} bytes cannot hold both copies of a {size}-byte ring")
        self.dtype = np.dtype(dtype)
        self.size = size
        self.mask = size - 1
        self.stride = record_stride(self.dtype)
        self._cons = cons
        self._prod = prod
        self._data = data[: 2 * size]

    def positions(self) -> tuple[int, int]:
        """(consumer, producer), checked against the protocol."""
        if self._data is None:
            raise RingError("ring buffer read after it was closed")
        cons = int(self._cons[0])
        prod = int(self._prod[0])  # acquire on TSO: pairs with the kernel's smp_store_release
        if cons & 7 or not 0 <= prod - cons <= self.size:
            raise RingError(
                f"ring positions out of protocol (consumer {cons}, producer {prod}, ring {self.size} bytes): "
                "stopping rather than reading outside the committed span"
            )
        return cons, prod

    def pending_bytes(self) -> int:
        cons, prod = self.positions()
        return prod - cons

    def fill(self) -> float:
        """The share of the ring holding records not consumed yet, for a reader on another thread:
        its two loads may straddle a drain, so the difference is clamped to the ring, never checked
        as the consumer's own read is (a gauge, not a bound anything is read within)."""
        cons, prod = self._cons, self._prod
        if self._data is None or cons is None or prod is None:
            return 0.0
        return min(max(int(prod[0]) - int(cons[0]), 0), self.size) / self.size

    def drain(self) -> np.ndarray:
        """Take every committed record now in the ring, in order, without waiting."""
        cons, prod = self.positions()
        if prod == cons:
            return np.empty(0, dtype=self.dtype)
        off = cons & self.mask  # < size; off + (prod - cons) <= 2 * size: inside the double mapping
        recs, used = parse_ring_span(self._data[off : off + (prod - cons)], self.dtype)
        if used:
            self._cons[0] = cons + used  # release on TSO: the records were copied out first
        return recs

    def close(self) -> None:
        """Drop every view of the buffers; reads afterwards raise RingError."""
        if self._data is not None:
            self._data.release()
        self._data = None
        self._cons = self._prod = None


def _kernel_ring_size(map_fd: int) -> int | None:
    """max_entries of a ring buffer map as the kernel holds it (BPF_OBJ_GET_INFO_BY_FD), or None."""
    import ctypes

    try:
        from bcc.libbcc import lib
    except ImportError:
        return None
    info = (ctypes.c_uint8 * 256)()
    n = ctypes.c_uint32(ctypes.sizeof(info))
    # struct bpf_map_info: type, id, key_size, value_size, max_entries (u32 at offset 16)
    if lib.bpf_obj_get_info(map_fd, ctypes.cast(info, ctypes.c_void_p), ctypes.byref(n)) != 0 or n.value < 20:
        return None
    return int.from_bytes(bytes(info[16:20]), "little")


IDLE_S = 0.002  # a started stream's thread sleeps this long when its ring is empty
QUEUE_RINGS = 8  # ... and queues at most this many rings' worth of records for poll_records
# ... handed on in runs of at most this many bytes: below glibc's largest mmap threshold (32 MiB),
# so a run's memory is reused from the heap rather than faulted in anew
JOIN_BYTES = 16 << 20


class RingStream:
    """Bulk consumer of one BPF ring buffer holding fixed-size records of ``dtype``."""

    def __init__(self, map_fd: int, dtype: np.dtype, size_bytes: int, drops=None, drop_index: int = 0):
        if size_bytes <= 0 or size_bytes & (size_bytes - 1) or size_bytes % PAGE_SIZE:
            raise ValueError("ring size must be a power-of-two multiple of the page size")
        if platform.machine() not in TSO_MACHINES:
            raise TierUnavailable(
                f"the BPF ring buffer reader relies on x86's memory ordering; {platform.machine()} needs "
                "acquire/release accesses it cannot make"
            )
        real = _kernel_ring_size(map_fd)
        if real is not None and real != size_bytes:
            raise RingError(f"ring buffer map holds {real} bytes, not the {size_bytes} the reader was told")
        self.dtype = np.dtype(dtype)
        self.size = size_bytes
        self._drops = drops
        self._drop_index = drop_index
        self.received = 0
        self.polls = 0
        self._thread: threading.Thread | None = None
        # Called on the drain thread with each batch read, before it is queued, for work that
        # cannot wait for the consumer; it must not wait itself (tracers/recheck.py hands over).
        self.on_batch = None
        self._stop = threading.Event()
        self._kick = threading.Event()  # wakes the thread from its idle sleep
        self._cond = threading.Condition()  # guards the queue and the rounds asked for / served
        self._asked = self._served = 0
        self._queue: list[np.ndarray] = []
        self._queued_bytes = 0
        self._max_queued = QUEUE_RINGS * size_bytes
        self._error: BaseException | None = None
        self._cons_map = mmap.mmap(map_fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod_map = mmap.mmap(map_fd, PAGE_SIZE + 2 * size_bytes, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE_SIZE)
        self._ring = RingView(
            np.frombuffer(self._cons_map, dtype="<u8", count=1),
            np.frombuffer(self._prod_map, dtype="<u8", count=1),
            memoryview(self._prod_map)[PAGE_SIZE:],
            size_bytes,
            self.dtype,
        )

    @classmethod
    def from_bcc(cls, table, dtype, size_bytes, drops=None, drop_index=0):
        """Wrap a BCC RingBuf table (BPF_RINGBUF_OUTPUT) by its map fd."""
        return cls(table.map_fd, dtype, size_bytes, drops, drop_index)

    def pending_bytes(self) -> int:
        return self._ring.pending_bytes()

    def fill(self) -> float:
        return self._ring.fill()

    def drain(self) -> np.ndarray:
        """Take every committed record now in the ring (and, once started, every
        one the thread has queued), without waiting."""
        return _joined(self._drain_batches(), self.dtype)

    def _drain_batches(self) -> list[np.ndarray]:
        if self._thread is not None:
            return self._take()
        recs = self._ring.drain()
        self.received += len(recs)
        return [recs] if len(recs) else []

    def start(self, max_queued_bytes: int | None = None) -> None:
        """Drain the ring on a thread of its own from now on (module docstring: why)."""
        if self._thread is not None:
            return
        if max_queued_bytes is not None:
            self._max_queued = int(max_queued_bytes)
        self._thread = threading.Thread(target=self._run, name="vfstrace-ring", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Only this thread reads the ring once started. A consumer that must
        see everything up to now (``_take``) asks for a round (``_asked``)
        and waits until one that began after its asking has ended
        (``_served``): the ring is never read from two threads, and no lock
        is held while reading it, which would starve the consumer of it."""
        try:
            while not self._stop.is_set():
                with self._cond:
                    asked = self._asked
                full = self._queued_bytes >= self._max_queued  # the consumer is behind: the kernel drops, counted
                recs = self._ring.drain() if not full or asked > self._served else np.empty(0, dtype=self.dtype)
                if len(recs) and self.on_batch is not None:
                    self.on_batch(recs)
                with self._cond:
                    if len(recs):
                        self._queue.append(recs)
                        self._queued_bytes += recs.nbytes
                        self.received += len(recs)
                    self._served = asked
                    self._cond.notify_all()
                if not len(recs):
                    self._kick.wait(IDLE_S)
                    self._kick.clear()
        except BaseException as e:  # noqa: BLE001 - a RingError is raised to the consumer at its next poll
            self._error = e
        finally:
            with self._cond:
                self._served = float("inf")
                self._cond.notify_all()

    def _take(self) -> np.ndarray:
        """What the thread queued up to a round of reading the ring that began
        after this call: a caller that made records (a flush of folded
        repeats) and drains at once finds them, and a drain that returns
        empty left nothing in the ring."""
        with self._cond:
            self._asked += 1
            want = self._asked
            self._kick.set()
            while self._served < want and self._error is None:
                self._cond.wait(0.1)
            q, self._queue, self._queued_bytes = self._queue, [], 0
        if self._error is not None and not q:
            raise self._error
        return _grouped(q, JOIN_BYTES)

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._kick.set()
            self._thread.join()

    def poll_records(self, timeout_ms: int = 100) -> np.ndarray:
        """Records as one numpy batch; waits up to ``timeout_ms`` for the first."""
        return _joined(self.poll_batches(timeout_ms), self.dtype)

    def poll_batches(self, timeout_ms: int = 100) -> list[np.ndarray]:
        """The records as the batches they were copied out in (none empty):
        joining them would copy them all once more into memory the process
        has not touched yet, and on hosts where a page fault is dear that
        costs more than parsing them did. Waits up to ``timeout_ms`` for the first."""
        self.polls += 1
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            out = self._drain_batches()
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))

    def poll(self, timeout_ms: int = 100):
        return records_to_frame(self.poll_records(timeout_ms))

    def lost(self) -> dict[int, int]:
        return percpu_sum(self._drops, self._drop_index) if self._drops is not None else {}

    def close(self) -> None:
        """Unmap the ring. The views go first; a mapping still exported
        elsewhere (which the reader never hands out) stays until exit
        rather than being unmapped under a live view. A started stream's
        thread stops first; what it queued and no poll took is dropped with
        the stream (the caller drains before closing)."""
        self._stop_thread()
        self._ring.close()
        for name in ("_cons_map", "_prod_map"):
            m = getattr(self, name, None)
            if m is not None:
                try:
                    m.close()
                except BufferError:
                    pass
                setattr(self, name, None)


class PerfStream:
    """Fallback for kernels without BPF_MAP_TYPE_RINGBUF: a BCC perf buffer.

    The callback only appends raw bytes; parsing happens per poll in bulk.
    Lost samples come from BCC's lost callback, which does not say the CPU:
    they are reported under cpu -1.
    """

    def __init__(self, bpf, table_name: str, dtype: np.dtype, page_cnt: int = 256, drops=None, drop_index=0):
        import ctypes

        self.dtype = np.dtype(dtype)
        self._bpf = bpf
        self._chunks: list[bytes] = []
        self._lost = 0
        self._drops = drops
        self._drop_index = drop_index
        self.received = 0
        size = self.dtype.itemsize

        def _cb(cpu, data, data_size):
            self._chunks.append(ctypes.string_at(data, size))

        def _lost(n):
            self._lost += n

        bpf[table_name.encode()].open_perf_buffer(_cb, page_cnt=page_cnt, lost_cb=_lost)

    def poll_records(self, timeout_ms: int = 100) -> np.ndarray:
        self._bpf.perf_buffer_poll(timeout=timeout_ms)
        if not self._chunks:
            return np.empty(0, dtype=self.dtype)
        raw = b"".join(self._chunks)
        self._chunks.clear()
        recs = np.frombuffer(raw, dtype=self.dtype).copy()
        self.received += len(recs)
        return recs

    def poll(self, timeout_ms: int = 100):
        return records_to_frame(self.poll_records(timeout_ms))

    def lost(self) -> dict[int, int]:
        out = percpu_sum(self._drops, self._drop_index) if self._drops is not None else {}
        if self._lost:
            out[-1] = out.get(-1, 0) + self._lost
        return out

    def close(self) -> None:
        self._chunks.clear()


class StreamOwner:
    """What a tracer that owns a BCC program and the streams of its rings
    shares (a mixin before :class:`tracers.Tracer`): their losses merged,
    and one way to close them, streams first, so no view of a ring outlives
    the program that holds its map."""

    _bpf = None
    _streams: list = []

    def lost(self) -> dict[int, int]:
        return merge_lost(*(s.lost() for s in self._streams))

    def ring_fill(self) -> dict[str, float]:
        from vfstrace.events import BPF_PATH_EVENT_DTYPE

        return {"paths" if s.dtype == BPF_PATH_EVENT_DTYPE else "events": s.fill()
                for s in self._streams if isinstance(s, RingStream)}

    def _start_streams(self) -> None:
        """Every ring stream drains on its own thread from now on (RingStream.start)."""
        for s in self._streams:
            if isinstance(s, RingStream):
                s.start()

    def close(self) -> None:
        for s in self._streams:
            s.close()
        self._streams = []
        if self._bpf is not None:
            try:
                self._bpf.cleanup()
            finally:
                self._bpf = None


def merge_lost(*parts: dict[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for p in parts:
        for cpu, n in p.items():
            out[cpu] = out.get(cpu, 0) + n
    return out
