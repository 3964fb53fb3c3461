"""`vfstrace stress`: the 2011 reproducer for the RCU-walk / dentry-prune race.

Kept as one module for now because the command, its cgroups and its workers
share one lifetime (start, stop, clean up when orphaned).

The report behind "vfs: fix race in rcu lookup of pruned dentry" came from
several slightly staggered parallel `cp -a` of one tree under memory
pressure: the copies walk the same paths while the shrinker prunes their
dentries, and a lookup racing a prune saw a negative result that was never
true (`cp: cannot stat ...: No such file or directory`). This command does
the same, so the symptom can be counted and traced:

* ``--copies`` (default 4) loops of ``cp -a SRC DST``, started ``--stagger``
  seconds apart, each repeated until the duration ends (DST removed between
  rounds so the disk does not fill);
* a stat() loop over the tree's existing files in a process named
  ``vfs-statter``, so the lookup side has load of its own, and a compiled
  loop that stat()s and open()s a few names of one directory in turn (an
  open()'s last component is looked up at a site of its own);
* memory pressure (:class:`Pressure`): a cgroup v2 ``memory.max`` that the
  workers alone are started in, sized from the tree and the machine's
  memory (:func:`memory_limit`), and a loop writing 2 to
  /proc/sys/vm/drop_caches every ``--drop-interval`` (frees dentries and
  inodes); the command itself, which compiles BPF programs, stays outside
  the cgroup it squeezes, and a worker the OOM killer takes is counted;
* ``--churn``: unlinks, renames away and re-creates (through every creating
  system call, by path and by directory fd) and renames onto names inside
  the source tree, at most ``--churn-rate`` a second: real, explainable
  ENOENT for cp (and NS_OPs that explain them);
* ``--widen DELAY`` (kernels with kprobes only): the workload runs in a
  cgroup of its own and tracers/widen.py holds its RCU lookups for DELAY
  between finding a dentry and re-checking its d_seq, so that the pruning
  lands in that window far more often; nothing outside the cgroup is held.
  Only a sampled share of those lookups is held (``--widen-share``, default
  WIDEN_SHARE, a quarter): holding every one stalls `cp -a` (tens of lookups per file
  copied, each held), and a copy that makes no progress cannot fail on a
  file. The result says how many lookups were held and for how long.

The tree is generated (``--files``, ``--depth``, ``--size``) unless
``--tree`` names one, under a work dir that is NOT tmpfs when possible:
tmpfs dentries are pinned and never pruned, so a tmpfs run cannot show the
race; the command says so when it must fall back. Everything it creates
(trees, copies, the cgroup) is removed on exit, including on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from vfstrace.errors import PrivilegeError, VfstraceError
from vfstrace.options import Duration
from vfstrace.workload.child import Stop

CP_ENOENT = re.compile(r"^cp: .*?'(?P<path>.*)'.*: No such file or directory$")
STATTER_COMM = "vfs-statter"
# The compiled loop's operation: passes of stat() and of open() in turn.
FAST_LOOP_OP = "stat+open"
# Share of the workload's lookups --widen holds. On the 6.1-prepatch kernel
# (2 vCPUs under TCG, drop_caches pressure) a quarter gave 16 spurious
# ENOENTs in a 40 s run while cp kept copying; every lookup held stalls cp.
WIDEN_SHARE = 0.25
# --churn: names it changes in the source tree, and the default bound on its operations a second.
CHURN_NAMES = 32
CHURN_RATE = 200.0
CHURN_RATE_MAX = 10000.0

STATTER = r"""
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)  # PR_SET_NAME
paths = open(sys.argv[1]).read().split("\0")
paths = [p for p in paths if p]
end = time.monotonic() + float(sys.argv[3])
n = err = 0
while time.monotonic() < end:
    for p in paths:
        try:
            os.stat(p)
        except OSError:
            err += 1
        n += 1
