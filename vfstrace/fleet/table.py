"""The fleet's rows as a person reads them (one table) and as JSON.

Every string in a row came from a trace (a host name, a kernel release, a
race's path) or from the command line, so the rows are escaped for the
terminal (vfstrace/report/terminal.py) before tabulate lays them out.
"""

from __future__ import annotations

import json

from vfstrace.report.terminal import term_tree

# Failed-lookup verdicts shown as columns (races have their own, with the first one).
_VERDICT_COLUMNS = ("uncertain", "transient", "retried", "explained", "absent")


def _first_race(r: dict) -> str:
    f = r.get("first_race")
    if not r["races"] or not f:
        return "0"
    return f"{r['races']:,}: {f['path'] or f['name']} at {f['t_s']:.6f} s"


def render_text(rows: list[dict]) -> str:
    from tabulate import tabulate

    rows = term_tree(rows)
    good = [r for r in rows if not r.get("error")]
    bad = [r for r in rows if r.get("error")]
    seen = {k for r in good for k in r["verdicts"]}
    extra = sorted(k for k in seen if k not in _VERDICT_COLUMNS and k != "race")
    vcols = [k for k in _VERDICT_COLUMNS if k in seen] + extra
    headers = ["trace", "host", "kernel", "tier", "span s", "events", "failed", *vcols, "races (first: path at t)",
               "lost"]
    table = [[r["trace"], r["host"] or "-", r["kernel"] or "-", r["tier"] or "-", f"{r['span_s']:.3f}",
              f"{r['events']:,}", f"{r['failed_lookups']:,}", *(f"{r['verdicts'].get(k, 0):,}" for k in vcols),
              _first_race(r), f"{r['lost']:,}"] for r in good]
    races = sum(r["races"] for r in good)
    out = [f"{len(rows)} trace(s): {races:,} lookup/prune race(s) on {sum(1 for r in good if r['races'])} of "
           f"{len(good)} read" + (f"; {len(bad)} could not be read" if bad else "")]
    if good:
        out += ["", tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True)]
    if bad:
        out += ["", tabulate([[r["trace"], r["error"]] for r in bad], headers=["not read", "error"],
                             tablefmt="simple", disable_numparse=True)]
    return "\n".join(out) + "\n"


def render_json(rows: list[dict]) -> str:
    """Exact strings (JSON escapes what a terminal must not see: ensure_ascii)."""
    return json.dumps({"traces": rows, "failed": sum(1 for r in rows if r.get("error"))}, indent=1)
