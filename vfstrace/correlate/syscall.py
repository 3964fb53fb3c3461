"""Syscall-level verdicts: what the tracepoint tier can say about a failed path syscall.

Kernels that allow BPF on tracepoints but not kprobes show only system call
results, namespace operations, dentry-cache frees/allocations and shrinker
runs; nobody sees the walk, the dentry it found, or a d_seq re-check. So these
verdicts are LOWER RESOLUTION than the walk-level ones in
vfstrace/correlate/walk.py: they judge a ``PATH_SYSCALL`` that returned
-ENOENT by what happened to its *path*, not to a dentry. Checked in this
order (docs/verdicts.md, syscall level, is the table):

* ``explained``: a namespace operation removed the path or a directory above
  it (unlink, rmdir, rename *away*) shortly before the failure (or between
  the last success and the next one on that path), and the path did not
  exist again between that removal and the failure. A rename *onto* a path
  never explains: it replaces the name atomically; a RENAME_EXCHANGE
  removes neither of its names (both exist before and after), only what
  lay below them;
* ``absent``, a creator between: the path was there after the failure, but
  an operation that can have made it (or a directory above it) ran between
  the failure and that evidence (vfstrace/correlate/existence.py): the
  failure may have been the truth. The reason names the creator;
* ``uncertain``: the path was there after the failure and no seen creator
  made it, but one may be unseen: events were lost between the failure and
  the evidence after it (or the trace reports losses no LOST record
  places), an io_uring submission that can create names ran around it, or
  the path is on a network or FUSE filesystem; also a failure flagged
  ``EXISTS_AFTER`` in a trace recorded before re-checks were rows (the
  re-check's time unknown, creators between it and the failure cannot be
  ruled out);
* ``transient``: the path existed at the instant of the failure and dentry
  frees or shrinker activity ran around it: a suspect of the pruned-dentry
  race, not proof (on a kernel with kprobes, the walk-level verdict is the
  proof). "Existed at the failure": the tracer's re-check (a ``RECHECK``
  row, ret 0) right after it found the path as the task meant it, or
  (successes streamed, an absolute path) successful syscalls on it before
  and after, and nothing that can have made it ran between the failure and
  that evidence. So a default recording (successes not streamed) reaches it;
* ``absent``: a plain miss, the reason says which piece was missing; a
  re-check that could not resolve the path (the task gone: -ESRCH; its
  dirfd or cwd closed or changed: -EBADF) says so.

Successes are matched to a failure by path string: only an absolute path
names the same file for every task, so a relative one is judged by its
re-check alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vfstrace.correlate.existence import CREATING_OPS, Creators, components, recheck_of
from vfstrace.correlate.paths import ancestor_keys, nonempty, texts
from vfstrace.events import EBADF, ENOENT, ESRCH, Flag, Kind, Op, op_name

ACTIVITY_KINDS = np.array([Kind.D_FREE, Kind.SHRINK_START, Kind.SHRINK_END], dtype=np.uint8)
PATH_OPS = np.array([Op.UNLINK, Op.RMDIR, Op.RENAME], dtype=np.uint16)
_NONE = -1
_UNRESOLVED = {ESRCH: "the task had exited", EBADF: "its dirfd (or cwd) was closed or names another directory now"}

def judged_syscalls(df: pd.DataFrame) -> np.ndarray:
    """Mask of PATH_SYSCALL rows that returned -ENOENT."""
    return (df["kind"].to_numpy() == Kind.PATH_SYSCALL) & (df["ret"].to_numpy() == ENOENT)


def successes(df: pd.DataFrame) -> np.ndarray:
    m = (df["kind"].to_numpy() == Kind.PATH_SYSCALL) & (df["ret"].to_numpy() >= 0)
    rows = np.flatnonzero(m)  # paths compared on these rows only (a string comparison per row is slow)
    if len(rows):
        m[rows] = nonempty(df["path"].iloc[rows])
    return m


def presences(df: pd.DataFrame) -> pd.DataFrame:
    """(event_id, ts_ns, path) of every event after which ``path`` existed.

    Successful path syscalls, and the namespace operations after which a
    name exists (existence.CREATING_OPS: mkdir, an open with O_CREAT, mknod,
    mount over it; link, symlink, rename onto it: the new name in ``path2``).
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
    if n and len(idx.paths):
        qc = idx.paths.get_indexer(S["path"].to_numpy(dtype=object)).astype(np.int64)
    else:  # no success on any path: every failure's code is -1 (and no Python string per row is made)
        qc = np.full(n, -1, dtype=np.int64)
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



