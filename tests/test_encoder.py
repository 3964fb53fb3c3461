"""The trace writer's encoder process: same trace as in-process, crash safety, failures, signals, lifetime."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, is_root, need
from test_store import PY, canon, make_frame, numbered
from vfstrace import store
from vfstrace.store.writer import ENCODER_MIN_ROWS

PYTHON = str(PY if PY.exists() else sys.executable)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone(pid: int, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_encoder_writes_the_trace_the_writer_would(tmp_path):
    df = make_frame(5000, seed=3)
    for enc in (True, False):
        path = tmp_path / f"{enc}.vft"
        with store.TraceWriter(path, chunk_events=1000, flush_seconds=1e9, encoder=enc) as w:
            for i in range(0, 5000, 700):
                w.write(df.iloc[i:i + 700])
            assert (w._encoder is not None) is enc
            w.flush()
            assert w.events_flushed == 5000
        assert w._encoder is None  # close() ended it
        got = store.load(path)
        pd.testing.assert_frame_equal(canon(got), numbered(df))
        meta = got.attrs["meta"]
        assert meta["closed"] is True and [p["rows"] for p in meta["parts"]] == [1400, 1400, 1400, 800]
        assert os.stat(path).st_mode & 0o777 == 0o700
        assert {os.stat(p).st_mode & 0o777 for p in path.iterdir()} == {0o600}


def test_small_parts_are_encoded_in_process_and_large_ones_start_the_encoder(tmp_path):
    with store.TraceWriter(tmp_path / "s.vft", chunk_events=100) as w:
        w.write(make_frame(1000))
        assert w._encoder is None and w.events_flushed == 1000
    with store.TraceWriter(tmp_path / "l.vft", chunk_events=ENCODER_MIN_ROWS) as w:
        w.write({"ts_ns": np.arange(ENCODER_MIN_ROWS, dtype=np.uint64)})
        assert w._encoder is not None
    assert len(store.load(tmp_path / "l.vft")) == ENCODER_MIN_ROWS


KILLED_WRITER = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[2])
from vfstrace.store import TraceWriter
w = TraceWriter(sys.argv[1], chunk_events=100, flush_seconds=1e9, encoder=True)
i = 0
while True:
    w.write({"ts_ns": np.arange(i, i + 100, dtype=np.uint64),
             "name": np.array(["f%d" % k for k in range(i, i + 100)], dtype=object)})
    i += 100
    print(w._encoder.proc.pid, w.events_flushed, flush=True)
"""


