"""Race-window widening: hold the workload's RCU walks at the race's window.

Kept as one module because fexit and kretprobe widening share the arming,
the cgroup filter and the detach rules.

The lookup/prune race needs a prune to land between an RCU walk finding a
dentry (sampling its d_seq) and re-checking that sample. Left alone the
window is a few hundred nanoseconds and the race takes weeks of `cp -a`.
:class:`Widener` attaches bpf/widen.c as a kretprobe on the RCU dcache
lookup and busy-waits a bounded time there, only for the workload's own
tasks (a cgroup v2 id and/or a set of tgids), so a concurrent prune of the
same dentry overlaps the window far more often while the rest of the system
runs untouched.

Kprobes only: a tracepoint cannot sit inside a path walk. Where the kernel
has fentry the program is an fexit program (a BPF trampoline, far cheaper
for the tasks that are not delayed than a kretprobe's breakpoint and return
trampoline); elsewhere a kretprobe. It attaches disarmed and is armed
apart, so a comparison phase can carry the probe without the delay. The
delay reaches the program as a -D number (bounded here to 1 ms), never as
text.

This module imports bcc only inside :meth:`Widener.load`, so its pure parts
(delay parsing, the workload cgroup) are usable without bcc or root.
"""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bpf import INCLUDE, program
from vfstrace.errors import PrivilegeError, TierUnavailable, VfstraceError
from vfstrace.events import counter_names

MAX_DELAY_NS = 1_000_000  # 1 ms: longer holds an RCU read section too long
MIN_DELAY_NS = 1_000
DEFAULT_DELAY_NS = 200_000  # raised the retried share ~1% -> ~20% in a 6.12 guest
# bpf_ktime_get_ns() costs >= ~25 ns per call even on fast hardware, so this
# many iterations cover the delay; the verifier walks every iteration (about
# 16 instructions each), so 40000 stays well inside its 1M-instruction limit.
NS_PER_ITER_FLOOR = 25
MAX_ITERS = 40_000

# The site of the delay, best first. __d_lookup_rcu() runs only in RCU-walk
# mode and returns the dentry whose d_seq the walk just sampled; every
# re-check of that sample comes after it returns (in 3.0's do_lookup the
# d_inode read + read_seqcount_retry the seed fix added; since 6.1's
# "namei: stash the sampled ->d_seq into nameidata" in step_into). It is a
# global function of fs/dcache.c called from fs/namei.c, so it is never
# inlined into its caller. The fallback is the lookup role (lookup_fast /
# do_lookup), whose return is still before step_into's re-check.
PREFERRED_SITE = "__d_lookup_rcu"

COUNTERS = counter_names("widen.c")
SAMPLE_ONE = 65536  # VFS_WIDEN_SAMPLE for "hold every lookup"
_C_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


def parse_delay(text) -> int:
    """'200us', '0.2ms', '150000ns' -> nanoseconds, within [1 µs, 1 ms].

    A unit is required: a bare number would be ambiguous.
    """
    if isinstance(text, int):
        ns = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s)\s*", str(text))
        if not m:
            raise VfstraceError(f"--widen {text!r}: give a duration with a unit, e.g. 200us or 0.5ms")
        ns = int(round(float(m.group(1)) * _UNITS[m.group(2)]))
    if not MIN_DELAY_NS <= ns <= MAX_DELAY_NS:
        raise VfstraceError(
            f"--widen {text!r}: the delay must be between 1us and 1ms (it holds an RCU read section)"
        )
    return ns


def parse_share(text) -> float:
    """'0.1', '10%' -> the share of target lookups to hold, in (0, 1].

    Holding every lookup of a `cp -a` (tens per file) stalls the copy; a
    share keeps it copying while still widening many of its lookups.
    """
    if isinstance(text, (int, float)):
        share = float(text)
    else:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%?)", str(text).strip())
        share = (float(m.group(1)) / (100.0 if m.group(2) else 1.0)) if m else -1.0
    if not 0.0 < share <= 1.0:
        raise VfstraceError(f"--widen-share {text!r}: give a share in (0, 1] or a percentage, e.g. 0.1 or 10%")
    return share


def sample_of(share: float) -> int:
    """The share as the program's VFS_WIDEN_SAMPLE (out of 65536), at least 1."""
    return max(1, min(SAMPLE_ONE, int(round(float(share) * SAMPLE_ONE))))


