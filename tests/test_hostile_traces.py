"""Hostile trace files: every reading command refuses them with one line, or reads them right.

A trace is data from elsewhere. The cases here are built from what can go
wrong with a file someone else made or damaged: a FIFO or device where a
file belongs (must not hang), metadata of the wrong JSON types, nesting and
integers past what Python and numpy handle, a part from another trace under
a listed name, foreign or truncated Parquet files, bytes flipped anywhere in
a part, and fuzzed JSON Lines. For each input every reading command
(analyze, report, export, convert, selftest --from-trace) runs in-process
under a timeout, and the outcome must be one of:

* exit 3 with exactly one line on stderr, ``vfstrace: error: ...``;
* success (selftest: its verdict exit codes 0/1/2), with no traceback;

never a traceback, an exception escaping ``main``, or a hang. A byte flip in
a part must either be refused or load exactly the original events (the
Parquet page checksums make a changed ts_ns or comm an error).

``bench/hostile.py`` runs the large version (86 directory corruptions and
2,200 fuzzed JSON Lines inputs) and prints the counts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfstrace import store
from vfstrace.cli import main
from vfstrace.errors import TraceFormatError
from vfstrace.events import COLUMNS, NUMPY_DTYPES, STRING_COLUMNS

RACE = FIXTURES / "traces" / "race.jsonl"
TIMEOUT_S = 20
PART_EVENTS = 6  # the base trace's 17 events in three parts
COMMANDS = ("analyze", "report", "export", "convert", "selftest")
SELFTEST_VERDICT_EXITS = (0, 1, 2)  # PASS, FAIL, INCONCLUSIVE


class Hang(Exception):
    pass


@dataclass
class Outcome:
    command: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    traceback: str | None = None  # set when an exception escaped main()
    hang: bool = False

    def problem(self) -> str | None:
        """None if this outcome is acceptable, else what is wrong with it."""
        if self.hang:
            return "hang"
        if self.traceback:
            return "traceback: " + self.traceback.strip().splitlines()[-1]
        if "Traceback (most recent call last)" in self.stdout + self.stderr:
            return "traceback text in output"
        if self.exit_code == 3:
            lines = self.stderr.strip().splitlines()
            if len(lines) != 1 or not lines[0].startswith("vfstrace: error: "):
                return f"exit 3 without exactly one error line: {self.stderr!r}"
            return None
        ok = SELFTEST_VERDICT_EXITS if self.command == "selftest" else (0,)
        if self.exit_code not in ok:
            return f"exit {self.exit_code}: {self.stderr.strip()[:200]!r}"
        if "vfstrace: error" in self.stderr:
            return f"error line with exit {self.exit_code}"
        return None


def _argv(command: str, trace: Path, out_dir: Path) -> list[str]:
    if command == "analyze":
        return ["analyze", str(trace)]
    if command == "report":
        return ["report", str(trace)]
    if command == "export":
        return ["export", "--perfetto", str(trace), "-o", str(out_dir / "export.json")]
    if command == "convert":
        dst = out_dir / ("converted.jsonl" if trace.is_dir() else "converted.vft")
        return ["convert", "-f", str(trace), str(dst)]
    return ["selftest", "--from-trace", str(trace)]


def _alarm(signum, frame):
    raise Hang()


def run_command(command: str, trace: Path, out_dir: Path, timeout: float = TIMEOUT_S,
                argv: list[str] | None = None) -> Outcome:
    """Run one vfstrace command in-process, as the CLI would, with stdout and
    stderr encoded strictly as UTF-8 (a name a terminal could not take must
    fail here too) and a timer that turns a blocked read into a Hang.
    ``argv`` replaces the command's usual arguments (_argv())."""
    out_dir.mkdir(parents=True, exist_ok=True)
    res = Outcome(command)
    bout, berr = io.BytesIO(), io.BytesIO()
    tout = io.TextIOWrapper(bout, encoding="utf-8", errors="strict", write_through=True)
    terr = io.TextIOWrapper(berr, encoding="utf-8", errors="strict", write_through=True)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(tout), contextlib.redirect_stderr(terr):
            main(_argv(command, trace, out_dir) if argv is None else argv)
    except SystemExit as e:
        res.exit_code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Hang:
        res.hang = True
    except BaseException:  # noqa: BLE001 (anything escaping main() is what this test looks for)
        res.traceback = traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    res.stdout = bout.getvalue().decode("utf-8", "replace")
    res.stderr = berr.getvalue().decode("utf-8", "replace")
    return res


