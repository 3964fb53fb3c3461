"""`vfstrace report`: each suspect's dentry timeline, with its verdict.

A verdict is only as good as the events it rests on, so the report puts the
events in front of the reader: for every suspect (race first, then
uncertain, transient, retried) it lists every event on the suspect dentry's
address and on its parent's (plus the cited evidence, and lookups of the
same name in the parent) around the judged event, in order, with relative
microseconds, CPU and task. The text form begins with the same one-sentence
answer as `analyze`; the HTML form (vfstrace/report/page.py) is one
self-contained file with inline SVG, so it can be attached to a bug report.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from vfstrace.correlate import SUSPECT_VERDICTS, correlate
from vfstrace.errors import VfstraceError
from vfstrace.events import Flag, kind_name, op_name
from vfstrace.report.analyze import (
    _evidence_list,
    _json_default,
    order_suspects,
    rate_chart,
    render_text as render_summary_text,
    summarize,
)
from vfstrace.report.page import render_html
from vfstrace.report.terminal import term_tree
from vfstrace.store.files import open_private

# Events shown around a suspect: this many µs before the first and after the
# last event it rests on, at most MAX_TIMELINE of them (nearest first).
WINDOW_US = 2000
MAX_TIMELINE = 200



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
        "chart": rate_chart(df),
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
                   f"dentry {s['dentry']} '{s['path'] or s['name']}'")
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
    rep = build_report(df, correlate(df), df.attrs["meta"], limit=limit, window_us=window_us)
    if fmt == "json":
        text = json.dumps(rep, indent=1, default=_json_default) + "\n"
    elif fmt == "html":
        text = render_html(rep)
    else:
        text = render_text(term_tree(rep))  # trace text escaped: text is read in a terminal
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open_private(output, text=True, follow=True) as f:  # 0600: a report holds traced paths
            f.write(text)
    except OSError as e:
        raise VfstraceError(f"{output}: cannot write: {e.strerror}") from None
    click.echo(f"wrote {output}", err=True)
