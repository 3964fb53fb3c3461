"""Probe back-ends (tiers). The only place vfstrace imports bcc.

Every tier implements :class:`Tracer`: ``load()`` compiles and attaches
(so ``--dry-run`` proves both), ``poll()`` drains events as DataFrames in the
schema of vfstrace/events.py, ``close()`` detaches everything. Keeping load
apart from poll is what lets a command fail early with one clear line.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import sys
import tempfile

log = logging.getLogger("vfstrace.tracers")


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

    def now_ns(self) -> int:
        """The events' clock now: CLOCK_MONOTONIC, what bpf_ktime_get_ns() reads
        (vfstrace.recorder stamps LOST rows with it)."""
        import time

        return time.monotonic_ns()

    def counters(self) -> dict[str, int]:
        """In-kernel counters of what was seen but filtered out."""
        return {}

    def attached(self) -> list[str]:
        """Probe points attached (for the trace's metadata)."""
        return []

    def ring_fill(self) -> dict[str, float]:
        """How full each BPF ring buffer is now, 0..1, by ring (``events``, ``paths``); read from
        another thread (``watch --metrics``' scrapes). Empty where the tier reads perf buffers,
        which offer no such reading."""
        return {}

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


@contextlib.contextmanager
def compiler_output():
    """Keep clang's diagnostics from the terminal while BCC compiles.

    libbcc's clang writes straight to file descriptor 2, so Python's
    redirect_stderr does not catch it; the kernel's own headers give a
    screenful of warnings on 6.12 (percpu address spaces, __noendbr) that
    say nothing about vfstrace's programs. They go to a temporary file;
    the caller gets its text (``box[0]``) to cite when the build fails.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    box: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box.append(tmp.read().decode(errors="replace"))


class BuildError(Exception):
    """BCC could not compile, load or attach a program; the message is one
    line: BCC's own, then clang's or the verifier's reason in parentheses."""


def failure_line(e: Exception, output: str) -> str:
    """One line for a failed build or load: BCC's message, then the line of
    clang's or the verifier's ``output`` that says why.

    The whole output (a verifier log runs to thousands of lines) is logged
    at DEBUG, which ``vfstrace -v`` shows; without -v the line says so.
    """
    from vfstrace.log import verbose

    why = (str(e).splitlines() or [type(e).__name__])[0]
    err = first_error(output)
    if output.strip():
        log.debug("the full compiler and verifier output:\n%s", output.rstrip())
    hint = "; `vfstrace -v` shows the full log" if output.strip() and not verbose() else ""
    return why + (f" ({err})" if err else "") + hint


def build_bpf(bcc, text: str, cflags: list[str]):
    """``bcc.BPF(text, cflags)`` with clang's output kept off the terminal;
    :class:`BuildError` (one line) when it fails."""
    cc: list[str] = []
    try:
        with compiler_output() as cc:
            return bcc.BPF(text=text.encode(), cflags=cflags)
    except Exception as e:  # libbcc raises bare Exception on compile/load/attach failure
        raise BuildError(failure_line(e, cc[0] if cc else "")) from None


def first_error(text: str) -> str:
    """The line of BCC's output that says why a build failed, or ''.

    Clang's first 'error:' line; failing that (a verifier refusal, whose
    log ends with its reason) the last non-empty line.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        if "error:" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


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
