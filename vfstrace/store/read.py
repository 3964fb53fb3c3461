"""Reading traces: metadata, Parquet parts and whole traces into pandas."""

from __future__ import annotations

import queue
import reprlib
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vfstrace.errors import TraceFormatError
from vfstrace.events import (
    ARROW_SCHEMA,
    COLUMN_DEFAULTS,
    COLUMNS,
    SCHEMA_VERSION,
    STRING_COLUMNS,
)
from vfstrace.store.files import (
    _PART_RE,
    CLOSED_NOTE,
    MAX_META_BYTES,
    META_FILE,
    SCHEMA_KEY,
    _check_version,
    _is_jsonl,
    _normalize_meta,
    _one_line,
    UnknownColumns,
    _stat,
    open_regular,
    parse_json_meta,
    read_regular,
)
from vfstrace.store.jsonl import _first_line, _load_jsonl, _read_meta_jsonl
from vfstrace.store.table import _frame


def _read_meta_dir(path: Path) -> dict:
    mp = path / META_FILE
    if not mp.exists():
        raise TraceFormatError(f"{path}: no {META_FILE}: not a vfstrace trace directory")
    meta = parse_json_meta(read_regular(mp, MAX_META_BYTES), mp)
    _check_version(meta, mp)
    return _normalize_meta(meta)


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
        with open_regular(path) as f:
            schema = pq.read_schema(f)
    except (pa.ArrowException, OSError, ValueError, KeyError) as e:
        raise TraceFormatError(f"{path}: corrupt or truncated Parquet file ({_one_line(e)})") from None
    raw = (schema.metadata or {}).get(SCHEMA_KEY)
    if raw is None:
        raise TraceFormatError(f"{path}: Parquet file without vfstrace schema version (not a vfstrace trace part)")
    try:
        return int(raw)
    except ValueError:
        raise TraceFormatError(f"{path}: bad schema version {raw[:20]!r}") from None




def _read_part(path: Path, columns=None, unknown: UnknownColumns | None = None) -> pa.Table:
    """One part, checked; ``columns`` reads only those (the part-by-part readers need a few).

    Columns are found by name, in whatever order the part holds them; one
    this reader does not know is left out (named in ``unknown``, for the one
    note: UnknownColumns says why). A null in a column read is an error:
    every event column holds a value, and a null read as a number or a name
    would be a changed event (ts_ns 2^63, a blank name), not a refused one.
    """
    # Read whole into memory from a checked regular file: pyarrow opening the
    # name itself would block on a FIFO. Page checksums (written by
    # TraceWriter) are verified, so a flipped byte in a page is an error, not
    # a changed ts_ns or comm; parts written without them still load.
    buf = pa.py_buffer(read_regular(path))
    try:
        pf = pq.ParquetFile(pa.BufferReader(buf), page_checksum_verification=True)
        raw = (pf.schema_arrow.metadata or {}).get(SCHEMA_KEY)
        if raw is None:
            raise TraceFormatError(f"{path}: Parquet file without vfstrace schema version (not a vfstrace trace part)")
        if raw != str(SCHEMA_VERSION).encode():
            raise TraceFormatError(
                f"{path}: schema version {raw[:20].decode(errors='replace')!r}, this vfstrace reads version {SCHEMA_VERSION}"
            )
        extra = _check_columns(pf.schema_arrow, path)
        # Strings come back dictionary-encoded (as Parquet stores them), so
        # turning them into Python objects costs one object per distinct
        # value per part, not one per event: see _column_numpy().
        pf = pq.ParquetFile(pa.BufferReader(buf), read_dictionary=list(STRING_COLUMNS),
                            page_checksum_verification=True)
        have = set(pf.schema_arrow.names)
        want = [c for c in (COLUMNS if columns is None else columns) if c in have]
        t = pf.read(columns=want, use_threads=False)
        # Full validation: dictionary indices in range and strings valid
        # UTF-8, which a flipped byte in an (unchecksummed) page header or an
        # old part without checksums can still break.
        t.validate(full=True)
    except (pa.ArrowException, OSError, ValueError, KeyError, IndexError) as e:
        raise TraceFormatError(f"{path}: corrupt or truncated Parquet file ({_one_line(e)})") from None
    for name in t.column_names:
        nulls = t.column(name).null_count
        if nulls:
            raise TraceFormatError(f"{path}: column {name} holds {nulls} null value(s): every event column must "
                                   "hold a value (not a part vfstrace wrote)")
    if extra and unknown is not None:
        unknown.add(extra)
    t = _with_defaults(t, columns)
    return t.select(COLUMNS) if columns is None else t


