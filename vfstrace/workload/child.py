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

A parent-death signal reaches only the direct child: what a `-- sh -c
"a & b"` forks, or a daemon that left the process group, would live on.
So where cgroup v2 is writable (root), the workload also gets a cgroup of
its own (children are born in their parent's cgroup, whatever their
session) watched by a guard: a tiny process with its own parent-death
signal that, when the recorder dies, sends SIGTERM to everything still in
the cgroup, waits :data:`GUARD_GRACE` seconds (a stress run cleans up in
that time), then kills the rest (cgroup.kill, Linux 5.14, "cgroup: introduce
cgroup.kill"; before it, SIGKILL to each member) and removes the cgroup. At
a normal stop the recorder asks the guard to kill what is left at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

from vfstrace.errors import VfstraceError

PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h
GUARD_GRACE = 10.0  # seconds between SIGTERM and SIGKILL when the recorder died

# The guard: argv cgroup-dir parent-pid grace. SIGTERM (the parent died):
# TERM the members, wait up to grace for them, then kill. SIGUSR1 (asked
# at a normal stop): kill at once. Standard library only, started with -S -I.
GUARD = r"""
import ctypes, os, signal, sys, time
cg, parent, grace = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def members():
    try:
        with open(cg + "/cgroup.procs") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []
def send(sig):
    for p in members():
        try:
            os.kill(p, sig)
        except OSError:
            pass
def end(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if signum == signal.SIGTERM:
        send(signal.SIGTERM)
        t = time.monotonic() + grace
        while members() and time.monotonic() < t:
            time.sleep(0.05)
    for _ in range(100):
        if not members():
            break
        try:
            with open(cg + "/cgroup.kill", "w") as f:
                f.write("1")
        except OSError:
            send(signal.SIGKILL)
        time.sleep(0.05)
    for _ in range(50):
        try:
            os.rmdir(cg)
            break
        except FileNotFoundError:
            break
        except OSError:
            time.sleep(0.1)
    os._exit(0)
signal.signal(signal.SIGTERM, end)
signal.signal(signal.SIGUSR1, end)
signal.signal(signal.SIGINT, signal.SIG_IGN)
ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)
if os.getppid() != parent:
    end(signal.SIGTERM, None)
print("ready", flush=True)
while True:
    signal.pause()
"""
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


def _cgroup2_root() -> str | None:
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                p = line.split()
                if len(p) >= 3 and p[2] == "cgroup2":
                    return p[1]
    except OSError:
        pass
    return None


class _Guard:
    """The workload's cgroup and the process that kills it if we die (module docstring)."""

    def __init__(self, name: str):
        root = _cgroup2_root() if os.geteuid() == 0 else None
        self.path = self.proc = None
        if root is None:
            return
        path = os.path.join(root, f"{name}-{os.getpid()}")
        try:
            os.mkdir(path)
        except OSError:
            return
        self.path = path
        try:
            self.proc = subprocess.Popen([sys.executable, "-S", "-I", "-c", GUARD, path, str(os.getpid()), str(GUARD_GRACE)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
            if self.proc.stdout.readline().strip() != b"ready":
                raise OSError("guard did not start")
        except OSError:
            self.close()

    @property
    def procs_file(self) -> str | None:
        return os.path.join(self.path, "cgroup.procs") if self.proc is not None else None

    def close(self) -> None:
        """Kill whatever is left in the cgroup now and remove it."""
        if self.proc is not None:
            try:
                self.proc.send_signal(signal.SIGUSR1)
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc = None
        if self.path is not None:
            try:
                os.rmdir(self.path)
            except OSError:
                pass
            self.path = None


class Workload:
    """A started workload: its process (``pid``, ``poll()``) and its guard."""

    def __init__(self, proc: subprocess.Popen, guard: _Guard):
        self.proc, self.guard = proc, guard
        self.pid = proc.pid

    def poll(self):
        return self.proc.poll()


def start(argv: list[str], death_signal: int = signal.SIGKILL, cgroup_name: str = "vfstrace-workload") -> Workload:
    """Start ``argv`` in its own session, to get ``death_signal`` when we die,
    in a guarded cgroup of its own where there is one to make."""
    me = os.getpid()
    _libc()
    guard = _Guard(cgroup_name)
    procs = guard.procs_file

    def _child():  # runs in the child between fork and exec
        orphan_signal(death_signal, parent=me)
        if procs is not None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0": the writing process itself (cgroup v2)
            finally:
                os.close(fd)

    try:
        proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=_child)  # noqa: PLW1509 - no threads here
    except (OSError, subprocess.SubprocessError) as e:
        guard.close()
        raise VfstraceError(f"cannot start workload {argv[0]}: {getattr(e, 'strerror', None) or e}") from None
    return Workload(proc, guard)


def stop(w: Workload | None, grace: float = 20.0) -> int | None:
    """End the workload's process group (SIGTERM, then SIGKILL after ``grace`` s),
    then whatever is left in its cgroup; its exit status."""
    if w is None:
        return None
    proc = w.proc
    if proc.poll() is None:
        _killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Whatever the leader left behind in its group or its cgroup goes with it.
    _killpg(proc.pid, signal.SIGKILL)
    w.guard.close()
    return proc.returncode


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# What `watch` and `record` run: the command line, its start and stop, and
# the signals that end a recording.
class Stop:
    """Turns SIGINT/SIGTERM into a flag the poll loop checks (never a traceback mid-write)."""

    def __init__(self):
        self.reason = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.reason = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def workload_argv(workload: str | None, cmd: tuple[str, ...], duration: float | None):
    if workload and cmd:
        raise VfstraceError("give either --workload or -- CMD, not both")
    if workload == "stress":
        argv = [sys.executable, "-m", "vfstrace.cli", "stress"]
        return argv + (["-d", str(duration)] if duration else [])
    return list(cmd) or None


def start_workload(argv):
    """The workload in a session of its own (Ctrl-C reaches vfstrace, which
    stops it with SIGTERM), tied to our life: `vfstrace stress` gets SIGTERM
    if we die (it cleans up), any other command SIGKILL."""
    if not argv:
        return None
    stress = argv[:4] == [sys.executable, "-m", "vfstrace.cli", "stress"]
    return start(argv, signal.SIGTERM if stress else signal.SIGKILL)


def stop_workload(proc, grace: float = 20.0) -> int | None:
    return stop(proc, grace)
