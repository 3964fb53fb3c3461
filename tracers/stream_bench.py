"""The synthetic producer bench/stream.py measures the stream consumer with.

Why a tracer of its own: the bench must push records of the real sizes
through the real path (BPF ring -> :class:`tracers.stream.RingStream` ->
vfstrace.recorder -> the trace writer) at rates no real syscall storm on
this class of machine reaches, and set those rates. bpf/stream_bench.c
emits ``per_trigger`` records per getppid() of one task (the bench's C
generator); this class loads it, with the rings sized as the tracepoint
tier sizes them, and polls the rings the same way the tracepoint tier does
(:func:`tracers.stream.poll_streams`, :func:`tracers.stream.batches_frame`),
so what the bench measures is what a recording pays. It lives here because
``tracers/`` is the only importer of bcc.
"""

from __future__ import annotations

import os

from bpf import INCLUDE, program
from tracers import BuildError, Tracer, build_bpf, import_bcc
from tracers.stream import PAGE_SIZE, RingStream, StreamOwner, batches_frame, counter_totals, poll_streams
from vfstrace.errors import PrivilegeError, TierUnavailable, VfstraceError
from vfstrace.events import BPF_EVENT_DTYPE, BPF_PATH_EVENT_DTYPE, counter_names

SOURCE = "stream_bench.c"
TRIGGER = "tracepoint:syscalls:sys_enter_getppid"


class StreamBenchTracer(StreamOwner, Tracer):
    """Loads bpf/stream_bench.c for the generator (``pid`` or ``comm`` of the options); polls its two rings."""

    tier = "stream-bench"

    def __init__(self, options, *, per_trigger: int = 64, dentry_every: int = 0, ev_pages: int = 8192,
                 path_pages: int = 4096):
        super().__init__(options)
        if options.pid is None and options.comm is None:
            raise VfstraceError("the stream bench producer needs the generator's pid or comm")
        if not 1 <= per_trigger <= 256:
            raise VfstraceError("per_trigger must be between 1 and 256 records")
        self.per_trigger = int(per_trigger)
        self.dentry_every = max(0, int(dentry_every))
        self.ev_pages, self.path_pages = int(ev_pages), int(path_pages)
        self._bpf = None
        self._streams: list[RingStream] = []

    def _defines(self) -> list[str]:
        o = self.options
        d = [f"VFS_FILTER_PID={int(o.pid)}"] if o.pid is not None else []
        if o.comm is not None:
            w0, w1 = o.comm_words()
            d += ["VFS_FILTER_COMM=1", f"VFS_COMM0={int(w0)}ULL", f"VFS_COMM1={int(w1)}ULL"]
        return d + [f"VFS_BENCH_K={self.per_trigger}",
                f"VFS_BENCH_DENTRY_EVERY={self.dentry_every}", f"VFS_EV_RING_PAGES={self.ev_pages}",
                f"VFS_PATH_RING_PAGES={self.path_pages}"]

    def program_text(self) -> str:
        return "".join(f"#define {d.replace('=', ' ', 1)}\n" for d in self._defines()) + program(SOURCE)

    def load(self) -> None:
        if self._bpf is not None:
            return
        if os.geteuid() != 0:
            raise PrivilegeError("the stream bench loads a BPF program: run as root")
        bcc = import_bcc()
        from tracers.headers import prepare

        prepare("the stream bench producer", fallback_ok=True, why_fallback="it reads no kernel structure")
        try:
            self._bpf = build_bpf(bcc, program(SOURCE), [INCLUDE] + [f"-D{d}" for d in self._defines()])
        except BuildError as e:
            raise TierUnavailable(f"stream bench program failed to load: {e}") from None
        counts = self._bpf[b"counts"]
        self._streams = [
            RingStream.from_bcc(self._bpf[b"events"], BPF_EVENT_DTYPE, self.ev_pages * PAGE_SIZE, counts, 0),
            RingStream.from_bcc(self._bpf[b"pevents"], BPF_PATH_EVENT_DTYPE, self.path_pages * PAGE_SIZE, counts, 1),
        ]
        self._start_streams()

    def poll_records(self, timeout_ms: int = 100):
        if self._bpf is None:
            raise VfstraceError("tracer not loaded")
        return poll_streams(self._streams, timeout_ms)

    def poll(self, timeout_ms: int = 100):
        return batches_frame(self.poll_records(timeout_ms), BPF_EVENT_DTYPE)

    def counters(self) -> dict[str, int]:
        if self._bpf is None:
            return {}
        return counter_totals(self._bpf[b"counts"], counter_names(SOURCE))

    def attached(self) -> list[str]:
        return [TRIGGER] if self._bpf is not None else []