def _check_columns(schema: pa.Schema, path: Path) -> list[str]:
    """The part's columns this reader does not know; an error if one it knows is missing, doubled or of another type.

    A column of events.COLUMN_DEFAULTS may be missing: parts written before
    it existed (_with_defaults() fills it in).
    """
    plain = _plain_schema(schema)
    names = plain.names
    seen: set = set()
    for name in names:
        if name in seen:
            raise TraceFormatError(f"{path}: column {reprlib.repr(name)} appears more than once (not a vfstrace part)")
        seen.add(name)
    for f in ARROW_SCHEMA:
        i = plain.get_field_index(f.name)
        if i < 0:
            if f.name in COLUMN_DEFAULTS:
                continue
            raise TraceFormatError(f"{path}: columns do not match the vfstrace event schema version {SCHEMA_VERSION} "
                                   f"(no column {f.name})")
        if not plain.field(i).type.equals(f.type):
            raise TraceFormatError(f"{path}: columns do not match the vfstrace event schema version {SCHEMA_VERSION} "
                                   f"(column {f.name} is {plain.field(i).type}, not {f.type})")
    return [n for n in names if n not in _KNOWN]


_KNOWN = frozenset(COLUMNS)


def _with_defaults(t: pa.Table, columns=None) -> pa.Table:
    """A part without a column added later gets it with its default (events.COLUMN_DEFAULTS)."""
    for name, value in COLUMN_DEFAULTS.items():
        if name not in t.column_names and (columns is None or name in columns):
            field = ARROW_SCHEMA.field(name)
            t = t.append_column(field, pa.array(np.full(t.num_rows, value), type=field.type))
    return t


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type) for f in schema]
    )


def _dir_parts(path: Path):
    """The metadata (``notes`` started) and the part files of a trace directory, checked against its listing."""
    meta = _read_meta_dir(path)
    notes = meta["notes"] = list(meta.get("notes") or [])
    listed = {p["file"]: p for p in meta.get("parts") or [] if isinstance(p, dict) and "file" in p}
    files = []
    try:
        entries = sorted(path.iterdir())
    except OSError as e:
        raise TraceFormatError(f"{path}: cannot list: {e.strerror}") from None
    for p in entries:
        if _PART_RE.match(p.name):
            files.append(p)
        elif p.name.endswith(".tmp"):
            notes.append(f"ignored {p.name}: a part or metadata file left half-written (recording interrupted)")
    missing = sorted(set(listed) - {p.name for p in files})
    if missing:
        raise TraceFormatError(f"{path}: {missing[0]} is listed in {META_FILE} but missing ({len(missing)} part(s) lost)")
    return meta, files, listed


def _checked_part(p: Path, listed: dict, notes: list, columns=None, unknown: UnknownColumns | None = None) -> pa.Table:
    t = _read_part(p, columns, unknown)
    if p.name not in listed:
        notes.append(f"{p.name} ({t.num_rows} events) is not in {META_FILE}: written just before the recording stopped")
    else:
        _check_listing(p, t, listed[p.name])
    return t


def _finish_meta(meta: dict, events: int, unknown: UnknownColumns | None = None) -> dict:
    """``meta`` with the loader's last notes, each once: notes a converted trace carries (store.files.carried_notes)
    may say what this load says again."""
    if unknown is not None:
        unknown.note(meta["notes"], "part(s)")
    if not meta.get("closed"):
        meta["notes"].append(CLOSED_NOTE)
    meta["notes"] = list(dict.fromkeys(meta["notes"]))
    meta["events"] = events
    return meta


def _load_dir(path: Path):
    meta, files, listed = _dir_parts(path)
    unknown = UnknownColumns()
    tables = [_checked_part(p, listed, meta["notes"], unknown=unknown) for p in files]
    table = pa.concat_tables(tables, promote_options="permissive") if tables else ARROW_SCHEMA.empty_table()
    return table, _finish_meta(meta, table.num_rows, unknown)


