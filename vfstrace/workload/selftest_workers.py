"""selftest's live workload: the stat loop and `cp -a` in the widened cgroup, the pruner outside."""

from __future__ import annotations

import json
import os

from vfstrace.errors import VfstraceError

# --------------------------------------------------------------------------
# the live workload: a stat() loop and `cp -a` in the widened cgroup, the
# drop_caches pruner outside it (delaying the pruner would only slow pruning)

# Each worker is a constant program run as `python3 -c CODE ARG...`: paths
# travel as argv, never spliced into code or a shell. Each prints "ready",
# loops until SIGTERM, then prints one JSON line of what it did.
_WORKER_PRELUDE = r"""
import json, os, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
def done(d):
    sys.stdout.write(json.dumps(d) + "\n"); sys.stdout.flush()
"""

CP_LOOP = _WORKER_PRELUDE + r"""
import shutil, subprocess
src, dst = sys.argv[1], sys.argv[2]
print("ready", flush=True)
copies = errors = 0
while not stop:
    r = subprocess.run(["cp", "-a", src, dst], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    copies += 1
    errors += r.returncode != 0
    shutil.rmtree(dst, ignore_errors=True)
done({"worker": "cp", "src": src, "copies": copies, "cp_errors": errors})
"""

PRUNE_LOOP = _WORKER_PRELUDE + r"""
gap = float(sys.argv[1])
print("ready", flush=True)
drops = 0
while not stop:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    drops += 1
    if gap:
        time.sleep(gap)
done({"worker": "drop_caches", "passes": drops})
"""

# Few files, looked up again and again: a drop_caches pass kills every unused
# dentry, so a file's dentry lives from its re-creation (the next miss) to the
# next pass. With a handful of files the stat loop comes back to each well
# inside that life and finds it in RCU mode; a pass then meets one of its
# lookups inside the window about as often as the loop spends time there
# (its duty cycle: stats/s x window). A long list is looked up too rarely:
# every lookup then misses the dcache.
STAT_FILES = 2
PRUNE_GAP_S = 0.02
# The stat loop (vfstrace/workload/statloop.c) is offered the same pace in both
# phases: one lookup per widening delay, the most a loop holding each of its
# lookups that long could sustain. Unwidened it keeps that pace; widened it
# falls short of it (retries, misses and the guest's other work take their
# share), so the factor between the phases understates the widening rather
# than inflating it. Under emulation (~20 drop_caches passes/s) this gave the
# unwidened phase a few overlaps per minute.
STAT_DUTY = 1.0
MAX_STAT_RATE = 20_000
# The loop looks names up with faccessat(F_OK): the same RCU walk and d_seq
# re-check as stat(), minus ->getattr, which on the VM harness's 9p root is
# a round trip to the host per call and held a stat() loop to ~300/s under
# emulation, too few lookups for the unwidened phase to meet any prune.
STAT_OP = "access"


def stat_rate_for(delay_ns: int) -> float:
    """Lookups per second for a widening of ``delay_ns``: STAT_DUTY of each second held."""
    return float(min(MAX_STAT_RATE, round(STAT_DUTY * 1e9 / max(1, int(delay_ns)))))


def _stat_dir() -> str:
    """A directory of plain files on a filesystem whose dentries can be pruned.

    The host's read-only tree (in the VM: overlayfs over 9p); tmpfs would not
    do, its dentries are pinned.
    """
    for d in ("/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/share/doc"):
        try:
            if sum(1 for e in os.scandir(d) if e.is_file(follow_symlinks=False)) >= 16:
                return d
        except OSError:
            continue
    raise VfstraceError("no directory with plain files to stat (looked in /usr/bin, /usr/lib)")


def _cp_source() -> str:
    for d in ("/usr/share/doc/python3.11", "/usr/share/doc", "/usr/include/linux"):
        if os.path.isdir(d):
            return d
    raise VfstraceError("no source tree for `cp -a` (/usr/share/doc missing)")


class Workload:
    """The selftest's processes; ``stop()`` ends them and returns what each did."""

    def __init__(self, workdir: str, cgroup=None, on_target=None, stat_files: int = STAT_FILES,
                 stat_rate: float = 0.0, stat_argv=None):
        import subprocess
        import sys

        from vfstrace.workload import statloop

        self.procs = []
        self.notice = ""
        py = sys.executable
        if stat_argv is None:
            stat_argv, self.notice = statloop.command(_stat_dir(), stat_files, stat_rate, STAT_OP)
        # (name, argv, widened): only the stat loop is held; `cp -a` and the
        # pruner keep their pace (on a 2-CPU guest a held cp would take the
        # CPU the pruner needs).
        workers = [
            ("stat", list(stat_argv), True),
            ("cp", [py, "-c", CP_LOOP, _cp_source(), os.path.join(workdir, "cp-dst")], False),
        ]
        try:
            for name, argv, widened in workers:
                p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self.procs.append((name, p))
                if widened and cgroup is not None:
                    cgroup.add(p.pid)
                if widened and on_target is not None:
                    on_target(p.pid)
            p = subprocess.Popen([py, "-c", PRUNE_LOOP, str(PRUNE_GAP_S)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
            self.procs.append(("drop_caches", p))
            for name, p in self.procs:
                line = p.stdout.readline()
                if line.strip() != "ready":
                    raise VfstraceError(f"selftest workload {name} did not start (exit {p.poll()})")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict:
        import signal
        import subprocess

        out = {}
        for name, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs:
            try:
                rest, _ = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                rest, _ = p.communicate()
            for line in (rest or "").splitlines():
                try:
                    out[name] = json.loads(line)
                except ValueError:
                    continue
        self.procs = []
        return out
