"""The 6.1-prepatch kernel's own record of its spurious ENOENTs (ground truth).

vfstrace/vm/kbuild/6.1-prepatch.patch makes the reverted step_into() branch
count every -ENOENT whose d_seq re-check would have failed, in the
read-only /proc/sys/fs/prepatch_spurious_enoent, and log each one with
trace_printk (task, process, dentry address, CLOCK_MONOTONIC time, the
caller of step_into(), name).

Only tests and bench/eval_kernel.py read this, to score the detector; no
tracer or correlator may (tests/test_groundtruth.py checks that none names
the tag), or the detector's precision would be measured against itself.
Runs inside a guest of that kernel; on any other kernel :func:`available`
is False and the readers return nothing.
"""

from __future__ import annotations

import dataclasses
import os
import re

TAG = "prepatch_spurious_enoent"
SYSCTL = f"/proc/sys/fs/{TAG}"
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

_LINE = re.compile(
    TAG + r" pid=(?P<tid>\d+) tgid=(?P<pid>\d+) dentry=(?:0x)?(?P<dentry>[0-9a-fA-F]+) "
    r"mono_ns=(?P<ts>\d+)(?: caller=(?P<caller>\S+))? name=(?P<name>.*)$"
)


@dataclasses.dataclass(frozen=True)
class Spurious:
    """One spurious ENOENT as the kernel saw it."""

    tid: int  # the task (kernel pid)
    pid: int  # its process (tgid)
    dentry: int  # struct dentry address, as BPF programs read it
    ts_ns: int  # ktime_get_ns(): CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns()
    name: str  # the last path component
    # step_into's return address, symbolised by tracefs (walk_component, path_openat, ...); while a
    # kretprobe or fexit sits on step_into it names that trampoline instead (arch_rethook_trampoline)
    caller: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def available() -> bool:
    """Whether this kernel keeps the ground truth (it is the 6.1-prepatch build)."""
    return os.path.exists(SYSCTL)


def count() -> int | None:
    """The kernel's running count of spurious ENOENTs, None on kernels without it."""
    try:
        with open(SYSCTL) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _tracefs() -> str | None:
    for d in TRACEFS:
        if os.path.exists(os.path.join(d, "trace")):
            return d
    return None


def parse(text: str) -> list[Spurious]:
    """The spurious ENOENTs in tracefs `trace` text (other lines are ignored)."""
    out = []
    for line in text.splitlines():
        m = _LINE.search(line.rstrip())
        if m:
            out.append(Spurious(int(m["tid"]), int(m["pid"]), int(m["dentry"], 16), int(m["ts"]), m["name"],
                                m["caller"] or ""))
    return out


def clear() -> None:
    """Empty the trace buffer, so a run's ground truth starts with the run."""
    d = _tracefs()
    if d:
        with open(os.path.join(d, "trace"), "w") as f:
            f.write("")


def events() -> list[Spurious]:
    """Every logged spurious ENOENT still in the trace buffer (read without consuming it)."""
    d = _tracefs()
    if not d:
        return []
    with open(os.path.join(d, "trace"), errors="replace") as f:
        return parse(f.read())


def overflowed() -> int:
    """Entries the trace buffer dropped (overrun), summed over CPUs: a short ground truth if > 0."""
    d = _tracefs()
    if not d:
        return 0
    total = 0
    base = os.path.join(d, "per_cpu")
    try:
        cpus = os.listdir(base)
    except OSError:
        return 0
    for c in cpus:
        try:
            with open(os.path.join(base, c, "stats")) as f:
                for line in f:
                    if line.startswith("overrun:"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total


def snapshot() -> dict:
    """Count, events and buffer overruns, as JSON-ready data."""
    ev = events()
    return {"available": available(), "count": count(), "logged": len(ev), "overrun": overflowed(),
            "events": [e.to_dict() for e in ev]}


def match(verdicts, truth, tol_ns: int = 5_000_000):
    """Pair ``race`` verdicts with ground-truth events, one to one.

    ``verdicts``: dicts with tid, dentry, ts_ns (the walk's return). A pair
    needs the same task and dentry and times within ``tol_ns`` (the kernel
    stamps inside step_into, the tracer at the walk's return, microseconds
    apart; the tolerance only absorbs clock reads on different CPUs).
    Returns (pairs, unmatched verdict indexes, unmatched truth indexes).
    """
    by_key: dict[tuple[int, int], list[int]] = {}
    for j, t in enumerate(truth):
        by_key.setdefault((int(t["tid"]), int(t["dentry"])), []).append(j)
    used, pairs, lone = set(), [], []
    for i, v in enumerate(verdicts):
        best = None
        for j in by_key.get((int(v["tid"]), int(v["dentry"])), []):
            if j in used:
                continue
            dt = abs(int(v["ts_ns"]) - int(truth[j]["ts_ns"]))
            if dt <= tol_ns and (best is None or dt < best[1]):
                best = (j, dt)
        if best is None:
            lone.append(i)
        else:
            used.add(best[0])
            pairs.append((i, best[0]))
    return pairs, lone, [j for j in range(len(truth)) if j not in used]
