"""What a trace holds, counted part by part: the numbers `analyze` prints before its verdicts.

Why apart from vfstrace/report/analyze.py: `analyze` reads a large trace one
part at a time (memory flat in its size) and summarize() feeds a whole frame
as one part, so both give the same numbers from these classes.
"""

from __future__ import annotations

import math

import numpy as np

from vfstrace.events import ECHILD, ENOENT, Flag, Kind, kind_mask, kind_name
from vfstrace.report.answer import answer, first_paths, tier_of

_LOOKUP_RETURNS = (int(Kind.WALK_RETURN), int(Kind.LOOKUP_RETURN))
_LOOKUP_ENTERS = (int(Kind.WALK_ENTER), int(Kind.LOOKUP_ENTER))
_PRUNE_KINDS = (int(Kind.PRUNE), int(Kind.UNHASH), int(Kind.IPUT), int(Kind.D_FREE))


_IS_ENTER = kind_mask(_LOOKUP_ENTERS)
_IS_RETURN = kind_mask(_LOOKUP_RETURNS)
_IS_ENOENT_KIND = kind_mask(_LOOKUP_RETURNS + (int(Kind.PATH_SYSCALL),))
# More buckets than this and the rate table widens its buckets (a bad
# timestamp in a hand-written trace should not make a billion-row table).
MAX_RATE_BUCKETS = 100_000


def nice_width_ns(span_ns: float, target: int) -> int:
    """A bucket width of 1, 2 or 5 x 10^k ns giving about ``target`` buckets over ``span_ns``."""
    want = max(span_ns / max(target, 1), 1.0)
    k = 10 ** int(math.floor(math.log10(want)))
    return int(next(m * k for m in (1, 2, 5, 10) if m * k >= want))


def rate_width_ns(t0: int, t1: int, target: int | None = None) -> int:
    """The bucket width of the rate table over valid stamps t0..t1 (see _rate)."""
    span_ns = t1 - t0
    if target:
        return nice_width_ns(span_ns, target)
    return max(1, math.ceil((span_ns / 1e9 + 1) / MAX_RATE_BUCKETS)) * 1_000_000_000