# --------------------------------------------------------------------------
# The base trace and its corruptions


def base_frame():
    df = store.load(RACE)
    df.attrs = {}
    return df


def write_base(path: Path, df=None, id_offset: int = 0) -> Path:
    """The race fixture as a three-part trace directory, written by TraceWriter (page checksums on)."""
    df = base_frame() if df is None else df
    df = df.copy()
    df["event_id"] = df["event_id"] + np.uint64(id_offset)
    with store.TraceWriter(path, meta={"tier": "kprobe", "probes": ["walk_component"]},
                           chunk_events=PART_EVENTS, flush_seconds=1e9) as w:
        for i in range(0, len(df), PART_EVENTS):
            w.write(df.iloc[i:i + PART_EVENTS])
    return path


def _meta(d: Path) -> dict:
    return json.loads((d / store.META_FILE).read_text())


def _set_meta(d: Path, m) -> None:
    (d / store.META_FILE).write_text(json.dumps(m))


def _edit_meta(fn):
    def mutate(d: Path, work: Path):
        m = _meta(d)
        fn(m)
        _set_meta(d, m)
    return mutate


def _raw_meta(text: str | bytes):
    def mutate(d: Path, work: Path):
        p = d / store.META_FILE
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return mutate


def _replace_with_fifo(name: str):
    def mutate(d: Path, work: Path):
        (d / name).unlink()
        os.mkfifo(d / name)
    return mutate


def _replace_with_dir(name: str):
    def mutate(d: Path, work: Path):
        (d / name).unlink()
        (d / name).mkdir()
    return mutate


def _replace_with_link(name: str, target: str):
    def mutate(d: Path, work: Path):
        (d / name).unlink()
        (d / name).symlink_to(target)
    return mutate


def _truncate(name: str, frac: float):
    def mutate(d: Path, work: Path):
        p = d / name
        b = p.read_bytes()
        p.write_bytes(b[: int(len(b) * frac)])
    return mutate


def _foreign_parquet(name: str, *, schema_meta: dict | None = None, same_columns: bool = False):
    def mutate(d: Path, work: Path):
        p = d / name
        if same_columns:
            t = pq.read_table(p)
            t = t.replace_schema_metadata(schema_meta)
        else:
            t = pa.table({"x": [1, 2, 3], "comm": ["a", "b", "c"]})
            if schema_meta:
                t = t.replace_schema_metadata(schema_meta)
        pq.write_table(t, p)
    return mutate


def _null_column(name: str, column: str):
    """``column`` of part ``name`` all null (the rest of the part as TraceWriter wrote it)."""
    def mutate(d: Path, work: Path):
        p = d / name
        t = pq.read_table(p)
        i = t.schema.get_field_index(column)
        t = t.set_column(i, t.schema.field(i), pa.nulls(t.num_rows, t.schema.field(i).type))
        pq.write_table(t, p, write_page_checksum=True)
    return mutate


def _part_of_another_trace(name: str):
    def mutate(d: Path, work: Path):
        other = write_base(work / "other.vft", id_offset=1000)
        shutil.copyfile(other / name, d / name)
    return mutate


def _swap_parts(a: str, b: str):
    def mutate(d: Path, work: Path):
        pa_, pb = d / a, d / b
        x, y = pa_.read_bytes(), pb.read_bytes()
        pa_.write_bytes(y)
        pb.write_bytes(x)
    return mutate


def _flip(name: str, seed: int):
    def mutate(d: Path, work: Path):
        p = d / name
        b = bytearray(p.read_bytes())
        r = random.Random(seed)
        i = r.randrange(len(b))
        b[i] ^= 1 << r.randrange(8)
        p.write_bytes(bytes(b))
    mutate.flip = True
    return mutate


def _deep(n: int):
    v: object = 0
    for _ in range(n):
        v = [v]
    return v


P0, P1, P2 = (f"part-{i:06d}.parquet" for i in range(3))
M = store.META_FILE
BIG = "9" * 5000      # more digits than Python converts
WIDE = "9" * 4000     # converts, but far past 64 bits
DEEP = "[" * 1000 + "]" * 1000


