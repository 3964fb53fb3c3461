"""`vfstrace analyze`: summaries of hand-written traces, with and without verdicts."""

import json
import subprocess
import numpy as np
import pandas as pd

from conftest import FIXTURES, ROOT, need
from vfstrace import store
from vfstrace.report import analyze
from vfstrace.events import ENOENT, Kind

RACE = FIXTURES / "traces" / "race.jsonl"
# On purpose the installed console script, not conftest.VFSTRACE: this is the
# host test that `make setup` installed .venv/bin/vfstrace (pyproject's
# [project.scripts] entry) and that it runs a command; every other CLI test
# runs the checkout through conftest.cli / conftest.invoke.
CONSOLE_SCRIPT = ROOT / ".venv" / "bin" / "vfstrace"


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
    assert s["verdicts"]["available"] is False and "verdicts not computed" in s["verdicts"]["note"]
    text = analyze.render_text(s)
    assert "LOST EVENTS: 3" in text and "cpu1: 3" in text and "verdicts not computed" in text


def test_chart_buckets_of_a_two_second_trace():
    # 2 s of events: the chart gets 40 buckets of 50 ms (not 3 of a second), each a plain count.
    rng = np.random.default_rng(5)
    n = 5000
    ts = np.sort(rng.integers(10**12, 10**12 + 2 * 10**9, n)).astype(np.uint64)
    kind = rng.choice([int(Kind.WALK_ENTER), int(Kind.PRUNE)], n).astype(np.uint8)
    df = store.to_table({"ts_ns": ts, "kind": kind, "event_id": np.arange(1, n + 1)}).to_pandas()
    r = analyze.rate_chart(df)
    assert r["bucket_seconds"] == 0.05 and len(r["buckets"]) in (40, 41)
    off = (ts - ts.min()) // 50_000_000
    for i, b in enumerate(r["buckets"]):
        assert b["t_s"] == round(i * 0.05, 9)
        assert b["events"] == (off == i).sum()
        assert b["prunes"] == ((off == i) & (kind == int(Kind.PRUNE))).sum()
    assert [analyze.nice_width_ns(s, 60) for s in (2e9, 60e9, 3600e9, 1e6)] == [
        50_000_000, 1_000_000_000, 100_000_000_000, 20_000]


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


def test_summary_of_given_verdicts():
    df = store.load(RACE)
    v = pd.DataFrame([dict(event_id=8, verdict="race", ts_ns=1, tid=100, pid=100, comm="statter",
                                  dentry=0xFFFF888000002000, name="f", path="", evidence=[5, 6, 7, 8], reason="r"),
                             dict(event_id=15, verdict="absent", ts_ns=2, tid=101, pid=101, comm="ls", dentry=0,
                                  name="nosuch", path="", evidence=[], reason="r2")])
    s = analyze.summarize(df, verdicts=v)
    assert s["verdicts"]["counts"] == {"race": 1, "absent": 1}
    assert [x["event_id"] for x in s["verdicts"]["suspects"]] == [8]
    assert s["verdicts"]["suspects"][0]["evidence"] == [5, 6, 7, 8]


def test_without_verdicts_the_answer_says_none_were_computed():
    s, _, v = analyze.analyze_trace(RACE, verdicts=False)
    assert v is None and not s["verdicts"]["available"] and "--no-verdicts" in s["verdicts"]["note"]
    assert s["answer"].startswith("No verdicts computed: 17 events recorded")
    assert analyze.render_text(s).splitlines()[0] == s["answer"]


def test_real_correlator_finds_the_evident_race():
    s, _, _ = analyze.analyze_trace(RACE)
    assert s["verdicts"]["counts"].get("race") == 1
    sus = s["verdicts"]["suspects"][0]
    assert sus["verdict"] == "race" and sus["dentry"] == "0xffff888000002000"
    assert sus["event_id"] in (3, 8)  # the lookup's or the walk's return, per the correlator's choice
    assert {5, 6, 7} <= set(sus["evidence"])  # prune, unhash and iput of the dentry


def test_cli_text_and_json():
    need(CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} missing: run `make setup`")
    r = subprocess.run([str(CONSOLE_SCRIPT), "analyze", str(RACE), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["events"] == 17 and s["lost"]["total"] == 3
    r2 = subprocess.run([str(CONSOLE_SCRIPT), "analyze", str(RACE)], capture_output=True, text=True)
    assert r2.returncode == 0 and "events by kind" in r2.stdout and "LOST EVENTS" in r2.stdout
    if s["verdicts"]["available"]:
        assert s["verdicts"]["counts"].get("race") == 1
        assert "race" in r2.stdout
