"""Walk-level (kprobe tier) verdicts: did a -ENOENT lookup race a prune of its dentry?

Apart from the batch driver so the batch and the streaming correlator
call the very same two functions: :func:`walk_segments` turns the per-task
walk events into one summary row per judged ``WALK_RETURN``, and
:func:`judge_walks` joins those rows with the evidence (prunes, address
reuse, namespace operations, lost events). Everything is numpy/pandas over
whole columns; Python loops only run over judged rows, which are rare.

The judged event is the ``WALK_RETURN`` (walk_component's outcome, or
step_into's outside walk_component with ``Flag.STEP``: an open()'s last
component; the tracer reports each lookup at one of the two, never both)
with ret -ENOENT or -ECHILD; ``LOOKUP_RETURN`` is evidence (the dentry found,
an -ECHILD from lookup_fast) but never judged, so no lookup is counted twice.

What ties evidence to a walk is the state it carries, never its place in a
stream (docs/verdicts.md has the table):

* a task's walk events are put in time order (per-CPU buffers deliver them
  grouped by CPU, so event ids are not the task's order);
* a ``SEQ_CHECK`` belongs to a walk only if it ran inside one (``IN_WALK``,
  or ``RCU`` in traces recorded before that flag existed: the tracer copies
  the walk state's flags into it) and names the walk's dentry, its parent
  or none: complete_walk() and the other re-checks outside walk_component()
  belong to a lookup whose last component succeeded, not to the next walk;
* "same incarnation" of a dentry address is decided by time: a D_ALLOC or
  D_FREE at the address between the walk and the prune separates them;
* a name is the component up to the first '/': the kprobe tier reads
  ``nd->last`` as a string, which runs on to the end of the path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vfstrace.correlate.identity import component, group_lists, own_rechecks, removals, same_incarnation
from vfstrace.correlate.inflight import flagged, inflight_prunes
from vfstrace.events import ECHILD, ENOENT, Flag, Kind, op_name

WALK_KINDS = np.array([Kind.WALK_ENTER, Kind.WALK_RETURN, Kind.LOOKUP_ENTER, Kind.LOOKUP_RETURN, Kind.SEQ_CHECK],
                      dtype=np.uint8)
PRUNE_KINDS = np.array([Kind.PRUNE, Kind.UNHASH, Kind.IPUT], dtype=np.uint8)
BOUNDARY_KINDS = np.array([Kind.D_FREE, Kind.D_ALLOC], dtype=np.uint8)

_WR, _WE, _LE, _LR, _SC = (int(Kind.WALK_RETURN), int(Kind.WALK_ENTER), int(Kind.LOOKUP_ENTER),
                           int(Kind.LOOKUP_RETURN), int(Kind.SEQ_CHECK))
_BIG = np.iinfo(np.int64).max
# SEQ_CHECK flags that say it ran inside a walk_component() call (the tracer
# copied the walk state's flags): IN_WALK, or RCU in older traces.
_IN_WALK_FLAGS = int(Flag.IN_WALK) | int(Flag.RCU)

J_COLUMNS = ["event_id", "ts_ns", "start", "first_id", "tid", "pid", "comm", "ret", "flags", "dentry", "parent",
             "name", "path", "retry_ids", "found_ino"]


def _reduce_last(mask, seg_starts, n):
    """Per segment, the index of the last row where ``mask`` holds, else -1."""
    idx = np.where(mask, np.arange(n, dtype=np.int64), -1)
    return np.maximum.reduceat(idx, seg_starts) if n else idx


def task_order(tid: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Indices putting rows given in event-id order into (tid, ts, event id) order: a task's events in time order.

    Why not one lexsort: rows come in event-id order, so a stable sort keeps
    ids in order among equal keys, and a stable sort by ts (skipped when the
    stamps already rise, as they mostly do) then by tid gives the three-key
    order. The tid sort is two stable 16-bit radix passes (one when every
    tid shares its upper half), several times faster than sorting a 64-bit
    key.
    """
    if tid.dtype.itemsize > 4 or tid.dtype.kind != "u":  # a hand-made frame's tids may not fit 32 bits
        if len(tid) and (int(tid.min()) < 0 or int(tid.max()) >= 2**32):
            return np.lexsort((ts, tid))
    order = None
    if len(ts) > 1 and not (ts[1:] >= ts[:-1]).all():
        order = np.argsort(ts, kind="stable")
        tid = tid[order]
    tid = tid.astype(np.uint32, copy=False)
    by = np.argsort((tid & np.uint32(0xFFFF)).astype(np.uint16), kind="stable")
    hi = (tid >> np.uint32(16)).astype(np.uint16)
    if len(hi) and hi.min() != hi.max():
        by = by[np.argsort(hi[by], kind="stable")]
    return by if order is None else order[by]


