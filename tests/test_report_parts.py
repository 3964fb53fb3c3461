"""`vfstrace report` and `selftest --from-trace` part by part: the same output as the whole trace loaded at once.

Traces come from the simulator (semantics="buggy": its kernel lets a
lookup trust a pruned dentry, so races are in its ground truth) written by
the real trace writer in small parts, so walks, windows, timelines and
per-CPU reordering straddle part boundaries.
"""

import json

import numpy as np
import pytest

from conftest import FIXTURES, cli, invoke
from vfstrace import store
from vfstrace.correlate import correlate
from vfstrace.correlate.parts import Disorder
from vfstrace.report import correlated as report
from vfstrace.report.analyze import first_pass
from vfstrace.report.terminal import term_tree
from vfstrace.selftest import judge
from vfstrace.workload.simulate import simulate

PART = 997


def _write(path, ev, meta=None, part=PART):
    with store.TraceWriter(path, meta=meta or {"tier": "kprobe"}, chunk_events=part, flush_seconds=1e9) as w:
        for i in range(0, len(ev), part):
            w.write(ev.iloc[i:i + part])
    assert len(list(path.glob("part-*.parquet"))) > 3
    return path


def _sim(tmp_path, seed, *, meta=None, name="t.vft", **kw):
    ev, truth = simulate(seed, semantics="buggy", duration_ns=8_000_000, **kw)
    return _write(tmp_path / name, ev, meta), ev, truth


def _whole_report(path, **kw):
    df = store.load(path)
    return report.build_report(df, correlate(df), df.attrs["meta"], **kw)


def _dump(x) -> str:
    return json.dumps(x, sort_keys=True, indent=1, default=str)


def _same_report(path, **kw):
    a = report.report_parts(path, **kw)
    assert a is not None, "a multi-part trace with rising ids is read part by part"
    b = _whole_report(path, **kw)
    assert _dump(a) == _dump(b)
    assert report.render_text(term_tree(a)) == report.render_text(term_tree(b))
    assert report.render_html(a) == report.render_html(b)
    return a


@pytest.mark.parametrize("seed,delivery,loss", [(1, "ts", 0.0), (2, "percpu", 0.0), (3, "percpu", 0.01)])
def test_report_parts_agree_with_the_whole_trace(tmp_path, seed, delivery, loss):
    p, ev, truth = _sim(tmp_path, seed, delivery=delivery, loss_rate=loss)
    rep = _same_report(p)
    races = [s for s in rep["suspects"] if s["verdict"] == "race"]
    assert races and len(rep["suspects"]) == min(20, rep["suspects_total"])
    # The races shown are races in the simulated kernel (its ground truth, never seen by the correlator).
    t = truth.set_index("event_id")["truth"]
    assert all(t.get(s["event_id"]) == "race" for s in races)
    assert all(s["timeline"] for s in rep["suspects"])
    if loss:
        assert rep["summary"]["lost"]["records"] > 0
    # Other limits and windows: all suspects, none, and timelines cut at MAX_TIMELINE.
    _same_report(p, limit=0)
    cut = _same_report(p, limit=3)
    assert cut["suspects_total"] > len(cut["suspects"]) == 3
    _same_report(p, limit=500, window_us=50)
    big = _same_report(p, limit=5, window_us=5_000_000)
    assert max(len(s["timeline"]) for s in big["suspects"]) >= report.MAX_TIMELINE


def test_report_parts_with_timestamps_out_of_order_across_parts(tmp_path):
    p, ev, _ = _sim(tmp_path, 4, delivery="percpu", jitter_ns=20_000)
    d, first = Disorder(), first_pass(p)
    # Some stamp lies below one of an earlier part: out of order across a part boundary.
    spans = first.spans
    assert (spans[1:, 2].astype(np.int64) < np.maximum.accumulate(spans[:-1, 3].astype(np.int64))).any()
    d.add(ev["event_id"].to_numpy(), ev["ts_ns"].to_numpy())
    assert first.order.disorder_ns == d.disorder_ns > 0
    _same_report(p)
    _same_report(p, limit=100, window_us=200)