def _valid_meta_text() -> str:
    # What TraceWriter writes, for the raw-text corruptions that need a frame of valid JSON.
    return json.dumps({"schema_version": 1, "closed": True})


def corruptions(flips: int = 8) -> list[tuple[str, object]]:
    """(name, mutate(trace_dir, work_dir)) for every directory corruption; ``flips`` seeded byte flips."""
    c = [
        # _meta.json itself
        ("meta missing", lambda d, w: (d / M).unlink()),
        ("meta FIFO", _replace_with_fifo(M)),
        ("meta directory", _replace_with_dir(M)),
        ("meta -> /dev/zero", _replace_with_link(M, "/dev/zero")),
        ("meta -> /dev/null", _replace_with_link(M, "/dev/null")),
        ("meta dangling link", _replace_with_link(M, "/nonexistent/vfstrace")),
        ("meta empty", _raw_meta("")),
        ("meta truncated 1/2", _truncate(M, 0.5)),
        ("meta truncated 9/10", _truncate(M, 0.9)),
        ("meta not UTF-8", _raw_meta(b'{"schema_version": 1, "host": "\xff\xfe"}')),
        ("meta UTF-16", _raw_meta(_valid_meta_text().encode("utf-16"))),
        ("meta invalid JSON", _raw_meta("{schema_version: 1}")),
        ("meta a list", _raw_meta("[1, 2]")),
        ("meta a string", _raw_meta('"vfstrace"')),
        ("meta nested 1000 deep", _raw_meta(DEEP)),
        ("meta key nested 1000 deep", _raw_meta('{"schema_version": 1, "x": ' + DEEP + "}")),
        ("meta key nested 100 deep", _edit_meta(lambda m: m.update(workload=_deep(100)))),
        ("meta 5000-digit int", _raw_meta('{"schema_version": 1, "events": ' + BIG + "}")),
        ("meta 4000-digit int", _raw_meta('{"schema_version": 1, "x": ' + WIDE + "}")),
        ("meta NaN", _raw_meta('{"schema_version": 1, "lost_total": NaN}')),
        ("schema_version missing", _edit_meta(lambda m: m.pop("schema_version"))),
        ("schema_version string", _edit_meta(lambda m: m.update(schema_version="1"))),
        ("schema_version true", _edit_meta(lambda m: m.update(schema_version=True))),
        ("schema_version 2", _edit_meta(lambda m: m.update(schema_version=2))),
        ("schema_version list", _edit_meta(lambda m: m.update(schema_version=[1]))),
        ("notes int", _edit_meta(lambda m: m.update(notes=5))),
        ("notes string", _edit_meta(lambda m: m.update(notes="x"))),
        ("notes list of ints", _edit_meta(lambda m: m.update(notes=[1, 2]))),
        ("parts object", _edit_meta(lambda m: m.update(parts={"file": P0}))),
        ("parts list of ints", _edit_meta(lambda m: m.update(parts=[1]))),
        ("parts[].file list", _edit_meta(lambda m: m["parts"][0].update(file=[]))),
        ("parts[].file int", _edit_meta(lambda m: m["parts"][0].update(file=5))),
        ("parts[].file path escape", _edit_meta(lambda m: m["parts"][0].update(file="../../etc/passwd"))),
        ("parts[].rows string", _edit_meta(lambda m: m["parts"][0].update(rows="6"))),
        ("parts[].rows negative", _edit_meta(lambda m: m["parts"][0].update(rows=-1))),
        ("parts[].rows wrong", _edit_meta(lambda m: m["parts"][1].update(rows=5))),
        ("parts[].first_event_id 2^64", _edit_meta(lambda m: m["parts"][0].update(first_event_id=2**64))),
        ("parts[].last_event_id 2^70", _edit_meta(lambda m: m["parts"][2].update(last_event_id=2**70))),
        ("parts[].first_event_id wrong", _edit_meta(lambda m: m["parts"][1].update(first_event_id=1))),
        ("parts[].last_event_id wrong", _edit_meta(lambda m: m["parts"][1].update(last_event_id=99))),
        ("lost_per_cpu list", _edit_meta(lambda m: m.update(lost_per_cpu=[1]))),
        ("lost_per_cpu bad cpu", _edit_meta(lambda m: m.update(lost_per_cpu={"x": 1}))),
        ("lost_per_cpu negative", _edit_meta(lambda m: m.update(lost_per_cpu={"0": -1}))),
        ("lost_per_cpu 2^64", _edit_meta(lambda m: m.update(lost_per_cpu={"0": 2**64}))),
        ("lost_per_cpu cpu 2^70", _edit_meta(lambda m: m.update(lost_per_cpu={str(2**70): 1}))),
        ("lost_per_cpu string count", _edit_meta(lambda m: m.update(lost_per_cpu={"0": "5"}))),
        ("lost_total string", _edit_meta(lambda m: m.update(lost_total="a"))),
        ("lost_total 2^64", _edit_meta(lambda m: m.update(lost_total=2**64))),
        ("closed string", _edit_meta(lambda m: m.update(closed="yes"))),
        ("events negative", _edit_meta(lambda m: m.update(events=-1))),
        ("probes ints", _edit_meta(lambda m: m.update(probes=[1, 2]))),
        ("tier int", _edit_meta(lambda m: m.update(tier=5))),
        ("kernel_release list", _edit_meta(lambda m: m.update(kernel_release=[]))),
        ("host object", _edit_meta(lambda m: m.update(host={}))),
        ("start_time int", _edit_meta(lambda m: m.update(start_time=5))),
        ("start_monotonic_ns 2^64", _edit_meta(lambda m: m.update(start_monotonic_ns=2**64))),
        ("kernel_counters list", _edit_meta(lambda m: m.update(kernel_counters=[1]))),
        ("kernel_counters strings", _edit_meta(lambda m: m.update(kernel_counters={"lookup": "x"}))),
        ("selftest phases int", _edit_meta(lambda m: m.update(selftest={"phases": 5}))),
        ("selftest phase without times", _edit_meta(lambda m: m.update(selftest={"phases": [{"name": "x"}]}))),
        ("selftest widen without site", _edit_meta(lambda m: m.update(selftest={"phases": [
            {"name": "widened", "start_ns": 0, "end_ns": 2**63, "widen": {"delayed": 1}}]}))),
        ("control characters in host", _edit_meta(lambda m: m.update(host="\x1b]0;owned\x07\n\u202e"))),
        ("lone surrogate in host", _edit_meta(lambda m: m.update(host="\udc80"))),
        # parts
        ("part FIFO", _replace_with_fifo(P1)),
        ("part directory", _replace_with_dir(P1)),
        ("part -> /dev/zero", _replace_with_link(P1, "/dev/zero")),
        ("part dangling link", _replace_with_link(P1, "/nonexistent/vfstrace")),
        ("part empty", _truncate(P1, 0.0)),
        ("part truncated 1/2", _truncate(P1, 0.5)),
        ("part truncated to 99%", _truncate(P1, 0.99)),
        ("part foreign Parquet", _foreign_parquet(P1)),
        ("part foreign Parquet with vfstrace version", _foreign_parquet(P1, schema_meta={b"vfstrace.schema_version": b"1"})),
        ("part without vfstrace version", _foreign_parquet(P1, same_columns=True, schema_meta={})),
        ("part of schema version 2", _foreign_parquet(P1, same_columns=True,
                                                      schema_meta={b"vfstrace.schema_version": b"2"})),
        ("part of another trace", _part_of_another_trace(P1)),
        ("part ts_ns all null", _null_column(P1, "ts_ns")),
        ("part name all null", _null_column(P1, "name")),
        ("part tid all null", _null_column(P1, "tid")),
        ("parts swapped", _swap_parts(P0, P2)),
        ("listed part missing", lambda d, w: (d / P2).unlink()),
        ("part not in the listing", _edit_meta(lambda m: m["parts"].pop())),
        ("half-written .tmp left", lambda d, w: (d / ".part-000003.parquet.tmp").write_bytes(b"PAR1")),
        ("FIFO as a .tmp", lambda d, w: os.mkfifo(d / ".part-000003.parquet.tmp")),
    ]
    for i in range(flips):
        c.append((f"byte flip #{i} in {(P0, P1, P2)[i % 3]}", _flip((P0, P1, P2)[i % 3], seed=i)))
    return c


