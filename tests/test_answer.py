"""The one-sentence answer that watch, analyze and report begin with."""

import json
import re
import shutil

import pytest

from conftest import FIXTURES, cli, need_tracing
from vfstrace.report.answer import answer, first_paths
from vfstrace.watch import render_summary

RACE = FIXTURES / "traces" / "race.jsonl"
TP = "(tracepoint tier: syscall-level evidence; `vfstrace doctor` says why no kprobes)"


def test_no_race_on_the_tracepoint_tier():
    # Every failed lookup was a plain miss or an unlink: nothing met a prune.
    s = answer({"absent": 3100, "explained": 60}, "tracepoint")
    assert s == f"No lookup/prune race seen: 3,160 failed lookups, none while their dentry was being pruned {TP}."


def test_races_counted_with_the_first_path_and_the_tier():
    s = answer({"race": 2, "absent": 10}, "kprobe", first={"race": "/srv/a/f"})
    assert s.startswith("2 lookup/prune races seen: lookups returned -ENOENT while their dentry was being pruned")
    assert "the first on '/srv/a/f'" in s and s.endswith("(kprobe tier: function-level evidence, each walk's "
                                                         "dentry and d_seq).")


def test_retried_walks_are_the_fix_not_a_race():
    # -ECHILD during a prune: the d_seq re-check caught it, the kernel retried in ref-walk.
    s = answer({"retried": 4, "absent": 96}, "fentry")
    assert s.startswith("No lookup/prune race seen: 100 failed lookups, none trusted a dentry being pruned")
    assert "and 4 that met a prune were sent back to ref-walk by the d_seq re-check, the fix at work (fentry tier" in s
    assert "and 1 that met a prune was sent back" in answer({"retried": 1}, "kprobe")


def test_transient_is_a_suspect_not_proof():
    s = answer({"transient": 1, "absent": 5}, "tracepoint", first={"transient": "/data/x"})
    assert s.startswith("1 possible lookup/prune race seen: a path syscall failed with -ENOENT")
    assert "(a suspect, not proof)" in s and "'/data/x'" in s and s.endswith(TP + ".")


def test_losses_make_it_uncertain_never_a_race():
    s = answer({"uncertain": 2, "absent": 8}, "kprobe", lost=40)
    assert s.startswith("No lookup/prune race proven, but 2 of 10 failed lookups are uncertain: kernel events were lost")
    assert "40 kernel events lost" in s


def test_nothing_to_judge_and_not_computed():
    assert answer({}, "tracepoint").startswith("No lookup/prune race seen: no failed lookups to judge")
    s = answer(None, "kprobe", events=17)
    assert s.startswith("No verdicts computed: 17 events recorded") and "--no-verdicts" in s


def test_a_hostile_path_reaches_the_sentence_escaped():
    s = answer({"race": 1}, "kprobe", first={"race": "evil\x1b[2J\nname"})
    assert "\x1b" not in s and "\n" not in s and "\\x1b[2J\\nname" in s


def test_first_paths_keep_the_first_of_each_verdict():
    rows = [{"verdict": "race", "path": "", "name": "f"}, {"verdict": "race", "path": "/b"},
            {"verdict": "transient", "path": "/t"}]
    assert first_paths(rows) == {"race": "f", "transient": "/t"}


def test_watch_summary_begins_with_it():
    s = {"answer": answer({"absent": 3}, "tracepoint"), "tier": "tracepoint", "stop_reason": "duration",
         "events": 10, "trace": None, "events_by_kind": {"path_syscall": 10}, "verdicts": {"absent": 3},
         "lost_per_cpu": {}, "kernel_counters": {}, "workload_exit": 0}
    assert render_summary(s).splitlines()[0] == s["answer"]


def test_analyze_and_report_begin_with_the_same_sentence():
    first = []
    for cmd in (["analyze"], ["report"]):
        r = cli(*cmd, str(RACE), timeout=120)
        assert r.returncode == 0, r.stderr
        first.append(r.stdout.splitlines()[0])
    assert first[0] == first[1]
    # race.jsonl: one walk returned -ENOENT on a dentry its prune was tearing down; 3 events lost on cpu1.
    assert first[0].startswith("1 lookup/prune race seen:") and "3 kernel events lost" in first[0]


@pytest.mark.live
def test_watch_summary_begins_with_the_answer_live(tmp_path):
    # A program of our own (a comm nothing else has) stats a name that does
    # not exist five times; nothing removes or prunes it, so every failure
    # is a plain miss and the answer is that no race was seen.
    need_tracing()
    exe = tmp_path / "vfsq-stat"
    shutil.copy("/usr/bin/stat", exe)
    missing = tmp_path / "no-such-file"
    loop = f"for i in 1 2 3 4 5; do {exe} {missing} 2>/dev/null; done"
    r = cli("watch", "--json", "-c", exe.name, "-d", "60", "--", "sh", "-c", loop, timeout=240, env={"LC_ALL": "C"})
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["type"] == "summary" and summary["answer"].startswith("No lookup/prune race seen: ")
    judged = int(re.search(r"seen: ([\d,]+) failed lookups?", summary["answer"]).group(1).replace(",", ""))
    assert judged == sum(summary["verdicts"].values()) >= 5
    assert f"({summary['tier']} tier" in summary["answer"]
    r = cli("watch", "-c", exe.name, "-d", "60", "--", "sh", "-c", loop, timeout=240)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("No lookup/prune race seen: ")


def test_a_simulated_trace_names_the_view_it_emitted():
    from vfstrace.report.answer import tier_of

    meta = {"tier": "simulated", "workload": {"simulate": {"seed": 0, "view": "tracepoint"}}}
    assert tier_of(meta) == "simulated-tracepoint"
    assert "(simulated tracepoint view, syscall-level evidence" in answer({"absent": 1}, tier_of(meta))
    assert tier_of({"tier": "kprobe", "workload": "cp -a a b"}) == "kprobe"
