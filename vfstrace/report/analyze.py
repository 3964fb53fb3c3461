"""`vfstrace analyze`: what a trace holds, and what the correlator made of it.

Everything here is computed with whole-column numpy/pandas operations (no
Python loop over events), so a ten-million-event trace is summarised in
seconds. The first line is the answer (vfstrace/report/answer.py): whether
a lookup/prune race was seen, on how many failed lookups, at what tier's
resolution; the tables after it are the evidence for it.
"""

from __future__ import annotations

import json
import logging

import click
import pyarrow as pa
import numpy as np
import pandas as pd

from vfstrace.correlate import SUSPECT_VERDICTS, correlate
from vfstrace.errors import VfstraceError
from vfstrace.events import Kind
from vfstrace.metrics import analyse_or_serve, options as metrics_options
from vfstrace.report.terminal import term, term_tree
from vfstrace.report.counts import (  # noqa: F401 (MAX_RATE_BUCKETS: part of this module's interface)
    MAX_RATE_BUCKETS,
    RateCounts,
    TraceCounts,
    arrow_strings,
    nice_width_ns,
    rate_width_ns,
)

# Verdicts in the order a reader should see them: the suspects (most
# alarming first), then the verdicts that clear a lookup.
VERDICT_ORDER = SUSPECT_VERDICTS + ("explained", "absent")
NOT_COMPUTED = "verdicts not computed (--no-verdicts)"
log = logging.getLogger("vfstrace.report")



def verdict_rank(verdicts):
    """Sort key for verdict strings: VERDICT_ORDER first, unknown ones after."""
    order = {v: i for i, v in enumerate(VERDICT_ORDER)}
    return verdicts.map(lambda s: order.get(s, len(order)))


def order_suspects(verdicts):
    """Suspect rows (SUSPECT_VERDICTS), most alarming first, then by time."""
    if verdicts is None or not len(verdicts):
        return verdicts
    s = verdicts[verdicts["verdict"].isin(SUSPECT_VERDICTS)]
    if not len(s):
        return s
    s = s.assign(_rank=verdict_rank(s["verdict"]))
    return s.sort_values(["_rank", "ts_ns", "event_id"], kind="stable").drop(columns="_rank")


def _evidence_list(v) -> list[int]:
    if v is None:
        return []
    try:
        return [int(x) for x in v]
    except TypeError:
        return [int(v)]


def _rate(ts: np.ndarray, kind: np.ndarray, ret: np.ndarray, *, target: int | None = None) -> dict:
    """Events, lookups, prunes, -ENOENT and lost per time bucket.

    Whole-second buckets by default (the text table and --json); with
    ``target``, about that many buckets of a round width (the HTML chart, so
    a 2 s trace gets 40 buckets of 50 ms rather than three of a second).
    """
    valid = ts > 0
    if not valid.any():
        return {"bucket_seconds": 1, "start_ns": 0, "buckets": []}
    t0, t1 = int(ts[valid].min()), int(ts[valid].max())
    r = RateCounts(t0, rate_width_ns(t0, t1, target))
    r.add(ts, kind, ret)
    return r.result()


def rate_chart(df, target: int = 60) -> dict:
    """The rate table in about ``target`` round buckets, for a chart."""
    return _rate(df["ts_ns"].to_numpy(), df["kind"].to_numpy(), df["ret"].to_numpy(), target=target)


def summarize(df, meta: dict | None = None, *, verdicts=None, verdict_note: str | None = None, top: int = 10) -> dict:
    """A JSON-ready summary of a trace (and of its verdicts, if given)."""
    meta = meta if meta is not None else dict(df.attrs.get("meta") or {})
    kind = df["kind"].to_numpy()
    ts = df["ts_ns"].to_numpy()
    ret = df["ret"].to_numpy()
    c = TraceCounts()
    c.add(kind, ts, ret, df["flags"].to_numpy(), df["cpu"].to_numpy(),
          lambda col, m: df[col].to_numpy(dtype=object)[m].tolist())
    return c.summary(meta, _rate(ts, kind, ret), summarize_verdicts(verdicts, verdict_note, top=top), top)


