"""Many hosts' traces at once: `vfstrace fleet` (one table) and `vfstrace sql` (DuckDB SQL over them).

Why a package of its own: a fleet is many traces judged alike, locally or
on a Dask cluster, and the per-trace work (`row.py`) must be one function
both can run. `paths.py` turns the command line into traces, `opened.py`
opens one trace (checked as `load()` checks it) for DuckDB and the
part-by-part correlator, `table.py` renders the rows, `cluster.py` sends
the rows' work to a Dask scheduler, `sql.py` is `vfstrace sql`.
"""
