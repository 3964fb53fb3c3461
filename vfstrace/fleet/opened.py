"""One trace opened for DuckDB and for the part-by-part correlator, checked as `load()` checks it.

Why this order: DuckDB reads Parquet files by name and trusts them, while
a trace is data someone else may have made (a FIFO where a part belongs, a
flipped byte). The first pass (vfstrace.report.analyze.first_pass()) reads
every part through vfstrace's own checks (regular file, page checksums,
schema, listing) before DuckDB is pointed at the same files, so a hostile
trace fails with vfstrace's one-line error, not DuckDB's. A trace the first
pass cannot read part by part (JSON Lines, one Parquet file, ids not rising
in file order) is loaded whole with ``load()`` and handed to DuckDB as a
frame; those are the small ones.
"""

from __future__ import annotations

from pathlib import Path

from vfstrace.events import ARROW_SCHEMA, Kind, kind_name


def sql_text(s: str) -> str:
    """``s`` as a DuckDB string literal (views cannot take parameters)."""
    return "'" + str(s).replace("'", "''") + "'"


# kind as its name, in SQL: events.kind_name() for every Kind.
KIND_NAME_SQL = "CASE kind " + " ".join(f"WHEN {int(k)} THEN {sql_text(kind_name(int(k)))}" for k in Kind) + \
    " ELSE 'kind' || kind END"


class OpenedTrace:
    """``meta`` (with the loader's notes), ``files`` (the checked parts), ``source()`` and ``verdicts()``."""

    def __init__(self, path):
        from vfstrace.report.analyze import first_pass

        self.path = str(path)
        self.first = first_pass(path)
        self.frame = None
        if self.first is None:
            from vfstrace.store import load

            self.frame = load(path)
            self.meta = self.frame.attrs["meta"]
            self.files: list[str] = []
        else:
            self.meta = self.first.meta
            self.files = [str(Path(p).resolve()) for p in self.first.files]

    def source(self, con, name: str) -> str:
        """A FROM clause reading this trace's events in ``con`` (``name``: the frame's name there, if loaded whole)."""
        if self.frame is not None:
            con.register(name, self.frame)
            return name
        if not self.files:
            con.register(name, ARROW_SCHEMA.empty_table())
            return name
        return f"read_parquet([{', '.join(sql_text(f) for f in self.files)}], union_by_name = true)"

    def verdicts(self):
        """The batch verdicts, frame by frame: part by part (memory flat in the trace), or at once if loaded whole."""
        if self.frame is not None:
            from vfstrace.correlate import correlate

            yield correlate(self.frame)
            return
        from vfstrace.correlate.parts import COLUMNS

        corr = self.first.correlator()
        for t in self.first.parts(COLUMNS):
            yield corr.feed(t)
        yield corr.finish()
