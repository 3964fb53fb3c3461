"""Traces are private: they hold the path, name and command of every traced process.

Every file vfstrace writes from a trace (the trace directory, _meta.json,
parts, temporary files, JSON Lines, convert's output, HTML/text reports,
Perfetto exports) is 0600 and every directory 0700, whatever the umask;
``--shared`` widens a converted trace to its group (0640/0750), never to
everyone.
"""

import contextlib
import io
import os
import stat

import pytest
from conftest import FIXTURES

from vfstrace import store
from vfstrace.cli import main
from vfstrace.store.files import open_private

RACE = FIXTURES / "traces" / "race.jsonl"


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture(autouse=True)
def permissive_umask():
    # umask 0: a file created with the default 0666 would come out world-writable.
    old = os.umask(0)
    yield
    os.umask(old)


def run(*argv):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            main(list(argv))
        except SystemExit as e:
            assert e.code in (0, None), err.getvalue()


def test_trace_writer_dir_meta_and_parts_are_private(tmp_path):
    df = store.load(RACE)
    d = tmp_path / "t.vft"
    with store.TraceWriter(d, chunk_events=6, flush_seconds=1e9) as w:
        for i in range(0, len(df), 6):
            w.write(df.iloc[i:i + 6])
        # Mid-recording too, not only after close.
        assert mode(d) == 0o700 and mode(d / store.META_FILE) == 0o600
    files = sorted(d.iterdir())
    assert [f.name for f in files] == ["_meta.json", "part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}


def test_overwritten_trace_dir_is_made_private(tmp_path):
    d = tmp_path / "t.vft"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    store.save(store.load(RACE), d, overwrite=True)
    assert mode(d) == 0o700


def test_temporary_files_are_private_from_the_start(tmp_path):
    # A stale temporary file left world-readable is truncated and narrowed before anything is written.
    tmp = tmp_path / ".part-000000.parquet.tmp"
    tmp.write_text("old")
    os.chmod(tmp, 0o666)
    with open_private(tmp) as f:
        assert mode(tmp) == 0o600
        f.write(b"x")
    assert tmp.read_bytes() == b"x"


def test_temporary_name_never_follows_a_link(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    link = tmp_path / ".x.tmp"
    link.symlink_to(target)
    with pytest.raises(OSError):
        open_private(link)
    assert target.read_text() == "keep"


def test_jsonl_and_convert_outputs_are_private(tmp_path):
    store.save(store.load(RACE), tmp_path / "a.jsonl")
    assert mode(tmp_path / "a.jsonl") == 0o600
    run("convert", str(RACE), str(tmp_path / "b.vft"))
    assert mode(tmp_path / "b.vft") == 0o700
    assert {mode(p) for p in (tmp_path / "b.vft").iterdir()} == {0o600}
    run("convert", str(tmp_path / "b.vft"), str(tmp_path / "c.jsonl"))
    assert mode(tmp_path / "c.jsonl") == 0o600


def test_convert_shared_widens_to_the_group_only(tmp_path):
    run("convert", "--shared", str(RACE), str(tmp_path / "s.vft"))
    assert mode(tmp_path / "s.vft") == 0o750
    assert {mode(p) for p in (tmp_path / "s.vft").iterdir()} == {0o640}
    run("convert", "--shared", str(RACE), str(tmp_path / "s.jsonl"))
    assert mode(tmp_path / "s.jsonl") == 0o640


@pytest.mark.parametrize("fmt", ["html", "text", "json"])
def test_reports_are_private(tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    run("report", str(RACE), "--format", fmt, "-o", str(out))
    assert out.stat().st_size > 0 and mode(out) == 0o600


def test_report_over_an_existing_readable_file_narrows_it(tmp_path):
    out = tmp_path / "r.html"
    out.write_text("old")
    os.chmod(out, 0o644)
    run("report", str(RACE), "--format", "html", "-o", str(out))
    assert mode(out) == 0o600 and "vfstrace report" in out.read_text()


def test_perfetto_export_is_private(tmp_path):
    out = tmp_path / "p.json"
    run("export", "--perfetto", str(RACE), "-o", str(out))
    assert out.stat().st_size > 0 and mode(out) == 0o600


@pytest.mark.parametrize("shared,dmode,fmode", [(False, 0o700, 0o600), (True, 0o750, 0o640)])
def test_watch_and_record_sessions_write_private_traces(tmp_path, shared, dmode, fmode):
    # watch/record's Session with a fake tracer (tests/test_recorder.py): the modes of a live recording.
    import types

    from test_recorder import LossyTracer, _events

    from vfstrace.watch import Session

    out = tmp_path / "s.vft"
    sess = Session(output=str(out), duration=0.5, quiet_verdicts=True, shared=shared)
    sess.choice = types.SimpleNamespace(tier="fake", reason="test", headers=None, headers_match=None)
    sess.tracer = LossyTracer(_events())
    sess.run()
    assert mode(out) == dmode
    files = list(out.iterdir())
    assert any(f.name.startswith("part-") for f in files)
    assert {mode(f) for f in files} == {fmode}
