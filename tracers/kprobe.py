"""The kprobe / fentry tier: BCC programs on the functions of the race itself.

Kept as one module because symbol choice, BTF offsets and the program's
defines are one decision per kernel: the tier's whole kernel edge.

bpf/kprobe.c probes the path walk (walk_component, lookup_fast,
__d_lookup_rcu, the d_seq re-check sites, step_into for the lookups that
do not go through walk_component: an open()'s last component) and dentry teardown
(__dentry_kill, the unhash site, dentry_unlink_inode, __d_free). This module
turns a :class:`vfstrace.doctor.TierChoice` into that program:

* symbols come from ``choice.symbols`` (resolved per kernel, compiler clones
  included); the few helpers doctor does not name (__d_lookup_rcu, __d_free,
  __d_free_external) are looked up in /proc/kallsyms here;
* every struct offset is read from the running kernel's BTF
  (:mod:`tracers.btf`) and passed as a -D number: ``struct nameidata`` is
  private to fs/namei.c, so no header describes it;
* per probe, fentry/fexit when the tier is ``fentry`` and BTF has a FUNC of
  that exact name; a compiler clone (``lookup_fast.constprop.0``) has none,
  so that probe falls back to a kprobe and :attr:`KprobeTracer.notes` says so;
* events travel through tracers/stream.py (BPF ring buffer on 5.8+, perf
  buffer otherwise); failed submissions are counted per CPU in the kernel;
* kretprobes attach through the kprobe PMU with the kernel's default pool of
  instances where that pool is max(10, 2 * CPUs); where it is
  num_possible_cpus() (before v6.1, without CONFIG_PREEMPTION: 5.10) they
  ask for more through named kprobe_events (tracers/kprobe_events.py
  kretprobe_maxactive), and ``kretprobe_missed`` counts the returns lost.

:class:`EmptyKprobeTracer` is the same plan running bpf/empty.c: empty
programs on exactly these attach points, the floor bench/probe_cost.py
measures the tier's own cost against. It lives here because "the same
attach points" is this module's planning, not a copy of it.
"""

from __future__ import annotations

import logging
import os
import re

from bpf import INCLUDE, program
from tracers import Tracer, compiler_output, failure_line, import_bcc
from tracers.btf import Btf
from vfstrace.errors import TierUnavailable, VfstraceError
from vfstrace.kernel.tiers import probe_tier_blockers
from vfstrace.events import BPF_EVENT_DTYPE, Op, counter_names

log = logging.getLogger("vfstrace.tracers.kprobe")

SOURCE = "kprobe.c"

# Names of the counts[] slots of bpf/kprobe.c (generated from vfstrace.events.KprobeCounter).
COUNTERS = counter_names(SOURCE)
C_LOST = COUNTERS.index("lost")

# d_seq re-check sites: (op, returns bool, second argument is the dentry).
# try_to_unlazy()/try_to_unlazy_next() return bool (true: still valid) since
# v5.12 (Al Viro, "namei: change calling conventions for
# try_to_unlazy_next()"); their predecessors unlazy_walk()/unlazy_child()
# return 0 or -ECHILD.
RECHECK_OPS = {
    "try_to_unlazy": (Op.TRY_TO_UNLAZY, True, False),
    "try_to_unlazy_next": (Op.TRY_TO_UNLAZY_NEXT, True, True),
    "unlazy_walk": (Op.UNLAZY_WALK, False, False),
    "unlazy_child": (Op.TRY_TO_UNLAZY_NEXT, False, True),
}
RECHECK_SLOTS = 4

# BTF offsets the program needs: -D name -> (struct, member path).
OFFSETS = {
    "OFF_ND_PATH_DENTRY": ("nameidata", "path.dentry"),
    "OFF_ND_LAST_NAME": ("nameidata", "last.name"),
    "OFF_ND_FLAGS": ("nameidata", "flags"),
    "OFF_D_SEQ": ("dentry", "d_seq"),
    "OFF_D_PARENT": ("dentry", "d_parent"),
    "OFF_D_NAME_NAME": ("dentry", "d_name.name"),
    "OFF_D_NAME_LEN": ("dentry", "d_name.len"),
    "OFF_D_INODE": ("dentry", "d_inode"),
    "OFF_D_LOCKREF_COUNT": ("dentry", "d_lockref.count"),
    "OFF_D_RCU": ("dentry", "d_u.d_rcu"),
    "OFF_I_INO": ("inode", "i_ino"),
}

