#!/usr/bin/env python3
"""Load a vfstrace trace into pandas and look at a race the way a person would.

    .venv/bin/python examples/load_trace.py [TRACE]

TRACE is a recording (run.vft) or a JSON Lines trace; by default the
hand-written race in tests/fixtures/traces/race.jsonl. Shows the metadata,
events by kind, lost events, the -ENOENT lookups done in RCU walk, and, for
each one, what happened to its dentry in between the walk's start and end.
"""

import sys
from pathlib import Path

import vfstrace
from vfstrace.events import ENOENT, Flag, Kind, kind_name

path = sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tests/fixtures/traces/race.jsonl"
df = vfstrace.load(path)
meta = df.attrs["meta"]

print(f"{len(df)} events, tier {meta.get('tier')}, kernel {meta.get('kernel_release')}, closed={meta['closed']}")
print(f"lost: {meta['lost_total']} {meta['lost_per_cpu']}")
for note in meta["notes"]:
    print("note:", note)
print(df["kind"].map(kind_name).value_counts().to_string(), "\n")

# Lookups that returned -ENOENT while in RCU walk: the race's symptom.
rets = df[df["kind"].isin([int(Kind.WALK_RETURN), int(Kind.LOOKUP_RETURN)]) & (df["ret"] == ENOENT)
          & ((df["flags"] & int(Flag.RCU)) != 0)]
enters = df[df["kind"].isin([int(Kind.WALK_ENTER), int(Kind.LOOKUP_ENTER)])]
for r in rets.itertuples():
    # The matching enter: the last walk (or lookup) enter on this thread
    # before the return; each *_ENTER kind is its *_RETURN minus one.
    before = enters[(enters["tid"] == r.tid) & (enters["kind"] == r.kind - 1) & (enters["event_id"] < r.event_id)]
    start = int(before["ts_ns"].iloc[-1]) if len(before) else int(r.ts_ns)
    between = df[(df["dentry"] == r.dentry) & (df["ts_ns"] >= start) & (df["ts_ns"] <= r.ts_ns)
                 & df["kind"].isin([int(Kind.PRUNE), int(Kind.UNHASH), int(Kind.IPUT)])]
    print(f"event {r.event_id}: {r.comm}[{r.tid}] -ENOENT on {r.name!r} dentry {r.dentry:#x}; "
          f"during the walk: {', '.join(kind_name(k) for k in between['kind']) or 'nothing'}")

# The correlator judges this properly; its verdicts are a DataFrame too.
try:
    from vfstrace.correlate import correlate
except ImportError:
    print("\n(correlator not available)")
else:
    print()
    print(correlate(df)[["event_id", "verdict", "evidence", "reason"]].to_string(index=False))
