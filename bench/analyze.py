#!/usr/bin/env python3
"""Measure trace write, load and analyze speed, and peak memory.

Builds an N-event synthetic trace shaped like a busy recording (walks and
lookups on a few thousand dentries, pruning, path syscalls with some
-ENOENT, a few lost-event records), writes it with TraceWriter in the
chunks a live recorder would use, loads it back and summarises it the way
`vfstrace analyze` does. Prints numbers; asserts nothing about time.

    .venv/bin/python bench/analyze.py --events 200000      # CI size
    .venv/bin/python bench/analyze.py --events 10000000    # the target size
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfstrace.correlate import correlate  # noqa: E402
from vfstrace.report.analyze import summarize  # noqa: E402
from vfstrace.events import ENOENT, ECHILD, Flag, Kind, Op  # noqa: E402
from vfstrace.store import TraceWriter, load  # noqa: E402


class Phase:
    """Wall and CPU time of a block: on a shared machine CPU time is the steadier figure."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w
        self.cpu = time.process_time() - self.c

    def fmt(self, n: int) -> str:
        return (f"{self.wall:6.2f} s wall = {n / self.wall:>12,.0f} events/s; "
                f"{self.cpu:6.2f} s CPU = {n / max(self.cpu, 1e-9):>12,.0f} events/s")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic(n: int, start_id: int, t0: int, rng: np.random.Generator) -> pd.DataFrame:
    kinds = np.array([Kind.WALK_ENTER, Kind.LOOKUP_ENTER, Kind.LOOKUP_RETURN, Kind.WALK_RETURN, Kind.PATH_SYSCALL,
                      Kind.PRUNE, Kind.UNHASH, Kind.IPUT, Kind.D_FREE, Kind.D_ALLOC, Kind.SEQ_CHECK], dtype=np.uint8)
    p = np.array([0.2, 0.2, 0.2, 0.2, 0.1, 0.02, 0.02, 0.02, 0.02, 0.01, 0.01])
    kind = kinds[rng.choice(len(kinds), n, p=p / p.sum())]
    names = np.array([f"file{i}" for i in range(5000)], dtype=object)
    paths = np.array([f"/srv/data/dir{i % 50}/file{i}" for i in range(5000)], dtype=object)
    comms = np.array(["statter", "cp", "find", "kswapd0", "bash", "python3"], dtype=object)
    ni = rng.integers(0, len(names), n)
    tid = rng.integers(1000, 1064, n).astype(np.uint32)
    ret = np.zeros(n, dtype=np.int64)
    is_ret = np.isin(kind, [Kind.WALK_RETURN, Kind.LOOKUP_RETURN, Kind.PATH_SYSCALL])
    r = rng.random(n)
    ret[is_ret & (r < 0.02)] = ENOENT
    ret[is_ret & (r >= 0.02) & (r < 0.025)] = ECHILD
    is_path = kind == Kind.PATH_SYSCALL
    return pd.DataFrame(
        {
            "event_id": np.zeros(n, dtype=np.uint64),  # numbered by the writer, like a live recording
            "ts_ns": (t0 + np.arange(n, dtype=np.uint64) * np.uint64(1000)),
            "cpu": rng.integers(0, 2, n).astype(np.uint32),
            "pid": tid,
            "tid": tid,
            "comm": comms[tid % len(comms)],
            "kind": kind,
            "op": np.where(is_path, int(Op.NEWFSTATAT), 0).astype(np.uint16),
            "dentry": (np.uint64(0xFFFF888000000000) + ni.astype(np.uint64) * np.uint64(192)),
            "parent": np.uint64(0xFFFF888100000000) + (ni % 50).astype(np.uint64) * np.uint64(192),
            "ino": ni.astype(np.uint64) + np.uint64(100),
            "name": names[ni],
            "path": np.where(is_path, paths[ni], ""),
            "path2": np.full(n, "", dtype=object),
            "seq": rng.integers(0, 8, n).astype(np.uint32) * 2,
            "seq2": rng.integers(0, 8, n).astype(np.uint32) * 2,
            "ret": ret,
            "flags": np.where(rng.random(n) < 0.9, int(Flag.RCU), 0).astype(np.uint32),
        }
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="trace size (default 200000; the target is 10000000)")
    ap.add_argument("--batch", type=int, default=65536, help="events per write() call and per chunk")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the trace (default: a temp dir, removed)")
    ap.add_argument("--verdicts", action="store_true", help="also time the correlator, if present")
    a = ap.parse_args(argv)
    base = a.dir or Path(tempfile.mkdtemp(prefix="vfstrace-bench-"))
    path = base / "bench.vft"
    rng = np.random.default_rng(1)
    # Generate batches up front so write rate measures the writer, not the generator.
    t_gen = time.perf_counter()
    batches = []
    done = 0
    t0 = 10**12
    while done < a.events:
        n = min(a.batch, a.events - done)
        batches.append(synthetic(n, done + 1, t0 + done * 1000, rng))
        done += n
    gen_s = time.perf_counter() - t_gen
    with Phase() as pw, TraceWriter(path, meta={"tier": "bench", "workload": "bench/analyze.py"}, chunk_events=a.batch,
                     overwrite=True) as w:
        for i, b in enumerate(batches):
            w.write(b)
            if i % 50 == 0:
                w.add_lost(i % 2, 17)
    del batches
    size = sum(p.stat().st_size for p in path.iterdir())
    with Phase() as pl:
        df = load(path)
    with Phase() as pa_:
        s = summarize(df, df.attrs["meta"])
    n = len(df)
    print(f"events            {n:,}  (generated in {gen_s:.1f} s)")
    print(f"trace size        {size / 2**20:,.1f} MiB on disk ({size / n:.1f} B/event), "
          f"{len(list(path.glob('part-*.parquet')))} parts")
    print(f"write             {pw.fmt(n)}")
    print(f"load              {pl.fmt(n)}")
    print(f"analyze           {pa_.fmt(n)}  ({s['lookups']['enoent']:,} ENOENT lookups, {s['lost']['total']:,} lost)")
    if a.verdicts:
        with Phase() as pc:
            v = correlate(df)
        print(f"correlate         {pc.fmt(n)}  ({len(v):,} verdicts)")
    print(f"peak RSS          {peak_rss_mib():,.0f} MiB")
    if a.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
