#!/usr/bin/env python3
"""Events/s the shared stream path ingests into columnar batches; drops; consumer CPU%.

    sudo .venv/bin/python bench/ingest.py [--rate 250000] [--seconds 60] [--small]

Two parts:
1. parser capacity: bulk-parse a synthetic ring span of N records
   (tracers.stream.parse_ring_span) and convert to the event schema
   (records_to_frame), in records/s: the ceiling of the Python side;
2. live: a C stat() loop produces ENOENT events at a fixed --rate for
   --seconds while the tracepoint tier streams them through a BPF ring
   buffer (comm-filtered to the generator); the consumer drains it every few
   ms through vfstrace.recorder.Recorder, as `record` does (DataFrames,
   numbered, losses as LOST rows). Prints generated vs received, drops counted in the kernel,
   sustained events/s and the consumer's CPU% (user+sys over wall time).
"""

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parser_capacity(n):
    from tracers.stream import parse_ring_span, record_stride, records_to_frame
    from vfstrace.events import BPF_EVENT_DTYPE, Kind

    stride = record_stride(BPF_EVENT_DTYPE)
    buf = np.zeros(n * stride, dtype=np.uint8)
    framed = buf.view(np.dtype({"names": ["len"], "formats": ["<u4"], "offsets": [0], "itemsize": stride}))
    framed["len"] = BPF_EVENT_DTYPE.itemsize
    body = buf.reshape(n, stride)[:, 8 : 8 + BPF_EVENT_DTYPE.itemsize].copy().view(BPF_EVENT_DTYPE).reshape(n)
    body["kind"] = int(Kind.D_FREE)
    body["comm"] = b"kswapd0"
    body["dentry"] = np.arange(n, dtype=np.uint64) * 192
    buf.reshape(n, stride)[:, 8 : 8 + BPF_EVENT_DTYPE.itemsize] = body.view(np.uint8).reshape(n, -1)
    t = time.perf_counter()
    recs, used = parse_ring_span(buf, BPF_EVENT_DTYPE)
    t_parse = time.perf_counter() - t
    assert len(recs) == n and used == n * stride
    t = time.perf_counter()
    df = records_to_frame(recs)
    t_frame = time.perf_counter() - t
    assert len(df) == n
    return n / t_parse, n / (t_parse + t_frame)


def live(rate, seconds):
    from _statgen import StatGen
    from tracers.tracepoint import TracepointTracer
    from vfstrace.events import Kind
    from vfstrace.options import TraceOptions
    from vfstrace.recorder import Recorder

    comm = "vfs-ingest"
    gen = StatGen()
    # coalesce_ns 0: every failure streamed (the tier otherwise folds identical repeats)
    t = TracepointTracer(TraceOptions(comm=comm, extra={"recheck": False, "coalesce_ns": 0}))
    t.load()
    rec = Recorder(t)  # as `record` drains: numbered frames, losses as LOST rows
    got = 0
    try:
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        p = gen.start("/var/tmp/vfstrace-ingest-absent", int(rate * seconds), rate, comm)
        def mine(df):  # NS_OPs of other processes share the path ring
            return int(np.count_nonzero(df["kind"].to_numpy() == int(Kind.PATH_SYSCALL)))

        while p.poll() is None:
            got += mine(rec.poll(10))
        for _ in range(20):
            n = mine(rec.poll(20))
            got += n
            if not n:
                break
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        res = gen.result(p)
        rec.drain()
        lost = rec.lost_total
        cnt = t.counters()
    finally:
        t.close()
        gen.close()
    cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / (w1 - w0) * 100
    return res, got, lost, cnt, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=250_000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--parse-records", type=int, default=2_000_000)
    ap.add_argument("--small", action="store_true", help="CI size: 3 s live, 200k records parsed")
    a = ap.parse_args()
    if a.small:
        a.seconds, a.parse_records = 3, 200_000
    ps, pf = parser_capacity(a.parse_records)
    print(f"parser capacity ({a.parse_records} vfs_event records): parse {ps:,.0f} rec/s; parse+DataFrame {pf:,.0f} rec/s")
    if os.geteuid() != 0:
        print("live part skipped: needs root (BPF)")
        return
    res, got, lost, cnt, cpu = live(a.rate, a.seconds)
    achieved = res["calls"] / res["seconds"]
    print(f"live: target {a.rate:,.0f} ev/s for {a.seconds:g} s; generator achieved {achieved:,.0f} ev/s over {res['seconds']:.1f} s")
    print(f"generated {res['fails']} ENOENT; received {got}; dropped (counted in kernel) {lost}; "
          f"unaccounted {res['fails'] - got - lost}")
    print(f"sustained ingest {got / res['seconds']:,.0f} ev/s; consumer CPU {cpu:.0f}% of one core")
    print(f"kernel counters: dropped_path_events={cnt.get('dropped_path_events')} path_syscalls={cnt.get('path_syscalls')}")


if __name__ == "__main__":
    main()