def make_case(base: Path, work: Path, mutate) -> Path:
    d = work / "t.vft"
    shutil.copytree(base, d, symlinks=True)
    mutate(d, work)
    return d


def check_case(name: str, mutate, base: Path, work: Path, commands=COMMANDS) -> list[str]:
    """Every problem the case shows (empty when each command behaved)."""
    d = make_case(base, work, mutate)
    problems = []
    for cmd in commands:
        o = run_command(cmd, d, work / "out")
        p = o.problem()
        if p:
            problems.append(f"{name} / {cmd}: {p}")
    if getattr(mutate, "flip", False):
        try:
            got = store.load(d)
        except TraceFormatError:
            pass
        else:
            got.attrs = {}
            if not got.equals(base_frame()):
                problems.append(f"{name}: loaded without error but the events changed (silent corruption)")
    return problems


@pytest.fixture(scope="module")
def base_trace(tmp_path_factory):
    return write_base(tmp_path_factory.mktemp("base") / "base.vft")


def test_base_trace_reads_cleanly(base_trace, tmp_path):
    # The corruptions mean something only if the untouched trace passes every command.
    assert base_frame().equals(store.load(base_trace).drop(columns=[]).pipe(lambda df: df))
    for cmd in COMMANDS:
        o = run_command(cmd, base_trace, tmp_path / "out")
        assert o.problem() is None, (cmd, o.problem(), o.stderr)
        if cmd != "selftest":
            assert o.exit_code == 0