print(n, err)
"""


def fs_type(path: str) -> str:
    """Filesystem type of the mount holding ``path`` (from /proc/self/mounts)."""
    path = os.path.realpath(path)
    best, typ = "", "?"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, typ = mnt, parts[2]
    except OSError:
        pass
    return typ


def pick_workdir(requested: str | None) -> tuple[str, str | None]:
    """(directory, notice): a work dir whose dentries can be pruned, if any."""
    if requested:
        if not os.path.isdir(requested):
            raise VfstraceError(f"--workdir {requested}: not a directory")
        t = fs_type(requested)
        return requested, (f"--workdir {requested} is {t}: its dentries are never pruned" if t == "tmpfs" else None)
    for cand in ("/var/tmp", os.getcwd(), tempfile.gettempdir()):
        if os.path.isdir(cand) and os.access(cand, os.W_OK) and fs_type(cand) not in ("tmpfs", "ramfs"):
            return cand, None
    d = tempfile.gettempdir()
    return d, f"only tmpfs is writable ({d}): tmpfs dentries are never pruned, so pressure cannot prune them"


def generate_tree(root: Path, files: int, depth: int, size: int, stop: threading.Event | None = None) -> int:
    """A synthetic source tree: ``files`` files spread over ``depth`` levels of directories.

    Stops early once ``stop`` is set (a signal during generation), so a
    large tree does not hold up the cleanup that follows.
    """
    root.mkdir(parents=True, exist_ok=True)
    fanout = max(2, int(round(files ** (1.0 / max(1, depth + 1)))))
    blob = (b"vfstrace-stress\n" * (size // 16 + 1))[:size]
    made = 0
    for i in range(files):
        if stop is not None and stop.is_set():
            break
        parts, x = [], i // fanout
        for _ in range(depth):
            parts.append(f"d{x % fanout:03d}")
            x //= fanout
        d = root.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.dat").write_bytes(blob)
        made += 1
    return made


def _copied(dst: Path) -> int:
    """Files an interrupted copy had written."""
    return sum(len(fn) for _, _, fn in os.walk(dst))


def _mean_size(root: Path, sample: int = 2000) -> int:
    """Mean size of up to ``sample`` files of a given tree (for the memory limit)."""
    sizes = []
    for f in list_files(root, sample):
        try:
            sizes.append(os.lstat(f).st_size)
        except OSError:
            pass
    return int(sum(sizes) / len(sizes)) if sizes else 0


def list_files(root: Path, limit: int = 20000) -> list[str]:
    out = []
    for dp, dn, fn in os.walk(root):
        for f in fn:
            out.append(os.path.join(dp, f))
            if len(out) >= limit:
                return out
    return out


def cgroup2_memory_root() -> str | None:
    """A cgroup v2 directory where a child can get memory.max, or None."""
    roots = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                p = line.split()
                if len(p) >= 3 and p[2] == "cgroup2":
                    roots.append(p[1])
    except OSError:
        return None
    for r in roots:
        try:
            ctrls = Path(r, "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "memory" in ctrls:
            return r
    return None


# What the workers use besides the tree's pages and dentries: a Python
# statter (~12 MiB resident), up to 64 cp (~2 MiB each), the compiled loop.
WORKER_ANON_BYTES = 48 * 1024 * 1024
# Page cache and slab a file of the tree costs: its data pages plus about
# 2 KiB of dentry and inode (ext4/overlayfs/9p inodes run 0.7-1.2 KiB).
FILE_META_BYTES = 2048


def memory_limit(files: int, size: int, copies: int, mem_total: int) -> int:
    """memory.max for the workers' cgroup: their own memory plus half of what the tree costs.

    The tree is in memory once as the source and once per copy in flight;
    a limit under that sum makes the cgroup reclaim its own page cache and
    dentries (prune_dcache_sb through the memcg-aware shrinker) while cp
    and the statter look those dentries up, which is the race's
    precondition. Anonymous memory is never reclaimed (no swap in a
    guest), so the limit keeps WORKER_ANON_BYTES above that: the workers
    squeeze their cache, not themselves. Capped at a quarter of the
    machine's memory, so a large tree cannot take a small guest's.
    """
    page = 4096
    per_file = -(-max(size, 1) // page) * page + FILE_META_BYTES
    footprint = per_file * files * (copies + 1)
    limit = WORKER_ANON_BYTES + footprint // 2
    return int(max(WORKER_ANON_BYTES, min(limit, mem_total // 4)))


def mem_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 2 << 30


class Pressure:
    """Memory pressure on the workers; undone by :meth:`stop`.

    Two kinds, each pruning dentries the workload is looking up:

    * ``cgroup``: a cgroup v2 child with memory.max (:func:`memory_limit`)
      that the workers, and only they, are started in (:meth:`wrap`). The
      controller stays outside: it compiles BPF programs (clang in process,
      hundreds of MiB) and must outlive its workers, so an OOM kill in the
      cgroup takes a worker, which is counted (memory.events ``oom_kill``)
      and restarted by its loop, never the run.
    * ``drop_caches``: a loop writing 2 to /proc/sys/vm/drop_caches every
      ``interval`` seconds: every unused dentry of the machine is pruned
      at once, the very shrink the 2011 report's memory pressure did.

    ``auto`` (the default) takes both where the memory controller is on
    cgroup v2, else drop_caches alone; it needs root, and without it runs
    with none and says so.
    """

    def __init__(self, mode: str, stop: threading.Event, interval: float = 0.1, limit_bytes: int | None = None):
        self.requested = mode
        self.mode = "none"
        self.stop_ev = stop
        self.interval = interval
        self.drop_caches = 0
        self.memory_max = None
        self.limit_bytes = limit_bytes
        self.cgroup: Path | None = None
        self.oom_kills = 0
        self._drop = False
        self._thread = None
        self.notice = None

    def start(self, loop: bool = True) -> None:
        """Set the pressure up; ``loop=False`` leaves the drop_caches loop to :meth:`begin`.

        A drop_caches pass during a BCC compile that unpacks headers breaks
        the unpacking on an overlayfs (tar sees the directories it just made
        change identity once their inodes are evicted), so --widen compiles
        before the loop begins.
        """
        mode = self.requested
        if mode == "none":
            return
        if os.geteuid() != 0:
            if mode == "auto":
                self.notice = "memory pressure needs root: running without it"
                return
            raise PrivilegeError(f"--pressure {mode} needs root")
        parts = []
        if mode in ("auto", "cgroup"):
            root = cgroup2_memory_root()
            if root:
                self._make_cgroup(Path(root))
                parts.append("cgroup")
            elif mode == "cgroup":
                raise VfstraceError("--pressure cgroup: no cgroup v2 hierarchy with the memory controller here")
        if mode in ("auto", "drop_caches"):
            self._drop = True
            parts.append("drop_caches")
        self.mode = "+".join(parts)
        if loop:
            self.begin()

    def begin(self) -> None:
        """Start the drop_caches loop (once; nothing when that kind is off)."""
        if self._drop and self._thread is None:
            self._thread = threading.Thread(target=self._drop_loop, name="drop-caches", daemon=True)
            self._thread.start()

    def _make_cgroup(self, root: Path) -> None:
        """The workers' memory cgroup; this process does not join it."""
        try:
            sub = root / "cgroup.subtree_control"
            if "memory" not in sub.read_text().split():
                sub.write_text("+memory")
            self.cgroup = root / f"vfstrace-stress-{os.getpid()}"
            self.cgroup.mkdir()
            limit = self.limit_bytes or WORKER_ANON_BYTES
            (self.cgroup / "memory.max").write_text(str(limit))
            self.memory_max = limit
        except OSError as e:
            self.stop()
            raise VfstraceError(f"cannot set up a memory cgroup under {root}: {e.strerror}") from None

    def _drop_loop(self) -> None:
        while not self.stop_ev.wait(self.interval):
            try:
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("2\n")  # 2: reclaim dentries and inodes (slab)
                self.drop_caches += 1
            except OSError:
                return

    def read_oom_kills(self) -> int:
        """Workers the OOM killer took inside the cgroup so far (memory.events, kernel-counted)."""
        if self.cgroup is None:
            return self.oom_kills
        try:
            for line in (self.cgroup / "memory.events").read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    self.oom_kills = int(v)
        except (OSError, ValueError):
            pass
        return self.oom_kills

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.cgroup is not None:
            self.read_oom_kills()
            for _ in range(50):
                try:
                    self.cgroup.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # children still leaving
            self.cgroup = None

    def describe(self) -> str:
        out = []
        if self.memory_max:
            out.append(f"cgroup v2 memory.max={self.memory_max} bytes on the workers"
                       + (f" ({self.oom_kills} OOM-killed)" if self.oom_kills else ""))
        if self._drop:
            out.append(f"drop_caches=2 written {self.drop_caches} times (every {self.interval}s)")
        return ", ".join(out) or ("none" + (f" ({self.notice})" if self.notice else ""))


