"""A discrete-event simulator of RCU path walk racing dentry pruning, with ground truth.

Kept as one module because the model, its event emission and its ground truth
are one state machine: split, the three would have to share every field of it.

Why it exists: the race vfstrace hunts ("vfs: fix race in rcu lookup of pruned
dentry", 3.0) takes weeks to hit on real hardware, and a live kernel never
tells you which -ENOENT was wrong. The simulator runs the same interleavings
on a model of the dcache, emits events exactly as the kprobe tier would see
them (vfstrace/events.py), and keeps the true cause of every failed lookup in
a separate frame the correlator never sees. That is what lets
bench/eval_correlator.py measure precision and recall instead of guessing.

The model
---------
* A tree ``/dK/fJ`` (files a ``cp -a`` would visit), ``/dK/cJ`` (files the
  churn loop unlinks and renames over) and empty directories ``/tK`` (removed
  and made again by ``rmdir``/``mkdir``). Never-existing names ``/dK/nxJ``
  give plain misses.
* Walkers are staggered ``cp -a``-like tasks: ``newfstatat`` then ``openat``
  of each file in order, with stats of never-existing and churned names mixed
  in. Each path component is an RCU walk: ``WALK_ENTER`` (RCU),
  ``LOOKUP_ENTER``, ``LOOKUP_RETURN`` (dentry, d_seq sample), then the read of
  ``d_inode`` a little later (sometimes much later: the widened window).
* A pruner (memory pressure) kills unreferenced leaf dentries in bursts:
  ``SHRINK_START``, per dentry ``PRUNE`` -> ``UNHASH`` (d_seq bumped) ->
  ``IPUT`` (d_inode = NULL), ``SHRINK_END``; the object is freed (``D_FREE``)
  one RCU grace period after the last RCU walker let go of it, and its
  address goes back to a LIFO free list that ``D_ALLOC`` takes from
  (address reuse). Directory dentries with no cached children are pruned too.
* ``semantics="buggy"`` is 3.0 before the patch: a walk that reads
  ``d_inode == NULL`` returns -ENOENT without re-checking d_seq.
  ``semantics="fixed"`` re-checks: d_seq changed -> ``SEQ_CHECK`` -ECHILD,
  ``WALK_RETURN`` -ECHILD, and the path is walked again in ref-walk mode,
  which finds the file through the slow lookup.
* Real -ENOENT: never-existing names, concurrent unlink (``d_delete`` ->
  ``IPUT``, the dentry stays hashed and negative), rename over a name (the
  old target is unhashed, killed and freed), rmdir. Each emits ``NS_OP``;
  every path syscall emits ``PATH_SYSCALL`` with its final result.
* Hazards: a fixed clock offset per CPU (``jitter_ns``);
  walkers migrate between CPUs, also mid-walk; address reuse; lost events
  (bursts dropped per CPU, each followed by a ``LOST`` record with the count);
  walks whose ``WALK_ENTER`` the kernel side filtered out (``drop_enter``).

Ground truth (the ``truth`` frame: event_id, level, truth): for every
``WALK_RETURN`` with -ENOENT or -ECHILD (level ``walk``): ``race`` (found a
positive dentry that a prune made negative before d_inode was read, no
re-check), ``retried`` (-ECHILD), ``explained`` (the name was removed or made
negative by unlink/rename/rmdir), ``absent`` (never existed); and for every
``PATH_SYSCALL`` with -ENOENT (level ``syscall``): ``transient`` (the failure
came from a race: the file existed throughout), ``explained``, ``absent``.
Names removed by churn are looked up only while the removal is fresh (under
``FRESH_NS``) and come back after ``RECREATE_NS``, so "explained" always has
its namespace operation close by, as the correlator's windows expect.
"""

from __future__ import annotations

import heapq
import random

import numpy as np
import pandas as pd

from vfstrace.errors import VfstraceError
from vfstrace import events as _events
from vfstrace.events import COLUMNS, ECHILD, ENOENT, NUMPY_DTYPES, Flag, Kind, Op

_DEFAULTS = getattr(_events, "COLUMN_DEFAULTS", {})

SEMANTICS = ("buggy", "fixed")
VIEWS = ("kprobe", "tracepoint")
DELIVERIES = ("ts", "percpu")
# The kinds a tracepoint-only kernel can see (no function probes).
TRACEPOINT_KINDS = (Kind.PATH_SYSCALL, Kind.NS_OP, Kind.D_FREE, Kind.D_ALLOC, Kind.SHRINK_START, Kind.SHRINK_END, Kind.LOST,
                    Kind.RECHECK)

FRESH_NS = 500_000        # removed names are looked up for this long after removal
RECREATE_NS = 1_500_000   # ... and re-created this long after it
QUICK_RECREATE = 0.3      # share of unlinks re-created within FRESH_NS (unlink + re-create)
COMPLETE_WALK_NS = (200, 3_000)  # from the last component's return to complete_walk()'s re-check
POLL_NS, DRAIN_NS = 200_000, 20_000  # delivery="percpu": reader period, and its lag from one CPU to the next
RECHECK_NS = 200_000  # from a failed path syscall to the tracepoint tier's re-check of its path
ADDR_BASE = 0xFFFF_8881_0000_0000
DENTRY_SIZE = 192
ROOT_INO = 2