def walk_segments(W: pd.DataFrame, win):
    """Summarise walks; returns ``(J, open_mask)``.

    ``W`` holds walk-kind rows (WALK_*, LOOKUP_*, SEQ_CHECK) in event_id
    order. A walk on a task is everything since that task's previous
    ``WALK_RETURN``: the kernel side may filter out a ``WALK_ENTER``, so the
    walk's start is its earliest event (within ``max_walk_ns`` of the return),
    or ``walk_ns`` before the return when nothing else of it was seen.
    ``open_mask`` marks rows of walks that have not returned yet (the
    streaming correlator carries them to the next chunk).
    """
    n = len(W)
    if n == 0:
        return pd.DataFrame({c: [] for c in J_COLUMNS}), np.zeros(0, dtype=bool)
    tid0 = W["tid"].to_numpy()
    ts0 = W["ts_ns"].to_numpy().astype(np.int64)
    eid0 = W["event_id"].to_numpy().astype(np.int64)
    # A task runs one walk at a time: its events in time order (ids break ties).
    order = task_order(tid0, ts0) if n < 2 or (eid0[1:] > eid0[:-1]).all() else np.lexsort((eid0, ts0, tid0))
    tid = tid0[order]
    kind = W["kind"].to_numpy()[order]
    ret = W["ret"].to_numpy()[order]
    ts = ts0[order]
    eid = eid0[order]
    flg = W["flags"].to_numpy()[order]
    # Re-checks that ran outside any walk_component() call are no walk's.
    outside = (kind == _SC) & ((flg & _IN_WALK_FLAGS) == 0)
    is_wr = kind == _WR
    boundary = np.ones(n, dtype=bool)
    boundary[1:] = (tid[1:] != tid[:-1]) | is_wr[:-1]
    seg_starts = np.flatnonzero(boundary)
    seg_ends = np.r_[seg_starts[1:], n] - 1
    seg = np.cumsum(boundary) - 1
    complete = is_wr[seg_ends]
    open_mask = np.zeros(n, dtype=bool)
    open_mask[order] = ~complete[seg]
    end_ret = ret[seg_ends]
    judged = complete & ((end_ret == ENOENT) | (end_ret == ECHILD))
    if not judged.any():
        return pd.DataFrame({c: [] for c in J_COLUMNS}), open_mask
    end_ts = ts[seg_ends]
    valid = (ts >= end_ts[seg] - win.max_walk_ns) & ~is_wr & judged[seg] & ~outside
    first_ts = np.minimum.reduceat(np.where(valid, ts, _BIG), seg_starts)
    first_id = np.minimum.reduceat(np.where(valid, eid, _BIG), seg_starts)
    dent = W["dentry"].to_numpy()[order]
    last_lr = _reduce_last(valid & (kind == _LR) & (dent != 0), seg_starts, n)
    retry = own_rechecks(valid, kind, ret, dent, W["parent"].to_numpy()[order], seg, seg_ends, last_lr)
    # The walk's entry: prefer one in the directory the return names. With
    # clock skew, a task that migrated mid-walk can have events of its
    # previous component stamped after this one's entry.
    W_par = W["parent"].to_numpy()[order]
    is_en = valid & ((kind == _WE) | (kind == _LE))
    wr_par = W_par[seg_ends][seg]
    last_en_any = _reduce_last(is_en, seg_starts, n)
    last_en_par = _reduce_last(is_en & (W_par == wr_par) & (wr_par != 0), seg_starts, n)
    last_en = np.where(last_en_par >= 0, last_en_par, last_en_any)

    js = np.flatnonzero(judged)  # segment numbers
    rows = seg_ends[js]  # sorted-order index of the WALK_RETURN
    src = order[rows]  # index into W
    J = W.iloc[src][["event_id", "ts_ns", "tid", "pid", "comm", "ret", "flags", "dentry", "parent", "name", "path"]]
    J = J.reset_index(drop=True)
    start = np.where(first_ts[js] == _BIG, end_ts[js] - win.walk_ns, np.minimum(first_ts[js], end_ts[js]))
    J["start"] = start
    J["first_id"] = np.where(first_id[js] == _BIG, -1, first_id[js])
    # The dentry: the return's own, else the last one lookup_fast returned.
    lr = last_lr[js]
    d = J["dentry"].to_numpy().copy()
    take = (d == 0) & (lr >= 0)
    d[take] = dent[lr[take]]
    J["dentry"] = d
    # The inode the walk's lookup found (lookup_fast's return, where the tier
    # streams it): 0 a negative dentry, -1 unknown.
    lr_ok = (lr >= 0) & (dent[np.maximum(lr, 0)] == d)
    J["found_ino"] = np.where(lr_ok, W["ino"].to_numpy().astype(np.int64)[order][np.maximum(lr, 0)], -1)
    # Parent and name: the return's own, else the walk's entry event.
    en = last_en[js]
    par = J["parent"].to_numpy().copy()
    has_en = en >= 0
    fix = (par == 0) & has_en
    par[fix] = W_par[en[fix]]
    J["parent"] = par
    names = J["name"].to_numpy(dtype=object).copy()
    paths = J["path"].to_numpy(dtype=object).copy()
    if has_en.any():
        W_name = W["name"].to_numpy(dtype=object)[order]
        W_path = W["path"].to_numpy(dtype=object)[order]
        for i in np.flatnonzero(has_en):
            if not names[i]:
                names[i] = W_name[en[i]]
            if not paths[i]:
                paths[i] = W_path[en[i]]
    J["name"] = names
    J["path"] = paths
    # Ids of the re-check failures inside each judged walk.
    r_rows = np.flatnonzero(retry)
    retry_ids = [[] for _ in range(len(js))]
    if len(r_rows):
        pos = np.searchsorted(js, seg[r_rows])
        for p, e in zip(pos.tolist(), eid[r_rows].tolist()):
            retry_ids[p].append(e)
    J["retry_ids"] = retry_ids
    return J[J_COLUMNS], open_mask


