"""What the running kernel allows, each answer from asking the kernel itself.

bpf() is tried by creating a map, kprobes by opening a real kprobe perf
event on a harmless function, fentry by loading and attaching a tracing
program; tracefs and securityfs are mounted where they are missing.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

from vfstrace.errors import TierUnavailable

TRACEFS = "/sys/kernel/tracing"
DEBUGFS = "/sys/kernel/debug"
SECURITYFS = "/sys/kernel/security"

EXIT_NO_TIER = TierUnavailable.exit_code

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_BPF = 321  # x86_64
_SYS_PERF_EVENT_OPEN = 298
_BPF_MAP_CREATE = 0
_BPF_MAP_TYPE_ARRAY = 2
_BPF_MAP_TYPE_RINGBUF = 27


def _bpf_map_create(map_type: int, key: int, value: int, entries: int) -> tuple[bool, str]:
    attr = (ctypes.c_uint32 * 32)()
    attr[0], attr[1], attr[2], attr[3] = map_type, key, value, entries
    _libc.syscall.restype = ctypes.c_long
    fd = _libc.syscall(_SYS_BPF, _BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return False, os.strerror(err)
    os.close(fd)
    return True, "map created"


def _kprobe_pmu_type() -> int | None:
    try:
        return int(Path("/sys/bus/event_source/devices/kprobe/type").read_text())
    except (OSError, ValueError):
        return None


def _try_kprobe_attach(func: str = "vfs_getattr") -> tuple[bool, str]:
    """Open (and close) a real kprobe perf event: the attach path BCC uses."""
    pmu = _kprobe_pmu_type()
    if pmu is None:
        return False, "no kprobe PMU (/sys/bus/event_source/devices/kprobe): CONFIG_KPROBES/CONFIG_KPROBE_EVENTS not set"

    class PerfEventAttr(ctypes.Structure):
        _fields_ = [
            ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
            ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
            ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
            ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
            ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64),
            ("branch_sample_type", ctypes.c_uint64), ("sample_regs_user", ctypes.c_uint64),
            ("sample_stack_user", ctypes.c_uint32), ("clockid", ctypes.c_int32),
            ("sample_regs_intr", ctypes.c_uint64), ("aux_watermark", ctypes.c_uint32),
            ("sample_max_stack", ctypes.c_uint16), ("reserved", ctypes.c_uint16),
        ]

    name = ctypes.create_string_buffer(func.encode())
    attr = PerfEventAttr()
    attr.type = pmu
    attr.size = ctypes.sizeof(PerfEventAttr)
    attr.config1 = ctypes.cast(name, ctypes.c_void_p).value
    fd = _libc.syscall(_SYS_PERF_EVENT_OPEN, ctypes.byref(attr), -1, 0, -1, 8)
    if fd < 0:
        return False, f"kprobe on {func} refused: {os.strerror(ctypes.get_errno())}"
    os.close(fd)
    return True, f"a kprobe on {func} attached and detached"


_BPF_PROG_LOAD = 5
_BPF_RAW_TRACEPOINT_OPEN = 17
_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_FENTRY = 24


def _try_fentry_attach(func: str = "vfs_getattr") -> tuple[bool | None, str]:
    """Load and attach a real (empty) fentry program on ``func``.

    bpftrace's --info and bcc's support_kfunc() only look for features or
    symbols: on this project's 6.18 host bcc says yes while the kernel
    refuses tracing programs, and bpftrace 0.17 says no on 5.10 where fentry
    works. Loading a two-instruction BPF_PROG_TYPE_TRACING program against
    the function's BTF id and attaching it (BPF_RAW_TRACEPOINT_OPEN, which
    takes fentry programs since v5.5) is the answer the kernel itself gives.
    """
    from tracers.btf import FUNC, Btf, BtfError  # pure Python (no bcc), imported only when asked
    try:
        btf_id = Btf.from_file()._by_name.get((FUNC, func))
    except BtfError as e:
        return False, f"no usable kernel BTF ({e})"
    if btf_id is None:
        return None, f"unknown ({func} has no BTF FUNC)"
    insns = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0; exit
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    import struct as _struct

    _struct.pack_into("<IIQQ", attr, 0, _BPF_PROG_TYPE_TRACING, 2, ctypes.addressof(ibuf), ctypes.addressof(lic))
    _struct.pack_into("<I", attr, 68, _BPF_TRACE_FENTRY)  # expected_attach_type
    _struct.pack_into("<I", attr, 108, btf_id)  # attach_btf_id
    _libc.syscall.restype = ctypes.c_long
    prog = _libc.syscall(_SYS_BPF, _BPF_PROG_LOAD, attr, 128)
    if prog < 0:
        return False, f"fentry program load refused: {os.strerror(ctypes.get_errno())}"
    try:
        attr2 = ctypes.create_string_buffer(128)
        _struct.pack_into("<QI", attr2, 0, 0, prog)
        link = _libc.syscall(_SYS_BPF, _BPF_RAW_TRACEPOINT_OPEN, attr2, 128)
        if link < 0:
            return False, f"fentry attach to {func} refused: {os.strerror(ctypes.get_errno())}"
        os.close(link)
    finally:
        os.close(prog)
    return True, f"an fentry program on {func} loaded, attached and detached"


def _mount(fstype: str, target: str) -> bool:
    r = subprocess.run(["mount", "-t", fstype, "nodev" if fstype != "securityfs" else "none", target],
                       capture_output=True, text=True)
    return r.returncode == 0


def _ensure_mounted(fstype: str, target: str, probe: str, notes: list[str]) -> bool:
    if os.path.exists(os.path.join(target, probe)):
        return True
    if os.path.isdir(target) and _mount(fstype, target):
        notes.append(f"mounted {fstype} on {target}")
        return os.path.exists(os.path.join(target, probe))
    return False


def _kernel_config(release: str) -> dict[str, str]:
    for p in (f"/boot/config-{release}", "/proc/config.gz"):
        try:
            if p.endswith(".gz"):
                import gzip

                text = gzip.open(p, "rt").read()
            else:
                text = Path(p).read_text()
        except OSError:
            continue
        return dict(re.findall(r"^(CONFIG_\w+)=(.*)$", text, re.M))
    return {}


def find_headers(release: str) -> tuple[str | None, str]:
    """Kernel headers BCC can compile against: (path, exact|fallback|none)."""
    for p in (f"/lib/modules/{release}/build", f"/lib/modules/{release}/source"):
        if os.path.isdir(os.path.join(p, "include")):
            return os.path.realpath(p), "exact"
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return "/sys/kernel/kheaders.tar.xz", "exact"
    cands = sorted(Path("/usr/src").glob("linux-headers-*-amd64"), key=lambda p: p.name)
    cands = [c for c in cands if (c / "include").is_dir() or (c / "Makefile").exists()]
    if cands:
        return str(cands[-1]), "fallback"
    return None, "none"


def _bpftrace_info() -> dict[str, str]:
    exe = shutil.which("bpftrace")
    if not exe:
        return {}
    try:
        # bpftrace prints its feature report on stderr.
        r = subprocess.run([exe, "--info"], capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(re.findall(r"^\s*([\w ]+?):\s*(\S.*)$", out, re.M))


def _bcc_importable() -> tuple[bool, str]:
    try:
        import bcc  # noqa: F401  (probe only; vfstrace itself never needs it)
    except ImportError:
        return False, "python module bcc missing: run `bash scripts/setup.sh` (Debian python3-bpfcc)"
    return True, f"bcc {getattr(bcc, '__version__', '?')} importable"


def _tracepoints_present() -> tuple[bool, str]:
    need = ["syscalls/sys_enter_openat", "syscalls/sys_exit_openat", "syscalls/sys_enter_newfstatat",
            "kmem/kmem_cache_free", "vmscan/mm_shrink_slab_start"]
    missing = [t for t in need if not os.path.isdir(f"{TRACEFS}/events/{t}")]
    if missing:
        return False, f"missing tracepoints: {', '.join(missing)}"
    return True, "syscall, kmem and vmscan tracepoints present"