class VerdictTally:
    """Verdict counts and the first ``top`` suspects, added frame by frame (memory: ``top`` rows)."""

    def __init__(self, top: int = 10):
        self.top = top
        self.counts: dict[str, int] = {}
        self.suspects = None
        self.suspects_total = 0

    def add(self, verdicts) -> "VerdictTally":
        if verdicts is None or not len(verdicts):
            return self
        # Judged lookups, not records: a folded record counts its repeats.
        by = (verdicts.groupby("verdict", sort=False)["count"].sum() if "count" in verdicts.columns
              else verdicts["verdict"].value_counts())
        for k, c in by.items():
            self.counts[k] = self.counts.get(k, 0) + int(c)
        sus = order_suspects(verdicts)
        self.suspects_total += len(sus)
        if len(sus):
            # order_suspects() is a total order (rank, ts, event id): the first
            # ``top`` of the union are the first ``top`` of the firsts.
            both = sus if self.suspects is None else pd.concat([self.suspects, sus], ignore_index=True)
            self.suspects = order_suspects(both).head(self.top)
        return self

    def result(self, note: str | None = None) -> dict:
        counts = {k: self.counts[k] for k in sorted(self.counts, key=lambda s: (VERDICT_ORDER + (s,)).index(s))}
        rows = []
        if self.suspects is not None:
            for r in self.suspects.itertuples(index=False):
                rows.append(
                    {
                        "event_id": int(r.event_id),
                        "verdict": str(r.verdict),
                        "ts_ns": int(r.ts_ns),
                        "tid": int(r.tid),
                        "comm": str(r.comm),
                        "dentry": f"{int(r.dentry):#x}",
                        "name": str(r.name),
                        "path": str(getattr(r, "path", "") or ""),
                        "evidence": _evidence_list(r.evidence),
                        "reason": str(r.reason),
                    }
                )
        return {"available": True, "note": note, "counts": counts, "suspects_total": int(self.suspects_total),
                "suspects": rows}


def summarize_verdicts(verdicts, note: str | None = None, *, top: int = 10) -> dict:
    if verdicts is None:
        return {"available": False, "note": note or NOT_COMPUTED, "counts": {}, "suspects": []}
    return VerdictTally(top).add(verdicts).result(note)


