"""What every trace file shares: names, metadata checks, and the atomic writes every file goes through.

Reads and writes both go through here because both have a safety rule:

* Reading: a trace is data someone else may have made. Every file of it is
  opened with O_NONBLOCK and checked with fstat to be a regular file before
  a byte is read, so a FIFO or device put where ``_meta.json`` or a part
  belongs is refused at once instead of blocking every command forever.
* Writing: a trace holds the path, name and command of every process that
  was traced, so it is private to its owner: directories 0700, files 0600
  (a temporary file too, from the moment it exists). ``shared=True`` widens
  that to 0750/0640 for a group that is meant to read it; nothing is ever
  world-readable. The mode is set with fchmod, so a umask neither widens nor
  narrows what was asked for, and O_NOFOLLOW keeps a link planted at a
  temporary name from redirecting the write.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import reprlib
import stat as _statmod
from pathlib import Path

import pyarrow as pa

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
# event_id and ts_ns rise (nearly) row by row: delta encoding stores them in a
# few bits each and writes a part about a fifth faster than dictionary
# encoding, which fails on columns of unique values before falling back.
# Readers of Parquet 2 encodings (pyarrow, DuckDB) read them unchanged.
PARQUET_DELTA_COLUMNS = ("event_id", "ts_ns")
PARQUET_DICTIONARY_COLUMNS = [n for n in ARROW_SCHEMA.names if n not in PARQUET_DELTA_COLUMNS]
# Min/max statistics on the numeric columns only: the string columns' cost
# about a fifth of a part's encoding, and nothing filters on a command or path
# range (readers that skip row groups by id, time or kind keep what they use).
PARQUET_STATISTICS_COLUMNS = [f.name for f in ARROW_SCHEMA if not pa.types.is_string(f.type)]


FILE_MODE, DIR_MODE = 0o600, 0o700
SHARED_FILE_MODE, SHARED_DIR_MODE = 0o640, 0o750
# _meta.json of a ten-hour recording (one part a second) is a few MB.
MAX_META_BYTES = 64 << 20


def file_mode(shared: bool = False) -> int:
    return SHARED_FILE_MODE if shared else FILE_MODE


def dir_mode(shared: bool = False) -> int:
    return SHARED_DIR_MODE if shared else DIR_MODE


def _what(mode: int) -> str:
    for test, name in ((_statmod.S_ISDIR, "a directory"), (_statmod.S_ISFIFO, "a FIFO"),
                       (_statmod.S_ISCHR, "a character device"), (_statmod.S_ISBLK, "a block device"),
                       (_statmod.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path):
    """A binary file object for ``path``, which must be a regular file (TraceFormatError otherwise)."""
    try:
        st = os.stat(path)
        if not _statmod.S_ISREG(st.st_mode):
            raise TraceFormatError(f"{path}: is {_what(st.st_mode)}, not a regular file (not a trace file)")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TraceFormatError(f"{path}: no such file") from None
    except OSError as e:
        raise TraceFormatError(f"{path}: cannot read: {e.strerror}") from None
    try:
        # Checked again on the open file: the name may have changed under us.
        st = os.fstat(fd)
        if not _statmod.S_ISREG(st.st_mode):
            raise TraceFormatError(f"{path}: is {_what(st.st_mode)}, not a regular file (not a trace file)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The whole of a regular file (at most ``limit`` bytes, else TraceFormatError)."""
    with open_regular(path) as f:
        try:
            data = f.read() if limit is None else f.read(limit + 1)
        except OSError as e:
            raise TraceFormatError(f"{path}: cannot read: {e.strerror}") from None
    if limit is not None and len(data) > limit:
        raise TraceFormatError(f"{path}: larger than {limit >> 20} MiB: not vfstrace metadata")
    return data


def open_private(path: Path, *, shared: bool = False, text: bool = False, follow: bool = False):
    """Create (or truncate) ``path`` for writing with the trace file mode.

    A link is followed only with ``follow`` (an output the user named, such
    as ``-o /dev/stdout``), never at a temporary name. Only a regular file
    gets its mode set.
    """
    mode = file_mode(shared)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags, mode)
    try:
        if _statmod.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, mode)
        return os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def make_private_dir(path: Path, *, shared: bool = False) -> None:
    """Create ``path`` (and missing parents, with default modes) and give it the trace directory mode."""
    path.mkdir(parents=True, exist_ok=True, mode=dir_mode(shared))
    os.chmod(path, dir_mode(shared))


