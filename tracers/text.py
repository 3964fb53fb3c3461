"""Kernel records -> the event schema, their fixed-width text fields taken as Arrow strings.

Why apart from tracers/stream.py: that module reads rings; this one only
turns records (from a ring, a perf buffer or a test) into the frame every
tier hands on, and is where the per-row cost of a storm of distinct
names was (see _decode_fixed).
"""

from __future__ import annotations

import numpy as np

from vfstrace.events import frame_from_records


def _decode_fixed_py(col: np.ndarray, nonempty: np.ndarray | None = None) -> np.ndarray:
    """Fixed-width NUL-padded bytes -> str objects, decoding each distinct value once
    (the fallback of :func:`_decode_fixed` for bytes that are not UTF-8).

    Most rows of a batch share few distinct strings (comm "cp", an empty
    name on every dentry free), so rows whose first byte is NUL become ""
    without touching Python, and the rest are factorized before decoding.
    """
    import pandas as pd

    n = len(col)
    out = np.full(n, "", dtype=object)
    if n == 0:
        return out
    idx = np.flatnonzero(nonempty) if nonempty is not None else np.arange(n)
    if len(idx) == 0:
        return out
    codes, uniq = pd.factorize(col[idx].astype(object))
    # bytes after the first NUL are stale kernel buffer contents: cut there.
    dec = np.array([b.split(b"\0", 1)[0].decode("utf-8", "replace") for b in uniq], dtype=object)
    out[idx] = dec[codes]
    return out


_HIGHS = np.uint64(0x8080808080808080)
_LOWS = np.uint64(0x0101010101010101)
# The lowest flagged byte of a zero-byte mask word, by value: 0x80 << 8k is byte k.
_BYTE_FLAGS = np.array([0x80 << (8 * k) for k in range(8)], dtype=np.uint64)


def _c_lengths(raw: np.ndarray) -> np.ndarray:
    """Per row of a (n, width) uint8 array, the bytes before the first NUL (width if none).

    Eight bytes at a time, and only as far as each row goes: a word holds a
    zero byte where ``(v - 0x01..01) & ~v & 0x80..80`` is non-zero, and its
    lowest flagged byte is the first zero byte (a flag above it can be a
    borrow's false alarm, never one below). A row leaves the scan at its
    first word with a NUL, so a 256-byte field holding a 50-byte path costs
    seven word tests, not 256 byte comparisons."""
    n, width = raw.shape
    lens = np.full(n, width, dtype=np.int64)
    if n == 0 or width == 0:
        return lens
    words = width // 8
    pending = np.arange(n)
    if words:
        v = np.ascontiguousarray(raw[:, : words * 8]).view("<u8")
        for j in range(words):
            x = v[pending, j]
            m = (x - _LOWS) & ~x & _HIGHS
            hit = m != 0
            mh = m[hit]
            lens[pending[hit]] = j * 8 + np.searchsorted(_BYTE_FLAGS, mh & (~mh + np.uint64(1)))
            pending = pending[~hit]
            if not len(pending):
                break
    if words * 8 < width and len(pending):  # a tail shorter than a word
        tail = raw[pending, words * 8 :] == 0
        has = tail.any(axis=1)
        lens[pending[has]] = words * 8 + tail[has].argmax(axis=1)
    return lens


def _decode_fixed(col: np.ndarray):
    """Fixed-width NUL-padded bytes -> a pandas ``str`` (Arrow) array, text cut at the first NUL.

    Why not a Python string per row: in a storm of distinct names nearly
    every row's name and path differ, and making, hashing and converting a
    Python object per row and column held the live stream near 100k events
    per second. The bytes before each NUL are gathered with numpy into one
    Arrow buffer with its offsets, and Arrow checks the whole column is
    UTF-8 at once. Bytes that are not UTF-8 (a path is any bytes) take the
    per-value decoding with replacement characters instead, as before, so
    the result is the same either way.
    """
    import pandas as pd
    import pyarrow as pa

    n = len(col)
    if n == 0:
        return np.full(0, "", dtype=object)  # as the empty frame has always been typed
    width = col.dtype.itemsize
    raw = np.ascontiguousarray(col).view(np.uint8).reshape(n, width)
    lens = _c_lengths(raw)
    top = int(lens.max())
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    if top:
        data = raw[:, :top][np.arange(top) < lens[:, None]]
    else:
        data = np.zeros(0, dtype=np.uint8)
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        arr = pa.array(_decode_fixed_py(col, lens > 0), type=pa.large_string())
    return pd.array(arr, dtype=pd.StringDtype("pyarrow", na_value=np.nan))


def records_to_frame(rec: np.ndarray):
    """Kernel records -> an event-schema DataFrame (same result as events.frame_from_records)."""
    return frame_from_records(rec, decode=_decode_fixed, copy=True)
