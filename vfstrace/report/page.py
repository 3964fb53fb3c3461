"""`vfstrace report --format html`: one self-contained page for a bug report.

The page reads top-down the way a reviewer asks: the answer (one sentence,
the same as `analyze`'s first line), the trace and its workload as tables,
the rates over time (a chart with labelled axes and round buckets, readable
for a two-second trace as for an hour), the verdict counts, then each
suspect's timeline: one lane per task, every event on the dentry and its
parent, and the events the verdict cites ringed, labelled and marked with
the ``cited`` class in the table below it. No script and no external
resource: inline SVG and CSS only. Everything from the trace goes through
:func:`E` (html.escape): a file can be called ``<script>``.
"""

from __future__ import annotations

import html
import math

E = html.escape

KIND_COLORS = {
    "walk_enter": "#4c78a8", "walk_return": "#4c78a8", "lookup_enter": "#72b7b2", "lookup_return": "#72b7b2",
    "seq_check": "#b279a2", "prune": "#e45756", "unhash": "#f58518", "iput": "#d62728", "d_free": "#9d755d",
    "d_alloc": "#54a24b", "path_syscall": "#eeca3b", "ns_op": "#ff9da6", "shrink_start": "#bab0ac",
    "shrink_end": "#bab0ac", "lost": "#000000",
}
SERIES = (("events", "all events", "#4c78a8"), ("lookups", "lookups", "#72b7b2"),
          ("prunes", "prunes", "#e45756"), ("enoent", "-ENOENT results", "#b8860b"))

CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}"
    "p.answer{font-size:1.25em;font-weight:bold;border-left:6px solid #4c78a8;padding:.4em .8em;background:#f3f6fa}"
    "p.answer.bad{border-color:#c00;background:#fdf0f0}"
    "table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
    "text-align:left}th{background:#f4f4f4}"
    ".lost{background:#fdd;border:2px solid #c00;padding:.5em;font-weight:bold}"
    "h3.race{color:#c00}tr.judged td{background:#ffe9a8;font-weight:bold}"
    "tr.cited td{background:#fde0e0}tr.judged.cited td{background:#ffe9a8}code{font-size:12px}"
    ".legend span{display:inline-block;margin-right:1em;font-size:12px}"
)


def nice_ticks(hi: float, n: int = 5) -> list[float]:
    """Round tick values from 0 up to ``hi`` (about ``n`` of them)."""
    if hi <= 0:
        return [0.0]
    raw = hi / n
    k = 10 ** math.floor(math.log10(raw))
    step = next(m * k for m in (1, 2, 2.5, 5, 10) if m * k >= raw)
    return [i * step for i in range(int(hi / step + 1e-9) + 1)]


def _num(v: float) -> str:
    """A tick label: 1,200 / 3.5 / 0.05 / 12k."""
    if v >= 10_000:
        return f"{v / 1000:,.0f}k"
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:.3g}"