CASES = corruptions()


@pytest.mark.parametrize("name,mutate", CASES, ids=[n for n, _ in CASES])
def test_corrupt_trace_directory(name, mutate, base_trace, tmp_path):
    assert check_case(name, mutate, base_trace, tmp_path) == []


@pytest.mark.parametrize("name", ["meta FIFO", "part FIFO", "part foreign Parquet", "part of another trace",
                                  "parts[].file list", "meta nested 1000 deep", "parts[].first_event_id 2^64",
                                  "listed part missing", "parts swapped", "part ts_ns all null",
                                  "part name all null"])
def test_refused_with_exit_3(name, base_trace, tmp_path):
    # These damage what the events are: refusing them is the only right answer.
    d = make_case(base_trace, tmp_path, dict(CASES)[name])
    for cmd in COMMANDS:
        o = run_command(cmd, d, tmp_path / "out")
        assert o.exit_code == 3 and o.problem() is None, (cmd, o.exit_code, o.stderr)


def flip_sweep(d: Path, part: str, step: int = 1) -> tuple[int, int, list[int]]:
    """Flip one bit at every ``step``-th byte of ``part`` (bit i % 8 of byte i), loading the trace
    after each: (flips, refused, offsets whose flip loaded changed events)."""
    orig = base_frame()
    p = d / part
    good = p.read_bytes()
    refused, silent = 0, []
    for i in range(0, len(good), step):
        b = bytearray(good)
        b[i] ^= 1 << (i % 8)
        p.write_bytes(bytes(b))
        try:
            got = store.load(d)
        except TraceFormatError:
            refused += 1
            continue
        got.attrs = {}
        if not got.equals(orig):
            silent.append(i)
    p.write_bytes(good)
    return len(range(0, len(good), step)), refused, silent


def test_every_flip_of_one_part_is_refused_or_harmless(base_trace, tmp_path):
    """A bit flip at every 7th byte of a part: each load fails with TraceFormatError or equals the original."""
    n, refused, silent = flip_sweep(make_case(base_trace, tmp_path, lambda d, w: None), P1, step=7)
    print(f"{P1}: {n} flips: {refused} refused, {n - refused - len(silent)} harmless, {len(silent)} silent")
    assert silent == [] and refused > 0


