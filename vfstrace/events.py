"""The one event schema shared by live streams, trace files and DataFrames.

Every record vfstrace handles, whether it came from a kprobe, a tracepoint,
the simulator or a hand-written JSON Lines file, has exactly the columns in
:data:`COLUMNS`, typed as in :data:`ARROW_SCHEMA`.  Keeping one schema means
the correlator never needs to know which tier produced its input.

The kernel side writes ``struct vfs_event`` (bpf/vfstrace.h); :data:`BPF_EVENT_DTYPE`
is the same layout as a numpy dtype, and tests/test_events.py compiles the
header with the host C compiler and checks every offset against it, so the two
agree by test, not by hope.

Kinds (``kind`` column) and what their columns mean
--------------------------------------------------
WALK_ENTER / LOOKUP_ENTER
    A path component lookup starts on ``tid``. ``parent`` is the directory
    dentry, ``name`` the component, ``flags & RCU`` set in RCU-walk mode.
WALK_RETURN / LOOKUP_RETURN
    It returned. ``dentry`` is the dentry found (0 if none), ``ino`` its inode
    number (0 if negative), ``seq`` the d_seq the walk sampled when it found
    the dentry, ``seq2`` the dentry's d_seq read at return, ``ret`` 0, -ENOENT,
    -ECHILD (RCU walk gave up and will retry in ref-walk) or another -errno.
    ``flags`` carries RCU, NEGATIVE (d_inode NULL at return) and SEQ_CHANGED
    (seq != seq2, judged in the kernel at the moment of return); STEP when
    it is step_into()'s return outside walk_component() (an open()'s last
    component: open_last_lookups() calls step_into() itself), judged the
    same way.
SEQ_CHECK
    A d_seq re-check site ran on ``tid`` (``op`` names the site, e.g.
    try_to_unlazy). ``ret`` 0: the sampled sequence still held; -ECHILD: it
    changed and the walk dropped out of RCU mode to retry.
    ``flags & IN_WALK``: it ran inside a walk_component() call (the walk
    whose WALK_RETURN follows on ``tid``); without it, it belongs to a
    lookup whose last walk succeeded (complete_walk and the like).
PRUNE
    Dentry teardown began (dentry_kill / __dentry_kill entry): ``dentry``,
    ``parent``, ``ino``, ``name``, ``seq``.
UNHASH
    The dentry was unhashed (__d_drop / ___d_drop): lookups can no longer
    find it; its d_seq was bumped (``seq``).
IPUT
    The dentry let go of its inode (dentry_iput / dentry_unlink_inode):
    from here d_inode is NULL. ``ino`` is the inode being released.
D_FREE / D_ALLOC
    The dentry cache freed / allocated the object at ``dentry``. After a
    D_ALLOC the address names a new dentry (address reuse).
PATH_SYSCALL
    A path system call returned: ``op`` the syscall, ``path`` its path,
    ``ret`` its result (e.g. -ENOENT).
NS_OP
    A namespace operation: ``op`` is UNLINK, RMDIR, RENAME, LINK, MKDIR, or
    one of the creating operations CREATE, MKNOD, SYMLINK, MOUNT, URING,
    ``path`` the (old) path, ``path2`` the new path for RENAME/LINK, ``ret``
    its result. ``dentry``/``parent``/``name`` where the tier knows them.
SHRINK_START / SHRINK_END
    A slab shrinker ran (vmscan:mm_shrink_slab_start/end); ``ret`` is the
    number of objects freed at SHRINK_END, ``name`` the shrinker if known.
LOST
    The kernel dropped ``ret`` events on ``cpu`` (ring/perf buffer full).
RECHECK
    The tracepoint tier's own re-check of a failed path syscall's path, made
    from user space right after the failure (tracers/tracepoint.py), as the
    failing task meant it: ``ts_ns`` when it ran (CLOCK_MONOTONIC, the
    kernel's clock), ``pid``/``tid``/``comm``/``op`` the failing task's and
    syscall's, ``path`` the path as recorded, ``seq`` and flag DIRFD as on
    the failure, ``path2`` the path resolved (against the task's root, cwd
    or dirfd, read through /proc at that moment; "" when it could not be),
    ``ret`` 0 (it exists), -ENOENT (it does not), -ESRCH (the task is gone),
    -EBADF (the dirfd is closed or names another directory now), ``name``
    the inode numbers of the directories on the resolved path, root first,
    as decimal text joined by ':' (what places a creator by its base
    directory), flag REMOTE_FS.

Tracepoint tier, PATH_SYSCALL and NS_OP: with flag DIRFD, ``seq`` holds the
dirfd (as unsigned 32 bits; AT_FDCWD is 4294967196) the path is relative
to (for a two-path operation, the one of the name it creates: ``path2``);
with flag BASE, ``ino`` holds the inode number of the directory that path
starts from (the task's root for an absolute path, its cwd, or the
dirfd's directory), read in the kernel at the syscall's return.

Every row also has ``count`` (see COLUMN_DEFAULTS): how many occurrences it
stands for, 1 but for coalesced failure storms (flag COALESCED).
    Lost events are data: they are stored, counted and shown, never hidden.
"""