def parse_json(data: bytes, where, what: str):
    """JSON from a trace file, UTF-8 only; any way the parser can fail is a TraceFormatError.

    Decoded here, strictly: json.loads(bytes) would guess UTF-16/32 from NUL
    bytes and read garbage as names.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceFormatError(f"{where}: {what}: not UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceFormatError(f"{where}: {what}: invalid JSON ({_json_error(e, text)})") from None
    except RecursionError:
        raise TraceFormatError(f"{where}: {what}: nested too deep") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise TraceFormatError(f"{where}: {what}: {_one_line(e)}") from None


def _json_error(e: json.JSONDecodeError, text: str) -> str:
    """Where the parser stopped, said once: some of its messages end in "at" already
    ("Unterminated string starting at"), and one line of text (a JSON Lines
    event, named by its line number already) needs only the column."""
    where = f"column {e.colno}" if "\n" not in text else f"line {e.lineno} column {e.colno}"
    return f"{e.msg} {where}" if e.msg.endswith(" at") else f"{e.msg} at {where}"


BOM = b"\xef\xbb\xbf"


def strip_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte-order mark.

    Why: editors on other systems start a UTF-8 file with one; it says
    nothing but "UTF-8", which a trace file is anyway, so the metadata (the
    start of ``_meta.json`` or of a JSON Lines trace) is read past it.
    """
    return data[len(BOM):] if data.startswith(BOM) else data


def parse_json_meta(data: bytes, where) -> dict:
    """The metadata object of a trace (``_meta.json`` or a JSON Lines trace's first line, a byte-order mark
    before it skipped)."""
    meta = parse_json(strip_bom(data), where, "corrupt metadata")
    if not isinstance(meta, dict):
        raise TraceFormatError(f"{where}: metadata is not a JSON object")
    return meta


class UnknownColumns:
    """Columns this reader does not know, met in a trace's lines or parts: left out, and said once, as a note.

    Why: a newer writer's trace may hold a column added since (a change that
    older readers cannot read past bumps the schema version instead);
    reading what is known and saying what was not, as Parquet readers do,
    keeps such a trace readable. The names are shown as repr() text, cut
    short: they are whatever the file held.
    """

    SHOWN = 5

    def __init__(self):
        self.names: set = set()
        self.more = False  # names beyond those kept (a file could hold a new key on every line)
        self.seen = 0

    def add(self, names) -> None:
        self.seen += 1
        for name in names:
            if len(self.names) >= 100:
                self.more = self.more or name not in self.names
            else:
                self.names.add(name)

    def note(self, notes: list, unit: str) -> None:
        if not self.seen:
            return
        names = sorted(self.names, key=str)
        shown = ", ".join(reprlib.repr(str(x)) for x in names[: self.SHOWN])
        if len(names) > self.SHOWN or self.more:
            shown += ", ..."
        notes.append(f"ignored unknown column(s) {shown} in {self.seen} {unit}: written by a newer vfstrace? "
                     f"(this one reads schema version {SCHEMA_VERSION})")


CLOSED_NOTE = "the recording did not finish cleanly (closed=false): events after the last flush are lost"


def carried_notes(meta: dict) -> list[str]:
    """The notes a copy of a trace keeps in its metadata (``notes``): what the loader of the original said.

    Why: a trace converted from one that was damaged or cut short is no
    better for it; without them the copy would read as a clean recording
    (a JSON Lines trace's loader does not say "not closed cleanly" itself:
    hand-written ones never are). A loader that says a note again says it
    once (read._finish_meta()).
    """
    return [n for n in meta.get("notes") or [] if isinstance(n, str)]


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes, *, shared: bool = False) -> None:
    """``path`` replaced by ``data`` whole, or left as it was.

    A write that fails (a full disk) takes its temporary file with it, as a
    part that is not committed does (encoder.discard_part): what a stopped
    recording leaves behind is only what it committed.
    """
    tmp = path.with_name("." + path.name + ".tmp")
    try:
        with open_private(tmp, shared=shared) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the error that brought us here is the one to report
        raise
    _fsync_dir(path.parent)


def _check_version(meta: dict, where) -> None:
    """The schema version first (a trace of another version explains itself), then the whole metadata's types."""
    from vfstrace.store.metacheck import check_meta

    if not isinstance(meta, dict):
        raise TraceFormatError(f"{where}: metadata is not a JSON object")
    v = meta.get("schema_version")
    if v is None:
        raise TraceFormatError(f"{where}: metadata has no schema_version (not a vfstrace trace?)")
    if isinstance(v, bool) or not isinstance(v, int):
        raise TraceFormatError(f"{where}: schema_version must be an integer, got {reprlib.repr(v)}")
    if v != SCHEMA_VERSION:
        raise TraceFormatError(
            f"{where}: schema version {reprlib.repr(v)}, this vfstrace ({__version__}) reads version {SCHEMA_VERSION}"
        )
    check_meta(meta, where)


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
