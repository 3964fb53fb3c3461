#!/usr/bin/env python3
"""The hostile-trace suite at full size, and what its defences cost.

Runs every directory corruption of tests/test_hostile_traces.py (83 named
corruptions plus seeded byte flips: 89 by default), a bit flip at every
byte of one part, and N fuzzed JSON Lines inputs (2,200 by default)
through every reading command (analyze, report, export, convert,
selftest --from-trace) in-process, and prints how many ran, how many were
refused with exit 3, and the counts that must be zero: tracebacks, hangs,
bad exits, silent changes. Then it times writing and reading parts with and
without page checksums and full validation, side by side.

Files from other writers (a byte-order mark, unknown and reordered
columns, ids near 2^64, integer text other readers would not read alike,
null columns) go through every command too: those that must be read must
give the original events, those that must be refused must be refused by
every command (accepted: a silent change). And traces of 1,000 and 10,000
one-event parts whose stamps step back across a part boundary, past the
part-by-part correlator's bound and within it, are analysed beside the
same parts in order: the time per event must stay flat. Prints numbers;
asserts nothing.

    .venv/bin/python bench/hostile.py                       # 89 corruptions, 2,200 JSON Lines inputs
    .venv/bin/python bench/hostile.py --jsonl 200 --quick   # a few minutes less
    .venv/bin/python bench/hostile.py --disorder-only       # only the part-boundary disorder timings
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import test_hostile_traces as h
from conftest import write_parts
from hypothesis import HealthCheck, Phase, given, settings

from vfstrace import store
from vfstrace.correlate.parts import MAX_DISORDER_NS
from vfstrace.errors import TraceFormatError
from vfstrace.report import analyze
from vfstrace.workload.simulate import simulate


class Tally:
    def __init__(self):
        self.inputs = self.runs = self.refused = self.accepted = 0
        self.problems: collections.Counter = collections.Counter()
        self.examples: dict[str, str] = {}

    def add(self, label: str, outcomes: list[h.Outcome], silent: bool = False):
        self.inputs += 1
        for o in outcomes:
            self.runs += 1
            p = o.problem()
            if p:
                kind = "hang" if o.hang else ("traceback" if "traceback" in p else "bad exit")
                self.problems[kind] += 1
                self.examples.setdefault(p, label)
            elif o.exit_code == 3:
                self.refused += 1
            else:
                self.accepted += 1
        if silent:
            self.problems["silent change"] += 1
            self.examples.setdefault("silent change", label)

    def line(self, name: str) -> str:
        z = {k: self.problems.get(k, 0) for k in ("traceback", "hang", "bad exit", "silent change")}
        return (f"{name:<22} {self.inputs:>7,} {self.runs:>8,} {self.refused:>8,} {self.accepted:>8,} "
                + " ".join(f"{v:>10,}" for v in z.values()))


def run_dirs(work: Path, flips: int) -> Tally:
    base = h.write_base(work / "base.vft")
    t = Tally()
    for name, mutate in h.corruptions(flips=flips):
        cw = Path(tempfile.mkdtemp(dir=work))
        d = h.make_case(base, cw, mutate)
        outs = [h.run_command(cmd, d, cw / "out") for cmd in h.COMMANDS]
        silent = False
        if getattr(mutate, "flip", False):
            silent = _changed(d)
        t.add(name, outs, silent)
        shutil.rmtree(cw, ignore_errors=True)
    return t


def _changed(d: Path) -> bool:
    try:
        got = store.load(d)
    except TraceFormatError:
        return False
    got.attrs = {}
    return not got.equals(h.base_frame())


def run_sweep(work: Path) -> tuple[int, int, int]:
    """A bit flip at every byte of the middle part, loaded directly: (flips, refused, silent changes)."""
    d = h.make_case(h.write_base(work / "sweep-base.vft"), work / "sweep", lambda d, w: None)
    n, refused, silent = h.flip_sweep(d, h.P1)
    return n, refused, len(silent)


def run_jsonl(work: Path, n: int) -> Tally:
    t = Tally()

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=h.jsonl_input())
    def one(data):
        cw = work / "jsonl"
        shutil.rmtree(cw, ignore_errors=True)
        cw.mkdir(parents=True)
        p = cw / "fuzz.jsonl"
        p.write_bytes(data)
        t.add(repr(data[:120]), [h.run_command(cmd, p, cw / "out") for cmd in h.COMMANDS])

    one()
    return t


def _jsonl(work: Path, events: list[dict], head: bytes = h.META_LINE.encode(), bom: bool = False) -> Path:
    p = work / "t.jsonl"
    body = b"\n".join([head] + [json.dumps(e).encode() for e in events]) + b"\n"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body)
    return p


def _without_id(i: int) -> dict:
    return {k: v for k, v in h.GOOD_EVENTS[i].items() if k != "event_id"}


def foreign_inputs(base: Path):
    """(name, build(work) -> trace path, the events it must load as, or None: every command must refuse it)."""
    race = h.base_frame()

    def part_dir(fn):
        def build(work: Path) -> Path:
            d = h.make_case(base, work, lambda d, w: None)
            for p in sorted(d.glob("part-*.parquet")):
                pq.write_table(fn(pq.read_table(p)), p, write_page_checksum=True)
            return d
        return build

    near = race.iloc[:2].copy()
    near["event_id"] = np.array([2**64 - 2, 2**64 - 1], dtype=np.uint64)
    yield "BOM before line 1", lambda w: _jsonl(w, h.GOOD_EVENTS, bom=True), race
    yield ("unknown JSON Lines keys", lambda w: _jsonl(w, [dict(e, extra=1, newer={"x": [1]}) for e in h.GOOD_EVENTS]),
           race)
    yield "unknown part column", part_dir(lambda t: t.append_column("extra", pa.array([1] * t.num_rows))), race
    yield "part columns reordered", part_dir(lambda t: t.select(list(reversed(t.column_names)))), race
    yield ("id 2^64-2 next to one without", lambda w: _jsonl(w, [dict(h.GOOD_EVENTS[0], event_id=2**64 - 2),
                                                                 _without_id(1)]), near.reset_index(drop=True))
    yield ("id 2^64-1 next to one without", lambda w: _jsonl(w, [dict(h.GOOD_EVENTS[0], event_id=2**64 - 1),
                                                                 _without_id(1)]), None)
    yield "id 2^64", lambda w: _jsonl(w, [dict(h.GOOD_EVENTS[0], event_id=2**64)]), None
    for text in ("\u0663", "1_000", "0o17", "0b1", " 12 ", "+12", "1e3"):
        yield f"integer text {text!r}", lambda w, text=text: _jsonl(w, [dict(h.GOOD_EVENTS[0], ino=text)]), None
    for col in ("ino", "ts_ns", "name"):
        yield f"JSON Lines {col} null", lambda w, col=col: _jsonl(w, [dict(h.GOOD_EVENTS[0], **{col: None})]), None
    for col in ("ts_ns", "name", "event_id", "kind"):
        yield f"part {col} all null", lambda w, col=col: h.make_case(base, w, h._null_column(h.P1, col)), None


def run_foreign(work: Path) -> Tally:
    base = h.write_base(work / "foreign-base.vft")
    t = Tally()
    for name, build, want in foreign_inputs(base):
        cw = Path(tempfile.mkdtemp(dir=work))
        p = build(cw)
        outs = [h.run_command(cmd, p, cw / "out") for cmd in h.COMMANDS]
        if want is None:  # every command must refuse it: one that accepts it has read a changed event
            silent = any(o.exit_code != 3 and o.problem() is None for o in outs)
        else:
            try:
                got = store.load(p)
                got.attrs = {}
                silent = not got.equals(want)
            except TraceFormatError:
                silent = True  # refused what it must read: counted with the silent changes, shown below
        t.add(name, outs, silent)
        shutil.rmtree(cw, ignore_errors=True)
    return t


def _stepping_back(ev, back_ns: int):
    """``ev`` with its stamps stepping back ``back_ns`` once, a tenth of the way in."""
    ev = ev.copy()
    ts = ev["ts_ns"].to_numpy().astype(np.int64)
    if back_ns:
        ts[len(ts) // 10:] -= back_ns
    ev["ts_ns"] = (ts - min(0, int(ts.min()))).astype(np.uint64)
    return ev


def disorder(work: Path, sizes: list[int]) -> None:
    """analyze of one-event parts, in order and stepping back across a part boundary: µs per event."""
    ev, _ = simulate(3, duration_ns=200_000_000)
    cases = [("in order", 0), ("back 1000 s (past the bound)", 10**12),
             (f"back {MAX_DISORDER_NS // 2 / 1e6:g} ms (within it)", MAX_DISORDER_NS // 2)]
    print("\nanalyze of one-event parts whose stamps step back once across a part boundary (µs per event)")
    print(f"{'parts':>8} " + " ".join(f"{c:>32}" for c, _ in cases))
    for n in sizes:
        row = []
        for label, back in cases:
            d = work / f"disorder-{n}-{back}.vft"
            write_parts(d, _stepping_back(ev.iloc[:n], back), 1)
            t0 = time.perf_counter()
            s = analyze.analyze_parts(d)
            dt = time.perf_counter() - t0
            lost = ", ordering lost" if any("ordering lost" in x for x in s["notes"]) else ""
            row.append(f"{dt / n * 1e6:,.0f} ({dt:.1f} s{lost})")
            shutil.rmtree(d, ignore_errors=True)
        print(f"{n:>8,} " + " ".join(f"{c:>32}" for c in row), flush=True)


def cost(work: Path, events: int, reps: int) -> None:
    """Write and read one part of ``events`` rows with and without the defences, side by side."""
    rng = np.random.default_rng(1)
    df = h.base_frame().sample(events, replace=True, random_state=1).reset_index(drop=True)
    df["event_id"] = np.arange(1, events + 1, dtype=np.uint64)
    df["ts_ns"] = np.sort(rng.integers(1, 10**12, events)).astype(np.uint64)
    t = store.to_table(df).replace_schema_metadata({b"vfstrace.schema_version": b"1"})
    kw = {"compression": "zstd", "compression_level": 1, "row_group_size": events}
    plain, crc = work / "plain.parquet", work / "crc.parquet"

    def read_plain():  # the same in-memory read, without the regular-file check, CRCs and validation
        with open(plain, "rb") as f:
            buf = pa.py_buffer(f.read())
        pq.ParquetFile(pa.BufferReader(buf)).read(use_threads=False)

    def read_defended():
        buf = pa.py_buffer(store.files.read_regular(crc))
        tab = pq.ParquetFile(pa.BufferReader(buf), page_checksum_verification=True).read(use_threads=False)
        tab.validate(full=True)

    pq.write_table(t, plain, **kw)
    pq.write_table(t, crc, write_page_checksum=True, **kw)
    # Writes go to memory: the CPU cost of the checksums, not the disk's mood.
    fns = {"w_plain": lambda: pq.write_table(t, pa.BufferOutputStream(), **kw),
           "w_crc": lambda: pq.write_table(t, pa.BufferOutputStream(), write_page_checksum=True, **kw),
           "r_plain": read_plain, "r_crc": read_defended}
    best = {k: float("inf") for k in fns}
    order = list(fns)
    rnd = random.Random(1)
    for _ in range(reps):  # interleaved in a shuffled order, so a busy moment on a shared CPU hits both sides alike
        rnd.shuffle(order)
        for k in order:
            fn = fns[k]
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], (time.perf_counter() - t0) * 1e3)
    w_plain, w_crc, r_plain, r_crc = best["w_plain"], best["w_crc"], best["r_plain"], best["r_crc"]
    print(f"\ncost of the defences, one part of {events:,} events (best of {reps}, ms)")
    print(f"{'':34} {'plain':>10} {'defended':>10} {'ratio':>7}")
    print(f"{'write (zstd 1)':34} {w_plain:>10.2f} {w_crc:>10.2f} {w_crc / w_plain:>7.2f}  + page CRCs")
    print(f"{'read':34} {r_plain:>10.2f} {r_crc:>10.2f} {r_crc / r_plain:>7.2f}  + regular-file check, CRCs, full validation")
    print(f"{'file size (bytes)':34} {plain.stat().st_size:>10,} {crc.stat().st_size:>10,}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flips", type=int, default=6, help="seeded byte flips added to the 83 named corruptions")
    ap.add_argument("--jsonl", type=int, default=2200, help="fuzzed JSON Lines inputs")
    ap.add_argument("--cost-events", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="skip the every-byte sweep; a smaller cost run")
    ap.add_argument("--cost-only", action="store_true", help="only the cost of the defences")
    ap.add_argument("--disorder-parts", default="1000,10000", help="part counts of the disorder timings")
    ap.add_argument("--disorder-only", action="store_true", help="only the part-boundary disorder timings")
    a = ap.parse_args()
    sizes = [int(x) for x in a.disorder_parts.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="vfstrace-hostile-") as tmp:
        work = Path(tmp)
        if a.cost_only:
            cost(work, a.cost_events, 15)
            return
        if a.disorder_only:
            disorder(work, sizes)
            return
        t0 = time.monotonic()
        dirs = run_dirs(work, a.flips)
        t1 = time.monotonic()
        js = run_jsonl(work, a.jsonl)
        t2 = time.monotonic()
        foreign = run_foreign(work)
        t3 = time.monotonic()
        hdr = (f"{'suite':<22} {'inputs':>7} {'runs':>8} {'exit 3':>8} {'ok':>8} "
               f"{'tracebacks':>10} {'hangs':>10} {'bad exits':>10} {'silent':>10}")
        print(hdr)
        print(dirs.line("trace directories"))
        print(js.line("fuzzed JSON Lines"))
        print(foreign.line("other writers' files"))
        print(f"(commands per input: {', '.join(h.COMMANDS)}; {t1 - t0:.0f} s, {t2 - t1:.0f} s and {t3 - t2:.0f} s)")
        for p, label in list(dirs.examples.items()) + list(js.examples.items()) + list(foreign.examples.items()):
            print(f"  PROBLEM {p}  <- {label}")
        disorder(work, sizes)
        if not a.quick:
            n, refused, silent = run_sweep(work)
            print(f"\nbit flip at every byte of {h.P1}: {n:,} flips, {refused:,} refused, "
                  f"{n - refused - silent:,} loaded the original events, {silent:,} silent changes")
        cost(work, a.cost_events if not a.quick else 20_000, 5 if a.quick else 15)


if __name__ == "__main__":
    main()