def final_at(S: pd.DataFrame, win, recheck_ts=None) -> np.ndarray:
    """The time after which every event a row's verdict depends on has been seen.

    ``recheck_ts``: per row, the stamp of its re-check (recheck_of()), -1
    where none has been seen yet: a failure waits for its re-check (up to the
    window; none comes for an empty path), then for the creators, io_uring
    submissions and losses up to it."""
    t = S["ts_ns"].to_numpy().astype(np.int64)
    b = S["before_ts"].to_numpy()
    a = S["after_ts"].to_numpy()
    near = t + win.explain_after_ns
    waiting = t + win.syscall_window_ns
    tail = win.skew_ns + win.loss_horizon_ns
    full = np.maximum.reduce([a + tail, near, t + win.activity_ns])
    out = np.where(b == _NONE, near, np.where(a == _NONE, np.maximum(near, waiting), full))
    rts = np.full(len(S), _NONE, dtype=np.int64) if recheck_ts is None else np.asarray(recheck_ts, dtype=np.int64)
    named = nonempty(S["path"])
    upto = np.where(rts != _NONE, rts, np.where(named, waiting, _NONE))
    return np.where(upto != _NONE, np.maximum.reduce([out, upto + tail, t + win.activity_ns]), out)


def _removals(S, E, win, b, flicker):
    """Per judged syscall, the removals (unlink, rmdir, rename away) of its path or a parent that explain it.

    A RENAME_EXCHANGE swaps two names that both exist before and after: it
    removes neither, only what lay below them (a directory swapped for
    another)."""
    n = len(S)
    ns_ids: dict[int, list[int]] = {}  # judged row -> the removals' event ids (only rows that have some)
    ns_op = np.zeros(n, dtype=np.int64)
    ekind = E["kind"].to_numpy()
    N = E.loc[(ekind == Kind.NS_OP) & np.isin(E["op"].to_numpy(), PATH_OPS) & (E["ret"].to_numpy() >= 0),
              ["event_id", "ts_ns", "op", "path", "path2", "flags"]]
    if not len(N):  # no removal seen: no path's ancestors need listing
        return ns_ids, ns_op
    t = S["ts_ns"].to_numpy().astype(np.int64)
    # Only the name a rename moves away from (path); path2, the name it
    # lands on, existed before and after. An exchange: either name, above the path.
    xch = (N["flags"].to_numpy() & int(Flag.EXCHANGE)) != 0
    X = N[xch]
    N = pd.concat([N[~xch], X, X.assign(path=X["path2"])], ignore_index=True)
    N["strict"] = np.r_[np.zeros((~xch).sum(), bool), np.ones(2 * len(X), bool)]
    K = ancestor_keys(S["path"], set(N["path"].tolist()) - {""})
    if not len(K):
        return ns_ids, ns_op
    m = K.merge(N[N["path"] != ""].rename(columns={"path": "key"}), on="key")
    m = m[~(m["own"].to_numpy() & m["strict"].to_numpy())]
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
            ns_ids.setdefault(j, []).append(int(e))
        first = m.drop_duplicates("_r")
        ns_op[first["_r"].to_numpy()] = first["op"].to_numpy()
    return ns_ids, ns_op


def _spans(E, kinds_mask, lo, hi):
    """Event ids and stamps of the rows of ``E`` under ``kinds_mask``, sorted, and per judged row the [lo, hi]
    range of them (as positions)."""
    X = E.loc[kinds_mask, ["event_id", "ts_ns"]].sort_values(["ts_ns", "event_id"])
    xts = X["ts_ns"].to_numpy().astype(np.int64)
    return X["event_id"].to_numpy(), xts, np.searchsorted(xts, lo, "left"), np.searchsorted(xts, hi, "right")


