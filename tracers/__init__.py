"""Probe back-ends (tiers). The only place vfstrace imports bcc.

Every tier implements :class:`Tracer`: ``load()`` compiles and attaches
(so ``--dry-run`` proves both), ``poll()`` drains events as DataFrames in the
schema of vfstrace/events.py, ``close()`` detaches everything. Keeping load
apart from poll is what lets a command fail early with one clear line.
"""

from __future__ import annotations

import abc


class Tracer(abc.ABC):
    tier: str = "?"

    def __init__(self, options, choice=None):
        self.options = options.validate()
        self.choice = choice  # vfstrace.doctor.TierChoice: tier, symbols, reason

    @abc.abstractmethod
    def program_text(self) -> str:
        """The final kernel-side program (what `--ebpf` prints)."""

    @abc.abstractmethod
    def load(self) -> None:
        """Compile, load and attach. Raises VfstraceError with one clear line."""

    @abc.abstractmethod
    def poll(self, timeout_ms: int = 100):
        """Drain pending events; returns a (possibly empty) DataFrame in the event schema."""

    @abc.abstractmethod
    def lost(self) -> dict[int, int]:
        """Events dropped by the kernel so far, per CPU."""

    def counters(self) -> dict[str, int]:
        """In-kernel counters of what was seen but filtered out."""
        return {}

    def attached(self) -> list[str]:
        """Probe points attached (for the trace's metadata)."""
        return []

    @abc.abstractmethod
    def close(self) -> None:
        """Detach every probe and free the program. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def import_bcc():
    """Import bcc, or raise one clear line saying how to get it."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        from vfstrace.errors import MissingDependency

        raise MissingDependency(
            "the bcc Python module is not importable: run `bash scripts/setup.sh` "
            "(installs Debian's python3-bpfcc) and use .venv/bin/vfstrace"
        ) from None
    return bcc


# tier name -> (module, class); modules are imported only when chosen.
TIERS = {
    "fentry": ("tracers.kprobe", "KprobeTracer"),
    "kprobe": ("tracers.kprobe", "KprobeTracer"),
    "tracepoint": ("tracers.tracepoint", "TracepointTracer"),
}


def make_tracer(choice, options) -> Tracer:
    """Build the tracer for a tier chosen by vfstrace.doctor.choose_tier().

    ``choice`` carries ``tier`` (fentry, kprobe or tracepoint) and the
    resolved probe symbols; the tracer reads what it needs from it.
    """
    import importlib

    from vfstrace.errors import TierUnavailable

    try:
        mod, cls = TIERS[choice.tier]
    except KeyError:
        raise TierUnavailable(f"unknown tier {choice.tier!r}") from None
    return getattr(importlib.import_module(mod), cls)(options, choice)
