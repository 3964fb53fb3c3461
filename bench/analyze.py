#!/usr/bin/env python3
"""Measure trace write, load, analyze and correlate speed, and peak memory.

Builds an N-event synthetic trace shaped like a busy recording (walks and
lookups on a few thousand dentries, pruning, path syscalls with some
-ENOENT, a LOST row now and then), generating and writing it batch by batch
with TraceWriter in the chunks a live recorder would use (only the writer's
calls are timed). Then each reader, in a process of its own so that each
peak RSS is its own, reads it back and judges it:

* frame: the whole trace as one DataFrame (load, summarize, correlate), as
  `report` and `selftest --from-trace` read it;
* parts: part by part (vfstrace.report.analyze.analyze_parts), as
  `vfstrace analyze` reads it; memory flat in the trace's size.

Prints wall and CPU time per phase (a shared machine inflates wall time),
peak RSS, and whether both readers' verdict counts agree. Asserts nothing.
Writing counts the writer's calls, close() included; when the writer
encodes in its encoder process (vfstrace/store/encoder.py; ``--encoder``
chooses) that process's CPU time and peak RSS are printed too, and the
totals charge writing as the longer of the writer's calls and the
encoder's busy time (wall, fsync included): the encoder also works while
the next batch is generated, time a live recorder spends polling the
kernel instead.

    .venv/bin/python bench/analyze.py --events 200000 --verdicts      # CI size
    .venv/bin/python bench/analyze.py --events 10000000 --verdicts    # the target size
    .venv/bin/python bench/analyze.py --events 100000000 --verdicts   # parts only: flat memory
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfstrace.correlate import correlate  # noqa: E402
from vfstrace.report.analyze import analyze_parts, summarize, summarize_verdicts  # noqa: E402
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


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def write_trace(path: Path, events: int, batch: int, encoder: bool | None) -> tuple[Phase, float, float, float]:
    """Generate and write ``events`` batch by batch (memory: one batch); only the writer's calls are timed,
    close() included. Also returns the CPU seconds of the writer's encoder process and the wall seconds it
    was busy (encoding, writing, fsync; 0 and 0 without one).

    LOST rows are made as vfstrace.recorder makes them: stamped on the
    events' clock, the per-CPU counts in the metadata as well.
    """
    rng = np.random.default_rng(1)
    pw = Phase()
    pw.wall = pw.cpu = 0.0
    gen_s, done, i, lost = 0.0, 0, 0, {}
    t0 = 10**12
    child0 = children_cpu()
    w = TraceWriter(path, meta={"tier": "bench", "workload": "bench/analyze.py"}, chunk_events=batch,
                    overwrite=True, encoder=encoder)
    try:
        while done < events:
            n = min(batch, events - done)
            g = time.perf_counter()
            b = synthetic(n, done + 1, t0 + done * 1000, rng)
            gen_s += time.perf_counter() - g
            with Phase() as p:
                w.write(b)
                if i % 50 == 0:
                    cpu = i % 2
                    lost[cpu] = lost.get(cpu, 0) + 17
                    w.update_meta(lost_per_cpu=dict(lost))
                    w.write({"ts_ns": np.array([t0 + (done + n) * 1000], dtype=np.uint64),
                             "cpu": np.array([cpu], dtype=np.uint32), "kind": np.array([int(Kind.LOST)], np.uint8),
                             "ret": np.array([17], dtype=np.int64)})
            pw.wall += p.wall
            pw.cpu += p.cpu
            done += n
            i += 1
    finally:
        with Phase() as p:
            w.close()  # waits for the encoder process: what it still held is on disk after this
        pw.wall += p.wall
        pw.cpu += p.cpu
    return pw, gen_s, children_cpu() - child0, w.encoder_busy_s


def read_mode(path: Path, mode: str, verdicts: bool) -> dict:
    """One way of reading and judging the trace, in this process: its phases and its peak RSS."""
    out = {}
    if mode == "frame":  # the whole trace as one DataFrame, as `report` and `selftest --from-trace` read it
        with Phase() as p:
            df = load(path)
        out["load"] = p
        with Phase() as p:
            s = summarize(df, df.attrs["meta"])
        out["analyze"] = p
        if verdicts:
            with Phase() as p:
                v = correlate(df)
            out["correlate"] = p
            s["verdicts"] = summarize_verdicts(v)
    else:  # part by part, as `vfstrace analyze` reads it
        with Phase() as p:
            analyze_parts(path, verdicts=False)
        out["load+analyze"] = p
        if verdicts:
            with Phase() as p:
                s = analyze_parts(path, verdicts=True)
            out["load+analyze+correlate"] = p
        else:
            s = analyze_parts(path, verdicts=False)
    return {"phases": {k: [v.wall, v.cpu] for k, v in out.items()}, "rss_mib": peak_rss_mib(),
            "events": s["events"], "enoent": s["lookups"]["enoent"], "lost": s["lost"]["total"],
            "verdicts": s["verdicts"].get("counts")}


def _read_wall(mode: str, r: dict, i: int = 0) -> float:
    """Seconds (wall, or CPU with i=1) to read and judge: the frame reader's phases add up; the parts
    reader's last phase does all of it again in one pass pair."""
    ph = list(r["phases"].values())
    return ph[-1][i] if mode == "parts" else sum(p[i] for p in ph)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="trace size (default 200000; the target is 10000000)")
    ap.add_argument("--batch", type=int, default=65536, help="events per write() call and per chunk")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the trace (default: a temp dir, removed)")
    ap.add_argument("--verdicts", action="store_true", help="also time the correlator")
    ap.add_argument("--modes", default=None,
                    help="readers to compare, comma-separated: frame (whole trace in memory), parts (part by part); "
                         "default both up to 20M events, parts only above")
    ap.add_argument("--encoder", choices=("auto", "process", "inline"), default="auto",
                    help="where the writer encodes parts: its encoder process, in-process, or as TraceWriter "
                         "decides by part size (default)")
    ap.add_argument("--read", choices=("frame", "parts"), help=argparse.SUPPRESS)  # one reader, in a child process
    ap.add_argument("--trace", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.read:
        print(json.dumps(read_mode(a.trace, a.read, a.verdicts)))
        return
    modes = (a.modes or ("frame,parts" if a.events <= 20_000_000 else "parts")).split(",")
    base = a.dir or Path(tempfile.mkdtemp(prefix="vfstrace-bench-"))
    path = base / "bench.vft"
    pw, gen_s, enc_cpu, enc_busy = write_trace(path, a.events, a.batch, {"auto": None, "process": True, "inline": False}[a.encoder])
    write_rss = peak_rss_mib()
    enc_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    # The encoder process works while the bench generates the next batch, which
    # a live recorder spends polling the kernel instead: writing is charged as
    # the longer of the writer's own calls and the encoder's busy time, never less.
    write_s = max(pw.wall, enc_busy)
    size = sum(p.stat().st_size for p in path.iterdir())
    n = a.events + ((a.events + a.batch - 1) // a.batch + 49) // 50  # the LOST rows too
    print(f"events            {n:,}  (generated in {gen_s:.1f} s, batch by batch)")
    print(f"trace size        {size / 2**20:,.1f} MiB on disk ({size / n:.1f} B/event), "
          f"{len(list(path.glob('part-*.parquet')))} parts")
    print(f"write             {pw.fmt(n)}  (peak RSS of the writing process {write_rss:,.0f} MiB)")
    if enc_cpu:
        print(f"  encoder process {enc_busy:6.2f} s busy (wall), {enc_cpu:6.2f} s CPU, peak RSS {enc_rss:,.0f} MiB; "
              f"write charged as {write_s:.2f} s (the longer of the writer's calls and the encoder's busy time)")
    results = {}
    for m in modes:
        # Each reader in a process of its own, so each peak RSS is its own.
        cmd = [sys.executable, __file__, "--read", m, "--trace", str(path)] + (["--verdicts"] if a.verdicts else [])
        results[m] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    for m, r in results.items():
        total_w, total_c = write_s + _read_wall(m, r), pw.cpu + enc_cpu + _read_wall(m, r, 1)
        print(f"\nreader {m}: {r['events']:,} events, {r['enoent']:,} ENOENT lookups, {r['lost']:,} lost, "
              f"verdicts {r['verdicts']}")
        for k, (w, c) in r["phases"].items():
            ph = Phase()
            ph.wall, ph.cpu = w, c
            print(f"  {k:<24}{ph.fmt(n)}")
        print(f"  {'write + the above':<24}{total_w:6.2f} s wall, {total_c:6.2f} s CPU; peak RSS {r['rss_mib']:,.0f} MiB")
    if len(results) > 1:
        print("\nside by side       " + "".join(f"{m:>22}" for m in results))
        print("peak RSS (MiB)     " + "".join(f"{r['rss_mib']:>22,.0f}" for r in results.values()))
        print("read+judge wall (s)" + "".join(f"{_read_wall(m, r):>22.2f}" for m, r in results.items()))
        print("read+judge CPU (s) " + "".join(f"{_read_wall(m, r, 1):>22.2f}" for m, r in results.items()))
        same = len({json.dumps(r["verdicts"], sort_keys=True) for r in results.values()}) == 1
        print(f"verdict counts     {'identical' if same else 'DIFFER'}")
    if a.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