def judge_syscalls(S: pd.DataFrame, E: pd.DataFrame, win, unplaced_lost: int = 0) -> pd.DataFrame | None:
    """Verdicts for judged syscalls ``S`` (with before/after columns) given evidence ``E``; the module docstring
    has the rules, in order.

    ``unplaced_lost``: lost events no LOST record places (see
    vfstrace/correlate/walk.py judge_walks): no ``transient`` or ``absent``.
    """
    n = len(S)
    if n == 0:
        return None
    t = S["ts_ns"].to_numpy().astype(np.int64)
    b = S["before_ts"].to_numpy()
    a = S["after_ts"].to_numpy()
    paths = S["path"].to_numpy(dtype=object)
    ekind = E["kind"].to_numpy()
    ns_ids, ns_op = _removals(S, E, win, b, (b != _NONE) & (a != _NONE))
    explained = np.zeros(n, dtype=bool)
    explained[list(ns_ids)] = True
    # Existed after: the tracer's re-check found it, or successes on the same absolute path before and after.
    rpos, rts = recheck_of(S, E, win)
    has_r = rpos != _NONE
    rp = np.maximum(rpos, 0)
    rret = np.where(has_r, E["ret"].to_numpy()[rp], 1) if len(E) else np.ones(n, np.int64)
    found = has_r & (rret == 0)
    both = (b != _NONE) & (a != _NONE)
    absolute = np.zeros(n, dtype=bool)
    if both.any():
        absolute[both] = [p.startswith("/") for p in paths[both].tolist()]
    by_success = ~found & both & absolute
    present = found | by_success
    # A trace recorded before re-checks were rows: the flag, and no time to rule creators out by.
    untimed = ((S["flags"].to_numpy() & int(Flag.EXISTS_AFTER)) != 0) & ~has_r & ~present
    end = np.where(found, rts, np.where(by_success, a, t + win.syscall_window_ns))  # creators: in (failure, end]
    span_end = np.where(present, end, t)
    aids, ats, alo, ahi = _spans(E, np.isin(ekind, ACTIVITY_KINDS), t - win.activity_ns, t + win.activity_ns)
    active = ahi > alo
    # Lost events from the failure (or the success before it) to the evidence after it.
    lo_t = np.where(by_success, np.minimum(b, t - win.explain_before_ns), t - win.explain_before_ns)
    lids, _, llo, lhi = _spans(E, ekind == Kind.LOST, lo_t - win.skew_ns, span_end + win.skew_ns + win.loss_horizon_ns)
    lost = (present | untimed) & ((lhi > llo) | (unplaced_lost > 0))
    # io_uring creating submissions: a request may run in a worker well after its submission, so a window back.
    uids, _, ulo, uhi = _spans(E, (ekind == Kind.NS_OP) & (E["op"].to_numpy() == int(Op.URING)),
                               t - win.syscall_window_ns, span_end + win.skew_ns)
    uring = present & (uhi > ulo)
    rflags, rpath2, rname = E["flags"].to_numpy(), E["path2"].to_numpy(dtype=object), E["name"].to_numpy(dtype=object)
    remote = found & ((rflags[rp] & int(Flag.REMOTE_FS)) != 0 if len(E) else False)
    # Creators between the failure and the evidence after it (the failure's stamp is its exit: skew before it).
    C = Creators(E)
    created = np.full(n, _NONE, dtype=np.int64)
    for i in np.flatnonzero((present | untimed) & ~explained) if len(C.ts) else ():
        own = components(str(paths[i]))
        comps = components(str(rpath2[rp[i]])) if found[i] else own
        chain = [int(x) for x in str(rname[rp[i]]).split(":") if x] if found[i] and rname[rp[i]] else []
        names = set(comps) | set(own)
        created[i] = C.first(int(t[i]) - win.skew_ns, int(end[i]) + win.skew_ns, comps, chain, names,
                             set(comps[:-1]) | set(own[:-1]))
    made = created != _NONE
    candidate = present & ~explained & ~made
    unseen = candidate & (lost | (active & (remote | uring)))
    transient = candidate & ~unseen & active
    old = untimed & ~explained & ~made & active
    unsure = ~explained & ~transient & (unplaced_lost > 0)
    verdict = np.where(explained, "explained", np.where(transient, "transient", np.where(
        unseen | old | unsure, "uncertain", "absent"))).astype(object)
    eid = S["event_id"].to_numpy().astype(np.int64)
    bid, aid = S["before_id"].to_numpy(), S["after_id"].to_numpy()
    rid = E["event_id"].to_numpy().astype(np.int64)
    at = np.searchsorted(ats, t, "left")  # per failure, the first activity at or after it
    # A failure with no removal, no re-check and no sign it existed after is
    # a plain miss (or uncertain, for losses no LOST row places) whose only
    # evidence is itself: in a storm of distinct absent names that is nearly
    # every row, so those take one shared reason and no per-row branching.
    simple = ~explained & ~present & ~untimed & ~has_r
    plain = (f"no removal seen, but the trace reports {int(unplaced_lost)} lost event(s) that no LOST record "
             "places in time (syscall level)" if unplaced_lost > 0 else
             "plain miss (syscall level): no re-check found it and no later success on it")
    reason = [plain] * n
    evidence = eid.reshape(-1, 1).tolist()  # [[id], ...]: the lists made in C
    for i in np.flatnonzero(~simple).tolist():
        v, ev, j = verdict[i], [], int(rid[rp[i]]) if has_r[i] else _NONE
        if found[i]:
            ev.append(j)
            shown = f" as {rpath2[rp[i]]}" if rpath2[rp[i]] and rpath2[rp[i]] != paths[i] else ""
            how_a = f"the tracer's re-check found it{shown} (event {j})"
        elif by_success[i]:
            ev += [int(bid[i]), int(aid[i])]
            how_a = f"successful syscalls on it before and after (events {int(bid[i])}, {int(aid[i])})"
        else:
            how_a = "the tracer's re-check found it (EXISTS_AFTER; its time is not in this trace)"
        lost_r = ""
        if lost[i]:
            ev += [int(x) for x in lids[llo[i]:lhi[i]]]
            lost_r = ("events were lost between the failure and the evidence after it: a creator may be among them"
                      if lhi[i] > llo[i] else f"the trace reports {int(unplaced_lost)} lost event(s) that no LOST "
                      "record places in time")
        if v == "explained":
            ev = list(ns_ids[i])
            r = f"{op_name(ns_op[i])} of this path or a parent removed it (syscall level)"
        elif made[i]:
            c = int(created[i])
            ev.append(int(C.event_id[c]))
            r = (f"{op_name(C.op[c])} of {C.name[c] or 'a mount point'} (event {int(C.event_id[c])}) can have made it "
                 f"or a directory above it between the failure and the evidence it existed ({how_a})")
            r = (f"plain miss (syscall level): {r}" if v == "absent" else
                 f"{r}, and the trace reports {int(unplaced_lost)} lost event(s) that no LOST record places in time "
                 "(syscall level)")
        elif transient[i]:
            # The dentry free / shrinker event nearest the failure on each side.
            k = int(at[i])
            ev += [int(aids[x]) for x in (k - 1, k) if alo[i] <= x < ahi[i]]
            r = (f"existed at the failure: {how_a}, and nothing that can have made it or a directory above it ran "
                 "in between; dentry frees/shrinker running, no removal (syscall level: a suspect)")
        elif unseen[i] and lost[i]:
            r = f"would be transient ({how_a}), but {lost_r} (syscall level)"
        elif unseen[i] and remote[i]:
            r = (f"{how_a}, but it is on a network or FUSE filesystem: a creator this kernel never sees may have "
                 "made it (syscall level)")
        elif unseen[i]:
            ev += [int(x) for x in uids[ulo[i]:uhi[i]]]
            r = (f"{how_a}, but io_uring requests that can create names ran around it (paths unseen, event "
                 f"{int(uids[ulo[i]])}) (syscall level)")
        elif old[i]:
            r = (f"would be transient ({how_a}), but the re-check's time is not in this trace (recorded before "
                 "re-checks were rows): a creator between cannot be ruled out" + (f"; and {lost_r}" if lost_r else "")
                 + " (syscall level)")
        elif v == "uncertain":
            r = (f"no removal seen, but the trace reports {int(unplaced_lost)} lost event(s) that no LOST record "
                 "places in time (syscall level)")
        elif present[i] or untimed[i]:
            r = f"plain miss (syscall level): {how_a}, but no dentry frees or shrinker activity around it"
        elif has_r[i]:
            ev.append(j)
            why = _UNRESOLVED.get(int(rret[i]))
            r = (f"plain miss (syscall level): the re-check could not resolve the path: {why} (event {j})" if why else
                 f"plain miss (syscall level): the tracer's re-check did not find it (event {j})")
        else:
            r = "plain miss (syscall level): no re-check found it and no later success on it"
        ev.append(int(eid[i]))
        evidence[i] = sorted(set(ev))
        reason[i] = r
    return pd.DataFrame({
        "event_id": eid.astype(np.uint64),
        # Text columns as Python strings (object), the dtype verdicts carry
        # (batch._finish): built so, pandas does not first convert them to
        # its Arrow strings, row by row, only to be converted back.
        "verdict": texts(verdict),
        "ts_ns": S["ts_ns"].to_numpy().astype(np.uint64),
        "tid": S["tid"].to_numpy().astype(np.uint32),
        "pid": S["pid"].to_numpy().astype(np.uint32),
        "comm": texts(S["comm"].to_numpy(dtype=object)),
        "dentry": np.zeros(n, dtype=np.uint64),
        "name": texts([p.rsplit("/", 1)[-1] if p else "" for p in paths.tolist()]),
        "path": texts(paths),
        "evidence": evidence,
        "reason": texts(reason),
        "overlap": np.zeros(n, dtype=bool),
        # A folded record stands for its identical repeats (same task, path
        # and errno within the kernel's fold window): one verdict, count lookups.
        "count": (np.maximum(S["count"].to_numpy(), 1) if "count" in S.columns
                  else np.ones(n)).astype(np.uint32),
    })