def _table(headers, rows, attrs: str = "") -> str:
    """A table; ``headers`` None for a two-column key/value table (the key cells are <th>)."""
    if headers is None:
        body = "".join(f"<tr><th>{E(str(k))}</th><td>{E(str(v))}</td></tr>" for k, v in rows)
        return f"<table{attrs}><tbody>{body}</tbody></table>"
    h = "".join(f"<th>{E(str(x))}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{E(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{attrs}><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def workload_rows(w) -> list[tuple[str, str]]:
    """The workload as (what, value) rows: a command line, or a nested dict flattened to dotted keys."""
    if w is None or w == "":
        return [("workload", "(not recorded)")]
    if isinstance(w, dict):
        rows: list[tuple[str, str]] = []
        for k, v in w.items():
            if isinstance(v, dict):
                rows += [(f"{k}.{a}", b) for a, b in workload_rows(v)]
            else:
                rows.append((str(k), "" if v is None else str(v)))
        return rows
    if isinstance(w, (list, tuple)):
        return [("command", " ".join(map(str, w)))]
    return [("command", str(w))]


def rate_svg(rate: dict, width: int = 760, panel_h: int = 70) -> str:
    """One bar panel per series (own y scale, per second), a shared time axis, lost events dashed."""
    b = rate["buckets"]
    if not b:
        return "<p>no timestamped events</p>"
    bw = float(rate["bucket_seconds"])
    pad_l, pad_r, pad_t, gap = 70, 20, 16, 22
    w = width - pad_l - pad_r
    span = len(b) * bw
    height = pad_t + len(SERIES) * (panel_h + gap) + 40
    x_of = lambda t: pad_l + w * t / span  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" class="rate">',
             f"<title>rates over time, buckets of {_num(bw)} s</title>"]
    for pi, (key, label, color) in enumerate(SERIES):
        top = pad_t + pi * (panel_h + gap)
        base = top + panel_h
        peak = max(x[key] for x in b) / bw
        ticks = nice_ticks(peak, 2) if peak else [0.0]
        ymax = max(ticks[-1], peak) or 1.0
        parts.append(f'<text x="{pad_l}" y="{top - 5}" font-size="11" fill="{color}" font-weight="bold">'
                     f"{E(label)} per second</text>")
        for t in ticks:
            y = base - panel_h * t / ymax
            parts.append(f'<line x1="{pad_l - 3}" y1="{y:.1f}" x2="{pad_l + w}" y2="{y:.1f}" stroke="#eee"/>'
                         f'<text x="{pad_l - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{_num(t)}</text>')
        for i, x in enumerate(b):
            v = x[key] / bw
            if not v:
                continue
            hgt = max(panel_h * v / ymax, 1.0)
            parts.append(f'<rect x="{x_of(i * bw):.1f}" y="{base - hgt:.1f}" width="{max(w / len(b) - 1, 1):.1f}" '
                         f'height="{hgt:.1f}" fill="{color}"><title>{_num(x["t_s"])} s: {x[key]:,} {E(label)} '
                         f"({_num(round(v, 1))}/s)</title></rect>")
        parts.append(f'<line x1="{pad_l}" y1="{base}" x2="{pad_l + w}" y2="{base}" stroke="#888"/>')
    axis_y = pad_t + len(SERIES) * (panel_h + gap) - gap
    for t in nice_ticks(span, 8):
        x = x_of(t)
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="#888"/>'
                     f'<text x="{x:.1f}" y="{axis_y + 15}" text-anchor="middle" font-size="10">{_num(t)}</text>')
    parts.append(f'<text x="{pad_l + w / 2}" y="{height - 6}" text-anchor="middle" font-size="11">'
                 f"seconds since the first event (buckets of {_num(bw)} s)</text>")
    for i, x in enumerate(b):
        if x["lost"]:
            xx = x_of(i * bw)
            parts.append(f'<line x1="{xx:.1f}" y1="{pad_t}" x2="{xx:.1f}" y2="{axis_y}" stroke="#000" '
                         f'stroke-dasharray="3,2"><title>{x["lost"]:,} events lost</title></line>')
    parts.append("</svg>")
    return "".join(parts)


def timeline_svg(s: dict, width: int = 760) -> str:
    """One lane per task; cited events ringed and labelled with their kind."""
    tl = s["timeline"]
    if not tl:
        return ""
    tasks: list[tuple[int, str]] = []
    for e in tl:
        if (e["tid"], e["comm"]) not in tasks:
            tasks.append((e["tid"], e["comm"]))
    lane_h, pad_l, pad_t = 34, 160, 22
    height = pad_t + lane_h * len(tasks) + 34
    span = max(tl[-1]["rel_us"], 1e-3)
    w = width - pad_l - 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" class="timeline">']
    for li, (tid, comm) in enumerate(tasks):
        y = pad_t + li * lane_h + lane_h / 2
        parts.append(f'<text x="{pad_l - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{E(comm)} [{tid}]</text>'
                     f'<line x1="{pad_l}" y1="{y:.1f}" x2="{pad_l + w}" y2="{y:.1f}" stroke="#ddd"/>')
    for e in sorted(tl, key=lambda e: bool(e["role"])):  # cited events drawn last, on top
        li = tasks.index((e["tid"], e["comm"]))
        x = pad_l + w * e["rel_us"] / span
        y = pad_t + li * lane_h + lane_h / 2
        title = E(f"#{e['event_id']} {e['rel_us']:.3f} µs cpu{e['cpu']} {e['kind']} {e['name'] or e['path']} "
                  f"dentry {e['dentry']} ret {e['ret']} {e['flags']}")
        fill = KIND_COLORS.get(e["kind"], "#666")
        if e["role"]:
            ring = "#000" if e["role"] == "judged" else "#c00"
            parts.append(f'<circle class="cited {e["role"]}" cx="{x:.1f}" cy="{y:.1f}" r="7" fill="{fill}" '
                         f'stroke="{ring}" stroke-width="2.5"><title>{title}</title></circle>'
                         f'<text x="{x:.1f}" y="{y - 10:.1f}" text-anchor="middle" font-size="9">{E(e["kind"])}</text>')
        else:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" opacity="0.7"><title>{title}</title></circle>')
    base = pad_t + lane_h * len(tasks) + 4
    for t in nice_ticks(span, 6):
        x = pad_l + w * t / span
        parts.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#888"/>'
                     f'<text x="{x:.1f}" y="{base + 15}" text-anchor="middle" font-size="10">{_num(t)}</text>')
    parts.append(f'<text x="{pad_l + w / 2}" y="{height - 3}" text-anchor="middle" font-size="11">'
                 "µs since the first event shown</text></svg>")
    return "".join(parts)


