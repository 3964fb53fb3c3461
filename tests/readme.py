"""The README's fenced examples and what each must show, read from the README itself.

Every fenced block of README.md is followed by a marker, an HTML comment
(invisible where the README is rendered) with one line per command of the
block, in order::

    <!-- readme-test
    guest 6.1-prepatch | exit 0 | line ^cp errors: No such file or directory\\s+[1-9] | truth>0
    guest 6.1-prepatch | exit 1 | line ^FAIL:
    -->

Where a command runs (the first field):

* ``guest K``: inside a boot of kernel K (tests/vm/prepatch_check.py runs
  it there, as written, with the venv's bin first on PATH). A command
  written ``vfstrace vm run --kernel K -- CMD`` runs CMD in K's boot: the
  wrapper itself is what every VM test exercises.
* ``host``: here, as written, from the checkout.
* ``ci``: the command is one .ci/run itself runs (``make test``, a bench):
  the check is that .ci/run still runs it.
* ``python``: the block is Python, run with the venv's interpreter in a
  directory holding ``run.vft`` (a simulated trace).

What it must show (the other fields): ``exit N``; ``line RE``, a line of
its output (stdout and stderr) matching RE; ``noline RE``, none does;
``truth>0`` / ``truth=0``, the prepatch kernel's own count of spurious
ENOENTs during the command (vfstrace/vm/groundtruth.py).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER_OPEN = "<!-- readme-test"
MARKER_CLOSE = "-->"
WHERE = ("guest", "host", "ci", "python")


class MarkerError(ValueError):
    """A fenced block without a marker, or a marker that does not fit its block."""


@dataclass
class Example:
    """One command of a fenced block, where it runs and what it must show."""

    block: int
    lang: str
    command: str
    where: str
    kernel: str | None = None
    exit: int | None = None
    lines: list[str] = field(default_factory=list)
    nolines: list[str] = field(default_factory=list)
    truth: str | None = None  # ">0" or "=0"

    @property
    def inner(self) -> list[str]:
        """The argv to run: the command itself, or CMD of ``vfstrace vm run --kernel K -- CMD``."""
        argv = shlex.split(self.command, comments=True)
        if argv[:3] == ["vfstrace", "vm", "run"] and "--" in argv:
            k = argv[argv.index("--kernel") + 1] if "--kernel" in argv else None
            if k != self.kernel:
                raise MarkerError(f"{self.command!r} boots {k} but its marker says guest {self.kernel}")
            return argv[argv.index("--") + 1:]
        return argv

    def to_dict(self) -> dict:
        return {"command": self.command, "argv": self.inner, "kernel": self.kernel}

    def check(self, rc: int, output: str, truth: int | None = None) -> list[str]:
        """What this example's run failed to show (empty: it showed all)."""
        bad = []
        if self.exit is not None and rc != self.exit:
            bad.append(f"exit {rc}, README says {self.exit}")
        out = output.splitlines()
        for rx in self.lines:
            if not any(re.search(rx, ln) for ln in out):
                bad.append(f"no line matching {rx!r}")
        for rx in self.nolines:
            hit = next((ln for ln in out if re.search(rx, ln)), None)
            if hit is not None:
                bad.append(f"a line matching {rx!r}: {hit!r}")
        if self.truth is not None:
            if truth is None:
                bad.append("the kernel's spurious ENOENT count was not read")
            elif (self.truth == ">0") != (truth > 0):
                bad.append(f"kernel counted {truth} spurious ENOENTs, README says {self.truth}")
        return bad


def _parse_marker(line: str, block: int, lang: str, command: str) -> Example:
    fields = [f.strip() for f in line.split(" | ")]  # " | ": a regex may hold a bare "|"
    head = fields[0].split()
    if not head or head[0] not in WHERE:
        raise MarkerError(f"block {block}: marker line {line!r} must start with one of {', '.join(WHERE)}")
    ex = Example(block, lang, command, head[0], kernel=head[1] if head[0] == "guest" and len(head) > 1 else None)
    if ex.where == "guest" and not ex.kernel:
        raise MarkerError(f"block {block}: {line!r}: guest needs a kernel")
    for f in fields[1:]:
        key, _, val = f.partition(" ")
        if key == "exit":
            ex.exit = int(val)
        elif key == "line":
            ex.lines.append(val.strip())
        elif key == "noline":
            ex.nolines.append(val.strip())
        elif key in ("truth>0", "truth=0"):
            ex.truth = key[5:]
        else:
            raise MarkerError(f"block {block}: unknown field {f!r} in {line!r}")
    return ex


def examples(text: str | None = None) -> list[Example]:
    """Every command of every fenced block of the README, with its marker."""
    lines = (README.read_text() if text is None else text).splitlines()
    out: list[Example] = []
    i, block = 0, 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        lang, body = m.group(1), []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        block += 1
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines) or lines[j].strip() != MARKER_OPEN:
            first = next((b for b in body if b.strip()), "")
            raise MarkerError(f"fenced block {block} ({first.strip()[:60]!r}) has no readme-test marker after it")
        marks = []
        j += 1
        while j < len(lines) and lines[j].strip() != MARKER_CLOSE:
            if lines[j].strip():
                marks.append(lines[j].strip())
            j += 1
        i = j + 1
        if lang == "python":
            if len(marks) != 1:
                raise MarkerError(f"block {block} (python) needs exactly one marker line")
            out.append(_parse_marker(marks[0], block, lang, "\n".join(body)))
            continue
        cmds = [b.strip() for b in body if b.strip() and not b.strip().startswith("#")]
        if len(cmds) != len(marks):
            raise MarkerError(f"block {block}: {len(cmds)} commands but {len(marks)} marker lines")
        out += [_parse_marker(mk, block, lang, cmd) for cmd, mk in zip(cmds, marks)]
    return out


def seconds(argv: list[str]) -> float:
    """The longest duration (``-d``) a command line names, 60 s when none: what its time limit grows from."""
    secs = [float(argv[i + 1].rstrip("s")) for i, a in enumerate(argv[:-1])
            if a in ("-d", "--duration") and argv[i + 1].rstrip("s").replace(".", "", 1).isdigit()]
    return max(secs or [60.0])


def for_kernel(kernel: str) -> list[Example]:
    """The README examples that run inside a boot of ``kernel``, in README order."""
    return [e for e in examples() if e.where == "guest" and e.kernel == kernel]
