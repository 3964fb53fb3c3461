"""Parquet parts encoded in a process of the writer's own, so a recording uses both of two cores.

Why a process: encoding a 65536-event part to Parquet costs about four
times what converting the recorder's batches to Arrow does, and pyarrow's
Parquet writer takes the GIL back often enough that an encoder *thread*
made writing slower on two cores, not faster. A child process has a GIL of
its own. The writer converts a chunk to an Arrow table and hands it over as
an Arrow IPC stream on a pipe (a copy of the column buffers, no rows
pickled); the child encodes it, fsyncs it, renames it in and then saves the
metadata the writer sent with it, in the order they were handed over, so a
crash leaves a readable trace of every part on disk.

The guarantees a recording relies on:

* ``flush()``/``close()`` return once the child has answered for everything
  handed over (part and metadata on disk); a failure (a full disk) comes
  back as the same one-line VfstraceError an in-process write raises, and
  no part after a failed one is written (it would leave a gap).
* At most three parts are with the child (one being fsync'ed, one being
  encoded, one received), two of them in memory, so memory stays bounded
  whatever the trace's size. The fsync runs in a thread of the child's
  (it waits for the disk without the GIL) while the next part is encoded.
* The child never outlives the writer: it exits when its pipe reaches EOF
  (the writer closed it or died) and when its parent is gone (checked each
  second, for a pipe end some other process inherited). It finishes the
  parts it has fully received first, so a writer that dies right after
  handing one over loses nothing that was complete.
* It is in a process group of its own and ignores SIGINT and SIGTERM: a
  Ctrl-C at the terminal reaches the recorder, which decides to flush and
  close, and cannot kill the encoder under it.

Small traces never start it (vfstrace/store/writer.py decides, by part
size); the semantics are the same either way.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vfstrace.errors import VfstraceError
from vfstrace.store.files import (
    META_FILE,
    PARQUET_COMPRESSION,
    PARQUET_COMPRESSION_LEVEL,
    PARQUET_DELTA_COLUMNS,
    PARQUET_DICTIONARY_COLUMNS,
    PARQUET_STATISTICS_COLUMNS,
    _atomic_write_bytes,
    open_private,
)

# A message: kind (b"P" part, b"M" metadata only), then the lengths of the
# part's name, the metadata and the Arrow IPC stream, then those bytes.
_HEADER = struct.Struct("<cIQQ")
MAX_IN_FLIGHT = 3  # one part being fsync'ed, one being encoded, one received and waiting
PIPE_BYTES = 1 << 20  # Linux's default fs.pipe-max-size


def write_part(t: pa.Table, directory: Path, name: str, *, shared: bool, row_group_size: int) -> None:
    """Encode ``t`` as part ``name`` of the trace in ``directory``: private, fsync'ed, renamed in whole.

    The one place a part is written, in the writer's process or (in two
    steps, the fsync overlapping the next part's encoding) in the encoder's.
    """
    commit_part(encode_part(t, directory, name, shared=shared, row_group_size=row_group_size), directory, name)


def encode_part(t: pa.Table, directory: Path, name: str, *, shared: bool, row_group_size: int):
    """The first step: ``t`` encoded into part ``name``'s temporary file; that file, open, not yet fsync'ed."""
    f = None
    try:
        f = open_private(_tmp(directory, name), shared=shared)
        pq.write_table(
            t,
            f,
            row_group_size=max(row_group_size, 1),
            compression=PARQUET_COMPRESSION,
            compression_level=PARQUET_COMPRESSION_LEVEL,
            use_dictionary=PARQUET_DICTIONARY_COLUMNS,
            write_statistics=PARQUET_STATISTICS_COLUMNS,
            column_encoding=dict.fromkeys(PARQUET_DELTA_COLUMNS, "DELTA_BINARY_PACKED"),
            write_page_checksum=True,  # the reader verifies them: a flipped byte is an error
        )
        f.flush()
        return f
    except OSError as e:
        discard_part(f, directory, name)
        raise VfstraceError(f"{directory / name}: cannot write trace part: {e.strerror}") from None


def commit_part(f, directory: Path, name: str) -> None:
    """The second step: the temporary file fsync'ed and renamed in, whole."""
    try:
        os.fsync(f.fileno())
        f.close()
        os.replace(_tmp(directory, name), directory / name)
    except OSError as e:
        discard_part(f, directory, name)
        raise VfstraceError(f"{directory / name}: cannot write trace part: {e.strerror}") from None