def _window_join(Jk, P, ts_col, tol):
    """Pairs (judged walk, prune row) at the same address with the prune in [start - tol, end + tol].

    A plain merge on the address would pair every walk with every prune that
    ever hit a busy (reused) address; this finds each walk's slice of the
    address-then-time sorted prunes by binary search instead.
    """
    if not len(Jk) or not len(P):
        return Jk.iloc[0:0].merge(P.iloc[0:0], on="dentry")
    # Sorted by (address, time) as indices: only the rows paired are taken from P.
    order = np.lexsort((P[ts_col].to_numpy(), P["dentry"].to_numpy()))
    pd_ = P["dentry"].to_numpy()[order]
    pts = P[ts_col].to_numpy().astype(np.int64)[order]
    ud, first = np.unique(pd_, return_index=True)
    last = np.r_[first[1:], len(pd_)]
    jd = Jk["dentry"].to_numpy()
    r = np.minimum(np.searchsorted(ud, jd), len(ud) - 1)
    present = ud[r] == jd
    lo_t = Jk["start"].to_numpy(np.int64) - tol
    hi_t = Jk["end"].to_numpy(np.int64) + tol
    tmin = int(min(pts.min(), lo_t.min()))
    span = int(max(pts.max(), hi_t.max())) - tmin + 1
    if len(ud) * span < 2**62:
        # One sorted key: address rank, then time.
        rank = np.repeat(np.arange(len(ud), dtype=np.int64), last - first)
        key = rank * span + (pts - tmin)
        a = np.searchsorted(key, r.astype(np.int64) * span + (lo_t - tmin), "left")
        b = np.searchsorted(key, r.astype(np.int64) * span + (hi_t - tmin), "right")
    else:
        a = np.zeros(len(jd), dtype=np.int64)
        b = np.zeros(len(jd), dtype=np.int64)
        for i in np.flatnonzero(present):
            g0, g1 = first[r[i]], last[r[i]]
            a[i] = g0 + np.searchsorted(pts[g0:g1], lo_t[i], "left")
            b[i] = g0 + np.searchsorted(pts[g0:g1], hi_t[i], "right")
    cnt = np.where(present, np.maximum(b - a, 0), 0)
    ji = np.repeat(np.arange(len(jd)), cnt)
    pi = np.concatenate([np.arange(x, y) for x, y, c in zip(a, b, cnt) if c]) if cnt.any() else np.zeros(0, np.int64)
    left = Jk.iloc[ji].reset_index(drop=True)
    right = P.iloc[order[pi]].drop(columns="dentry").reset_index(drop=True)
    return pd.concat([left, right], axis=1)


