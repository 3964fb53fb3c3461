"""Trace files: crash-safe recording and loading into pandas.

A trace is a directory (suffix ``.vft`` by convention) holding

* ``_meta.json`` - the recording's metadata, rewritten atomically (write a
  temporary file, fsync, rename, fsync the directory) when the trace is
  created, at every flush and at close;
* ``part-000000.parquet``, ``part-000001.parquet``, ... - one Parquet file
  per flush, in the exact schema of :data:`vfstrace.events.ARROW_SCHEMA`,
  each written to ``.part-NNNNNN.parquet.tmp``, fsynced and renamed into
  place.

The metadata and temporary names start with "_" and "." because pyarrow
and pandas skip such files when they read a directory: the trace directory
itself is a Parquet dataset (``pandas.read_parquet("t.vft")``,
``pyarrow.dataset.dataset("t.vft")``), and DuckDB reads
``read_parquet('t.vft/*.parquet')``.

Why this shape: a rename is atomic, so every part file that exists is
complete, and a SIGKILL or crash loses at most the chunk that was still in
memory. Parquet parts are read directly by pandas, pyarrow and DuckDB
(``read_parquet('t.vft/*.parquet')``) with no vfstrace code at all.

A trace can also be a JSON Lines file (``.jsonl``): the first line is
``{"vfstrace_meta": {...}}``, then one JSON object per event. That is the
form people and tests write by hand; ``vfstrace convert`` turns one form into
the other. The full format is in docs/trace-format.md.

Event ids: the writer numbers events 1, 2, 3, ... in arrival order across
the whole trace. A row that arrives with a non-zero ``event_id`` keeps it
(the simulator and converted traces carry their own ids), and the writer's
counter continues after the largest id it has seen, so ids it assigns never
collide with ids written before them. Ids a caller brings must lie above
every id already in the trace (the writer raises otherwise): live runs are
numbered by vfstrace.recorder alone, LOST rows included.
"""

from __future__ import annotations

from vfstrace.events import ARROW_SCHEMA
from vfstrace.store.files import META_FILE, PART_GLOB
from vfstrace.store.jsonl import write_jsonl
from vfstrace.store.read import load, load_table, read_meta
from vfstrace.store.writer import TraceWriter, save, to_table

__all__ = ["ARROW_SCHEMA", "META_FILE", "PART_GLOB", "TraceWriter", "load", "load_table", "read_meta", "save",
           "to_table", "write_jsonl"]