from __future__ import annotations

import enum
import errno

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

COMM_LEN = 16
NAME_LEN = 64
PATH_LEN = 256

ENOENT = -errno.ENOENT
ECHILD = -errno.ECHILD
ESRCH = -errno.ESRCH  # RECHECK: the failing task is gone, its path cannot be resolved
EBADF = -errno.EBADF  # RECHECK: its dirfd is closed, or names another directory now
AT_FDCWD = -100  # include/uapi/linux/fcntl.h
AT_FDCWD_U32 = AT_FDCWD & 0xFFFFFFFF  # as the ``seq`` column holds it

# Kernel ABI values the tracepoint program tests (emitted into it by c_defines,
# so its C never depends on the headers BCC finds):
KERNEL_ABI = {
    "AT_FDCWD": AT_FDCWD,
    "O_CREAT": 0o100,  # include/uapi/asm-generic/fcntl.h (x86-64, arm64: the tier's exit-only mode is x86-64)
    "RENAME_EXCHANGE": 2,  # include/uapi/linux/fs.h (3.15, commit da1ce0670c14)
    # enum io_uring_op, include/uapi/linux/io_uring.h: the submissions that can create a name
    "IORING_OP_OPENAT": 18,  # 5.6
    "IORING_OP_OPENAT2": 28,  # 5.6
    "IORING_OP_RENAMEAT": 35,  # 5.11
    "IORING_OP_MKDIRAT": 37,  # 5.15
    "IORING_OP_SYMLINKAT": 38,  # 5.15
    "IORING_OP_LINKAT": 39,  # 5.15
}


class Kind(enum.IntEnum):
    """Event kinds. Values are stable: they are stored in trace files."""

    WALK_ENTER = 1
    WALK_RETURN = 2
    LOOKUP_ENTER = 3
    LOOKUP_RETURN = 4
    SEQ_CHECK = 5
    PRUNE = 6
    UNHASH = 7
    IPUT = 8
    D_FREE = 9
    D_ALLOC = 10
    PATH_SYSCALL = 11
    NS_OP = 12
    SHRINK_START = 13
    SHRINK_END = 14
    LOST = 15
    RECHECK = 16


class Op(enum.IntEnum):
    """Sub-kind: the syscall, namespace operation or re-check site."""

    NONE = 0
    # PATH_SYSCALL
    OPENAT = 1
    OPENAT2 = 2
    NEWFSTATAT = 3
    STATX = 4
    FACCESSAT = 5
    FACCESSAT2 = 6
    EXECVE = 7
    READLINKAT = 8
    CHDIR = 9
    OPEN = 10
    STAT = 11
    LSTAT = 12
    ACCESS = 13
    READLINK = 14
    # NS_OP
    UNLINK = 32
    RMDIR = 33
    RENAME = 34
    LINK = 35
    MKDIR = 36
    CREATE = 37  # open/openat/openat2 with O_CREAT, creat(): the name may have been created
    MKNOD = 38
    SYMLINK = 39  # path: the link's target text, path2: the link (the name created)
    MOUNT = 40  # mount(2) or move_mount(2): path is the mount point
    URING = 41  # an io_uring submission that may create a name (its path is not visible): seq is the opcode
    # SEQ_CHECK sites
    TRY_TO_UNLAZY = 64
    TRY_TO_UNLAZY_NEXT = 65
    UNLAZY_WALK = 66
    COMPLETE_WALK = 67
    STEP_INTO = 68
    LEGITIMIZE = 69


