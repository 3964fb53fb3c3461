"""The fast paths of the part-by-part reader give what their definitions say.

Each test states the definition the fast code replaces (a task's events in
(tid, ts, event id) order; the last success before and the first after a
failure on its path; the rate and count tables) as a plain loop over rows,
and compares on inputs chosen to hit the edges: equal stamps, stamps out of
order, tids above 16 bits, stamps of 0, parts spanning several buckets.
"""

import numpy as np
import pandas as pd
import pytest

from vfstrace.correlate.batch import Windows
from vfstrace.correlate.walk import task_order
from vfstrace.correlate.syscall import Successes, neighbours
from vfstrace.events import ECHILD, ENOENT, Flag, Kind
from vfstrace.report.counts import RateCounts, TraceCounts


@pytest.mark.parametrize("seed", range(40))
def test_task_order_is_tid_then_time_then_id(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    wide = seed % 3 == 0  # tids above 16 bits: the second radix pass
    tid = rng.choice(np.array([5, 70_000, 70_001, 4_000_000, 65_535, 65_536] if wide else [1, 2, 3]), n).astype(np.uint32)
    ts = rng.integers(0, 20, n).astype(np.int64)
    if seed % 2:
        ts = np.sort(ts)  # rising stamps: the sort by time is skipped
    ids = np.arange(n)  # rows come in event-id order
    o = task_order(tid, ts)
    want = sorted(range(n), key=lambda i: (int(tid[i]), int(ts[i]), int(ids[i])))
    assert o.tolist() == want
    big = tid.astype(np.int64) + (2**40 if seed % 4 == 1 else 0)  # tids of a hand-made frame, beyond 32 bits
    assert task_order(big, ts).tolist() == want


def _neighbours_by_definition(S, succ, W):
    out = []
    rows = list(zip(succ["ts_ns"].astype(np.int64), succ["event_id"].astype(np.int64), succ["path"]))
    for t, p in zip(S["ts_ns"].astype(np.int64), S["path"]):
        same = [(ts, i) for ts, i, q in rows if q == p]
        before = max([(ts, i) for ts, i in same if ts < t and t - ts <= W], default=(-1, -1))
        after = min([(ts, i) for ts, i in same if ts > t and ts - t <= W], default=(-1, -1))
        out.append((*before, *after))
    return out


@pytest.mark.parametrize("seed", range(60))
def test_neighbours_are_the_last_success_before_and_the_first_after(seed):
    rng = np.random.default_rng(seed)
    paths = np.array(["/a", "/b", "/c/d", "", "/e"], dtype=object)
    step = [1, 7, 10**9, 2**57][seed % 4]  # the last: stamps too far apart for one search key
    n, m = int(rng.integers(0, 25)), int(rng.integers(0, 40))
    S = pd.DataFrame({"ts_ns": (rng.integers(0, 30, n) * step).astype(np.uint64), "path": paths[rng.integers(0, 5, n)],
                      "event_id": rng.permutation(10_000)[:n].astype(np.uint64)})
    succ = pd.DataFrame({"ts_ns": (rng.integers(0, 30, m) * step).astype(np.uint64),
                         "path": paths[rng.integers(0, 5, m)], "event_id": rng.permutation(10_000)[:m].astype(np.uint64)})
    succ = succ[succ["path"] != ""]  # presences() never holds an empty path
    W = int(rng.choice([3 * step, 10 * step, 100 * step]))
    got = neighbours(S, Successes(succ), Windows(syscall_window_ns=W))
    assert list(zip(got["before_ts"], got["before_id"], got["after_ts"], got["after_id"])) == \
        _neighbours_by_definition(S, succ, W)
    one_side = neighbours(S, succ, Windows(syscall_window_ns=W), before=False)
    assert "before_ts" not in one_side.columns and one_side["after_ts"].tolist() == got["after_ts"].tolist()


def _events(rng, n):
    kinds = np.array([int(k) for k in Kind], dtype=np.uint8)
    kind = rng.choice(kinds, n).astype(np.uint8)
    ret = rng.choice(np.array([0, ENOENT, ECHILD, 17, -1]), n).astype(np.int64)
    flags = rng.choice(np.array([0, int(Flag.RCU), int(Flag.SEQ_CHANGED), int(Flag.RCU) | int(Flag.SEQ_CHANGED)]),
                       n).astype(np.uint32)
    ts = (10**12 + rng.integers(0, 5 * 10**9, n)).astype(np.uint64)
    ts[rng.random(n) < 0.05] = 0  # no time known
    cpu = rng.choice(np.array([0, 1, 0xFFFFFFFF]), n).astype(np.uint32)
    comm = np.array(["a", "b", "c"], dtype=object)[rng.integers(0, 3, n)]
    path = np.array(["/x", "/y", ""], dtype=object)[rng.integers(0, 3, n)]
    return kind, ts, ret, flags, cpu, comm, path


@pytest.mark.parametrize("seed", range(10))
def test_rate_buckets_count_by_definition(seed):
    rng = np.random.default_rng(seed)
    kind, ts, ret, *_ = _events(rng, 2000)
    width = [10**9, 3 * 10**8, 10**6][seed % 3]
    t0 = int(ts[ts > 0].min())
    r = RateCounts(t0, width)
    for a in range(0, 2000, 300):  # part by part
        r.add(ts[a:a + 300], kind[a:a + 300], ret[a:a + 300])
    want = {}
    for k, t, x in zip(kind.tolist(), ts.tolist(), ret.tolist()):
        if t <= 0:
            continue
        b = want.setdefault((t - t0) // width, [0, 0, 0, 0, 0])
        b[0] += 1
        b[1] += k in (int(Kind.WALK_ENTER), int(Kind.LOOKUP_ENTER))
        b[2] += k == int(Kind.PRUNE)
        b[3] += x == ENOENT and k in (int(Kind.WALK_RETURN), int(Kind.LOOKUP_RETURN), int(Kind.PATH_SYSCALL))
        b[4] += x if k == int(Kind.LOST) else 0
    got = r.result()["buckets"]
    assert len(got) == max(want) + 1
    for i, g in enumerate(got):
        assert [g["events"], g["lookups"], g["prunes"], g["enoent"], g["lost"]] == want.get(i, [0] * 5)


@pytest.mark.parametrize("seed", range(10))
def test_trace_counts_count_by_definition(seed):
    rng = np.random.default_rng(seed)
    kind, ts, ret, flags, cpu, comm, path = _events(rng, 3000)
    c = TraceCounts()
    cols = {"comm": comm, "path": path}
    for a in range(0, 3000, 700):
        s = slice(a, a + 700)
        c.add(kind[s], ts[s], ret[s], flags[s], cpu[s], lambda col, m, s=s: cols[col][s][m].tolist())
    is_ret = [k in (int(Kind.WALK_RETURN), int(Kind.LOOKUP_RETURN)) for k in kind.tolist()]
    rows = list(zip(kind.tolist(), ret.tolist(), flags.tolist(), is_ret))
    assert c.lk == {
        "returns": sum(is_ret),
        "enoent": sum(r and x == ENOENT for k, x, f, r in rows),
        "enoent_rcu": sum(r and x == ENOENT and bool(f & int(Flag.RCU)) for k, x, f, r in rows),
        "echild": sum(r and x == ECHILD for k, x, f, r in rows),
        "seq_changed": sum(r and bool(f & int(Flag.SEQ_CHANGED)) for k, x, f, r in rows),
        "seq_check_failed": sum(k == int(Kind.SEQ_CHECK) and x != 0 for k, x, f, r in rows),
    }
    sys_en = [i for i, (k, x, f, r) in enumerate(rows) if k == int(Kind.PATH_SYSCALL) and x == ENOENT]
    assert c.sys_enoent == len(sys_en)
    assert sum(c.paths.values()) == len(sys_en) and list(c.paths) == list(dict.fromkeys(path[sys_en].tolist()))
    en = [i for i, (k, x, f, r) in enumerate(rows) if x == ENOENT and (r or k == int(Kind.PATH_SYSCALL))]
    assert list(c.comms.items()) == list(pd.Series(comm[en]).value_counts(sort=False).items())
    valid = ts[ts > 0]
    assert (c.t_min, c.t_max) == (int(valid.min()), int(valid.max()))
    assert c.counts.tolist() == np.bincount(kind, minlength=len(c.counts)).tolist()


def test_arrow_strings_are_the_masked_rows_in_order():
    import pyarrow as pa

    from vfstrace.report.counts import arrow_strings

    rng = np.random.default_rng(3)
    words = ["/a", "/b", "", "/c/d", "é"]
    plain = [pa.array(rng.choice(words, 50).tolist()) for _ in range(3)] + [pa.array(["/a", None, "/b"])]
    coded = pa.table({"path": pa.chunked_array([c.dictionary_encode() for c in plain])})  # as a part is read
    for table in (coded, pa.table({"path": pa.chunked_array(plain)})):
        n = table.num_rows
        for mask in (rng.random(n) < 0.3, np.zeros(n, dtype=bool), np.ones(n, dtype=bool)):
            assert arrow_strings(table)("path", mask) == table.column("path").filter(pa.array(mask)).to_pylist()


@pytest.mark.parametrize("seed", range(20))
def test_disorder_is_the_largest_fall_below_an_earlier_stamp_across_parts(seed):
    from vfstrace.correlate.parts import Disorder

    rng = np.random.default_rng(seed)
    ts = np.cumsum(rng.integers(0, 5, 300)).astype(np.uint64)
    if seed % 2:  # some stamps out of order (per-CPU buffers)
        i = rng.integers(0, 300, 20)
        ts[i] = ts[i] - np.minimum(ts[i], rng.integers(0, 40, 20).astype(np.uint64))
    d = Disorder()
    cuts = np.sort(rng.integers(0, 300, 6))
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, 300]):
        d.add(np.arange(a, b) + 1, ts[a:b])
    t = ts.astype(np.int64)
    assert d.disorder_ns == max([0] + [int(t[:j].max()) - int(t[j]) for j in range(1, 300)])
    assert d.max_ts == int(t.max())
