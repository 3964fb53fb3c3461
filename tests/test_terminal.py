"""No raw control character from a trace reaches a terminal.

Traced names are chosen by whoever made the files: ESC sequences, an OSC
title sequence, a newline that would add a row to a table, a bidi override
that reverses what follows. Every human output (analyze, report text,
selftest, watch's verdict lines, doctor's symbol table, error lines) shows
them as visible escapes; JSON output keeps them exact.
"""

import contextlib
import io
import json
import re

from conftest import FIXTURES
from test_hostile_traces import run_command

from vfstrace.cli import main
from vfstrace.kernel import doctor, symbols
from vfstrace.report.terminal import term, term_tree
from vfstrace.watch import _fmt_verdict

ESCAPE = FIXTURES / "traces" / "escape.jsonl"
RACE = FIXTURES / "traces" / "race.jsonl"

OSC_TITLE = "\x1b]0;owned\x07"
CSI_CLEAR = "\x1b[2J\x1b[H"
EVIL_NAME = OSC_TITLE + "f\nrace 1 2 3 fake row\r" + CSI_CLEAR + "\u202etxt.exe"
EVIL_COMM = "c\x7fm\x9bm\tx"
EVIL_PATH = "/data/" + EVIL_NAME
# Everything a terminal acts on: C0 but the newline between lines, DEL, C1, bidi controls, separators.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def test_term_escapes_each_class_visibly():
    assert term("a\x1bb") == "a\\x1bb"
    assert term("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert term("\x00\x7f\x9b") == "\\x00\\x7f\\x9b"
    assert term("\u202eexe.txt") == "\\u202eexe.txt"
    assert term("\u2066x\u2069\u2028") == "\\u2066x\\u2069\\u2028"
    assert term(b"caf\xe9".decode("utf-8", "surrogateescape")) == "caf\\xe9"  # the byte that was not UTF-8
    assert term("\ud800") == "\\ud800"


def test_term_leaves_ordinary_text_alone_and_is_idempotent():
    for s in ("plain", "café", "日本語/ファイル", "a b\\c", "<b>&amp;</b>", "-ENOENT"):
        assert term(s) == s
    for s in (EVIL_NAME, EVIL_COMM, "\udc80\x1b"):
        assert term(term(s)) == term(s)
        assert not UNSAFE.search(term(s)) and "\n" not in term(s)


def test_term_tree_escapes_keys_and_nested_values():
    t = term_tree({"a\n": [EVIL_NAME, {"x": EVIL_COMM}], "n": 3})
    assert t == {"a\\n": [term(EVIL_NAME), {"x": term(EVIL_COMM)}], "n": 3}


def evil_trace(tmp_path):
    """The race fixture with its racing name, comm and path made hostile (the race verdict still holds)."""
    lines = RACE.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        e = json.loads(line)
        if e.get("name") == "f":
            e["name"] = EVIL_NAME
        if e.get("comm") == "statter":
            e["comm"] = EVIL_COMM
        if e.get("path") == "/data/f":
            e["path"] = EVIL_PATH
        out.append(json.dumps(e))
    p = tmp_path / "evil.jsonl"
    p.write_text("\n".join(out) + "\n")
    return p


def assert_terminal_safe(text: str, what: str):
    bad = UNSAFE.search(text)
    assert bad is None, f"{what}: raw {bad.group()!r} at {bad.start()}: {text[max(bad.start() - 40, 0):bad.start() + 20]!r}"
    # A newline inside a name must not start a line of its own (a fake table row).
    rows = [ln.lstrip() for ln in text.splitlines()]
    assert not any(r.startswith(("race 1 2 3 fake row", "fake row")) for r in rows), f"{what}: a name made a row"


def test_analyze_and_report_text_escape_trace_names(tmp_path):
    p = evil_trace(tmp_path)
    for cmd in ("analyze", "report"):
        o = run_command(cmd, p, tmp_path / "out")
        assert o.exit_code == 0, o.stderr
        assert_terminal_safe(o.stdout, cmd)
        assert_terminal_safe(o.stderr, cmd)
        assert "\\x1b]0;owned\\x07" in o.stdout, cmd  # the escaped form is shown, not dropped
    rep = run_command("report", p, tmp_path / "out").stdout
    assert term(EVIL_COMM) in rep and "\\u202etxt.exe" in rep


def cli(*argv) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(list(argv))
        except SystemExit as e:
            assert e.code in (0, None)
    return buf.getvalue()


def test_report_text_to_a_file_is_escaped_too(tmp_path):
    out = tmp_path / "r.txt"
    cli("report", str(evil_trace(tmp_path)), "-o", str(out))
    assert_terminal_safe(out.read_text(), "report -o")


def test_json_output_stays_exact(tmp_path):
    p = evil_trace(tmp_path)
    rep = json.loads(cli("report", str(p), "--format", "json"))
    assert rep["suspects"], "the race fixture's race must survive the renaming"
    assert EVIL_NAME in {e["name"] for x in rep["suspects"] for e in x["timeline"]}
    assert EVIL_COMM in {row["comm"] for row in rep["summary"]["enoent"]["top_comms"]}
    summary = json.loads(cli("analyze", str(p), "--json"))
    assert EVIL_PATH in {row["path"] for row in summary["enoent"]["top_paths"]}


def test_selftest_from_trace_escapes(tmp_path):
    p = evil_trace(tmp_path)
    o = run_command("selftest", p, tmp_path / "out")
    assert o.exit_code in (0, 1, 2), o.stderr
    assert_terminal_safe(o.stdout, "selftest")


def test_escape_fixture_in_every_human_output(tmp_path):
    # The HTML-hostile fixture holds no controls; its text must come through unchanged (term leaves it alone).
    for cmd in ("analyze", "report", "selftest"):
        o = run_command(cmd, ESCAPE, tmp_path / "out")
        assert_terminal_safe(o.stdout, cmd)
        assert "<b>evil</b>" in o.stdout or cmd == "selftest"


def test_watch_verdict_line_escapes():
    line = _fmt_verdict({"verdict": "race", "pid": 1, "tid": 1, "comm": EVIL_COMM, "path": EVIL_PATH,
                         "dentry": 0xFFFF888000002000, "reason": "pruned\x1b[31m"})
    assert_terminal_safe(line, "watch")
    assert "\n" not in line and "\\x1b]0;owned\\x07" in line and "\\x1b[31m" in line


def test_doctor_escapes_symbol_names():
    role = symbols.RoleResolution("walk", "walk_component\x1b[2J.isra.0", reason="clone\nfake row")
    rep = doctor.Report("6.1\x1b]0;x\x07", {"bpf": doctor.Check(True, "ok\x1b[1m")}, {"walk": role},
                        {"kprobe": doctor.Check(False, "no")}, None, notes=["n\x07"])
    text = doctor.render_text(rep)
    assert "walk_component\\x1b[2J.isra.0" in text and "clone\\nfake row" in text
    assert_terminal_safe(text, "doctor")


def test_error_line_escapes_what_it_quotes(tmp_path):
    p = tmp_path / ("t\x1b]0;x\x07.jsonl")
    p.write_text('{"vfstrace_meta": {"schema_version": 1}}\n{"name": 5}\n')
    o = run_command("analyze", p, tmp_path / "out")
    assert o.exit_code == 3
    assert_terminal_safe(o.stderr, "error line")
    assert len(o.stderr.strip().splitlines()) == 1
