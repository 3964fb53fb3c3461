"""Trace files: crash-safe recording and loading into pandas.

A trace is a directory (suffix ``.vft`` by convention) holding

* ``_meta.json`` - the recording's metadata, rewritten atomically (write a
  temporary file, fsync, rename, fsync the directory) when the trace is
  created, at every flush and at close;
* ``part-000000.parquet``, ``part-000001.parquet``, ... - one Parquet file
  per flush, in the exact schema of :data:`vfstrace.events.ARROW_SCHEMA`,
  each written to ``.part-NNNNNN.parquet.tmp``, fsynced and renamed into
  place.

The metadata and temporary names start with "_" and "." because pyarrow
and pandas skip such files when they read a directory: the trace directory
itself is a Parquet dataset (``pandas.read_parquet("t.vft")``,
``pyarrow.dataset.dataset("t.vft")``), and DuckDB reads
``read_parquet('t.vft/*.parquet')``.

Why this shape: a rename is atomic, so every part file that exists is
complete, and a SIGKILL or crash loses at most the chunk that was still in
memory. Parquet parts are read directly by pandas, pyarrow and DuckDB
(``read_parquet('t.vft/*.parquet')``) with no vfstrace code at all.

A trace can also be a JSON Lines file (``.jsonl``): the first line is
``{"vfstrace_meta": {...}}``, then one JSON object per event. That is the
form people and tests write by hand; ``vfstrace convert`` turns one form into
the other. The full format is in docs/trace-format.md.

Event ids: the writer numbers events 1, 2, 3, ... in arrival order across
the whole trace. A row that arrives with a non-zero ``event_id`` keeps it
(the simulator and converted traces carry their own ids), and the writer's
counter continues after the largest id it has seen, so ids it assigns never
collide with ids written before them. A writer that mixes the two must
keep its own ids above the ones already written (load() notes duplicates).
"""

from __future__ import annotations

import datetime as _dt
import errno as _errno
import json
import os
import re
import socket
import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vfstrace import __version__
from vfstrace.errors import TraceFormatError, VfstraceError
from vfstrace.events import (
    ARROW_SCHEMA,
    COLUMNS,
    NUMPY_DTYPES,
    SCHEMA_VERSION,
    STRING_COLUMNS,
    Flag,
    Kind,
    Op,
)

META_FILE = "_meta.json"  # "_" and "." names are skipped by pyarrow/pandas directory discovery
PART_GLOB = "part-*.parquet"
_PART_RE = re.compile(r"^part-(\d{6,})\.parquet$")
SCHEMA_KEY = b"vfstrace.schema_version"
FILE_SCHEMA = ARROW_SCHEMA.with_metadata({SCHEMA_KEY: str(SCHEMA_VERSION).encode()})
# zstd level 1: about as fast to write as snappy here and a third smaller.
PARQUET_COMPRESSION = "zstd"
PARQUET_COMPRESSION_LEVEL = 1


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------
# Turning what callers hand us into schema tables


def _default_column(name: str, n: int) -> np.ndarray:
    if name in STRING_COLUMNS:
        return np.full(n, "", dtype=object)
    return np.zeros(n, dtype=NUMPY_DTYPES[name])


