"""Kernel-side programs of vfstrace, shipped as package data.

The C sources here are read by path (never assembled from strings in
Python); options reach them as -D defines built from typed values. Every
tracer finds and builds its program the same way: :func:`program` is the
text BCC compiles (the generated defines of vfstrace.events.c_defines for
that program, then the file, with common.h pasted where it is included)
and :data:`INCLUDE` the flag that finds vfstrace.h here.

Why common.h is pasted rather than left to the preprocessor: BCC rewrites
map method calls (``counts.lookup(&k)``) only in the main file; in an
included header they stay unrewritten and the verifier refuses the result
("unknown opcode 8d"). The `#line` directives keep clang's and the
verifier's line numbers those of the real files.
"""

from __future__ import annotations

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
INCLUDE = f"-I{SOURCE_DIR}"
PROGRAMS = ("tracepoint.c", "kprobe.c", "widen.c", "empty.c", "stream_bench.c")
COMMON = "common.h"
COMMON_INCLUDE = f'#include "{COMMON}"'


def source(name: str, directory: Path = SOURCE_DIR) -> str:
    """Text of one kernel-side source file in this directory (or ``directory``)."""
    return (directory / name).read_text()


def program(name: str, directory: Path | None = None) -> str:
    """What BCC compiles for ``name`` (one of :data:`PROGRAMS`): its generated
    defines (kinds, ops, flags, errnos, its counter slots), then its source.

    ``directory``: another copy of this folder (bench/probe_cost.py --ab
    compiles an older kprobe.c and common.h beside these, to compare them in
    one guest boot); the defines are always this tree's.
    """
    from vfstrace.events import c_defines

    if name not in PROGRAMS:
        raise ValueError(f"no kernel-side program {name!r}")
    d = SOURCE_DIR if directory is None else Path(directory)
    out = []
    for no, line in enumerate(source(name, d).splitlines(keepends=True), start=1):
        if line.strip() == COMMON_INCLUDE:
            out += [f'#line 1 "{d / COMMON}"\n', source(COMMON, d), f'#line {no + 1} "{d / name}"\n']
        else:
            out.append(line)
    return c_defines(name) + f'#line 1 "{d / name}"\n' + "".join(out)
