"""tracers/tracepoint.py resolve(): a failed path re-checked as its task meant it, through /proc/TID."""

import os
from errno import ENOENT

from tracers.tracepoint import AT_FDCWD, resolve


def test_an_existing_path_is_found_with_the_directories_on_it(tmp_path):
    (tmp_path / "f").write_text("x")
    r = resolve(os.getpid(), os.getpid(), str(tmp_path / "f"), AT_FDCWD, None, {}, {})
    assert r.ret == 0 and r.resolved == str(tmp_path / "f")
    # root first, then each directory down to tmp_path, by inode number
    assert r.chain.split(":")[-1] == str(os.stat(tmp_path).st_ino)


def test_an_absent_path_is_enoent(tmp_path):
    r = resolve(os.getpid(), os.getpid(), str(tmp_path / "gone"), AT_FDCWD, None, {}, {})
    assert r.ret == -ENOENT  # as the kernel returns it


def test_a_path_under_proc_is_not_rechecked():
    # A re-check is itself a lookup under /proc/PID/root: re-checking such a
    # path would let two recorders re-check each other's re-checks forever.
    for p in ("/proc/1/root/nonexistent", "/proc", f"/proc/{os.getpid()}/fd/99999"):
        assert resolve(os.getpid(), os.getpid(), p, AT_FDCWD, None, {}, {}) is None
    # ... also when reached relative to a cwd under /proc
    cwd = os.getcwd()
    try:
        os.chdir("/proc")
        assert resolve(os.getpid(), os.getpid(), "self/nonexistent", AT_FDCWD, None, {}, {}) is None
    finally:
        os.chdir(cwd)
