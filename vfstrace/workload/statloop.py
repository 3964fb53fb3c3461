"""The selftest's stat() loop: vfstrace/workload/statloop.c, compiled on first use.

Under qemu TCG a Python stat() loop manages only ~100 calls/s, too few for a
drop_caches pass to ever find one of its lookups between the dcache lookup
and the d_seq re-check without widening, so the unwidened baseline of a
selftest would read 0. The C loop does tens of thousands per second.

It is built with the system's C compiler (``cc -O2``) into a cache
directory keyed by the source's hash, once; without a compiler the Python
loop (same arguments, same JSON line at the end) stands in, and
:func:`command` says so. Paths travel as argv, never through a shell.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("statloop.c")

# Same contract as statloop.c: DIR NFILES RATE [stat|access|open|stat+open]; "ready"; SIGTERM -> one JSON line.
PY_LOOP = r"""
import json, os, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
d, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
op = sys.argv[4] if len(sys.argv) > 4 else "stat"
fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
names = sorted(e.name for e in os.scandir(fd) if e.is_file(follow_symlinks=False))[:n]
print("ready", flush=True)
stats = missing = 0
t0 = time.monotonic()
while not stop:
    for nm in names:
        try:
            if op == "access":
                if not os.access(nm, os.F_OK, dir_fd=fd):
                    missing += 1
            elif op == "open" or (op == "stat+open" and (stats // len(names)) % 2):
                os.close(os.open(nm, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd))
            else:
                os.stat(nm, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            missing += 1
        stats += 1
    if rate > 0:
        ahead = t0 + stats / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
secs = time.monotonic() - t0
print(json.dumps({"worker": "stat", "impl": "python", "op": op, "dir": d, "files": len(names), "stats": stats,
                  "enoent": missing, "rate": rate, "seconds": round(secs, 3),
                  "stats_per_s": round(stats / secs, 1) if secs > 0 else 0.0}), flush=True)
"""


def cache_dirs() -> list[Path]:
    """Where a built loop may live, first found or first writable wins."""
    if os.environ.get("VFSTRACE_CACHE"):  # set: the only place
        return [Path(os.environ["VFSTRACE_CACHE"])]
    out = []
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    out.append(Path(xdg) / "vfstrace")
    out.append(Path(tempfile.gettempdir()) / f"vfstrace-{os.geteuid()}")
    return out


def _binary_name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return f"statloop-{digest}"


def find() -> Path | None:
    """An already built loop for this source, if any cache holds one."""
    name = _binary_name()
    for d in cache_dirs():
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def build() -> tuple[Path | None, str]:
    """(path of the built loop or None, why not). Builds at most once per source."""
    found = find()
    if found:
        return found, ""
    cc = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None, "no C compiler (cc) found"
    name = _binary_name()
    why = "no writable cache directory"
    for d in cache_dirs():
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=name + ".", dir=d)
            os.close(fd)
        except OSError:
            continue
        try:
            r = subprocess.run([cc, "-O2", "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                why = f"{cc} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
                os.unlink(tmp)
                return None, why
            os.chmod(tmp, 0o755)
            os.replace(tmp, d / name)  # atomic: a concurrent builder never sees half a binary
            return d / name, ""
        except (OSError, subprocess.TimeoutExpired) as e:
            why = f"{cc}: {e}"
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return None, why


OPS = ("stat", "access", "open", "stat+open")


def command(directory: str, files: int, rate: float, op: str = "stat") -> tuple[list[str], str]:
    """(argv of the loop, a notice when it is the slow Python fallback, else '').

    ``op`` "access" walks each name with faccessat(F_OK): the same lookup as
    stat() without the filesystem's getattr (a host round trip on 9p);
    "open" opens and closes it, so the last component is looked up by
    open_last_lookups() instead of walk_component(); "stat+open" takes
    turns, a pass over the names each.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}")
    path, why = build()
    args = [str(directory), str(int(files)), f"{float(rate):g}", op]
    if path is not None:
        return [str(path), *args], ""
    return [sys.executable, "-c", PY_LOOP, *args], (
        f"stat loop in Python ({why}): under emulation it may be too slow for the unwidened phase to see overlaps"
    )


def run_in_cgroups(argv: list[str], cgroups, seconds: float) -> list[dict]:
    """One loop per cgroup (each moved in before it starts looking names
    up), side by side for ``seconds``; each loop's own JSON report."""
    import json
    import subprocess
    import time

    procs = []
    try:
        for cg in cgroups:
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            cg.add(p.pid)
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"lookup loop {argv[0]} did not start")
        time.sleep(seconds)
    finally:
        for p in procs:
            p.terminate()
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


if __name__ == "__main__":  # prebuild: python -m vfstrace.workload.statloop
    p, why = build()
    print(p if p else f"not built: {why}")
    sys.exit(0 if p else 1)
