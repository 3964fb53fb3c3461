"""Tracepoint tier: live tracing on kernels that allow BPF on tracepoints only.

Kept as one module because the syscall, namespace and dentry-cache probes
share one program, one set of defines and one drain: the tier's whole kernel edge.

This is the tier that runs on kernels built without kprobes or fentry
(CONFIG_KPROBES and CONFIG_FPROBE unset, as on many production kernels). It sees
syscall results, namespace operations, dentry-cache frees and
shrinker runs (bpf/tracepoint.c says exactly what crosses to user space), so
its verdicts are of lower resolution than the kprobe tier: it cannot see the
walk's d_seq, only that an ENOENT happened while dentries were being freed.

Transient ENOENT ("existed just before and just after"): the kernel side
streams every ENOENT but, by default, not the successes (streaming every
successful stat/open would be the whole syscall firehose). Instead, right
after an ENOENT row arrives, the tracer re-checks the path from user space
(``os.lstat``) and sets ``Flag.EXISTS_AFTER`` when it is there now. Only
absolute paths are re-checked: a relative path was resolved against a cwd
or directory fd the trace does not carry. "Existed just before" comes from
the trace (an earlier successful syscall or a creating NS_OP) when
successes are streamed (``options.extra["stream_success"]``), and otherwise
from the absence of any namespace operation on the path. Re-checks are
capped per poll so a storm of ENOENTs cannot stall the drain.

Syscall arguments: by default the sys_exit programs read the path pointers
back from the task's saved user registers (``bpf_task_pt_regs``, 5.15), so
each path syscall runs one BPF program and touches no map. Where that is
not possible (no kernel BTF, not x86-64, or the verifier refuses it) the
tracer says so once and falls back to sys_enter programs that keep the
pointers per task in a map: same records, about twice the cost per call.
``options.extra["syscall_args"]`` ("auto", "regs", "map") forces a mode;
:attr:`TracepointTracer.mode` is the one loaded.

Failure storms: identical repeated failures (same task, syscall, errno and
path within ``coalesce_ns``, default 1 ms) are folded in the kernel into
one record whose ``count`` says how many it stands for (flag COALESCED):
every failed lookup is accounted for without a record each. The kernel
reports a folded count when a different failure comes on that CPU, or
when this process makes a traced syscall there: :meth:`TracepointTracer.flush_repeats`
does, on every CPU, on each drain (``poll(0)``) and every FLUSH_EVERY_S.
``coalesce_ns`` 0 turns it off.

Dentry-cache frees: on raw tracepoints where the kernel's BTF describes
the kmem tracepoints' cache argument (:func:`raw_kmem_plan`), so the test
for the dentry cache is a pointer compare and no trace record is built for
every other slab operation of the machine; classic tracepoints otherwise
(``kmem_probe``: auto, raw, tracepoint).

Dentry-cache allocations (D_ALLOC) only on request
(``options.extra["dentry_allocs"]``, ``--dentry-allocs``): no verdict this
tier gives reads them (its syscall-level verdicts take D_FREE and shrinker
runs as the activity around a failure; an address's incarnation matters
only to a walk that recorded its dentry, which is the kprobe tier's), and
the probe would run on every slab allocation of the machine, among them
the getname() of every path syscall.

Kernel headers: tracepoint programs read tracepoint argument records, whose
layout BCC takes from the format files, and (in "regs" mode) x86-64
``struct pt_regs``, whose layout is the user ABI, so mismatched headers are
safe here; BCC still needs *some* headers to compile. tracers/headers.py
finds them (the one place every compiled program does) and the tracer
prints a notice when they are not the running kernel's.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bpf import INCLUDE, program
from tracers import Tracer, import_bcc
from tracers.stream import (
    PAGE_SIZE,
    PerfStream,
    RingStream,
    StreamOwner,
    batches_frame,
    counter_totals,
    poll_streams,
)
from vfstrace.errors import MissingDependency, PrivilegeError, TierUnavailable, VfstraceError
from vfstrace.events import (
    AT_FDCWD,
    BPF_EVENT_DTYPE,
    BPF_PATH_EVENT_DTYPE,
    COLUMNS,
    EBADF,
    ENOENT,
    ESRCH,
    NUMPY_DTYPES,
    STRING_COLUMNS,
    Flag,
    Kind,
    counter_names,
)

log = logging.getLogger("vfstrace.tracers.tracepoint")

SOURCE = "tracepoint.c"
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

# Path syscalls and namespace operations, by tracepoint name (sys_enter_<name>).
PATH_SYSCALLS = (
    "openat", "openat2", "newfstatat", "statx", "faccessat", "faccessat2", "execve",
    "readlinkat", "chdir", "open", "newstat", "newlstat", "access", "readlink",
)
NS_SYSCALLS = ("unlinkat", "unlink", "rmdir", "mkdirat", "mkdir", "renameat2", "renameat", "rename", "linkat", "link",
               # the other operations that can create a name (bpf/tracepoint.c): every one seen on success
               "creat", "mknodat", "mknod", "symlinkat", "symlink", "mount", "move_mount")
# The probes that are there only for creators (the O_CREAT test of the open probes aside): what
# options.extra["creators"] False leaves off, so bench/compare.py can price them.
CREATOR_ONLY = ("creat", "mknodat", "mknod", "symlinkat", "symlink", "mount", "move_mount")
# io_uring submission tracepoints (bpf/tracepoint.c on_uring): io_uring_submit_req since 5.19, io_uring_submit_sqe before.
URING_EVENTS = ("io_uring_submit_req", "io_uring_submit_sqe")
# The per-CPU `counts` slots of bpf/tracepoint.c (generated from vfstrace.events).
COUNTER_NAMES = counter_names(SOURCE)
# In-kernel coalescing window for identical repeated failures (bpf/tracepoint.c,
# VFS_COALESCE_NS); options.extra["coalesce_ns"] sets it, 0 turns it off.
COALESCE_NS = 1_000_000
# How often, at most, poll() asks each CPU to report repeats it is still folding.
FLUSH_EVERY_S = 0.1
RECHECK_CAP = 4096  # user-space re-checks per poll
KERNEL_BTF = Path("/sys/kernel/btf/vmlinux")
# How the sys_exit programs get the syscall's path arguments (bpf/tracepoint.c):
#  - "regs": read back at sys_exit from the task's saved user registers
#    (exit programs only; needs kernel BTF and bpf_task_pt_regs, 5.15);
#  - "map": stored per task by a sys_enter program in a map (any kernel).
# "auto" tries regs, then map. options.extra["syscall_args"] chooses.
SYSCALL_ARGS_MODES = ("auto", "regs", "map")


def tracefs() -> Path:
    """The mounted tracefs; mounts it at /sys/kernel/tracing when absent (root only)."""
    for d in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(d, "events")):
            return Path(d)
    if os.geteuid() == 0 and os.path.isdir(TRACEFS_CANDIDATES[0]):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS_CANDIDATES[0]], capture_output=True)
        if os.path.isdir(os.path.join(TRACEFS_CANDIDATES[0], "events")):
            return Path(TRACEFS_CANDIDATES[0])
    raise TierUnavailable("tracefs is not mounted and could not be mounted (mount -t tracefs nodev /sys/kernel/tracing)")


def tracepoint_format(category: str, name: str, root: Path | None = None) -> str | None:
    """The tracepoint's format file text, or None if this kernel lacks it."""
    root = root or tracefs()
    try:
        return (root / "events" / category / name / "format").read_text()
    except OSError:
        return None


