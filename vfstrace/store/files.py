"""What every trace file shares: names, metadata checks, and the atomic writes every file goes through."""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

from vfstrace import __version__
from vfstrace.errors import TraceFormatError
from vfstrace.events import (
    ARROW_SCHEMA,
    SCHEMA_VERSION,
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


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson")


def _stat(path: Path):
    try:
        return path.stat()
    except FileNotFoundError:
        raise TraceFormatError(f"{path}: no such trace") from None
    except OSError as e:
        raise TraceFormatError(f"{path}: cannot read: {e.strerror}") from None


def _one_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