_RCU = int(Flag.RCU)
_NEG = int(Flag.NEGATIVE)
_SEQC = int(Flag.SEQ_CHANGED)
_INW = int(Flag.IN_WALK)


class _Dentry:
    __slots__ = ("addr", "name", "parent", "ino", "hashed", "seq", "is_dir", "children", "readers", "refs", "cause", "removed_at")

    def __init__(self, addr, name, parent, ino, is_dir):
        self.addr = addr
        self.name = name
        self.parent = parent  # _Dentry or None for the root
        self.ino = ino  # 0: negative
        self.hashed = True
        self.seq = 0
        self.is_dir = is_dir
        self.children = 0  # hashed children
        self.readers = 0  # RCU walkers holding a pointer to it
        self.refs = 0
        self.cause = "never" if ino == 0 else None  # why negative: never / ns / prune
        self.removed_at = None


class _Sim:
    def __init__(self, seed, semantics, walkers, files, duration_ns, churn, jitter_ns, migrate, reuse,
                 prune_parents, cpus, widen, drop_enter, prune_gap_ns, prune_fraction, think_ns):
        self.rng = random.Random(seed)
        self._random = self.rng.random
        self.semantics = semantics
        self.n_walkers = walkers
        self.duration = duration_ns
        self.churn = churn
        self.migrate = migrate
        self.reuse = reuse
        self.prune_parents = prune_parents
        self.cpus = cpus
        self.widen = widen
        self.drop_enter = drop_enter
        self.prune_gap_ns = prune_gap_ns
        self.prune_fraction = prune_fraction
        self.think_ns = think_ns
        self.now = 0
        self.rows = []
        self.truth = {}  # row index -> (level, label)
        self.heap = []
        self._seq = 0
        self.next_addr = ADDR_BASE
        self.free_list = []
        self.next_ino = 100
        self.dcache = {}  # (parent addr, name) -> _Dentry
        # The file system: directory path -> {name: (ino, is_dir)}
        ndirs = max(1, files // 8)
        self.dirs = [f"d{k}" for k in range(ndirs)]
        self.fs = {"": {}}
        self.cp_files = []
        self.churn_files = []
        for k, d in enumerate(self.dirs):
            self.fs[""][d] = (self._ino(), True)
            self.fs[d] = {}
        for j in range(files):
            d = self.dirs[j % ndirs]
            name = f"f{j}"
            self.fs[d][name] = (self._ino(), False)
            self.cp_files.append((d, name))
        for j in range(max(4, files // 8)):
            d = self.dirs[j % ndirs]
            name = f"c{j}"
            self.fs[d][name] = (self._ino(), False)
            self.churn_files.append((d, name))
        self.tdirs = [f"t{k}" for k in range(4)]
        for t in self.tdirs:
            self.fs[""][t] = (self._ino(), True)
            self.fs[t] = {}
        self.removed = {}  # (dir, name) -> time removed (while absent)
        self.recreated = {}  # (dir, name) -> time quickly re-created after a removal
        self.last_found = {}  # walker -> (dentry, d_seq sample) of its last RCU component
        self.exists_after = set()  # rows of failed path syscalls whose path existed at the re-check
        self.root = _Dentry(self._alloc_addr(), "/", None, ROOT_INO, True)
        self.root.refs = 1  # pinned, never pruned
        self.cpu_offset = [self.rng.randint(-jitter_ns, jitter_ns) if jitter_ns else 0 for _ in range(cpus)]

    # -- plumbing ----------------------------------------------------------------

    def _ino(self):
        self.next_ino += 1
        return self.next_ino

    def _alloc_addr(self):
        if self.reuse and self.free_list:
            return self.free_list.pop()
        a = self.next_addr
        self.next_addr += DENTRY_SIZE
        return a

    def emit(self, kind, cpu, tid, comm, *, op=0, dentry=0, parent=0, ino=0, name="", path="", path2="",
             seq=0, seq2=0, ret=0, flags=0, pid=None):
        self.rows.append((self.now, cpu, tid if pid is None else pid, tid, comm, int(kind), int(op), dentry, parent,
                          ino, name, path, path2, seq & 0xFFFFFFFF, seq2 & 0xFFFFFFFF, ret, flags))
        return len(self.rows) - 1

    def spawn(self, gen, delay=0):
        self._seq += 1
        heapq.heappush(self.heap, (self.now + delay, self._seq, gen))

    def run(self):
        while self.heap:
            t, _, gen = heapq.heappop(self.heap)
            if t > self.duration:
                break
            self.now = t
            try:
                d = next(gen)
            except StopIteration:
                continue
            self._seq += 1
            heapq.heappush(self.heap, (self.now + max(1, int(d)), self._seq, gen))

    def u(self, a, b):
        return a + int(self._random() * (b - a + 1))

    # -- dcache ------------------------------------------------------------------

    def d_alloc(self, parent, name, ino, is_dir, cpu, tid, comm):
        d = _Dentry(self._alloc_addr(), name, parent, ino, is_dir)
        self.emit(Kind.D_ALLOC, cpu, tid, comm, dentry=d.addr, parent=parent.addr, name=name)
        self.dcache[(parent.addr, name)] = d
        parent.children += 1
        return d

    def unhash(self, d):
        if d.hashed:
            d.hashed = False
            d.seq += 2
            self.dcache.pop((d.parent.addr, d.name), None)
            d.parent.children -= 1

    def free_later(self, d, cpu):
        def freer():
            while d.readers:
                yield self.u(200, 2_000)
            yield self.u(10_000, 50_000)  # RCU grace period
            self.emit(Kind.D_FREE, cpu, 0, f"rcu/{cpu}", dentry=d.addr)
            self.free_list.append(d.addr)
        self.spawn(freer())

    def fs_lookup(self, dirpath, name):
        return self.fs.get(dirpath, {}).get(name)

    def neg_label(self, dirpath, name, d=None):
        """Why a name is absent right now: explained (freshly removed) or absent."""
        if d is not None and d.cause == "ns":
            return "explained"
        if (dirpath, name) in self.removed:
            return "explained"
        return "absent"

    # -- walkers -----------------------------------------------------------------

    def walker(self, w):
        tid = 2000 + w
        comm = "cp"
        self.wcpu[w] = w % self.cpus
        yield 1 + w * self.u(20_000, 60_000)  # staggered start
        pos = self.u(0, 3)
        while True:
            r = self.rng.random()
            if self.churn and r < 0.12:
                targets = self._churn_target()
                ops = (Op.NEWFSTATAT,)
            elif r < 0.18:
                d = self.rng.choice(self.dirs)
                targets = (d, f"nx{self.u(0, 15)}")
                ops = (Op.NEWFSTATAT,)
            else:
                targets = self.cp_files[pos % len(self.cp_files)]
                pos += 1
                ops = (Op.NEWFSTATAT, Op.OPENAT)
            comps = [c for c in targets if c]
            path = "/" + "/".join(comps)
            for op in ops:
                res, label = yield from self.path_walk(w, tid, comm, comps, path, rcu=True)
                if res == ECHILD:
                    res, label = yield from self.path_walk(w, tid, comm, comps, path, rcu=False)
                i = self.emit(Kind.PATH_SYSCALL, self.wcpu[w], tid, comm, op=op, path=path, ret=res if res else 3)
                if res == ENOENT:
                    self.truth[i] = ("syscall", {"race": "transient"}.get(label, label))
                    self.spawn(self._recheck(i, comps))
                yield self.u(self.think_ns // 4, self.think_ns * 2)
            if self.migrate and self.rng.random() < 0.2:
                self.wcpu[w] = self.u(0, self.cpus - 1)

    def _recheck(self, row, comps):
        """The tracepoint tier's re-check of a failed path at its next poll: a RECHECK row (ret 0 found,
        -ENOENT not), as tracers/tracepoint.py writes one, and EXISTS_AFTER on the failure if it is there.

        The row carries no directory inode chain (``name`` ""): the correlator then places creators by
        the created name alone, which can only find more of them (vfstrace/correlate/existence.py)."""
        yield RECHECK_NS
        d, found = "", True
        for k, c in enumerate(comps):
            if c not in self.fs.get(d, {}):
                found = False
                break
            d = c if k == 0 else d + "/" + c
        r = self.rows[row]
        cpu, tid, comm, op, path, seq = r[1], r[3], r[4], r[6], r[11], r[13]
        self.emit(Kind.RECHECK, cpu, tid, comm, op=op, path=path, path2=path if found else "", seq=seq,
                  ret=0 if found else ENOENT, pid=r[2])
        if found:
            self.exists_after.add(row)

    def _churn_target(self):
        now = self.now
        fresh = [k for k, t in self.removed.items() if now - t < FRESH_NS]
        again = [k for k, t in self.recreated.items() if now - t < FRESH_NS]
        r = self.rng.random()
        if fresh and r < 0.5:
            d, n = self.rng.choice(fresh)
            return (d, n)
        if again and r < 0.7:
            return self.rng.choice(again)
        if r < 0.85:
            return self.rng.choice(self.churn_files)
        return ("", self.rng.choice(self.tdirs))

    def path_walk(self, w, tid, comm, comps, path, rcu):
        parent = self.root
        dirpath = ""
        for k, name in enumerate(comps):
            res, out = yield from self.component(w, tid, comm, parent, dirpath, name, path, rcu)
            if res:
                return res, out  # out is the label
            parent = out
            dirpath = name if k == 0 else dirpath + "/" + name
        if rcu and self.last_found.get(w, (None,))[0] is parent:
            # complete_walk() -> try_to_unlazy(): legitimize the final dentry
            # against its d_seq sample. Outside walk_component(): the tracer
            # holds no walk state, so the SEQ_CHECK has no IN_WALK and no
            # dentry, and the walk it judges returned 0 (never streamed).
            d, seq = self.last_found.pop(w)
            yield self.u(*COMPLETE_WALK_NS)
            if d.seq != seq:
                self.emit(Kind.SEQ_CHECK, self.wcpu[w], tid, comm, op=Op.COMPLETE_WALK, ret=ECHILD)
                return ECHILD, "retried"
        return 0, None

    def _maybe_migrate(self, w):
        if self.migrate and self.rng.random() < 0.02:
            self.wcpu[w] = self.u(0, self.cpus - 1)

    def component(self, w, tid, comm, parent, dirpath, name, path, rcu):
        """One walk_component(): returns (0, dentry) or (-errno, truth label)."""
        fl = _RCU if rcu else 0
        if self.rng.random() >= self.drop_enter:
            self.emit(Kind.WALK_ENTER, self.wcpu[w], tid, comm, parent=parent.addr, name=name, path=path, flags=fl)
        yield self.u(40, 150)
        self._maybe_migrate(w)
        self.emit(Kind.LOOKUP_ENTER, self.wcpu[w], tid, comm, parent=parent.addr, name=name, path=path, flags=fl)
        yield self.u(40, 150)
        cpu = self.wcpu[w]
        if rcu and not parent.hashed and parent is not self.root:
            # The directory we stand in was pruned under us: leave RCU mode.
            self.emit(Kind.LOOKUP_RETURN, cpu, tid, comm, parent=parent.addr, name=name, flags=fl)
            self.emit(Kind.SEQ_CHECK, cpu, tid, comm, op=Op.TRY_TO_UNLAZY, dentry=parent.addr, ret=ECHILD,
                      flags=fl | _INW)
            i = self.emit(Kind.WALK_RETURN, cpu, tid, comm, parent=parent.addr, ret=ECHILD, flags=fl)
            self.truth[i] = ("walk", "retried")
            return ECHILD, "retried"
        d = self.dcache.get((parent.addr, name))
        if d is not None and rcu:
            seq = d.seq
            d.readers += 1
            self.emit(Kind.LOOKUP_RETURN, cpu, tid, comm, dentry=d.addr, parent=parent.addr, ino=d.ino,
                      seq=seq, seq2=seq, flags=fl | (0 if d.ino else _NEG))
            positive_at_find = d.ino != 0
            # The window between finding the dentry and reading d_inode.
            if self.rng.random() < self.widen:
                yield self.u(5_000, 40_000)
            else:
                yield self.u(30, 300)
            self._maybe_migrate(w)
            cpu = self.wcpu[w]
            d.readers -= 1
            ino = d.ino
            changed = d.seq != seq
            fl2 = fl | (_SEQC if changed else 0)
            if not ino:
                if self.semantics == "buggy" or not changed:
                    i = self.emit(Kind.WALK_RETURN, cpu, tid, comm, dentry=d.addr, parent=parent.addr, seq=seq,
                                  seq2=d.seq, ret=ENOENT, flags=fl2 | _NEG)
                    if positive_at_find and d.cause in ("prune", "replaced"):
                        label = "race"
                    else:
                        label = self.neg_label(dirpath, name, d)
                    self.truth[i] = ("walk", label)
                    return ENOENT, label
            elif not changed:
                self.emit(Kind.WALK_RETURN, cpu, tid, comm, dentry=d.addr, parent=parent.addr, ino=ino, seq=seq,
                          seq2=d.seq, flags=fl)
                self.last_found[w] = (d, seq)
                return 0, d
            # d_seq moved under us: re-check fails, drop out of RCU mode.
            self.emit(Kind.SEQ_CHECK, cpu, tid, comm, op=Op.STEP_INTO, dentry=d.addr, seq=seq, seq2=d.seq, ret=ECHILD,
                      flags=fl2 | _INW)
            i = self.emit(Kind.WALK_RETURN, cpu, tid, comm, dentry=d.addr, parent=parent.addr, ino=ino, seq=seq,
                          seq2=d.seq, ret=ECHILD, flags=fl2 | (0 if ino else _NEG))
            self.truth[i] = ("walk", "retried")
            return ECHILD, "retried"
        if d is not None:
            # ref-walk: d_lookup under a reference; a held dentry is never pruned.
            self.emit(Kind.LOOKUP_RETURN, cpu, tid, comm, dentry=d.addr, parent=parent.addr, ino=d.ino,
                      seq=d.seq, seq2=d.seq, flags=0 if d.ino else _NEG)
            return self.walk_outcome(cpu, tid, comm, d, parent, dirpath, name)
        # dcache miss: lookup_slow() allocates a dentry and asks the file system.
        self.emit(Kind.LOOKUP_RETURN, cpu, tid, comm, parent=parent.addr, name=name, flags=fl)
        if rcu:
            self.emit(Kind.SEQ_CHECK, cpu, tid, comm, op=Op.TRY_TO_UNLAZY, dentry=parent.addr, flags=fl | _INW)
        yield self.u(1_000, 3_000)
        cpu = self.wcpu[w]
        d = self.dcache.get((parent.addr, name))  # someone may have raced us in
        if d is None:
            ent = self.fs_lookup(dirpath, name)
            d = self.d_alloc(parent, name, ent[0] if ent else 0, bool(ent and ent[1]), cpu, tid, comm)
            if not ent:
                d.cause = "ns" if (dirpath, name) in self.removed else "never"
        return self.walk_outcome(cpu, tid, comm, d, parent, dirpath, name)

    def walk_outcome(self, cpu, tid, comm, d, parent, dirpath, name):
        """The walk's return once it holds dentry ``d``: found, or a labelled -ENOENT."""
        if d.ino:
            self.emit(Kind.WALK_RETURN, cpu, tid, comm, dentry=d.addr, parent=parent.addr, ino=d.ino, seq=d.seq, seq2=d.seq)
            return 0, d
        i = self.emit(Kind.WALK_RETURN, cpu, tid, comm, dentry=d.addr, parent=parent.addr, seq=d.seq, seq2=d.seq,
                      ret=ENOENT, flags=_NEG)
        label = self.neg_label(dirpath, name, d)
        self.truth[i] = ("walk", label)
        return ENOENT, label

    # -- memory pressure -----------------------------------------------------------

    def pruner(self):
        tid, comm = 90, "kswapd0"
        while True:
            yield int(self.rng.expovariate(1.0 / self.prune_gap_ns)) + 1
            cpu = self.u(0, self.cpus - 1)
            self.emit(Kind.SHRINK_START, cpu, tid, comm, name="super_cache_scan")
            cands = [d for d in self.dcache.values()
                     if d.refs == 0 and d.children == 0 and (self.prune_parents or not d.is_dir)]
            k = int(len(cands) * self.prune_fraction * self.rng.random())
            victims = self.rng.sample(cands, k) if k else []
            n = 0
            for d in victims:
                if not d.hashed or d.children:
                    continue
                self.emit(Kind.PRUNE, cpu, tid, comm, dentry=d.addr, parent=d.parent.addr, ino=d.ino, name=d.name, seq=d.seq)
                yield self.u(80, 300)
                self.unhash(d)
                self.emit(Kind.UNHASH, cpu, tid, comm, dentry=d.addr, parent=d.parent.addr, name=d.name, seq=d.seq,
                          flags=int(Flag.UNHASHED))
                yield self.u(50, 200)  # dentry_rcuwalk_barrier, then dentry_iput
                if d.ino:
                    self.emit(Kind.IPUT, cpu, tid, comm, dentry=d.addr, ino=d.ino, name=d.name, parent=d.parent.addr)
                    d.ino = 0
                    d.cause = "prune"
                self.free_later(d, cpu)
                n += 1
                yield self.u(100, 500)
            self.emit(Kind.SHRINK_END, cpu, tid, comm, name="super_cache_scan", ret=n)

    # -- namespace churn ---------------------------------------------------------

    def _dir_dentry(self, dirpath, cpu, tid, comm):
        """The cached dentry of a top-level directory, looked up (allocated) if need be."""
        if not dirpath:
            return self.root
        d = self.dcache.get((self.root.addr, dirpath))
        if d is None:
            ent = self.fs[""][dirpath]
            d = self.d_alloc(self.root, dirpath, ent[0], True, cpu, tid, comm)
        return d

    def _file_dentry(self, parent, dirpath, name, cpu, tid, comm):
        d = self.dcache.get((parent.addr, name))
        if d is None:
            ent = self.fs_lookup(dirpath, name)
            d = self.d_alloc(parent, name, ent[0] if ent else 0, bool(ent and ent[1]), cpu, tid, comm)
        return d

    def d_delete(self, d, cpu, tid, comm):
        """unlink/rmdir: the dentry lets go of its inode and stays hashed, negative."""
        if d.ino:
            self.emit(Kind.IPUT, cpu, tid, comm, dentry=d.addr, ino=d.ino, name=d.name, parent=d.parent.addr)
        d.seq += 2
        d.ino = 0
        d.cause = "ns"

    def recreate(self, dirpath, name, is_dir, quick=False):
        """Make a removed name again: after RECREATE_NS, or (``quick``) while its
        removal is still inside the correlator's explain window, so a prune of
        the *new* inode meets an unlink of the old one."""
        yield self.u(100_000, 400_000) if quick else RECREATE_NS + self.u(0, 300_000)
        cpu = self.u(0, self.cpus - 1)
        tid, comm = 80, "churn"
        self.removed.pop((dirpath, name), None)
        ino = self._ino()
        self.fs[dirpath][name] = (ino, is_dir)
        if is_dir:
            self.fs.setdefault(name, {})
        path = "/" + (dirpath + "/" if dirpath else "") + name
        d = self.dcache.get((self._dir_dentry(dirpath, cpu, tid, comm).addr, name))
        if d is not None and not d.ino:
            d.ino, d.cause = ino, None  # d_instantiate
        if is_dir:
            self.emit(Kind.NS_OP, cpu, tid, comm, op=Op.MKDIR, path=path, name=name, parent=self.root.addr,
                      dentry=d.addr if d else 0)
        else:
            self.emit(Kind.PATH_SYSCALL, cpu, tid, comm, op=Op.OPENAT, path=path, ret=3)
        self.busy.discard((dirpath, name))
        if quick:
            self.recreated[(dirpath, name)] = self.now

    def churner(self):
        tid, comm = 80, "churn"
        self.busy = set()
        while True:
            yield int(self.rng.expovariate(1.0 / 200_000)) + 1
            cpu = self.u(0, self.cpus - 1)
            r = self.rng.random()
            if r < 0.45:
                dirpath, name = self.rng.choice(self.churn_files)
                if (dirpath, name) in self.busy or name not in self.fs[dirpath]:
                    continue
                self.busy.add((dirpath, name))
                P = self._dir_dentry(dirpath, cpu, tid, comm)
                d = self._file_dentry(P, dirpath, name, cpu, tid, comm)
                yield self.u(500, 1_500)
                del self.fs[dirpath][name]
                self.removed[(dirpath, name)] = self.now
                ino = d.ino
                self.d_delete(d, cpu, tid, comm)
                yield self.u(200, 800)
                self.emit(Kind.NS_OP, cpu, tid, comm, op=Op.UNLINK, path=f"/{dirpath}/{name}", parent=P.addr,
                          name=name, dentry=d.addr, ino=ino)
                self.spawn(self.recreate(dirpath, name, False, quick=self.rng.random() < QUICK_RECREATE))
            elif r < 0.85:
                dirpath = self.rng.choice(self.dirs)
                names = [n for (dd, n) in self.churn_files if dd == dirpath and n in self.fs[dirpath]
                         and (dd, n) not in self.busy]
                if len(names) < 2:
                    continue
                a, b = self.rng.sample(names, 2)
                self.busy.update({(dirpath, a), (dirpath, b)})
                P = self._dir_dentry(dirpath, cpu, tid, comm)
                da = self._file_dentry(P, dirpath, a, cpu, tid, comm)
                db = self._file_dentry(P, dirpath, b, cpu, tid, comm)
                yield self.u(500, 1_500)
                if not da.hashed or not db.hashed:
                    self.busy.difference_update({(dirpath, a), (dirpath, b)})
                    continue
                self.fs[dirpath][b] = self.fs[dirpath].pop(a)
                self.removed[(dirpath, a)] = self.now
                # d_move: the target is dropped, the source takes its name.
                self.unhash(db)
                self.emit(Kind.UNHASH, cpu, tid, comm, dentry=db.addr, parent=P.addr, name=b, seq=db.seq,
                          flags=int(Flag.UNHASHED))
                self.unhash(da)
                da.name = b
                da.hashed = True
                self.dcache[(P.addr, b)] = da
                P.children += 1
                db.cause = "replaced"  # the name b lives on (da): a lookup that says -ENOENT was lied to
                yield self.u(200, 600)
                self.emit(Kind.PRUNE, cpu, tid, comm, dentry=db.addr, parent=P.addr, ino=db.ino, name=b, seq=db.seq)
                if db.ino:
                    self.emit(Kind.IPUT, cpu, tid, comm, dentry=db.addr, ino=db.ino, name=b, parent=P.addr)
                    db.ino = 0
                self.free_later(db, cpu)
                self.emit(Kind.NS_OP, cpu, tid, comm, op=Op.RENAME, path=f"/{dirpath}/{a}", path2=f"/{dirpath}/{b}",
                          parent=P.addr, name=a, dentry=da.addr, ino=da.ino)
                self.busy.discard((dirpath, b))
                self.spawn(self.recreate(dirpath, a, False))
            else:
                t = self.rng.choice(self.tdirs)
                if ("", t) in self.busy or t not in self.fs[""]:
                    continue
                self.busy.add(("", t))
                d = self._file_dentry(self.root, "", t, cpu, tid, comm)
                yield self.u(500, 1_500)
                del self.fs[""][t]
                self.removed[("", t)] = self.now
                ino = d.ino
                self.d_delete(d, cpu, tid, comm)
                yield self.u(200, 800)
                self.emit(Kind.NS_OP, cpu, tid, comm, op=Op.RMDIR, path=f"/{t}", parent=self.root.addr, name=t,
                          dentry=d.addr, ino=ino)
                self.spawn(self.recreate("", t, True))

    # -- output ------------------------------------------------------------------

    def frames(self, loss_rate, view, delivery="ts", all_paths=True):
        rows = self.rows
        n = len(rows)
        cols = list(zip(*rows)) if n else [[] for _ in range(17)]
        names = ("ts_ns", "cpu", "pid", "tid", "comm", "kind", "op", "dentry", "parent", "ino", "name", "path",
                 "path2", "seq", "seq2", "ret", "flags")
        # Explicit dtypes: kernel addresses do not fit int64, and a float64 guess would merge them.
        types = {"comm": object, "name": object, "path": object, "path2": object, "ret": np.int64,
                 "dentry": np.uint64, "parent": np.uint64, "ino": np.uint64}
        arr = {k: np.array(v, dtype=types.get(k, np.int64)) for k, v in zip(names, cols)}
        true_ts = arr["ts_ns"].astype(np.int64)
        cpu = arr["cpu"].astype(np.int64)
        off = np.asarray(self.cpu_offset, dtype=np.int64)[cpu] if n else np.zeros(0, np.int64)
        nrng = np.random.default_rng(self.rng.getrandbits(63))
        # Each CPU's clock is monotonic but offset from the others' (as TSCs are).
        ts = true_ts + off + 10_000_000  # keep clear of zero
        keep = np.ones(n, dtype=bool)
        lost_rows = []
        if loss_rate > 0 and n:
            # Drop bursts of consecutive events per CPU (a full ring), then a LOST record.
            mean_burst = 40
            starts = np.flatnonzero(nrng.random(n) < loss_rate / mean_burst)
            for s in starts:
                c = cpu[s]
                idx = np.flatnonzero((cpu[s:] == c))[: int(nrng.integers(10, 2 * mean_burst))] + s
                idx = idx[keep[idx] & (arr["kind"][idx] != Kind.RECHECK)]  # re-checks are user space's rows
                if not len(idx):
                    continue
                keep[idx] = False
                lost_rows.append((int(ts[idx[-1]]) + int(nrng.integers(100, 5_000)), int(c), len(idx)))
        if view == "tracepoint":
            keep &= np.isin(arr["kind"], [int(k) for k in TRACEPOINT_KINDS])
            if self.exists_after:
                ea = np.fromiter(self.exists_after, dtype=np.int64)
                arr["flags"][ea] |= int(Flag.EXISTS_AFTER)
            if not all_paths:  # a default recording: successful path syscalls are not streamed
                keep &= ~((arr["kind"] == Kind.PATH_SYSCALL) & (arr["ret"] >= 0))
        else:  # only the tracepoint tier re-checks failed paths
            keep &= arr["kind"] != Kind.RECHECK
        sel = np.flatnonzero(keep)
        df = pd.DataFrame({
            "ts_ns": ts[sel].astype(np.uint64),
            "cpu": cpu[sel].astype(np.uint32),
            "pid": arr["pid"][sel].astype(np.uint32),
            "tid": arr["tid"][sel].astype(np.uint32),
            "comm": arr["comm"][sel].astype(object),
            "kind": arr["kind"][sel].astype(np.uint8),
            "op": arr["op"][sel].astype(np.uint16),
            "dentry": arr["dentry"][sel].astype(np.uint64),
            "parent": arr["parent"][sel].astype(np.uint64),
            "ino": arr["ino"][sel].astype(np.uint64),
            "name": arr["name"][sel].astype(object),
            "path": arr["path"][sel].astype(object),
            "path2": arr["path2"][sel].astype(object),
            "seq": arr["seq"][sel].astype(np.uint32),
            "seq2": arr["seq2"][sel].astype(np.uint32),
            "ret": arr["ret"][sel].astype(np.int64),
            "flags": arr["flags"][sel].astype(np.uint32),
        })
        df["_row"] = sel
        if lost_rows:
            lt, lc, ln = zip(*lost_rows)
            L = {c: np.zeros(len(lt), dtype=NUMPY_DTYPES[c]) for c in df.columns if c in NUMPY_DTYPES}
            for c in ("comm", "name", "path", "path2"):
                L[c] = np.full(len(lt), "", dtype=object)
            L["ts_ns"] = np.asarray(lt, dtype=np.uint64)
            L["cpu"] = np.asarray(lc, dtype=np.uint32)
            L["kind"] = np.full(len(lt), int(Kind.LOST), dtype=np.uint8)
            L["ret"] = np.asarray(ln, dtype=np.int64)
            L["_row"] = np.full(len(lt), -1)
            df = pd.concat([df, pd.DataFrame(L)[df.columns]], ignore_index=True)
        df = df.sort_values("ts_ns", kind="stable").reset_index(drop=True)
        if delivery == "percpu" and len(df):
            # A perf buffer per CPU, drained in turns: every POLL_NS the reader
            # empties CPU 0, then CPU 1 DRAIN_NS later, and so on; ids follow
            # that arrival order, so a later event on one CPU can get a lower
            # id than an earlier one on another.
            t = df["ts_ns"].to_numpy().astype(np.int64)
            c = df["cpu"].to_numpy().astype(np.int64)
            rnd = -((c * DRAIN_NS - t) // POLL_NS)  # ceil((t - c * DRAIN_NS) / POLL_NS)
            df = df.iloc[np.lexsort((t, c, rnd))].reset_index(drop=True)
        df.insert(0, "event_id", np.arange(1, len(df) + 1, dtype=np.uint64))
        rowmap = dict(zip(df["_row"].to_numpy().tolist(), df["event_id"].to_numpy().tolist()))
        for c in COLUMNS:
            if c not in df.columns:  # a column the model has no say in: its schema default
                df[c] = np.full(len(df), _DEFAULTS.get(c, 0), dtype=NUMPY_DTYPES[c])
        df = df.drop(columns="_row")[list(COLUMNS)]
        for c in ("comm", "name", "path", "path2"):
            df[c] = df[c].astype(object)  # the schema's dtype (pandas would infer its str dtype)
        t_ids, t_level, t_label = [], [], []
        for r, (level, label) in self.truth.items():
            eid = rowmap.get(r)
            if eid is None:
                continue  # the judged event itself was lost (or not in this view)
            t_ids.append(eid)
            t_level.append(level)
            t_label.append(label)
        truth = pd.DataFrame({"event_id": np.asarray(t_ids, dtype=np.uint64),
                              "level": pd.Series(t_level, dtype=object),
                              "truth": pd.Series(t_label, dtype=object)})
        truth = truth.sort_values("event_id").reset_index(drop=True)
        return df, truth


def simulate(seed: int, *, semantics: str = "buggy", walkers: int = 4, files: int = 256,
             duration_ns: int = 20_000_000, churn: bool = True, jitter_ns: int = 2_000, migrate: bool = True,
             reuse: bool = True, loss_rate: float = 0.0, prune_parents: bool = True, cpus: int = 4,
             widen: float = 0.1, drop_enter: float = 0.02, prune_gap_ns: int = 100_000,
             prune_fraction: float = 0.6, think_ns: int = 4_000, view: str = "kprobe", delivery: str = "ts",
             all_paths: bool = True):
    """Simulate ``duration_ns`` of walkers against pruning; returns ``(events, truth)``.

    Deterministic for a given seed and arguments. ``events`` is in the event
    schema, sorted by (jittered) ``ts_ns`` and numbered from 1; ``truth`` holds
    the true label of every judged event (see the module docstring) and is
    never needed by the correlator. ``view="tracepoint"`` keeps only what the
    tracepoint tier could see (PATH_SYSCALL, NS_OP, D_FREE/D_ALLOC, SHRINK_*,
    LOST); its truth is then the syscall level only. ``delivery="percpu"``
    numbers events in the order a reader of per-CPU perf buffers receives
    them (grouped by CPU per drain, POLL_NS/DRAIN_NS) instead of by time.
    In the tracepoint view, every failed path syscall is followed RECHECK_NS
    later by the tracer's re-check of its path (a RECHECK row; the failure
    carries ``EXISTS_AFTER`` too when the path was there), and
    ``all_paths=False`` drops the successful path syscalls, as a recording
    without ``--all-paths`` does.
    """
    if semantics not in SEMANTICS:
        raise VfstraceError(f"--semantics must be one of {', '.join(SEMANTICS)}, not {semantics!r}")
    if delivery not in DELIVERIES:
        raise VfstraceError(f"delivery must be one of {', '.join(DELIVERIES)}, not {delivery!r}")
    if view not in VIEWS:
        raise VfstraceError(f"view must be one of {', '.join(VIEWS)}, not {view!r}")
    if walkers < 1 or files < 1 or cpus < 1 or duration_ns <= 0:
        raise VfstraceError("walkers, files, cpus and duration must be positive")
    if not (0.0 <= loss_rate < 1.0) or not (0.0 <= widen <= 1.0) or not (0.0 <= drop_enter < 1.0):
        raise VfstraceError("loss_rate, widen and drop_enter must be fractions")
    if jitter_ns < 0:
        raise VfstraceError("jitter must not be negative")
    s = _Sim(int(seed), semantics, walkers, files, int(duration_ns), churn, int(jitter_ns), migrate, reuse,
             prune_parents, cpus, widen, drop_enter, prune_gap_ns, prune_fraction, think_ns)
    s.wcpu = [0] * walkers
    for w in range(walkers):
        s.spawn(s.walker(w))
    s.spawn(s.pruner())
    if churn:
        s.spawn(s.churner())
    s.run()
    return s.frames(loss_rate, view, delivery, all_paths)


def _write_trace(events, output, meta):
    from vfstrace.store import TraceWriter

    lost = events[events["kind"] == Kind.LOST]
    per_cpu = {int(c): int(n) for c, n in lost.groupby("cpu")["ret"].sum().items()}
    with TraceWriter(output, meta=meta) as w:
        w.write(events)  # LOST rows included: they carry the simulated drop times
        w.update_meta(lost_per_cpu=per_cpu, lost_total=sum(per_cpu.values()))


def _cli():
    import click

    from vfstrace.options import Duration

    @click.command("simulate")
    @click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same trace).")
    @click.option("--semantics", type=click.Choice(SEMANTICS), default="buggy", show_default=True,
                  help="Kernel before (buggy) or after (fixed) the d_seq re-check patch.")
    @click.option("--tier", "view", type=click.Choice(VIEWS), default="kprobe", show_default=True,
                  help="Whose view to emit: the kprobe tier's (every function event) or the tracepoint "
                       "tier's (syscall results, dcache frees, shrinker runs).")
    @click.option("-d", "--duration", "seconds", type=Duration(1e-5, 10.0, min_open=False), default=0.02,
                  show_default=True, help="Simulated seconds (0.02 s of four walkers is about 80k events).")
    @click.option("--walkers", type=click.IntRange(1, 64), default=4, show_default=True)
    @click.option("--files", type=click.IntRange(1, 100_000), default=256, show_default=True)
    @click.option("--jitter-ns", type=click.IntRange(0, 10_000_000), default=2_000, show_default=True,
                  help="Per-CPU clock offset bound.")
    @click.option("--loss-rate", type=click.FloatRange(0, 0.5), default=0.0, show_default=True,
                  help="Fraction of events dropped in bursts (each burst leaves a LOST record).")
    @click.option("--no-churn", is_flag=True, help="No unlink/rename/rmdir.")
    @click.option("--no-reuse", is_flag=True, help="Never reuse a freed dentry address.")
    @click.option("--no-migrate", is_flag=True, help="Walkers stay on their CPU.")
    @click.option("-o", "--output", required=True, type=click.Path(dir_okay=True), help="Trace to write (.vft).")
    @click.option("--truth", "truth_path", type=click.Path(dir_okay=False),
                  help="Also write the ground truth (event_id, level, truth) as Parquet.")
    def simulate_cmd(seed, semantics, view, seconds, walkers, files, jitter_ns, loss_rate, no_churn, no_reuse,
                     no_migrate, output, truth_path):
        """Simulate RCU path walk against dentry pruning, with ground truth.

        \b
        Examples:
          vfstrace simulate --seed 7 --semantics buggy -o buggy.vft --truth buggy-truth.parquet
          vfstrace simulate --semantics fixed --tier tracepoint -d 0.05 -o tp.vft
          vfstrace analyze buggy.vft
        """
        params = dict(semantics=semantics, walkers=walkers, files=files, duration_ns=int(seconds * 1e9),
                      churn=not no_churn, jitter_ns=jitter_ns, migrate=not no_migrate, reuse=not no_reuse,
                      loss_rate=loss_rate, view=view)
        events, truth = simulate(seed, **params)
        meta = {"tier": "simulated", "workload": {"simulate": {"seed": seed, **params}}, "probes": []}
        _write_trace(events, output, meta)
        if truth_path:
            try:
                truth.to_parquet(truth_path, index=False)
            except OSError as e:
                raise VfstraceError(f"{truth_path}: cannot write: {e.strerror or e}") from None
        counts = truth.groupby(["level", "truth"]).size()
        click.echo(f"{output}: {len(events):,} events ({semantics} kernel, {view} view, seed {seed}); "
                   + ", ".join(f"{lv}/{t}={n}" for (lv, t), n in counts.items()))

    return simulate_cmd


simulate_cmd = _cli()
