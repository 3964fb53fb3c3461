"""Whether a function-level tier (fentry, kprobe) has what it attaches to.

`doctor` (vfstrace/kernel/doctor.py) says whether the tier can run and the
tracer (tracers/kprobe.py) refuses to plan without it; both ask
:func:`probe_tier_blockers`, so doctor cannot promise a tier that the
tracer then refuses.
"""

from __future__ import annotations

from collections.abc import Mapping

# The roles bpf/kprobe.c attaches to, all five needed for a walk-level
# verdict: the walk and its lookup (what the walk found), and the prune
# with its two steps the race is about (the unhash that bumps d_seq, the
# inode release that makes the dentry negative).
PROBE_TIER_ROLES = ("walk", "lookup", "prune", "unhash", "iput")


def probe_tier_blockers(symbols: Mapping[str, str | None], refused: Mapping[str, str] | None = None) -> list[str]:
    """Why the fentry/kprobe tier cannot run with these role symbols ([] when it can).

    ``symbols`` maps a role to the kernel symbol it resolved to (None or
    missing: not found); ``refused`` maps a role whose symbol the kernel
    will not let a probe attach to (kprobe blacklist, notrace) to the reason.
    """
    why = []
    missing = [r for r in PROBE_TIER_ROLES if not symbols.get(r)]
    if missing:
        why.append("roles not found: " + ", ".join(missing))
    blocked = [f"{r} ({refused[r]})" for r in PROBE_TIER_ROLES if symbols.get(r) and r in (refused or {})]
    if blocked:
        why.append("not attachable: " + "; ".join(blocked))
    return why
