"""The schema of a trace's metadata, checked whole before anything uses it.

``_meta.json`` (or the first line of a JSON Lines trace) comes from a file
that anyone may have edited, truncated or crafted. Everything downstream
(the loader's part listing, the lost-event totals, every report) indexes
and formats these values as if they had the types the writer gives them,
so a ``"notes": 5`` or a part listed as ``{"file": []}`` used to surface as
a TypeError deep inside a command. Here the types are checked once, with
the key that is wrong in the message.

The keys the reader relies on have exact types. Every other key (tiers,
workloads and tools add their own, e.g. ``workload`` is a dict for the
simulator) may hold any JSON value, within two bounds that keep later
code safe: nesting at most MAX_DEPTH deep (json.dumps of a thousand-deep
list raises RecursionError when the metadata is written again by
``convert``), and integers within 64 bits (numpy and pyarrow raise
OverflowError past them; Python's own int/str conversion refuses numbers of
more than 4300 digits).
"""

from __future__ import annotations

import math

from vfstrace.errors import TraceFormatError

MAX_DEPTH = 32
U64_MAX = 2**64 - 1
I64_MIN = -(2**63)

_TEXT_OR_NULL = ("vfstrace_version", "kernel_release", "host", "tier", "tier_reason", "start_time", "end_time")
_COUNT_OR_NULL = ("start_monotonic_ns", "end_monotonic_ns")
_COUNTS = ("lost_total", "events")
_PART_COUNTS = ("rows", "first_event_id", "last_event_id")
# A selftest phase's widening statistics, as selftest/render.py shows them.
_WIDEN_NUMBERS = ("delay_ns", "delayed", "mean_delay_ns")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_count(v) -> bool:
    return _is_int(v) and 0 <= v <= U64_MAX


def _bounded(meta, where) -> None:
    """Depth and integer bounds over the whole tree (iterative: no recursion to exhaust)."""
    stack = [(meta, 1, "")]
    while stack:
        v, depth, key = stack.pop()
        if depth > MAX_DEPTH:
            raise TraceFormatError(f"{where}: metadata nested more than {MAX_DEPTH} deep (at {key or 'top'})")
        if isinstance(v, dict):
            stack.extend((x, depth + 1, f"{key}.{k}" if key else str(k)) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, depth + 1, f"{key}[{i}]") for i, x in enumerate(v))
        elif _is_int(v) and not (I64_MIN <= v <= U64_MAX):
            raise TraceFormatError(f"{where}: metadata {key} is out of the 64-bit range")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _counters(v) -> bool:
    return isinstance(v, dict) and all(_is_int(x) for x in v.values())


def _check_selftest(st, where) -> None:
    """What `selftest --from-trace` reads back from a trace selftest recorded (vfstrace/selftest/live.py)."""
    if not isinstance(st, dict) or not isinstance(st.get("phases", []), list):
        raise TraceFormatError(f"{where}: metadata selftest must be an object with a list of phases")
    for i, p in enumerate(st.get("phases", [])):
        ok = (isinstance(p, dict) and isinstance(p.get("name"), str)
              and _is_count(p.get("start_ns")) and _is_count(p.get("end_ns"))
              and (p.get("counters") is None or _counters(p["counters"])))
        w = p.get("widen") if isinstance(p, dict) else None
        if ok and w is not None:
            ok = isinstance(w, dict) and isinstance(w.get("site"), str) and all(
                _is_number(w.get(k)) for k in _WIDEN_NUMBERS)
        if not ok:
            raise TraceFormatError(f"{where}: metadata selftest.phases[{i}] is not a selftest phase "
                                   "(name, start_ns, end_ns, counters, widen)")


def check_meta(meta, where) -> None:
    """Raise TraceFormatError unless ``meta`` has the types a vfstrace trace's metadata has."""
    if not isinstance(meta, dict):
        raise TraceFormatError(f"{where}: metadata is not a JSON object")
    _bounded(meta, where)

    def bad(key, want):
        raise TraceFormatError(f"{where}: metadata {key} must be {want}, got {type(meta[key]).__name__}")

    for k in _TEXT_OR_NULL:
        if meta.get(k) is not None and not isinstance(meta[k], str):
            bad(k, "a string")
    for k in _COUNT_OR_NULL:
        if meta.get(k) is not None and not _is_count(meta[k]):
            bad(k, "a non-negative 64-bit integer")
    for k in _COUNTS:
        if k in meta and not _is_count(meta[k]):
            bad(k, "a non-negative 64-bit integer")
    if "closed" in meta and not isinstance(meta["closed"], bool):
        bad("closed", "true or false")
    for k in ("notes", "probes"):
        v = meta.get(k)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            bad(k, "a list of strings")
    lp = meta.get("lost_per_cpu")
    if lp is not None and (not isinstance(lp, dict) or not all(
        c.isascii() and c.isdigit() and len(c) <= 20 and int(c) <= U64_MAX and _is_count(n) for c, n in lp.items()
    )):
        raise TraceFormatError(f"{where}: metadata lost_per_cpu must map cpu numbers to counts")
    if meta.get("kernel_counters") is not None and not _counters(meta["kernel_counters"]):
        raise TraceFormatError(f"{where}: metadata kernel_counters must map counter names to integers")
    if meta.get("selftest") is not None:
        _check_selftest(meta["selftest"], where)
    parts = meta.get("parts")
    if parts is not None:
        if not isinstance(parts, list):
            bad("parts", "a list")
        for i, p in enumerate(parts):
            if not isinstance(p, dict) or not isinstance(p.get("file"), str):
                raise TraceFormatError(f"{where}: metadata parts[{i}] must be an object with a file name")
            for k in _PART_COUNTS:
                if p.get(k) is not None and not _is_count(p[k]):
                    raise TraceFormatError(f"{where}: metadata parts[{i}].{k} must be a non-negative 64-bit integer")