# Where step_into() finds the d_seq its dentry was sampled with. Al Viro's
# v6.0 namei series moved it into nameidata ("namei: stash the sampled
# ->d_seq into nameidata", 03fa86e9f79d) and dropped the arguments
# ("step_into(): lose inode argument", a4f5b52167a8): 5.10 has
# step_into(nd, flags, dentry, inode, seq), 6.x step_into(nd, flags, dentry)
# with the sample in nd->next_seq. -D VFS_STEP_SEQ: the argument number
# holding it, 0 for nd->next_seq.
STEP_SEQ_ARG = {5: 5, 3: 0}

_SYMBOL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.(constprop|isra|part|cold)\.\d+)*$")
_MODE = {"kprobe": 1, "fentry": 2}


def _kallsyms_text() -> dict[str, int]:
    from vfstrace.kernel.symbols import parse_kallsyms

    try:
        with open("/proc/kallsyms") as f:
            return parse_kallsyms(f.read())
    except OSError:
        return {}


def _find_symbol(ks: dict[str, int], base: str) -> str | None:
    """``base`` itself, else its first whole-function compiler clone."""
    if base in ks:
        return base
    clones = sorted(n for n in ks if n.startswith(base + ".") and re.fullmatch(
        re.escape(base) + r"(\.(constprop|isra)\.\d+)+", n))
    return clones[0] if clones else None


class Probe:
    """One attach point: role, kernel symbol, and how it attaches."""

    def __init__(self, role: str, symbol: str, define: str, entry: str | None, ret: str | None,
                 reads_args: bool):
        if not _SYMBOL_RE.match(symbol):
            raise VfstraceError(f"refusing kernel symbol {symbol!r} for role {role}: not a function name")
        self.role = role
        self.symbol = symbol
        self.define = define  # MODE_<define>, FN_<define>, NARGS_<define>
        self.entry = entry  # kprobe-mode function name for the entry probe
        self.ret = ret  # kprobe-mode function name for the return probe
        self.reads_args = reads_args
        self.mode = "kprobe"
        self.nargs = 0
        self.fentry_entry = not define.startswith("RC")  # RCU, RC0..RC3: fexit only

    def describe(self) -> list[str]:
        out = []
        if self.mode == "fentry":
            # fexit sees the arguments too: the entry program exists only where it does work
            if self.entry and self.fentry_entry:
                out.append(f"fentry:{self.symbol}")
            if self.ret:
                out.append(f"fexit:{self.symbol}")
        else:
            if self.entry:
                out.append(f"kprobe:{self.symbol}")
            if self.ret:
                out.append(f"kretprobe:{self.symbol}")
        return [f"{s} ({self.role})" for s in out]


