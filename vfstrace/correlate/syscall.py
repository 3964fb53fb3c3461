"""Syscall-level verdicts: what the tracepoint tier can say about a failed path syscall.

Kernels that allow BPF on tracepoints but not kprobes show only system call
results, namespace operations, dentry-cache frees/allocations and shrinker
runs; nobody sees the walk, the dentry it found, or a d_seq re-check. So these
verdicts are LOWER RESOLUTION than the walk-level ones in
vfstrace/correlate/walk.py: they judge a ``PATH_SYSCALL`` that returned
-ENOENT by what happened to its *path*, not to a dentry.

* ``explained``: a namespace operation removed the path or a directory above
  it (unlink, rmdir, rename *away*) shortly before the failure (or between
  the last success and the next one on that path), and the path did not
  exist again between that removal and the failure. A rename *onto* a path
  never explains: it replaces the name atomically;
* ``transient``: the path existed just before and just after, nothing
  removed it in between, and dentry frees or shrinker activity ran around
  the failure: a suspect of the pruned-dentry race, not proof (on a kernel
  with kprobes, the walk-level verdict is the proof). "Existed before" is a
  successful path syscall on it or an operation that created it (mkdir,
  link or rename onto it) within ``syscall_window_ns``; "existed after" is a
  successful path syscall within that window or the tracer's own re-check
  of the path right after the failure (``Flag.EXISTS_AFTER``), so a default
  recording (successes not streamed) can reach it. The reason names which;
* ``uncertain``: would be ``transient`` (or ``absent``) but events were lost
  in that span, or the trace reports losses no LOST record places;
* ``absent``: a plain miss.

Paths are compared as strings: a relative path and its absolute form do not
match, which can only make a verdict ``absent`` where it could have been
``explained`` or ``transient``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vfstrace.events import ENOENT, Flag, Kind, Op, op_name

ACTIVITY_KINDS = np.array([Kind.D_FREE, Kind.SHRINK_START, Kind.SHRINK_END], dtype=np.uint8)
PATH_OPS = np.array([Op.UNLINK, Op.RMDIR, Op.RENAME], dtype=np.uint16)
# Operations after which a path exists: mkdir (path), link and rename (path2: the new name).
CREATING_OPS = {int(Op.MKDIR): "path", int(Op.LINK): "path2", int(Op.RENAME): "path2"}
_NONE = -1


def judged_syscalls(df: pd.DataFrame) -> np.ndarray:
    """Mask of PATH_SYSCALL rows that returned -ENOENT."""
    return (df["kind"].to_numpy() == Kind.PATH_SYSCALL) & (df["ret"].to_numpy() == ENOENT)


def successes(df: pd.DataFrame) -> np.ndarray:
    m = (df["kind"].to_numpy() == Kind.PATH_SYSCALL) & (df["ret"].to_numpy() >= 0)
    rows = np.flatnonzero(m)  # paths compared on these rows only (a string comparison per row is slow)
    m[rows] = df["path"].to_numpy(dtype=object)[rows] != ""
    return m


def presences(df: pd.DataFrame) -> pd.DataFrame:
    """(event_id, ts_ns, path) of every event after which ``path`` existed.

    Successful path syscalls, and the namespace operations that create a
    name (mkdir, link, rename onto it: the new name in ``path2``). An open
    with O_CREAT is a successful path syscall where successes are streamed.
    """
    cols = ["event_id", "ts_ns", "path"]
    parts = [df.loc[successes(df), cols]]
    kind, op = df["kind"].to_numpy(), df["op"].to_numpy()
    ok = (kind == Kind.NS_OP) & (df["ret"].to_numpy() >= 0)
    for o, col in CREATING_OPS.items():
        m = ok & (op == o)
        if m.any():
            c = df.loc[m, ["event_id", "ts_ns", col]].rename(columns={col: "path"})
            parts.append(c[c["path"].to_numpy(dtype=object) != ""])
    parts = [p for p in parts if len(p)]
    if not parts:
        return df.loc[successes(df), cols]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


class Successes:
    """The events after which a path existed (presences()), indexed for neighbours(): sorted by (path, stamp, id).

    Why a class: the streaming correlator asks twice per round (the
    failures' "before", then their "after") of the same successes; the
    index, the costly part, is built once for both.
    """

    def __init__(self, succ: pd.DataFrame):
        codes, uniques = pd.factorize(succ["path"].to_numpy(dtype=object))  # a missing path: -1, no one's
        self.paths = pd.Index(uniques, dtype=object)
        code = codes.astype(np.int64)
        ts = succ["ts_ns"].to_numpy().astype(np.int64)
        sid = succ["event_id"].to_numpy().astype(np.int64)
        ok = code >= 0
        code, ts, sid = code[ok], ts[ok], sid[ok]
        # One key, path code then stamp: the stamps' offsets span less than ``span``.
        self.tmin = int(ts.min()) if len(ts) else 0
        self.span = (int(ts.max()) - self.tmin + 1) if len(ts) else 1
        if len(uniques) * self.span < 2**62:
            key = code * self.span + (ts - self.tmin)
            order = np.argsort(key)  # unstable, several times faster than a two-key sort ...
            k = key[order]
            if len(k) > 1 and (k[1:] == k[:-1]).any():  # ... unless one path has two stamps alike: then by id too
                order = np.lexsort((sid, key))
        else:  # stamps too far apart for one key
            key = None
            order = np.lexsort((sid, ts, code))
        self.code, self.ts, self.sid = code[order], ts[order], sid[order]
        self.key = key[order] if key is not None else None

    def __len__(self) -> int:
        return len(self.code)


def neighbours(S: pd.DataFrame, succ, win, *, before=True, after=True) -> pd.DataFrame:
    """Add before_ts/before_id (last success on the path within the window before)
    and after_ts/after_id (first success after) to the judged rows ``S``.

    ``succ``: presences() or its :class:`Successes`. "Last before" is the
    latest stamp strictly below the failure's (the highest id among equal
    stamps), "first after" the earliest strictly above it (the lowest id):
    an as-of join by path, made as a binary search over the successes
    sorted by (path, stamp, id), the path an integer code.
    """
    idx = succ if isinstance(succ, Successes) else Successes(succ)
    S = S.copy()
    n = len(S)
    W = win.syscall_window_ns
    t = S["ts_ns"].to_numpy().astype(np.int64)
    qc = idx.paths.get_indexer(S["path"].to_numpy(dtype=object)).astype(np.int64) if n else np.zeros(0, np.int64)
    sc, sts, sid = idx.code, idx.ts, idx.sid
    found = {}
    if n and len(sc):
        if idx.key is not None:
            key, span = idx.key, idx.span
            # A stamp outside the successes' span searches from just outside it:
            # before all of its path's rows, or after all of them.
            qt = np.clip(t - idx.tmin, -1, span)
        else:  # stamps too far apart for one key: their ranks keep the order
            ranks = np.unique(np.concatenate([t, sts]), return_inverse=True)[1].astype(np.int64)
            qt, span = ranks[:n], len(ranks) + 1
            key = sc * span + ranks[n:]
        qk = qc * span + qt  # a path with no success (code -1) finds no row of its own path
        if before:
            i = np.searchsorted(key, qk, "left") - 1  # the last key below: same path, earlier stamp
            j = np.maximum(i, 0)
            found["before"] = (i >= 0) & (sc[j] == qc) & (t - sts[j] <= W), j
        if after:
            i = np.searchsorted(key, qk, "right")  # the first key above: same path, later stamp
            j = np.minimum(i, len(sc) - 1)
            found["after"] = (i < len(sc)) & (sc[j] == qc) & (sts[j] - t <= W), j
    for side in [x for x, want in (("before", before), ("after", after)) if want]:
        hit, j = found.get(side, (np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)))
        S[f"{side}_ts"] = np.where(hit, sts[j] if len(sts) else _NONE, _NONE).astype(np.int64)
        S[f"{side}_id"] = np.where(hit, sid[j] if len(sid) else _NONE, _NONE).astype(np.int64)
    return S


def final_at(S: pd.DataFrame, win) -> np.ndarray:
    """The time after which every event a row's verdict depends on has been seen."""
    t = S["ts_ns"].to_numpy().astype(np.int64)
    b = S["before_ts"].to_numpy()
    a = S["after_ts"].to_numpy()
    near = t + win.explain_after_ns
    waiting = t + win.syscall_window_ns
    full = np.maximum.reduce([a + win.skew_ns + win.loss_horizon_ns, near, t + win.activity_ns])
    return np.where(b == _NONE, near, np.where(a == _NONE, np.maximum(near, waiting), full))