def join_and_exec(procs_file: str | os.PathLike, argv: list[str]) -> list[str]:
    """``argv`` run from a shell that first moves itself into the cgroup whose cgroup.procs is ``procs_file``.

    The worker is in the cgroup before it runs a single instruction of its
    own, and the controller never is. The path and the command reach sh as
    positional parameters, never as code.
    """
    return ["sh", "-c", 'echo $$ > "$1" || exit 126; shift; exec "$@"', "sh", str(procs_file), *argv]


class Stress:
    def __init__(self, duration=20.0, tree=None, files=2000, depth=3, size=1024, copies=4, stagger=0.05,
                 churn=False, pressure="auto", workdir=None, out=None, widen_ns=None, widen_share=WIDEN_SHARE,
                 drop_interval=0.1, churn_rate=CHURN_RATE):
        if not 1 <= churn_rate <= CHURN_RATE_MAX:
            raise VfstraceError(f"--churn-rate {churn_rate:g}: namespace operations a second, 1 to {CHURN_RATE_MAX:g}")
        if copies < 1 or files < 1 or depth < 0 or size < 0 or duration <= 0:
            raise VfstraceError("stress: --copies, --files and -d must be positive; --depth and --size not negative")
        self.duration = float(duration)
        self.tree = tree
        self.files, self.depth, self.size = files, depth, size
        self.copies, self.stagger = copies, stagger
        self.churn = churn
        self.churn_rate = float(churn_rate)
        self.stop_ev = threading.Event()
        self.pressure = Pressure(pressure, self.stop_ev, interval=drop_interval)
        self.workdir_req = workdir
        self.out = out or (lambda s: click.echo(s, err=True))
        self.lock = threading.Lock()
        self.rounds = 0
        self.files_copied = 0
        self.cp_failed_rounds = 0
        self.cp_enoent: list[str] = []
        self.cp_other_errors = 0
        self.cp_killed = 0
        self.churn_ops = 0
        self.stat_calls = 0
        self.stat_errors = 0
        self.fast_stats = 0
        self.notices: list[str] = []
        self.stop_reason: str | None = None
        self.session: Path | None = None
        self._procs: set[subprocess.Popen] = set()
        self.widen_ns = widen_ns
        self.widen_share = widen_share
        self.widener = None
        self.widen_cgroup = None
        self.widen_stats: dict | None = None
        if widen_ns is not None:
            self._check_widen()

    # -- widening ------------------------------------------------------------
    def _check_widen(self) -> None:
        """Refuse --widen before anything starts where it cannot work."""
        from vfstrace.kernel.doctor import choose_tier

        if os.geteuid() != 0:
            raise PrivilegeError("--widen needs root (it attaches a probe inside the path walk)")
        choice = choose_tier("auto")
        if choice.tier not in ("kprobe", "fentry"):
            from vfstrace.errors import TierUnavailable

            raise TierUnavailable(
                f"--widen needs kprobes; {choice.kernel_release} offers only the {choice.tier} tier ({choice.reason})"
            )
        from tracers.widen import Widener

        self.widener = Widener(choice, self.widen_ns, share=self.widen_share)

    def _start_widen(self) -> None:
        """A fresh cgroup for the workers started from now on, nested in the
        memory cgroup when that is part of the pressure, whose lookups are
        held; this process stays outside it."""
        from tracers.widen import WorkloadCgroup

        self.out(f"vfstrace stress: compiling the widening program ({self.widener.how})")
        if self.widener.mode_note:
            self.notices.append(self.widener.mode_note)
        self.widen_cgroup = WorkloadCgroup("vfstrace-stress-widen", parent=self.pressure.cgroup)
        if not self.widen_cgroup.id:
            raise VfstraceError("--widen needs cgroup ids usable by BPF (kernel 5.5 or later)")
        self.widener.cgroup_id = self.widen_cgroup.id  # reaches the program as a -D number at compile
        self.widener.compile()
        self.widener.attach(arm=True)

    def _stop_widen(self) -> None:
        if self.widener is not None and self.widener.bpf is not None:
            self.widen_stats = self.widener.stats().to_dict()
            self.widen_stats["how"] = self.widener.how
        if self.widener is not None:
            self.widener.close()
        if self.widen_cgroup is not None:
            self.widen_cgroup.close()
            self.widen_cgroup = None

    # -- workers -----------------------------------------------------------
    def _worker_cgroup(self) -> Path | None:
        """Where workers are started: the widened cgroup (nested in the memory
        one) when widening, else the memory cgroup, else none."""
        if self.widen_cgroup is not None and self.widen_cgroup.path is not None:
            return self.widen_cgroup.path
        return self.pressure.cgroup

    def _popen(self, argv, **kw):
        cg = self._worker_cgroup()
        if cg is not None:
            argv = join_and_exec(cg / "cgroup.procs", list(argv))
        p = subprocess.Popen(argv, **kw)
        with self.lock:
            self._procs.add(p)
        return p

    def _reap(self, p):
        with self.lock:
            self._procs.discard(p)

    def _copy_loop(self, idx: int, src: Path, nfiles: int) -> None:
        time.sleep(self.stagger * idx)
        k = 0
        while not self.stop_ev.is_set():
            dst = self.session / f"copy{idx}" / f"r{k}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            p = self._popen(["cp", "-a", str(src), str(dst)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
            _, err = p.communicate()
            self._reap(p)
            enoent = []
            other = 0
            for line in err.splitlines():
                m = CP_ENOENT.match(line.strip())
                if m:
                    enoent.append(m.group("path"))
                elif line.strip():
                    other += 1
            if self.stop_ev.is_set() and p.returncode < 0:
                # Killed at the end: not a round, nor a failure of the copy;
                # but what it said before (a file that vanished) still counts.
                with self.lock:
                    self.cp_enoent += enoent
                    self.files_copied += _copied(dst)
                break
            if p.returncode == -signal.SIGKILL:
                # The OOM killer of the workers' memory cgroup (memory.events
                # counts it): a lost round, not a failure of the run.
                with self.lock:
                    self.cp_killed += 1
                shutil.rmtree(dst, ignore_errors=True)
                k += 1
                continue
            with self.lock:
                self.rounds += 1
                self.files_copied += max(0, nfiles - len(enoent))
                self.cp_enoent += enoent
                self.cp_other_errors += other
                self.cp_failed_rounds += p.returncode != 0
            shutil.rmtree(dst, ignore_errors=True)
            k += 1

    def _churn_loop(self, churn_dir: Path) -> None:
        """Real namespace changes in the source tree while cp copies it (``--churn``), at most ``churn_rate`` a second.

        Each step, on the names of churn_dir (a directory of the tree cp
        copies): a name is unlinked (or renamed away), so a copy that listed it
        fails with a real ENOENT that the unlink or rename explains, then made
        again by the next creating call of vfstrace/workload/creators.py in turn
        (open O_CREAT, creat, mkdir, link, symlink, rename, mknod/mkfifo; by
        absolute path and relative to a directory fd); and another name is
        replaced by a rename onto it. Removals go by absolute path, so a
        trace's NS_OP names the very path cp failed on. Everything is under the
        session directory, removed at exit.
        """
        from vfstrace.workload import creators

        churn_dir.mkdir(parents=True, exist_ok=True)
        d = str(churn_dir)
        names = [f"c{i:03d}.dat" for i in range(CHURN_NAMES)]
        for n in names:
            (churn_dir / n).write_bytes(b"churn\n")
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        calls = creators.CALLS
        period = 1.0 / self.churn_rate
        i = 0
        try:
            while not self.stop_ev.is_set():
                t0 = time.monotonic()
                ops = 0
                victim = os.path.join(d, names[(i * 7 + 3) % len(names)])
                call, by_fd = calls[i % len(calls)]
                try:
                    if i % 4 == 3 and os.path.isfile(victim):
                        os.rename(victim, victim + ".away")  # a rename away: the name is gone
                        creators.remove(victim + ".away")
                        ops += 2
                    else:
                        creators.remove(victim)  # unlink (rmdir: a name mkdir made)
                        ops += 1
                    self.stop_ev.wait(0.0005)  # a window where the name is really gone
                    creators.make(call, by_fd, d, dfd, os.path.basename(victim))
                    creators.remove(os.path.join(d, f".src-{os.path.basename(victim)}"))
                    ops += 1
                    target = names[i % len(names)]
                    if os.path.isfile(os.path.join(d, target)):  # a rename onto an existing name
                        creators.rename_over(d, dfd, target, by_fd=bool(i % 2))
                        ops += 1
                except OSError:
                    pass
                with self.lock:
                    self.churn_ops += ops
                i += 1
                self.stop_ev.wait(max(0.0, ops * period - (time.monotonic() - t0)))
        finally:
            os.close(dfd)

    def _statter(self, files: list[str]):
        lst = self.session / "statter.list"
        lst.write_text("\0".join(files))
        return self._popen(
            [sys.executable, "-c", STATTER, str(lst), STATTER_COMM, str(self.duration)],
            stdout=subprocess.PIPE, text=True,
        )

    def _fast_statter(self, src: Path):
        """The compiled per-name lookup loop (vfstrace/workload/statloop.c) on a few files.

        The Python statter walks full paths at ~100 calls/s under emulation;
        this one looks a handful of names in one directory up tens of
        thousands of times a second, so the RCU lookups of files whose
        dentries the pressure prunes are frequent enough for the fixed
        kernel's d_seq re-check (-ECHILD, then ref-walk) to show. It takes
        turns between fstatat() and open() (FAST_LOOP_OP): a stat()'s last
        component is walk_component()'s, an open()'s is open_last_lookups()'s,
        which calls step_into() itself; the two places a walk can trust a
        dentry being pruned. None when no compiler is there to build it
        (the Python statter still runs).
        """
        from vfstrace.workload import statloop

        leaf = next((Path(dp) for dp, _, fn in os.walk(src) if fn), None)
        if leaf is None:
            return None
        argv, notice = statloop.command(str(leaf), 8, 0, FAST_LOOP_OP)
        if notice:
            self.notices.append("compiled stat loop unavailable: " + notice)
            return None
        return self._popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    # -- run ---------------------------------------------------------------
    def run(self) -> dict:
        # SIGINT/SIGTERM are caught before the session directory exists: a
        # signal while the tree is still being generated (an orphaned run is
        # sent SIGTERM at any moment) ends the run through the same cleanup.
        with _Signals(self.stop_ev) as sigs:
            return self._run(sigs)

    def _run(self, sigs: "_Signals") -> dict:
        workdir, notice = pick_workdir(self.workdir_req)
        if notice:
            self.notices.append(notice)
            self.out(f"vfstrace stress: notice: {notice}")
        self.session = Path(tempfile.mkdtemp(prefix="vfstrace-stress-", dir=workdir))
        started = time.monotonic()
        threads = []
        statter = fast = None
        try:
            if self.tree:
                src = Path(self.tree)
                if not src.is_dir():
                    raise VfstraceError(f"--tree {self.tree}: not a directory")
                nfiles = len(list_files(src, 10**7))
                size = _mean_size(src)
            else:
                src = self.session / "src"
                nfiles = generate_tree(src, self.files, self.depth, self.size, self.stop_ev)
                size = self.size
            self.pressure.limit_bytes = memory_limit(nfiles, size, self.copies, mem_total_bytes())
            if self.churn:
                if self.tree:
                    raise VfstraceError("--churn modifies the source tree: use it with the generated tree (no --tree)")
                threads.append(threading.Thread(target=self._churn_loop, args=(src / "churn",), daemon=True))
            self.pressure.start(loop=self.widener is None)
            if self.pressure.notice:
                self.out(f"vfstrace stress: notice: {self.pressure.notice}")
            if self.widener is not None:
                self._start_widen()
                self.pressure.begin()
            statter = self._statter(list_files(src, 5000))
            fast = self._fast_statter(src)
            threads += [threading.Thread(target=self._copy_loop, args=(i, src, nfiles), daemon=True) for i in range(self.copies)]
            for t in threads:
                t.start()
            self.stop_ev.wait(self.duration)
            self.stop_reason = sigs.reason or "duration"
        finally:
            self.stop_ev.set()
            with self.lock:
                procs = list(self._procs)
            for p in procs:
                if p is not statter and p.poll() is None:
                    p.terminate()
            for t in threads:
                t.join(timeout=10)
            # A copy loop that passed its stop check just before stop was set
            # may have started one more cp after the sweep above: end it before
            # the trees it writes into are removed.
            with self.lock:
                late = [p for p in self._procs if p is not statter and p is not fast and p.poll() is None]
            for p in late:
                p.kill()
                p.wait()
            if fast is not None:
                try:
                    out, _ = fast.communicate(timeout=10)
                    line = [ln for ln in out.splitlines() if ln.startswith("{")]
                    self.fast_stats = json.loads(line[-1]).get("stats", 0) if line else 0
                except (subprocess.TimeoutExpired, ValueError):
                    fast.kill()
                    fast.wait()
            if statter is not None:
                try:
                    out, _ = statter.communicate(timeout=10)
                    n, e = (int(x) for x in out.split()[:2])
                    self.stat_calls, self.stat_errors = n, e
                except (subprocess.TimeoutExpired, ValueError):
                    statter.kill()
                    statter.wait()
            self._stop_widen()
            self.pressure.stop()
            shutil.rmtree(self.session, ignore_errors=True)
        self.elapsed = time.monotonic() - started
        return self.result(workdir)

    def result(self, workdir) -> dict:
        return {
            "duration_s": round(self.elapsed, 2),
            "workdir": workdir,
            "workdir_fs": fs_type(workdir),
            "copies": self.copies,
            "copy_rounds": self.rounds,
            "files_copied": self.files_copied,
            "cp_failed_rounds": self.cp_failed_rounds,
            "cp_enoent": len(self.cp_enoent),
            "cp_enoent_paths": sorted(set(self.cp_enoent))[:50],
            "cp_other_errors": self.cp_other_errors,
            "pressure": self.pressure.mode,
            "pressure_detail": self.pressure.describe(),
            "drop_caches_writes": self.pressure.drop_caches,
            "memory_max": self.pressure.memory_max,
            "oom_kills": self.pressure.oom_kills,
            "cp_killed": self.cp_killed,
            "churn_ops": self.churn_ops,
            "stat_calls": self.stat_calls,
            "stat_errors": self.stat_errors,
            "fast_stat_calls": self.fast_stats,
            "notices": self.notices + ([self.pressure.notice] if self.pressure.notice else []),
            "stop_reason": self.stop_reason,
            "widen": self.widen_stats,
        }


