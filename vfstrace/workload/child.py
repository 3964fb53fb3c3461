"""A workload's life tied to the process that started it.

Why: a recorder killed with SIGKILL runs no cleanup, and a `-- CMD` or
`--workload stress` it started used to run on, untraced, for as long as it
liked (a stress run keeps its copies, trees and memory cgroup). Linux can
tie a child to its parent: PR_SET_PDEATHSIG (prctl(2), since 2.1.57) sends
the child a signal when the thread that forked it exits, however it exits.

* :func:`start` runs a workload in a session of its own (so the terminal's
  Ctrl-C reaches only the recorder, which then stops the workload itself)
  with a parent-death signal: SIGKILL for a plain command, SIGTERM for
  `vfstrace stress`, which cleans up its trees and cgroups on SIGTERM.
* :func:`orphan_signal` is what `vfstrace stress` calls on itself, so a
  stress run whose parent dies (a recorder, a shell) cleans up too.
* :func:`stop` ends the workload's whole process group: SIGTERM, a grace
  period, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess

from vfstrace.errors import VfstraceError

PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h
_LIBC = []


def _libc():
    """libc, loaded once before any fork (no dlopen between fork and exec)."""
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def orphan_signal(sig: int, parent: int | None = None) -> bool:
    """Ask for ``sig`` when our parent exits; if it already has (we were
    re-parented before asking), send it now. False where prctl fails."""
    if _libc().prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def start(argv: list[str], death_signal: int = signal.SIGKILL) -> subprocess.Popen:
    """Start ``argv`` in its own session, to get ``death_signal`` when we die."""
    me = os.getpid()
    _libc()

    def _child():  # runs in the child between fork and exec
        orphan_signal(death_signal, parent=me)

    try:
        return subprocess.Popen(argv, start_new_session=True, preexec_fn=_child)  # noqa: PLW1509 - no threads here
    except OSError as e:
        raise VfstraceError(f"cannot start workload {argv[0]}: {e.strerror}") from None


def stop(proc: subprocess.Popen | None, grace: float = 20.0) -> int | None:
    """End the workload's process group (SIGTERM, then SIGKILL after ``grace`` s); its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        _killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Whatever the leader left behind in its group goes with it.
    _killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
