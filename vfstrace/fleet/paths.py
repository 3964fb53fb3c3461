"""The traces a fleet command names: files, directories and globs, expanded in a stable order.

Why: a fleet's traces arrive as a directory per collection (``hosts/``
holding ``web1.vft``, ``web2.vft``, ...) or as a shell glob that the shell
did not expand (quoted, or from a script). A directory that is itself a
trace (it holds ``_meta.json``) is one trace; any other directory stands
for the traces directly inside it. A name that matches nothing is an error
at once: a fleet table that silently left hosts out would read as "no
races there".
"""

from __future__ import annotations

import glob
from pathlib import Path

from vfstrace.errors import VfstraceError
from vfstrace.store.files import META_FILE

TRACE_SUFFIXES = (".vft", ".jsonl", ".ndjson")


def _is_trace_dir(p: Path) -> bool:
    return p.is_dir() and (p / META_FILE).exists()


def _inside(d: Path) -> list[str]:
    try:
        kids = sorted(d.iterdir())
    except OSError as e:
        raise VfstraceError(f"{d}: cannot list: {e.strerror}", exit_code=2) from None
    found = [str(k) for k in kids if _is_trace_dir(k) or k.suffix.lower() in TRACE_SUFFIXES]
    if not found:
        raise VfstraceError(f"{d}: no traces in this directory (no {META_FILE}, no .vft or .jsonl inside)",
                            exit_code=2)
    return found


def expand_traces(args) -> list[str]:
    """Trace paths for ``args`` (each once, in the order given, a glob's or directory's matches sorted).

    A path that does not exist or is not a trace is kept: reading it fails,
    and the fleet says so on that trace's row. A glob that matches nothing,
    or a directory with no trace in it, raises VfstraceError.
    """
    out: list[str] = []
    if not args:
        raise VfstraceError("no traces given", exit_code=2)
    for a in args:
        names = sorted(glob.glob(a)) if glob.has_magic(a) else [a]
        if not names:
            raise VfstraceError(f"{a}: no traces match", exit_code=2)
        for n in names:
            p = Path(n)
            out += _inside(p) if p.is_dir() and not _is_trace_dir(p) and p.suffix.lower() != ".vft" else [n]
    return list(dict.fromkeys(out))
