"""Messages from library code: the ``vfstrace`` logger, set up once by the CLI.

Library code (tracers, kernel checks, the VM harness) never prints: it logs
to ``logging.getLogger("vfstrace.<module>")`` and the command line decides
what reaches the terminal. By default notes and warnings (INFO and up) are
shown, each as one ``vfstrace: ...`` line on stderr; ``vfstrace -v`` adds
DEBUG: the full clang or verifier log of a BPF build that failed, where the
error line itself cites only the line that says why. Used as a library
(``import vfstrace``) nothing is configured here, so Python's own default
applies (warnings only).
"""

from __future__ import annotations

import logging
import sys

LOGGER = "vfstrace"


class _Stderr(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a record is emitted (tests and click swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


class _Format(logging.Formatter):
    def format(self, record):
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"vfstrace: warning: {msg}"
        if record.levelno < logging.INFO:
            return f"vfstrace: debug: {msg}"
        return f"vfstrace: {msg}"


def setup(verbose: int = 0) -> logging.Logger:
    """Route the vfstrace loggers to stderr: INFO and up, DEBUG too with ``verbose``."""
    log = logging.getLogger(LOGGER)
    for h in [h for h in log.handlers if isinstance(h, _Stderr)]:
        log.removeHandler(h)
    h = _Stderr()
    h.setFormatter(_Format())
    log.addHandler(h)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    return log


def verbose() -> bool:
    """Whether -v asked for the full logs (so a message can say where to find them)."""
    return logging.getLogger(LOGGER).isEnabledFor(logging.DEBUG)