def _table(rows, headers) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def render_text(s: dict) -> str:
    out = [s["answer"], ""]
    t = s["trace"]
    out.append(
        f"trace: {s['events']:,} events over {s['duration_s']:.3f} s; tier {t.get('tier') or '?'}, "
        f"kernel {t.get('kernel_release') or '?'}, host {t.get('host') or '?'}"
    )
    if t.get("workload"):
        out.append(f"workload: {t['workload']}")
    if not t.get("closed"):
        out.append("NOTE: the recording did not finish cleanly; events after its last flush are missing")
    for note in s["notes"]:
        if "closed=false" not in note:
            out.append(f"note: {note}")
    lost = s["lost"]
    out.append("")
    if lost["total"]:
        per = ", ".join(f"cpu{c}: {n:,}" for c, n in lost["per_cpu"].items())
        out.append(f"!!! LOST EVENTS: {lost['total']:,} dropped by the kernel ({per}).")
        out.append("!!! Verdicts near a loss may rest on missing events; enlarge --ring-pages or trace less (-p, -c, --path-prefix).")
    else:
        out.append("lost events: 0")
    out.append("")
    out.append("events by kind")
    out.append(_table([(k, f"{c:,}") for k, c in s["by_kind"].items()], ["kind", "count"]))
    lk = s["lookups"]
    out.append("")
    out.append("lookups")
    out.append(
        _table(
            [
                ("returns", f"{lk['returns']:,}"),
                ("-ENOENT", f"{lk['enoent']:,}"),
                ("-ENOENT in RCU walk", f"{lk['enoent_rcu']:,}"),
                ("-ECHILD (RCU walk retried)", f"{lk['echild']:,}"),
                ("d_seq changed at return", f"{lk['seq_changed']:,}"),
                ("d_seq re-check failed", f"{lk['seq_check_failed']:,}"),
            ],
            ["", "count"],
        )
    )
    rate = s["rate"]
    b = rate["buckets"]
    if b:
        out.append("")
        w = rate["bucket_seconds"]
        ev = np.array([x["events"] for x in b], dtype=np.float64) / w
        out.append(f"rate over time ({len(b)} buckets of {w} s): events/s min {ev.min():,.0f}, "
                   f"mean {ev.mean():,.0f}, max {ev.max():,.0f}")
        shown = b if len(b) <= 20 else sorted(sorted(b, key=lambda x: -x["events"])[:20], key=lambda x: x["t_s"])
        if len(b) > 20:
            out.append("(the 20 busiest buckets; --json has them all)")
        out.append(_table([(x["t_s"], f"{x['events']:,}", f"{x['lookups']:,}", f"{x['prunes']:,}", f"{x['enoent']:,}",
                            f"{x['lost']:,}") for x in shown],
                          ["t (s)", "events", "lookups", "prunes", "enoent", "lost"]))
    en = s["enoent"]
    out.append("")
    out.append(f"-ENOENT path syscalls: {en['syscalls']:,}")
    if en["top_paths"]:
        out.append(_table([(x["path"], f"{x['count']:,}") for x in en["top_paths"]], ["top -ENOENT paths", "count"]))
    if en["top_comms"]:
        out.append("")
        out.append(_table([(x["comm"], f"{x['count']:,}") for x in en["top_comms"]], ["top -ENOENT commands", "count"]))
    v = s["verdicts"]
    out.append("")
    if not v["available"]:
        out.append(f"verdicts: {v['note']}")
    else:
        if v.get("note"):
            out.append(f"verdicts: {v['note']}")
        out.append("verdicts")
        out.append(_table([(k, f"{c:,}") for k, c in v["counts"].items()] or [("(none)", "0")], ["verdict", "count"]))
        if v["suspects"]:
            out.append("")
            more = v["suspects_total"] - len(v["suspects"])
            out.append(f"suspects ({v['suspects_total']:,}" + (f", first {len(v['suspects'])} shown" if more else "") + ")")
            out.append(
                _table(
                    [
                        (x["verdict"], x["event_id"], x["tid"], x["comm"], x["dentry"], x["path"] or x["name"],
                         ",".join(map(str, x["evidence"][:8])) + ("..." if len(x["evidence"]) > 8 else ""),
                         x["reason"])
                        for x in v["suspects"]
                    ],
                    ["verdict", "event", "tid", "comm", "dentry", "path/name", "evidence", "reason"],
                )
            )
    return "\n".join(out) + "\n"


def analyze_trace(path, *, verdicts: bool = True, top: int = 10):
    """Load ``path`` and summarise it: (summary dict, DataFrame, verdicts or None)."""
    from vfstrace.store import load

    df = load(path)
    v = correlate(df) if verdicts else None
    return summarize(df, df.attrs["meta"], verdicts=v, verdict_note=None if verdicts else NOT_COMPUTED, top=top), df, v


# Columns the part-by-part summary counts, and what its first pass reads.
_COUNT_COLUMNS = ("event_id", "ts_ns", "kind", "ret", "flags", "cpu", "comm", "path")
_FIRST_PASS = ("event_id", "ts_ns", "kind", "ret")


