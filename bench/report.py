"""The HTML report on traces of different lengths: chart buckets, size, time; and with --parts, memory.

For each trace span, one simulated trace (vfstrace simulate, its clock
stretched to the span) is summarised and rendered; printed side by side:
the buckets of the 1-second rate table (analyze's text and --json) and of
the HTML chart (round widths, about 60 buckets), the time to build and
render the report, and the page's size.

With ``--parts N``: an N-event synthetic trace (bench/analyze.py's, with
selftest's phase marks: two halves of its time) is written, then `report`
(text and JSON) and `selftest --from-trace` each run twice, the trace
loaded whole as one DataFrame and read part by part, each run in a process
of its own; printed side by side: wall and CPU time, peak RSS (ru_maxrss of
that process, from wait4) and whether the two outputs are identical.

    .venv/bin/python bench/report.py             # spans 0.05 s, 2 s, 60 s, 1 h
    .venv/bin/python bench/report.py --quick     # 0.05 s and 2 s only
    .venv/bin/python bench/report.py --parts 2000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfstrace.correlate import correlate  # noqa: E402
from vfstrace.report.correlated import build_report  # noqa: E402
from vfstrace.report.page import render_html  # noqa: E402
from vfstrace.workload.simulate import simulate  # noqa: E402


def stretched(events, span_s: float):
    """The same events with their clock stretched so the trace lasts ``span_s`` seconds."""
    ts = events["ts_ns"].to_numpy().astype(np.float64)
    t0, t1 = ts.min(), ts.max()
    out = events.copy()
    out["ts_ns"] = (t0 + (ts - t0) * (span_s * 1e9 / max(t1 - t0, 1.0))).astype(np.uint64)
    return out


def write_phased(path: Path, events: int, batch: int = 65536) -> None:
    """bench/analyze.py's synthetic trace, batch by batch, with selftest's marks for two phases (its halves)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from analyze import synthetic

    from vfstrace.store import TraceWriter

    rng = np.random.default_rng(1)
    t0 = 10**12  # synthetic() stamps event i at t0 + 1000 i
    mid, end = t0 + events // 2 * 1000, t0 + events * 1000
    phases = [{"name": "baseline", "start_ns": t0, "end_ns": mid},
              {"name": "widened", "start_ns": mid, "end_ns": end, "counters": {"lookup": events // 5, "prune": 100}}]
    meta = {"tier": "bench", "workload": "bench/report.py", "selftest": {"phases": phases}}
    with TraceWriter(path, meta=meta, chunk_events=batch, overwrite=True) as w:
        for done in range(0, events, batch):
            w.write(synthetic(min(batch, events - done), done + 1, t0 + done * 1000, rng))


def run_one(trace: Path, what: str, how: str) -> dict:
    """One command on the trace in this process: its output's digest and size, wall and CPU seconds."""
    from vfstrace.report import correlated as rc
    from vfstrace.report.terminal import term_tree
    from vfstrace.selftest import judge
    from vfstrace.store import load

    w, c = time.perf_counter(), time.process_time()
    if what == "report":
        if how == "parts":
            rep = rc.report_parts(trace)
        else:
            df = load(trace)
            rep = rc.build_report(df, correlate(df), df.attrs["meta"])
            del df
        out = json.dumps(rep, indent=1, default=rc._json_default) + rc.render_text(term_tree(rep))
    else:
        if how == "parts":
            res = judge.from_trace(trace)
        else:
            res = judge.result_of(*judge.judge_frame(load(trace)), trace)
        out = json.dumps(res.to_dict(), sort_keys=True)
    return {"wall": time.perf_counter() - w, "cpu": time.process_time() - c,
            "digest": hashlib.sha256(out.encode()).hexdigest()[:16], "bytes": len(out)}


def child(trace: Path, what: str, how: str) -> dict:
    """run_one() in a process of its own; its peak RSS (ru_maxrss, KiB on Linux) from wait4."""
    p = subprocess.Popen([sys.executable, __file__, "--run", what, how, str(trace)], stdout=subprocess.PIPE,
                         text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"bench/report.py: {what} ({how}) exited {p.returncode}")
    return {**json.loads(out), "rss_mib": ru.ru_maxrss / 1024.0}


def parts_bench(events: int, where: Path | None) -> None:
    base = where or Path(tempfile.mkdtemp(prefix="vfstrace-bench-"))
    trace = base / "bench.vft"
    try:
        t = time.perf_counter()
        write_phased(trace, events)
        size = sum(f.stat().st_size for f in trace.iterdir())
        nparts = len(list(trace.glob("part-*.parquet")))
        print(f"trace: {events:,} events, {nparts} parts, {size / 2**20:,.1f} MiB (written in "
              f"{time.perf_counter() - t:.1f} s)")
        print(f"{'command':<22}{'reader':>8}{'wall (s)':>10}{'CPU (s)':>9}{'peak RSS (MiB)':>16}  output")
        for what in ("report", "selftest"):
            runs = {how: child(trace, what, how) for how in ("whole", "parts")}
            same = runs["whole"]["digest"] == runs["parts"]["digest"]
            for how, r in runs.items():
                print(f"{what + (' --from-trace' if what == 'selftest' else ''):<22}{how:>8}{r['wall']:>10.2f}"
                      f"{r['cpu']:>9.2f}{r['rss_mib']:>16,.0f}  {r['bytes']:,} B {r['digest']}")
            print(f"{'':<22}{'':>8}  outputs {'identical' if same else 'DIFFER'}")
    finally:
        if where is None:
            shutil.rmtree(base, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two short spans only")
    ap.add_argument("--parts", type=int, metavar="N", help="report and selftest --from-trace on an N-event trace, "
                                                           "whole load against part by part")
    ap.add_argument("--dir", type=Path, help="with --parts: where to put the trace (default: a temp dir, removed)")
    ap.add_argument("--run", nargs=3, metavar=("WHAT", "HOW", "TRACE"), help=argparse.SUPPRESS)  # one child run
    a = ap.parse_args(argv)
    if a.run:
        print(json.dumps(run_one(Path(a.run[2]), a.run[0], a.run[1])))
        return
    if a.parts:
        parts_bench(a.parts, a.dir)
        return
    spans = [0.05, 2.0] if a.quick else [0.05, 2.0, 60.0, 3600.0]
    base, _ = simulate(7, semantics="buggy", duration_ns=20_000_000)
    meta = {"tier": "simulated", "workload": {"simulate": {"seed": 7, "view": "kprobe"}}}
    print(f"{'span':>8}  {'events':>8}  {'1 s table buckets':>17}  {'chart buckets':>13}  {'chart width':>11}  "
          f"{'build (s)':>9}  {'render (s)':>10}  {'HTML (KiB)':>10}")
    for span in spans:
        ev = stretched(base, span)
        ev.attrs["meta"] = meta
        v = correlate(ev)
        t0 = time.perf_counter()
        rep = build_report(ev, v, meta)
        t1 = time.perf_counter()
        page = render_html(rep)
        t2 = time.perf_counter()
        table, chart = rep["summary"]["rate"], rep["chart"]
        print(f"{span:>7g}s  {len(ev):>8,}  {len(table['buckets']):>17,}  {len(chart['buckets']):>13,}  "
              f"{chart['bucket_seconds']:>10g}s  {t1 - t0:>9.2f}  {t2 - t1:>10.3f}  {len(page.encode()) / 1024:>10,.0f}")


if __name__ == "__main__":
    main()