def discard_part(f, directory: Path, name: str) -> None:
    """A part that will not be renamed in: closed and removed (a disk-full stop leaves no half part behind)."""
    try:
        if f is not None:
            f.close()
    except OSError:
        pass
    try:
        _tmp(directory, name).unlink(missing_ok=True)
    except OSError:
        pass  # the error that brought us here is the one to report


def _tmp(directory: Path, name: str) -> Path:
    return directory / ("." + name + ".tmp")


def save_meta(directory: Path, data: bytes, *, shared: bool) -> None:
    try:
        _atomic_write_bytes(directory / META_FILE, data, shared=shared)
    except OSError as e:
        raise VfstraceError(f"{directory / META_FILE}: cannot write: {e.strerror}") from None


# --------------------------------------------------------------------------
# The writer's side


class Encoder:
    """The writer's handle on its encoder process: hand parts over, collect the answers."""

    def __init__(self, directory: Path, *, shared: bool, row_group_size: int):
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent.parent)  # the directory holding the vfstrace package
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self.proc = subprocess.Popen(
                # -P: the vfstrace of this process (PYTHONPATH above), never one in the current directory.
                [sys.executable, "-P", "-m", "vfstrace.store.encoder", str(directory), "1" if shared else "0",
                 str(int(row_group_size)), str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=env, process_group=0, close_fds=True,
            )
        except OSError as e:
            raise VfstraceError(f"{directory}: cannot start the trace encoder: {e.strerror}") from None
        self.directory = directory
        self._out = self.proc.stdin
        try:
            # A part is megabytes: through the default 64 KiB pipe it costs
            # both processes a context switch per 64 KiB (about a quarter of
            # the encoder's time), through 1 MiB a sixteenth of that.
            fcntl.fcntl(self._out.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # a lower fs.pipe-max-size: slower, the same trace
        self._in = self.proc.stdout.fileno()
        self._buf = b""
        self.in_flight = 0
        self.rows_on_disk = 0  # rows of the parts the child answered for as written
        self.busy_s = 0.0  # wall seconds the child spent on messages (encoding, writing, fsync), as last answered
        self.error: VfstraceError | None = None

    def send_part(self, name: str, t: pa.Table, meta: bytes) -> None:
        self._wait(MAX_IN_FLIGHT - 1)  # memory bounded: the child holds at most two
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        self._send(b"P", name.encode(), meta, sink.getvalue())

    def send_meta(self, meta: bytes) -> None:
        self._wait(MAX_IN_FLIGHT - 1)
        self._send(b"M", b"", meta, b"")

    def poll(self) -> None:
        """Take the answers already there, without waiting."""
        self._wait(None)

    def drain(self) -> None:
        """Wait until the child has answered for everything handed over."""
        self._wait(0)

    def stop(self) -> None:
        """Let the child finish what it holds and exit."""
        try:
            self.drain()
        finally:
            try:
                self._out.close()
            except OSError:
                pass
            self.proc.wait()
            self.proc.stdout.close()

    def _send(self, kind: bytes, name: bytes, meta: bytes, ipc) -> None:
        try:
            self._out.write(_HEADER.pack(kind, len(name), len(meta), len(ipc)))
            self._out.write(name)
            self._out.write(meta)
            self._out.write(ipc)
            self._out.flush()
        except (BrokenPipeError, ValueError):
            self._lost()
            raise self.error from None
        self.in_flight += 1

    def _wait(self, most: int | None) -> None:
        """Read answers until at most ``most`` are outstanding (None: only those already there)."""
        while self.in_flight and (most is None or self.in_flight > most):
            nl = self._buf.find(b"\n")
            if nl < 0:
                if most is None and not select.select([self._in], [], [], 0)[0]:
                    break
                chunk = os.read(self._in, 65536)
                if not chunk:
                    self._lost()
                    break
                self._buf += chunk
                continue
            line, self._buf = self._buf[:nl], self._buf[nl + 1:]
            self.in_flight -= 1
            answer = json.loads(line)
            if "error" in answer and self.error is None:
                self.error = VfstraceError(answer["error"])
            self.rows_on_disk += int(answer.get("rows", 0))
            self.busy_s = float(answer.get("busy_s", self.busy_s))

    def _lost(self) -> None:
        self.in_flight = 0
        if self.error is None:
            rc = self.proc.poll()
            why = f"exit status {rc}" if rc is not None and rc >= 0 else "killed" if rc is not None else "pipe closed"
            self.error = VfstraceError(f"{self.directory}: the trace encoder stopped ({why}); "
                                       "parts after the last flushed one were not written")


# --------------------------------------------------------------------------
# The child


def read_exact(fd: int, n: int) -> bytearray | None:
    """``n`` bytes from ``fd`` (None at EOF before the last: a message cut short)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            return None
        got += k
    return buf


def _reader(fd: int, parent: int, q: queue.Queue) -> None:
    """Messages from the pipe into ``q`` (None at EOF, a partial message, or when the parent is gone)."""
    try:
        while True:
            while not select.select([fd], [], [], 1.0)[0]:
                if os.getppid() != parent:
                    return
            head = read_exact(fd, _HEADER.size)
            if head is None:
                return
            kind, nlen, mlen, ilen = _HEADER.unpack(head)
            body = read_exact(fd, nlen + mlen + ilen)
            if body is None:
                return
            q.put((kind, bytes(body[:nlen]).decode(), bytes(body[nlen:nlen + mlen]), memoryview(body)[nlen + mlen:]))
    finally:
        q.put(None)


def _answer(obj: dict) -> None:
    data = (json.dumps(obj) + "\n").encode()
    try:
        os.write(1, data)  # one write of less than PIPE_BUF: the writer never sees half an answer
    except OSError:
        pass  # the writer is gone


class _Busy:
    """Wall seconds during which the child had a message in hand (encoding or fsyncing), overlaps once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._n = 0
        self._since = self._total = 0.0
        self.failed: str | None = None  # the first failure: no later part is written (it would leave a gap)

    def begin(self) -> None:
        with self._lock:
            if not self._n:
                self._since = time.perf_counter()
            self._n += 1

    def end(self) -> float:
        with self._lock:
            self._n -= 1
            if not self._n:
                self._total += time.perf_counter() - self._since
            return self._total + (time.perf_counter() - self._since if self._n else 0.0)


def _one_line(e: Exception, where) -> str:
    if isinstance(e, VfstraceError):
        return str(e)
    return f"{where}: trace encoder failed: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"


def _sync(jobs: queue.Queue, directory: Path, shared: bool, busy: _Busy) -> None:
    """Encoded parts fsync'ed and renamed in, each followed by its metadata, in order; one answer each."""
    while (job := jobs.get()) is not None:
        name, meta, f, rows, err = job
        if busy.failed is not None:
            if f is not None:
                discard_part(f, directory, name)
            _answer({"skipped": True, "busy_s": busy.end()})
            continue
        if err is None:
            try:
                if f is not None:
                    commit_part(f, directory, name)
                save_meta(directory, meta, shared=shared)
            except Exception as e:
                err = _one_line(e, directory / name if name else directory)
        if err is not None:
            busy.failed = err
        answer = {"rows": rows if err is None else 0, "busy_s": busy.end()}
        _answer(answer if err is None else {**answer, "error": err})


def main(argv: list[str]) -> int:
    """Encode parts as they come (this thread) while the one before is fsync'ed (a thread of its own:
    fsync waits for the disk without the GIL)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)  # the recorder decides when a recording ends
    directory, shared, row_group_size, parent = Path(argv[0]), argv[1] == "1", int(argv[2]), int(argv[3])
    if os.getppid() != parent:
        return 0
    q: queue.Queue = queue.Queue(maxsize=1)
    threading.Thread(target=_reader, args=(0, parent, q), daemon=True).start()
    busy = _Busy()
    jobs: queue.Queue = queue.Queue(maxsize=1)
    syncer = threading.Thread(target=_sync, args=(jobs, directory, shared, busy))
    syncer.start()
    while (msg := q.get()) is not None:
        kind, name, meta, ipc = msg
        busy.begin()
        f, rows, err = None, 0, None
        if kind == b"P" and busy.failed is None:
            try:
                t = pa.ipc.open_stream(pa.py_buffer(ipc)).read_all()
                rows = t.num_rows
                f = encode_part(t, directory, name, shared=shared, row_group_size=row_group_size)
                del t
            except Exception as e:
                err = _one_line(e, directory / name)
        del ipc, msg
        jobs.put((name, meta, f, rows, err))
    jobs.put(None)
    syncer.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
