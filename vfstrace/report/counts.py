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
# RateCounts' per-row code by kind: 1 a lookup entry, 2 a prune (3, set per
# row, an -ENOENT return).
_RATE_CODE = _IS_ENTER.astype(np.uint8) + 2 * (np.arange(256) == int(Kind.PRUNE)).astype(np.uint8)
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
        self.sums = np.zeros((5, 0), dtype=np.int64)

    def add(self, ts: np.ndarray, kind: np.ndarray, ret: np.ndarray) -> None:
        n = len(ts)
        if not n:
            return
        if int(ts.min()) <= 0:  # stamp 0: no time known, in no bucket
            valid = ts > 0
            if not valid.any():
                return
            ts, kind, ret = ts[valid], kind[valid], ret[valid]
        # One code per row: what it adds to its bucket besides the event count.
        # Lookup entries, prunes and -ENOENT returns are of disjoint kinds, so
        # one bincount of bucket * 4 + code counts them all at once.
        code = _RATE_CODE[kind]
        code[(ret == ENOENT) & _IS_ENOENT_KIND[kind]] = 3
        w = np.uint64(self.width_ns)
        t0 = np.uint64(self.t0)
        b_lo, b_hi = int((ts.min() - t0) // w), int((ts.max() - t0) // w)
        nb = max(b_hi + 1, self.sums.shape[1])
        part = np.zeros((5, nb), dtype=np.int64)
        if b_lo == b_hi:  # the whole part in one bucket (most parts): no per-row bucket
            c = np.bincount(code, minlength=4)
            part[0, b_lo] = len(code)
            part[1:4, b_lo] = c[1:4]
            b = None
        else:
            b = ((ts - t0) // w).astype(np.int64)
            c = np.bincount(b * 4 + code, minlength=4 * nb).reshape(nb, 4)
            part[0] = c.sum(axis=1)
            part[1:4] = c[:, 1:4].T
        lost = kind == int(Kind.LOST)
        if lost.any():
            r = ret[lost].astype(np.int64)
            if b is None:
                part[4, b_lo] = int(r.sum())
            else:
                np.add.at(part[4], b[lost], r)
        part[:, : self.sums.shape[1]] += self.sums
        self.sums = part

    def result(self) -> dict:
        if not self.sums.shape[1]:
            return {"bucket_seconds": 1, "start_ns": 0, "buckets": []}
        width_ns = self.width_ns
        whole = width_ns % 1_000_000_000 == 0
        width = width_ns // 1_000_000_000 if whole else width_ns / 1e9
        total, lookups, prunes, enoent, lost = (self.sums[i].tolist() for i in range(5))
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
        by_kind = np.bincount(kind, minlength=len(self.counts))
        self.counts += by_kind[: len(self.counts)]
        lo, hi = int(ts.min()), int(ts.max())
        if lo <= 0 < hi:  # stamp 0: no time known
            lo = int(ts[ts > 0].min())
        if hi > 0:
            self.t_min = lo if self.t_min is None else min(self.t_min, lo)
            self.t_max = hi if self.t_max is None else max(self.t_max, hi)
        # The rows a count needs are few (-ENOENT, -ECHILD, flagged): each
        # count looks at the kinds of those rows only, not at every row again.
        lk = self.lk
        lk["returns"] += int(sum(int(by_kind[k]) for k in _LOOKUP_RETURNS if k < len(by_kind)))
        en = np.flatnonzero(ret == ENOENT)
        k_en = kind[en]
        ret_en = _IS_RETURN[k_en]
        lk["enoent"] += int(ret_en.sum())
        lk["enoent_rcu"] += int((ret_en & ((flags[en] & int(Flag.RCU)) != 0)).sum())
        lk["echild"] += int(_IS_RETURN[kind[ret == ECHILD]].sum())
        lk["seq_changed"] += int(_IS_RETURN[kind[(flags & int(Flag.SEQ_CHANGED)) != 0]].sum())
        if int(Kind.SEQ_CHECK) < len(by_kind) and by_kind[int(Kind.SEQ_CHECK)]:
            lk["seq_check_failed"] += int((kind[ret != 0] == int(Kind.SEQ_CHECK)).sum())
        sys_en = en[k_en == int(Kind.PATH_SYSCALL)]
        self.sys_enoent += len(sys_en)
        if len(sys_en):
            m = np.zeros(n, dtype=bool)
            m[sys_en] = True
            self._tally(self.paths, strings("path", m))
        either = en[ret_en | (k_en == int(Kind.PATH_SYSCALL))]
        if len(either):
            m = np.zeros(n, dtype=bool)
            m[either] = True
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
        return merge_lost(self.lost_rows, self.lost_records, meta)

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


def merge_lost(rows: dict, records: int, meta: dict) -> dict:
    """The lost-event summary from the LOST rows' sums per CPU (``rows``) and the metadata's ``lost_per_cpu``.

    The recorder writes each drop both ways (a LOST row and lost_per_cpu);
    a trace cut down or written by hand may hold only one of them, so take
    whichever saw more per CPU. `analyze` and `fleet` both say it this way.
    """
    rows = {int(c): int(n) for c, n in rows.items() if n}
    from_meta = {int(c): int(n) for c, n in dict(meta.get("lost_per_cpu") or {}).items()}
    per_cpu = {c: max(rows.get(c, 0), from_meta.get(c, 0)) for c in sorted(set(rows) | set(from_meta))}
    total = sum(per_cpu.values())
    return {"total": int(total), "per_cpu": {str(c): n for c, n in per_cpu.items()}, "records": int(records)}


def arrow_strings(t):
    """``strings`` for TraceCounts.add() over a part read as a pyarrow Table (iter_parts()).

    Why: a part's string columns are dictionary-encoded, and turning a
    dictionary array's rows into Python strings one by one (to_pylist())
    costs about a microsecond each; through the codes it is one string per
    distinct value taken.
    """
    import pyarrow as pa

    def get(col: str, mask: np.ndarray) -> list:
        out, off = [], 0
        for ch in t.column(col).chunks:
            m = mask[off:off + len(ch)]
            off += len(ch)
            if not m.any():
                continue
            if not pa.types.is_dictionary(ch.type) or ch.null_count:
                out += ch.filter(pa.array(m)).to_pylist()
                continue
            codes, inv = np.unique(ch.indices.to_numpy()[m], return_inverse=True)
            values = ch.dictionary.take(pa.array(codes)).to_pylist()
            out += [values[i] for i in inv.tolist()]
        return out

    return get


def _top_counts(counts: dict, n: int, label: str) -> list[dict]:
    if not counts:
        return []
    import pandas as pd

    # The same sort pandas' value_counts() applies to its first-occurrence counts.
    vc = pd.Series(list(counts.values()), index=pd.Index(list(counts.keys()), dtype=object)).sort_values(
        ascending=False)
    return [{label: k, "count": int(c)} for k, c in vc.head(n).items()]
