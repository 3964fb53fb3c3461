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
# Roles the tier uses where the kernel has them and runs without: role ->
# what goes unwatched without it (doctor says so; the tracer notes it).
OPTIONAL_ROLES = {
    "step": "an open()'s last component is unwatched (open_last_lookups() calls step_into() "
            "itself, not walk_component())",
}


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


def optional_role_gaps(symbols: Mapping[str, str | None], refused: Mapping[str, str] | None = None) -> list[str]:
    """What the fentry/kprobe tier leaves unwatched on this kernel: one line per optional role it lacks."""
    out = []
    for role, unwatched in OPTIONAL_ROLES.items():
        if not symbols.get(role):
            out.append(f"no {role} role symbol: {unwatched}")
        elif role in (refused or {}):
            out.append(f"{role} role not attachable ({refused[role]}): {unwatched}")
    return out