class RateCounts:
    """Events, lookups, prunes, -ENOENT and lost per time bucket, added part by part."""

    def __init__(self, t0: int, width_ns: int):
        self.t0, self.width_ns = int(t0), int(width_ns)
        self.sums = np.zeros((5, 0), dtype=np.float64)

    def add(self, ts: np.ndarray, kind: np.ndarray, ret: np.ndarray) -> None:
        valid = ts > 0
        if not valid.any():
            return
        b = ((ts[valid] - np.uint64(self.t0)) // np.uint64(self.width_ns)).astype(np.int64)
        k, r = kind[valid], ret[valid]
        nb = max(int(b.max()) + 1, self.sums.shape[1])
        part = np.stack([
            np.bincount(b, minlength=nb),
            np.bincount(b, weights=_IS_ENTER[k], minlength=nb),
            np.bincount(b, weights=(k == int(Kind.PRUNE)), minlength=nb),
            np.bincount(b, weights=(r == ENOENT) & _IS_ENOENT_KIND[k], minlength=nb),
            np.bincount(b, weights=np.where(k == int(Kind.LOST), r, 0), minlength=nb),
        ])
        part[:, : self.sums.shape[1]] += self.sums
        self.sums = part

    def result(self) -> dict:
        if not self.sums.shape[1]:
            return {"bucket_seconds": 1, "start_ns": 0, "buckets": []}
        width_ns = self.width_ns
        whole = width_ns % 1_000_000_000 == 0
        width = width_ns // 1_000_000_000 if whole else width_ns / 1e9
        total, lookups, prunes, enoent, lost = (self.sums[i].astype(np.int64).tolist() for i in range(5))
        buckets = [
            {"t_s": i * width if whole else round(i * width, 9), "events": total[i], "lookups": lookups[i],
             "prunes": prunes[i], "enoent": enoent[i], "lost": lost[i]}
            for i in range(len(total))
        ]
        return {"bucket_seconds": width, "start_ns": self.t0, "buckets": buckets}


class TraceCounts:
    """What summarize() counts, added part by part (a part is any slice of the events, in any order).

    Why a class: `analyze` reads a large trace one part at a time (memory
    flat in its size), and summarize() feeds a whole frame as one part, so
    both give the same numbers from the same code.
    """

    def __init__(self):
        self.n = 0
        self.counts = np.zeros(int(max(Kind)) + 1, dtype=np.int64)
        self.t_min = self.t_max = None
        self.lk = dict.fromkeys(("returns", "enoent", "enoent_rcu", "echild", "seq_changed", "seq_check_failed"), 0)
        self.sys_enoent = 0
        self.lost_rows: dict[int, int] = {}
        self.lost_records = 0
        self.paths: dict = {}
        self.comms: dict = {}

    @staticmethod
    def _tally(into: dict, values) -> None:
        # First-occurrence order, as pandas' value_counts() keeps it before sorting.
        for v in values:
            into[v] = into.get(v, 0) + 1

    def add(self, kind, ts, ret, flags, cpu, strings) -> None:
        """Numeric columns as numpy arrays; ``strings(col, mask)`` the values of a string column on masked rows."""
        n = len(kind)
        if not n:
            return
        self.n += n
        self.counts += np.bincount(kind.astype(np.int64), minlength=len(self.counts))[: len(self.counts)]
        valid = ts[ts > 0]
        if len(valid):
            lo, hi = int(valid.min()), int(valid.max())
            self.t_min = lo if self.t_min is None else min(self.t_min, lo)
            self.t_max = hi if self.t_max is None else max(self.t_max, hi)
        is_ret = _IS_RETURN[kind]
        sys_enoent = (kind == int(Kind.PATH_SYSCALL)) & (ret == ENOENT)
        lk_enoent = is_ret & (ret == ENOENT)
        lk = self.lk
        lk["returns"] += int(is_ret.sum())
        lk["enoent"] += int(lk_enoent.sum())
        lk["enoent_rcu"] += int((lk_enoent & ((flags & int(Flag.RCU)) != 0)).sum())
        lk["echild"] += int((is_ret & (ret == ECHILD)).sum())
        lk["seq_changed"] += int((is_ret & ((flags & int(Flag.SEQ_CHANGED)) != 0)).sum())
        lk["seq_check_failed"] += int(((kind == int(Kind.SEQ_CHECK)) & (ret != 0)).sum())
        self.sys_enoent += int(sys_enoent.sum())
        if sys_enoent.any():
            self._tally(self.paths, strings("path", sys_enoent))
        m = sys_enoent | lk_enoent
        if m.any():
            self._tally(self.comms, strings("comm", m))
        m = kind == int(Kind.LOST)
        if m.any():
            self.lost_records += int(m.sum())
            # not bincount: cpu may be any u32 (0xffffffff: drops on no known CPU, vfstrace.recorder)
            uniq, inv = np.unique(cpu[m].astype(np.int64), return_inverse=True)
            s = np.zeros(len(uniq), dtype=np.int64)
            np.add.at(s, inv, ret[m].astype(np.int64))
            for c, k in zip(uniq.tolist(), s.tolist()):
                self.lost_rows[c] = self.lost_rows.get(c, 0) + k

    def lost(self, meta: dict) -> dict:
        rows = {c: n for c, n in self.lost_rows.items() if n}
        from_meta = {int(c): int(n) for c, n in dict(meta.get("lost_per_cpu") or {}).items()}
        # The recorder writes each drop both ways (a LOST row and lost_per_cpu);
        # a trace cut down or written by hand may hold only one of them, so take
        # whichever saw more per CPU.
        per_cpu = {c: max(rows.get(c, 0), from_meta.get(c, 0)) for c in sorted(set(rows) | set(from_meta))}
        total = sum(per_cpu.values())
        return {"total": int(total), "per_cpu": {str(c): n for c, n in per_cpu.items()}, "records": self.lost_records}

    def summary(self, meta: dict, rate: dict, verdicts: dict, top: int) -> dict:
        counts = self.counts
        duration = (self.t_max - self.t_min) / 1e9 if self.t_min is not None else 0.0
        summary = {
            "trace": {
                k: meta.get(k)
                for k in ("tier", "kernel_release", "host", "workload", "start_time", "end_time", "closed", "probes")
            },
            "notes": list(meta.get("notes") or []),
            "events": self.n,
            "duration_s": round(duration, 6),
            "by_kind": {kind_name(k): int(c) for k, c in enumerate(counts) if c},
            "lost": self.lost(meta),
            "rate": rate,
            "lookups": dict(self.lk),
            "prune_activity": {kind_name(k): int(counts[k]) for k in _PRUNE_KINDS},
            "enoent": {
                "syscalls": self.sys_enoent,
                "top_paths": _top_counts(self.paths, top, "path"),
                "top_comms": _top_counts(self.comms, top, "comm"),
            },
        }
        summary["verdicts"] = verdicts
        summary["answer"] = answer(verdicts["counts"] if verdicts["available"] else None, tier_of(meta),
                                   lost=summary["lost"]["total"], first=first_paths(verdicts["suspects"]),
                                   events=self.n)
        return summary


def _top_counts(counts: dict, n: int, label: str) -> list[dict]:
    if not counts:
        return []
    import pandas as pd

    # The same sort pandas' value_counts() applies to its first-occurrence counts.
    vc = pd.Series(list(counts.values()), index=pd.Index(list(counts.keys()), dtype=object)).sort_values(
        ascending=False)
    return [{label: k, "count": int(c)} for k, c in vc.head(n).items()]