class FirstPass:
    """What the later passes over a trace directory's parts must know beforehand, read on four numeric columns.

    Why: the part-by-part correlator (vfstrace/correlate/parts.py) needs,
    before its first part, that event ids rise, how far timestamps run out
    of order and the losses no LOST record places; the rate tables need the
    time span. Each part's id and time span (``spans``) let a later pass
    that wants a few events (a report's timelines, a selftest's racing
    lookups) read only the parts that can hold them.
    """

    def __init__(self, path, meta: dict, files: list):
        from vfstrace.correlate.parts import Disorder

        self.path, self.meta, self.files = path, meta, files
        self.order = Disorder()
        self.placed = 0  # losses the LOST records place
        self.t_min = self.t_max = None  # over valid stamps (ts > 0)
        self.ts_lo = self.ts_hi = None  # over every stamp
        # Per part: first and last event id, least and largest stamp (empty part: 1, 0, 1, 0: holds nothing).
        self._spans: list[tuple[int, int, int, int]] = []
        self.events = 0

    @property
    def spans(self) -> np.ndarray:
        return np.array(self._spans, dtype=np.uint64).reshape(-1, 4)

    def add(self, t: pa.Table) -> bool:
        """Take the next part; False once ids stop rising in file order (the trace must be loaded whole)."""
        kind, ret = t.column("kind").to_numpy(), t.column("ret").to_numpy()
        ts, ids = t.column("ts_ns").to_numpy(), t.column("event_id").to_numpy()
        self.order.add(ids, ts)
        if not self.order.ids_rise:
            return False
        self.events += len(ids)
        span = (1, 0, 1, 0)
        if len(ids):
            lo, hi = int(ts.min()), int(ts.max())
            span = (int(ids[0]), int(ids[-1]), lo, hi)
            self.ts_lo = lo if self.ts_lo is None else min(self.ts_lo, lo)
            self.ts_hi = hi if self.ts_hi is None else max(self.ts_hi, hi)
        self._spans.append(span)
        valid = ts[ts > 0]
        if len(valid):
            self.t_min = int(valid.min()) if self.t_min is None else min(self.t_min, int(valid.min()))
            self.t_max = int(valid.max()) if self.t_max is None else max(self.t_max, int(valid.max()))
        lost = kind == int(Kind.LOST)
        if lost.any():
            self.placed += int(np.clip(ret[lost], 0, None).sum())
        return True

    def rate(self, target: int | None = None) -> RateCounts:
        """An empty rate table over the trace's valid stamps, as _rate() buckets them."""
        t0, t1 = self.t_min or 0, self.t_max or 0
        return RateCounts(t0, rate_width_ns(t0, t1, target))

    def unplaced_lost(self) -> int:
        from vfstrace.correlate.batch import unplaced

        return unplaced(self.meta.get("lost_total"), self.placed)

    def correlator(self, **kw):
        from vfstrace.correlate.parts import PartsCorrelator

        return PartsCorrelator(self.order, unplaced_lost=self.unplaced_lost(), **kw)

    def parts(self, columns, which=None):
        """The parts again (``which``: indices of some of them, in file order), ``columns`` read ahead."""
        from vfstrace.store.read import iter_parts, read_ahead

        files = self.files if which is None else [self.files[i] for i in which]
        return read_ahead(iter_parts(self.path, columns, files)[2])

    def holding(self, ids) -> np.ndarray:
        """Indices of the parts whose id span holds any of ``ids``."""
        ids, spans = np.unique(np.asarray(ids, dtype=np.uint64)), self.spans
        if not len(ids) or not len(spans):
            return np.zeros(0, dtype=np.int64)
        lo = np.searchsorted(ids, spans[:, 0], side="left")
        hi = np.searchsorted(ids, spans[:, 1], side="right")
        return np.flatnonzero(hi > lo)


