"""What ties a piece of evidence to a walk: the same walk, the same dentry, the same name.

Apart from vfstrace/correlate/walk.py (which judges) because each rule here
answers one question a verdict rests on, from the state the events carry
and never from their place in a stream (docs/verdicts.md):

* :func:`own_rechecks`: is this failed d_seq re-check the walk's own?
* :func:`same_incarnation`: is the dentry at this address, at these two
  moments, the same object?
* :func:`component`: which path component does a recorded name stand for?
* :func:`removals`: did a namespace operation make this walk's name absent?
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vfstrace.events import ECHILD, Kind, Op

# Namespace operations that make a name go away (and so explain an -ENOENT).
REMOVING_OPS = np.array([Op.UNLINK, Op.RMDIR, Op.RENAME], dtype=np.uint16)
_LR, _SC = int(Kind.LOOKUP_RETURN), int(Kind.SEQ_CHECK)


def component(name):
    """The path component a name stands for: up to the first '/' (``nd->last`` runs on: "bin/app")."""
    if not isinstance(name, str) or "/" not in name:
        return name
    head = name.split("/", 1)[0]
    return head or name


def own_rechecks(valid, kind, ret, dent, parent, seg, seg_ends, last_lr):
    """Rows (sorted order) that are a failed re-check of their segment's own walk.

    A lookup_fast -ECHILD (LOOKUP_RETURN) is inside the walk by construction.
    A SEQ_CHECK counts when it ran inside a walk (``valid`` already dropped
    the others) and names the walk's dentry, its parent, or no dentry; one
    that names another dentry is a re-check of some other lookup whose
    return was never streamed.
    """
    fail = valid & (ret == ECHILD)
    wd = dent[seg_ends][seg]
    lr = last_lr[seg]
    wd = np.where((wd == 0) & (lr >= 0), dent[np.maximum(lr, 0)], wd)
    wp = parent[seg_ends][seg]
    mine = (dent == 0) | (wd == 0) | (dent == wd) | ((wp != 0) & (dent == wp))
    return fail & ((kind == _LR) | ((kind == _SC) & mine))


def _count_in(B_dentry, B_ts, d, lo, hi):
    """How many rows of (B_dentry, B_ts) at address d have lo < ts < hi."""
    if len(B_dentry) == 0 or len(d) == 0:
        return np.zeros(len(d), dtype=np.int64)
    B_ts = B_ts.astype(np.int64)
    o = np.lexsort((B_ts, B_dentry))
    bd, bt = B_dentry[o], B_ts[o]
    g0 = np.searchsorted(bd, d, "left")
    g1 = np.searchsorted(bd, d, "right")
    out = np.zeros(len(d), dtype=np.int64)
    for i in np.flatnonzero(g1 > g0):
        seg = bt[g0[i]:g1[i]]
        out[i] = max(0, int(np.searchsorted(seg, hi[i], "left")) - int(np.searchsorted(seg, lo[i], "right")))
    return out


def same_incarnation(pairs, B, t_col, tol):
    """True where no D_FREE/D_ALLOC at the address lies between the walk's return and the other event.

    Decided by time, not by event id: per-CPU buffers deliver events grouped
    by CPU, so a free stamped after the walk can carry a lower id. A D_ALLOC
    counts up to and including the later stamp (a walk that misses the
    cache allocates its dentry itself, stamped with its return). A D_FREE
    must lie more than the clock skew ``tol`` before the later stamp: the
    free of a dentry an RCU walk holds comes one grace period after the
    walk's read section ends (d_free -> call_rcu), so a free stamped within
    the skew of the walk's return is the walk's own dentry being freed.
    """
    a = pairs["end"].to_numpy(np.int64)
    b = pairs[t_col].to_numpy().astype(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    d = pairs["dentry"].to_numpy()
    bk = B["kind"].to_numpy()
    cnt = np.zeros(len(pairs), dtype=np.int64)
    for kind, lo_, hi_ in ((Kind.D_ALLOC, lo, hi + 1), (Kind.D_FREE, lo, hi - tol)):
        sel = bk == kind
        cnt += _count_in(B["dentry"].to_numpy()[sel], B["ts_ns"].to_numpy()[sel], d, lo_, hi_)
    return cnt == 0


def group_lists(jrow, ids, n):
    out = [[] for _ in range(n)]
    for j, e in zip(jrow.tolist(), ids.tolist()):
        out[j].append(e)
    return out


def _component_path(path, name):
    """The prefix of ``path`` that ends at the component ``name`` ("" if not in it)."""
    if not path or not name or path[0] != "/":
        return ""
    parts = path.split("/")
    try:
        i = parts.index(name, 1)
    except ValueError:
        return ""
    return "/".join(parts[: i + 1])


def removals(J, Jk, E, B, win, found_ino):
    """Per judged walk, the namespace operations that removed its name: (ids lists, first op).

    Only an unlink, an rmdir or a rename *away* from the name (its source)
    makes a name absent: a rename onto a name replaces the old dentry
    atomically (d_move), so the name exists throughout and a lookup that
    returns -ENOENT there was not told the truth. Matched by the walk's
    dentry (same incarnation), by (parent, component) or by the component's
    path. An operation that names the inode it removed (the kprobe tier's
    d_delete/d_move read it) explains only a walk that found that inode: an
    unlink followed by a re-create leaves the name with a new inode, and a
    prune of *that* inode during the walk is not explained by the unlink.
    """
    n = len(J)
    ns_ids = [[] for _ in range(n)]
    ns_op = np.zeros(n, dtype=np.int64)
    ekind = E["kind"].to_numpy()
    N = E.loc[(ekind == Kind.NS_OP) & np.isin(E["op"].to_numpy(), REMOVING_OPS) & (E["ret"].to_numpy() >= 0),
              ["event_id", "ts_ns", "op", "dentry", "parent", "ino", "name", "path"]]
    if not len(N):
        return ns_ids, ns_op
    N = N.rename(columns={"event_id": "nid", "ts_ns": "nts", "ino": "nino"})
    N["name"] = pd.Series([component(x) for x in N["name"].tolist()], index=N.index, dtype=object)
    cols = ["jrow", "start", "end", "nid", "nts", "op", "nino"]
    jd, jparent, jname = Jk["dentry"].to_numpy(), Jk["parent"].to_numpy(), Jk["name"].to_numpy(dtype=object)
    parts = []
    nd = N[N["dentry"] != 0]
    if len(nd):
        m = Jk[jd != 0].merge(nd[["nid", "nts", "op", "nino", "dentry"]], on="dentry")
        if len(m):
            m = m[same_incarnation(m, B, "nts", win.skew_ns)]
        parts.append(m[cols])
    npn = N[(N["parent"] != 0) & (N["name"] != "")][["nid", "nts", "op", "nino", "parent", "name"]]
    if len(npn):
        m = Jk[(jparent != 0) & (jname != "")].merge(npn, on=["parent", "name"])
        parts.append(m[cols])
    # By path: the walked component's path (the parent directory's dentry
    # may itself have been pruned and re-allocated since the operation).
    cp = [_component_path(p, nm) for p, nm in zip(J["path"].tolist(), jname.tolist())]  # jname: components
    jp = Jk.assign(cpath=cp)
    jp = jp[jp["cpath"] != ""]
    npth = N[N["path"] != ""][["nid", "nts", "op", "nino", "path"]].rename(columns={"path": "cpath"})
    if len(jp) and len(npth):
        parts.append(jp.merge(npth, on="cpath")[cols])
    if not parts:
        return ns_ids, ns_op
    m = pd.concat(parts, ignore_index=True)
    nts = m["nts"].to_numpy().astype(np.int64)
    ok = (nts >= m["start"].to_numpy() - win.explain_before_ns) & (nts <= m["end"].to_numpy() + win.explain_after_ns)
    fi = found_ino[m["jrow"].to_numpy()]
    ni = m["nino"].to_numpy().astype(np.int64)
    ok &= (fi == 0) | (ni == 0) | (fi == ni)
    m = m[ok]
    if len(m):
        m = m.drop_duplicates(["jrow", "nid"]).sort_values(["jrow", "nid"])
        ns_ids = group_lists(m["jrow"].to_numpy(), m["nid"].to_numpy(), n)
        first = m.drop_duplicates("jrow")
        ns_op[first["jrow"].to_numpy()] = first["op"].to_numpy()
    return ns_ids, ns_op
