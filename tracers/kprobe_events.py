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
