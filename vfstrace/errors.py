"""Errors that end a command with one clear line and a non-zero exit.

Anything the user can cause (bad input, missing privilege, a kernel without
a symbol) is raised as a VfstraceError; the CLI prints its message on one
line and exits with its code. Tracebacks are for bugs only.
"""


class VfstraceError(Exception):
    """A failure to report to the user as one line."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class TraceFormatError(VfstraceError):
    """A file is not a readable vfstrace trace (corrupt, truncated, wrong version)."""

    exit_code = 3


class TierUnavailable(VfstraceError):
    """No tracing tier can run on this kernel, or the requested one cannot."""

    exit_code = 4


class PrivilegeError(VfstraceError):
    """Root (CAP_BPF/CAP_SYS_ADMIN) is needed."""

    exit_code = 5


class MissingDependency(VfstraceError):
    """A system package (bcc, bpftrace, qemu) is missing."""

    exit_code = 6
