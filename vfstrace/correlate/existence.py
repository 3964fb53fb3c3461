"""Did a failed path exist at the instant of its failure? The tracer's re-check, and the creators that could undo it.

Why a module of its own: these are the rules that place a namespace
operation relative to a failed path (by name, by the directory a path
starts from, by the inode numbers of the directories on it), apart from
the verdict table of vfstrace/correlate/syscall.py that uses them.

The kernel semantics they rest on:

* A name the tracer's re-check (``Kind.RECHECK``, ret 0) found right after
  the failure existed at the failure, unless an operation between the two
  made it (or a directory above it). The re-check resolves the path as the
  failing task meant it (its root, cwd or dirfd: tracers/tracepoint.py).
* What makes a name: mkdir, mknod, link and symlink fail with -EEXIST where
  the name exists, so their success says they made it; an open with O_CREAT
  (``Op.CREATE``) and a rename onto a name may have made it. mount and
  move_mount need an existing mount point, and renameat2(RENAME_EXCHANGE)
  needs both its names to exist: neither makes its own names, only what
  lies below them (a *strict* creator). An io_uring submission
  (``Op.URING``) may make a name nobody sees: it is not placed here
  (vfstrace/correlate/syscall.py makes its neighbours ``uncertain``).
* Placing a creator: by the inode of the directory its path starts from
  (flag ``BASE``) against the directories the re-check found on the failed
  path (its ``name``: inode numbers, root first), where both are known; by
  the name it made alone otherwise (the created name is one of the failed
  path's components), which can only say "could have" more often. A
  creator's own path is taken as recorded: one that runs through a symlink
  or a bind mount into the failed path's directories is placed where its
  recorded components lead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vfstrace.events import Flag, Kind, Op

# Operations after which a name exists, and the column holding the name they
# create: mkdir, an open with O_CREAT (CREATE), mknod and mount (path); link,
# symlink and rename (path2: the new name; a RENAME_EXCHANGE's path too).
CREATING_OPS = {int(Op.MKDIR): "path", int(Op.LINK): "path2", int(Op.RENAME): "path2", int(Op.CREATE): "path",
                int(Op.MKNOD): "path", int(Op.SYMLINK): "path2", int(Op.MOUNT): "path"}
_NONE = -1


def components(p: str) -> list[str]:
    return [c for c in p.split("/") if c and c != "."]


def recheck_of(S: pd.DataFrame, E: pd.DataFrame, win) -> tuple[np.ndarray, np.ndarray]:
    """Per judged syscall, the row position in ``E`` of its tracer re-check (-1: none) and its stamp.

    A failure's re-check is the first RECHECK of the same task, path and
    ``seq`` (its dirfd under flag DIRFD) at or after it, within
    ``syscall_window_ns`` (a later one is not "right after")."""
    n = len(S)
    pos, ts = np.full(n, _NONE, dtype=np.int64), np.full(n, _NONE, dtype=np.int64)
    rk = np.flatnonzero(E["kind"].to_numpy() == Kind.RECHECK)
    if not n or not len(rk):
        return pos, ts
    R = pd.DataFrame({"_p": rk, "tid": E["tid"].to_numpy()[rk].astype(np.int64),
                      "path": E["path"].to_numpy(dtype=object)[rk], "seq": E["seq"].to_numpy()[rk].astype(np.int64),
                      "rts": E["ts_ns"].to_numpy()[rk].astype(np.int64)})
    Q = pd.DataFrame({"_r": np.arange(n), "tid": S["tid"].to_numpy().astype(np.int64),
                      "path": S["path"].to_numpy(dtype=object), "seq": S["seq"].to_numpy().astype(np.int64),
                      "t": S["ts_ns"].to_numpy().astype(np.int64)})
    m = Q.merge(R, on=["tid", "path", "seq"])
    m = m[(m["rts"] >= m["t"]) & (m["rts"] - m["t"] <= win.syscall_window_ns)]
    if len(m):
        m = m.sort_values(["_r", "rts", "_p"]).drop_duplicates("_r")
        pos[m["_r"].to_numpy()] = m["_p"].to_numpy()
        ts[m["_r"].to_numpy()] = m["rts"].to_numpy()
    return pos, ts


def creators(E: pd.DataFrame) -> pd.DataFrame:
    """(event_id, ts_ns, op, name, base, strict): every successful operation that can have made a name, sorted by
    stamp. ``name``: the path it made, as recorded; ``base``: the inode of the directory that path starts from
    (flag BASE) or -1; ``strict``: it makes only what lies below ``name`` (mount, RENAME_EXCHANGE)."""
    k, op, flags = E["kind"].to_numpy(), E["op"].to_numpy(), E["flags"].to_numpy()
    ok = (k == Kind.NS_OP) & (E["ret"].to_numpy() >= 0)
    exchange = (flags & int(Flag.EXCHANGE)) != 0
    ino = E["ino"].to_numpy().astype(np.int64)
    parts = []
    for o, col in CREATING_OPS.items():
        for c in [col] + (["path"] if o == int(Op.RENAME) else []):
            m = ok & (op == o)
            if c != col:
                m &= exchange  # an exchange's first name: flags DIRFD/BASE are its second's, so unplaced
            if not m.any():
                continue
            base = np.where((flags[m] & int(Flag.BASE)) != 0, ino[m], _NONE) if c == col else np.full(m.sum(), _NONE)
            strict = exchange[m] if o == int(Op.RENAME) else np.full(m.sum(), o == int(Op.MOUNT))
            parts.append(pd.DataFrame({"event_id": E["event_id"].to_numpy()[m].astype(np.int64),
                                       "ts_ns": E["ts_ns"].to_numpy()[m].astype(np.int64),
                                       "op": op[m].astype(np.int64), "name": E[c].to_numpy(dtype=object)[m],
                                       "base": base.astype(np.int64), "strict": strict.astype(bool)}))
    if not parts:
        return pd.DataFrame({"event_id": np.zeros(0, np.int64), "ts_ns": np.zeros(0, np.int64),
                             "op": np.zeros(0, np.int64), "name": np.zeros(0, object),
                             "base": np.zeros(0, np.int64), "strict": np.zeros(0, bool)})
    return pd.concat(parts, ignore_index=True).sort_values(["ts_ns", "event_id"], ignore_index=True)


def could_create(name: str, base: int, strict: bool, comps: list[str], chain: list[int], names: set[str],
                 dirs: set[str]) -> bool:
    """Whether making ``name`` (a path as a creator recorded it, from the directory whose inode is ``base``, -1
    unknown) can have made the failed path or a directory above it (only a directory above it, ``strict``).

    ``comps``: the failed path's components as the re-check resolved them,
    ``chain``: the inode numbers of the directories holding each (root
    first; [] when the re-check could not place them); ``names`` every
    component the failed path has, as recorded or resolved, ``dirs`` those
    but the last."""
    q = components(name)
    if not q:
        return True  # a mount over "" or "/" (move_mount by fd): over everything
    if base >= 0 and chain and ".." not in q:
        room = len(q) + 1 if strict else len(q)
        return any(ino == base and room <= len(comps) - k and comps[k:k + len(q)] == q for k, ino in enumerate(chain))
    return q[-1] in (dirs if strict else names)


class Creators:
    """creators(), indexed by the last component of the name each made: the only component of a failed path it can
    have made. Why a class: every failure asks, and a name's creators are found without a pass over all of them."""

    def __init__(self, E: pd.DataFrame):
        C = creators(E)
        self.event_id, self.op = C["event_id"].to_numpy(), C["op"].to_numpy()
        self.name, self.base = C["name"].to_numpy(dtype=object), C["base"].to_numpy()
        self.strict = C["strict"].to_numpy()
        self.ts = C["ts_ns"].to_numpy().astype(np.int64)
        last = pd.Series([(components(str(x)) or [""])[-1] for x in self.name.tolist()], dtype=object)
        self.groups = {k: np.asarray(v, dtype=np.int64) for k, v in last.groupby(last, sort=False).indices.items()}

    def first(self, lo_ts: int, hi_ts: int, comps: list[str], chain: list[int], names: set[str],
              dirs: set[str]) -> int:
        """The first creator stamped in [lo_ts, hi_ts] that can have made the failed path (its position), or -1."""
        lo, hi = np.searchsorted(self.ts, lo_ts, "left"), np.searchsorted(self.ts, hi_ts, "right")
        cands = []
        for nm in names | {""}:
            g = self.groups.get(nm)
            if g is not None:
                cands.extend(g[np.searchsorted(g, lo):np.searchsorted(g, hi)].tolist())
        for c in sorted(cands):
            if could_create(str(self.name[c]), int(self.base[c]), bool(self.strict[c]), comps, chain, names, dirs):
                return c
        return _NONE