class Flag(enum.IntFlag):
    """Bits of the ``flags`` column."""

    NONE = 0
    RCU = 1  # the walk was in RCU (lockless) mode
    NEGATIVE = 2  # d_inode was NULL when observed
    SEQ_CHANGED = 4  # the dentry's d_seq differed from the walk's sample
    UNHASHED = 8  # the dentry was unhashed when observed
    PRUNE_INFLIGHT = 16  # the kernel side saw a prune of this dentry in flight
    TRUNCATED = 32  # a path or name was cut to fit the event
    EXISTS_AFTER = 64  # ENOENT path re-checked from user space right after: present (tracepoint tier)
    IN_WALK = 128  # SEQ_CHECK: ran inside a walk_component() call (the tracer held that walk's state)
    COALESCED = 256  # PATH_SYSCALL: stands for ``count`` identical repeats folded in the kernel (tracepoint tier)
    STEP = 512  # WALK_RETURN: step_into()'s return outside walk_component() (an open()'s last component)
    EXCHANGE = 1024  # NS_OP RENAME: renameat2(RENAME_EXCHANGE): both names exist before and after
    DIRFD = 2048  # PATH_SYSCALL / NS_OP (tracepoint tier): ``seq`` is the dirfd the created (or looked-up) path is relative to
    BASE = 4096  # PATH_SYSCALL / NS_OP (tracepoint tier): ``ino`` is the inode number of the directory that path starts from, read in the kernel
    REMOTE_FS = 8192  # RECHECK: the path is on a filesystem that can change without a syscall of this kernel (network, FUSE)


# The order vfstrace writes columns in (readers find them by name); see docs/trace-format.md.
ARROW_SCHEMA = pa.schema(
    [
        ("event_id", pa.uint64()),
        ("ts_ns", pa.uint64()),
        ("cpu", pa.uint32()),
        ("pid", pa.uint32()),
        ("tid", pa.uint32()),
        ("comm", pa.string()),
        ("kind", pa.uint8()),
        ("op", pa.uint16()),
        ("dentry", pa.uint64()),
        ("parent", pa.uint64()),
        ("ino", pa.uint64()),
        ("name", pa.string()),
        ("path", pa.string()),
        ("path2", pa.string()),
        ("seq", pa.uint32()),
        ("seq2", pa.uint32()),
        ("ret", pa.int64()),
        ("flags", pa.uint32()),
        ("count", pa.uint32()),
    ]
)

COLUMNS = tuple(ARROW_SCHEMA.names)
# Columns added after SCHEMA_VERSION 1 was first written, with the value a
# trace without them means: readers fill it in, so older traces still load.
#   count: occurrences a row stands for. 1, except a PATH_SYSCALL row with
#   flag COALESCED, which stands for `count` identical results (same task,
#   syscall, errno and path) folded in the kernel, the last at ts_ns; an
#   analysis that counts failures sums it, one that looks for the first
#   failure takes the row without the flag before it.
COLUMN_DEFAULTS = {"count": 1}
STRING_COLUMNS = ("comm", "name", "path", "path2")
NUMPY_DTYPES = {
    f.name: (object if f.name in STRING_COLUMNS else f.type.to_pandas_dtype())
    for f in ARROW_SCHEMA
}