class _Signals(Stop):
    """SIGINT/SIGTERM end the run early; cleanup then runs as for the duration."""

    def __init__(self, ev: threading.Event):
        super().__init__()
        self.ev = ev

    def _handle(self, signum, frame):
        super()._handle(signum, frame)
        self.ev.set()


def render(r: dict) -> str:
    from tabulate import tabulate

    rows = [
        ("duration", f"{r['duration_s']} s ({r['stop_reason']})"),
        ("work dir", f"{r['workdir']} ({r['workdir_fs']})"),
        ("parallel cp -a", r["copies"]),
        ("copy rounds", r["copy_rounds"]),
        ("files copied", r["files_copied"]),
        ("cp errors: No such file or directory", r["cp_enoent"]),
        ("cp other errors", r["cp_other_errors"]),
        ("pressure", r["pressure_detail"]),
        ("churn operations", r["churn_ops"]),
        ("stat() calls by " + STATTER_COMM, f"{r['stat_calls']} ({r['stat_errors']} failed)"),
        ("stat()/open() calls by the compiled loop", r.get("fast_stat_calls", 0)),
    ]
    if r.get("memory_max"):
        rows.insert(7, ("cp killed (OOM in the workers' cgroup)",
                        f"{r.get('cp_killed', 0)} ({r.get('oom_kills', 0)} OOM kills counted by the kernel)"))
    w = r.get("widen")
    if w:
        share = w.get("share", 1.0)
        rows.append(("widening", f"{w['how']}, {w['delay_ns'] / 1000:g} us per held lookup"
                     + (f", {share:.0%} of lookups sampled" if share < 1 else "")))
        rows.append(("lookups held", f"{w['delayed']:,} of {w['target_lookups']:,} by the workload, "
                     f"mean {w['mean_delay_ns'] / 1000:.1f} us, {w['delay_ns_total'] / 1e9:.2f} s in all"
                     + (f", {w['capped']:,} cut short by the iteration bound" if w["capped"] else "")))
        rows.append(("lookups not held", f"{w['no_dentry']:,} (nothing found: no window to widen)"
                     + (f", {w.get('not_sampled', 0):,} (not sampled)" if share < 1 else "")))
    out = tabulate(rows, tablefmt="plain")
    if r["cp_enoent_paths"]:
        out += "\n\ncp: No such file or directory:\n" + "\n".join(f"  {p}" for p in r["cp_enoent_paths"])
    return out


