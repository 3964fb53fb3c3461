"""The prune a walk's PRUNE_INFLIGHT bit stands for, found in the trace.

The kprobe/fentry programs (bpf/kprobe.c) set PRUNE_INFLIGHT on a walk when
the dentry it found has an entry in their `inflight` map: the entry is
written at that address's PRUNE (__dentry_kill) and removed at its D_FREE,
and it only counts while the dentry is dead (lockref count < 0) and was
positive when its prune began. A later PRUNE at the same address
overwrites the entry. So the prune the bit stands for is, by construction,
the latest PRUNE event at that address at or before the walk, of a
positive dentry, with no D_FREE at the address in between.

The time-window join of :func:`vfstrace.correlate.walk.judge_walks` cannot
always find it: a walk whose entry the kernel side filtered out starts
"walk_ns before its return" for the correlator, while a widened walk (or a
prune that began before the lookup) puts that PRUNE hundreds of
microseconds earlier. Without it a `race` would cite only its own walk.

What breaks the construction is a lost event: a PRUNE (or D_FREE) dropped
from the ring between the latest PRUNE seen and the walk could be the one
the kernel meant. Then nothing is cited, and the caller must not say
`race` on the bit alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vfstrace.events import Flag, Kind

_CITED_AFTER = (int(Kind.UNHASH), int(Kind.IPUT))


def inflight_prunes(J: pd.DataFrame, E: pd.DataFrame, want: np.ndarray, tol_ns: int) -> list[list[int]]:
    """Per judged walk, the ids of the in-flight prune's events ([] where none is citable).

    ``J``: judged walks (event_id, ts_ns, dentry); ``E``: evidence rows
    (event_id, ts_ns, kind, dentry, ino); ``want``: the walks to look up
    (PRUNE_INFLIGHT set, nothing cited by the time window). The ids are the
    PRUNE and the UNHASH/IPUT of the same dentry between it and the walk.
    """
    n = len(J)
    out: list[list[int]] = [[] for _ in range(n)]
    rows = np.flatnonzero(np.asarray(want, dtype=bool) & (J["dentry"].to_numpy() != 0))
    if not len(rows):
        return out
    jd = J["dentry"].to_numpy()[rows]
    ekind = E["kind"].to_numpy()
    mine = np.isin(E["dentry"].to_numpy(), np.unique(jd))
    S = E.loc[mine & np.isin(ekind, [int(Kind.PRUNE), *_CITED_AFTER, int(Kind.D_FREE), int(Kind.D_ALLOC)]),
              ["event_id", "ts_ns", "kind", "dentry", "ino"]]
    S = S.sort_values(["dentry", "ts_ns", "event_id"], kind="stable")
    L = np.sort(E.loc[ekind == int(Kind.LOST), "ts_ns"].to_numpy().astype(np.int64))
    groups = {d: g for d, g in S.groupby("dentry", sort=False)}
    end = J["ts_ns"].to_numpy().astype(np.int64)[rows]
    for i, d, t in zip(rows.tolist(), jd.tolist(), end.tolist()):
        g = groups.get(d)
        if g is None:
            continue
        ts = g["ts_ns"].to_numpy().astype(np.int64)
        k = g["kind"].to_numpy()
        upto = ts <= t + tol_ns
        pr = np.flatnonzero(upto & (k == int(Kind.PRUNE)))
        if not len(pr):
            continue
        p = pr[-1]
        if g["ino"].to_numpy()[p] == 0:
            continue  # the bit is only set for a dentry positive at its prune: not this one
        if np.any(upto[p + 1:] & np.isin(k[p + 1:], [int(Kind.D_FREE), int(Kind.D_ALLOC)])):
            continue  # that incarnation was freed before the walk: not the one in flight
        lo = np.searchsorted(L, ts[p] - tol_ns, "left")
        hi = np.searchsorted(L, t + tol_ns, "right")
        if hi > lo:
            continue  # events lost in between: the prune in flight may be one of them
        ids = g["event_id"].to_numpy()
        after = np.flatnonzero(upto & np.isin(k, _CITED_AFTER) & (np.arange(len(g)) > p))
        out[i] = [int(ids[p])] + [int(ids[a]) for a in after]
    return out


def flagged(J: pd.DataFrame) -> np.ndarray:
    """Walks the kernel side flagged with PRUNE_INFLIGHT."""
    return (J["flags"].to_numpy() & int(Flag.PRUNE_INFLIGHT)) != 0
