"""`vfstrace analyze` with the streaming correlator in a process of its own: the same summary and verdicts."""

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import FIXTURES, ROOT
from vfstrace import store
from vfstrace.errors import TraceFormatError
from vfstrace.report import analyze
from vfstrace.workload.simulate import simulate


def _parts(tmp_path, ev, k, meta=None):
    p = tmp_path / "t.vft"
    with store.TraceWriter(p, meta=meta, chunk_events=k, flush_seconds=1e9) as w:
        for i in range(0, len(ev), k):
            w.write(ev.iloc[i:i + k])
    return p


def _same(p):
    a = analyze.analyze_parts(p, judge_apart=True)
    b = analyze.analyze_parts(p, judge_apart=False)
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    return a


@pytest.mark.parametrize("seed,delivery,view,loss", [(3, "percpu", "kprobe", 0.01), (5, "ts", "tracepoint", 0.01)])
def test_apart_agrees_with_in_process_on_simulated_runs(tmp_path, seed, delivery, view, loss):
    ev, _ = simulate(seed, semantics="buggy", duration_ns=8_000_000, loss_rate=loss, view=view, delivery=delivery)
    # Small parts and small feeds, so many tables cross the pipe.
    s = _same(_parts(tmp_path, ev, 997, {"tier": view}))
    assert s["verdicts"]["counts"] and sum(s["verdicts"]["counts"].values()) > 0


def test_apart_agrees_on_a_recorded_fixture(tmp_path):
    df = store.load(FIXTURES / "traces" / "race.jsonl")
    meta = {k: v for k, v in df.attrs["meta"].items() if k not in ("notes", "parts", "events", "closed", "schema_version")}
    s = _same(_parts(tmp_path, df, 7, meta))
    assert s["verdicts"]["counts"].get("race")


def test_a_damaged_part_is_one_error_with_the_correlator_apart(tmp_path):
    ev, _ = simulate(8, duration_ns=3_000_000)
    p = _parts(tmp_path, ev, len(ev) // 3 + 1)
    part = p / "part-000001.parquet"
    raw = bytearray(part.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    part.write_bytes(bytes(raw))
    with pytest.raises(TraceFormatError, match="part-000001.parquet"):
        analyze.analyze_parts(p, judge_apart=True)


KILLED_READER = r"""
import sys
sys.path.insert(0, sys.argv[2])
from vfstrace.report import judge
j = judge.Judge(sys.argv[1], disorder_ns=0, unplaced_lost=0, top=10)
print(j.proc.pid, flush=True)
sys.stdin.read()
"""


def test_the_correlator_process_ignores_ctrl_c_and_ends_with_its_parent(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", KILLED_READER, str(tmp_path), str(ROOT)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        child = int(p.stdout.readline())
        time.sleep(0.5)  # past its start
        subprocess.run(["kill", "-INT", str(child)], check=True)
        time.sleep(0.3)
        assert subprocess.run(["kill", "-0", str(child)]).returncode == 0  # still there
        p.send_signal(signal.SIGKILL)
        p.wait()
        end = time.monotonic() + 10
        while time.monotonic() < end and subprocess.run(["kill", "-0", str(child)],
                                                        stderr=subprocess.DEVNULL).returncode == 0:
            time.sleep(0.1)
        assert subprocess.run(["kill", "-0", str(child)], stderr=subprocess.DEVNULL).returncode != 0
    finally:
        p.kill()
        p.wait()