@click.command("stress")
@click.option("-d", "--duration", type=Duration(0.5, min_open=False), default=20.0, show_default=True, help="Seconds to run.")
@click.option("--tree", type=click.Path(file_okay=False), help="Copy this tree (read only) instead of a generated one.")
@click.option("--files", type=click.IntRange(min=1), default=2000, show_default=True, help="Files in the generated tree.")
@click.option("--depth", type=click.IntRange(min=0, max=16), default=3, show_default=True, help="Directory depth of the generated tree.")
@click.option("--size", type=click.IntRange(min=0), default=1024, show_default=True, help="Bytes per generated file.")
@click.option("-j", "--copies", type=click.IntRange(min=1, max=64), default=4, show_default=True, help="Parallel cp -a loops.")
@click.option("--stagger", type=Duration(0, min_open=False), default=0.05, show_default=True, help="Seconds between starting copies.")
@click.option("--churn", is_flag=True,
              help="Unlink, rename and re-create names in the source tree while cp runs (real, explainable ENOENT; "
                   "every creating syscall, by path and by dirfd).")
@click.option("--churn-rate", type=float, default=CHURN_RATE, show_default=True, metavar="OPS",
              help="With --churn: at most this many namespace operations a second.")
@click.option("--pressure", type=click.Choice(["auto", "cgroup", "drop_caches", "none"]), default="auto", show_default=True)
@click.option("--drop-interval", type=Duration(0.01, min_open=False), default=0.1, show_default=True,
              help="With drop_caches pressure (auto, drop_caches): seconds between passes (more passes, more prunes of looked-up dentries).")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where to put trees and copies (not tmpfs, ideally).")
