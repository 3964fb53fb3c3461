"""Syscall-level verdicts: what the tracepoint tier can say about a failed path syscall.

Kernels that allow BPF on tracepoints but not kprobes show only system call
results, namespace operations, dentry-cache frees/allocations and shrinker
runs; nobody sees the walk, the dentry it found, or a d_seq re-check. So these
verdicts are LOWER RESOLUTION than the walk-level ones in
vfstrace/correlate/walk.py: they judge a ``PATH_SYSCALL`` that returned
-ENOENT by what happened to its *path*, not to a dentry.

* ``explained``: a namespace operation removed the path or a directory above
  it (unlink, rmdir, rename from or over) shortly before the failure (or
  between the last success and the next one on that path);
* ``transient``: the path worked just before and just after (a successful
  path syscall on the same path within ``syscall_window_ns`` on each side),
  nothing renamed or removed it in between, and dentry frees or shrinker
  activity ran around the failure: a suspect of the pruned-dentry race, not
  proof (on a kernel with kprobes, the walk-level verdict is the proof);
* ``uncertain``: would be ``transient`` but events were lost in that span;
* ``absent``: a plain miss.

Paths are compared as strings: a relative path and its absolute form do not
match, which can only make a verdict ``absent`` where it could have been
``explained`` or ``transient``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vfstrace.events import ENOENT, Kind, Op, op_name

ACTIVITY_KINDS = np.array([Kind.D_FREE, Kind.SHRINK_START, Kind.SHRINK_END], dtype=np.uint8)
PATH_OPS = np.array([Op.UNLINK, Op.RMDIR, Op.RENAME], dtype=np.uint16)
_NONE = -1


def judged_syscalls(df: pd.DataFrame) -> np.ndarray:
    """Mask of PATH_SYSCALL rows that returned -ENOENT."""
    return (df["kind"].to_numpy() == Kind.PATH_SYSCALL) & (df["ret"].to_numpy() == ENOENT)


def successes(df: pd.DataFrame) -> np.ndarray:
    return (df["kind"].to_numpy() == Kind.PATH_SYSCALL) & (df["ret"].to_numpy() >= 0) & (df["path"].to_numpy(dtype=object) != "")


def neighbours(S: pd.DataFrame, succ: pd.DataFrame, win, *, before=True, after=True) -> pd.DataFrame:
    """Add before_ts/before_id (last success on the path within the window before)
    and after_ts/after_id (first success after) to the judged rows ``S``."""
    S = S.copy()
    W = win.syscall_window_ns
    q = pd.DataFrame({"_r": np.arange(len(S)), "ts": S["ts_ns"].to_numpy().astype(np.int64),
                      "path": S["path"].to_numpy(dtype=object)}).sort_values("ts", kind="stable")
    s = pd.DataFrame({"ts": succ["ts_ns"].to_numpy().astype(np.int64), "path": succ["path"].to_numpy(dtype=object),
                      "sid": succ["event_id"].to_numpy().astype(np.int64)})
    s["sts"] = s["ts"]
    s = s.sort_values(["ts", "sid"], kind="stable")
    for side, direction in (("before", "backward"), ("after", "forward")):
        if not (before if side == "before" else after):
            continue
        if len(q) and len(s):
            m = pd.merge_asof(q, s, on="ts", by="path", direction=direction, allow_exact_matches=False,
                              tolerance=W)
            m = m.sort_values("_r")
            ts_ = m["sts"].to_numpy()
            ok = ~pd.isna(ts_)
            S[f"{side}_ts"] = np.where(ok, np.nan_to_num(ts_.astype(float), nan=-1), _NONE).astype(np.int64)
            S[f"{side}_id"] = np.where(ok, np.nan_to_num(m["sid"].to_numpy().astype(float), nan=-1), _NONE).astype(np.int64)
        else:
            S[f"{side}_ts"] = np.full(len(S), _NONE, dtype=np.int64)
            S[f"{side}_id"] = np.full(len(S), _NONE, dtype=np.int64)
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


def judge_syscalls(S: pd.DataFrame, E: pd.DataFrame, win) -> pd.DataFrame | None:
    """Verdicts for judged syscalls ``S`` (with before/after columns) given evidence ``E``."""
    n = len(S)
    if n == 0:
        return None
    t = S["ts_ns"].to_numpy().astype(np.int64)
    b = S["before_ts"].to_numpy()
    a = S["after_ts"].to_numpy()
    flicker = (b != _NONE) & (a != _NONE)
    paths = S["path"].to_numpy(dtype=object)
    ekind = E["kind"].to_numpy()
    # Namespace operations on the path or a directory above it.
    N = E.loc[(ekind == Kind.NS_OP) & np.isin(E["op"].to_numpy(), PATH_OPS) & (E["ret"].to_numpy() >= 0),
              ["event_id", "ts_ns", "op", "path", "path2"]]
    ns_ids = [[] for _ in range(n)]
    ns_op = np.zeros(n, dtype=np.int64)
    if len(N):
        keys = []
        for i, p in enumerate(paths.tolist()):
            if p:
                for anc in _ancestors(p):
                    keys.append((i, anc))
        if keys:
            K = pd.DataFrame(keys, columns=["_r", "key"])
            n1 = N[["event_id", "ts_ns", "op", "path"]].rename(columns={"path": "key"})
            n2 = N[N["op"] == Op.RENAME][["event_id", "ts_ns", "op", "path2"]].rename(columns={"path2": "key"})
            NN = pd.concat([n1, n2], ignore_index=True)
            NN = NN[NN["key"] != ""]
            m = K.merge(NN, on="key")
            if len(m):
                r = m["_r"].to_numpy()
                nts = m["ts_ns"].to_numpy().astype(np.int64)
                lo = t[r] - win.explain_before_ns
                hi = t[r] + win.explain_after_ns
                ok = (nts >= lo) & (nts <= hi)
                ok |= flicker[r] & (nts >= b[r]) & (nts <= a[r])
                m = m[ok]
                if len(m):
                    m = m.drop_duplicates(["_r", "event_id"]).sort_values(["_r", "event_id"])
                    for j, e in zip(m["_r"].tolist(), m["event_id"].tolist()):
                        ns_ids[j].append(int(e))
                    first = m.drop_duplicates("_r")
                    ns_op[first["_r"].to_numpy()] = first["op"].to_numpy()
    explained = np.array([bool(x) for x in ns_ids])
    # Dentry frees or shrinker runs around the failure.
    A = E.loc[np.isin(ekind, ACTIVITY_KINDS), ["event_id", "ts_ns"]].sort_values(["ts_ns", "event_id"])
    ats = A["ts_ns"].to_numpy().astype(np.int64)
    alo = np.searchsorted(ats, t - win.activity_ns, "left")
    ahi = np.searchsorted(ats, t + win.activity_ns, "right")
    active = ahi > alo
    aids = A["event_id"].to_numpy()
    # Lost events between the last success and the next one.
    L = E.loc[ekind == Kind.LOST, ["event_id", "ts_ns", "ret"]].sort_values(["ts_ns", "event_id"])
    lts = L["ts_ns"].to_numpy().astype(np.int64)
    llo = np.searchsorted(lts, np.minimum(b, t - win.explain_before_ns) - win.skew_ns, "left")
    lhi = np.searchsorted(lts, a + win.skew_ns + win.loss_horizon_ns, "right")
    lost = flicker & (lhi > llo)
    lids = L["event_id"].to_numpy()
    transient = flicker & active & ~explained
    verdict = np.where(explained, "explained",
                       np.where(transient & lost, "uncertain", np.where(transient, "transient", "absent"))).astype(object)
    eid = S["event_id"].to_numpy().astype(np.int64)
    bid, aid = S["before_id"].to_numpy(), S["after_id"].to_numpy()
    evidence, reason = [], []
    for i in range(n):
        v = verdict[i]
        if v == "explained":
            ev = ns_ids[i]
            r = f"{op_name(ns_op[i])} of this path or a parent (syscall level)"
        elif v in ("transient", "uncertain"):
            # The dentry free / shrinker event nearest the failure on each side.
            k = int(np.searchsorted(ats, t[i], "left"))
            near = [aids[j] for j in (k - 1, k) if alo[i] <= j < ahi[i]]
            ev = [int(bid[i]), int(aid[i])] + [int(x) for x in near]
            r = "path worked just before and after, dentry frees/shrinker running, no namespace operation (syscall level: a suspect)"
            if v == "uncertain":
                ev += [int(x) for x in lids[llo[i]:lhi[i]]]
                r = "would be transient, but events were lost in that span (syscall level)"
        else:
            ev = []
            r = "plain miss (syscall level)"
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
    })
