"""`vfstrace export --format perfetto`: Chrome trace-event JSON that Perfetto accepts."""

import json
from collections import defaultdict

import pandas as pd

from conftest import FIXTURES, cli
from vfstrace import store
from vfstrace.report import perfetto as export

RACE = FIXTURES / "traces" / "race.jsonl"


def check_well_formed(doc):
    assert isinstance(doc["traceEvents"], list) and doc["traceEvents"]
    depth = defaultdict(int)
    last_ts = defaultdict(float)
    for ev in doc["traceEvents"]:
        assert ev["ph"] in ("B", "E", "i", "M", "X"), ev
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int)
        if ev["ph"] == "M":
            continue
        assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0
        key = (ev["pid"], ev["tid"])
        if ev["ph"] in ("B", "E"):
            assert ev["ts"] >= last_ts[key]  # B/E must be in order per thread
            last_ts[key] = ev["ts"]
            depth[key] += 1 if ev["ph"] == "B" else -1
            assert depth[key] >= 0, ev
        if ev["ph"] == "i":
            assert ev["s"] in ("t", "p", "g") and ev["name"]
    assert all(d == 0 for d in depth.values()), depth


def test_race_fixture_exports(tmp_path):
    df = store.load(RACE)
    out = tmp_path / "p.json"
    n = export.write_perfetto(df, out)
    doc = json.loads(out.read_text())
    check_well_formed(doc)
    evs = doc["traceEvents"]
    assert len(evs) == n
    slices = [e for e in evs if e["ph"] == "B"]
    assert [e["name"] for e in slices] == ["walk f", "lookup f", "walk nosuch", "lookup nosuch"]
    inst = {e["args"]["event_id"]: e for e in evs if e["ph"] == "i" and "event_id" in e.get("args", {})}
    for eid, name in ((5, "prune f"), (6, "unhash f"), (7, "iput f"), (10, "d_free")):
        assert inst[eid]["name"] == name and inst[eid]["tid"] == 50
    assert inst[5]["ts"] == 4.0  # µs from the first event
    assert inst[5]["args"]["dentry"] == "0xffff888000002000"
    assert any(e["name"].startswith("LOST 3") for e in evs if e["ph"] == "i")
    names = {e["tid"]: e["args"]["name"] for e in evs if e["ph"] == "M"}
    assert names[100] == "statter [100]" and names[50] == "kswapd0 [50]"


def test_unmatched_enter_and_return_stay_balanced(tmp_path):
    df = store.load(RACE)
    # Drop the walk return of tid 100 and the lookup enter of tid 101, as lost events would.
    df = df[~df["event_id"].isin([8, 13])]
    out = tmp_path / "p.json"
    export.write_perfetto(df, out)
    doc = json.loads(out.read_text())
    check_well_formed(doc)
    assert any("no enter" in e["name"] for e in doc["traceEvents"] if e["ph"] == "i")


def test_verdicts_marked(tmp_path):
    df = store.load(RACE)
    v = pd.DataFrame([dict(event_id=8, verdict="race", ts_ns=1000000007000, tid=100, pid=100, comm="statter",
                           dentry=0xFFFF888000002000, name="f", path="", evidence=[5, 6, 7, 8], reason="r")])
    out = tmp_path / "p.json"
    export.write_perfetto(df, out, v)
    doc = json.loads(out.read_text())
    check_well_formed(doc)
    (mark,) = [e for e in doc["traceEvents"] if e.get("cat") == "verdict"]
    assert mark["name"] == "race: f" and mark["ts"] == 7.0 and mark["args"]["evidence"] == [5, 6, 7, 8]


def test_cli(tmp_path):
    # --format like report's; the first release's --perfetto flag still works and writes the same file.
    bodies = []
    for flag in (["--format", "perfetto"], ["--perfetto"]):
        out = tmp_path / "cli.json"
        r = cli("export", *flag, str(RACE), "-o", str(out))
        assert r.returncode == 0, r.stderr
        check_well_formed(json.loads(out.read_text()))
        bodies.append(out.read_text())
    assert bodies[0] == bodies[1]
    r = cli("export", "--format", "csv", str(RACE), "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "--format" in r.stderr and "Traceback" not in r.stderr


# Code points that drive a terminal though JSON lets them stand raw: C1 controls (U+009B is the one-byte CSI,
# U+0085 NEL), bidi overrides and isolates, the line and paragraph separators.
TERMINAL_DRIVING = ["\x9b31m", "\x80\x85\x9f", "\u202eexe.txt", "\u202a\u202b\u202c\u202d", "\u2066x\u2067\u2068\u2069",
                    "\u2028\u2029", "\x7f", "\u200e\u061c"]
DRIVING = set("\x7f\u061c\u200e\u2028\u2029") | {chr(c) for c in (*range(0x80, 0xA0), *range(0x202A, 0x202F),
                                                                  *range(0x2066, 0x206A))}


def test_written_json_escapes_what_drives_a_terminal(tmp_path):
    # `cat` of a converted trace or an export used to recolour the terminal or reverse a name.
    df = store.load(RACE)
    df["name"] = [TERMINAL_DRIVING[i % len(TERMINAL_DRIVING)] + n for i, n in enumerate(df["name"])]
    df["comm"] = df["comm"] + "\u202e"
    src = tmp_path / "t.vft"
    store.save(df, src)
    j, p = tmp_path / "t.jsonl", tmp_path / "p.json"
    for argv in (["convert", str(src), str(j)], ["export", "--perfetto", str(src), "-o", str(p)]):
        r = cli(*argv)
        assert r.returncode == 0, r.stderr
    for f in (j, p):
        text = f.read_text(encoding="utf-8")
        raw = sorted(c for c in set(text) if c in DRIVING or ord(c) < 0x20 and c != "\n")
        assert raw == [], (f.name, raw)
        assert "\\u009b31m" in text and "\\u202eexe.txt" in text
    back = store.load(j)
    assert back["name"].tolist() == df["name"].tolist() and back["comm"].tolist() == df["comm"].tolist()
    names = {e["name"] for e in json.loads(p.read_text())["traceEvents"] if e["ph"] == "B"}
    assert "walk \x9b31mf" in names
