#!/usr/bin/env python3
"""Time `vfstrace fleet` over N simulated hosts: locally, on a two-worker Dask LocalCluster, and against
`vfstrace analyze` run N times one after another.

The hosts are `vfstrace simulate` traces (vfstrace/workload/simulate.py),
generated once into a cache directory (``--cache``; kept between runs,
keyed by size) in parts of 65,536 events as a recorder writes them, with a
host name and kernel release of their own in the metadata: in turn a buggy
kernel's kprobe view (races), a fixed kernel's kprobe view, a buggy
kernel's tracepoint view (transient suspects) and a fixed kernel's
tracepoint view, about ``--events`` each. A tracepoint view keeps about a
sixth of the events of the same simulated time (only syscall results and
dcache frees), and simulating six times as long costs six times the
memory, so its hosts simulate the kprobe hosts' time: they hold about a
sixth of ``--events``, said in the output.

Each contender runs as a process of its own, and its wall time and peak
RSS are taken from wait4(); the cluster's workers report their own peak
RSS (the cluster is started before the timed run, its start timed apart).
Prints one table side by side and whether the three agree on every trace's
verdict counts. Asserts nothing.

    .venv/bin/python bench/fleet.py --hosts 10 --events 100000     # quick
    .venv/bin/python bench/fleet.py                                 # 50 hosts x 1M events
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
VFSTRACE = [sys.executable, "-m", "vfstrace.cli"]
KPROBE_EVENTS_PER_S = 4_200_000  # four walkers' kprobe view: about 84k events per simulated 0.02 s
PART_EVENTS = 65_536
KINDS = [("buggy", "kprobe"), ("fixed", "kprobe"), ("buggy", "tracepoint"), ("fixed", "tracepoint")]


def host_trace(args) -> tuple[str, int, float]:
    """Simulate host ``i`` into ``out``: (name, events, seconds to generate)."""
    i, events, out = args
    from vfstrace.store import TraceWriter
    from vfstrace.workload.simulate import simulate

    t0 = time.perf_counter()
    semantics, view = KINDS[i % len(KINDS)]
    params = dict(semantics=semantics, duration_ns=max(int(events / KPROBE_EVENTS_PER_S * 1e9), 10_000),
                  view=view, loss_rate=0.001 if i % 5 == 4 else 0.0)
    ev, _truth = simulate(1000 + i, **params)
    lost = ev[ev["kind"] == 15]
    per_cpu = {int(c): int(n) for c, n in lost.groupby("cpu")["ret"].sum().items()}
    meta = {"tier": "simulated", "workload": {"simulate": {"seed": 1000 + i, **params}}, "probes": [],
            "host": f"sim-{i:03d}", "kernel_release": f"6.1.{i % 7}-{'prepatch' if semantics == 'buggy' else 'fixed'}"}
    tmp = Path(str(out) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with TraceWriter(tmp, meta=meta, chunk_events=PART_EVENTS, flush_seconds=1e9) as w:
        for k in range(0, len(ev), PART_EVENTS):
            w.write(ev.iloc[k:k + PART_EVENTS])
        w.update_meta(lost_per_cpu=per_cpu, lost_total=sum(per_cpu.values()))
    os.rename(tmp, out)
    return out.name, len(ev), time.perf_counter() - t0


def generate(cache: Path, hosts: int, events: int) -> tuple[Path, float, int]:
    d = cache / f"{hosts}x{events}"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    todo = [(i, events, d / f"host-{i:03d}.vft") for i in range(hosts) if not (d / f"host-{i:03d}.vft").exists()]
    t0 = time.perf_counter()
    if todo:
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for name, n, s in pool.map(host_trace, todo):
                print(f"  generated {name}: {n:,} events in {s:.1f} s", flush=True)
    total = sum(json.loads((p / "_meta.json").read_text())["events"] for p in d.glob("host-*.vft"))
    return d, time.perf_counter() - t0, total


def timed(argv) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB, stdout) of one process of ``argv``, measured by wait4()."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode(errors="replace")
        if p.returncode:
            raise SystemExit(f"{' '.join(map(str, argv))}: exit {p.returncode}: {err.strip()[:300]}")
        out.seek(0)
        return wall, ru.ru_maxrss / 1024.0, out.read().decode()


def worker_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--events", type=int, default=1_000_000, help="events per (kprobe-view) host")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vfstrace-bench-fleet")
    ap.add_argument("--generate-only", action="store_true", help="fill the cache and stop")
    a = ap.parse_args()

    print(f"generating {a.hosts} hosts of about {a.events:,} events into {a.cache} (cached)", flush=True)
    d, gen_s, total = generate(a.cache, a.hosts, a.events)
    traces = sorted(str(p) for p in d.glob("host-*.vft"))
    print(f"{len(traces)} traces, {total:,} events, generated in {gen_s:.1f} s (0 if cached)\n", flush=True)
    if a.generate_only:
        return

    local_s, local_mib, local_out = timed([*VFSTRACE, "fleet", "--json", d])
    local = json.loads(local_out)

    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    start_s = time.perf_counter() - t0
    try:
        dask_s, dask_client_mib, dask_out = timed([*VFSTRACE, "fleet", "--json", "--scheduler",
                                                   cluster.scheduler_address, d])
        with Client(cluster) as c:
            workers_mib = max(c.run(worker_peak_mib).values())
    finally:
        cluster.close()
    on_dask = json.loads(dask_out)

    an_s, an_mib, agree = 0.0, 0.0, True
    by_trace = {r["trace"]: r for r in local["traces"]}
    for t in traces:
        s, m, out = timed([*VFSTRACE, "analyze", "--json", t])
        an_s, an_mib = an_s + s, max(an_mib, m)
        agree &= json.loads(out)["verdicts"]["counts"] == by_trace[t]["verdicts"]

    from tabulate import tabulate

    rows = [
        ("fleet, local (one process)", f"{local_s:.1f}", f"{local_mib:.0f}", ""),
        (f"fleet --scheduler, LocalCluster of {a.workers}", f"{dask_s:.1f}",
         f"{workers_mib:.0f} per worker", f"client {dask_client_mib:.0f} MiB; cluster start {start_s:.1f} s apart"),
        (f"analyze x {len(traces)}, one after another", f"{an_s:.1f}", f"{an_mib:.0f}", "largest of the runs"),
    ]
    print(tabulate(rows, headers=["", "wall s", "peak RSS MiB", "note"], tablefmt="simple", disable_numparse=True))
    races = sum(r["races"] for r in local["traces"])
    tp = [r["events"] for r in local["traces"] if r["tier"] == "simulated-tracepoint"]
    print(f"\n{total:,} events; {races:,} races on {sum(1 for r in local['traces'] if r['races'])} hosts; "
          f"tracepoint-view hosts hold {min(tp or [0]):,}..{max(tp or [0]):,} events")
    print(f"fleet local == fleet on the cluster: {'yes' if local == on_dask else 'NO'}; "
          f"verdict counts == analyze of each trace: {'yes' if agree else 'NO'}")


if __name__ == "__main__":
    main()
