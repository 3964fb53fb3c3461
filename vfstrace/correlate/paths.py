"""Path columns for the syscall-level verdicts: emptiness, parents, text columns, whole columns at once.

Why apart: vfstrace/correlate/syscall.py holds the rules; these are the
column operations those rules ask of paths, made in Arrow (or typed so
pandas does not convert them) rather than one Python string at a time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def nonempty(col: pd.Series) -> np.ndarray:
    """Mask of the non-empty strings of a column, compared in its own storage
    (Arrow for pandas' str dtype): no Python string per row."""
    return (col != "").to_numpy(dtype=bool) if len(col) else np.zeros(0, dtype=bool)


def texts(values) -> pd.Series:
    """Python strings as an object column: a Series typed so keeps pandas
    from inferring its Arrow ``str`` dtype (a conversion per row)."""
    return pd.Series(values, dtype=object)


def ancestor_keys(paths: pd.Series, names: set[str]) -> pd.DataFrame:
    """(_r, key, own): each row's path or a parent of it (ancestors()) that
    is one of ``names``, ``own`` where it is the path itself; in row order,
    longest first, as listing every row's ancestors and keeping those would.

    Why not that listing: with removals anywhere on the system (the only
    time this is asked) every failure's path was cut into all its parents in
    Python, the costliest step of a storm of distinct names. A name of L
    bytes is a parent of a path, or the path, exactly when the path's first
    L bytes are that name and byte L is "/" or the end: that is asked of
    whole columns in Arrow, once per distinct length of the names."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows, keys, own, lens = [], [], [], []
    if len(paths) and names:
        col = pa.array(paths.to_numpy(dtype=object) if paths.dtype == object else paths.array, type=pa.large_string())
        raw = col.cast(pa.large_binary())
        size = pc.binary_length(raw).to_numpy(zero_copy_only=False)
        by_len: dict[int, list[bytes]] = {}
        for x in names:
            by_len.setdefault(len(x.encode()), []).append(x.encode())
        for L, xs in by_len.items():
            head = pc.binary_slice(raw, 0, L)
            hit = pc.is_in(head, value_set=pa.array(xs, type=pa.large_binary())).to_numpy(zero_copy_only=False)
            hit &= size >= L
            if not hit.any():
                continue
            at = np.flatnonzero(hit)
            nxt = pc.binary_slice(raw.take(pa.array(at)), L, L + 1).to_numpy(zero_copy_only=False)
            whole = size[at] == L
            ok = whole | (nxt == b"/")
            at, whole = at[ok], whole[ok]
            if not len(at):
                continue
            rows.append(at)
            keys.append(pc.binary_slice(raw.take(pa.array(at)), 0, L).cast(pa.large_string()).to_numpy(zero_copy_only=False))
            own.append(whole)
            lens.append(np.full(len(at), L))
    if not rows:
        return pd.DataFrame({"_r": np.zeros(0, np.int64), "key": pd.Series([], dtype=object), "own": np.zeros(0, bool)})
    r, key, o, ln = (np.concatenate(x) for x in (rows, keys, own, lens))
    order = np.lexsort((-ln, r))
    return pd.DataFrame({"_r": r[order], "key": pd.Series(key[order], dtype=object), "own": o[order]})


def ancestors(p):
    out = [p]
    while True:
        i = p.rfind("/")
        if i <= 0:
            break
        p = p[:i]
        out.append(p)
    return out