def _ancestors(p):
    out = [p]
    while True:
        i = p.rfind("/")
        if i <= 0:
            break
        p = p[:i]
        out.append(p)
    return out


def _removals(S, E, win, b, flicker):
    """Per judged syscall, the removals (unlink, rmdir, rename away) of its path or a parent that explain it."""
    n = len(S)
    t = S["ts_ns"].to_numpy().astype(np.int64)
    paths = S["path"].to_numpy(dtype=object)
    ns_ids = [[] for _ in range(n)]
    ns_op = np.zeros(n, dtype=np.int64)
    ekind = E["kind"].to_numpy()
    N = E.loc[(ekind == Kind.NS_OP) & np.isin(E["op"].to_numpy(), PATH_OPS) & (E["ret"].to_numpy() >= 0),
              ["event_id", "ts_ns", "op", "path"]]
    keys = [(i, anc) for i, p in enumerate(paths.tolist()) if p for anc in _ancestors(p)]
    if not len(N) or not keys:
        return ns_ids, ns_op
    K = pd.DataFrame(keys, columns=["_r", "key"])
    # Only the name a rename moves away from (path); path2, the name it
    # lands on, existed before and after.
    m = K.merge(N[N["path"] != ""].rename(columns={"path": "key"}), on="key")
    if not len(m):
        return ns_ids, ns_op
    r = m["_r"].to_numpy()
    nts = m["ts_ns"].to_numpy().astype(np.int64)
    ok = (nts >= t[r] - win.explain_before_ns) & (nts <= t[r] + win.explain_after_ns)
    ok |= flicker[r] & (nts >= b[r]) & (nts <= S["after_ts"].to_numpy()[r])
    # The path existed again after the removal (a success on it, or a
    # creation): that removal no longer explains the failure.
    ok &= ~((b[r] != _NONE) & (b[r] > nts + win.skew_ns))
    m = m[ok]
    if len(m):
        m = m.drop_duplicates(["_r", "event_id"]).sort_values(["_r", "event_id"])
        for j, e in zip(m["_r"].tolist(), m["event_id"].tolist()):
            ns_ids[j].append(int(e))
        first = m.drop_duplicates("_r")
        ns_op[first["_r"].to_numpy()] = first["op"].to_numpy()
    return ns_ids, ns_op


