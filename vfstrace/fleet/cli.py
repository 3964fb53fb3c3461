"""`vfstrace fleet`: one table over many hosts' traces, locally or on a Dask cluster."""

from __future__ import annotations

import click

from vfstrace.errors import MissingDependency, TraceFormatError
from vfstrace.options import Duration


def need_duckdb() -> None:
    try:
        import duckdb  # noqa: F401
    except ImportError:
        raise MissingDependency("this command needs DuckDB: pip install 'vfstrace[fleet]'") from None


@click.command("fleet")
@click.argument("traces", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--scheduler", metavar="tcp://HOST:PORT",
              help="Run one task per trace on this dask.distributed scheduler; the workers must read the "
                   "traces under the same paths.")
@click.option("--connect-timeout", "connect_s", type=Duration(0, 600), default=10, show_default=True,
              help="Seconds to keep trying to reach --scheduler.")
def fleet_cmd(traces, as_json, scheduler, connect_s):
    """One table over many traces: host, kernel, tier, span, verdicts, races, lost events.

    TRACES are trace files or directories, directories holding traces, or
    globs. A trace that cannot be read gets a line saying why, the others
    are still reported, and the exit status is then 3.

    \b
    Examples:
      vfstrace fleet hosts/
      vfstrace fleet 'hosts/*.vft' --json
      vfstrace fleet --scheduler tcp://10.0.0.5:8786 /shared/traces/
    """
    from vfstrace.fleet.paths import expand_traces
    from vfstrace.fleet.table import render_json, render_text

    need_duckdb()
    paths = expand_traces(traces)
    if scheduler:
        from vfstrace.fleet.cluster import check_address, rows_on_cluster

        rows = rows_on_cluster(check_address(scheduler), paths, connect_s=connect_s)
    else:
        from vfstrace.fleet.row import fleet_row

        rows = [fleet_row(p) for p in paths]
    click.echo(render_json(rows) if as_json else render_text(rows), nl=as_json)
    failed = sum(1 for r in rows if r.get("error"))
    if failed:
        raise TraceFormatError(f"{failed} of {len(rows)} trace(s) could not be read (their rows say why)")
