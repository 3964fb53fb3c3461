"""selftest's result as text and JSON."""

from __future__ import annotations

import json
import math

import click
import numpy as np

from vfstrace.report.terminal import term
from vfstrace.selftest.judge import MAX_RACES_SHOWN, Result

# --------------------------------------------------------------------------
# output


def _fmt_int(n) -> str:
    return "-" if n is None else f"{int(n):,}"


def render_text(res: Result) -> str:
    from tabulate import tabulate

    # Kernel, tier, probes, names, comms and notes come from the trace with
    # --from-trace: every line that shows them goes through term().
    lines = [term(f"vfstrace selftest: kernel {res.kernel_release}, tier {res.tier}")]
    if res.source != "live":
        lines[0] += term(f", judged from trace {res.source}")
    if res.probes:
        lines.append(term("probes: " + ", ".join(map(str, res.probes))))
    wide = next((p.widen for p in res.phases if p.widen), None)
    if wide:
        lines.append(term(
            f"widening: kretprobe on {wide['site']} holds the workload's RCU walks {wide['delay_ns'] / 1000:g} us "
            f"({'RCU mode only' if wide.get('rcu_only') else 'every lookup of the workload'}); nothing else is delayed"
        ))
    if res.detector:
        d = res.detector
        lines.append(
            f"detector check: simulated pre-patch kernel -> {d['buggy']['race']} race; "
            f"simulated fixed kernel -> {d['fixed']['race']} race, {d['fixed']['retried']} retried (ok)"
        )
    lines.append("")
    rows = [
        ("duration (s)", *[f"{p.duration_s:.1f}" for p in res.phases]),
        ("lookups observed", *[_fmt_int(p.lookups) for p in res.phases]),
        ("prunes", *[_fmt_int(p.prunes) for p in res.phases]),
        ("lookups overlapping a prune of their dentry", *[_fmt_int(p.overlaps) for p in res.phases]),
        ("  re-checked and retried (retried)", *[_fmt_int(p.retried - p.retried_no_prune) for p in res.phases]),
        ("  trusted without re-check (race)", *[_fmt_int(p.race) for p in res.phases]),
        ("  uncertain (events lost)", *[_fmt_int(p.uncertain) for p in res.phases]),
        ("overlaps per minute", *[f"{p.overlaps_per_min:,.1f}" for p in res.phases]),
        ("-ECHILD retries, no prune seen (not counted)", *[_fmt_int(p.retried_no_prune) for p in res.phases]),
        ("lost events", *[_fmt_int(p.lost) for p in res.phases]),
    ]
    if wide:
        rows.append(("delayed lookups", *[_fmt_int(p.widen["delayed"]) if p.widen else "-" for p in res.phases]))
        rows.append(("mean delay (us)",
                     *[f"{p.widen['mean_delay_ns'] / 1000:.1f}" if p.widen else "-" for p in res.phases]))
    lines.append(tabulate(rows, headers=["", *[p.name for p in res.phases]], disable_numparse=True,
                          colalign=("left", *["right"] * len(res.phases))))
    if res.factor is not None:
        base = next(p for p in res.phases if p.name == "baseline")
        widened = next(p for p in res.phases if p.widen)
        f = "inf" if math.isinf(res.factor) else f"{res.factor:.1f}"
        lines.append(f"overlaps/min without vs with widening: {base.overlaps_per_min:,.1f} vs "
                     f"{widened.overlaps_per_min:,.1f} (x{f})")
    races = [r for p in res.phases for r in p.races]
    if races:
        lines.append("")
        lines.append("racing lookups (trusted a dentry whose prune overlapped them):")
        for r in races[:MAX_RACES_SHOWN]:
            ev = ",".join(str(x) for x in r["evidence"][:8])
            lines.append(term(f"  event {r['event_id']}: dentry 0x{r['dentry']:x} name '{r['name']}' "
                              f"tid {r['tid']} comm '{r['comm']}'" + (f" (evidence: {ev})" if ev else "")))
    for n in res.notes:
        lines.append(term(f"note: {n}"))
    lines.append("")
    lines.append(term(f"{res.verdict}: {res.reason}"))
    return "\n".join(lines)


def _emit(res: Result, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2, default=_json_default))
    else:
        click.echo(render_text(res))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and math.isinf(o):
        return "inf"
    return str(o)
