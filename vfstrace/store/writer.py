"""Writing traces: schema tables from what callers hand over, crash-safe chunks, whole frames."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
    PARQUET_COMPRESSION,
    PARQUET_DELTA_COLUMNS,
    PARQUET_DICTIONARY_COLUMNS,
    PARQUET_COMPRESSION_LEVEL,
    _atomic_write_bytes,
    _is_jsonl,
    _now_iso,
    make_private_dir,
    open_private,
)
from vfstrace.store.jsonl import write_jsonl
from vfstrace.store.table import to_table

# --------------------------------------------------------------------------
# Turning what callers hand us into schema tables






# --------------------------------------------------------------------------
# Writing


class TraceWriter:
    """Append events to a trace directory in crash-safe chunks.

    ``write()`` buffers; a chunk is flushed to a new Parquet part when
    ``chunk_events`` rows are pending or ``flush_seconds`` have passed since
    the last flush (checked on each ``write()``/``add_lost()``, so a live
    recorder that polls regularly flushes about once per ``flush_seconds``
    even when events trickle in). Not thread-safe: one recorder thread owns it.
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
    ):
        self.path = Path(path)
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
        """Write pending events as a new part and rewrite _meta.json."""
        self._check_open()
        self._flush()

    def close(self) -> None:
        """Flush, record the end time and mark the trace closed. Safe to call twice."""
        if self._closed:
            return
        self.meta["end_time"] = _now_iso()
        self.meta["end_monotonic_ns"] = time.monotonic_ns()
        self.meta["closed"] = True
        self._flush()
        self._closed = True

    @property
    def events_written(self) -> int:
        return int(self.meta["events"]) + self._pending_rows

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    # -- internals -------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise VfstraceError(f"{self.path}: trace already closed")

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
        if self._pending_rows:
            t = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
            t = t.replace_schema_metadata(FILE_SCHEMA.metadata)
            name = f"part-{self._part_no:06d}.parquet"
            final = self.path / name
            tmp = self.path / ("." + name + ".tmp")
            try:
                with open_private(tmp, shared=self.shared) as f:
                    pq.write_table(
                        t,
                        f,
                        row_group_size=max(self.chunk_events, 1),
                        compression=PARQUET_COMPRESSION,
                        compression_level=PARQUET_COMPRESSION_LEVEL,
                        use_dictionary=PARQUET_DICTIONARY_COLUMNS,
                        column_encoding=dict.fromkeys(PARQUET_DELTA_COLUMNS, "DELTA_BINARY_PACKED"),
                        write_page_checksum=True,  # the reader verifies them: a flipped byte is an error
                    )
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            except OSError as e:
                tmp.unlink(missing_ok=True)  # a disk-full stop leaves no half part behind
                raise VfstraceError(f"{final}: cannot write trace part: {e.strerror}") from None
            ids = t.column("event_id")
            self.meta["parts"].append(
                {
                    "file": name,
                    "rows": t.num_rows,
                    "first_event_id": int(pa.compute.min(ids).as_py()),
                    "last_event_id": int(pa.compute.max(ids).as_py()),
                }
            )
            self.meta["events"] = int(self.meta["events"]) + t.num_rows
            self._part_no += 1
            self._pending = []
            self._pending_rows = 0
        self._write_meta()
        self._last_flush = time.monotonic()

    def _write_meta(self):
        m = dict(self.meta)
        m["lost_per_cpu"] = {str(k): v for k, v in sorted(m["lost_per_cpu"].items())}
        try:
            _atomic_write_bytes(self.path / META_FILE, (json.dumps(m, indent=1, default=str) + "\n").encode(),
                                shared=self.shared)
        except OSError as e:
            raise VfstraceError(f"{self.path / META_FILE}: cannot write: {e.strerror}") from None


def save(df, path, meta: dict | None = None, *, overwrite: bool = False, shared: bool = False) -> int:
    """Write a whole DataFrame as a trace: a ``.jsonl`` file or a trace directory."""
    path = Path(path)
    if meta is None:
        meta = dict(df.attrs.get("meta") or {})
    if _is_jsonl(path):
        if path.exists() and not overwrite:
            raise VfstraceError(f"{path}: already exists (choose another name)")
        return write_jsonl(df, path, meta, shared=shared)
    keep = {k: v for k, v in meta.items() if k not in ("notes", "parts", "events", "closed", "schema_version")}
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