def judge_syscalls(S: pd.DataFrame, E: pd.DataFrame, win, unplaced_lost: int = 0) -> pd.DataFrame | None:
    """Verdicts for judged syscalls ``S`` (with before/after columns) given evidence ``E``.

    ``unplaced_lost``: lost events no LOST record places (see
    vfstrace/correlate/walk.py judge_walks): no ``transient`` or ``absent``.
    """
    n = len(S)
    if n == 0:
        return None
    t = S["ts_ns"].to_numpy().astype(np.int64)
    b = S["before_ts"].to_numpy()
    a = S["after_ts"].to_numpy()
    recheck = (S["flags"].to_numpy() & int(Flag.EXISTS_AFTER)) != 0
    after = (a != _NONE) | recheck
    flicker = (b != _NONE) & after
    paths = S["path"].to_numpy(dtype=object)
    ekind = E["kind"].to_numpy()
    ns_ids, ns_op = _removals(S, E, win, b, (b != _NONE) & (a != _NONE))
    explained = np.array([bool(x) for x in ns_ids])
    # Dentry frees or shrinker runs around the failure.
    A = E.loc[np.isin(ekind, ACTIVITY_KINDS), ["event_id", "ts_ns"]].sort_values(["ts_ns", "event_id"])
    ats = A["ts_ns"].to_numpy().astype(np.int64)
    alo = np.searchsorted(ats, t - win.activity_ns, "left")
    ahi = np.searchsorted(ats, t + win.activity_ns, "right")
    active = ahi > alo
    aids = A["event_id"].to_numpy()
    # Lost events between the last success and the next one (or the re-check, right after).
    L = E.loc[ekind == Kind.LOST, ["event_id", "ts_ns", "ret"]].sort_values(["ts_ns", "event_id"])
    lts = L["ts_ns"].to_numpy().astype(np.int64)
    llo = np.searchsorted(lts, np.minimum(b, t - win.explain_before_ns) - win.skew_ns, "left")
    lhi = np.searchsorted(lts, np.where(a != _NONE, a, t) + win.skew_ns + win.loss_horizon_ns, "right")
    lost = flicker & ((lhi > llo) | (unplaced_lost > 0))
    lids = L["event_id"].to_numpy()
    transient = flicker & active & ~explained
    unsure_absent = ~explained & ~transient & (unplaced_lost > 0)
    verdict = np.where(explained, "explained",
                       np.where(transient & lost, "uncertain",
                                np.where(transient, "transient",
                                         np.where(unsure_absent, "uncertain", "absent")))).astype(object)
    eid = S["event_id"].to_numpy().astype(np.int64)
    bid, aid = S["before_id"].to_numpy(), S["after_id"].to_numpy()
    created = dict(zip(E.loc[ekind == Kind.NS_OP, "event_id"].to_numpy().astype(np.int64).tolist(),
                       E.loc[ekind == Kind.NS_OP, "op"].to_numpy().tolist()))
    at = np.searchsorted(ats, t, "left")  # per failure, the first activity at or after it
    evidence, reason = [], []
    for i in range(n):
        v = verdict[i]
        if v == "explained":
            ev = ns_ids[i]
            r = f"{op_name(ns_op[i])} of this path or a parent removed it (syscall level)"
        elif transient[i]:
            # The dentry free / shrinker event nearest the failure on each side.
            k = int(at[i])
            near = [aids[j] for j in (k - 1, k) if alo[i] <= j < ahi[i]]
            ev = [int(bid[i])] + ([int(aid[i])] if a[i] != _NONE else []) + [int(x) for x in near]
            op_b = created.get(int(bid[i]))
            how_b = f"{op_name(op_b)} created it (event {int(bid[i])})" if op_b is not None else \
                f"a successful syscall on it (event {int(bid[i])})"
            how_a = (f"a successful syscall on it (event {int(aid[i])})" if a[i] != _NONE
                     else "the tracer's re-check found it right after (EXISTS_AFTER)")
            r = (f"existed before: {how_b}; after: {how_a}; dentry frees/shrinker running, no removal "
                 "(syscall level: a suspect)")
            if v == "uncertain":
                ev += [int(x) for x in lids[llo[i]:lhi[i]]]
                r = ("would be transient, but events were lost in that span (syscall level)" if lhi[i] > llo[i] else
                     f"would be transient, but the trace reports {int(unplaced_lost)} lost event(s) that no LOST "
                     "record places in time (syscall level)")
        elif v == "uncertain":
            ev = []
            r = (f"no removal seen, but the trace reports {int(unplaced_lost)} lost event(s) that no LOST record "
                 "places in time (syscall level)")
        else:
            ev = []
            if b[i] == _NONE:
                r = "plain miss (syscall level): no earlier success or creation of this path"
            elif not after[i]:
                r = "plain miss (syscall level): no later success or re-check of this path"
            else:
                r = "plain miss (syscall level): no dentry frees or shrinker activity around it"
        ev.append(int(eid[i]))
        evidence.append(sorted(set(ev)))
        reason.append(r)
    return pd.DataFrame({
        "event_id": eid.astype(np.uint64),
        "verdict": verdict,
        "ts_ns": S["ts_ns"].to_numpy().astype(np.uint64),
        "tid": S["tid"].to_numpy().astype(np.uint32),
        "pid": S["pid"].to_numpy().astype(np.uint32),
        "comm": S["comm"].to_numpy(dtype=object),
        "dentry": np.zeros(n, dtype=np.uint64),
        "name": [p.rsplit("/", 1)[-1] if p else "" for p in paths.tolist()],
        "path": paths,
        "evidence": evidence,
        "reason": reason,
        "overlap": np.zeros(n, dtype=bool),
        # A folded record stands for its identical repeats (same task, path
        # and errno within the kernel's fold window): one verdict, count lookups.
        "count": (np.maximum(S["count"].to_numpy(), 1) if "count" in S.columns
                  else np.ones(n)).astype(np.uint32),
    })
