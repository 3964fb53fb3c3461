"""What the user asked to trace, as typed values.

Filters reach kernel programs only as numbers (pid, comm bytes packed into
integers, prefix lengths) through -D defines or BPF maps; user text is never
pasted into C source. :meth:`TraceOptions.validate` rejects anything that
cannot be represented that way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import click

from vfstrace.errors import VfstraceError
from vfstrace.events import COMM_LEN, PATH_LEN

# A month: longer is a typo, and a duration also becomes poll deadlines and
# child timeouts, which overflow long before 1e308 seconds.
MAX_SECONDS = 30 * 24 * 3600.0


class Duration(click.ParamType):
    """Seconds as a finite float in [min, max]: every option that takes a duration uses it.

    ``float()`` accepts "nan", "inf" and "1e400" (= inf); a run told to last
    nan seconds never ends (every comparison with nan is false), so they are
    refused here, as one ``vfstrace: error:`` line with exit status 2 (a
    usage error), like any value out of range.
    """

    name = "seconds"

    def __init__(self, min: float = 0.0, max: float = MAX_SECONDS, min_open: bool = True, unit: str = "seconds"):
        self.min, self.max, self.min_open, self.unit = float(min), float(max), min_open, unit

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            x = float(value)
        else:
            try:
                x = float(str(value).strip())
            except ValueError:
                x = None
        opt = "/".join(param.opts) if param is not None else "duration"
        low = (x is not None and math.isfinite(x)) and (x > self.min if self.min_open else x >= self.min)
        if x is None or not low or x > self.max:
            lo = f"{'more than' if self.min_open else 'at least'} {self.min:g}"
            raise VfstraceError(f"{opt}: {value!r} is not a duration: give {self.unit}, {lo} and at most "
                                f"{self.max:.0f}", exit_code=2)
        return x


@dataclass
class TraceOptions:
    pid: int | None = None          # only this process (tgid)
    comm: str | None = None         # only tasks with this comm
    path_prefix: str | None = None  # only path events under this prefix
    ring_pages: int = 256           # per-CPU perf buffer / ring size in pages
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TraceOptions":
        if self.pid is not None and not (0 < self.pid < 2**22):
            raise VfstraceError(f"-p/--pid: {self.pid} is not a valid pid")
        if self.comm is not None:
            b = self.comm.encode()
            if not b or len(b) >= COMM_LEN or b"\0" in b:
                raise VfstraceError(f"-c/--comm: must be 1..{COMM_LEN - 1} bytes (a task comm), got {self.comm!r}")
        if self.path_prefix is not None:
            b = self.path_prefix.encode()
            if not b or len(b) >= PATH_LEN or b"\0" in b:
                raise VfstraceError(f"--path-prefix: must be 1..{PATH_LEN - 1} bytes")
        if self.ring_pages <= 0 or self.ring_pages & (self.ring_pages - 1):
            raise VfstraceError("--ring-pages must be a power of two")
        return self

    def comm_words(self) -> list[int]:
        """The comm as two little-endian u64 words (NUL padded), for a -D define."""
        b = (self.comm or "").encode().ljust(COMM_LEN, b"\0")
        return [int.from_bytes(b[i : i + 8], "little") for i in range(0, COMM_LEN, 8)]
