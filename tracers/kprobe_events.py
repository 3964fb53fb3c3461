"""Kprobes that outlive their process, and removing those a dead recorder left.

The kprobe tier attaches through the kernel's kprobe PMU (perf_event_open
with the type in /sys/bus/event_source/devices/kprobe/type, v4.17, commit
e12f03d7031a "perf/core: Implement the 'perf_kprobe' PMU"): such a probe
belongs to its perf event fd, so the kernel removes it when the process
exits, SIGKILL included. libbcc uses the PMU only when a kretprobe asks
for no ``maxactive``; with one (or on a kernel without the PMU) it writes a
named event ``[pr]_<symbol>_bcc_<pid>`` into tracefs' kprobe_events, which
nothing removes after SIGKILL (issue 16: five ``r_*_bcc_*`` events left in
a 6.12 guest by a recorder that asked for maxactive=128).

So before attaching, the tracer removes the named events that a dead
process left on the functions it is about to probe (BCC's own name for
that function and probe type, and a creator pid that no longer exists).
An event still in use answers EBUSY and is left alone.

Kretprobe instances (:func:`kretprobe_maxactive`): a kretprobe takes one
instance from a pool fixed at registration at each entry and gives it back
at the return; a call that finds the pool empty loses its return (the
probe's nmissed). Calls that sleep inside the function hold theirs, so the
pool must cover the tasks inside it at once, not the CPUs: walk_component()
sleeps in lookup_slow() while the filesystem answers, step_into() in a
symlink's ->get_link(). The PMU takes no maxactive: the kernel's default
applies, and on kernels where that default is num_possible_cpus() (2 in a
2-CPU guest) the tier asks for more instances, through a named event, and
reads what its kretprobes missed from kprobe_profile (:func:`profile_missed`).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe/type")
# kprobe_events lines: "r128:kprobes/r_walk_component_bcc_1234 walk_component"
_LINE = re.compile(r"^[pr]\d*:(?P<group>[A-Za-z0-9_.-]+)/(?P<event>[A-Za-z0-9_.]+)\s")
_BCC = re.compile(r"^(?P<base>[pr]_.+)_bcc_(?P<pid>\d+)$")


def has_kprobe_pmu() -> bool:
    return KPROBE_PMU.is_file()


def bcc_event_base(kind: str, symbol: str) -> str:
    """The name libbcc gives a probe before ``_bcc_<pid>`` (bcc/__init__.py attach_k[ret]probe)."""
    return ("r_" if kind == "ret" else "p_") + symbol.replace("+", "_").replace(".", "_")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_events(text: str, bases: set[str], alive=pid_alive) -> list[tuple[str, int]]:
    """``(group/event, pid)`` for each event in kprobe_events ``text`` named
    ``<base>_bcc_<pid>`` with ``base`` in ``bases`` and ``pid`` not alive."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line + " ")
        if not m:
            continue
        b = _BCC.match(m["event"])
        if b and b["base"] in bases and not alive(int(b["pid"])):
            out.append((f"{m['group']}/{m['event']}", int(b["pid"])))
    return out


def remove_stale(root: Path, bases: set[str], alive=pid_alive) -> tuple[list[str], list[str]]:
    """Remove the stale events under tracefs ``root``; (removed, left with the reason)."""
    path = root / "kprobe_events"
    try:
        text = path.read_text()
    except OSError:
        return [], []
    removed, left = [], []
    for name, _pid in stale_events(text, bases, alive):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, f"-:{name}\n".encode())
            finally:
                os.close(fd)
            removed.append(name)
        except OSError as e:
            left.append(f"{name} ({errno.errorcode.get(e.errno, e.errno)})")
    return removed, left


# kretprobe instances ---------------------------------------------------------

# register_kretprobe()'s default pool (maxactive <= 0) is max(10, 2 * possible
# CPUs) on every kernel since 3b7ddab8a19a ("kprobes: kretprobe events missing
# on 2-core KVM guest", wuqiang, v6.2; in 6.1.3 as d465fa2a9add). Before it
# that was the default of CONFIG_PREEMPTION kernels only; without preemption
# (PREEMPT_NONE, PREEMPT_VOLUNTARY: Debian's 5.10, vfstrace's own 5.10 builds)
# it was num_possible_cpus(). The release string cannot tell 6.1.0-6.1.2 from
# 6.1.3 and later (Debian calls every 6.1 kernel "6.1.0-<abi>"): the line counts.
MAXACTIVE_FLOOR_SINCE = (6, 1)
# What the tier asks for where the default is too small: tasks, not CPUs, bound
# the calls in flight, and an instance costs a few dozen bytes.
KRETPROBE_INSTANCES = 128
# trace_kprobe.c refuses a larger maxactive in kprobe_events (KRETPROBE_MAXACTIVE_MAX).
KRETPROBE_MAXACTIVE_MAX = 4096

PREEMPTION_SYMBOL = "preempt_schedule"  # kernel/sched/core.c defines it only under CONFIG_PREEMPTION


def _line(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def kretprobe_default_instances(release: str, possible_cpus: int, preemptible: bool) -> int:
    """The instances the kernel ``release`` gives a kretprobe registered without maxactive (PMU kretprobes)."""
    n = max(1, possible_cpus)
    if preemptible or _line(release) >= MAXACTIVE_FLOOR_SINCE:
        return max(10, 2 * n)
    return n


def kretprobe_maxactive(release: str, possible_cpus: int, preemptible: bool) -> int:
    """maxactive for each kretprobe: 0 where the kernel's default pool is max(10, 2 * CPUs) (attach
    through the PMU, which the kernel cleans up with the process), else the instances to ask for."""
    n = max(1, possible_cpus)
    if kretprobe_default_instances(release, n, preemptible) >= max(10, 2 * n):
        return 0
    return min(max(KRETPROBE_INSTANCES, 2 * n), KRETPROBE_MAXACTIVE_MAX)


def parse_cpu_list(text: str) -> int:
    """How many CPUs a sysfs CPU list names ("0-1", "0,2-3"); 0 if none."""
    n = 0
    for part in text.strip().split(","):
        lo, _, hi = part.strip().partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            n += int(hi or lo) - int(lo) + 1
    return n


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """num_possible_cpus() of the running kernel (os.cpu_count() if sysfs does not say)."""
    try:
        with open(path) as f:
            n = parse_cpu_list(f.read())
    except OSError:
        n = 0
    return n or os.cpu_count() or 1


def profile_missed(text: str, events: set[str]) -> dict[str, int]:
    """nmissed per event of ``events`` (names without group) in tracefs kprobe_profile ``text``
    ("  <event> <nhit> <nmissed>"; a kretprobe's counts the returns its empty pool lost)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in events and parts[2].isdigit():
            out[parts[0]] = int(parts[2])
    return out

