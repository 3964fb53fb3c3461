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
import pyarrow as pa

from vfstrace.correlate import SUSPECT_VERDICTS, correlate
from vfstrace.errors import VfstraceError
from vfstrace.events import ARROW_SCHEMA, Flag, kind_name, op_name
from vfstrace.report.analyze import (
    VerdictTally,
    _evidence_list,
    _json_default,
    count_parts,
    first_pass,
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


def _suspect(row, tl, parent: int) -> dict:
    evidence = set(_evidence_list(row["evidence"]))
    return {
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


def _report(summary: dict, chart: dict, suspects: list, total: int, window_us: int) -> dict:
    return {
        "summary": summary,
        "chart": chart,
        "suspects": suspects,
        "suspects_total": int(total),
        "suspect_verdicts": list(SUSPECT_VERDICTS),
        "window_us": window_us,
    }


def build_report(df, verdicts, meta: dict | None = None, *, verdict_note=None, limit: int = 20,
                 window_us: int = WINDOW_US) -> dict:
    """Everything the three output formats show, as one JSON-ready dict."""
    meta = meta if meta is not None else dict(df.attrs.get("meta") or {})
    summary = summarize(df, meta, verdicts=verdicts, verdict_note=verdict_note)
    suspects = []
    sus = order_suspects(verdicts) if verdicts is not None else None
    if sus is not None and len(sus):
        for _, row in sus.head(limit).iterrows():
            tl, parent = suspect_timeline(df, row, window_us=window_us)
            suspects.append(_suspect(row, tl, parent))
    return _report(summary, rate_chart(df), suspects, len(sus) if sus is not None else 0, window_us)


# ---------------------------------------------------------------- part by part


_TS_MAX = int(np.iinfo(np.uint64).max)


class _Picks:
    """One suspect's timeline rows, gathered part by part: its cited events and the ``max_events`` nearest in time.

    Why bounded: a busy dentry can have more events in the window than a
    timeline shows; suspect_timeline() keeps the ``max_events`` nearest the
    judged event (ties: the lower event id) and every cited event, and the
    nearest of all the parts are the nearest of each part's nearest.
    """

    def __init__(self, ts_ns: int, max_events: int):
        self.ts_ns, self.max_events = int(ts_ns), int(max_events)
        self.tables: list[pa.Table] = []
        self.rows = 0

    def add(self, t: pa.Table, rows: np.ndarray, cited: np.ndarray) -> None:
        if not len(rows):
            return
        t = t.take(pa.array(rows))
        self.tables.append(t.append_column("_cited", pa.array(cited[rows])))
        self.rows += len(rows)
        if self.rows > 2 * self.max_events + 64:
            self._prune()

    def _prune(self) -> None:
        t = pa.concat_tables(self.tables)
        ts = t.column("ts_ns").to_numpy().astype(np.int64)
        ids = t.column("event_id").to_numpy()
        cited = t.column("_cited").to_numpy(zero_copy_only=False)
        if len(ts) > self.max_events:
            near = np.lexsort((ids, np.abs(ts - self.ts_ns)))[: self.max_events]
            keep = cited.copy()
            keep[near] = True
            t = t.filter(pa.array(keep))
        self.tables, self.rows = [t], t.num_rows

    def frame(self):
        """The rows, in (ts, event id) order, as suspect_timeline() returns them."""
        from vfstrace.correlate.parts import to_frame

        if not self.tables:
            return to_frame(ARROW_SCHEMA.empty_table())
        self._prune()
        t = self.tables[0].drop_columns(["_cited"])
        t = t.take(pa.array(np.lexsort((t.column("event_id").to_numpy(), t.column("ts_ns").to_numpy()))))
        return to_frame(t)


class PartsTimelines:
    """suspect_timeline() for many suspects over a trace read part by part (see report_parts()).

    Three short passes, each reading only the columns and parts it needs:
    the cited events (parts whose id span holds them) for the window and
    the parent, the first event naming a parent for a dentry whose judged
    event names none (from the trace's start until found), and the rows
    themselves (parts whose time span meets a window, or holding a cited
    event).
    """

    def __init__(self, first, sus, *, window_us: int = WINDOW_US, max_events: int = MAX_TIMELINE):
        self.first, self.w = first, int(window_us) * 1000
        self.max_events = max_events
        self.rows = [r for _, r in sus.iterrows()] if sus is not None else []
        self.judged = np.array([int(r["event_id"]) for r in self.rows], dtype=np.uint64)
        self.dentry = np.array([int(r["dentry"]) for r in self.rows], dtype=np.uint64)
        self.cited = [np.array(sorted(set(_evidence_list(r["evidence"])) | {int(r["event_id"])}), dtype=np.uint64)
                      for r in self.rows]

    def read(self) -> list[tuple]:
        """(timeline DataFrame, parent) per suspect, as suspect_timeline() gives them."""
        if not self.rows:
            return []
        lo, hi, parent = self._windows()
        picks = self._pick(lo, hi, parent)
        return [(p.frame(), int(par)) for p, par in zip(picks, parent)]

    def _windows(self):
        all_cited = np.unique(np.concatenate(self.cited))
        found_ts, found_parent = {}, {}
        for t in self.first.parts(("ts_ns", "parent"), self.first.holding(all_cited)):
            ids = t.column("event_id").to_numpy()
            m = np.isin(ids, all_cited)
            if m.any():
                for i, ts, par in zip(ids[m].tolist(), t.column("ts_ns").to_numpy()[m].tolist(),
                                      t.column("parent").to_numpy()[m].tolist()):
                    found_ts[i], found_parent[i] = ts, par
        n = len(self.rows)
        lo, hi = np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=np.uint64)
        parent = np.zeros(n, dtype=np.uint64)
        for k, r in enumerate(self.rows):
            t_ev = [found_ts[i] for i in self.cited[k].tolist() if i in found_ts]
            t_lo = min(t_ev) if t_ev else int(r["ts_ns"])
            t_hi = max(t_ev) if t_ev else int(r["ts_ns"])
            # Clamped to the stamps' range: a window past the largest stamp holds what one up to it does.
            lo[k], hi[k] = max(t_lo - self.w, 0), min(t_hi + self.w, _TS_MAX)
            parent[k] = found_parent.get(int(self.judged[k]), 0)
        need = (parent == 0) & (self.dentry != 0)
        if need.any():
            first_parent = self._first_parents(np.unique(self.dentry[need]))
            for k in np.flatnonzero(need):
                parent[k] = first_parent.get(int(self.dentry[k]), 0)
        return lo, hi, parent

    def _first_parents(self, dentries: np.ndarray) -> dict:
        """For each of ``dentries``, the parent the first event on it naming one names (event-id order)."""
        out: dict = {}
        for t in self.first.parts(("dentry", "parent")):
            d, par = t.column("dentry").to_numpy(), t.column("parent").to_numpy()
            m = np.isin(d, dentries) & (par != 0)
            if m.any():
                dd, pp = d[m], par[m]
                u, at = np.unique(dd, return_index=True)
                for x, p in zip(u.tolist(), pp[at].tolist()):
                    out.setdefault(x, p)
                if len(out) == len(dentries):
                    break
        return out

    def _pick(self, lo, hi, parent) -> list:
        from vfstrace.events import COLUMNS

        first = self.first
        spans = first.spans
        picks = [_Picks(int(r["ts_ns"]), self.max_events) for r in self.rows]
        cited_in: dict[int, list[int]] = {}  # part -> suspects citing an event it holds
        for k, c in enumerate(self.cited):
            for i in first.holding(c).tolist():
                cited_in.setdefault(i, []).append(k)

        def meets(i: int) -> np.ndarray:
            """The suspects whose window meets part ``i``'s time span."""
            if spans[i, 0] > spans[i, 1]:  # an empty part
                return np.zeros(len(lo), dtype=bool)
            return (spans[i, 2] <= hi) & (spans[i, 3] >= lo)

        which = [i for i in range(len(spans)) if i in cited_in or meets(i).any()]
        names = [str(r.get("name") or "") for r in self.rows]
        for i, t in zip(which, first.parts(COLUMNS, which)):
            ids, ts = t.column("event_id").to_numpy(), t.column("ts_ns").to_numpy()
            dentry, par = t.column("dentry").to_numpy(), t.column("parent").to_numpy()
            near, citing = meets(i), set(cited_in.get(i, ()))
            for k in sorted(set(np.flatnonzero(near).tolist()) | citing):
                d, p = self.dentry[k], parent[k]
                ev = np.isin(ids, self.cited[k]) if k in citing else np.zeros(len(ids), dtype=bool)
                on = np.zeros(len(ids), dtype=bool)
                if near[k]:
                    in_win = (ts >= lo[k]) & (ts <= hi[k])
                    if d:
                        on |= (dentry == d) | (par == d)
                    if p:
                        on |= dentry == p
                        if names[k]:
                            on |= self._same_name(t, (par == p) & in_win & ~on, names[k])
                    on &= in_win
                picks[k].add(t, np.flatnonzero(on | ev), ev)
        return picks

    @staticmethod
    def _same_name(t: pa.Table, rows: np.ndarray, name: str) -> np.ndarray:
        """``rows`` (a mask) narrowed to the rows whose name is ``name``; strings decoded on those rows only."""
        at = np.flatnonzero(rows)
        out = np.zeros(len(rows), dtype=bool)
        if len(at):
            got = np.array(t.column("name").take(pa.array(at)).to_pylist(), dtype=object)
            out[at[got == name]] = True
        return out


def report_parts(path, *, limit: int = 20, window_us: int = WINDOW_US) -> dict | None:
    """build_report() of a whole trace, read part by part: memory flat in the trace's size.

    Why: a trace of 10^8 events does not fit in memory as one frame, and a
    report shows a few suspects. The first two passes are analyze's
    (first_pass(), count_parts()): the counts, both rate tables, and the
    verdicts of which only the counts and the first suspects (``limit``, and
    the ten the summary lists) are kept; PartsTimelines then reads what
    those suspects' timelines show. None where analyze loads the trace
    whole (first_pass()): then so does the caller.
    """
    first = first_pass(path)
    if first is None:
        return None
    rate, chart = first.rate(), first.rate(target=60)
    tally = VerdictTally(max(limit, 10))
    counts = count_parts(first, rates=(rate, chart), tally=tally)
    v = tally.result()
    v["suspects"] = v["suspects"][:10]  # summarize()'s top 10: the first ten of a total order
    summary = counts.summary(first.meta, rate.result(), v, 10)
    sus = tally.suspects.head(limit) if tally.suspects is not None else None
    tls = PartsTimelines(first, sus, window_us=window_us)
    suspects = [_suspect(row, tl, parent) for row, (tl, parent) in zip(tls.rows, tls.read())]
    return _report(summary, chart.result(), suspects, tally.suspects_total, window_us)


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
    rep = report_parts(trace, limit=limit, window_us=window_us)
    if rep is None:  # a JSON Lines trace, one Parquet part, ids not rising: loaded whole
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