def test_report_parts_with_losses_no_lost_record_places(tmp_path):
    # lost_total beyond the LOST rows: no verdict may rest on a complete window (race -> uncertain).
    p, ev, _ = _sim(tmp_path, 5, meta={"tier": "kprobe", "lost_total": 10**6}, loss_rate=0.01)
    rep = _same_report(p)
    counts = rep["summary"]["verdicts"]["counts"]
    assert counts.get("uncertain") and not counts.get("race")
    assert rep["summary"]["lost"]["records"] > 0


@pytest.mark.parametrize("name", ["race.jsonl", "escape.jsonl", "kprobe-6.1.jsonl"])
def test_report_parts_on_recorded_fixtures_cut_into_parts(tmp_path, name):
    df = store.load(FIXTURES / "traces" / name)
    made = ("notes", "parts", "events", "closed", "schema_version")
    meta = {k: v for k, v in df.attrs["meta"].items() if k not in made}
    p = _write(tmp_path / "t.vft", df, meta, part=5 if len(df) < 100 else 97)
    _same_report(p)
    _same_report(p, window_us=0)


def test_report_command_reads_parts_and_prints_the_whole_trace_report(tmp_path):
    p, _, _ = _sim(tmp_path, 6)
    r = invoke(["report", p, "--format", "json", "--limit", "7"])
    assert r.exit_code == 0 and r.output == json.dumps(_whole_report(p, limit=7), indent=1,
                                                       default=report._json_default) + "\n"
    r = invoke(["report", p])
    assert r.exit_code == 0 and r.output == report.render_text(term_tree(_whole_report(p)))
    o = tmp_path / "r.html"
    assert invoke(["report", p, "--format", "html", "-o", o]).exit_code == 0 and (o.stat().st_mode & 0o777) == 0o600
    assert o.read_text() == report.render_html(_whole_report(p))


def _ids_falling(tmp_path):
    """A trace whose second part holds lower ids than its first (assembled by hand)."""
    ev, _ = simulate(7, semantics="buggy", duration_ns=5_000_000)
    p, half = tmp_path / "t.vft", len(ev) // 2
    with store.TraceWriter(p, chunk_events=len(ev), flush_seconds=1e9) as w:
        w.write(ev.iloc[half:])
    with store.TraceWriter(tmp_path / "u.vft", chunk_events=len(ev), flush_seconds=1e9) as w:
        w.write(ev.iloc[:half])
    (tmp_path / "u.vft" / "part-000000.parquet").rename(p / "part-000001.parquet")
    return p


def test_report_falls_back_to_the_whole_load(tmp_path):
    falling = _ids_falling(tmp_path)
    jsonl = FIXTURES / "traces" / "race.jsonl"
    single = tmp_path / "one.parquet"
    next(iter(_write(tmp_path / "s.vft", simulate(8, duration_ns=5_000_000)[0]).glob("part-*.parquet"))).rename(single)
    for path in (falling, jsonl, single):
        assert report.report_parts(path) is None
        r = invoke(["report", path, "--format", "json"])
        assert r.exit_code == 0 and json.loads(r.output) == json.loads(_dump(_whole_report(path)))


def _phased(tmp_path, seed, *, lost_total=None, **kw):
    """A simulated trace with selftest's phase marks: two halves of its time, one with kernel counters."""
    ev, truth = simulate(seed, semantics="buggy", duration_ns=8_000_000, **kw)
    ts = ev["ts_ns"].to_numpy()
    lo, mid, hi = int(ts.min()), int(np.median(ts)), int(ts.max()) + 1
    phases = [{"name": "baseline", "start_ns": lo, "end_ns": mid},
              {"name": "widened", "start_ns": mid, "end_ns": hi, "counters": {"lookup": 12345, "prune": 67},
               "widen": {"site": "d_lookup_rcu", "delay_ns": 200_000, "delayed": 10, "mean_delay_ns": 200_000},
               "workload": {"stat_rate": 0}}]
    meta = {"tier": "kprobe", "kernel_release": "sim", "probes": ["walk"], "selftest": {"phases": phases}}
    if lost_total is not None:
        meta["lost_total"] = lost_total
    return _write(tmp_path / f"p{seed}.vft", ev, meta), truth