def first_pass(path) -> FirstPass | None:
    """The first pass over ``path``'s parts; None when it must be loaded whole.

    That is a JSON Lines trace or a single Parquet part (no parts to read),
    or a trace whose event ids do not rise in file order (``load()`` sorts
    them; a pass part by part cannot).
    """
    from vfstrace.store.read import iter_parts

    it = iter_parts(path, _FIRST_PASS)
    if it is None:
        log.debug("%s: not a trace directory: loaded whole", term(str(path)))
        return None
    meta, files, parts = it
    first = FirstPass(path, meta, files)
    for t in parts:
        if not first.add(t):
            log.debug("%s: event ids do not rise in file order: loaded whole", term(str(path)))
            return None
    log.debug("%s: %d parts, read part by part (timestamps out of order by up to %d ns)", term(str(path)), len(files),
              first.order.disorder_ns)
    if first.order.lost:
        first.meta["notes"].append(
            f"ordering lost: {first.order.lost.events:,} event(s) lie more than {first.order.bound_ns / 1e9:.3g} s "
            "below events before them in the trace; verdicts near them are uncertain")
    return first


def count_parts(first: FirstPass, *, rates=(), tally: VerdictTally | None = None) -> TraceCounts:
    """The second pass: what summarize() counts, the rate tables ``rates``, and with ``tally`` the verdicts."""
    from vfstrace.correlate.parts import COLUMNS

    counts = TraceCounts()
    corr = first.correlator() if tally is not None else None
    for t in first.parts(tuple(dict.fromkeys(COLUMNS + _COUNT_COLUMNS)) if corr is not None else _COUNT_COLUMNS):
        kind, ts, ret = t.column("kind").to_numpy(), t.column("ts_ns").to_numpy(), t.column("ret").to_numpy()
        counts.add(kind, ts, ret, t.column("flags").to_numpy(), t.column("cpu").to_numpy(),
                   arrow_strings(t))
        for r in rates:
            r.add(ts, kind, ret)
        if corr is not None:
            tally.add(corr.feed(t.drop_columns(["cpu"])))
    if corr is not None:
        tally.add(corr.finish())
    return counts


def analyze_parts(path, *, verdicts: bool = True, top: int = 10) -> dict:
    """The summary analyze_trace() makes, read part by part: memory flat in the trace's size.

    Two passes over a trace directory's parts. The first (first_pass())
    reads four numeric columns for what the second must know beforehand:
    the time span (the rate table's start and width), and for the
    part-by-part correlator (vfstrace/correlate/parts.py) that event ids
    rise, how far timestamps run out of order, and the losses no LOST record
    places. The second (count_parts()) counts (TraceCounts), buckets and
    judges. A JSON Lines trace, a single part, or one whose ids do not rise
    in file order is loaded whole instead (analyze_trace()).
    """
    first = first_pass(path)
    if first is None:
        return analyze_trace(path, verdicts=verdicts, top=top)[0]
    rate = first.rate()
    tally = VerdictTally(top) if verdicts else None
    counts = count_parts(first, rates=(rate,), tally=tally)
    v = tally.result() if tally is not None else summarize_verdicts(None, NOT_COMPUTED)
    return counts.summary(first.meta, rate.result(), v, top)


@click.command("analyze")
@click.argument("trace", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 10_000), help="Rows in top-N tables.")
@click.option("--no-verdicts", is_flag=True, help="Skip the correlator (counts and rates only).")
@metrics_options("With --metrics: serve the trace's counts this long after the analysis (default: until a signal).")
def analyze(trace, as_json, top, no_verdicts, metrics_spec, linger):
    """Summarise a trace: counts, rates, lost events, -ENOENT hot spots, verdicts.

    \b
    Examples:
      vfstrace analyze run.vft
      vfstrace analyze run.vft --json | jq .verdicts.counts
      vfstrace analyze run.vft --metrics 9464 --linger 60   # its counts to Prometheus
    """
    def run():
        s = analyze_parts(trace, verdicts=not no_verdicts, top=top)
        if as_json:
            click.echo(json.dumps(s, indent=1, default=_json_default))
        else:
            click.echo(render_text(term_tree(s)), nl=False)  # trace text escaped for the terminal

    analyse_or_serve(trace, metrics_spec, linger, run)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise VfstraceError(f"cannot encode {type(o).__name__} as JSON")