def to_table(data) -> pa.Table:
    """A pyarrow Table in ARROW_SCHEMA from a DataFrame, Table or dict of arrays.

    Missing columns are filled with 0 / "" and extra columns are dropped;
    null strings become "". Raises VfstraceError when a value does not fit
    its column (e.g. a negative inode number).
    """
    if isinstance(data, pa.Table):
        names = set(data.column_names)
        n = data.num_rows

        def get(c):
            return data.column(c)
    else:
        if hasattr(data, "columns"):  # pandas DataFrame
            names = set(data.columns)
            n = len(data)

            def get(c):
                return data[c].to_numpy()
        elif isinstance(data, dict):
            names = set(data)
            lens = {len(v) for v in data.values()}
            if len(lens) > 1:
                raise VfstraceError(f"event columns have different lengths: {sorted(lens)}")
            n = lens.pop() if lens else 0

            def get(c):
                return data[c]
        else:
            raise VfstraceError(f"cannot write events of type {type(data).__name__}")
    arrays = []
    for field in ARROW_SCHEMA:
        c = field.name
        if c not in names:
            arrays.append(pa.array(_default_column(c, n), type=field.type))
            continue
        v = get(c)
        try:
            if isinstance(v, (pa.Array, pa.ChunkedArray)):
                a = v.cast(field.type)
            else:
                a = pa.array(v, type=field.type, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
            raise VfstraceError(f"column {c!r} does not fit {field.type}: {str(e).splitlines()[0]}") from None
        if a.null_count:
            a = a.fill_null("" if c in STRING_COLUMNS else 0)
        arrays.append(a)
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


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
    ):
        self.path = Path(path)
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
            self.path.mkdir(parents=True, exist_ok=True)
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
                with open(tmp, "wb") as f:
                    pq.write_table(
                        t,
                        f,
                        row_group_size=max(self.chunk_events, 1),
                        compression=PARQUET_COMPRESSION,
                        compression_level=PARQUET_COMPRESSION_LEVEL,
                    )
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            except OSError as e:
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
            _atomic_write_bytes(self.path / META_FILE, (json.dumps(m, indent=1, default=str) + "\n").encode())
        except OSError as e:
            raise VfstraceError(f"{self.path / META_FILE}: cannot write: {e.strerror}") from None


# --------------------------------------------------------------------------
# Reading


def _check_version(meta: dict, where) -> None:
    v = meta.get("schema_version")
    if v is None:
        raise TraceFormatError(f"{where}: metadata has no schema_version (not a vfstrace trace?)")
    if v != SCHEMA_VERSION:
        raise TraceFormatError(
            f"{where}: schema version {v!r}, this vfstrace ({__version__}) reads version {SCHEMA_VERSION}"
        )


def _normalize_meta(meta: dict) -> dict:
    meta = dict(meta)
    try:
        meta["lost_per_cpu"] = {int(k): int(v) for k, v in dict(meta.get("lost_per_cpu") or {}).items()}
    except (TypeError, ValueError):
        raise TraceFormatError("metadata lost_per_cpu is not a map of cpu -> count") from None
    meta.setdefault("lost_total", sum(meta["lost_per_cpu"].values()))
    meta.setdefault("closed", False)
    meta.setdefault("notes", [])
    return meta


def _read_meta_dir(path: Path) -> dict:
    mp = path / META_FILE
    if not mp.exists():
        raise TraceFormatError(f"{path}: no {META_FILE}: not a vfstrace trace directory")
    try:
        meta = json.loads(mp.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise TraceFormatError(f"{mp}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise TraceFormatError(f"{mp}: corrupt metadata (invalid JSON at line {e.lineno})") from None
    if not isinstance(meta, dict):
        raise TraceFormatError(f"{mp}: metadata is not a JSON object")
    _check_version(meta, mp)
    return _normalize_meta(meta)


def _first_line(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.readline(1 << 20)
    except OSError as e:
        raise TraceFormatError(f"{path}: cannot read: {e.strerror}") from None


def _read_meta_jsonl(path: Path) -> dict:
    line = _first_line(path)
    try:
        first = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        first = None
    if not isinstance(first, dict) or not isinstance(first.get("vfstrace_meta"), dict):
        raise TraceFormatError(f'{path}: not a vfstrace JSON Lines trace (line 1 must be {{"vfstrace_meta": {{...}}}})')
    meta = first["vfstrace_meta"]
    _check_version(meta, path)
    return _normalize_meta(meta)


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson")


def _stat(path: Path):
    try:
        return path.stat()
    except FileNotFoundError:
        raise TraceFormatError(f"{path}: no such trace") from None
    except OSError as e:
        raise TraceFormatError(f"{path}: cannot read: {e.strerror}") from None


def read_meta(path) -> dict:
    """The trace's metadata dict (without loading events)."""
    path = Path(path)
    st = _stat(path)
    if path.is_dir():
        return _read_meta_dir(path)
    if _is_jsonl(path) or _first_line(path).lstrip().startswith(b"{"):
        return _read_meta_jsonl(path)
    if st.st_size and path.suffix == ".parquet":
        return _normalize_meta({"schema_version": _parquet_version(path), "notes": ["single Parquet part"]})
    raise TraceFormatError(f"{path}: not a vfstrace trace (expected a .vft directory or a .jsonl file)")


def _parquet_version(path: Path) -> int:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise TraceFormatError(f"{path}: corrupt or truncated Parquet file ({_one_line(e)})") from None
    raw = (schema.metadata or {}).get(SCHEMA_KEY)
    if raw is None:
        raise TraceFormatError(f"{path}: Parquet file without vfstrace schema version (not a vfstrace trace part)")
    try:
        return int(raw)
    except ValueError:
        raise TraceFormatError(f"{path}: bad schema version {raw!r}") from None


def _one_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _read_part(path: Path) -> pa.Table:
    try:
        # Strings come back dictionary-encoded (as Parquet stores them), so
        # turning them into Python objects costs one object per distinct
        # value per part, not one per event: see _column_numpy().
        pf = pq.ParquetFile(path, read_dictionary=list(STRING_COLUMNS))
        raw = (pf.schema_arrow.metadata or {}).get(SCHEMA_KEY)
        if raw is None:
            raise TraceFormatError(f"{path}: Parquet file without vfstrace schema version (not a vfstrace trace part)")
        if raw != str(SCHEMA_VERSION).encode():
            raise TraceFormatError(
                f"{path}: schema version {raw.decode(errors='replace')}, this vfstrace reads version {SCHEMA_VERSION}"
            )
        t = pf.read(use_threads=False)
    except (pa.ArrowException, OSError) as e:
        raise TraceFormatError(f"{path}: corrupt or truncated Parquet file ({_one_line(e)})") from None
    if not _plain_schema(t.schema).equals(ARROW_SCHEMA):
        raise TraceFormatError(f"{path}: columns do not match the vfstrace event schema version {SCHEMA_VERSION}")
    return t


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type) for f in schema]
    )