def _legend() -> str:
    kinds = "".join(f'<span><b style="color:{c}">&#9679;</b> {E(k)}</span>' for k, c in KIND_COLORS.items())
    return (f'<p class="legend">{kinds}<br><span>ringed black: the judged event</span>'
            "<span>ringed red: an event the verdict cites</span></p>")


_TIMELINE_HEAD = ["event", "µs", "cpu", "task", "kind", "dentry", "parent", "name", "seq", "ret", "flags"]


def _timeline_table(x: dict) -> str:
    rows = []
    for e in x["timeline"]:
        cls = {"judged": ' class="judged cited"', "evidence": ' class="cited"'}.get(e["role"], "")
        cells = [e["event_id"], f"{e['rel_us']:.3f}", e["cpu"], f"{e['tid']} {e['comm']}",
                 e["kind"] + (f"/{e['op']}" if e["op"] else ""), e["dentry"], e["parent"],
                 e["name"] or e["path"], f"{e['seq']}/{e['seq2']}", e["ret"], e["flags"]]
        rows.append(f"<tr{cls}>" + "".join(f"<td>{E(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in _TIMELINE_HEAD)
    return f'<table class="timeline"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render_html(rep: dict) -> str:
    s = rep["summary"]
    t = s["trace"]
    v = s["verdicts"]
    bad = v["available"] and any(v["counts"].get(k) for k in ("race", "transient", "uncertain"))
    out = [
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>vfstrace report</title><style>{CSS}</style>'
        "</head><body>",
        "<h1>vfstrace report</h1>",
        f'<p class="answer{" bad" if bad else ""}" id="answer">{E(s["answer"])}</p>',
    ]
    if s["lost"]["total"]:
        per = ", ".join(f"cpu{E(c)}: {n:,}" for c, n in s["lost"]["per_cpu"].items())
        out.append(f'<p class="lost">{s["lost"]["total"]:,} events LOST by the kernel ({per}). '
                   "Verdicts near a loss may rest on missing events.</p>")
    out.append("<h2>Trace</h2>")
    out.append(_table(None, [
        ("tier", t.get("tier") or "?"), ("kernel", t.get("kernel_release") or "?"), ("host", t.get("host") or "?"),
        ("events", f"{s['events']:,}"), ("duration", f"{s['duration_s']:.3f} s"),
        ("lost events", f"{s['lost']['total']:,}"), ("recording closed cleanly", "yes" if t.get("closed") else "NO"),
    ], ' class="trace"'))
    out.append("<h2>Workload</h2>")
    out.append(_table(None, workload_rows(t.get("workload")), ' class="workload" id="workload"'))
    for note in s["notes"]:
        out.append(f"<p>note: {E(note)}</p>")
    out.append("<h2>Rates over time</h2>")
    out.append(rate_svg(rep.get("chart") or s["rate"]))
    out.append("<h2>Events and lookups</h2>")
    out.append(_table(["kind", "count"], [(k, f"{c:,}") for k, c in s["by_kind"].items()]))
    out.append(_table(["lookups", "count"], [(k, f"{c:,}") for k, c in s["lookups"].items()]))
    if s["enoent"]["top_paths"]:
        out.append(_table(["top -ENOENT paths", "count"], [(x["path"], x["count"]) for x in s["enoent"]["top_paths"]]))
    if s["enoent"]["top_comms"]:
        out.append(_table(["top -ENOENT commands", "count"], [(x["comm"], x["count"]) for x in s["enoent"]["top_comms"]]))
    out.append("<h2>Verdicts</h2>")
    if not v["available"]:
        out.append(f"<p>{E(v['note'])}</p>")
    else:
        out.append(_table(["verdict", "count"], [(k, f"{c:,}") for k, c in v["counts"].items()] or [("(none)", 0)]))
        out.append(f"<h2>Suspects ({len(rep['suspects'])} of {rep['suspects_total']})</h2>")
        if rep["suspects"]:
            out.append(_legend())
        for i, x in enumerate(rep["suspects"], 1):
            dentry = f'dentry {E(x["dentry"])} ' if int(x["dentry"], 16) else ""  # syscall-level: no dentry
            out.append(f'<h3 class="{E(x["verdict"])}">#{i} {E(x["verdict"].upper())}: event {x["event_id"]}, '
                       f'tid {x["tid"]} ({E(x["comm"])}), {dentry}<code>{E(x["path"] or x["name"])}</code></h3>')
            out.append(f"<p>{E(x['reason'])}<br>rests on events: {E(', '.join(map(str, x['evidence'])) or '(none)')}</p>")
            out.append(timeline_svg(x))
            out.append(_timeline_table(x))
    out.append("</body></html>")
    return "\n".join(out) + "\n"
