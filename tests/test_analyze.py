"""`vfstrace analyze`: summaries of hand-written traces, with and without the correlator."""

import json
import subprocess
import sys
import types

import numpy as np
import pandas as pd

from conftest import FIXTURES, ROOT, need
from vfstrace import store
from vfstrace.report import analyze
from vfstrace.events import ENOENT, Kind

RACE = FIXTURES / "traces" / "race.jsonl"
VFSTRACE = ROOT / ".venv" / "bin" / "vfstrace"


def has_correlator():
    try:
        import vfstrace.correlate  # noqa: F401
    except ImportError:
        return False
    return True


def test_counts_lost_and_enoent_of_the_race_fixture():
    df = store.load(RACE)
    s = analyze.summarize(df, verdicts=None)
    assert s["events"] == 17
    assert s["by_kind"] == {"walk_enter": 2, "walk_return": 2, "lookup_enter": 2, "lookup_return": 2, "prune": 1,
                            "unhash": 1, "iput": 1, "d_free": 1, "path_syscall": 2, "shrink_start": 1,
                            "shrink_end": 1, "lost": 1}
    assert s["lost"] == {"total": 3, "per_cpu": {"1": 3}, "records": 1}
    assert s["lookups"]["enoent"] == 2 and s["lookups"]["enoent_rcu"] == 1 and s["lookups"]["seq_changed"] == 1
    assert s["enoent"]["syscalls"] == 2
    assert {x["path"] for x in s["enoent"]["top_paths"]} == {"/data/f", "/data/nosuch"}
    assert s["enoent"]["top_comms"] == [{"comm": "statter", "count": 2}, {"comm": "ls", "count": 2}]
    assert [b["events"] for b in s["rate"]["buckets"]] == [16, 1]
    assert s["rate"]["buckets"][1]["lost"] == 3
    assert s["verdicts"]["available"] is False and "correlator not available" in s["verdicts"]["note"]
    text = analyze.render_text(s)
    assert "LOST EVENTS: 3" in text and "cpu1: 3" in text and "correlator not available" in text


def test_lost_from_metadata_alone_is_not_hidden():
    df = store.load(RACE)
    df = df[df["kind"] != int(Kind.LOST)]
    s = analyze.summarize(df, df.attrs["meta"])
    assert s["lost"]["total"] == 3 and s["lost"]["records"] == 0


def test_rate_buckets_match_a_plain_count():
    rng = np.random.default_rng(3)
    n = 20000
    ts = np.sort(rng.integers(10**12, 10**12 + 7 * 10**9, n)).astype(np.uint64)
    kind = rng.choice([int(Kind.WALK_ENTER), int(Kind.PRUNE), int(Kind.PATH_SYSCALL)], n).astype(np.uint8)
    ret = np.where(rng.random(n) < 0.3, ENOENT, 0)
    df = store.to_table({"ts_ns": ts, "kind": kind, "ret": ret, "event_id": np.arange(1, n + 1)}).to_pandas()
    s = analyze.summarize(df, {})
    got = s["rate"]["buckets"]
    secs = (ts - ts.min()) // 10**9
    for b in got:
        m = secs == b["t_s"]
        assert b["events"] == m.sum()
        assert b["lookups"] == (m & (kind == int(Kind.WALK_ENTER))).sum()
        assert b["prunes"] == (m & (kind == int(Kind.PRUNE))).sum()
        assert b["enoent"] == (m & (kind == int(Kind.PATH_SYSCALL)) & (ret == ENOENT)).sum()
    assert sum(b["events"] for b in got) == n


def test_fake_correlator_is_imported_lazily(monkeypatch):
    df = store.load(RACE)
    seen = {}

    def correlate(frame):
        seen["n"] = len(frame)
        return pd.DataFrame([dict(event_id=8, verdict="race", ts_ns=1, tid=100, pid=100, comm="statter",
                                  dentry=0xFFFF888000002000, name="f", path="", evidence=[5, 6, 7, 8], reason="r"),
                             dict(event_id=15, verdict="absent", ts_ns=2, tid=101, pid=101, comm="ls", dentry=0,
                                  name="nosuch", path="", evidence=[], reason="r2")])

    monkeypatch.setitem(sys.modules, "vfstrace.correlate", types.SimpleNamespace(correlate=correlate))
    v, note = analyze.run_correlator(df)
    assert seen["n"] == 17 and note is None
    s = analyze.summarize(df, verdicts=v)
    assert s["verdicts"]["counts"] == {"race": 1, "absent": 1}
    assert [x["event_id"] for x in s["verdicts"]["suspects"]] == [8]
    assert s["verdicts"]["suspects"][0]["evidence"] == [5, 6, 7, 8]


def test_without_correlator_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "vfstrace.correlate", None)  # import raises ImportError
    v, note = analyze.run_correlator(store.load(RACE))
    assert v is None and "correlator not available" in note


def test_real_correlator_finds_the_evident_race():
    need(has_correlator(), "vfstrace.correlate is not in this tree")
    df = store.load(RACE)
    v, _ = analyze.run_correlator(df)
    s = analyze.summarize(df, verdicts=v)
    assert s["verdicts"]["counts"].get("race") == 1
    sus = s["verdicts"]["suspects"][0]
    assert sus["verdict"] == "race" and sus["dentry"] == "0xffff888000002000"
    assert sus["event_id"] in (3, 8)  # the lookup's or the walk's return, per the correlator's choice
    assert {5, 6, 7} <= set(sus["evidence"])  # prune, unhash and iput of the dentry


def test_cli_text_and_json():
    need(VFSTRACE.exists(), f"{VFSTRACE} missing: run `make setup`")
    r = subprocess.run([str(VFSTRACE), "analyze", str(RACE), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["events"] == 17 and s["lost"]["total"] == 3
    r2 = subprocess.run([str(VFSTRACE), "analyze", str(RACE)], capture_output=True, text=True)
    assert r2.returncode == 0 and "events by kind" in r2.stdout and "LOST EVENTS" in r2.stdout
    if s["verdicts"]["available"]:
        assert s["verdicts"]["counts"].get("race") == 1
        assert "race" in r2.stdout
