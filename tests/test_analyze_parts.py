"""`vfstrace analyze` part by part: the same summary and verdicts as the whole trace loaded and judged at once."""

import json

import numpy as np
import pytest

from conftest import FIXTURES, write_parts
from vfstrace import store
from vfstrace.correlate.parts import MAX_DISORDER_NS, Disorder, OrderingLoss, WalkCut
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


def _stepping_back(n: int, back_ns: int):
    """``n`` simulated events whose stamps step back by ``back_ns`` once, a tenth of the way in."""
    ev, _ = simulate(3, duration_ns=30_000_000)
    ev = ev.iloc[:n].copy()
    ts = ev["ts_ns"].to_numpy().astype(np.int64)
    ts[n // 10:] -= back_ns
    ev["ts_ns"] = (ts - min(0, int(ts.min()))).astype(np.uint64)
    return ev


def _rows_cut(monkeypatch) -> list[int]:
    """Rows the walk cut looks at, summed over its calls: the part-by-part correlator's work."""
    seen = [0]
    cut = WalkCut.cut

    def counting(self, t, rows, max_seen):
        seen[0] += self.carried + len(rows)
        return cut(self, t, rows, max_seen)

    monkeypatch.setattr(WalkCut, "cut", counting)
    return seen


def test_a_step_back_past_the_bound_is_an_ordering_loss_not_an_unbounded_carry(tmp_path, monkeypatch):
    # 2,000 one-event parts whose stamps step back 1,000 s once took 136 s (4 s without the step
    # back): the walks carried over grew with every part, waiting for rows that could sort into them.
    n = 2000
    p = write_parts(tmp_path / "t.vft", _stepping_back(n, 10**12), 1)
    seen = _rows_cut(monkeypatch)
    s = analyze.analyze_parts(p)
    assert seen[0] <= 4 * n, seen[0]  # each row looked at a few times, not once per later part
    late = n - n // 10
    assert f"ordering lost: {late:,} event(s) lie more than 0.1 s below events before them in the trace; " \
           "verdicts near them are uncertain" in s["notes"]
    # The verdicts near the late events say so; those far from them are the whole trace's.
    whole = analyze.analyze_trace(p)[0]["verdicts"]["counts"]
    assert s["verdicts"]["counts"].get("uncertain", 0) > 0
    assert sum(s["verdicts"]["counts"].values()) == sum(whole.values())
    for verdict, k in s["verdicts"]["counts"].items():
        assert verdict == "uncertain" or k <= whole.get(verdict, 0), (s["verdicts"]["counts"], whole)


def test_a_step_back_within_the_bound_judges_as_the_whole_trace(tmp_path, monkeypatch):
    n = 2000
    p = write_parts(tmp_path / "t.vft", _stepping_back(n, MAX_DISORDER_NS // 2), 1)
    seen = _rows_cut(monkeypatch)
    s = _same(p)
    assert seen[0] <= 4 * n, seen[0]
    assert not any("ordering lost" in x for x in s["notes"])


def test_an_ordering_loss_widens_into_spans_it_never_narrows():
    loss = OrderingLoss()
    loss.MAX_SPANS = 8
    stamps = np.arange(0, 10_000, 100, dtype=np.uint64)
    loss.add(stamps)
    assert len(loss.lo) <= 8 and loss.events == len(stamps)
    assert loss.near(stamps, 0).all()
    assert not loss.near(np.array([20_000], dtype=np.uint64), 5_000).any()
    assert loss.near(np.array([20_000], dtype=np.uint64), 10_100).all()