def available_tracepoints(root: Path | None = None) -> dict[str, bool]:
    """Which of the tier's tracepoints exist here, keyed by the VFS_HAVE_ name."""
    root = root or tracefs()
    have = {}
    for sc in PATH_SYSCALLS + NS_SYSCALLS:
        have[sc] = (root / "events/syscalls" / f"sys_enter_{sc}").is_dir() and (
            root / "events/syscalls" / f"sys_exit_{sc}"
        ).is_dir()
    for ev in ("kmem_cache_free", "kmem_cache_alloc"):
        fmt = tracepoint_format("kmem", ev, root) or ""
        # Only with a __data_loc `name` (see bpf/tracepoint.c) and a `ptr`.
        have[ev] = "__data_loc char[] name;" in fmt and " ptr;" in fmt
    for ev in ("mm_shrink_slab_start", "mm_shrink_slab_end"):
        have[ev] = tracepoint_format("vmscan", ev, root) is not None
    for ev in URING_EVENTS:
        fmt = tracepoint_format("io_uring", ev, root) or ""
        have[ev] = " opcode;" in fmt and not any(have.get(e) for e in URING_EVENTS)
    return have


# The kernel reads behind a record's base directory (bpf/tracepoint.c base_ino):
# -D define -> (struct, member path), each offset read from the kernel's BTF.
BASE_OFFSETS = {
    "VFS_OFF_TASK_FS": ("task_struct", "fs"),
    "VFS_OFF_TASK_FILES": ("task_struct", "files"),
    "VFS_OFF_FS_ROOT_DENTRY": ("fs_struct", "root.dentry"),
    "VFS_OFF_FS_PWD_DENTRY": ("fs_struct", "pwd.dentry"),
    "VFS_OFF_FILES_FDT": ("files_struct", "fdt"),
    "VFS_OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "VFS_OFF_FDT_FD": ("fdtable", "fd"),
    "VFS_OFF_FILE_PATH_DENTRY": ("file", "f_path.dentry"),
    "VFS_OFF_DENTRY_INODE": ("dentry", "d_inode"),
    "VFS_OFF_INODE_INO": ("inode", "i_ino"),
}