class KprobeTracer(Tracer):
    """fentry/kprobe tier; ``choice.tier`` picks fentry or kprobe."""

    source = SOURCE
    source_dir = None  # bpf/ of this tree; bench/probe_cost.py --ab points one tracer elsewhere

    def __init__(self, options, choice=None):
        super().__init__(options, choice)
        if choice is None:
            raise TierUnavailable("the kprobe tier needs a tier choice from `vfstrace doctor` (choose_tier)")
        self.tier = choice.tier
        self.release = choice.kernel_release or os.uname().release
        self.notes: list[str] = []
        self.step_seq_arg = 0
        self.bpf = None
        self._stream = None
        self._btf = None
        self._defines: list[str] | None = None
        self._ks: dict[str, int] | None = None
        self._maxactive: int | None = None
        self.probes = self._plan()

    # -- planning ----------------------------------------------------------

    def _plan(self) -> list[Probe]:
        syms = self.choice.symbols or {}
        blockers = probe_tier_blockers(syms)
        if blockers:
            raise TierUnavailable(f"the {self.tier} tier cannot run on kernel {self.release}: "
                                  f"{'; '.join(blockers)} (see `vfstrace doctor`)")
        probes = [
            Probe("walk", syms["walk"], "WALK", "vt_walk_enter", "vt_walk_return", True),
            Probe("lookup", syms["lookup"], "LOOKUP", None, "vt_lookup_return", False),
            Probe("prune", syms["prune"], "PRUNE", "vt_prune", None, True),
            Probe("unhash", syms["unhash"], "UNHASH", "vt_unhash", None, True),
            Probe("iput", syms["iput"], "IPUT", "vt_iput", None, True),
        ]
        extras = [("rcu_lookup", "__d_lookup_rcu", "RCU", "vt_rcu_enter", "vt_rcu_return"),
                  ("d_free", "__d_free", "DFREE", "vt_dfree", None),
                  ("d_free", "__d_free_external", "DFREE_EXT", "vt_dfree_ext", None),
                  ("ns_unlink", "d_delete", "DELETE", "vt_delete", None),
                  ("ns_rename", "d_move", "MOVE", "vt_move", None)]
        for role, base, define, entry, ret in extras:
            sym = _find_symbol(self._kallsyms(), base)
            if sym is None:
                self.notes.append(f"{base} not in /proc/kallsyms: no {role} events from it")
                continue
            probes.append(Probe(role, sym, define, entry, ret, True))
        if syms.get("step"):
            probes.append(Probe("step", syms["step"], "STEP", "vt_step_enter", "vt_step_return", True))
        else:
            from vfstrace.kernel.tiers import OPTIONAL_ROLES

            self.notes.append(f"step_into not found: {OPTIONAL_ROLES['step']}")
        slot = 0
        for sym in syms.get("recheck") or []:
            base = sym.split(".", 1)[0]
            if base not in RECHECK_OPS:
                continue  # complete_walk/step_into: per-component hot paths, not re-check results
            if slot == RECHECK_SLOTS:
                self.notes.append(f"re-check site {sym} not probed: only {RECHECK_SLOTS} slots")
                continue
            probes.append(Probe("recheck", sym, f"RC{slot}", f"vt_rc{slot}_enter", f"vt_rc{slot}_return", True))
            slot += 1
        for p in list(probes):
            if p.role == "step" and ".isra." in p.symbol:
                from vfstrace.kernel.tiers import OPTIONAL_ROLES

                probes.remove(p)  # optional: the tier runs without it
                self.notes.append(f"step role resolved to {p.symbol}, an .isra clone whose arguments "
                                  f"cannot be read reliably: not probed: {OPTIONAL_ROLES['step']}")
                continue
            # An .isra clone may have had its parameters rewritten (scalar
            # replacement of aggregates): argument registers are not the
            # source's parameters. .constprop only drops constant ones, and
            # the pointers read here (nameidata, dentry, rcu_head) are never
            # constants.
            if p.reads_args and ".isra." in p.symbol:
                raise TierUnavailable(
                    f"{p.role} role resolved to {p.symbol} on kernel {self.release}: an .isra clone, "
                    "whose arguments cannot be read reliably"
                )
        return probes

    def _kallsyms(self) -> dict[str, int]:
        if self._ks is None:
            self._ks = _kallsyms_text()
        return self._ks

    def kretprobe_pool(self) -> int:
        """maxactive each kretprobe of the plan asks for; 0: the kernel's default (through the PMU).

        Where the kernel's default is num_possible_cpus(), a walk that
        sleeps inside walk_component() (lookup_slow() waiting for the
        filesystem) or step_into() holds one of that many instances, and
        every other walk's return is lost while they are held (a 2-CPU
        5.10 guest, 2 instances: the kprobe tier missed 38 of 89 spurious
        ENOENTs, the fentry tier, whose fexit has no pool, none of 112).
        """
        if self._maxactive is None:
            self.cflags()  # the modes: fentry probes have no pool
            from tracers.kprobe_events import (PREEMPTION_SYMBOL, kretprobe_default_instances,
                                               kretprobe_maxactive, possible_cpus)

            self._maxactive = 0
            if any(p.mode == "kprobe" and p.ret for p in self.probes):
                cpus, pre = possible_cpus(), PREEMPTION_SYMBOL in self._kallsyms()
                self._maxactive = kretprobe_maxactive(self.release, cpus, pre)
                if self._maxactive:
                    default = kretprobe_default_instances(self.release, cpus, pre)
                    self.notes.append(
                        f"kretprobes: kernel {self.release} gives each {default} instance(s) by default "
                        "(num_possible_cpus(): no CONFIG_PREEMPTION, before 3b7ddab8a19a, v6.2 and 6.1.3), "
                        "fewer than the walks that sleep in walk_component/step_into at once; asking for "
                        f"{self._maxactive} through kprobe_events (a recorder killed with SIGKILL leaves "
                        "those events; the next recorder removes them)")
        return self._maxactive

    def _kretprobe_events(self) -> set[str]:
        """The names in kprobe_events of this tracer's kretprobes (where they have names: kretprobe_pool() > 0)."""
        from tracers.kprobe_events import bcc_event_base

        return {f"{bcc_event_base('ret', p.symbol)}_bcc_{os.getpid()}" for p in self.probes
                if p.mode == "kprobe" and p.ret}

    def kretprobe_missed(self) -> int | None:
        """Returns this tracer's kretprobes lost (kprobe_profile's nmissed), or None where the kernel
        does not say (PMU kretprobes have no kprobe_profile line)."""
        if not self._maxactive or self.bpf is None:
            return None
        from tracers.kprobe_events import profile_missed
        from tracers.tracepoint import tracefs

        try:
            text = (tracefs() / "kprobe_profile").read_text()
        except (OSError, VfstraceError):
            return None
        missed = profile_missed(text, self._kretprobe_events())
        return sum(missed.values()) if missed else None

    def _offsets(self) -> dict[str, int]:
        if self._btf is None:
            self._btf = Btf.from_file()
        return {name: self._btf.offsetof(s, m) for name, (s, m) in OFFSETS.items()}

    def _step_signature(self) -> None:
        """Which step_into() this kernel has (STEP_SEQ_ARG); drop the probe if neither."""
        p = next((p for p in self.probes if p.define == "STEP"), None)
        if p is None:
            return
        nargs = self._btf.func_nargs(p.symbol.split(".", 1)[0])
        next_seq = self._btf.has_member("nameidata", "next_seq")
        if nargs is None:  # no BTF FUNC (kprobe on a clone): the same series added next_seq
            nargs = 3 if next_seq else 5
        if nargs not in STEP_SEQ_ARG or (STEP_SEQ_ARG[nargs] == 0) != next_seq:
            from vfstrace.kernel.tiers import OPTIONAL_ROLES

            self.probes.remove(p)
            self.notes.append(f"{p.symbol} has {nargs} parameters and nameidata "
                              f"{'has' if next_seq else 'lacks'} next_seq: a signature vfstrace does not "
                              f"know, not probed: {OPTIONAL_ROLES['step']}")
            return
        self.step_seq_arg = STEP_SEQ_ARG[nargs]

    def _choose_modes(self) -> None:
        want_fentry = self.tier == "fentry"
        if want_fentry and not self.choice.kfunc:
            raise TierUnavailable(f"fentry is not supported by kernel {self.release}")
        for p in self.probes:
            p.mode = "kprobe"
            if not want_fentry:
                continue
            nargs = self._btf.func_nargs(p.symbol) if "." not in p.symbol else None
            if nargs is None:
                self.notes.append(
                    f"{p.symbol} ({p.role}): no BTF function of that name (compiler clone or "
                    "not in BTF), so fentry cannot attach: kprobe used for it"
                )
                continue
            if p.define == "RCU" and self._kernel_version() < (5, 17):
                # fexit on __d_lookup_rcu reads its `unsigned *seqp` argument;
                # before v5.17 ("bpf: Allow access to int pointer arguments in
                # tracing programs", Jiri Olsa) the verifier refuses a
                # pointer to a non-struct in a tracing context ("arg2 type
                # INT is not a struct"), as 5.10 does.
                self.notes.append(f"{p.symbol} ({p.role}): fexit cannot read its seqp argument before 5.17: kprobe used for it")
                continue
            p.mode = "fentry"
            p.nargs = nargs

    def _kernel_version(self) -> tuple[int, int]:
        import re as _re

        m = _re.match(r"(\d+)\.(\d+)", self.release or "")
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    def ring_pages(self) -> int:
        """Pages of the shared BPF ring buffer: options.ring_pages per CPU, at least 32 MiB.

        A drop_caches burst frees tens of thousands of dentries in well
        under a second, and each prune yields PRUNE, UNHASH, IPUT, D_FREE.
        """
        want = max(self.options.ring_pages * (os.cpu_count() or 1), 8192)
        return 1 << (want - 1).bit_length()

    def cflags(self) -> list[str]:
        """-D defines (numbers and kernel symbol names only) for bpf/kprobe.c."""
        if self._defines is not None:
            return self._defines
        offs = self._offsets()
        self._step_signature()
        self._choose_modes()
        # Options named as every program names them (bpf/common.h): VFS_*,
        # and only the ones that are on; unset modes default to 0 (absent).
        d: dict[str, object] = {"VFS_EV_RING_PAGES": self.ring_pages()}
        if not self.choice.ringbuf:
            d["VFS_USE_PERF"] = 1
        if self.options.pid:
            d["VFS_FILTER_PID"] = int(self.options.pid)
        if self.options.comm:
            words = self.options.comm_words()
            d.update(VFS_FILTER_COMM=1, VFS_COMM0=f"{words[0]}ULL", VFS_COMM1=f"{words[1]}ULL")
        d.update({f"VFS_{k}": v for k, v in offs.items()})
        slots = self.options.extra.get("task_slots")
        if slots is not None:
            # bpf/kprobe.c task_walks: walk states kept in tid-indexed slots. Fewer
            # slots make tasks share them (tests use 1 to drive every walk through
            # the claim and the hash fallback); a number, never text, reaches the C.
            if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= 1 << 20 \
                    or slots & (slots - 1):
                raise VfstraceError(f"task_slots must be a power of two from 1 to {1 << 20}, not {slots!r}")
            d["VFS_TASK_SLOTS"] = slots
        if any(p.define == "STEP" for p in self.probes):
            d["VFS_STEP_SEQ"] = self.step_seq_arg
        if self._btf.has_member("nameidata", "next_seq"):
            # step_into's d_seq sample on 6.x, and where lookup_fast() has
            # __d_lookup_rcu() put its own (bpf/kprobe.c VFS_SEQ_AT_LOOKUP).
            d["VFS_OFF_ND_NEXT_SEQ"] = self._btf.offsetof("nameidata", "next_seq")
        for p in self.probes:
            d[f"VFS_MODE_{p.define}"] = _MODE[p.mode]
            if p.mode == "fentry":
                d[f"VFS_FN_{p.define}"] = p.symbol  # checked against _SYMBOL_RE, no '.' for fentry
                d[f"VFS_NARGS_{p.define}"] = p.nargs
            if p.role == "recheck":
                op, is_bool, has_dentry = RECHECK_OPS[p.symbol.split(".", 1)[0]]
                d[f"VFS_{p.define}_OP"] = int(op)
                d[f"VFS_{p.define}_BOOL"] = int(is_bool)
                d[f"VFS_{p.define}_DENTRY"] = int(has_dentry)
        self._defines = [f"-D{k}={v}" for k, v in d.items()] + [INCLUDE]
        return self._defines

    def program_text(self) -> str:
        """The program as compiled: enum #defines, the -D values as comments, the source."""
        flags = "\n".join(f"/* {f} */" for f in self.cflags())
        return flags + "\n" + program(self.source, self.source_dir)

    # -- compile / load / attach ------------------------------------------

    def _headers_env(self, verify_only: bool) -> None:
        from tracers.headers import prepare

        h = prepare(f"the {self.tier} tier's program", fallback_ok=verify_only, choice=self.choice,
                    why_fallback="for verification only")
        if not h.exact:
            log.warning(
                f"compiling the kprobe program against {h.source} (not {self.release}'s own "
                "headers) for verification only; struct offsets come from BTF, but LOOKUP_RCU and BCC's "
                "includes are those headers' and are not trusted for tracing"
            )

    def compile(self, verify_only: bool = False):
        """Compile bpf/kprobe.c with BCC (fentry programs attach at this point)."""
        bcc = import_bcc()
        self._headers_env(verify_only)
        text = program(self.source, self.source_dir)
        cflags = self.cflags()
        from tracers import BuildError, build_bpf

        try:
            self.bpf = build_bpf(bcc, text, cflags)
        except BuildError as e:
            fent = [p for p in self.probes if p.mode == "fentry"]
            if fent and not verify_only:
                raise TierUnavailable(
                    f"fentry programs did not load/attach on {self.release} "
                    f"({', '.join(p.symbol for p in fent)}): {e}"
                ) from None
            raise VfstraceError(f"BCC could not build the kprobe program for {self.release}: {e}") from None
        return self.bpf

    def kprobe_functions(self) -> list[str]:
        """Names of the kprobe-type programs in the compiled object."""
        out = []
        for p in self.probes:
            if p.mode == "kprobe":
                out += [n for n in (p.entry, p.ret) if n]
        return out

    def verify(self) -> list[str]:
        """Compile and load every kprobe program through the verifier, attaching nothing."""
        bcc = import_bcc()
        self.compile(verify_only=True)
        names = self.kprobe_functions()
        for n in names:
            out: list[str] = []
            try:
                with compiler_output() as out:  # libbcc writes the verifier's log to fd 2
                    self.bpf.load_func(n.encode(), bcc.BPF.KPROBE)
            except Exception as e:
                raise VfstraceError(f"verifier rejected {n}: {failure_line(e, out[0] if out else '')}") from None
        return names

    def load(self) -> None:
        import_bcc()  # one clear line when bcc is missing, before anything else
        if os.geteuid() != 0:
            from vfstrace.errors import PrivilegeError

            raise PrivilegeError("the kprobe tier needs root (CAP_BPF, CAP_PERFMON or CAP_SYS_ADMIN)")
        self.compile()
        self.kretprobe_pool()
        for n in self.notes:
            log.info(f"note: {n}")
        try:
            self._remove_stale_kprobes()
            self._attach_kprobes()
            self._open_stream()
        except BaseException:
            self.close()
            raise

    def _attach_kprobes(self) -> None:
        b = self.bpf
        for p in self.probes:
            if p.mode != "kprobe":
                continue
            if p.entry:
                self._attach(b.attach_kprobe, p, self._kprobe_fn(p.entry))
            if p.ret:
                # No maxactive where the kernel's default pool serves
                # (kretprobe_pool() 0): libbcc then attaches through the
                # kprobe PMU, whose probes the kernel removes with the
                # process (tracers/kprobe_events.py). With one, libbcc
                # writes a named kprobe_events entry.
                self._attach(b.attach_kretprobe, p, self._kprobe_fn(p.ret), ret=True,
                             maxactive=self.kretprobe_pool())

    def _kprobe_fn(self, fn: str) -> str:
        """The program attached where bpf/kprobe.c's ``fn`` goes."""
        return fn

    def kfunc_names(self) -> set[bytes]:
        """BCC's names (kfunc__<fn>, kretfunc__<fn>) of the fentry/fexit programs the plan attaches."""
        out = set()
        for p in self.probes:
            if p.mode == "fentry":
                if p.entry and p.fentry_entry:
                    out.add(f"kfunc__{p.symbol}".encode())
                if p.ret:
                    out.add(f"kretfunc__{p.symbol}".encode())
        return out

    def detach_probes(self) -> None:
        """Detach every probe, keeping the compiled program, its maps and the stream.

        A bench that interleaves traced and untraced rounds would otherwise
        compile the program once per round: minutes under emulation.
        """
        b = self.bpf
        for p in self.probes:
            if p.mode == "kprobe":
                if p.entry:
                    b.detach_kprobe(event=p.symbol.encode())
                if p.ret:
                    b.detach_kretprobe(event=p.symbol.encode())
        for name in list(b.kfunc_entry_fds):
            b.detach_kfunc(fn_name=name)
        for name in list(b.kfunc_exit_fds):
            b.detach_kretfunc(fn_name=name)

    def attach_probes(self) -> None:
        """Attach again what :meth:`detach_probes` detached."""
        b = self.bpf
        self._attach_kprobes()
        for name in sorted(self.kfunc_names()):
            how = b.attach_kfunc if name.startswith(b"kfunc__") else b.attach_kretfunc
            try:
                how(fn_name=name)
            except Exception:
                # A loaded fentry/fexit program could not be attached a
                # second time before "bpf: Allow trampoline re-attach for
                # tracing and lsm programs" (Jiri Olsa, v5.19): its target
                # is dropped at the first attach (5.10 answers ENOENT).
                # Load it again from the compiled object: no recompile.
                fn = b.funcs.pop(name, None)
                if fn is not None:
                    os.close(fn.fd)
                how(fn_name=name)

    def _open_stream(self) -> None:
        b = self.bpf
        from tracers.stream import PerfStream, RingStream

        if self.choice.ringbuf:
            self._stream = RingStream.from_bcc(b["events"], BPF_EVENT_DTYPE, self.ring_pages() * 4096,
                                               drops=b["counts"], drop_index=C_LOST)
        else:
            self._stream = PerfStream(b, "events", BPF_EVENT_DTYPE, page_cnt=self.options.ring_pages,
                                      drops=b["counts"], drop_index=C_LOST)

    def _remove_stale_kprobes(self) -> None:
        """Remove kprobe events a killed recorder left on these functions; say so in one line."""
        from tracers.kprobe_events import bcc_event_base, has_kprobe_pmu, remove_stale
        from tracers.tracepoint import tracefs

        if not has_kprobe_pmu():
            log.info("note: this kernel has no kprobe PMU (before 4.17): kprobes go through "
                     "kprobe_events and outlive a recorder killed with SIGKILL; the next recorder removes them")
        bases = {bcc_event_base(kind, p.symbol) for p in self.probes if p.mode == "kprobe"
                 for kind, fn in (("entry", p.entry), ("ret", p.ret)) if fn}
        try:
            root = tracefs()
        except VfstraceError:
            return
        removed, left = remove_stale(root, bases)
        if removed:
            log.info(f"note: removed {len(removed)} kprobe event(s) left by killed recorders: {', '.join(removed)}")
        if left:
            log.warning(f"stale kprobe event(s) still in use, left: {', '.join(left)}")

    def _attach(self, how, p: Probe, fn: str, ret: bool = False, maxactive: int = 0) -> None:
        try:
            if maxactive:
                how(event=p.symbol.encode(), fn_name=fn.encode(), maxactive=maxactive)
            else:
                how(event=p.symbol.encode(), fn_name=fn.encode())
        except Exception as e:
            raise TierUnavailable(
                f"cannot attach {'kretprobe' if ret else 'kprobe'} to {p.symbol} "
                f"({p.role} role) on kernel {self.release}: {str(e).splitlines()[0]}"
            ) from None

    # -- events --------------------------------------------------------------

    def poll(self, timeout_ms: int = 100):
        """Records only; losses are counters (lost()), turned into LOST rows
        once by vfstrace.recorder.Recorder."""
        if self._stream is None:
            raise VfstraceError("poll() before load()")
        return self._stream.poll(timeout_ms)

    def lost(self) -> dict[int, int]:
        return self._stream.lost() if self._stream is not None else {}

    def ring_fill(self) -> dict[str, float]:
        from tracers.stream import RingStream

        stream = getattr(self, "_stream", None)
        return {"events": stream.fill()} if isinstance(stream, RingStream) else {}

    def counters(self) -> dict[str, int]:
        if self.bpf is None:
            return {}
        from tracers.stream import counter_totals

        out = counter_totals(self.bpf["counts"], COUNTERS)
        missed = self.kretprobe_missed()
        if missed is not None:
            out["kretprobe_missed"] = missed
        return out

    def attached(self) -> list[str]:
        return [s for p in self.probes for s in p.describe()]

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            finally:
                self._stream = None
        if self.bpf is not None:
            b, self.bpf = self.bpf, None
            b.cleanup()


class EmptyKprobeTracer(KprobeTracer):
    """The tier's plan with bpf/empty.c: every probe runs a program that returns at once.

    Same symbols, same kprobe/fentry choice per probe, same attach calls; no
    events and no counters. What vfstrace costs beyond this is what its own
    programs do (bench/probe_cost.py).
    """

    source = "empty.c"

    def _kprobe_fn(self, fn: str) -> str:
        return "vt_empty"

    def kprobe_functions(self) -> list[str]:
        return ["vt_empty"] if any(p.mode == "kprobe" for p in self.probes) else []

    def _open_stream(self) -> None:
        got = set(self.bpf.kfunc_entry_fds) | set(self.bpf.kfunc_exit_fds)
        if got != self.kfunc_names():
            want = sorted(n.decode() for n in self.kfunc_names())
            raise VfstraceError(f"bpf/empty.c attached {sorted(n.decode() for n in got)}, the plan is {want}: "
                                "a probe of bpf/kprobe.c has no empty counterpart")

    def poll(self, timeout_ms: int = 100):
        return []

    def counters(self) -> dict[str, int]:
        return {}
