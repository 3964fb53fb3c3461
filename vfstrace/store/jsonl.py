"""JSON Lines traces: the form people and tests write by hand.

Kinds, ops, flags and errnos may be given by name; every value is checked
with its line number.
"""

from __future__ import annotations

import errno as _errno
import json
import os
import re
import reprlib
from pathlib import Path

import numpy as np

from vfstrace.errors import TraceFormatError, VfstraceError
from vfstrace.events import (
    COLUMN_DEFAULTS,
    COLUMNS,
    NUMPY_DTYPES,
    SCHEMA_VERSION,
    STRING_COLUMNS,
    Flag,
    Kind,
    Op,
)
from vfstrace.store.files import (
    MAX_META_BYTES,
    _check_version,
    _normalize_meta,
    open_private,
    open_regular,
    parse_json,
    parse_json_meta,
)
from vfstrace.store.table import to_table

# Hand-written JSON Lines: names for kinds/ops/flags/errnos are accepted.
_KIND_BY_NAME = {k.name.lower(): int(k) for k in Kind}
_OP_BY_NAME = {o.name.lower(): int(o) for o in Op}
_FLAG_BY_NAME = {f.name.lower(): int(f) for f in Flag}


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        if not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            raise TraceFormatError(f"{where}:{lineno}: flags must be names or numbers, got {reprlib.repr(v)}")
        return _parse_int("flags", "|".join(str(x) for x in v), lineno, where)
    raise TraceFormatError(f"{where}:{lineno}: bad value for {col.rstrip('#')}: {reprlib.repr(v)}")


def _load_jsonl(path: Path):
    meta = _read_meta_jsonl(path)
    meta["notes"] = list(meta.get("notes") or [])
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    known = set(COLUMNS)
    n = 0
    with open_regular(path) as f:
        f.readline()
        for lineno, raw in enumerate(f, start=2):
            if not raw.strip():
                continue
            rec = parse_json(raw, f"{path}:{lineno}", "corrupt or truncated line")
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
                        raise TraceFormatError(f"{path}:{lineno}: {c} must be a string, got {type(v).__name__}")
                    elif not _utf8(v):
                        # A \ud800-style escape: JSON allows it, UTF-8 (and Parquet) cannot hold it.
                        raise TraceFormatError(f"{path}:{lineno}: {c} holds a lone surrogate (not valid Unicode text)")
                else:
                    v = COLUMN_DEFAULTS.get(c, 0) if v is None else _parse_int(c, v, lineno, path)
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


def _jsonable_meta(meta: dict) -> dict:
    m = {k: v for k, v in meta.items() if k != "notes"}
    m["lost_per_cpu"] = {str(k): v for k, v in sorted(dict(m.get("lost_per_cpu") or {}).items())}
    m["schema_version"] = SCHEMA_VERSION
    return m


def write_jsonl(df, path, meta: dict | None = None, *, shared: bool = False) -> int:
    """Write events as JSON Lines (kind and op by name), private to the owner
    unless ``shared`` (see vfstrace/store/files.py); returns the number of events."""
    path = Path(path)
    meta = _jsonable_meta(meta if meta is not None else df.attrs.get("meta", {}))
    kinds = {int(k): k.name.lower() for k in Kind}
    ops = {int(o): o.name.lower() for o in Op}
    cols = {c: df[c].tolist() for c in COLUMNS}
    n = len(df)
    tmp = path.with_name("." + path.name + ".tmp")
    try:
        with open_private(tmp, shared=shared, text=True) as f:
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


def _first_line(path: Path) -> bytes:
    with open_regular(path) as f:
        try:
            return f.readline(MAX_META_BYTES)
        except OSError as e:
            raise TraceFormatError(f"{path}: cannot read: {e.strerror}") from None


def _read_meta_jsonl(path: Path) -> dict:
    line = _first_line(path)
    try:
        first = parse_json_meta(line, f"{path}:1")
    except TraceFormatError:
        first = None
    if not isinstance(first, dict) or not isinstance(first.get("vfstrace_meta"), dict):
        raise TraceFormatError(f'{path}: not a vfstrace JSON Lines trace (line 1 must be {{"vfstrace_meta": {{...}}}})')
    meta = first["vfstrace_meta"]
    _check_version(meta, path)
    return _normalize_meta(meta)