def base_plan(btf=None) -> dict[str, str]:
    """-D defines that let bpf/tracepoint.c read a record's base directory (VFS_BASE), or {}.

    The offsets come from the running kernel's BTF, never from the headers
    BCC compiles against (which may not be this kernel's: module docstring).
    Without BTF, records carry no BASE flag and the correlator places their
    creators by name alone (docs/verdicts.md).
    """
    from tracers.btf import Btf, BtfError

    try:
        btf = btf or Btf.from_file()
        d = {k: str(btf.offsetof(st, m)) for k, (st, m) in BASE_OFFSETS.items()}
    except (BtfError, VfstraceError, OSError):
        return {}
    d["VFS_BASE"] = "1"
    return d


KMEM_EVENTS = ("kmem_cache_free", "kmem_cache_alloc")
KMEM_PROBES = ("auto", "raw", "tracepoint")


def raw_kmem_plan(btf=None, events=KMEM_EVENTS) -> dict[str, str]:
    """-D defines for the raw-tracepoint dentry-cache probes (bpf/tracepoint.c), or {}.

    A classic kmem tracepoint builds its whole record, the cache's name
    string copied in, before the BPF program looks at it, on every slab
    free and allocation of the machine (two per path syscall: getname()).
    A raw tracepoint hands the program the TP_PROTO arguments as they are,
    and the dentry cache is then one pointer compare: its `struct
    kmem_cache *` (6.2+: "mm/slab_common: unify NUMA and UMA version of
    tracepoints" passes the cache itself) or, 5.12 to 6.1, its `const char
    *name`, which is as constant per cache ("mm, tracing: record slab name
    for kmem_cache_free()"). Which one this kernel passes, and where, is
    read from the tracepoint's BTF prototype, never assumed. ``events``:
    the kmem events the recording probes.
    """
    from tracers.btf import Btf, BtfError, tracepoint_arg_pointees

    try:
        btf = btf or Btf.from_file()
    except (BtfError, VfstraceError):
        return {}
    d: dict[str, str] = {}
    how = None
    for ev in events:
        args = tracepoint_arg_pointees(btf, ev)
        if not args or len(args) < 3 or args[1] != "void":
            continue  # no BTF prototype, or ptr is not the second argument
        kind = "struct kmem_cache" if "struct kmem_cache" in args else ("char" if "char" in args else None)
        if kind is None or how not in (None, kind):
            continue
        how = kind
        d[f"VFS_RAW_{ev.upper()}_ARG"] = str(args.index(kind))
    if not d:
        return {}
    if how == "struct kmem_cache":
        try:
            d["VFS_OFF_KMEM_CACHE_NAME"] = str(btf.offsetof("kmem_cache", "name"))
        except (BtfError, VfstraceError):
            return {}
        d["VFS_KMEM_ARG_CACHE"] = "1"
    d["VFS_RAW_KMEM"] = "1"
    return d


def regs_unavailable() -> str | None:
    """Why the "regs" mode cannot work on this host, or None if it may (the
    verifier has the last word: load() falls back when it rejects it)."""
    import platform

    if platform.machine() != "x86_64":
        return f"reading syscall arguments from saved registers is written for x86-64 only, not {platform.machine()}"
    if not KERNEL_BTF.is_file():
        return f"no kernel BTF ({KERNEL_BTF}): bpf_task_pt_regs needs it (CONFIG_DEBUG_INFO_BTF)"
    return None


def _ring_bytes(pages: int) -> int:
    return max(1, pages) * PAGE_SIZE


