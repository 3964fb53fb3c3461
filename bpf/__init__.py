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

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
INCLUDE = f"-I{SOURCE_DIR}"
PROGRAMS = ("tracepoint.c", "kprobe.c", "widen.c", "empty.c")
COMMON = "common.h"
COMMON_INCLUDE = f'#include "{COMMON}"'


def source(name: str) -> str:
    """Text of one kernel-side source file in this directory."""
    return (SOURCE_DIR / name).read_text()


def program(name: str) -> str:
    """What BCC compiles for ``name`` (one of :data:`PROGRAMS`): its generated
    defines (kinds, ops, flags, errnos, its counter slots), then its source."""
    from vfstrace.events import c_defines

    if name not in PROGRAMS:
        raise ValueError(f"no kernel-side program {name!r}")
    out = []
    for no, line in enumerate(source(name).splitlines(keepends=True), start=1):
        if line.strip() == COMMON_INCLUDE:
            out += [f'#line 1 "{SOURCE_DIR / COMMON}"\n', source(COMMON), f'#line {no + 1} "{SOURCE_DIR / name}"\n']
        else:
            out.append(line)
    return c_defines(name) + f'#line 1 "{SOURCE_DIR / name}"\n' + "".join(out)
