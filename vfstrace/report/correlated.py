"""`vfstrace report`: each suspect's dentry timeline, with its verdict.

A verdict is only as good as the events it rests on, so the report puts the
events in front of the reader: for every suspect (race first, then
uncertain, transient, retried) it lists every event on the suspect dentry's
address and on its parent's (plus the cited evidence, and lookups of the
same name in the parent) around the judged event, in order, with relative
microseconds, CPU and task. The HTML form is one self-contained file with
inline SVG, so it can be attached to a bug report. Every name, path and
comm is escaped: a file can be called ``<script>``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import click
import numpy as np

from vfstrace.report.analyze import (
    SUSPECT_VERDICTS,
    _evidence_list,
    _json_default,
    order_suspects,
    render_text as render_summary_text,
    run_correlator,
    summarize,
)
from vfstrace.errors import VfstraceError
from vfstrace.events import Kind, Flag, kind_name, op_name

# Events shown around a suspect: this many µs before the first and after the
# last event it rests on, at most MAX_TIMELINE of them (nearest first).
WINDOW_US = 2000
MAX_TIMELINE = 200

KIND_COLORS = {
    "walk_enter": "#4c78a8", "walk_return": "#4c78a8", "lookup_enter": "#72b7b2", "lookup_return": "#72b7b2",
    "seq_check": "#b279a2", "prune": "#e45756", "unhash": "#f58518", "iput": "#d62728", "d_free": "#9d755d",
    "d_alloc": "#54a24b", "path_syscall": "#eeca3b", "ns_op": "#ff9da6", "shrink_start": "#bab0ac",
    "shrink_end": "#bab0ac", "lost": "#000000",
}


def _flag_names(f: int) -> str:
    return "|".join(x.name for x in Flag if x.value and f & x.value) or ""


def _fmt_ret(r: int) -> str:
    if r >= 0:
        return str(r)
    import errno

    return f"-{errno.errorcode.get(-r, str(-r))}"


def suspect_timeline(df, row, *, window_us: int = WINDOW_US, max_events: int = MAX_TIMELINE):
    """Events around one verdict row: its dentry, the parent, the evidence (a DataFrame)."""
    ids = df["event_id"].to_numpy()
    dentry_col = df["dentry"].to_numpy()
    parent_col = df["parent"].to_numpy()
    ts = df["ts_ns"].to_numpy()
    d = np.uint64(int(row["dentry"]))
    evidence = np.array(sorted(set(_evidence_list(row["evidence"])) | {int(row["event_id"])}), dtype=np.uint64)
    ev_mask = np.isin(ids, evidence)
    # The parent: from the judged event, else from any event on D naming one.
    p = 0
    judged = df[ids == np.uint64(int(row["event_id"]))]
    if len(judged):
        p = int(judged["parent"].iloc[0])
    if not p and d:
        cand = parent_col[(dentry_col == d) & (parent_col != 0)]
        if len(cand):
            p = int(cand[0])
    p = np.uint64(p)
    t_ev = ts[ev_mask]
    t_lo = int(t_ev.min()) if len(t_ev) else int(row["ts_ns"])
    t_hi = int(t_ev.max()) if len(t_ev) else int(row["ts_ns"])
    w = int(window_us) * 1000
    in_win = (ts >= np.uint64(max(t_lo - w, 0))) & (ts <= np.uint64(t_hi + w))
    on = np.zeros(len(df), dtype=bool)
    if d:
        on |= (dentry_col == d) | (parent_col == d)
    if p:
        on |= dentry_col == p
        name = str(row.get("name") or "")
        if name:
            on |= (parent_col == p) & (df["name"].to_numpy() == name)
    sel = np.nonzero((on & in_win) | ev_mask)[0]
    if len(sel) > max_events:
        dist = np.abs(ts[sel].astype(np.int64) - int(row["ts_ns"]))
        keep = np.argsort(dist, kind="stable")[:max_events]
        keep_set = set(sel[keep].tolist()) | set(np.nonzero(ev_mask)[0].tolist())
        sel = np.array(sorted(keep_set))
    tl = df.iloc[sel].sort_values(["ts_ns", "event_id"], kind="stable")
    return tl, int(p)


def _timeline_rows(tl, row, evidence: set[int]) -> list[dict]:
    if not len(tl):
        return []
    t0 = int(tl["ts_ns"].iloc[0])
    judged = int(row["event_id"])
    out = []
    for r in tl.itertuples(index=False):
        eid = int(r.event_id)
        out.append(
            {
                "event_id": eid,
                "rel_us": round((int(r.ts_ns) - t0) / 1000, 3),
                "cpu": int(r.cpu),
                "tid": int(r.tid),
                "comm": str(r.comm),
                "kind": kind_name(r.kind),
                "op": op_name(r.op) if int(r.op) else "",
                "dentry": f"{int(r.dentry):#x}" if int(r.dentry) else "",
                "parent": f"{int(r.parent):#x}" if int(r.parent) else "",
                "name": str(r.name),
                "path": str(r.path),
                "seq": int(r.seq),
                "seq2": int(r.seq2),
                "ret": _fmt_ret(int(r.ret)),
                "flags": _flag_names(int(r.flags)),
                "role": "judged" if eid == judged else ("evidence" if eid in evidence else ""),
            }
        )
    return out


def build_report(df, verdicts, meta: dict | None = None, *, verdict_note=None, limit: int = 20,
                 window_us: int = WINDOW_US) -> dict:
    """Everything the three output formats show, as one JSON-ready dict."""
    meta = meta if meta is not None else dict(df.attrs.get("meta") or {})
    summary = summarize(df, meta, verdicts=verdicts, verdict_note=verdict_note)
    suspects = []
    sus = order_suspects(verdicts) if verdicts is not None else None
    if sus is not None and len(sus):
        for _, row in sus.head(limit).iterrows():
            evidence = set(_evidence_list(row["evidence"]))
            tl, parent = suspect_timeline(df, row, window_us=window_us)
            suspects.append(
                {
                    "event_id": int(row["event_id"]),
                    "verdict": str(row["verdict"]),
                    "reason": str(row["reason"]),
                    "ts_ns": int(row["ts_ns"]),
                    "tid": int(row["tid"]),
                    "comm": str(row["comm"]),
                    "dentry": f"{int(row['dentry']):#x}",
                    "parent": f"{parent:#x}" if parent else "",
                    "name": str(row["name"]),
                    "path": str(row.get("path", "") or ""),
                    "evidence": sorted(evidence),
                    "timeline": _timeline_rows(tl, row, evidence),
                }
            )
    return {
        "summary": summary,
        "suspects": suspects,
        "suspects_total": int(len(sus)) if sus is not None else 0,
        "suspect_verdicts": list(SUSPECT_VERDICTS),
        "window_us": window_us,
    }


# ---------------------------------------------------------------- text


def render_text(rep: dict) -> str:
    from tabulate import tabulate

    out = [render_summary_text(rep["summary"]).rstrip("\n"), ""]
    if not rep["summary"]["verdicts"]["available"]:
        out.append("no suspect timelines: " + rep["summary"]["verdicts"]["note"])
        return "\n".join(out) + "\n"
    if not rep["suspects"]:
        out.append("no suspects: no lookup was judged " + "/".join(rep["suspect_verdicts"]))
        return "\n".join(out) + "\n"
    shown = len(rep["suspects"])
    out.append(f"suspect timelines ({shown} of {rep['suspects_total']})")
    for i, s in enumerate(rep["suspects"], 1):
        out.append("")
        out.append(f"#{i} {s['verdict'].upper()}: event {s['event_id']}, tid {s['tid']} ({s['comm']}), "
                   f"dentry {s['dentry']} {s['path'] or s['name']!r}")
        out.append(f"   reason: {s['reason']}")
        out.append(f"   rests on events: {', '.join(map(str, s['evidence'])) or '(none cited)'}")
        rows = [
            ("*" if e["role"] == "judged" else ("+" if e["role"] == "evidence" else ""), e["event_id"],
             f"{e['rel_us']:.3f}", e["cpu"], f"{e['tid']} {e['comm']}", e["kind"] + (f"/{e['op']}" if e["op"] else ""),
             e["dentry"], e["parent"], e["name"] or e["path"], f"{e['seq']}/{e['seq2']}", e["ret"], e["flags"])
            for e in s["timeline"]
        ]
        out.append(tabulate(rows, headers=["", "event", "µs", "cpu", "task", "kind", "dentry", "parent", "name",
                                           "seq", "ret", "flags"], tablefmt="simple", disable_numparse=True))
    out.append("")
    out.append("(* the judged event, + an event the verdict cites)")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- html

E = html.escape


def _rate_svg(rate: dict, width=760, height=180) -> str:
    b = rate["buckets"]
    if not b:
        return "<p>no timestamped events</p>"
    pad_l, pad_b, pad_t = 60, 30, 10
    w, h = width - pad_l - 10, height - pad_b - pad_t
    series = [("events", "#4c78a8"), ("lookups", "#72b7b2"), ("prunes", "#e45756"), ("enoent", "#eeca3b")]
    ymax = max(max(x[k] for x in b) for k, _ in series) or 1
    n = len(b)

    def xy(i, v):
        x = pad_l + (w * i / max(n - 1, 1))
        y = pad_t + h - h * v / ymax
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#888"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#888"/>',
             f'<text x="{pad_l - 5}" y="{pad_t + 10}" text-anchor="end" font-size="11">{ymax:,}</text>',
             f'<text x="{pad_l - 5}" y="{pad_t + h}" text-anchor="end" font-size="11">0</text>',
             f'<text x="{pad_l + w}" y="{height - 8}" text-anchor="end" font-size="11">'
             f'{b[-1]["t_s"] + rate["bucket_seconds"]} s</text>']
    for k, color in series:
        pts = " ".join(xy(i, x[k]) for i, x in enumerate(b))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
    for j, (k, color) in enumerate(series):
        parts.append(f'<text x="{pad_l + 10 + j * 90}" y="{height - 8}" font-size="11" fill="{color}">{k}/bucket</text>')
    lost = [(i, x["lost"]) for i, x in enumerate(b) if x["lost"]]
    for i, c in lost:
        x = xy(i, 0).split(",")[0]
        parts.append(f'<line x1="{x}" y1="{pad_t}" x2="{x}" y2="{pad_t + h}" stroke="#000" stroke-dasharray="3,2">'
                     f'<title>{c:,} events lost</title></line>')
    parts.append("</svg>")
    return "".join(parts)


def _timeline_svg(s: dict, width=760) -> str:
    tl = s["timeline"]
    if not tl:
        return ""
    tasks = []
    for e in tl:
        key = (e["tid"], e["comm"])
        if key not in tasks:
            tasks.append(key)
    lane_h, pad_l, pad_t = 28, 150, 16
    height = pad_t + lane_h * len(tasks) + 24
    span = max(tl[-1]["rel_us"], 1e-3)
    w = width - pad_l - 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for li, (tid, comm) in enumerate(tasks):
        y = pad_t + li * lane_h + lane_h / 2
        parts.append(f'<text x="{pad_l - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{E(comm)} [{tid}]</text>')
        parts.append(f'<line x1="{pad_l}" y1="{y:.1f}" x2="{pad_l + w}" y2="{y:.1f}" stroke="#ddd"/>')
    for e in tl:
        li = tasks.index((e["tid"], e["comm"]))
        x = pad_l + w * e["rel_us"] / span
        y = pad_t + li * lane_h + lane_h / 2
        color = KIND_COLORS.get(e["kind"], "#666")
        title = E(f"#{e['event_id']} {e['rel_us']:.3f} µs cpu{e['cpu']} {e['kind']} {e['name'] or e['path']} "
                  f"dentry {e['dentry']} ret {e['ret']} {e['flags']}")
        ring = ""
        if e["role"]:
            ring = f' stroke="{"#000" if e["role"] == "judged" else "#e45756"}" stroke-width="2"'
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{color}"{ring}><title>{title}</title></circle>')
    parts.append(f'<text x="{pad_l}" y="{height - 6}" font-size="11">0 µs</text>')
    parts.append(f'<text x="{pad_l + w}" y="{height - 6}" font-size="11" text-anchor="end">{span:,.3f} µs</text>')
    parts.append("</svg>")
    return "".join(parts)


def _html_table(headers, rows) -> str:
    h = "".join(f"<th>{E(str(x))}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{E(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def render_html(rep: dict) -> str:
    s = rep["summary"]
    t = s["trace"]
    out = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>vfstrace report</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:12px;"
        "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        ".lost{background:#fdd;border:2px solid #c00;padding:.5em;font-weight:bold}"
        ".race{color:#c00}.judged{background:#ffe9a8}.evidence{background:#fde0e0}code{font-size:12px}",
        "</style></head><body>",
        "<h1>vfstrace report</h1>",
        f"<p>{s['events']:,} events over {s['duration_s']:.3f} s; tier {E(str(t.get('tier') or '?'))}, "
        f"kernel {E(str(t.get('kernel_release') or '?'))}, host {E(str(t.get('host') or '?'))}</p>",
    ]
    if t.get("workload"):
        out.append(f"<p>workload: <code>{E(str(t['workload']))}</code></p>")
    for note in s["notes"]:
        out.append(f"<p>note: {E(note)}</p>")
    if s["lost"]["total"]:
        per = ", ".join(f"cpu{E(c)}: {n:,}" for c, n in s["lost"]["per_cpu"].items())
        out.append(f'<p class="lost">{s["lost"]["total"]:,} events LOST by the kernel ({per}). '
                   "Verdicts near a loss may rest on missing events.</p>")
    else:
        out.append("<p>lost events: 0</p>")
    out.append("<h2>Rate over time</h2>")
    out.append(_rate_svg(s["rate"]))
    out.append("<h2>Summary</h2>")
    out.append(_html_table(["kind", "count"], [(k, f"{c:,}") for k, c in s["by_kind"].items()]))
    out.append(_html_table(["lookups", "count"], [(k, f"{c:,}") for k, c in s["lookups"].items()]))
    if s["enoent"]["top_paths"]:
        out.append(_html_table(["top -ENOENT paths", "count"], [(x["path"], x["count"]) for x in s["enoent"]["top_paths"]]))
    if s["enoent"]["top_comms"]:
        out.append(_html_table(["top -ENOENT commands", "count"], [(x["comm"], x["count"]) for x in s["enoent"]["top_comms"]]))
    v = s["verdicts"]
    out.append("<h2>Verdicts</h2>")
    if not v["available"]:
        out.append(f"<p>{E(v['note'])}</p>")
    else:
        out.append(_html_table(["verdict", "count"], [(k, f"{c:,}") for k, c in v["counts"].items()] or [("(none)", 0)]))
        out.append(f"<h2>Suspects ({len(rep['suspects'])} of {rep['suspects_total']})</h2>")
        for i, x in enumerate(rep["suspects"], 1):
            out.append(f'<h3 class="{E(x["verdict"])}">#{i} {E(x["verdict"].upper())}: event {x["event_id"]}, '
                       f'tid {x["tid"]} ({E(x["comm"])}), dentry {E(x["dentry"])} '
                       f'<code>{E(x["path"] or x["name"])}</code></h3>')
            out.append(f"<p>{E(x['reason'])}<br>rests on events: {E(', '.join(map(str, x['evidence'])) or '(none)')}</p>")
            out.append(_timeline_svg(x))
            rows = []
            for e in x["timeline"]:
                cls = f' class="{e["role"]}"' if e["role"] else ""
                cells = [e["event_id"], f"{e['rel_us']:.3f}", e["cpu"], f"{e['tid']} {e['comm']}",
                         e["kind"] + (f"/{e['op']}" if e["op"] else ""), e["dentry"], e["parent"],
                         e["name"] or e["path"], f"{e['seq']}/{e['seq2']}", e["ret"], e["flags"]]
                rows.append(f"<tr{cls}>" + "".join(f"<td>{E(str(c))}</td>" for c in cells) + "</tr>")
            head = "".join(f"<th>{h}</th>" for h in ["event", "µs", "cpu", "task", "kind", "dentry", "parent", "name",
                                                     "seq", "ret", "flags"])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- command


@click.command("report")
@click.argument("trace", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=click.Choice(["text", "html", "json"]), default="text", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here instead of stdout.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(0, 100_000), help="Suspects shown in detail.")
@click.option("--window-us", default=WINDOW_US, show_default=True, type=click.IntRange(0, 10**9),
              help="Timeline margin around the events a verdict rests on.")
def report(trace, fmt, output, limit, window_us):
    """Per-suspect dentry timelines with their verdicts, as text, HTML or JSON.

    \b
    Examples:
      vfstrace report run.vft
      vfstrace report run.vft --format html -o run.html
    """
    from vfstrace.store import load

    df = load(trace)
    verdicts, note = run_correlator(df)
    rep = build_report(df, verdicts, df.attrs["meta"], verdict_note=note, limit=limit, window_us=window_us)
    if fmt == "json":
        text = json.dumps(rep, indent=1, default=_json_default) + "\n"
    elif fmt == "html":
        text = render_html(rep)
    else:
        text = render_text(rep)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise VfstraceError(f"{output}: cannot write: {e.strerror}") from None
    click.echo(f"wrote {output}", err=True)
