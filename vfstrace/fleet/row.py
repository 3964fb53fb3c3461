"""One trace's fleet row: host, kernel, tier, span, failed lookups by verdict, races, lost events.

Why one function of a path: `fleet` runs it in its own process, trace after
trace, and `fleet --scheduler` ships it to Dask workers (one task a trace,
the verdicts computed where the trace's events are read); the rows are the
same either way. Counts by kind, the span and the LOST rows come from
DuckDB over the trace's Parquet parts; the verdicts from the part-by-part
correlator (vfstrace/correlate/parts.py) behind `analyze`, so memory is
flat in a trace's size. A trace that cannot be read gives a row holding its
one-line error instead: one bad trace among many hides no other host.
"""

from __future__ import annotations

import logging

from vfstrace.errors import VfstraceError
from vfstrace.events import Kind, kind_name
from vfstrace.store.files import _one_line

log = logging.getLogger("vfstrace.fleet")


def fleet_row(path) -> dict:
    """The row of the trace at ``path`` (see the module docstring); ``error`` set, and nothing else, if unreadable."""
    import duckdb

    try:
        return _row(path)
    except (VfstraceError, OSError, duckdb.Error) as e:
        log.debug("%s: not read", path, exc_info=True)
        return {"trace": str(path), "error": _one_line(e)}


def _row(path) -> dict:
    import duckdb

    from vfstrace.fleet.opened import OpenedTrace
    from vfstrace.report.analyze import VerdictTally
    from vfstrace.report.answer import tier_of
    from vfstrace.report.counts import merge_lost

    trace = OpenedTrace(path)
    with duckdb.connect(":memory:") as con:
        src = trace.source(con, "trace_events")
        by_kind = dict(con.execute(f"SELECT kind, count(*) FROM {src} GROUP BY kind").fetchall())
        t_min, t_max = con.execute(f"SELECT min(ts_ns), max(ts_ns) FROM {src} WHERE ts_ns > 0").fetchone()
        lost_rows = con.execute(f"SELECT cpu, sum(ret), count(*) FROM {src} WHERE kind = {int(Kind.LOST)} "
                                "GROUP BY cpu").fetchall()
    # top=1: the first suspect in order_suspects()' order, a race whenever there is one (races rank first).
    tally = VerdictTally(top=1)
    for v in trace.verdicts():
        tally.add(v)
    verdicts = tally.result()
    lost = merge_lost({int(c): int(n) for c, n, _ in lost_rows}, sum(int(r) for *_, r in lost_rows), trace.meta)
    meta = trace.meta
    first = next((s for s in verdicts["suspects"] if s["verdict"] == "race"), None)
    return {
        "trace": str(path),
        "error": None,
        "host": meta.get("host"),
        "kernel": meta.get("kernel_release"),
        "tier": tier_of(meta),
        "start_time": meta.get("start_time"),
        "span_s": round((int(t_max) - int(t_min)) / 1e9, 6) if t_min is not None else 0.0,
        "events": int(sum(by_kind.values())),
        "by_kind": {kind_name(int(k)): int(n) for k, n in sorted(by_kind.items())},
        "failed_lookups": int(sum(verdicts["counts"].values())),
        "verdicts": verdicts["counts"],
        "races": int(verdicts["counts"].get("race", 0)),
        "first_race": None if first is None else {
            "path": first["path"], "name": first["name"], "comm": first["comm"], "tid": first["tid"],
            "event_id": first["event_id"], "ts_ns": first["ts_ns"],
            "t_s": round((first["ts_ns"] - int(t_min or 0)) / 1e9, 6)},
        "lost": lost["total"],
        "closed": bool(meta.get("closed")),
        "notes": [n for n in meta.get("notes") or [] if isinstance(n, str)],
    }