@click.option("--widen", "widen", metavar="DELAY",
              help="Hold the workload's RCU lookups DELAY (e.g. 200us, at most 1ms) at the race window; kprobes only.")
@click.option("--widen-share", "widen_share", metavar="SHARE", default=str(WIDEN_SHARE), show_default=True,
              help="With --widen: the share of lookups held (0-1 or a percentage); 1 holds every one.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def stress_cmd(duration, tree, files, depth, size, copies, stagger, churn, churn_rate, pressure, drop_interval, workdir,
               widen, widen_share, as_json):
    """Run the 2011 reproducer: staggered parallel `cp -a` under memory pressure.

    \b
    Counts cp failures with "No such file or directory" (the race's
    symptom) and lists their paths; cleans up trees and cgroups on exit.
    With --widen (kernels with kprobes) the workload's own RCU lookups are
    held at the race window and the result says how many, for how long.
    With --churn a task unlinks, renames and re-creates names in the tree
    as cp copies it: ENOENTs a trace explains (never `transient`).

    \b
    Examples:
      vfstrace stress -d 30
      vfstrace stress -d 30 --churn --churn-rate 100
      vfstrace watch --tier tracepoint -- vfstrace stress -d 30 --churn
    """
    from vfstrace.workload.child import orphan_signal

    # Orphaned (the recorder or shell that started us died): SIGTERM, which
    # ends the run and cleans up its trees and cgroups as Ctrl-C does.
    orphan_signal(signal.SIGTERM)
    widen_ns, share = None, WIDEN_SHARE
    if widen is not None:
        from tracers.widen import parse_delay, parse_share

        widen_ns, share = parse_delay(widen), parse_share(widen_share)
    r = Stress(duration, tree, files, depth, size, copies, stagger, churn, pressure, workdir, widen_ns=widen_ns,
               widen_share=share, drop_interval=drop_interval, churn_rate=churn_rate).run()
    click.echo(json.dumps(r) if as_json else render(r))
    return 0