def test_sigkill_keeps_every_part_the_encoder_answered_for_and_ends_the_encoder(tmp_path):
    path = tmp_path / "k.vft"
    p = subprocess.Popen([PYTHON, "-c", KILLED_WRITER, str(path), str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        child, flushed = 0, 0
        while flushed < 3000:  # the writer prints its encoder's pid and events_flushed after each write
            child, flushed = (int(x) for x in p.stdout.readline().split())
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    assert _gone(child), "the encoder outlived its writer"
    df = store.load(path)
    assert len(df) >= flushed and len(df) % 100 == 0
    assert df["ts_ns"].tolist() == list(range(len(df)))
    assert df["event_id"].tolist() == list(range(1, len(df) + 1))
    assert df.attrs["meta"]["closed"] is False
    assert not list(path.glob(".*.tmp"))


FULL_WRITER = r"""
import resource, signal, sys, numpy as np
sys.path.insert(0, sys.argv[2])
from vfstrace.errors import VfstraceError
from vfstrace.store import TraceWriter
# Files may grow to 128 KiB: a part past that fails with EFBIG, as on a full disk.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (128 * 1024, 128 * 1024))
w = TraceWriter(sys.argv[1], chunk_events=10000, flush_seconds=1e9, encoder=True)
w.write({"ts_ns": np.arange(1000, dtype=np.uint64)})  # a small part: written
w.flush()
print(w.events_flushed, flush=True)
rng = np.random.default_rng(0)
try:
    for i in range(100):  # random inodes and names do not compress: the first such part is too large
        w.write({"ts_ns": np.arange(10000, dtype=np.uint64), "ino": rng.integers(0, 2**63, 10000, dtype=np.uint64),
                 "name": np.array(["%032x" % k for k in rng.integers(0, 2**63, 10000)], dtype=object)})
    w.close()
except VfstraceError as e:
    print("error:", e, flush=True)
    try:
        w.close()
    except VfstraceError as e2:
        print("again:", e2 == e, flush=True)
"""


def test_encoder_failure_is_one_error_and_keeps_the_parts_before_it(tmp_path):
    path = tmp_path / "f.vft"
    r = subprocess.run([PYTHON, "-c", FULL_WRITER, str(path), str(ROOT)], capture_output=True, text=True, timeout=120)
    out = r.stdout.splitlines()
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert out[0] == "1000"
    assert out[1].startswith("error: ") and out[1].endswith("cannot write trace part: File too large"), out
    assert "\n" not in out[1] and out[2] == "again: True"
    assert not list(path.glob(".*.tmp"))  # no half part left behind
    df = store.load(path)
    assert len(df) == 1000 and df["event_id"].tolist() == list(range(1, 1001))
    assert [p["file"] for p in df.attrs["meta"]["parts"]] == ["part-000000.parquet"]


INTERRUPTED_WRITER = r"""
import signal, sys, time, numpy as np
sys.path.insert(0, sys.argv[2])
from vfstrace.store import TraceWriter
stop = []
signal.signal(signal.SIGINT, lambda *a: stop.append(1))
w = TraceWriter(sys.argv[1], chunk_events=1000, flush_seconds=1e9, encoder=True)
i = 0
while not stop:
    w.write({"ts_ns": np.arange(i, i + 1000, dtype=np.uint64)})
    i += 1000
    if i == 5000:
        print(w._encoder.proc.pid, flush=True)
    time.sleep(0.01)
w.close()
print(w.events_flushed, flush=True)
"""


def test_ctrl_c_reaches_the_recorder_not_the_encoder(tmp_path):
    """SIGINT at the terminal goes to the foreground process group, and a SIGTERM may reach the
    encoder too: it lives on until the writer has flushed and closed."""
    path = tmp_path / "i.vft"
    p = subprocess.Popen([PYTHON, "-c", INTERRUPTED_WRITER, str(path), str(ROOT)], stdout=subprocess.PIPE, text=True,
                         process_group=0)
    try:
        child = int(p.stdout.readline())
        assert os.getpgid(child) != p.pid  # not in the terminal's group
        os.kill(child, signal.SIGINT)
        os.kill(child, signal.SIGTERM)
        time.sleep(0.2)
        assert _alive(child)
        os.killpg(p.pid, signal.SIGINT)  # the Ctrl-C
        flushed = int(p.stdout.readline())
        assert p.wait(30) == 0
    finally:
        p.kill()
        p.wait()
    assert _gone(child)
    df = store.load(path)
    assert len(df) == flushed and flushed >= 5000 and df.attrs["meta"]["closed"] is True


def test_a_full_disk_is_one_error_and_leaves_only_whole_parts(tmp_path):
    """ENOSPC on a real (tiny) file system, met by the encoder while more parts are on their way."""
    need(is_root(), "needs root to mount a small tmpfs")
    from vfstrace.errors import VfstraceError

    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
    try:
        path = full / "t.vft"
        w = store.TraceWriter(path, chunk_events=20000, flush_seconds=1e9, encoder=True)
        rng = np.random.default_rng(0)
        with pytest.raises(VfstraceError, match=r"cannot write trace part: No space left on device$") as e:
            for i in range(100):  # random inodes do not compress: the disk fills within a few parts
                w.write({"ts_ns": np.arange(i * 20000, (i + 1) * 20000, dtype=np.uint64),
                         "ino": rng.integers(0, 2**63, 20000, dtype=np.uint64)})
        assert "\n" not in str(e.value)
        # When the error is raised the trace on disk is settled: whole parts only, all of them listed.
        assert not list(path.glob(".*.tmp"))
        with pytest.raises(VfstraceError) as again:
            w.close()
        assert again.value is e.value
        df = store.load(path)
        assert len(df) == w.events_flushed > 0 and len(df) % 20000 == 0
        assert len(df.attrs["meta"]["parts"]) == len(list(path.glob("part-*.parquet")))
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_the_encoder_runs_this_vfstrace_not_one_in_the_current_directory(tmp_path):
    """`python -m` would put the current directory first on sys.path: a `vfstrace` folder there must not
    become the encoder (it would run someone else's code, or hang on a protocol it does not speak)."""
    fake = tmp_path / "vfstrace"
    (fake / "store").mkdir(parents=True)
    (fake / "__init__.py").write_text("import os\nos._exit(7)\n")
    (fake / "store" / "__init__.py").write_text("")
    script = ("import sys, numpy as np\nsys.path.insert(0, sys.argv[2])\nfrom vfstrace.store import TraceWriter\n"
              "with TraceWriter(sys.argv[1], chunk_events=100, encoder=True) as w:\n"
              "    w.write({'ts_ns': np.arange(1000, dtype=np.uint64)})\n")
    r = subprocess.run([PYTHON, "-c", script, str(tmp_path / "t.vft"), str(ROOT)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(store.load(tmp_path / "t.vft")) == 1000