def test_checksums_written_and_checked(base_trace, tmp_path):
    # A flip inside a data page, past what decompression would notice, is caught only by the page CRC.
    md = pq.ParquetFile(base_trace / P0).metadata
    assert md.num_rows == PART_EVENTS
    d = make_case(base_trace, tmp_path, lambda d, w: None)
    t = pq.read_table(d / P0)
    # Rewrite a part uncompressed (so a flipped byte is a changed value, not a zstd error) with checksums.
    plain = tmp_path / "plain.parquet"
    pq.write_table(t, plain, compression="none", write_page_checksum=True)
    raw = bytearray(plain.read_bytes())
    needle = b"kswapd0"
    at = raw.find(needle)
    assert at > 0
    raw[at] ^= 0x01  # "kswapd0" -> "jswapd0"
    (d / P0).unlink()
    (d / P2).unlink()
    (d / P1).unlink()
    plain_flipped = d / P0
    plain_flipped.write_bytes(bytes(raw))
    m = _meta(d)
    m["parts"] = [m["parts"][0]]
    _set_meta(d, m)
    with pytest.raises(TraceFormatError):
        store.load(d)


# --------------------------------------------------------------------------
# JSON Lines, fuzzed

META_LINE = json.dumps({"vfstrace_meta": {"schema_version": 1, "tier": "kprobe", "closed": True}})
GOOD_EVENTS = [json.loads(x) for x in RACE.read_text().splitlines()[1:] if x.strip()]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=8,
)
hostile_ints = st.sampled_from([-1, 2**63, 2**64 - 1, 2**64, 2**70, -(2**63) - 1, 10**30])
hostile_text = st.sampled_from(["\x1b]0;owned\x07", "a\nb", "\u202eexe.txt", "\x00", "\x7f\x9b",
                                "E" * 300, "-ENOENT", "0xffff", "rcu|negative", ""])
COLUMN_NAMES = sorted({k for e in GOOD_EVENTS for k in e} | {"ino", "seq", "seq2", "op", "path", "dentry"})


def _bounds(col: str) -> tuple[int, int]:
    info = np.iinfo(NUMPY_DTYPES[col])
    return int(info.min), int(info.max)


