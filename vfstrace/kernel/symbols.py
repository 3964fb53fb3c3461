"""Resolve the race's roles to the symbols a given kernel really has.

The functions of the lookup/prune race were renamed, split, folded and
cloned across kernel versions, and GCC inlines or clones static functions
(``lookup_fast.constprop.0``). So vfstrace never assumes a name: for each
*role* it tries candidates in order against the running kernel's
/proc/kallsyms (or a fixture captured from one), then checks that the chosen
symbol can take a probe (not on the kprobe blacklist; listed in
available_filter_functions where that file is readable).

Pure: it takes text in and returns data, so it is unit-tested on kallsyms
captured from real kernels (tests/fixtures/kallsyms/).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

# Role -> candidate names, best first. Each fallback says which kernel change
# it follows; the fixtures under tests/fixtures/kallsyms/ are the evidence.
ROLES: dict[str, tuple[str, ...]] = {
    # The per-component step of path walk since the 2.6.38 RCU-walk rework
    # (Nick Piggin's "fs: rcu-walk for path lookup"). A 2025 series inlines it
    # into link_path_walk on some builds: then it is absent from kallsyms and
    # the lookup role carries the walk's outcome.
    "walk": ("walk_component",),
    # do_lookup() was split into lookup_fast()/lookup_slow() in v3.6-v3.7
    # (Miklos Szeredi, "vfs: split do_lookup()").
    "lookup": ("lookup_fast", "do_lookup"),
    # Al Viro split dentry_kill() into dentry_kill() + __dentry_kill() in the
    # v3.15 cycle; from then on the shrinker (shrink_dentry_list) calls
    # __dentry_kill() directly, so it sees every prune while dentry_kill()
    # sees only the dput() path. v6.8 removed dentry_kill() altogether
    # (lock_for_kill()/shrink_kill()). Before the split dentry_kill() is the
    # only site (3.0: the patch's own call chain).
    "prune": ("__dentry_kill", "dentry_kill"),
    # ___d_drop() (unhash without the d_seq barrier) was split out of
    # __d_drop() in v4.17 (Al Viro). __d_drop() is exported, so it is always
    # in kallsyms, but its callers in fs/dcache.c get it inlined: on 5.10 and
    # 6.12 it took no hits during heavy pruning. ___d_drop() is preferred.
    "unhash": ("___d_drop", "__d_drop"),
    # dentry_iput() was folded into dentry_unlink_inode() in v4.8 (Al Viro).
    "iput": ("dentry_unlink_inode", "dentry_iput"),
    # Optional (vfstrace/kernel/tiers.py OPTIONAL_ROLES): the last component
    # of an open() never goes through walk_component(): fs/namei.c
    # open_last_lookups() (do_last() in older kernels) calls lookup_fast()
    # and then step_into() itself, and step_into() is where an RCU walk
    # answers -ENOENT for a negative dentry. A probe on the out-of-line
    # step_into(), reporting only when it runs outside walk_component(), is
    # the walk role for those lookups; without it they are unwatched.
    "step": ("step_into",),
}

# Sites where an RCU walk re-checks a dentry's d_seq and drops to ref-walk.
# unlazy_walk()/unlazy_child() became try_to_unlazy()/try_to_unlazy_next()
# in v5.11/v5.12 (Al Viro, namei calling-convention cleanups).
RECHECK_SITES: tuple[str, ...] = (
    "try_to_unlazy",
    "try_to_unlazy_next",
    "unlazy_walk",
    "unlazy_child",
    "complete_walk",
    "step_into",
)

ALL_ROLES = tuple(ROLES) + ("recheck",)

# GCC clone suffixes that still are the whole function (attachable).
# ".cold" / ".part" bodies are fragments: probing them misses the entry.
_CLONE_RE = re.compile(r"^(?P<base>[A-Za-z0-9_]+)\.(?P<suffix>(?:constprop|isra)\.\d+(?:\.(?:constprop|isra)\.\d+)*)$")
_TEXT_TYPES = frozenset("tTwW")


@dataclass
class KernelSymbols:
    """Function symbols of one kernel, plus what limits probing them."""

    # name -> address, text symbols only
    text: dict[str, int]
    blacklist: frozenset[str] = frozenset()
    # None: available_filter_functions could not be read (e.g. lockdown EPERM)
    filter_functions: frozenset[str] | None = None

    def clones(self, base: str) -> list[str]:
        out = []
        for name in self.text:
            m = _CLONE_RE.match(name)
            if m and m.group("base") == base:
                out.append(name)
        return sorted(out)


@dataclass
class RoleResolution:
    role: str
    symbol: str | None  # the name to attach to (exact or a clone)
    symbols: list[str] = field(default_factory=list)  # every name found for the chosen candidate
    candidates: tuple[str, ...] = ()
    attachable: bool | None = None  # None: unknown (filter list unreadable)
    reason: str = ""

    def to_dict(self):
        d = asdict(self)
        d["candidates"] = list(self.candidates)
        return d


def parse_kallsyms(text: str) -> dict[str, int]:
    """Text symbols of /proc/kallsyms-format text (module symbols dropped)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 3 or parts[1] not in _TEXT_TYPES or len(parts) > 3:
            continue  # 4 fields: a module symbol ("[mod]"): not ours
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        out.setdefault(parts[2], addr)
    return out