def _load_dir(path: Path):
    meta = _read_meta_dir(path)
    notes = meta["notes"] = list(meta.get("notes") or [])
    listed = {p["file"]: p for p in meta.get("parts") or [] if isinstance(p, dict) and "file" in p}
    files = []
    for p in sorted(path.iterdir()):
        if _PART_RE.match(p.name):
            files.append(p)
        elif p.name.endswith(".tmp"):
            notes.append(f"ignored {p.name}: a part or metadata file left half-written (recording interrupted)")
    missing = sorted(set(listed) - {p.name for p in files})
    if missing:
        raise TraceFormatError(f"{path}: {missing[0]} is listed in {META_FILE} but missing ({len(missing)} part(s) lost)")
    tables = []
    for p in files:
        t = _read_part(p)
        if p.name not in listed:
            notes.append(f"{p.name} ({t.num_rows} events) is not in {META_FILE}: written just before the recording stopped")
        elif listed[p.name].get("rows") not in (None, t.num_rows):
            raise TraceFormatError(
                f"{p}: holds {t.num_rows} events, {META_FILE} says {listed[p.name]['rows']} (trace damaged)"
            )
        tables.append(t)
    table = pa.concat_tables(tables, promote_options="permissive") if tables else ARROW_SCHEMA.empty_table()
    if not meta.get("closed"):
        notes.append("the recording did not finish cleanly (closed=false): events after the last flush are lost")
    meta["events"] = table.num_rows
    return table, meta


# Hand-written JSON Lines: names for kinds/ops/flags/errnos are accepted.
_KIND_BY_NAME = {k.name.lower(): int(k) for k in Kind}
_OP_BY_NAME = {o.name.lower(): int(o) for o in Op}
_FLAG_BY_NAME = {f.name.lower(): int(f) for f in Flag}


