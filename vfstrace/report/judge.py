"""The streaming correlator of a stored trace in a process of its own, fed while analyze reads and counts.

Why: `vfstrace analyze` reads each part, counts it, and picks out the rows
a verdict can rest on (vfstrace/correlate/parts.py); the streaming
correlator then judges those rows. Both halves are Python, numpy and pandas
work that holds the GIL, so a thread would not run them side by side; a
process does. On a ten-million-event trace they cost about the same, so on
two cores analyze takes about half as long.

The parent hands over exactly the tables the in-process correlator would be
fed, in the same order (each an Arrow IPC stream behind its length on a
pipe: the column buffers copied, no rows pickled), so the verdicts are the
same. The child answers once, at the end, with the VerdictTally result
pickled (the parent's own child: trusted bytes), or with one error line the
parent raises. It ignores SIGINT (the parent decides, and ends it), exits
when its pipe reaches EOF or its parent is gone, and never prints.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa

from vfstrace.errors import VfstraceError
from vfstrace.store.encoder import read_exact

_LEN = struct.Struct("<Q")  # the length of the IPC stream that follows; 0: no more, answer


class Judge:
    """The parent's end: ``feed()`` tables of rows to judge, then ``result()``; ``stop()`` in any case."""

    def __init__(self, where: Path, *, disorder_ns: int, unplaced_lost: int, top: int):
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent.parent)  # the directory holding the vfstrace package
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        job = {"disorder_ns": int(disorder_ns), "unplaced_lost": int(unplaced_lost), "top": int(top),
               "parent": os.getpid()}
        self.where = where
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "vfstrace.report.judge", json.dumps(job)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         env=env, close_fds=True)
        except OSError as e:
            raise VfstraceError(f"{where}: cannot start the judging process: {e.strerror}") from None

    def feed(self, t: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        buf = sink.getvalue()
        self._send(_LEN.pack(buf.size), buf)

    def result(self) -> dict:
        self._send(_LEN.pack(0))
        out = self.proc.stdout.read()
        rc = self.proc.wait()
        if rc == 0:
            return pickle.loads(out)
        self._fail(out, rc)

    def stop(self) -> None:
        """End it (done, or the parent failed first and nothing of it is wanted)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def _send(self, *data) -> None:
        try:
            for d in data:
                self.proc.stdin.write(d)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # it stopped: its answer says why
            self.proc.stdin = open(os.devnull, "wb")
            self._fail(self.proc.stdout.read(), self.proc.wait())

    def _fail(self, out: bytes, rc: int):
        try:
            err = json.loads(out)["error"]
        except (ValueError, KeyError, TypeError):
            err = f"{self.where}: the judging process stopped (exit status {rc})"
        raise VfstraceError(err)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)  # nobody is waiting for the answer


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends this process
    from vfstrace.correlate.parts import to_frame
    from vfstrace.correlate.streaming import StreamingCorrelator
    from vfstrace.report.analyze import VerdictTally

    job = json.loads(argv[0])
    threading.Thread(target=_watch_parent, args=(int(job["parent"]),), daemon=True).start()
    out = sys.stdout.buffer
    try:
        corr = StreamingCorrelator(reorder_ns=int(job["disorder_ns"]), unplaced_lost=int(job["unplaced_lost"]))
        tally = VerdictTally(int(job["top"]))
        while True:
            head = read_exact(0, _LEN.size)
            if head is None:
                return 1  # the parent went away without asking
            (n,) = _LEN.unpack(head)
            if n == 0:
                break
            body = read_exact(0, n)
            if body is None:
                return 1
            tally.add(corr.feed(to_frame(pa.ipc.open_stream(pa.py_buffer(body)).read_all())))
        v = tally.add(corr.finish()).result()
    except Exception as e:  # one line for the parent to raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        out.write(json.dumps({"error": first if isinstance(e, VfstraceError) else f"judging failed: {first}"}).encode())
        return 3
    out.write(pickle.dumps(v))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