def parse_blacklist(text: str) -> frozenset[str]:
    """Names from /sys/kernel/debug/kprobes/blacklist ("0xstart-0xend\\tname")."""
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#"):
            names.add(parts[1])
    return frozenset(names)


def parse_filter_functions(text: str) -> frozenset[str]:
    """Names from tracefs available_filter_functions ("name [module]" lines)."""
    return frozenset(line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _judge(ks: KernelSymbols, names: list[str]) -> tuple[bool | None, str]:
    blocked = [n for n in names if n in ks.blacklist]
    if blocked and len(blocked) == len(names):
        return False, f"{', '.join(blocked)} on the kprobe blacklist"
    if ks.filter_functions is None:
        return None, "in kallsyms; available_filter_functions unreadable, so notrace is not ruled out"
    traceable = [n for n in names if n in ks.filter_functions and n not in ks.blacklist]
    if not traceable:
        return False, f"{', '.join(names)} not in available_filter_functions (notrace)"
    return True, "in kallsyms and available_filter_functions"


def resolve_role(ks: KernelSymbols, role: str) -> RoleResolution:
    cands = ROLES[role]
    for cand in cands:
        names = ([cand] if cand in ks.text else []) + ks.clones(cand)
        if not names:
            continue
        attachable, why = _judge(ks, names)
        clone = "" if names[0] == cand else f" (compiler clone of {cand})"
        return RoleResolution(role, names[0], names, cands, attachable, f"{names[0]}{clone}: {why}")
    return RoleResolution(
        role, None, [], cands, False,
        f"none of {', '.join(cands)} in kallsyms (inlined or absent on this kernel)",
    )


def resolve_recheck(ks: KernelSymbols) -> RoleResolution:
    found = []
    for site in RECHECK_SITES:
        names = ([site] if site in ks.text else []) + ks.clones(site)
        found += [n for n in names if n not in ks.blacklist]
    if not found:
        return RoleResolution("recheck", None, [], RECHECK_SITES, False, "no d_seq re-check site in kallsyms")
    attachable, why = _judge(ks, found)
    return RoleResolution("recheck", found[0], found, RECHECK_SITES, attachable, f"{', '.join(found)}: {why}")


def resolve(ks: KernelSymbols) -> dict[str, RoleResolution]:
    """Every role of the race resolved against one kernel."""
    out = {role: resolve_role(ks, role) for role in ROLES}
    out["recheck"] = resolve_recheck(ks)
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def running_kernel_symbols(tracefs: str = "/sys/kernel/tracing", debugfs: str = "/sys/kernel/debug") -> KernelSymbols:
    """The running kernel's symbols (root needed for real addresses)."""
    text = _read("/proc/kallsyms") or ""
    bl = _read(f"{debugfs}/kprobes/blacklist")
    ff = _read(f"{tracefs}/available_filter_functions")
    return KernelSymbols(
        text=parse_kallsyms(text),
        blacklist=parse_blacklist(bl) if bl else frozenset(),
        filter_functions=parse_filter_functions(ff) if ff is not None else None,
    )


def load_fixture(directory) -> KernelSymbols:
    """Symbols captured from a real kernel (tests/fixtures/kallsyms/<release>/)."""
    from pathlib import Path

    d = Path(directory)
    ff = d / "filter_functions.txt"
    bl = d / "kprobe_blacklist.txt"
    return KernelSymbols(
        text=parse_kallsyms((d / "kallsyms.txt").read_text()),
        blacklist=parse_blacklist(bl.read_text()) if bl.exists() else frozenset(),
        filter_functions=parse_filter_functions(ff.read_text()) if ff.exists() else None,
    )
