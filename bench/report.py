"""The HTML report on traces of different lengths: chart buckets, size, time.

For each trace span, one simulated trace (vfstrace simulate, its clock
stretched to the span) is summarised and rendered; printed side by side:
the buckets of the 1-second rate table (analyze's text and --json) and of
the HTML chart (round widths, about 60 buckets), the time to build and
render the report, and the page's size.

    .venv/bin/python bench/report.py             # spans 0.05 s, 2 s, 60 s, 1 h
    .venv/bin/python bench/report.py --quick     # 0.05 s and 2 s only
"""

from __future__ import annotations

import argparse
import sys
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two short spans only")
    a = ap.parse_args(argv)
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