# Layout of struct vfs_event / struct vfs_path_event in bpf/vfstrace.h.
BPF_EVENT_DTYPE = np.dtype(
    [
        ("ts_ns", "<u8"),
        ("dentry", "<u8"),
        ("parent", "<u8"),
        ("ino", "<u8"),
        ("ret", "<i8"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("cpu", "<u4"),
        ("seq", "<u4"),
        ("seq2", "<u4"),
        ("flags", "<u4"),
        ("kind", "<u2"),
        ("op", "<u2"),
        ("count", "<u4"),
        ("comm", f"S{COMM_LEN}"),
        ("name", f"S{NAME_LEN}"),
    ]
)
BPF_PATH_EVENT_DTYPE = np.dtype(
    BPF_EVENT_DTYPE.descr + [("path", f"S{PATH_LEN}"), ("path2", f"S{PATH_LEN}")]
)


def empty_frame():
    """A zero-row DataFrame with the schema's columns and dtypes (strings as object)."""
    import pandas as pd

    return pd.DataFrame({c: np.array([], dtype=NUMPY_DTYPES[c]) for c in COLUMNS})


def kind_mask(kinds) -> np.ndarray:
    """A 256-entry table: ``kind_mask(ks)[kind]`` is ``np.isin(kind, ks)`` for a uint8 kind column, several times faster."""
    m = np.zeros(256, dtype=bool)
    m[list(kinds)] = True
    return m


def kind_name(k: int) -> str:
    try:
        return Kind(int(k)).name.lower()
    except ValueError:
        return f"kind{int(k)}"


def op_name(o: int) -> str:
    try:
        return Op(int(o)).name.lower()
    except ValueError:
        return f"op{int(o)}"


def _decode_str(col: np.ndarray) -> np.ndarray:
    # Fixed-width NUL-padded bytes from the kernel -> Python str objects.
    # errors="replace": file names are bytes, not always UTF-8.
    return np.array(
        [b.split(b"\0", 1)[0].decode("utf-8", "replace") for b in col.tolist()],
        dtype=object,
    )


def frame_from_records(rec: np.ndarray, decode=None, copy: bool = False):
    """Turn kernel records (BPF_EVENT_DTYPE or BPF_PATH_EVENT_DTYPE) into schema columns.

    ``event_id`` is left 0: the trace writer numbers events in arrival order.
    ``decode`` turns a fixed-width text field into a column (a string per
    row by default; tracers/text.py passes its Arrow decoding), ``copy``
    copies numeric fields even where their type already fits.
    """
    decode = decode or _decode_str
    import pandas as pd

    n = len(rec)
    cols = {}
    for name in COLUMNS:
        if name in rec.dtype.names:
            col = rec[name]
            cols[name] = decode(col) if name in STRING_COLUMNS else col.astype(NUMPY_DTYPES[name], copy=copy)
        elif name in STRING_COLUMNS:
            cols[name] = np.full(n, "", dtype=object)
        else:
            cols[name] = np.full(n, COLUMN_DEFAULTS.get(name, 0), dtype=NUMPY_DTYPES[name])
    cols["count"] = np.maximum(cols["count"], 1)  # a record that does not set it stands for one
    return pd.DataFrame(cols, columns=list(COLUMNS))


class TracepointCounter(enum.IntEnum):
    """Slots of bpf/tracepoint.c's per-CPU ``counts`` (what was seen, not streamed)."""

    DROPPED_EVENTS = 0  # struct vfs_event stream full: record lost
    DROPPED_PATH_EVENTS = 1  # struct vfs_path_event stream full: record lost
    PATH_SYSCALLS = 2  # path syscalls that returned (the kernel slot counts kept ones; the tracer adds slots 3 and 4)
    PATH_OK_NOT_STREAMED = 3  # ... succeeded and were not streamed
    PATH_OTHER_ERRNO_NOT_STREAMED = 4  # ... failed with another errno, not streamed
    FILTERED_TASK = 5  # path syscalls dropped by the pid/comm filter
    FILTERED_PREFIX = 6  # path/ns events dropped by the prefix filter
    NS_OPS = 7
    DENTRY_FREES = 8
    DENTRY_ALLOCS = 9
    SHRINKER_RUNS = 10
    EXIT_WITHOUT_ENTER = 11  # enter+map mode: exit without a matching enter (attached mid-call)
    COALESCED = 12  # ENOENTs folded into an earlier record's count (not a loss)
    CREATES = 13  # successful opens with O_CREAT (and creat()): streamed as NS_OP CREATE
    URING_CREATES = 14  # io_uring submissions that may create a name (NS_OP URING)
    BASE_UNREAD = 15  # records whose base directory could not be read in the kernel (no flag BASE)


class KprobeCounter(enum.IntEnum):
    """Slots of bpf/kprobe.c's per-CPU ``counts``."""

    WALK = 0
    WALK_RCU = 1
    WALK_ENOENT = 2
    WALK_ECHILD = 3
    LOOKUP = 4
    RCU_LOOKUP = 5
    SEQ_CHECK = 6
    SEQ_FAIL = 7
    PRUNE = 8
    UNHASH = 9
    IPUT = 10
    D_FREE = 11
    EMITTED = 12
    LOST = 13
    FILTERED = 14
    INFLIGHT_HIT = 15
    SEQ_CHANGED = 16
    STATE_FULL = 17
    INFLIGHT_STALE = 18
    PRUNE_SIDE_QUIET = 19
    NS_OP = 20
    STEP = 21  # step_into() calls outside walk_component() (the open() last component site)
    SLOT_BUSY = 22  # walks whose task slot held another task's walk: state kept in the hash instead


class WidenCounter(enum.IntEnum):
    """Slots of bpf/widen.c's per-CPU ``counts``."""

    SEEN = 0  # target task returned from the probed lookup
    DELAYED = 1  # ... and was held
    DELAY_NS = 2  # total time held, measured
    CAPPED = 3  # held until the iteration bound ran out, short of the delay
    NO_DENTRY = 4  # target lookup found nothing: nothing to widen
    UNARMED = 5  # target lookup seen while disarmed: not held
    NOT_SAMPLED = 6  # armed, but outside the sampled share: not held


class StreamBenchCounter(enum.IntEnum):
    """Slots of bpf/stream_bench.c's per-CPU ``counts`` (bench/stream.py's synthetic producer)."""

    DROPPED_EVENTS = 0  # struct vfs_event records a full ring refused
    DROPPED_PATH_EVENTS = 1  # struct vfs_path_event records a full ring refused
    TRIGGERS = 2  # generator syscalls that emitted VFS_BENCH_K records each


class EmptyCounter(enum.IntEnum):
    """bpf/empty.c counts nothing: it is the cost of a program that does nothing."""


# Per program: its counters, and the slots counting records a full stream
# dropped (bpf/common.h's VFS_C_LOST_EV / VFS_C_LOST_PATH).
PROGRAM_COUNTERS = {
    "tracepoint.c": (TracepointCounter, TracepointCounter.DROPPED_EVENTS, TracepointCounter.DROPPED_PATH_EVENTS),
    "kprobe.c": (KprobeCounter, KprobeCounter.LOST, None),
    "widen.c": (WidenCounter, None, None),
    "empty.c": (EmptyCounter, None, None),
    "stream_bench.c": (StreamBenchCounter, StreamBenchCounter.DROPPED_EVENTS, StreamBenchCounter.DROPPED_PATH_EVENTS),
}


def counter_names(program: str) -> tuple[str, ...]:
    """The program's counter names in slot order, as tracers report them."""
    return tuple(c.name.lower() for c in PROGRAM_COUNTERS[program][0])


def c_defines(program: str | None = None) -> str:
    """#define lines for kernel-side programs: every Kind, Op and Flag, the
    errnos they compare with, and (given ``program``, a file of bpf/) that
    program's counter slots, so no name is kept in step by hand."""
    lines = [f"#define VFS_K_{k.name} {int(k)}" for k in Kind]
    lines += [f"#define VFS_OP_{o.name} {int(o)}" for o in Op]
    lines += [f"#define VFS_F_{f.name} {int(f)}" for f in Flag if f.name != "NONE"]
    lines += [f"#define VFS_ENOENT ({ENOENT})", f"#define VFS_ECHILD ({ECHILD})"]
    lines += [f"#define VFS_{k} ({v})" for k, v in KERNEL_ABI.items()]
    if program is not None:
        enum_, lost_ev, lost_path = PROGRAM_COUNTERS[program]
        lines += [f"#define VFS_C_{c.name} {int(c)}" for c in enum_]
        lines.append(f"#define VFS_NCOUNTERS {len(enum_)}")
        if lost_ev is not None:
            lines.append(f"#define VFS_C_LOST_EV VFS_C_{lost_ev.name}")
        if lost_path is not None:
            lines.append(f"#define VFS_C_LOST_PATH VFS_C_{lost_path.name}")
    return "\n".join(lines) + "\n"
