"""`vfstrace report`: suspect timelines, escaping, all three formats."""

import html.parser
import json

import pandas as pd

from conftest import FIXTURES, cli
from vfstrace import store
from vfstrace.report import correlated as report

ESCAPE = FIXTURES / "traces" / "escape.jsonl"
RACE = FIXTURES / "traces" / "race.jsonl"
EVIL = "<script>alert(1)</script>"


def fake_verdicts():
    return pd.DataFrame([
        dict(event_id=8, verdict="race", ts_ns=1000000007000, tid=100, pid=100, comm="<b>evil</b>",
             dentry=0xFFFF888000002000, name=EVIL, path="", evidence=[1, 5, 6, 7, 8], reason="pruned <mid-walk>"),
        dict(event_id=16, verdict="absent", ts_ns=1000500004000, tid=101, pid=101, comm="ls", dentry=0,
             name="", path="/data/nosuch", evidence=[], reason="plain miss"),
        dict(event_id=15, verdict="retried", ts_ns=1000500003000, tid=101, pid=101, comm="ls",
             dentry=0xFFFF888000003000, name="nosuch", path="", evidence=[13, 15], reason="re-check"),
    ])


def test_timeline_of_a_suspect():
    df = store.load(ESCAPE)
    rep = report.build_report(df, fake_verdicts())
    assert [s["verdict"] for s in rep["suspects"]] == ["race", "retried"]  # race first, absent is no suspect
    s = rep["suspects"][0]
    assert s["parent"] == "0xffff888000001000"
    ids = [e["event_id"] for e in s["timeline"]]
    # every event on the dentry and its parent (in the window), in time order
    assert ids == [1, 2, 3, 5, 6, 7, 8, 10]
    roles = {e["event_id"]: e["role"] for e in s["timeline"]}
    assert roles[8] == "judged" and roles[5] == roles[6] == roles[7] == roles[1] == "evidence" and roles[3] == ""
    rel = [e["rel_us"] for e in s["timeline"]]
    assert rel[0] == 0 and rel == sorted(rel) and rel[-1] == 9.0
    assert {e["cpu"] for e in s["timeline"]} == {0, 1}
    assert s["timeline"][6]["ret"] == "-ENOENT" and "SEQ_CHANGED" in s["timeline"][6]["flags"]


def test_html_escapes_names_paths_and_comms():
    rep = report.build_report(store.load(ESCAPE), fake_verdicts())
    out = report.render_html(rep)
    assert "<script" not in out.lower()
    assert "<b>evil" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;b&gt;evil&lt;/b&gt;" in out
    assert "&lt;mid-walk&gt;" in out
    assert "&amp;amp;" in out  # the literal "&amp;" in a path is escaped again
    assert out.count("<svg") == 1 + len(rep["suspects"])  # rate chart + one timeline per suspect
    # well-formed enough for a parser, and self-contained (no external resources)
    p = html.parser.HTMLParser()
    p.feed(out)
    assert "src=" not in out and "href=" not in out


def test_json_and_text_forms():
    rep = report.build_report(store.load(ESCAPE), fake_verdicts())
    back = json.loads(json.dumps(rep))
    assert back["suspects"][0]["timeline"][0]["event_id"] == 1
    text = report.render_text(rep)
    assert "#1 RACE: event 8" in text and "rests on events: 1, 5, 6, 7, 8" in text


def test_without_verdicts_says_so():
    df = store.load(RACE)
    rep = report.build_report(df, None, verdict_note="verdicts not computed (--no-verdicts)")
    assert rep["suspects"] == []
    assert "verdicts not computed" in report.render_text(rep)
    assert "verdicts not computed" in report.render_html(rep)


def test_cli_formats(tmp_path):
    for fmt in ("text", "html", "json"):
        out = tmp_path / f"r.{fmt}"
        r = cli("report", str(ESCAPE), "--format", fmt, "-o", str(out))
        assert r.returncode == 0, r.stderr
        body = out.read_text()
        assert body
        if fmt == "json":
            rep = json.loads(body)
            assert rep["suspects"][0]["verdict"] == "race"
            assert rep["suspects"][0]["name"] == EVIL
        if fmt == "html":
            assert "<script" not in body.lower()
