"""`vfstrace analyze` part by part: the same summary and verdicts as the whole trace loaded and judged at once."""

import json

import numpy as np
import pytest

from conftest import FIXTURES
from vfstrace import store
from vfstrace.correlate.parts import Disorder
from vfstrace.report import analyze
from vfstrace.workload.simulate import simulate


def _same(path, verdicts=True):
    a = analyze.analyze_parts(path, verdicts=verdicts)
    b = analyze.analyze_trace(path, verdicts=verdicts)[0]
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    return a


@pytest.mark.parametrize("seed,delivery,view,loss", [(1, "ts", "kprobe", 0.0), (2, "percpu", "kprobe", 0.0),
                                                     (3, "percpu", "kprobe", 0.01), (4, "percpu", "tracepoint", 0.0),
                                                     (5, "ts", "tracepoint", 0.01)])
def test_parts_agree_with_the_whole_trace_on_simulated_runs(tmp_path, seed, delivery, view, loss):
    # Small parts, so walks, windows and per-CPU reordering straddle part boundaries.
    ev, _ = simulate(seed, semantics="buggy", duration_ns=8_000_000, loss_rate=loss, view=view, delivery=delivery)
    p = tmp_path / "t.vft"
    with store.TraceWriter(p, meta={"tier": view}, chunk_events=997, flush_seconds=1e9) as w:
        for i in range(0, len(ev), 997):
            w.write(ev.iloc[i:i + 997])
    assert len(list(p.glob("part-*.parquet"))) > 3
    s = _same(p)
    assert s["verdicts"]["counts"] and sum(s["verdicts"]["counts"].values()) > 0
    _same(p, verdicts=False)


@pytest.mark.parametrize("name", ["race.jsonl", "kprobe-6.1.jsonl", "fentry-6.12.jsonl", "kprobe-5.10.jsonl"])
def test_parts_agree_on_recorded_fixtures_cut_into_parts(tmp_path, name):
    df = store.load(FIXTURES / "traces" / name)
    p = tmp_path / "t.vft"
    meta = {k: v for k, v in df.attrs["meta"].items() if k not in ("notes", "parts", "events", "closed", "schema_version")}
    with store.TraceWriter(p, meta=meta, chunk_events=7, flush_seconds=1e9) as w:
        for i in range(0, len(df), 7):
            w.write(df.iloc[i:i + 7])
    _same(p)


def test_a_trace_whose_ids_do_not_rise_is_judged_whole(tmp_path):
    ev, _ = simulate(7, duration_ns=5_000_000)
    p = tmp_path / "t.vft"
    half = len(ev) // 2
    with store.TraceWriter(p, chunk_events=len(ev), flush_seconds=1e9) as w:
        w.write(ev.iloc[half:])
    # A second writer's part with lower ids, as a trace assembled by hand could hold.
    with store.TraceWriter(tmp_path / "u.vft", chunk_events=len(ev), flush_seconds=1e9) as w:
        w.write(ev.iloc[:half])
    (tmp_path / "u.vft" / "part-000000.parquet").rename(p / "part-000001.parquet")
    _same(p)


def test_disorder_is_the_largest_fall_below_an_earlier_stamp():
    d = Disorder()
    d.add(np.array([1, 2, 3]), np.array([10, 30, 25], dtype=np.uint64))
    d.add(np.array([4, 5]), np.array([12, 40], dtype=np.uint64))
    assert d.ids_rise and d.disorder_ns == 18
    d.add(np.array([5]), np.array([50], dtype=np.uint64))
    assert not d.ids_rise


def test_a_damaged_part_is_one_error_whichever_pass_reads_it(tmp_path):
    from vfstrace.errors import TraceFormatError

    ev, _ = simulate(8, duration_ns=3_000_000)
    p = tmp_path / "t.vft"
    k = len(ev) // 3 + 1
    with store.TraceWriter(p, chunk_events=k, flush_seconds=1e9) as w:
        for i in range(0, len(ev), k):
            w.write(ev.iloc[i:i + k])
    part = p / "part-000001.parquet"
    raw = bytearray(part.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # inside a column chunk's pages: the checksum catches it
    part.write_bytes(bytes(raw))
    with pytest.raises(TraceFormatError, match="part-000001.parquet"):
        analyze.analyze_parts(p)
