"""Time limits that follow how fast a guest actually runs.

A guest under software emulation (TCG) runs 10-30 times slower than the
host, and how much slower depends on what else the host runs: a second
guest, a kernel build, an unrelated busy core. A limit in fixed seconds is
then either so long that a hung guest wastes an hour, or short enough that
a busy host turns a healthy run red.

So a limit here is a *budget in quiet-guest seconds*: the seconds the work
would take on a guest of the reference machine kind with nothing beside it.
Every few seconds the guest times a small fixed probe (interpreter and
system-call work, what vfstrace's own steps spend their time on); the probe's
time against its quiet reference is the guest's current slowdown, and a wall
interval costs the budget ``interval / slowdown``. A guest running at half
speed takes twice the wall time before its limit, a hung guest (no progress,
or a probe that never returns) still meets it.

The same accounting serves the host, which reads the probe times from the
guest's heartbeat file in the results share (boot.py), and the checks
inside a guest, which time the probe themselves (``run``).

Standard library only: the guest runner (guest/guest_run.py) loads this
file by path under the host's /usr/bin/python3.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

# The probe's time in a quiet guest of vfstrace's 6.1 kernel (2 vCPUs, TCG,
# the harness's CPU model) on the reference machine kind, a 2-core x86-64
# host: 34.5 ms, the minimum of 30 probes with light load beside it, rounded
# down. A faster machine's guest measures less and is charged wall time
# (slowdown never below 1).
QUIET_PROBE_S = 0.030
# A probe's slowdown is capped, so that a guest whose probe stalls for a
# moment (a vCPU descheduled for seconds) cannot stretch a budget without
# bound: at worst a budget lasts this many times its seconds of wall time.
MAX_SLOWDOWN = 20.0
HEARTBEAT_S = 5.0


def probe() -> float:
    """Seconds of a small fixed piece of work (Python bytecode and stat calls)."""
    t0 = time.perf_counter()
    acc = 0
    for i in range(60_000):
        acc += i * i
    for _ in range(600):
        try:
            os.stat("/")
        except OSError:
            pass
    return time.perf_counter() - t0


def slowdown(probe_s: float) -> float:
    """How many times slower than a quiet reference guest this probe ran (1 to MAX_SLOWDOWN)."""
    return min(MAX_SLOWDOWN, max(1.0, probe_s / QUIET_PROBE_S))


class Budget:
    """Quiet-guest seconds, spent at the rate the guest runs."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.spent = 0.0
        self.wall = 0.0
        self.worst = 1.0  # the largest slowdown charged, for the messages

    def charge(self, wall_s: float, slow: float) -> None:
        slow = min(MAX_SLOWDOWN, max(1.0, slow))
        self.wall += wall_s
        self.spent += wall_s / slow
        self.worst = max(self.worst, slow)

    def over(self) -> bool:
        return self.spent >= self.seconds

    def describe(self) -> str:
        return (f"{self.seconds:.0f} quiet-guest s spent in {self.wall:.0f} s of wall time "
                f"(slowdown up to {self.worst:.1f}x)")


def run(argv, budget_s: float, poll_s: float = HEARTBEAT_S, **kw) -> subprocess.CompletedProcess:
    """subprocess.run(argv, capture_output=True, text=True) with a paced limit.

    Raises subprocess.TimeoutExpired (its timeout is the wall time used, its
    output what the command printed) once ``budget_s`` quiet-guest seconds
    are spent, after killing the command.
    """
    budget = Budget(budget_s)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", **kw)
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def drain(name):
        for chunk in iter(lambda: getattr(proc, name).read(65536), ""):
            out[name].append(chunk)

    readers = [threading.Thread(target=drain, args=(n,), daemon=True) for n in out]
    for t in readers:
        t.start()
    last = time.monotonic()
    try:
        while True:
            try:
                proc.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                slow = slowdown(probe())
                now = time.monotonic()
                budget.charge(now - last, slow)
                last = now
                if budget.over():
                    proc.kill()
                    proc.wait()
                    for t in readers:
                        t.join(5)
                    raise subprocess.TimeoutExpired(argv, budget.wall, "".join(out["stdout"]),
                                                    "".join(out["stderr"])) from None
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    for t in readers:
        t.join()
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(out["stdout"]), "".join(out["stderr"]))


def heartbeat(path: str, stop: threading.Event, every_s: float = HEARTBEAT_S) -> None:
    """Write ``{"seq", "probe_s", "uptime_s"}`` to ``path`` every ``every_s`` until ``stop`` (the guest's side of boot.py's limit)."""
    seq = 0
    while not stop.is_set():
        seq += 1
        rec = {"seq": seq, "probe_s": round(probe(), 6), "uptime_s": round(time.monotonic(), 1)}
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(rec, f)
            os.replace(tmp, path)
        except OSError:
            pass  # the share went away: the host will see the beat stop
        stop.wait(every_s)


def read_heartbeat(path) -> dict | None:
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int) \
            or not isinstance(rec.get("probe_s"), (int, float)):
        return None
    return rec
