"""`vfstrace analyze`: what a trace holds, and what the correlator made of it.

Everything here is computed with whole-column numpy/pandas operations (no
Python loop over events), so a ten-million-event trace is summarised in
seconds. The first line is the answer (vfstrace/report/answer.py): whether
a lookup/prune race was seen, on how many failed lookups, at what tier's
resolution; the tables after it are the evidence for it.
"""

from __future__ import annotations

import json
import math

import click
import numpy as np

from vfstrace.correlate import SUSPECT_VERDICTS, correlate
from vfstrace.errors import VfstraceError
from vfstrace.events import ECHILD, ENOENT, Flag, Kind, kind_name
from vfstrace.report.terminal import term_tree
from vfstrace.report.answer import answer, first_paths, tier_of

# Verdicts in the order a reader should see them: the suspects (most
# alarming first), then the verdicts that clear a lookup.
VERDICT_ORDER = SUSPECT_VERDICTS + ("explained", "absent")
NOT_COMPUTED = "verdicts not computed (--no-verdicts)"

_LOOKUP_RETURNS = (int(Kind.WALK_RETURN), int(Kind.LOOKUP_RETURN))
_LOOKUP_ENTERS = (int(Kind.WALK_ENTER), int(Kind.LOOKUP_ENTER))
_PRUNE_KINDS = (int(Kind.PRUNE), int(Kind.UNHASH), int(Kind.IPUT), int(Kind.D_FREE))
# More buckets than this and the rate table widens its buckets (a bad
# timestamp in a hand-written trace should not make a billion-row table).
MAX_RATE_BUCKETS = 100_000


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


def _top(series, n: int, label: str) -> list[dict]:
    if not len(series):
        return []
    vc = series.value_counts(sort=True)
    return [{label: k, "count": int(c)} for k, c in vc.head(n).items()]


def nice_width_ns(span_ns: float, target: int) -> int:
    """A bucket width of 1, 2 or 5 x 10^k ns giving about ``target`` buckets over ``span_ns``."""
    want = max(span_ns / max(target, 1), 1.0)
    k = 10 ** int(math.floor(math.log10(want)))
    return int(next(m * k for m in (1, 2, 5, 10) if m * k >= want))


