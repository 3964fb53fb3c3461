"""Writing traces: schema tables from what callers hand over, crash-safe chunks, whole frames."""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from vfstrace import __version__
from vfstrace.errors import VfstraceError
from vfstrace.events import (
    SCHEMA_VERSION,
    Kind,
)
from vfstrace.store.files import (
    _PART_RE,
    FILE_SCHEMA,
    META_FILE,
    _atomic_write_bytes,
    _is_jsonl,
    carried_notes,
    _now_iso,
    make_private_dir,
)
from vfstrace.store.encoder import Encoder, save_meta, write_part
from vfstrace.store.jsonl import write_jsonl
from vfstrace.store.table import to_table

# Parts of at least this many events go to the encoder process (started at
# the first such part): below it, starting a Python that imports pyarrow
# costs more than encoding in-process saves.
ENCODER_MIN_ROWS = 16384


class TraceWriter:
    """Append events to a trace directory in crash-safe chunks.

    ``write()`` buffers; a chunk is flushed to a new Parquet part when
    ``chunk_events`` rows are pending or ``flush_seconds`` have passed since
    the last flush (checked on each ``write()``/``add_lost()``, so a live
    recorder that polls regularly flushes about once per ``flush_seconds``
    even when events trickle in). Not thread-safe: one recorder thread owns it.

    Once a part of ``ENCODER_MIN_ROWS`` events is flushed (or from the first
    part with ``encoder=True``; never with ``encoder=False``) parts are
    encoded and fsync'ed by an encoder process (vfstrace/store/encoder.py
    says why and what it guarantees) while the caller's next batches are
    converted. A flush that ``write()`` starts is then on disk a part's
    encoding later, not when ``write()`` returns: ``events_flushed`` says
    what a crash would keep, and ``flush()`` and ``close()`` wait until
    everything handed over is on disk and raise the encoder's failure, e.g.
    a full disk, as the one-line VfstraceError.
    """

    def __init__(
        self,
        path,
        *,
        meta: dict | None = None,
        chunk_events: int = 65536,
        flush_seconds: float = 1.0,
        overwrite: bool = False,
        shared: bool = False,
        encoder: bool | None = None,
    ):
        self.path = Path(path)
        self._use_encoder = encoder
        self.shared = bool(shared)  # 0750/0640 instead of 0700/0600 (vfstrace/store/files.py says why)
        if chunk_events <= 0:
            raise VfstraceError("chunk_events must be positive")
        self.chunk_events = int(chunk_events)
        self.flush_seconds = float(flush_seconds)
        if self.path.exists():
            if not self.path.is_dir():
                raise VfstraceError(f"{self.path}: exists and is not a trace directory")
            existing = [p for p in self.path.iterdir()]
            if existing and not overwrite:
                raise VfstraceError(f"{self.path}: already exists and is not empty (choose another name)")
            for p in existing:
                if p.name == META_FILE or _PART_RE.match(p.name) or p.name.endswith(".tmp"):
                    p.unlink()
                else:
                    raise VfstraceError(f"{self.path}: holds {p.name}, not a trace; refusing to overwrite")
        try:
            make_private_dir(self.path, shared=self.shared)
        except OSError as e:
            raise VfstraceError(f"{self.path}: cannot create trace directory: {e.strerror}") from None
        self.meta = {
            "schema_version": SCHEMA_VERSION,
            "vfstrace_version": __version__,
            "kernel_release": os.uname().release,
            "host": socket.gethostname(),
            "tier": None,
            "probes": [],
            "workload": None,
            "start_time": _now_iso(),
            "start_monotonic_ns": time.monotonic_ns(),
            "end_time": None,
            "end_monotonic_ns": None,
            "lost_per_cpu": {},
            "lost_total": 0,
            "events": 0,
            "parts": [],
            "closed": False,
        }
        if meta:
            self.meta.update(meta)
        self.meta["lost_per_cpu"] = {int(k): int(v) for k, v in dict(self.meta["lost_per_cpu"]).items()}
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._next_id = 1
        self._part_no = 0
        self._last_flush = time.monotonic()
        self._closed = False
        self._encoder: Encoder | None = None  # started at the first part big enough (see ENCODER_MIN_ROWS)
        self._error: VfstraceError | None = None  # the encoder's failure, raised at the caller's next call
        self._flushed_rows = 0
        self._encoder_busy_s = 0.0
        self._write_meta()

    # -- public API ------------------------------------------------------

    def write(self, frame) -> None:
        """Buffer events (DataFrame, pyarrow Table or dict of arrays)."""
        self._check_open()
        t = to_table(frame)
        if t.num_rows:
            t = self._number(t)
            self._pending.append(t)
            self._pending_rows += t.num_rows
        self._maybe_flush()

    def add_lost(self, cpu: int, count: int) -> None:
        """Record ``count`` events the kernel dropped on ``cpu``: in metadata and as a LOST row."""
        self._check_open()
        cpu, count = int(cpu), int(count)
        if count <= 0:
            return
        lp = self.meta["lost_per_cpu"]
        lp[cpu] = lp.get(cpu, 0) + count
        self.meta["lost_total"] = int(sum(lp.values()))
        self.write(
            {
                "ts_ns": np.array([time.monotonic_ns()], dtype=np.uint64),
                "cpu": np.array([cpu], dtype=np.uint32),
                "kind": np.array([int(Kind.LOST)], dtype=np.uint8),
                "ret": np.array([count], dtype=np.int64),
            }
        )

    def update_meta(self, **kw) -> None:
        """Set metadata keys (tier, probes, workload, ...); saved at the next flush."""
        self._check_open()
        if "lost_per_cpu" in kw:
            kw["lost_per_cpu"] = {int(k): int(v) for k, v in dict(kw["lost_per_cpu"]).items()}
            kw.setdefault("lost_total", int(sum(kw["lost_per_cpu"].values())))
        self.meta.update(kw)

    def flush(self) -> None:
        """Write pending events as a new part and rewrite _meta.json; returns once both are on disk."""
        self._check_open()
        self._flush()
        self._drain()

    def close(self) -> None:
        """Flush, record the end time and mark the trace closed. Safe to call twice."""
        if self._closed:
            return
        self.meta["end_time"] = _now_iso()
        self.meta["end_monotonic_ns"] = time.monotonic_ns()
        self.meta["closed"] = True
        try:
            self._flush()
            self._drain()
        finally:
            self._stop_encoder()
        self._raise_encoder_error()
        self._closed = True

    @property
    def events_written(self) -> int:
        """Events handed to the writer (on disk, being encoded or pending)."""
        return int(self.meta["events"]) + self._pending_rows

    @property
    def encoder_busy_s(self) -> float:
        """Wall seconds the encoder process has spent encoding, writing and fsyncing parts (0 without one)."""
        return self._encoder_busy_s + (self._encoder.busy_s if self._encoder is not None else 0.0)

    @property
    def events_flushed(self) -> int:
        """Events in parts already on disk: what a crash now would keep."""
        if self._encoder is not None:
            self._encoder.poll()
            return self._flushed_rows + self._encoder.rows_on_disk
        return self._flushed_rows

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    # -- internals -------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise VfstraceError(f"{self.path}: trace already closed")
        self._raise_encoder_error()

    def _raise_encoder_error(self):
        if self._error is not None:
            raise self._error

    def _number(self, t: pa.Table) -> pa.Table:
        ids = t.column("event_id").to_numpy()
        zero = ids == 0
        nz = int(zero.sum())
        # One owner of the numbering: ids a caller brings (vfstrace.recorder
        # numbers live runs) must lie above every id already written or
        # assigned here, or the trace would hold the same id twice.
        if nz < len(ids) and int(ids[~zero].min()) < self._next_id:
            raise ValueError(f"event ids from {int(ids[~zero].min())} would repeat ids below {self._next_id} "
                             "already in this trace: one owner must number the stream")
        if nz == 0:
            top = int(ids.max())
        else:
            new = ids.copy()
            new[zero] = np.arange(self._next_id, self._next_id + nz, dtype=np.uint64)
            top = max(int(new.max()), self._next_id + nz - 1)
            t = t.set_column(0, "event_id", pa.array(new, type=pa.uint64()))
        self._next_id = max(self._next_id, top + 1)
        return t

    def _maybe_flush(self):
        if self._pending_rows >= self.chunk_events or (
            self._pending_rows and time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self._flush()

    def _flush(self):
        """Write pending events as the next part (its metadata after it), or save the metadata."""
        self._raise_encoder_error()
        if not self._pending_rows:
            if self._encoder is not None:
                self._encoder.send_meta(self._meta_bytes())  # in order: never ahead of a part being written
                self._collect()
            else:
                self._write_meta()
            self._last_flush = time.monotonic()
            return
        t = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        t = t.replace_schema_metadata(FILE_SCHEMA.metadata)
        name = f"part-{self._part_no:06d}.parquet"
        ids = t.column("event_id")
        entry = {
            "file": name,
            "rows": t.num_rows,
            "first_event_id": int(pa.compute.min(ids).as_py()),
            "last_event_id": int(pa.compute.max(ids).as_py()),
        }
        if self._encoder is None and (self._use_encoder or (self._use_encoder is None
                                                            and t.num_rows >= ENCODER_MIN_ROWS)):
            self._encoder = Encoder(self.path, shared=self.shared, row_group_size=self.chunk_events)
            atexit.register(self._stop_encoder)  # a part handed over is written even if close() never comes
        if self._encoder is None:
            write_part(t, self.path, name, shared=self.shared, row_group_size=self.chunk_events)
        self.meta["parts"].append(entry)
        self.meta["events"] = int(self.meta["events"]) + t.num_rows
        self._part_no += 1
        self._pending = []
        self._pending_rows = 0
        if self._encoder is None:
            self._flushed_rows += t.num_rows
            self._write_meta()
        else:
            self._encoder.send_part(name, t, self._meta_bytes())  # waits while two are with it
            self._collect()
        self._last_flush = time.monotonic()

    def _collect(self, enc: Encoder | None = None) -> None:
        """Take the encoder's answers so far; its failure becomes this writer's."""
        enc = enc or self._encoder
        if enc is not None:
            enc.poll()
            if enc.error is not None and self._error is None:
                enc.drain()  # the parts after the failed one discarded: the trace on disk is settled
                self._error = enc.error

    def _drain(self):
        if self._encoder is not None:
            self._encoder.drain()
            self._collect()
        self._raise_encoder_error()

    def _stop_encoder(self):
        if self._encoder is not None:
            atexit.unregister(self._stop_encoder)
            enc, self._encoder = self._encoder, None
            try:
                enc.stop()
            finally:
                self._flushed_rows += enc.rows_on_disk
                self._encoder_busy_s += enc.busy_s
                self._collect(enc)

    def _meta_bytes(self) -> bytes:
        m = dict(self.meta)
        m["lost_per_cpu"] = {str(k): v for k, v in sorted(m["lost_per_cpu"].items())}
        return (json.dumps(m, indent=1, default=str) + "\n").encode()

    def _write_meta(self):
        save_meta(self.path, self._meta_bytes(), shared=self.shared)


def save(df, path, meta: dict | None = None, *, overwrite: bool = False, shared: bool = False) -> int:
    """Write a whole DataFrame as a trace: a ``.jsonl`` file or a trace directory.

    ``meta["notes"]`` (what loading the original noted) goes into the copy's
    metadata: files.carried_notes() says why.
    """
    path = Path(path)
    if meta is None:
        meta = dict(df.attrs.get("meta") or {})
    if _is_jsonl(path):
        if path.exists() and not overwrite:
            raise VfstraceError(f"{path}: already exists (choose another name)")
        return write_jsonl(df, path, meta, shared=shared)
    keep = {k: v for k, v in meta.items() if k not in ("notes", "parts", "events", "closed", "schema_version")}
    notes = carried_notes(meta)
    if notes:
        keep["notes"] = notes
    with TraceWriter(path, meta=keep, chunk_events=max(len(df), 1), flush_seconds=1e9, overwrite=overwrite,
                     shared=shared) as w:
        w.write(df)
        # The source's end time and closed state describe the recording, not this copy.
        end = {k: meta[k] for k in ("end_time", "end_monotonic_ns") if meta.get(k) is not None}
    if end or "closed" in meta:
        m = json.loads((path / META_FILE).read_text())
        m.update(end)
        if "closed" in meta:
            m["closed"] = bool(meta["closed"])
        _atomic_write_bytes(path / META_FILE, (json.dumps(m, indent=1, default=str) + "\n").encode(), shared=shared)
    return len(df)
