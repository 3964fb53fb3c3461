"""Every system call that makes a name, by absolute path and by directory fd, as the raw calls the kernel sees.

Why a module of its own: `vfstrace stress --churn` makes names through
each of them, and the live tests (tests/test_churn_live.py) check that the
tracepoint tier recognises each as a creator (vfstrace/correlate/existence.py);
both must mean the same syscall by the same name. The C library is free to
turn mkdir() into mkdirat() or mknod() into mknodat(), so each call here is
made by its x86-64 syscall number (``syscall(2)``): the name is the
``syscalls:sys_enter_<name>`` tracepoint it fires. Elsewhere than x86-64,
:func:`make` falls back to the os module's nearest call (the tracepoint
then is whichever the C library picks).

Each entry makes ``name`` in the directory ``dirpath`` (whose fd, for the
``at`` calls, is ``dfd``): the absolute-path calls get ``dirpath/name``,
the dirfd ones ``name`` relative to ``dfd``. A link, a rename and a
symlink need a source: a scratch file ``.src-<name>`` made beside it first
(a symlink's target text is that file's name, relative: the link resolves).
A rename onto an existing name is :func:`rename_over`.
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat
import struct

AT_FDCWD = -100
O_CREAT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC

# x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
NR = {"open": 2, "rename": 82, "mkdir": 83, "creat": 85, "link": 86, "symlink": 88, "mknod": 133, "openat": 257,
      "mkdirat": 258, "mknodat": 259, "renameat": 264, "linkat": 265, "symlinkat": 266, "renameat2": 316,
      "openat2": 437}

# (syscall, by dirfd): every creating call, each way it names the new name. The tracepoint
# tier's NS_OP for each: Op.CREATE (open*, creat with O_CREAT), MKDIR, LINK, SYMLINK, RENAME, MKNOD.
CALLS = (("open", False), ("openat", False), ("openat", True), ("openat2", True), ("creat", False),
         ("mkdir", False), ("mkdirat", True), ("link", False), ("linkat", True), ("symlink", False),
         ("symlinkat", True), ("rename", False), ("renameat", True), ("renameat2", True), ("mknod", False),
         ("mknodat", True))

_libc = None


def _sys(nr: int, *args) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    r = _libc.syscall(ctypes.c_long(nr), *conv)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


def _raw() -> bool:
    return platform.machine() == "x86_64"


def make(call: str, by_fd: bool, dirpath: str, dfd: int, name: str) -> None:
    """Make ``name`` in ``dirpath`` by ``call`` (a syscall of :data:`NR`): relative to ``dfd`` (the directory's fd)
    when ``by_fd``, else by its absolute path (AT_FDCWD for the ``at`` calls); OSError as the call's."""
    src = f".src-{name}"
    if call in ("link", "linkat", "rename", "renameat", "renameat2", "symlink", "symlinkat"):
        os.close(os.open(os.path.join(dirpath, src), O_CREAT_FLAGS, 0o644))
    if not _raw():
        _make_portable(call, by_fd, dirpath, dfd, name, src)
        return
    d, p, s = (dfd, name.encode(), src.encode()) if by_fd else (
        AT_FDCWD, os.path.join(dirpath, name).encode(), os.path.join(dirpath, src).encode())
    n = NR[call]
    fd = None
    if call == "open":
        fd = _sys(n, p, O_CREAT_FLAGS, 0o644)
    elif call == "creat":
        fd = _sys(n, p, 0o644)
    elif call == "openat":
        fd = _sys(n, d, p, O_CREAT_FLAGS, 0o644)
    elif call == "openat2":
        how = ctypes.create_string_buffer(struct.pack("QQQ", O_CREAT_FLAGS, 0o644, 0), 24)
        fd = _sys(n, d, p, how, 24)
    elif call == "mkdir":
        _sys(n, p, 0o755)
    elif call == "mkdirat":
        _sys(n, d, p, 0o755)
    elif call in ("link", "rename"):
        _sys(n, s, p)
    elif call in ("linkat", "renameat2"):
        _sys(n, d, s, d, p, 0)
    elif call == "renameat":
        _sys(n, d, s, d, p)
    elif call == "symlink":
        _sys(n, src.encode(), p)
    elif call == "symlinkat":
        _sys(n, src.encode(), d, p)
    elif call == "mknod":
        _sys(n, p, stat.S_IFREG | 0o644, 0)
    elif call == "mknodat":
        _sys(n, d, p, stat.S_IFIFO | 0o644, 0)
    else:
        raise ValueError(f"not a creating call: {call}")
    if fd is not None:
        os.close(fd)


def _make_portable(call, by_fd, dirpath, dfd, name, src) -> None:
    """:func:`make` through the os module (not x86-64: no syscall numbers here)."""
    kw = {"dir_fd": dfd} if by_fd else {}
    two = {"src_dir_fd": dfd, "dst_dir_fd": dfd} if by_fd else {}
    where, s = (name, src) if by_fd else (os.path.join(dirpath, name), os.path.join(dirpath, src))
    if call.startswith("open") or call == "creat":
        os.close(os.open(where, O_CREAT_FLAGS, 0o644, **kw))
    elif call.startswith("mkdir"):
        os.mkdir(where, 0o755, **kw)
    elif call.startswith("link"):
        os.link(s, where, **two)
    elif call.startswith("rename"):
        os.rename(s, where, **two)
    elif call.startswith("symlink"):
        os.symlink(src, where, **kw)
    elif call.startswith("mknod"):
        os.mknod(where, (stat.S_IFIFO if call == "mknodat" else stat.S_IFREG) | 0o644, **kw)
    else:
        raise ValueError(f"not a creating call: {call}")


def rename_over(dirpath: str, dfd: int, name: str, by_fd: bool) -> None:
    """Replace the existing ``name`` by a rename onto it (rename(2), or renameat2(2) relative to ``dfd``)."""
    make("renameat2" if by_fd else "rename", by_fd, dirpath, dfd, name)


def remove(path: str) -> None:
    """Remove what :func:`make` made (a directory or any other name); nothing if it is not there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        os.rmdir(path)
    else:
        os.unlink(path)