def iter_parts(path, columns, files=None):
    """A trace directory part by part: ``(meta, files, parts)``, ``parts`` yielding pyarrow Tables of ``columns``.

    Why: memory then holds one part (a recorder's chunk) whatever the trace's
    size, and only the columns asked for are decoded (strings stay
    dictionary-encoded). The parts are read ahead (read_ahead()): the next
    is decoded while the caller works on this one. Each part gets the checks ``load()`` makes (listing,
    checksums, schema); ``meta["notes"]`` and ``meta["events"]`` are complete
    once ``parts`` is exhausted. Rows come in file order: the caller checks
    that event ids increase (``load()`` sorts them). None for a JSON Lines
    file or a single Parquet part: read those whole with ``load()``.
    ``files`` (from an earlier call) reads the same parts again, none a
    recording added since.
    """
    path = Path(path)
    _stat(path)
    if not path.is_dir():
        return None
    meta, found, listed = _dir_parts(path)
    if files is None:
        files = found
    cols = list(dict.fromkeys(["event_id", *columns]))

    def parts():
        n = 0
        unknown = UnknownColumns()
        for p in files:
            t = _checked_part(p, listed, meta["notes"], cols, unknown)
            n += t.num_rows
            yield t
        _finish_meta(meta, n, unknown)

    return meta, files, read_ahead(parts())


def _check_listing(p: Path, t: pa.Table, entry: dict) -> None:
    """A part must hold what the metadata listed for it: a part of another trace
    (or an older part) copied under a listed name differs in its rows or ids."""
    rows = entry.get("rows")
    if rows is not None and rows != t.num_rows:
        raise TraceFormatError(f"{p}: holds {t.num_rows} events, {META_FILE} says {rows} (trace damaged)")
    if not t.num_rows:
        return
    ids = t.column("event_id")
    got = {"first_event_id": int(pc.min(ids).as_py()), "last_event_id": int(pc.max(ids).as_py())}
    for k, v in got.items():
        if entry.get(k) is not None and entry[k] != v:
            raise TraceFormatError(
                f"{p}: {k.replace('_', ' ')} is {v}, {META_FILE} says {entry[k]} (a part of another trace, or damaged)"
            )


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
        unknown = UnknownColumns()
        t = _read_part(path, unknown=unknown)
        unknown.note(meta["notes"], "part(s)")
        meta["events"] = t.num_rows
        return t, meta
    raise TraceFormatError(f"{path}: not a vfstrace trace (expected a .vft directory or a .jsonl file)")


def load(path):
    """Read a trace into a pandas DataFrame sorted by event_id.

    Columns and dtypes are those of vfstrace.events (NUMPY_DTYPES);
    ``df.attrs["meta"]`` is the metadata, with ``notes`` listing anything the
    loader had to work around (half-written files, an unclean stop).

    A trace whose event ids repeat is refused (TraceFormatError): verdicts
    cite events by id, so such a trace cannot be judged, and every command
    would otherwise fail on it later with a less useful message.
    """
    path = Path(path)
    _stat(path)
    table, meta = _load_any(path)
    df = _frame(table)
    del table
    if df.attrs.pop("_dup_ids", False):
        ids = df["event_id"].to_numpy()
        dup = int(ids[1:][ids[1:] == ids[:-1]][0])
        raise TraceFormatError(f"{path}: event ids are not unique (id {dup} is on more than one event): "
                               "not a valid trace")
    df.attrs["meta"] = meta
    return df


class _ReadAhead:
    """Parts read ahead by read_ahead(); given to read_ahead() again, they are read ahead once, not twice."""

    def __init__(self, parts, depth: int):
        self._it = _read_ahead(parts, depth)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def close(self) -> None:
        self._it.close()


def read_ahead(parts, depth: int = 2):
    """``parts`` read ``depth`` ahead in a thread of their own (started at the first part asked for).

    Why: pyarrow reads and decodes a part without holding the GIL, so on a
    machine with a second core the next part is ready while the caller works
    on this one. Errors (a damaged part) are raised here, in order. A caller
    that stops early stops the thread when it drops (or closes) the parts.
    """
    return parts if isinstance(parts, _ReadAhead) else _ReadAhead(parts, depth)


def _read_ahead(parts, depth: int):
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        """Queue ``item`` unless the reader stopped (then the thread ends, holding no part)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run():
        try:
            for t in parts:
                if not put((True, t)):
                    return
            put((False, None))
        except BaseException as e:  # handed to the reader, raised there
            put((False, e))

    th = threading.Thread(target=run, name="vfstrace-read-ahead", daemon=True)
    th.start()
    try:
        while True:
            more, v = q.get()
            if not more:
                if v is not None:
                    raise v
                return
            yield v
    finally:
        stop.set()