# Filesystems a name can appear on without a syscall of this kernel creating
# it (another machine, a user-space server): a re-check there proves nothing
# about the instant of the failure (RECHECK flag REMOTE_FS).
REMOTE_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "lustre", "gfs2",
                       "ocfs2", "fuse", "fuseblk", "virtiofs", "davfs", "orangefs", "beegfs", "gpfs"})


class Resolved(NamedTuple):
    ret: int  # 0 exists, ENOENT, ESRCH (task gone), EBADF (dirfd closed / base changed)
    resolved: str  # the path in the task's view, absolute ("" when unresolvable)
    chain: str  # inode numbers of the directories on it, root first, ':'-joined ("" when not placeable)
    flags: int  # Flag.REMOTE_FS


def _mount_types(proc: str, cache: dict) -> dict[int, str]:
    """Device number -> filesystem type of every mount in the task's mount namespace."""
    try:
        ns = os.readlink(f"{proc}/ns/mnt")
    except OSError:
        ns = proc
    if ns not in cache:
        m: dict[int, str] = {}
        try:
            with open(f"{proc}/mountinfo") as f:
                for line in f:
                    left, _, right = line.partition(" - ")
                    mm = left.split()[2].split(":")
                    m[os.makedev(int(mm[0]), int(mm[1]))] = right.split()[0]
        except (OSError, IndexError, ValueError):
            pass
        cache[ns] = m
    return cache[ns]


def resolve(tid: int, pid: int, path: str, dirfd: int, base_ino: int | None, stats: dict, mounts: dict) -> Resolved | None:
    """The failed ``path`` of task ``tid`` as it meant it, checked now (see TracepointTracer._recheck);
    None for a path under /proc, which is not re-checked."""
    proc = f"/proc/{tid}"
    if not os.path.isdir(proc):
        proc = f"/proc/{pid}"
        if not os.path.isdir(proc):
            return Resolved(ESRCH, "", "", 0)
    if path.startswith("/"):
        link = f"{proc}/root"
    elif dirfd == AT_FDCWD:
        link = f"{proc}/cwd"
    else:
        link = f"{proc}/fd/{dirfd}"
    try:
        where = os.readlink(link)
        st = os.stat(link)
    except FileNotFoundError:
        return Resolved(EBADF if os.path.isdir(proc) and link.startswith(f"{proc}/fd/") else ESRCH, "", "", 0)
    except OSError:
        return Resolved(ESRCH, "", "", 0)
    if base_ino is not None and st.st_ino != base_ino:
        return Resolved(EBADF, "", "", 0)  # the cwd or the fd names another directory than at the failure
    if not where.startswith("/") or where.endswith(" (deleted)"):
        return Resolved(EBADF, "", "", 0)  # not a directory in the task's tree (a pipe, a removed cwd)
    rel = path.lstrip("/") if path.startswith("/") else path
    full = "/" + "/".join(c for c in (where.strip("/") + "/" + rel).split("/") if c)
    if path.startswith("/"):
        full = "/" + "/".join(c for c in rel.split("/") if c)
    if full == "/proc" or full.startswith("/proc/"):
        # procfs names come and go with tasks, no syscall creates them, and a
        # re-check of one is itself a lookup under /proc/PID/root: two
        # recorders would re-check each other's re-checks without end.
        return None
    check = f"{proc}/root{full}"
    try:
        found = os.stat(check)  # followed, as the failing lookups follow a final symlink
    except OSError:
        found = None
    comps = [c for c in full.split("/") if c]
    # The directories on the path, root first, as the task sees them.
    chain, placeable = [], not any(c in (".", "..") for c in comps)
    for k in range(len(comps)):
        pre = f"{proc}/root/" + "/".join(comps[:k])
        if pre not in stats:
            try:
                stats[pre] = (os.stat(pre), os.path.islink(pre.rstrip("/")) if k else False)
            except OSError:
                stats[pre] = None
        got = stats[pre]
        if got is None:
            break
        if got[1]:
            placeable = False  # a symlink on the way: a creator is placed by name alone
        chain.append(str(got[0].st_ino))
    fl = 0
    if found is not None:
        fs = _mount_types(proc, mounts).get(found.st_dev, "")
        if fs in REMOTE_FS or fs.startswith("fuse."):
            fl |= int(Flag.REMOTE_FS)
    return Resolved(0 if found is not None else ENOENT, full, ":".join(chain) if placeable else "", fl)


