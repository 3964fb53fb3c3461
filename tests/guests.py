"""The VM tests' guest boots, run two at a time, at the lowest priority.

A guest under TCG spends most of its time on one vCPU: the interpreter
starting, clang compiling the BCC program, pandas summarising a trace. One
boot at a time leaves the second core of a two-core host idle for most of
the VM tests, which are most of the suite's time. So each VM test module
hands its boots (one per kernel, each shared by all the tests that read its
summary) to one pool of ``VFSTRACE_VM_JOBS`` workers (default 2, 1 for the
old one-at-a-time order), and conftest starts every boot of the session,
longest first, as the first VM test runs. The VM tests run last, after the
host tests, so a guest never competes with a test timing the host.

The pool's workers run at nice 19, and so does every qemu (and kernel
build) they start: on Linux the nice value is a thread's, and a child
inherits its creator's (nice(2), NOTES). The VM tests whose assertions
time their guest's own work (a module with ``GUEST_TIMED = True``) run
first and boot in the test's own thread at normal priority, so the pooled
guests take only the CPU that guest leaves.

A boot's outcome, its summary or the skip/failure it raised, is what every
test of that boot gets: a guest that wrote nothing fails all of its tests
once, not one boot per test.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from vfstrace.vm.kernels import VmTimeout

JOBS = max(1, int(os.environ.get("VFSTRACE_VM_JOBS", "2")))
# A guest that shares the host with another runs slower; its time limit
# (a guard against a hung guest, not a performance bound) grows with that.
TIMEOUT_FACTOR = 1.0 if JOBS == 1 else 1.6
NICE = 19

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_boots: dict[tuple, Future] = {}
# key -> [started, ended] (time.monotonic()): the session's guest timeline,
# printed at its end (timeline()), so that CI's log says where the VM tests'
# time went.
_times: dict[tuple, list] = {}
_t0 = time.monotonic()


# Console lines a hung guest's failure carries: what the kernel printed last
# (a stall's or an oops's stack) is the only account of it a CI log keeps.
CONSOLE_TAIL = 60


def _timed(key: tuple, boot: Callable[[], object]) -> Callable[[], object]:
    def run():
        _times[key] = [time.monotonic(), None]
        try:
            return boot()
        except VmTimeout as e:
            tail = "\n".join(e.console.splitlines()[-CONSOLE_TAIL:])
            raise VmTimeout(f"{e}\nthe guest console's last {CONSOLE_TAIL} lines:\n{tail}", e.console) from None
        finally:
            _times[key][1] = time.monotonic()
    return run


def _lowest_priority() -> None:
    os.nice(NICE - os.nice(0))  # this worker thread only (Linux: nice is per thread)


def timeout(seconds: float) -> float:
    """A guest's time limit, allowing for the guests beside it."""
    return seconds * TIMEOUT_FACTOR


def submit(key: tuple, boot: Callable[[], object]) -> Future:
    """Start ``boot`` (once per ``key``) on the pool; its future."""
    global _pool
    with _lock:
        f = _boots.get(key)
        if f is None:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=JOBS, thread_name_prefix="guest", initializer=_lowest_priority)
            f = _boots[key] = _pool.submit(_timed(key, boot))
        return f


def result(key: tuple, boot: Callable[[], object]):
    """The outcome of the boot ``key``, starting it if nothing has: its
    return value, or the skip/failure it raised, raised again here."""
    return submit(key, boot).result()


def start(boots: list[tuple[float, tuple, Callable[[], object]]]) -> None:
    """Start every ``(estimated seconds, key, boot)``, longest first, so the
    two workers finish close together. The session's guest timeline
    counts from here (the first VM test)."""
    global _t0
    _t0 = time.monotonic()
    for _, key, boot in sorted(boots, key=lambda b: -b[0]):
        submit(key, boot)


def note(key: tuple, started: float, ended: float) -> None:
    """A boot that ran outside the pool (a timed test's, in its own thread),
    for timeline()."""
    _times[key] = [started, ended]


def timeline() -> list[str]:
    """A line per guest boot of the session: when it started and ended
    (seconds from the session's start) and how long it took, in start order."""
    rows = []
    for key, (a, b) in sorted(_times.items(), key=lambda kv: kv[1][0]):
        end = f"{b - _t0:7.0f}" if b is not None else "running"
        took = f"{b - a:6.0f} s" if b is not None else ""
        rows.append(f"{'/'.join(map(str, key)):<32} {a - _t0:7.0f} {end} {took}")
    return rows


def shutdown() -> None:
    """Wait for the boots already running and drop the ones not started (the
    session is over: nothing will read them)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