def _parse_int(col: str, v, lineno: int, where: Path) -> int:
    if isinstance(v, bool):
        raise TraceFormatError(f"{where}:{lineno}: {col} must be a number, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        s = v.strip()
        low = s.lower()
        if col == "kind" and low in _KIND_BY_NAME:
            return _KIND_BY_NAME[low]
        if col == "op" and low in _OP_BY_NAME:
            return _OP_BY_NAME[low]
        if col == "flags" and s:
            total = 0
            for part in re.split(r"[|,+\s]+", low):
                if not part:
                    continue
                if part in _FLAG_BY_NAME:
                    total |= _FLAG_BY_NAME[part]
                else:
                    total |= _parse_int("flags#", part, lineno, where)
            return total
        if col == "ret":
            m = re.fullmatch(r"(-?)(E[A-Z0-9]+)", s)
            if m and hasattr(_errno, m.group(2)):
                return -getattr(_errno, m.group(2))
        try:
            return int(s, 0)
        except ValueError:
            pass
    if isinstance(v, list) and col == "flags":
        return _parse_int("flags", "|".join(str(x) for x in v), lineno, where)
    raise TraceFormatError(f"{where}:{lineno}: bad value for {col.rstrip('#')}: {v!r}")


def _load_jsonl(path: Path):
    meta = _read_meta_jsonl(path)
    meta["notes"] = list(meta.get("notes") or [])
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    known = set(COLUMNS)
    n = 0
    try:
        f = open(path, "rb")
    except OSError as e:
        raise TraceFormatError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        f.readline()
        for lineno, raw in enumerate(f, start=2):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TraceFormatError(f"{path}:{lineno}: corrupt or truncated line ({_one_line(e)})") from None
            if not isinstance(rec, dict):
                raise TraceFormatError(f"{path}:{lineno}: an event must be a JSON object")
            extra = set(rec) - known
            if extra:
                raise TraceFormatError(f"{path}:{lineno}: unknown column {sorted(extra)[0]!r}")
            for c in COLUMNS:
                v = rec.get(c)
                if c in STRING_COLUMNS:
                    if v is None:
                        v = ""
                    elif not isinstance(v, str):
                        raise TraceFormatError(f"{path}:{lineno}: {c} must be a string, got {v!r}")
                else:
                    v = 0 if v is None else _parse_int(c, v, lineno, path)
                cols[c].append(v)
            n += 1
    arrays = {}
    for c in COLUMNS:
        if c in STRING_COLUMNS:
            arrays[c] = np.array(cols[c], dtype=object) if n else np.empty(0, dtype=object)
        else:
            try:
                arrays[c] = np.array(cols[c], dtype=NUMPY_DTYPES[c]) if n else np.empty(0, dtype=NUMPY_DTYPES[c])
            except OverflowError:
                raise TraceFormatError(f"{path}: a value in column {c} is out of range for {NUMPY_DTYPES[c]}") from None
            bad = [v for v in cols[c] if v < 0] if np.dtype(NUMPY_DTYPES[c]).kind == "u" else []
            if bad:
                raise TraceFormatError(f"{path}: column {c} cannot be negative ({bad[0]})")
    ids = arrays["event_id"]
    zero = ids == 0
    if zero.any():
        # Hand-written traces may leave ids out: number them in line order,
        # after any ids that were given.
        start = int(ids.max()) + 1 if (~zero).any() else 1
        ids[zero] = np.arange(start, start + int(zero.sum()), dtype=np.uint64)
    meta["events"] = n
    return to_table(arrays), meta


def _column_numpy(col: pa.ChunkedArray, name: str) -> np.ndarray:
    if name not in STRING_COLUMNS:
        return col.to_numpy().astype(NUMPY_DTYPES[name], copy=False)
    out = np.empty(len(col), dtype=object)
    off = 0
    for ch in col.chunks:
        k = len(ch)
        if pa.types.is_dictionary(ch.type):
            values = np.array(ch.dictionary.to_pylist() + [""], dtype=object)
            idx = ch.indices.fill_null(len(values) - 1).to_numpy(zero_copy_only=False)
            out[off : off + k] = values[idx]
        else:
            out[off : off + k] = ch.fill_null("").to_numpy(zero_copy_only=False)
        off += k
    return out


def _frame(table: pa.Table):
    import pandas as pd

    cols = {c: _column_numpy(table.column(c), c) for c in COLUMNS}
    ids = cols["event_id"]
    dup = False
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        order = np.argsort(ids, kind="stable")
        cols = {c: v[order] for c, v in cols.items()}
        dup = bool((np.diff(cols["event_id"]) == 0).any())
    # dtype=object explicitly: pandas >= 3 would otherwise re-infer string
    # columns as its Arrow-backed "str" dtype (slow, and not NUMPY_DTYPES).
    df = pd.DataFrame({c: pd.Series(v, dtype=NUMPY_DTYPES[c], copy=False) for c, v in cols.items()})
    if dup:
        df.attrs["_dup_ids"] = True
    return df


def load_table(path) -> tuple[pa.Table, dict]:
    """The trace's events as a pyarrow Table (file order) and its metadata."""
    path = Path(path)
    _stat(path)
    t, meta = _load_any(path)
    return t.cast(ARROW_SCHEMA), meta


def _load_any(path: Path):
    if path.is_dir():
        return _load_dir(path)
    if _is_jsonl(path) or _first_line(path).lstrip().startswith(b"{"):
        return _load_jsonl(path)
    if path.suffix == ".parquet":
        meta = read_meta(path)
        t = _read_part(path)
        meta["events"] = t.num_rows
        return t, meta
    raise TraceFormatError(f"{path}: not a vfstrace trace (expected a .vft directory or a .jsonl file)")


def load(path):
    """Read a trace into a pandas DataFrame sorted by event_id.

    Columns and dtypes are those of vfstrace.events (NUMPY_DTYPES);
    ``df.attrs["meta"]`` is the metadata, with ``notes`` listing anything the
    loader had to work around (half-written files, an unclean stop).
    """
    path = Path(path)
    _stat(path)
    table, meta = _load_any(path)
    df = _frame(table)
    del table
    if df.attrs.pop("_dup_ids", False):
        meta["notes"].append("event ids are not unique")
    df.attrs["meta"] = meta
    return df


# --------------------------------------------------------------------------
# Saving whole frames (convert, tests)


def _jsonable_meta(meta: dict) -> dict:
    m = {k: v for k, v in meta.items() if k != "notes"}
    m["lost_per_cpu"] = {str(k): v for k, v in sorted(dict(m.get("lost_per_cpu") or {}).items())}
    m["schema_version"] = SCHEMA_VERSION
    return m


def write_jsonl(df, path, meta: dict | None = None) -> int:
    """Write events as JSON Lines (kind and op by name); returns the number of events."""
    path = Path(path)
    meta = _jsonable_meta(meta if meta is not None else df.attrs.get("meta", {}))
    kinds = {int(k): k.name.lower() for k in Kind}
    ops = {int(o): o.name.lower() for o in Op}
    cols = {c: df[c].tolist() for c in COLUMNS}
    n = len(df)
    tmp = path.with_name("." + path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"vfstrace_meta": meta}, default=str) + "\n")
            for i in range(n):
                rec = {c: cols[c][i] for c in COLUMNS}
                rec["kind"] = kinds.get(rec["kind"], rec["kind"])
                rec["op"] = ops.get(rec["op"], rec["op"])
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise VfstraceError(f"{path}: cannot write: {e.strerror}") from None
    return n