def judge_walks(J: pd.DataFrame, E: pd.DataFrame, win, unplaced_lost: int = 0) -> pd.DataFrame:
    """Verdicts for judged walks ``J`` (from :func:`walk_segments`) given evidence rows ``E``.

    ``unplaced_lost``: events the trace says were lost (its metadata) that no
    LOST record places in time; then no window is known to be complete and
    no walk is ``race`` or ``absent`` (``uncertain``, with that reason).
    """
    n = len(J)
    if n == 0:
        return None
    ekind = E["kind"].to_numpy()
    start = J["start"].to_numpy(np.int64)
    end = J["ts_ns"].to_numpy().astype(np.int64)
    jid = J["event_id"].to_numpy().astype(np.int64)
    jd = J["dentry"].to_numpy()
    # Joined on the component (see component()); shown as recorded.
    jname = np.array([component(x) for x in J["name"].tolist()], dtype=object)
    jparent = J["parent"].to_numpy()
    tol = win.skew_ns
    Jk = pd.DataFrame({"jrow": np.arange(n), "jid": jid, "start": start, "end": end, "dentry": jd,
                       "parent": jparent, "name": jname})
    B = E.loc[np.isin(ekind, BOUNDARY_KINDS), ["event_id", "ts_ns", "kind", "dentry"]]

    # --- prunes of the same dentry (same incarnation) overlapping the walk ---
    P = E.loc[np.isin(ekind, PRUNE_KINDS), ["event_id", "ts_ns", "kind", "dentry", "parent", "ino", "name"]]
    P = P.rename(columns={"event_id": "pid_", "ts_ns": "pts", "kind": "pkind", "parent": "pparent", "ino": "pino",
                          "name": "pname"})
    pnames = P["pname"].tolist()
    # A d_name never holds '/': only hand-written traces get here (each distinct name looked at once).
    if any(isinstance(x, str) and "/" in x for x in set(pnames)):
        slash = np.fromiter((isinstance(x, str) and "/" in x for x in pnames), dtype=bool, count=len(P))
        P.loc[slash, "pname"] = [component(x) for x in P.loc[slash, "pname"].tolist()]
    by_d = _window_join(Jk[jd != 0], P[P["dentry"] != 0], "pts", tol)
    pj = Jk[(jd == 0) & (jparent != 0) & (jname != "")]
    by_pn = pj.merge(P, left_on=["parent", "name"], right_on=["pparent", "pname"], suffixes=("", "_p"))
    if len(by_pn):
        by_pn = by_pn.drop(columns=["dentry_p"])
    pairs = pd.concat([by_d, by_pn], ignore_index=True) if len(by_pn) else by_d
    prune_seen = np.zeros(n, dtype=bool)
    prune_ids = [[] for _ in range(n)]
    found_ino = np.zeros(n, dtype=np.int64)
    if len(pairs):
        pts = pairs["pts"].to_numpy().astype(np.int64)
        ok = (pts >= pairs["start"].to_numpy() - tol) & (pts <= pairs["end"].to_numpy() + tol)
        nm, pn = pairs["name"].to_numpy(dtype=object), pairs["pname"].to_numpy(dtype=object)
        ok &= ~((nm != "") & (pn != "") & (nm != pn))
        pairs = pairs[ok]
        if len(pairs):
            pairs = pairs[same_incarnation(pairs, B, "pts", tol)]
        if len(pairs):
            pos = (pairs["pkind"].to_numpy() == Kind.IPUT) | (pairs["pino"].to_numpy() != 0)
            jr = pairs["jrow"].to_numpy()
            positive = np.zeros(n, dtype=bool)
            positive[jr[pos]] = True
            prune_seen = positive
            keep = positive[jr]
            prune_ids = group_lists(jr[keep], pairs["pid_"].to_numpy()[keep], n)
            # The inode the walk found: the one the latest overlapping prune released.
            pino = pairs["pino"].to_numpy().astype(np.int64)
            k = keep & (pino != 0) & (pairs["pts"].to_numpy().astype(np.int64) <= pairs["end"].to_numpy())
            if k.any():
                last = pd.DataFrame({"j": jr[k], "t": pairs["pts"].to_numpy()[k], "ino": pino[k]})
                last = last.sort_values(["j", "t"], kind="stable").drop_duplicates("j", keep="last")
                found_ino[last["j"].to_numpy()] = last["ino"].to_numpy()
    # The kernel side's PRUNE_INFLIGHT bit: its prune may lie before the
    # window (a widened walk, a prune begun before the lookup); cite it from
    # the address's history, and say `race` on the bit only when it is cited.
    inflight = flagged(J)
    for i, ids in enumerate(inflight_prunes(J, E, inflight & ~np.array([bool(x) for x in prune_ids]), tol)):
        if ids:
            prune_ids[i] = ids
    uncited = inflight & ~np.array([bool(x) for x in prune_ids])
    prune_seen |= inflight
    # A lookup that found the dentry negative was told the truth, whatever
    # happened to the dentry afterwards (a re-create, then its prune).
    lr_ino = J["found_ino"].to_numpy().astype(np.int64)
    prune_seen &= lr_ino != 0
    found_ino = np.where(lr_ino >= 0, lr_ino, found_ino)
    uncited &= prune_seen

    ns_ids, ns_op = removals(J, Jk, E, B, win, found_ino)
    explained = np.array([bool(x) for x in ns_ids])

    # --- lost events in the window ---
    L = E.loc[ekind == Kind.LOST, ["event_id", "ts_ns", "ret"]].sort_values(["ts_ns", "event_id"])
    lts = L["ts_ns"].to_numpy().astype(np.int64)
    lo = np.searchsorted(lts, start - tol, "left")
    hi = np.searchsorted(lts, end + tol + win.loss_horizon_ns, "right")
    lost = hi > lo
    lids = L["event_id"].to_numpy()
    lcnt = L["ret"].to_numpy()

    ret = J["ret"].to_numpy()
    retry_ids = J["retry_ids"].tolist()
    has_retry = np.array([bool(x) for x in retry_ids])
    echild = ret == ECHILD
    lost = lost | (unplaced_lost > 0)
    verdict = np.where(
        echild, "retried",
        np.where(explained, "explained",
                 np.where(prune_seen & has_retry, "retried",
                          np.where(lost | uncited, "uncertain",
                                   np.where(prune_seen, "race", "absent"))))).astype(object)
    # Per walk, the LOST records in its window (most walks have none).
    ev_lost = [[] for _ in range(n)]
    n_lost = [0] * n
    for i in np.flatnonzero(hi > lo).tolist():
        ev_lost[i] = lids[lo[i]:hi[i]].tolist()
        n_lost[i] = int(lcnt[lo[i]:hi[i]].sum())
    evidence, reason = _explain(J, verdict, dict(
        prune_seen=prune_seen, prune_ids=prune_ids, retry_ids=retry_ids, ns_ids=ns_ids, ns_op=ns_op,
        ev_lost=ev_lost, n_lost=n_lost, unplaced_lost=int(unplaced_lost), uncited=uncited))
    return pd.DataFrame({
        "event_id": J["event_id"].to_numpy().astype(np.uint64),
        "verdict": verdict,
        "ts_ns": J["ts_ns"].to_numpy().astype(np.uint64),
        "tid": J["tid"].to_numpy().astype(np.uint32),
        "pid": J["pid"].to_numpy().astype(np.uint32),
        "comm": J["comm"].to_numpy(dtype=object),
        "dentry": J["dentry"].to_numpy().astype(np.uint64),
        "name": J["name"].to_numpy(dtype=object),
        "path": J["path"].to_numpy(dtype=object),
        "evidence": evidence,
        "reason": reason,
        "overlap": prune_seen & (verdict != "explained"),
        "count": np.ones(n, dtype=np.uint32),  # the kernel never folds walks
    })


