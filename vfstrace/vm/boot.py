"""Booting a guest under qemu and running one command inside."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from vfstrace.vm import pace
from vfstrace.vm.initramfs import build_initramfs
from vfstrace.vm.kernels import (
    GUEST_OUT,
    QEMU,
    STARTED_MARK,
    Kernel,
    VmError,
    VmTimeout,
    _last_line,
    can_boot,
    load_kernel,
)

# --------------------------------------------------------------------------
# run


@dataclasses.dataclass
class VmResult:
    returncode: int
    stdout: str
    stderr: str
    console: str
    duration_s: float  # qemu start to qemu exit
    kernel_release: str  # `uname -r` as the guest reported it
    boot_s: float | None = None  # qemu start to the command starting
    out_dir: Path | None = None
    cpus: int | None = None  # CPUs the guest's command could run on


# Host paths the guest mounts its own filesystems over (see vfstrace/vm/guest/init.sh).
GUEST_MOUNTS = ("/proc", "/sys", "/dev", "/run", GUEST_OUT)


def _hidden_in_guest(path: Path) -> str | None:
    """The guest mount that hides ``path`` from the guest, if any."""
    p = str(Path(path).resolve())
    return next((m for m in GUEST_MOUNTS if p == m or p.startswith(m + "/")), None)


def _guest_links(k: Kernel) -> list[list[str]]:
    """Symlinks made inside the guest so BCC and modprobe find this kernel's files.

    The cache folder is visible inside through the 9p root, so a link to it
    is enough; the headers' own absolute links (build -> /usr/src/...) then
    resolve too.
    """
    links = [[str(k.modules), f"/lib/modules/{k.release}"]]
    for sub in ("usr/src", "usr/lib"):
        d = k.root / sub
        if d.is_dir():
            for e in sorted(d.iterdir()):
                if sub == "usr/src" or e.name.startswith("linux-kbuild-"):
                    links.append([str(e), f"/{sub}/{e.name}"])
    for e in sorted((k.root / "boot").iterdir()):
        links.append([str(e), f"/boot/{e.name}"])
    return links


def _qemu_path(p: Path) -> str:
    return str(p).replace(",", ",,")  # qemu's option syntax doubles commas


# The guest CPU: the x86-64-v2 feature set, not `max`. Under TCG every
# vector instruction is emulated, and with `max` the guest is offered AVX2,
# which glibc's string functions and numpy's kernels then pick: a cold
# `import vfstrace.cli, bcc` took 39.7 s under `max` and 19.7 s under v2 on
# a quiet host, 114 s and 13.5 s on a busy one (a whole 6.12 boot of the VM
# tests: 204 s and 180 s). Debian's amd64 userland assumes only the x86-64
# baseline, and the wheels the guest imports (numpy, pandas, pyarrow) run on
# v2 and choose wider code at run time; the one exception found is DuckDB's
# wheel (SIGILL under v2), which no guest code imports.
GUEST_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt"


def qemu_argv(k: Kernel, initrd: Path, out_dir: Path, mem="2G", cpus=2) -> list[str]:
    return [
        QEMU,
        "-cpu", GUEST_CPU, "-accel", "tcg,thread=multi",
        "-smp", str(int(cpus)), "-m", str(mem),
        "-display", "none", "-monitor", "none", "-serial", "stdio",
        "-no-reboot", "-nic", "none",
        "-kernel", str(k.vmlinuz), "-initrd", str(initrd),
        # panic=-1: a panicking guest reboots at once, and -no-reboot turns
        # that into qemu exiting, so a panic never looks like a hang.
        # tsc=reliable: under TCG the emulated HPET drifts against the TSC
        # when the host is busy, the clocksource watchdog then marks the TSC
        # unstable and the guest falls back to the HPET, whose every read is
        # an emulated MMIO access that serialises the vCPUs (seen as other
        # tasks slowing while a widened task reads the clock in a loop).
        "-append", "console=ttyS0 quiet loglevel=4 panic=-1 tsc=reliable",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={_qemu_path(out_dir)},mount_tag=vmout,security_model=none,multidevs=remap",
    ]


def _guest_env(extra: dict | None) -> dict:
    std = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    path = os.environ.get("PATH", "")
    parts = []
    for p in (path + ":" + std).split(":"):
        if p and p not in parts:
            parts.append(p)
    env = {
        "PATH": ":".join(parts),
        "HOME": "/root",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "VFSTRACE_IN_VM": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("VFSTRACE_STRICT", "VIRTUAL_ENV"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


def run(kernel: str, argv, timeout: float = 900, out_dir=None, mem: str = "2G", cpus: int = 2,
        env: dict | None = None, cwd=None, stream=None) -> VmResult:
    """Boot ``kernel`` and run ``argv`` inside; return its exit code and output.

    ``stream`` gets each console line as it arrives (None: keep quiet).
    ``timeout`` is in quiet-guest seconds (vfstrace/vm/pace.py): a guest
    that the host slows down gets the wall time it needs, a hung one does
    not. Raises VmTimeout when it is spent (qemu killed), VmError if the
    guest stops without reporting a result (a panic, a broken init).
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise VmError("no command given to run in the guest")
    ok, why = can_boot(kernel)
    if not ok:
        raise VmError(why)
    k = load_kernel(kernel)
    hidden = _hidden_in_guest(k.root)
    if hidden:
        raise VmError(
            f"the VM cache {k.root.parent.parent} is under {hidden}, which the guest covers with its own "
            f"filesystem, so its kernel files would be invisible inside: set VFSTRACE_VM_CACHE elsewhere"
        )
    initrd = build_initramfs(k)
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="vfstrace-vm-")
        out = Path(tmp.name)
    else:
        out = Path(out_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
    try:
        return _boot(k, initrd, out, argv, timeout, mem, cpus, env, cwd, stream)
    finally:
        if tmp:
            tmp.cleanup()


# A heartbeat older than this is no evidence of progress: the interval is
# charged at wall rate (a hung kernel, a runner that died).
STALE_BEAT_S = 60.0


def _wait_paced(proc, budget: "pace.Budget", beat_path: Path) -> bool:
    """Wait for qemu while ``budget`` (quiet-guest seconds) lasts; False if it ran out.

    Until the runner's first heartbeat (the kernel booting, init mounting
    the root) and whenever the beat goes stale, time is charged at wall rate;
    otherwise at the slowdown the guest's last probe measured (pace.py).
    """
    last_t = time.monotonic()
    seq, beat_t, slow = None, None, 1.0
    while True:
        left = max(0.5, (budget.seconds - budget.spent))
        try:
            proc.wait(timeout=min(pace.HEARTBEAT_S, left))
            return True
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        rec = pace.read_heartbeat(beat_path)
        if rec is not None and rec["seq"] != seq:
            seq, beat_t, slow = rec["seq"], now, pace.slowdown(float(rec["probe_s"]))
        fresh = beat_t is not None and now - beat_t <= STALE_BEAT_S
        budget.charge(now - last_t, slow if fresh else 1.0)
        last_t = now
        if budget.over():
            return proc.poll() is not None


def _keep_console(meta: Path, text: str) -> None:
    """The whole console beside the results, whatever the outcome: a hung
    guest's last kernel messages (a blocked task's stack, a stall) are its
    only account, and a passing one's warnings show a hang in the making."""
    try:
        (meta / "console.log").write_text(text + "\n")
    except OSError:
        pass


def _boot(k, initrd, out, argv, timeout, mem, cpus, env, cwd, stream) -> VmResult:
    meta = out / ".vm"
    shutil.rmtree(meta, ignore_errors=True)
    meta.mkdir()
    spec = {
        "argv": argv,
        "cwd": str(Path(cwd or os.getcwd()).resolve()),
        "env": _guest_env(env),
        "links": _guest_links(k),
        "out": GUEST_OUT,
        "started_mark": STARTED_MARK,
        # the guest's side of the paced limit: it beats into the share
        "pace": str(Path(pace.__file__).resolve()),
        "heartbeat": f"{GUEST_OUT}/.vm/heartbeat",
    }
    (meta / "spec.json").write_text(json.dumps(spec, indent=1))
    cmd = qemu_argv(k, initrd, out, mem, cpus)
    console: list[str] = []
    started = [None]
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        raise VmError(f"cannot start {QEMU}: {e}") from None

    def pump():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            console.append(line)
            if started[0] is None and STARTED_MARK in line:
                started[0] = time.monotonic() - t0
            if stream:
                stream(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    budget = pace.Budget(timeout)
    try:
        if not _wait_paced(proc, budget, meta / "heartbeat"):
            proc.kill()
            proc.wait()
            reader.join(5)
            text = "\n".join(console)
            _keep_console(meta, text)
            where = (f"its command started {started[0]:.0f} s after boot" if started[0] is not None
                     else "it never started its command (hung while booting)")
            raise VmTimeout(
                f"{k.series} guest ({k.release}) did not finish within its limit, {budget.describe()}, "
                f"and {where}; qemu killed (last console line: {_last_line(text)}; "
                f"console in {meta / 'console.log'})",
                console=text,
            )
    except VmTimeout:
        raise
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    reader.join(5)
    duration = time.monotonic() - t0
    text = "\n".join(console)
    _keep_console(meta, text)
    try:
        res = json.loads((meta / "result.json").read_text())
    except (OSError, ValueError):
        why = "kernel panic" if "Kernel panic" in text else "init or runner failed"
        raise VmError(
            f"{k.series} guest ({k.release}) stopped without a result ({why}; qemu exit {proc.returncode}); "
            f"last console line: {_last_line(text)}"
        ) from None

    def read(name):
        try:
            return (meta / name).read_text(errors="replace")
        except OSError:
            return ""

    cpus_seen = res.get("cpus")
    if isinstance(cpus_seen, int) and cpus_seen < cpus:
        # A kernel that cannot enumerate the CPUs it was given (no ACPI MADT,
        # say) runs everything on one: no prune can then run while a walk
        # does, and a race check on it proves nothing.
        raise VmError(f"{k.series} guest ({k.release}) ran on {cpus_seen} CPU(s) of the {cpus} it was given: "
                      f"its kernel does not bring up the others")
    return VmResult(
        returncode=int(res["returncode"]),
        stdout=read("stdout"),
        stderr=read("stderr"),
        console=text,
        duration_s=round(duration, 2),
        kernel_release=res.get("kernel_release", ""),
        boot_s=round(started[0], 2) if started[0] is not None else None,
        out_dir=out,
        cpus=cpus_seen if isinstance(cpus_seen, int) else None,
    )