def max_iters(delay_ns: int) -> int:
    return max(256, min(MAX_ITERS, delay_ns // NS_PER_ITER_FLOOR + 1))


def _mounts() -> list[tuple[str, str]]:
    out = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    out.append((parts[1].replace("\\040", " "), parts[2]))
    except OSError:
        pass
    return out


class WorkloadCgroup:
    """A fresh cgroup v2 holding the workload, so widening can select it by id.

    Children of a task in the cgroup are born in it, so `cp -a` and every
    helper a workload forks are covered without tracking pids. The cgroup id
    BPF reads (bpf_get_current_cgroup_id(), kernel >= 4.18) is the inode
    number of the cgroup's directory since v5.5 (Tejun Heo, "kernfs: use
    64bit inos if ino_t is 64bit"); before that the id also carried a
    generation number, so on older kernels :attr:`id` is None and callers
    fall back to a tgid set.
    """

    def __init__(self, name: str = "vfstrace-widen", parent: str | os.PathLike | None = None):
        """``parent``: an existing cgroup v2 directory to nest in (e.g. a
        memory-limited one the workload must stay under); default the root."""
        if os.geteuid() != 0:
            raise PrivilegeError("a workload cgroup needs root")
        self._mounted = None
        root = next((mnt for mnt, fs in _mounts() if fs == "cgroup2"), None)
        if parent is not None:
            root = str(parent)
        elif root is None:
            root = tempfile.mkdtemp(prefix="vfstrace-cgroup2-")
            rc = _mount_cgroup2(root)
            if rc != 0:
                os.rmdir(root)
                raise VfstraceError("no cgroup v2 mount and mounting one failed: cannot isolate the workload")
            self._mounted = root
        self.root = Path(root)
        self.path = self.root / f"{name}-{os.getpid()}"
        n = 0
        while self.path.exists():
            n += 1
            self.path = self.root / f"{name}-{os.getpid()}-{n}"
        try:
            self.path.mkdir()
        except OSError as e:
            self._unmount()
            raise VfstraceError(f"cannot create cgroup {self.path}: {e.strerror}") from None
        self.id = self.path.stat().st_ino if _kernel_at_least(5, 5) else None

    def add(self, pid: int) -> None:
        """Move ``pid`` (and so everything it forks from now on) into the cgroup."""
        try:
            (self.path / "cgroup.procs").write_text(f"{int(pid)}\n")
        except OSError as e:
            raise VfstraceError(f"cannot move pid {pid} into {self.path}: {e.strerror}") from None

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def close(self) -> None:
        """Move leftover tasks to the parent cgroup and remove the directory."""
        if self.path is None:
            return
        for pid in self.pids():
            try:
                (self.root / "cgroup.procs").write_text(f"{pid}\n")
            except OSError:
                pass
        for _ in range(50):
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)  # EBUSY: exiting tasks still counted
        self.path = None
        self._unmount()

    def _unmount(self):
        if self._mounted:
            import subprocess

            subprocess.run(["umount", self._mounted], capture_output=True)
            try:
                os.rmdir(self._mounted)
            except OSError:
                pass
            self._mounted = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _mount_cgroup2(target: str) -> int:
    import subprocess

    return subprocess.run(["mount", "-t", "cgroup2", "none", target], capture_output=True).returncode


def _kernel_at_least(major: int, minor: int) -> bool:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (major, minor)


def choose_site(choice, kallsyms_text: str | None = None) -> tuple[str, bool]:
    """(symbol, rcu_only): where to hold the walk on this kernel.

    ``rcu_only`` is True when the site runs only in RCU-walk mode.
    """
    from vfstrace.kernel import symbols

    if kallsyms_text is None:
        try:
            kallsyms_text = Path("/proc/kallsyms").read_text()
        except OSError:
            kallsyms_text = ""
    ks = symbols.KernelSymbols(symbols.parse_kallsyms(kallsyms_text))
    names = ([PREFERRED_SITE] if PREFERRED_SITE in ks.text else []) + ks.clones(PREFERRED_SITE)
    if names:
        return names[0], True
    lookup = (getattr(choice, "symbols", None) or {}).get("lookup")
    if not lookup:
        raise TierUnavailable("widening needs the lookup role (lookup_fast) or __d_lookup_rcu; neither is in kallsyms")
    return lookup, False


@dataclass
class WidenStats:
    site: str
    rcu_only: bool
    delay_ns: int
    seen: int = 0
    delayed: int = 0
    delay_ns_total: int = 0
    capped: int = 0
    no_dentry: int = 0
    unarmed: int = 0
    mode: str = "kprobe"
    share: float = 1.0
    not_sampled: int = 0

    @property
    def mean_delay_ns(self) -> float:
        return self.delay_ns_total / self.delayed if self.delayed else 0.0

    def to_dict(self) -> dict:
        return {
            "site": self.site,
            "rcu_only": self.rcu_only,
            "delay_ns": self.delay_ns,
            "target_lookups": self.seen,
            "delayed": self.delayed,
            "delay_ns_total": self.delay_ns_total,
            "mean_delay_ns": round(self.mean_delay_ns, 1),
            "capped": self.capped,
            "no_dentry": self.no_dentry,
            "unarmed": self.unarmed,
            "mode": self.mode,
            "share": self.share,
            "not_sampled": self.not_sampled,
        }


class Widener:
    """Compile, attach, arm and account bpf/widen.c; ``close()`` removes it.

    ``compile()`` loads the program (in fexit mode BCC attaches it there and
    then, disarmed); ``attach(arm=...)`` attaches where that is still to do
    and sets the arm switch; ``arm()`` flips it. Nothing is delayed until
    armed.
    """

    def __init__(self, choice, delay_ns: int = DEFAULT_DELAY_NS, *, cgroup_id: int | None = None,
                 tgids=(), site: str | None = None, rcu_only: bool | None = None, mode: str | None = None,
                 btf=None, share: float = 1.0):
        tier = getattr(choice, "tier", None)
        if tier not in ("kprobe", "fentry"):
            raise TierUnavailable(
                f"widening needs kprobes (a probe inside the path walk); this kernel offers only the {tier} tier"
            )
        self.choice = choice
        self.delay_ns = parse_delay(int(delay_ns))
        self.share = parse_share(share)
        self.cgroup_id = int(cgroup_id) if cgroup_id else 0
        self.tgids = {int(t) for t in tgids}
        if site is None:
            site, rcu_only = choose_site(choice)
        self.site, self.rcu_only = site, bool(rcu_only)
        self.nargs = None
        self.mode, self.mode_note = self._choose_mode(tier, mode, btf)
        self.bpf = None
        self.attached = False

    def _choose_mode(self, tier, mode, btf) -> tuple[str, str | None]:
        """fexit where the tier is fentry and BTF has the site as a FUNC, else kretprobe."""
        if mode is None:
            mode = "fentry" if tier == "fentry" else "kprobe"
        if mode not in ("kprobe", "fentry"):
            raise VfstraceError(f"widen mode {mode!r}: kprobe or fentry")
        if mode == "kprobe":
            return "kprobe", None
        if not _C_IDENT.fullmatch(self.site):
            # a compiler clone (.constprop.0) has no BTF FUNC to attach to
            return "kprobe", f"{self.site} is a compiler clone, not in BTF: kretprobe used"
        if btf is None:
            from tracers.btf import Btf

            try:
                btf = Btf.from_file()
            except VfstraceError as e:
                return "kprobe", f"no kernel BTF ({str(e).splitlines()[0]}): kretprobe used"
        self.nargs = btf.func_nargs(self.site)
        if self.nargs is None:
            return "kprobe", f"BTF has no function {self.site}: kretprobe used"
        return "fentry", None

    def cflags(self) -> list[str]:
        flags = [
            INCLUDE,
            f"-DVFS_WIDEN_DELAY_NS={self.delay_ns}ULL",
            f"-DVFS_WIDEN_MAX_ITERS={max_iters(self.delay_ns)}",
        ]
        if self.cgroup_id:
            flags.append(f"-DVFS_FILTER_CGROUP={self.cgroup_id}ULL")
        flags += ["-DVFS_WIDEN_NEED_RESULT=1", f"-DVFS_WIDEN_SAMPLE={sample_of(self.share)}"]
        if self.mode == "fentry":
            # site checked against _C_IDENT above: an identifier, never free text
            flags += ["-DVFS_WIDEN_MODE=2", f"-DVFS_WIDEN_FN={self.site}", f"-DVFS_WIDEN_NARGS={int(self.nargs)}"]
        else:
            flags.append("-DVFS_WIDEN_MODE=1")
        return flags

    @property
    def how(self) -> str:
        """'fexit on X' / 'kretprobe on X', for messages."""
        return f"{'fexit' if self.mode == 'fentry' else 'kretprobe'} on {self.site}"

    def program_text(self) -> str:
        head = "/* vfstrace widen; compiled with: */\n"
        head += "".join(f"#define {f[2:].replace('=', ' ', 1)}\n" for f in self.cflags() if f.startswith("-D"))
        return head + program("widen.c")

    def load(self) -> None:
        """Compile, attach and arm: from here the target tasks are delayed."""
        self.compile()
        self.attach()

    def compile(self) -> None:
        """Compile and create the maps; nothing is delayed until armed.

        Kept apart so a caller can pay BCC's compile time (about 35 s under
        emulation) before its measurement starts. In fexit mode BCC attaches
        the program here (disarmed).
        """
        from tracers import import_bcc

        bcc = import_bcc()
        if os.geteuid() != 0:
            raise PrivilegeError("widening needs root (it attaches a kprobe)")
        if self.bpf is not None:
            return
        from tracers import BuildError, build_bpf
        from tracers.headers import prepare

        # The same headers the tracers find (kheaders unpacked once per boot):
        # before this, libbcc's own /tmp unpack failed inside a memory cgroup.
        prepare(f"the widening program ({self.how})", choice=self.choice)
        try:
            self.bpf = build_bpf(bcc, program("widen.c"), self.cflags())
        except BuildError as e:
            raise VfstraceError(f"widen program ({self.how}) did not load: {e}") from None
        self.attached = self.mode == "fentry"
        for t in self.tgids:
            self._put(t)

    def attach(self, arm: bool = True) -> None:
        if self.bpf is None:
            self.compile()
        if not self.attached:
            try:
                # No maxactive: libbcc then attaches through the kprobe PMU,
                # which needs no named tracefs event ("r_<func>_bcc_<pid>",
                # a name the tracer's own kretprobe on this function would
                # hold where it falls back to kprobe_events: EEXIST) and
                # which the kernel removes with the process.
                self.bpf.attach_kretprobe(event=self.site, fn_name="widen_ret")
            except Exception as e:
                self.close()
                raise TierUnavailable(
                    f"widening needs kprobes: cannot attach a kretprobe on {self.site}: {str(e).splitlines()[0]}"
                ) from None
            self.attached = True
        self.arm(arm)

    def arm(self, on: bool = True) -> None:
        """Hold the target's lookups (True) or only count them (False)."""
        if self.bpf is None:
            raise VfstraceError("widen program not loaded")
        tbl = self.bpf["armed"]
        tbl[ctypes.c_int(0)] = ctypes.c_uint32(1 if on else 0)

    def _put(self, tgid: int) -> None:
        tbl = self.bpf["targets"]
        tbl[tbl.Key(int(tgid))] = tbl.Leaf(1)

    def add_tgid(self, tgid: int) -> None:
        self.tgids.add(int(tgid))
        if self.bpf is not None:
            self._put(tgid)

    def stats(self) -> WidenStats:
        s = WidenStats(self.site, self.rcu_only, self.delay_ns, mode=self.mode, share=self.share)
        if self.bpf is None:
            return s
        from tracers.stream import counter_totals

        vals = counter_totals(self.bpf["counts"], COUNTERS)
        s.seen, s.delayed, s.delay_ns_total = vals["seen"], vals["delayed"], vals["delay_ns"]
        s.capped, s.no_dentry, s.unarmed = vals["capped"], vals["no_dentry"], vals["unarmed"]
        s.not_sampled = vals["not_sampled"]
        return s

    def close(self) -> None:
        if self.bpf is not None:
            try:
                self._close_probe_fds()
                self.bpf.cleanup()
            finally:
                self.bpf = None
                self.attached = False

    def _close_probe_fds(self) -> None:
        """Detach by closing our own perf event fds.

        BCC's cleanup() would then also write "-:kprobes/r_<func>_bcc_<pid>"
        to kprobe_events: a PMU kprobe has no such event, but on a kernel
        without the kprobe PMU the tracer of the same process owns one by
        that name, and removing it fails with EBUSY while in use. An fexit
        link is closed by cleanup() itself.
        """
        from bcc import libbcc

        for ev_name, fns in list(self.bpf.kprobe_fds.items()):
            for fn_name, fd in list(fns.items()):
                libbcc.lib.bpf_close_perf_event_fd(fd)
                self.bpf._del_kprobe_fd(ev_name, fn_name)
            del self.bpf.kprobe_fds[ev_name]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def verify_only(delay_ns: int = DEFAULT_DELAY_NS, cgroup_id: int = 1, share: float = 1.0) -> int:
    """Compile and load (verifier included) without attaching; returns the program fd.

    Proves the bounded loop is accepted on a kernel that cannot attach
    kprobes (the verifier still runs for kprobe programs there).
    """
    from tracers import import_bcc

    bcc = import_bcc()
    w = Widener.__new__(Widener)
    w.delay_ns, w.cgroup_id, w.mode = parse_delay(int(delay_ns)), int(cgroup_id), "kprobe"
    w.share = parse_share(share)
    from tracers.headers import prepare

    prepare("the widening program", fallback_ok=True, why_fallback="for verification only")
    b = bcc.BPF(text=program("widen.c").encode(), cflags=w.cflags())
    try:
        return b.load_func("widen_ret", bcc.BPF.KPROBE).fd
    finally:
        b.cleanup()