_PLAIN_MISS = "plain miss: no prune of this dentry and no removal of this name in the window"


def _explain(J, verdict, why):
    """Per verdict, the events it rests on and one sentence naming that evidence."""
    # Python lists, not arrays: this loop runs once per judged walk.
    first_id = J["first_id"].to_numpy().astype(np.int64).tolist()
    flags = J["flags"].to_numpy().tolist()
    jid = J["event_id"].to_numpy().astype(np.int64).tolist()
    echild = (J["ret"].to_numpy() == ECHILD).tolist()
    seen, pids, rids = why["prune_seen"].tolist(), why["prune_ids"], why["retry_ids"]
    evidence, reason = [], []
    for i, v in enumerate(verdict.tolist()):
        f, j = first_id[i], jid[i]
        if v == "absent":  # most walks: the walk's first event and its return
            evidence.append([j] if f < 0 or f == j else [f, j] if f < j else [j, f])
            reason.append(_PLAIN_MISS)
            continue
        ev = [f] if f >= 0 else []
        if v == "retried":
            ev += rids[i] + pids[i]
            if echild[i]:
                r = ("walk returned -ECHILD during a prune of this dentry: d_seq re-check failed, retried in ref-walk"
                     if seen[i] else "walk returned -ECHILD with no prune of this dentry seen: "
                     "the kernel's own retry, not an overlap")
            else:
                r = "prune of this dentry overlapped the walk; its d_seq re-check failed (-ECHILD) and the walk retried"
        elif v == "explained":
            ev += why["ns_ids"][i]
            r = f"{op_name(why['ns_op'][i])} removed this name within the walk's window"
        elif v == "uncertain":
            ev += pids[i] + why["ev_lost"][i]
            missing = ("a prune overlapped but a re-check or namespace operation may be missing"
                       if seen[i] else "a prune or namespace operation may be missing")
            if why["n_lost"][i]:
                r = f"{why['n_lost'][i]} event(s) lost in the window: {missing}"
            elif why["uncited"][i] and not why["unplaced_lost"]:
                r = ("the kernel side saw a prune of this dentry in flight, but no PRUNE event in the trace "
                     "can be that one (lost, or freed before the walk)")
            else:
                r = (f"the trace reports {why['unplaced_lost']} lost event(s) that no LOST record places in time: "
                     f"{missing}")
        elif v == "race":
            ev += pids[i]
            r = "prune of this dentry overlapped the walk; -ENOENT with no d_seq re-check or retry"
            if flags[i] & int(Flag.SEQ_CHANGED):
                r += " (d_seq changed)"
        else:
            r = _PLAIN_MISS
        ev.append(j)
        evidence.append(_sorted_ids(ev))
        reason.append(r)
    return evidence, reason


def _sorted_ids(ev: list) -> list:
    """``sorted(set(ev))``, without building a set for the one or two ids most verdicts cite."""
    if len(ev) == 1:
        return ev
    if len(ev) == 2:
        a, b = ev
        return [a] if a == b else [a, b] if a < b else [b, a]
    return sorted(set(ev))
