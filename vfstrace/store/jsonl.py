"""JSON Lines traces: the form people and tests write by hand.

Kinds, ops, flags and errnos may be given by name; every value is checked
with its line number. Integers are JSON numbers or ASCII strings of decimal
(or 0x hex) digits, nothing Python's int() would also take ("1_000",
"0o17", " 12 ", other scripts' digits): a trace must read the same in any
reader. ``null`` is no value: every column holds one, or is left out.
Keys of no column are a newer writer's columns: ignored, with one note.
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
    UnknownColumns,
    _check_version,
    _normalize_meta,
    carried_notes,
    open_private,
    open_regular,
    parse_json,
    parse_json_meta,
    strip_bom,
)
from vfstrace.report.terminal import json_text
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


# The integer strings a trace may hold: decimal, or hex (addresses are written that way).
_INT_TEXT = re.compile(r"-?(?:[0-9]{1,40}|0[xX][0-9a-fA-F]{1,32})")
_EXACT_FLOAT = 2**53  # a JSON float beyond this may not be the integer written


def _parse_int(col: str, v, lineno: int, where: Path) -> int:
    if isinstance(v, bool):
        raise TraceFormatError(f"{where}:{lineno}: {col} must be a number, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer() and abs(v) <= _EXACT_FLOAT:
        return int(v)
    if isinstance(v, str):
        s = v
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
        if _INT_TEXT.fullmatch(s):
            return int(s, 16) if "x" in low else int(s, 10)
    if isinstance(v, list) and col == "flags":
        if not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            raise TraceFormatError(f"{where}:{lineno}: flags must be names or numbers, got {reprlib.repr(v)}")
        return _parse_int("flags", "|".join(str(x) for x in v), lineno, where)
    hint = " (integers are JSON numbers or strings of decimal or 0x-hex ASCII digits)" if isinstance(v, str) else ""
    raise TraceFormatError(f"{where}:{lineno}: bad value for {col.rstrip('#')}: {reprlib.repr(v)}{hint}")


def _load_jsonl(path: Path):
    meta = _read_meta_jsonl(path)
    meta["notes"] = list(meta.get("notes") or [])
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    known = set(COLUMNS)
    unknown = UnknownColumns()
    n = 0
    with open_regular(path) as f:
        f.readline()
        for lineno, raw in enumerate(f, start=2):
            if not raw.strip():
                continue
            rec = parse_json(raw.rstrip(b"\r\n"), f"{path}:{lineno}", "corrupt or truncated line")
            if not isinstance(rec, dict):
                raise TraceFormatError(f"{path}:{lineno}: an event must be a JSON object")
            if not known.issuperset(rec):
                unknown.add(set(rec) - known)
            for c in COLUMNS:
                if c not in rec:
                    cols[c].append("" if c in STRING_COLUMNS else COLUMN_DEFAULTS.get(c, 0))
                    continue
                v = rec[c]
                if v is None:
                    raise TraceFormatError(f"{path}:{lineno}: {c} is null: a column holds a value or is left out")
                if c in STRING_COLUMNS:
                    if not isinstance(v, str):
                        raise TraceFormatError(f"{path}:{lineno}: {c} must be a string, got {type(v).__name__}")
                    elif not _utf8(v):
                        # A \ud800-style escape: JSON allows it, UTF-8 (and Parquet) cannot hold it.
                        raise TraceFormatError(f"{path}:{lineno}: {c} holds a lone surrogate (not valid Unicode text)")
                else:
                    v = _parse_int(c, v, lineno, path)
                cols[c].append(v)
            n += 1
    unknown.note(meta["notes"], "lines")
    arrays = {}
    for c in COLUMNS:
        if c in STRING_COLUMNS:
            arrays[c] = np.array(cols[c], dtype=object) if n else np.empty(0, dtype=object)
        else:
            try:
                arrays[c] = np.array(cols[c], dtype=NUMPY_DTYPES[c]) if n else np.empty(0, dtype=NUMPY_DTYPES[c])
            except OverflowError:
                raise TraceFormatError(f"{path}: a value in column {c} is out of range for "
                                       f"{np.dtype(NUMPY_DTYPES[c]).name}") from None
            bad = [v for v in cols[c] if v < 0] if np.dtype(NUMPY_DTYPES[c]).kind == "u" else []
            if bad:
                raise TraceFormatError(f"{path}: column {c} cannot be negative ({bad[0]})")
    ids = arrays["event_id"]
    zero = ids == 0
    if zero.any():
        # Hand-written traces may leave ids out: number them in line order,
        # after any ids that were given.
        start = int(ids.max()) + 1 if (~zero).any() else 1
        k = int(zero.sum())
        top = int(np.iinfo(np.uint64).max)
        if start + k - 1 > top:
            raise TraceFormatError(f"{path}: {k:,} event(s) without an id, and no ids left after the largest "
                                   f"given ({start - 1}) to number them")
        ids[zero] = np.arange(k, dtype=np.uint64) + np.uint64(start)
    meta["events"] = n
    return to_table(arrays), meta


def _jsonable_meta(meta: dict) -> dict:
    m = {k: v for k, v in meta.items() if k not in ("notes", "parts")}  # a listing of parts says nothing of this file
    notes = carried_notes(meta)
    if notes:
        m["notes"] = notes
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
                f.write(json_text(rec) + "\n")  # names a terminal would act on, escaped
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise VfstraceError(f"{path}: cannot write: {e.strerror}") from None
    return n


def _first_line(path: Path) -> bytes:
    """Line 1 (the metadata), without a byte-order mark before it (files.strip_bom() says why) or its line end."""
    with open_regular(path) as f:
        try:
            return strip_bom(f.readline(MAX_META_BYTES)).rstrip(b"\r\n")
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