def _rate(ts: np.ndarray, kind: np.ndarray, ret: np.ndarray, *, target: int | None = None) -> dict:
    """Events, lookups, prunes, -ENOENT and lost per time bucket.

    Whole-second buckets by default (the text table and --json); with
    ``target``, about that many buckets of a round width (the HTML chart, so
    a 2 s trace gets 40 buckets of 50 ms rather than three of a second).
    """
    valid = ts > 0
    if not valid.any():
        return {"bucket_seconds": 1, "start_ns": 0, "buckets": []}
    t0 = int(ts[valid].min())
    span_ns = int(ts[valid].max()) - t0
    if target:
        width_ns = nice_width_ns(span_ns, target)
    else:
        width_ns = max(1, math.ceil((span_ns / 1e9 + 1) / MAX_RATE_BUCKETS)) * 1_000_000_000
    b = ((ts[valid] - np.uint64(t0)) // np.uint64(width_ns)).astype(np.int64)
    k = kind[valid]
    nb = int(b.max()) + 1
    total = np.bincount(b, minlength=nb)
    lookups = np.bincount(b, weights=np.isin(k, _LOOKUP_ENTERS), minlength=nb)
    prunes = np.bincount(b, weights=(k == int(Kind.PRUNE)), minlength=nb)
    enoent = np.bincount(
        b, weights=(ret[valid] == ENOENT) & np.isin(k, _LOOKUP_RETURNS + (int(Kind.PATH_SYSCALL),)), minlength=nb
    )
    lost = np.bincount(b, weights=np.where(k == int(Kind.LOST), ret[valid], 0), minlength=nb)
    whole = width_ns % 1_000_000_000 == 0
    width = width_ns // 1_000_000_000 if whole else width_ns / 1e9
    buckets = [
        {"t_s": i * width if whole else round(i * width, 9), "events": int(total[i]), "lookups": int(lookups[i]), "prunes": int(prunes[i]),
         "enoent": int(enoent[i]), "lost": int(lost[i])}
        for i in range(nb)
    ]
    return {"bucket_seconds": width, "start_ns": t0, "buckets": buckets}


def rate_chart(df, target: int = 60) -> dict:
    """The rate table in about ``target`` round buckets, for a chart."""
    return _rate(df["ts_ns"].to_numpy(), df["kind"].to_numpy(), df["ret"].to_numpy(), target=target)


def _lost(df, meta: dict) -> dict:
    k = df["kind"].to_numpy()
    m = k == int(Kind.LOST)
    rows = {}
    if m.any():
        cpu = df["cpu"].to_numpy()[m].astype(np.int64)
        cnt = df["ret"].to_numpy()[m].astype(np.int64)
        # not bincount: cpu may be any u32 (0xffffffff: drops on no known CPU, vfstrace.recorder)
        uniq, inv = np.unique(cpu, return_inverse=True)
        s = np.zeros(len(uniq), dtype=np.int64)
        np.add.at(s, inv, cnt)
        rows = {int(c): int(n) for c, n in zip(uniq, s) if n}
    from_meta = {int(c): int(n) for c, n in dict(meta.get("lost_per_cpu") or {}).items()}
    # The recorder writes each drop both ways (a LOST row and lost_per_cpu);
    # a trace cut down or written by hand may hold only one of them, so take
    # whichever saw more per CPU.
    per_cpu = {c: max(rows.get(c, 0), from_meta.get(c, 0)) for c in sorted(set(rows) | set(from_meta))}
    total = sum(per_cpu.values())
    return {"total": int(total), "per_cpu": {str(c): n for c, n in per_cpu.items()}, "records": int(m.sum())}


def summarize(df, meta: dict | None = None, *, verdicts=None, verdict_note: str | None = None, top: int = 10) -> dict:
    """A JSON-ready summary of a trace (and of its verdicts, if given)."""
    meta = meta if meta is not None else dict(df.attrs.get("meta") or {})
    kind = df["kind"].to_numpy()
    ts = df["ts_ns"].to_numpy()
    ret = df["ret"].to_numpy()
    flags = df["flags"].to_numpy()
    n = len(df)
    counts = np.bincount(kind.astype(np.int64), minlength=int(max(Kind)) + 1) if n else np.zeros(int(max(Kind)) + 1)
    by_kind = {kind_name(k): int(c) for k, c in enumerate(counts) if c}
    valid = ts[ts > 0]
    duration = (int(valid.max()) - int(valid.min())) / 1e9 if len(valid) else 0.0

    is_ret = np.isin(kind, _LOOKUP_RETURNS)
    sys_enoent = (kind == int(Kind.PATH_SYSCALL)) & (ret == ENOENT)
    lk_enoent = is_ret & (ret == ENOENT)
    lookups = {
        "returns": int(is_ret.sum()),
        "enoent": int(lk_enoent.sum()),
        "enoent_rcu": int((lk_enoent & ((flags & int(Flag.RCU)) != 0)).sum()),
        "echild": int((is_ret & (ret == ECHILD)).sum()),
        "seq_changed": int((is_ret & ((flags & int(Flag.SEQ_CHANGED)) != 0)).sum()),
        "seq_check_failed": int(((kind == int(Kind.SEQ_CHECK)) & (ret != 0)).sum()),
    }
    enoent_comm_mask = sys_enoent | lk_enoent
    summary = {
        "trace": {
            k: meta.get(k)
            for k in ("tier", "kernel_release", "host", "workload", "start_time", "end_time", "closed", "probes")
        },
        "notes": list(meta.get("notes") or []),
        "events": n,
        "duration_s": round(duration, 6),
        "by_kind": by_kind,
        "lost": _lost(df, meta),
        "rate": _rate(ts, kind, ret),
        "lookups": lookups,
        "prune_activity": {kind_name(k): int(counts[k]) for k in _PRUNE_KINDS},
        "enoent": {
            "syscalls": int(sys_enoent.sum()),
            "top_paths": _top(df["path"][sys_enoent], top, "path"),
            "top_comms": _top(df["comm"][enoent_comm_mask], top, "comm"),
        },
    }
    summary["verdicts"] = v = summarize_verdicts(verdicts, verdict_note, top=top)
    summary["answer"] = answer(v["counts"] if v["available"] else None, tier_of(meta),
                               lost=summary["lost"]["total"], first=first_paths(v["suspects"]), events=n)
    return summary


def summarize_verdicts(verdicts, note: str | None = None, *, top: int = 10) -> dict:
    if verdicts is None:
        return {"available": False, "note": note or NOT_COMPUTED, "counts": {}, "suspects": []}
    vc = verdicts["verdict"].value_counts() if len(verdicts) else {}
    counts = {k: int(vc[k]) for k in sorted(vc.keys(), key=lambda s: (VERDICT_ORDER + (s,)).index(s))} if len(vc) else {}
    sus = order_suspects(verdicts)
    rows = []
    if sus is not None and len(sus):
        for r in sus.head(top).itertuples(index=False):
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
    return {
        "available": True,
        "note": note,
        "counts": counts,
        "suspects_total": int(len(sus)) if sus is not None else 0,
        "suspects": rows,
    }


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


@click.command("analyze")
@click.argument("trace", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 10_000), help="Rows in top-N tables.")
@click.option("--no-verdicts", is_flag=True, help="Skip the correlator (counts and rates only).")
def analyze(trace, as_json, top, no_verdicts):
    """Summarise a trace: counts, rates, lost events, -ENOENT hot spots, verdicts.

    \b
    Examples:
      vfstrace analyze run.vft
      vfstrace analyze run.vft --json | jq .verdicts.counts
    """
    s, _, _ = analyze_trace(trace, verdicts=not no_verdicts, top=top)
    if as_json:
        click.echo(json.dumps(s, indent=1, default=_json_default))
    else:
        click.echo(render_text(term_tree(s)), nl=False)  # trace text escaped for the terminal


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise VfstraceError(f"cannot encode {type(o).__name__} as JSON")
