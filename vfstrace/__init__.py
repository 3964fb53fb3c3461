"""vfstrace: watch path lookups and dentry pruning, find lookup/prune races.

This package is pure Python: it imports without bcc and runs without root.
Kernel probes live in the separate ``tracers`` package.
"""

__version__ = "0.1.0"


def load(path):
    """Read a trace file into a pandas DataFrame (``df.attrs['meta']`` holds its metadata)."""
    from vfstrace.store import load as _load

    return _load(path)


__all__ = ["load", "__version__"]