class TracepointTracer(StreamOwner, Tracer):
    tier = "tracepoint"

    def __init__(self, options, choice=None):
        super().__init__(options, choice)
        scale = max(1, self.options.ring_pages // 256)
        # Dentry frees arrive in bursts of 10^5..10^6 under drop_caches: 32 MiB
        # (about 200k records) per default for them, 16 MiB for path events.
        self.ev_pages = 8192 * scale
        self.path_pages = 4096 * scale
        self.stream_success = bool(self.options.extra.get("stream_success", False))
        self.stream_dentry = bool(self.options.extra.get("stream_dentry", True))
        self.dentry_allocs = bool(self.options.extra.get("dentry_allocs", False))
        # The kmem events this recording probes (allocations only on request: module docstring).
        self.kmem_events = KMEM_EVENTS if self.dentry_allocs else ("kmem_cache_free",)
        self.recheck = bool(self.options.extra.get("recheck", True))
        # False: no creator probes (CREATOR_ONLY, io_uring, the opens' O_CREAT record): a benchmark's baseline only,
        # since without them a name made after a failure reads as existence at it (docs/verdicts.md).
        self.creators = bool(self.options.extra.get("creators", True))
        self.use_perf = bool(self.options.extra.get("perf_buffer", False)) or (
            choice is not None and getattr(choice, "ringbuf", True) is False
        )
        self._bpf = None
        self._streams = []
        self._attached: list[str] = []
        self._have: dict[str, bool] | None = None
        self.notice: str | None = None
        self.syscall_args = str(self.options.extra.get("syscall_args", "auto"))
        if self.syscall_args not in SYSCALL_ARGS_MODES:
            raise VfstraceError(f"syscall_args must be one of {', '.join(SYSCALL_ARGS_MODES)}, not {self.syscall_args!r}")
        # The mode in use once loaded ("regs" or "map"); program_text() shows
        # the one load() tries first.
        self.mode: str | None = None
        self.mode_note: str | None = None
        self.rechecked = 0
        self._worker = None  # the re-check thread (tracers/recheck.py), with ring streams
        self._seen_ts = 0  # the latest stamp the consumer has read
        try:
            self.coalesce_ns = int(self.options.extra.get("coalesce_ns", COALESCE_NS))
        except (TypeError, ValueError):
            raise VfstraceError(f"coalesce_ns must be a number of nanoseconds, not {self.options.extra.get('coalesce_ns')!r}") from None
        if not 0 <= self.coalesce_ns <= 1_000_000_000:
            raise VfstraceError(f"coalesce_ns must be between 0 (off) and 1 s, not {self.coalesce_ns}")
        self._flushed_at = 0.0
        self.kmem_probe = str(self.options.extra.get("kmem_probe", "auto"))
        if self.kmem_probe not in KMEM_PROBES:
            raise VfstraceError(f"kmem_probe must be one of {', '.join(KMEM_PROBES)}, not {self.kmem_probe!r}")
        self._raw_kmem: dict[str, str] | None = None
        self._base: dict[str, str] | None = None
        self._mounts: dict[str, dict[int, str]] = {}  # per mount namespace: device -> filesystem type

    # -- program -----------------------------------------------------------
    def _defines(self) -> list[str]:
        o = self.options
        d = [f"VFS_SELF_PID={os.getpid()}"]
        d.append(f"VFS_EV_RING_PAGES={self.ev_pages}")
        d.append(f"VFS_PATH_RING_PAGES={self.path_pages}")
        d.append(f"VFS_STREAM_SUCCESS={int(self.stream_success)}")
        d.append(f"VFS_STREAM_DENTRY={int(self.stream_dentry)}")
        d.append(f"VFS_COALESCE_NS={self.coalesce_ns}ULL")
        if o.pid is not None:
            d.append(f"VFS_FILTER_PID={int(o.pid)}")
        if o.comm is not None:
            w0, w1 = o.comm_words()
            d += ["VFS_FILTER_COMM=1", f"VFS_COMM0={int(w0)}ULL", f"VFS_COMM1={int(w1)}ULL"]
        if o.path_prefix is not None:
            d.append("VFS_FILTER_PREFIX=1")
        if self.use_perf:
            d.append("VFS_USE_PERF=1")
        if not self.creators:
            d.append("VFS_NO_CREATORS=1")
        if (self.mode or self._first_mode()) == "regs":
            d.append("VFS_EXIT_ONLY=1")
        have = self._have if self._have is not None else {}
        d += [f"VFS_HAVE_{k}=1" for k, v in sorted(have.items()) if v and (k not in KMEM_EVENTS or k in self.kmem_events)]
        d += [f"{k}={v}" for k, v in sorted(self._raw_kmem_defines().items())]
        if self._base is None:
            self._base = base_plan()
        d += [f"{k}={v}" for k, v in sorted(self._base.items())]
        return d

    def _wanted(self, have: dict[str, bool]) -> dict[str, bool]:
        """``have`` less the creator probes when they are off (``creators``)."""
        if self.creators:
            return have
        return {k: v and k not in CREATOR_ONLY + URING_EVENTS for k, v in have.items()}

    def _raw_kmem_defines(self) -> dict[str, str]:
        """The raw-tracepoint plan (raw_kmem_plan) for ``kmem_events`` unless kmem_probe says tracepoint."""
        if self.kmem_probe == "tracepoint":
            return {}
        if self._raw_kmem is None:
            self._raw_kmem = raw_kmem_plan(events=self.kmem_events)
            if not self._raw_kmem and self.kmem_probe == "raw":
                raise TierUnavailable("kmem_probe=raw: this kernel's BTF does not describe the kmem tracepoints' cache argument")
        return self._raw_kmem

    def _first_mode(self) -> str:
        if self.syscall_args == "auto":
            return "map" if regs_unavailable() else "regs"
        return self.syscall_args

    def program_text(self) -> str:
        if self._have is None:
            try:
                self._have = self._wanted(available_tracepoints())
            except VfstraceError:
                self._have = {}
        lines = ["/* vfstrace tracepoint tier; compiled with: */"]
        lines += [f"#define {d.replace('=', ' ', 1)}" for d in self._defines()]
        return "\n".join(lines) + "\n" + program(SOURCE)

    # -- lifecycle ---------------------------------------------------------
    def _prepare_headers(self) -> None:
        from tracers.headers import prepare

        h = prepare("the tracepoint program", fallback_ok=True, choice=self.choice, why_fallback=(
            "safe here: tracepoint records are laid out from the kernel's format files; the one struct read, "
            "x86-64 pt_regs, has the user ABI layout and the verifier checks it against the kernel's BTF"))
        self.notice = h.notice or self.notice  # the second mode's compile finds the tree the first set

    def load(self) -> None:
        if self._bpf is not None:
            return
        if os.geteuid() != 0:
            raise PrivilegeError("the tracepoint tier needs root (CAP_BPF + CAP_PERFMON): run as root")
        bcc = import_bcc()
        root = tracefs()
        self._have = self._wanted(available_tracepoints(root))
        if not any(self._have.get(s) for s in PATH_SYSCALLS):
            raise TierUnavailable("no syscalls:sys_enter_* tracepoints on this kernel (CONFIG_FTRACE_SYSCALLS off)")
        first = self._first_mode()
        why = regs_unavailable() if self.syscall_args == "auto" else None
        if first == "regs":
            why = self._compile(bcc, "regs")
            if why and self.syscall_args == "regs":
                raise TierUnavailable(f"tracepoint program (syscall_args=regs) failed to load: {why}")
        if self._bpf is None:
            if self.syscall_args == "auto":
                self.mode_note = f"notice: syscall arguments kept per task from sys_enter (slower): {why}"
                log.info(self.mode_note)
            err = self._compile(bcc, "map")
            if err:
                raise TierUnavailable(f"tracepoint program failed to load: {err}")
        phases = ("exit",) if self.mode == "regs" else ("enter", "exit")
        self._attached = [
            f"tracepoint:syscalls:sys_{p}_{sc}" for sc in PATH_SYSCALLS + NS_SYSCALLS if self._have.get(sc) for p in phases
        ]
        raw = self._raw_kmem_defines()
        self._attached += [f"raw_tracepoint:{e}" if f"VFS_RAW_{e.upper()}_ARG" in raw else f"tracepoint:kmem:{e}"
                           for e in self.kmem_events if self._have.get(e) or f"VFS_RAW_{e.upper()}_ARG" in raw]
        self._attached += [f"tracepoint:vmscan:{e}" for e in ("mm_shrink_slab_start", "mm_shrink_slab_end") if self._have.get(e)]
        self._attached += [f"tracepoint:io_uring:{e}" for e in URING_EVENTS if self._have.get(e)]
        if self.options.path_prefix is not None:
            self._set_prefix(self.options.path_prefix.encode())
        counts = self._bpf[b"counts"]
        if self.use_perf:
            pages = max(8, self.options.ring_pages)
            self._streams = [
                PerfStream(self._bpf, "events", BPF_EVENT_DTYPE, pages, counts, 0),
                PerfStream(self._bpf, "pevents", BPF_PATH_EVENT_DTYPE, pages, counts, 1),
            ]
        else:
            self._streams = [
                RingStream.from_bcc(self._bpf[b"events"], BPF_EVENT_DTYPE, _ring_bytes(self.ev_pages), counts, 0),
                RingStream.from_bcc(self._bpf[b"pevents"], BPF_PATH_EVENT_DTYPE, _ring_bytes(self.path_pages), counts, 1),
            ]
            if self.recheck:
                from tracers.recheck import RecheckWorker
                from tracers.text import records_to_frame

                self._worker = RecheckWorker(self._worker_rows, records_to_frame)
                self._streams[1].on_batch = self._worker.submit
            self._start_streams()

    def _compile(self, bcc, mode: str) -> str | None:
        """Compile, load and attach in ``mode``; the first error line on failure."""
        self._prepare_headers()
        from tracers import BuildError, build_bpf

        self.mode = mode
        cflags = [INCLUDE, "-Wno-macro-redefined"] + [f"-D{d}" for d in self._defines()]
        try:
            self._bpf = build_bpf(bcc, program(SOURCE), cflags)
        except BuildError as e:
            self.mode = None
            return str(e)
        return None

    def _set_prefix(self, b: bytes) -> None:
        t = self._bpf[b"prefix"]
        leaf = t.Leaf()
        leaf.len = len(b)
        leaf.p = b  # a c_char array: indexing it yields bytes, it is assigned whole
        t[t.Key(0)] = leaf

    def poll_records(self, timeout_ms: int = 100) -> list[np.ndarray]:
        """Raw record batches of both streams (the bench measures this layer)."""
        if self._bpf is None:
            raise VfstraceError("tracer not loaded")
        import time

        if timeout_ms == 0 or time.monotonic() - self._flushed_at >= FLUSH_EVERY_S:
            self.flush_repeats()
        return poll_streams(self._streams, timeout_ms)

    def flush_repeats(self) -> None:
        """Have every CPU report the repeats it has folded and not yet
        streamed (bpf/tracepoint.c, coalescing): one traced syscall of our
        own on each CPU, which the kernel side never records but takes as
        the moment to flush that CPU's count. A drain (``poll(0)``) always
        does this first, so no count is left behind at the end; between
        drains, at most every FLUSH_EVERY_S."""
        import time

        self._flushed_at = time.monotonic()
        if not self.coalesce_ns or self._bpf is None:
            return
        try:
            saved = os.sched_getaffinity(0)
        except OSError:
            return
        try:
            for cpu in range(os.cpu_count() or 1):
                try:
                    os.sched_setaffinity(0, {cpu})
                except OSError:
                    continue  # offline, or outside our cpuset: no program runs for us there
                os.lstat("/")  # newfstatat: its exit program sees our pid and flushes
        finally:
            os.sched_setaffinity(0, saved)

    def poll(self, timeout_ms: int = 100):
        df = batches_frame(self.poll_records(timeout_ms), BPF_EVENT_DTYPE)
        if self._worker is not None:
            # The re-checks of failures read so far (a trace holds each after its failure); on an idle
            # poll or a drain, those of every failure handed over, once the worker has made them.
            if len(df):
                self._seen_ts = max(self._seen_ts, int(df["ts_ns"].values.max()))
                rows = self._worker.take(self._seen_ts)
            else:
                rows = self._worker.take(None, wait_s=1.0 if timeout_ms == 0 else 0.0)
            self.rechecked = self._worker.rechecked
            return self._with_rows(df, rows)
        if self.recheck:
            df = self._recheck(df)
        return df

    def _recheck(self, df):
        """Re-check every ENOENT row's path (up to RECHECK_CAP) as its task meant it, on the consumer
        (the perf-buffer streams, which have no drain thread to hand failures to a
        :class:`~tracers.recheck.RecheckWorker`); ``df`` with the RECHECK rows appended and
        EXISTS_AFTER set on the failures found."""
        idx = np.flatnonzero((df["kind"].values == int(Kind.PATH_SYSCALL)) & (df["ret"].values == ENOENT))[:RECHECK_CAP]
        if not len(idx):
            return df
        rows, found = self._recheck_rows(df, idx)
        self.rechecked += len(rows)
        if found.any():
            flags = df["flags"].values.copy()
            flags[found] |= int(Flag.EXISTS_AFTER)
            df["flags"] = flags
        return self._with_rows(df, rows)

    def _recheck_rows(self, df, idx) -> tuple[list[dict], np.ndarray]:
        """The RECHECK rows of failure rows ``idx`` of ``df`` (one per distinct task, dirfd, path and
        base), and a mask of the rows found now; each row carries its failure's stamp (``_fail_ts``).

        The path is resolved through /proc/TID (the task's root for an
        absolute path, its cwd for AT_FDCWD, else the dirfd), checked there,
        and the directories on it recorded by inode number (what places a
        creator, docs/verdicts.md). Where the kernel read the base
        directory (flag BASE), the /proc link must still name it: a cwd
        changed or an fd closed and reused since is unresolvable (-EBADF),
        as is a task gone (-ESRCH)."""
        flags = df["flags"].values
        paths, tids, pids = df["path"].values, df["tid"].values, df["pid"].values
        seqs, inos, ts = df["seq"].values, df["ino"].values, df["ts_ns"].values
        found = np.zeros(len(df), dtype=bool)
        done: dict[tuple, int] = {}
        rows = []
        stats: dict[str, os.stat_result | None] = {}
        for i in idx:
            f = int(flags[i])
            dirfd = int(np.int32(np.uint32(seqs[i]))) if f & int(Flag.DIRFD) else AT_FDCWD
            base_ino = int(inos[i]) if f & int(Flag.BASE) else None
            key = (int(tids[i]), dirfd, paths[i], base_ino)
            if key in done:
                found[i] = rows[done[key]]["ret"] == 0
                continue
            if not paths[i]:
                continue  # "" names nothing: its ENOENT is the truth
            r = resolve(int(tids[i]), int(pids[i]), paths[i], dirfd, base_ino, stats, self._mounts)
            if r is None:
                continue
            rows.append({"ts_ns": time.monotonic_ns(), "pid": int(pids[i]), "tid": int(tids[i]),
                         "comm": df["comm"].values[i], "kind": int(Kind.RECHECK), "op": int(df["op"].values[i]),
                         "path": paths[i], "path2": r.resolved, "name": r.chain, "ret": r.ret,
                         "seq": int(seqs[i]), "flags": (f & int(Flag.DIRFD)) | r.flags, "cpu": int(df["cpu"].values[i]),
                         "count": 1, "_fail_ts": int(ts[i])})
            done[key] = len(rows) - 1
            found[i] = r.ret == 0
        return rows, found

    def _worker_rows(self, frame) -> list[dict]:
        """The re-check thread's work on the failures the drain thread handed over."""
        return self._recheck_rows(frame, np.arange(len(frame)))[0]

    @staticmethod
    def _with_rows(df, rows: list[dict]):
        """``df`` with RECHECK ``rows`` appended, in the event schema."""
        import pandas as pd

        if not rows:
            return df
        rc = pd.DataFrame({c: [r.get(c, "" if c in STRING_COLUMNS else 0) for r in rows] for c in COLUMNS})
        rc = rc.astype({c: NUMPY_DTYPES[c] for c in COLUMNS})
        return pd.concat([df, rc], ignore_index=True) if len(df) else rc

    def counters(self) -> dict[str, int]:
        if self._bpf is None:
            return {}
        out = counter_totals(self._bpf[b"counts"], COUNTER_NAMES)
        if self._worker is not None:
            out["recheck_dropped"] = self._worker.dropped  # failures past the re-check backlog (tracers/recheck.py)
        if not self.dentry_allocs:
            out.pop("dentry_allocs", None)  # not probed: a 0 would read as "none happened"
        # The kernel counts each path syscall once, in the slot of its outcome
        # (bpf/tracepoint.c result_wanted): the total is their sum.
        if "path_syscalls" in out:
            out["path_syscalls"] += out.get("path_ok_not_streamed", 0) + out.get("path_other_errno_not_streamed", 0)
        return out

    def attached(self) -> list[str]:
        return list(self._attached)

    def close(self) -> None:
        super().close()  # the streams first: their drain threads hand nothing over after this
        if self._worker is not None:
            self._worker.stop()