def _same_judgement(path, monkeypatch):
    assert first_pass(path) is not None
    a = judge.from_trace(path)
    with monkeypatch.context() as m:  # from_trace() loading the trace whole, as it does a JSON Lines one
        m.setattr("vfstrace.report.analyze.first_pass", lambda path: None)
        b = judge.from_trace(path)
    assert a.to_dict() == b.to_dict()
    return a


@pytest.mark.parametrize("seed,delivery,loss", [(11, "ts", 0.0), (12, "percpu", 0.0), (13, "percpu", 0.01)])
def test_selftest_from_trace_phases_part_by_part(tmp_path, monkeypatch, seed, delivery, loss):
    p, truth = _phased(tmp_path, seed, delivery=delivery, loss_rate=loss)
    res = _same_judgement(p, monkeypatch)
    assert [ph.name for ph in res.phases] == ["baseline", "widened"]
    assert res.phases[1].lookups == 12345 and res.phases[0].lookups > 0
    # The simulated kernel is the pre-patch one: FAIL, citing lookups that raced in its ground truth.
    assert res.verdict == judge.FAIL and sum(ph.race for ph in res.phases) > 0
    t = truth.set_index("event_id")["truth"]
    cited = [r for ph in res.phases for r in ph.races]
    assert cited and all(t.get(r["event_id"]) == "race" for r in cited)
    if loss:
        assert sum(ph.lost for ph in res.phases) > 0


def test_selftest_from_trace_with_unplaced_losses(tmp_path, monkeypatch):
    p, _ = _phased(tmp_path, 14, lost_total=10**6, loss_rate=0.01)
    res = _same_judgement(p, monkeypatch)
    assert sum(ph.race for ph in res.phases) == 0 and sum(ph.uncertain for ph in res.phases) > 0


def test_selftest_from_trace_without_phases(tmp_path, monkeypatch):
    p, _, _ = _sim(tmp_path, 15, delivery="percpu", meta={"tier": "kprobe", "kernel_counters": {"walk": 99}})
    res = _same_judgement(p, monkeypatch)
    assert [ph.name for ph in res.phases] == ["trace"] and res.phases[0].lookups == 99
    p2, _, _ = _sim(tmp_path, 16, name="u.vft")
    _same_judgement(p2, monkeypatch)


def test_selftest_from_trace_falls_back_to_the_whole_load(tmp_path):
    for path in (_ids_falling(tmp_path), FIXTURES / "traces" / "race.jsonl"):
        assert first_pass(path) is None
        a = judge.from_trace(path)
        _, phases = judge.judge_frame(store.load(path))
        assert [p.to_dict() for p in a.phases] == [p.to_dict() for p in phases]


def test_a_trace_left_by_a_crash_reads_the_same(tmp_path, monkeypatch):
    # closed=false, a half-written part and a last part not yet in _meta.json: the notes each pass meets.
    p, _ = _phased(tmp_path, 17)
    m = json.loads((p / "_meta.json").read_text())
    m["closed"], m["parts"] = False, m["parts"][:-1]
    (p / "_meta.json").write_text(json.dumps(m))
    (p / ".part-000999.parquet.tmp").write_bytes(b"PAR1 half a part")
    rep = _same_report(p)
    notes = rep["summary"]["notes"]
    assert any("half-written" in n for n in notes) and any("not in _meta.json" in n for n in notes)
    assert any("closed=false" in n for n in notes)
    _same_judgement(p, monkeypatch)


def test_an_empty_trace_directory(tmp_path, monkeypatch):
    p = tmp_path / "e.vft"
    with store.TraceWriter(p, meta={"tier": "kprobe"}):
        pass
    _same_report(p)
    assert _same_judgement(p, monkeypatch).verdict == judge.INCONCLUSIVE


def test_a_damaged_part_is_one_error_line(tmp_path):
    p, _, _ = _sim(tmp_path, 18)
    part = p / "part-000002.parquet"
    raw = bytearray(part.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # inside a column chunk's pages: the checksum catches it
    part.write_bytes(bytes(raw))
    for args in (["report", str(p)], ["selftest", "--from-trace", str(p)]):
        r = cli(*args)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("vfstrace: error:") and "part-000002.parquet" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