def save(df, path, meta: dict | None = None, *, overwrite: bool = False) -> int:
    """Write a whole DataFrame as a trace: a ``.jsonl`` file or a trace directory."""
    path = Path(path)
    if meta is None:
        meta = dict(df.attrs.get("meta") or {})
    if _is_jsonl(path):
        if path.exists() and not overwrite:
            raise VfstraceError(f"{path}: already exists (choose another name)")
        return write_jsonl(df, path, meta)
    keep = {k: v for k, v in meta.items() if k not in ("notes", "parts", "events", "closed", "schema_version")}
    with TraceWriter(path, meta=keep, chunk_events=max(len(df), 1), flush_seconds=1e9, overwrite=overwrite) as w:
        w.write(df)
        # The source's end time and closed state describe the recording, not this copy.
        end = {k: meta[k] for k in ("end_time", "end_monotonic_ns") if meta.get(k) is not None}
    if end or "closed" in meta:
        m = json.loads((path / META_FILE).read_text())
        m.update(end)
        if "closed" in meta:
            m["closed"] = bool(meta["closed"])
        _atomic_write_bytes(path / META_FILE, (json.dumps(m, indent=1, default=str) + "\n").encode())
    return len(df)


@click.command("convert")
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@click.option("-f", "--force", is_flag=True, help="Replace OUT if it exists.")
def convert(src, dst, force):
    """Convert a trace between a .vft directory and JSON Lines (by OUT's suffix).

    \b
    Examples:
      vfstrace convert run.vft run.jsonl     # to hand-editable JSON Lines
      vfstrace convert case.jsonl case.vft   # back to a Parquet trace
    """
    df = load(src)
    meta = df.attrs["meta"]
    n = save(df, dst, meta, overwrite=force)
    click.echo(f"{src} -> {dst}: {n} events")
