"""Reading traces: metadata, Parquet parts and whole traces into pandas."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vfstrace.errors import TraceFormatError
from vfstrace.events import (
    ARROW_SCHEMA,
    SCHEMA_VERSION,
    STRING_COLUMNS,
)
from vfstrace.store.files import (
    _PART_RE,
    META_FILE,
    SCHEMA_KEY,
    _check_version,
    _is_jsonl,
    _normalize_meta,
    _one_line,
    _stat,
)
from vfstrace.store.jsonl import _first_line, _load_jsonl, _read_meta_jsonl
from vfstrace.store.table import _frame

# --------------------------------------------------------------------------
# Reading






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