@st.composite
def typed_value(draw, col: str):
    """A value of the right JSON type for ``col`` that is still hostile: edge integers, names a terminal acts on."""
    if col in STRING_COLUMNS:
        return draw(st.one_of(hostile_text, st.text(max_size=20)))
    lo, hi = _bounds(col)
    return draw(st.one_of(st.sampled_from([lo, hi, 0, 1, hi // 2]), st.integers(lo, hi)))


@st.composite
def event_line(draw) -> bytes:
    how = draw(st.integers(0, 9))
    if how == 0:
        return draw(st.binary(max_size=40))
    if how == 1:
        return b'{"name": "' + draw(st.binary(min_size=1, max_size=8)) + b'"}'
    if how == 2:
        depth = draw(st.integers(1, 3000))
        return ("[" * depth + "]" * depth).encode()
    if how == 3:
        return ('{"ts_ns": ' + "7" * draw(st.integers(1, 6000)) + "}").encode()
    ev = dict(draw(st.sampled_from(GOOD_EVENTS)))
    if how <= 6:
        del ev["event_id"]  # numbered by the loader, after the ids given: no duplicate to refuse
    for _ in range(draw(st.integers(0, 3))):
        if how <= 6:  # well-typed but extreme: these must load and go through every command
            col = draw(st.sampled_from([c for c in COLUMNS if c != "event_id"]))
            ev[col] = draw(typed_value(col))
            continue
        col = draw(st.sampled_from(COLUMN_NAMES + ["bogus"]))
        ev[col] = draw(st.one_of(json_values, hostile_ints, hostile_text, st.just("\udc80")))
    return json.dumps(ev, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def jsonl_input(draw) -> bytes:
    first = draw(st.integers(0, 9))
    if first == 0:
        head = draw(event_line())
    elif first == 1:  # well-formed metadata whose text a terminal would act on
        meta = {"schema_version": 1, "tier": draw(hostile_text), "host": draw(hostile_text),
                "kernel_release": draw(st.text(max_size=10)), "notes": [draw(hostile_text)]}
        head = json.dumps({"vfstrace_meta": meta}).encode()
    else:
        head = META_LINE.encode()
    rest = draw(st.lists(event_line(), max_size=6))
    if draw(st.booleans()):
        rest += [json.dumps(e).encode() for e in GOOD_EVENTS[: draw(st.integers(0, len(GOOD_EVENTS)))]]
    if draw(st.booleans()):
        draw(st.randoms()).shuffle(rest)
    return b"\n".join([head] + rest) + b"\n"


def check_jsonl(data: bytes, work: Path, commands=COMMANDS) -> list[str]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    p = work / "fuzz.jsonl"
    p.write_bytes(data)
    problems = []
    for cmd in commands:
        o = run_command(cmd, p, work / "out")
        if o.problem():
            problems.append(f"{cmd}: {o.problem()}")
    return problems


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=jsonl_input())
def test_fuzzed_jsonl(data, tmp_path_factory):
    work = tmp_path_factory.getbasetemp() / "fuzz-jsonl"
    assert check_jsonl(data, work) == [], data[:300]


def test_non_utf8_name_is_a_format_error_with_its_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(META_LINE.encode() + b"\n" + json.dumps(GOOD_EVENTS[0]).encode() + b"\n"
                  + b'{"event_id": 2, "kind": "walk_enter", "name": "caf\xe9"}\n')
    for cmd in COMMANDS:
        o = run_command(cmd, p, tmp_path / "out")
        assert o.exit_code == 3 and o.problem() is None, (cmd, o.stderr)
        assert f"{p}:3: corrupt or truncated line: not UTF-8" in o.stderr


def test_lone_surrogate_escape_is_a_format_error(tmp_path):
    p = tmp_path / "sur.jsonl"
    p.write_text(META_LINE + "\n" + '{"event_id": 1, "kind": "walk_enter", "name": "\\udc80"}\n')
    o = run_command("analyze", p, tmp_path / "out")
    assert o.exit_code == 3 and ":2: name holds a lone surrogate" in o.stderr


def test_fifo_named_as_a_jsonl_trace_is_refused_at_once(tmp_path):
    p = tmp_path / "pipe.jsonl"
    os.mkfifo(p)
    o = run_command("analyze", p, tmp_path / "out", timeout=5)
    assert not o.hang and o.exit_code == 3 and "FIFO" in o.stderr


# --------------------------------------------------------------------------
# What the hostile-trace runs of issue #29 showed, each from its input

EVERY_OUTPUT = [["analyze"], ["analyze", "--json"], ["report"], ["report", "--format", "html"],
                ["report", "--format", "json"], ["export", "--perfetto"], ["convert", "-f"],
                ["selftest", "--from-trace"]]


def run_argv(argv: list[str], trace: Path, out_dir: Path) -> Outcome:
    """run_command() for one of EVERY_OUTPUT (an output file named where the command takes one)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = list(argv) + [str(trace)]
    if argv[0] == "export":
        args += ["-o", str(out_dir / "export.json")]
    elif argv[0] == "convert":
        args.append(str(out_dir / ("c.jsonl" if trace.is_dir() else "c.vft")))
    elif "--format" in argv:
        args += ["-o", str(out_dir / "report.out")]
    return run_command(argv[0], trace, out_dir, argv=args)


@pytest.mark.parametrize("column", ["ts_ns", "name"])
def test_an_all_null_column_is_refused_by_every_output(column, base_trace, tmp_path):
    # Was a ValueError (NaN to integer) in the part-by-part correlator, and a
    # convert/export that wrote ts_ns = 2^63 and blank names with exit 0.
    d = make_case(base_trace, tmp_path, _null_column(P1, column))
    for argv in EVERY_OUTPUT:
        o = run_argv(argv, d, tmp_path / "out")
        assert o.exit_code == 3 and o.problem() is None, (argv, o.exit_code, o.stderr)
        assert f"{P1}: column {column} holds {PART_EVENTS} null value(s)" in o.stderr, o.stderr
    assert not (tmp_path / "out" / "c.jsonl").exists() and not (tmp_path / "out" / "export.json").exists()


def _jsonl(tmp_path: Path, *events, head: bytes = META_LINE.encode()) -> Path:
    p = tmp_path / "t.jsonl"
    p.write_bytes(b"\n".join([head] + [e if isinstance(e, bytes) else json.dumps(e).encode() for e in events])
                  + b"\n")
    return p


def _refused_everywhere(p: Path, tmp_path: Path, says: str) -> None:
    for cmd in COMMANDS:
        o = run_command(cmd, p, tmp_path / "out")
        assert o.exit_code == 3 and o.problem() is None, (cmd, o.exit_code, o.stderr)
        assert says in o.stderr, (cmd, o.stderr)


def test_the_largest_id_next_to_an_event_without_one_is_refused(tmp_path):
    # Was an OverflowError: the event without an id numbered 2^64.
    first, second = dict(GOOD_EVENTS[0]), dict(GOOD_EVENTS[1])
    first["event_id"] = 2**64 - 1
    del second["event_id"]
    _refused_everywhere(_jsonl(tmp_path, first, second), tmp_path, "no ids left after the largest given")


def test_ids_up_to_the_largest_still_number_the_events_without_one(tmp_path):
    first, second = dict(GOOD_EVENTS[0]), dict(GOOD_EVENTS[1])
    first["event_id"] = 2**64 - 2
    del second["event_id"]
    assert store.load(_jsonl(tmp_path, first, second))["event_id"].tolist() == [2**64 - 2, 2**64 - 1]


@pytest.mark.parametrize("text", ["\u0663", "1_000", "0o17", "0b1", " 12 ", "12 ", "+12", "１２", "1e3", ""])
def test_an_integer_is_a_json_number_or_decimal_text(text, tmp_path):
    # int() takes all of these; another reader would not, or would read another number.
    ev = dict(GOOD_EVENTS[0], ino=text)
    _refused_everywhere(_jsonl(tmp_path, ev), tmp_path, f"{tmp_path / 't.jsonl'}:2: bad value for ino")


def test_null_is_no_value(tmp_path):
    # It used to be read as 0 (or "" for a name): a column holds a value or is left out.
    for col in ("ino", "name"):
        _refused_everywhere(_jsonl(tmp_path, dict(GOOD_EVENTS[0], **{col: None})), tmp_path,
                            f"t.jsonl:2: {col} is null")


def test_integers_as_numbers_and_as_decimal_or_hex_text_read_alike(tmp_path):
    evs = [dict(GOOD_EVENTS[0], ino=v) for v in (12, 12.0, "12", "0xc", "-0", "012")]
    got = store.load(_jsonl(tmp_path, *[{k: v for k, v in e.items() if k != "event_id"} for e in evs]))
    assert got["ino"].tolist() == [12, 12, 12, 12, 0, 12]


def test_a_byte_order_mark_before_line_1_is_read_past(tmp_path):
    plain = store.load(RACE)
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + RACE.read_bytes())
    got = store.load(p)
    assert got.drop(columns=[]).equals(plain)
    for cmd in COMMANDS:
        o = run_command(cmd, p, tmp_path / "out")
        assert o.problem() is None and o.exit_code in (0, *SELFTEST_VERDICT_EXITS), (cmd, o.stderr)


def test_unknown_keys_are_ignored_with_one_note(tmp_path):
    # A newer writer's column: read what is known, say what was not (the schema version is for breaking changes).
    lines = RACE.read_text().splitlines()
    evs = [dict(json.loads(x), extra=i, **({"more": "x"} if i % 2 else {})) for i, x in enumerate(lines[1:])]
    p = _jsonl(tmp_path, *evs, head=lines[0].encode())
    got = store.load(p)
    notes = got.attrs["meta"]["notes"]
    assert [n for n in notes if "unknown" in n] == [
        f"ignored unknown column(s) 'extra', 'more' in {len(evs)} lines: written by a newer vfstrace? "
        "(this one reads schema version 1)"]
    got.attrs = {}
    assert got.equals(base_frame())
    o = run_command("analyze", p, tmp_path / "out")
    assert o.exit_code == 0 and "ignored unknown column(s) 'extra'" in o.stdout


def test_a_json_error_says_where_once(tmp_path):
    # "Unterminated string starting at" + " at line 1 column 10" read "at at line 1 column".
    p = _jsonl(tmp_path, b'{"name": "f')
    o = run_command("analyze", p, tmp_path / "out")
    assert o.exit_code == 3 and o.problem() is None
    assert f"{p}:2: corrupt or truncated line: invalid JSON (Unterminated string starting at column 10)" in o.stderr
    assert "at at" not in o.stderr
    m = tmp_path / "m.vft"
    write_base(m)
    (m / M).write_text('{\n "schema_version": 1,\n "host": "x')
    o = run_command("analyze", m, tmp_path / "out")
    assert o.exit_code == 3 and "at at" not in o.stderr and "starting at line 3 column 10" in o.stderr, o.stderr
