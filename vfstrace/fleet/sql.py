"""`vfstrace sql`: the events and verdicts of many traces as DuckDB views, for ad-hoc questions.

Views: ``events`` (every column of the event schema, plus ``trace``, the
path the trace was named by, and ``kind_name``) and ``verdicts`` (the batch
verdicts, computed through the part-by-part correlator, plus ``trace``;
computed only when the query names them, since judging costs a pass over
every trace).

Why the query can only read: it runs in an in-memory DuckDB that may open
the trace's part files and nothing else (``allowed_paths``, with external
access then switched off and the configuration locked), so ``COPY ... TO``,
``ATTACH``, reading other files or installing extensions fail. Tables the
query creates live in memory and go with the process. The SQL is the
user's own and runs with the user's rights.
"""

from __future__ import annotations

import json
import math

import click

from vfstrace.errors import VfstraceError
from vfstrace.fleet.cli import need_duckdb
from vfstrace.fleet.opened import KIND_NAME_SQL, OpenedTrace, sql_text
from vfstrace.report.terminal import term


def _verdict_frame(trace: OpenedTrace):
    import pandas as pd

    frames = [v for v in trace.verdicts() if v is not None and len(v)]
    if not frames:
        return None
    v = pd.concat(frames, ignore_index=True)
    # Evidence as lists of ints: DuckDB reads them as BIGINT[] (numpy arrays in an object column it cannot).
    v["evidence"] = [[int(x) for x in (e if e is not None else [])] for e in v["evidence"]]
    v.insert(0, "trace", trace.path)
    return v


def connect(paths: list[str], *, with_verdicts: bool):
    """An in-memory DuckDB with the ``events`` (and ``verdicts``) views over ``paths``, locked to reading them."""
    import duckdb
    import pandas as pd

    con = duckdb.connect(":memory:")
    selects, verdicts, files = [], [], []
    for i, p in enumerate(paths):
        trace = OpenedTrace(p)
        files += trace.files
        src = trace.source(con, f"_trace_{i}")
        selects.append(f"SELECT {sql_text(p)} AS trace, *, {KIND_NAME_SQL} AS kind_name FROM {src}")
        if with_verdicts:
            v = _verdict_frame(trace)
            if v is not None:
                verdicts.append(v)
    con.execute("CREATE VIEW events AS " + " UNION ALL BY NAME ".join(selects))
    if with_verdicts:
        frame = pd.concat(verdicts, ignore_index=True) if verdicts else pd.DataFrame(
            {"trace": pd.Series(dtype=object), "event_id": pd.Series(dtype="uint64"),
             "verdict": pd.Series(dtype=object)})
        con.register("verdicts", frame)
    con.execute(f"SET allowed_paths = [{', '.join(sql_text(f) for f in files)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return term(v if isinstance(v, str) else str(v))


def _json_value(o):
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    return str(o)


@click.command("sql")
@click.argument("query")
@click.argument("traces", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as a JSON list of rows.")
def sql_cmd(query, traces, as_json):
    """Run a DuckDB SQL query over the views `events` and `verdicts` of TRACES.

    Both views have a `trace` column (the trace's path as given). The query
    may read those views only: no files are written, none other read.

    \b
    Examples:
      vfstrace sql "SELECT trace, kind_name, count(*) FROM events GROUP BY ALL ORDER BY ALL" hosts/
      vfstrace sql "SELECT trace, path, ts_ns FROM verdicts WHERE verdict = 'race'" 'hosts/*.vft' --json
    """
    import duckdb
    from tabulate import tabulate

    from vfstrace.fleet.paths import expand_traces

    need_duckdb()
    paths = expand_traces(traces)
    con = connect(paths, with_verdicts="verdicts" in query.lower())
    try:
        cur = con.execute(query)
        if cur.description is None:
            raise VfstraceError("sql: the query returned no result (give a SELECT)", exit_code=2)
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()
    except duckdb.Error as e:
        lines = str(e).strip().splitlines()
        raise VfstraceError(f"sql: {lines[0] if lines else type(e).__name__}", exit_code=2) from None
    finally:
        con.close()
    if as_json:
        click.echo(json.dumps([dict(zip(cols, r)) for r in rows], indent=1, default=_json_value))
    else:
        click.echo(tabulate([[_cell(v) for v in r] for r in rows], headers=[term(c) for c in cols],
                            tablefmt="simple", disable_numparse=True))
