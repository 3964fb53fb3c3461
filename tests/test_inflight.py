"""A walk flagged PRUNE_INFLIGHT by the kernel side cites the prune that flag stands for.

The kernel's `inflight` map holds, per dentry address, the latest PRUNE
until that dentry's D_FREE; these tests build traces where the window join
cannot see that PRUNE (it began long before the walk's first event) and
check that the correlator's lookup finds exactly it, and refuses when the
construction does not hold (a lost event, a free in between, a dentry that
was negative at its prune).
"""

from __future__ import annotations

import pandas as pd

from vfstrace.correlate.inflight import flagged, inflight_prunes
from vfstrace.events import ENOENT, Flag, Kind

D = 0xFFFF888004000000


def _ev(eid, ts, kind, dentry=D, ino=0, flags=0, ret=0):
    return {"event_id": eid, "ts_ns": ts, "kind": int(kind), "dentry": dentry, "ino": ino, "flags": flags, "ret": ret}


def _walk(eid=100, ts=1_000_000, flags=int(Flag.PRUNE_INFLIGHT) | int(Flag.NEGATIVE)):
    return pd.DataFrame([{"event_id": eid, "ts_ns": ts, "dentry": D, "flags": flags, "ret": ENOENT}])


def _run(rows, J=None, tol=1_000):
    J = _walk() if J is None else J
    E = pd.DataFrame(rows)
    return inflight_prunes(J, E, flagged(J), tol)


def test_cites_the_latest_prune_of_the_address_and_its_unhash_and_iput():
    rows = [
        _ev(1, 100, Kind.PRUNE, ino=7),           # an earlier incarnation ...
        _ev(2, 200, Kind.D_FREE),                 # ... freed
        _ev(3, 500_000, Kind.PRUNE, ino=9),       # the prune in flight, 500 us before the walk
        _ev(4, 600_000, Kind.UNHASH),
        _ev(5, 900_000, Kind.IPUT),
        _ev(6, 2_000_000, Kind.D_FREE),           # after the walk
        _ev(7, 500_000, Kind.PRUNE, dentry=D + 64, ino=1),  # another dentry
    ]
    assert _run(rows) == [[3, 4, 5]]


def test_nothing_cited_when_events_were_lost_between_prune_and_walk():
    rows = [_ev(3, 500_000, Kind.PRUNE, ino=9), _ev(8, 700_000, Kind.LOST, dentry=0, ret=12)]
    assert _run(rows) == [[]]


def test_nothing_cited_when_the_prune_seen_was_freed_before_the_walk():
    rows = [_ev(3, 500_000, Kind.PRUNE, ino=9), _ev(4, 800_000, Kind.D_FREE)]
    assert _run(rows) == [[]]


def test_nothing_cited_for_a_dentry_negative_at_its_prune():
    assert _run([_ev(3, 500_000, Kind.PRUNE, ino=0)]) == [[]]


def test_a_prune_after_the_walk_is_not_the_one_in_flight():
    assert _run([_ev(3, 1_500_000, Kind.PRUNE, ino=9)]) == [[]]


def test_unflagged_walks_are_left_alone():
    J = _walk(flags=int(Flag.NEGATIVE))
    assert _run([_ev(3, 500_000, Kind.PRUNE, ino=9)], J=J) == [[]]
    assert not flagged(J).any()


def test_many_walks_each_get_their_own_prune():
    J = pd.DataFrame([{"event_id": 100 + i, "ts_ns": 1_000_000 + i * 10_000_000, "dentry": D + 64 * i,
                       "flags": int(Flag.PRUNE_INFLIGHT), "ret": ENOENT} for i in range(50)])
    rows = [_ev(i + 1, 1_000_000 + i * 10_000_000 - 300_000, Kind.PRUNE, dentry=D + 64 * i, ino=i + 1)
            for i in range(50)]
    got = inflight_prunes(J, pd.DataFrame(rows), flagged(J), 1_000)
    assert got == [[i + 1] for i in range(50)]


def _trace(with_prune: bool):
    """A widened walk: its prune began 400 us before the walk's return, long before its first event."""
    from vfstrace.events import COLUMNS, NUMPY_DTYPES

    neg = int(Flag.RCU) | int(Flag.NEGATIVE) | int(Flag.PRUNE_INFLIGHT)
    rows = []
    if with_prune:
        rows.append(dict(event_id=1, ts_ns=1_000_000, kind=int(Kind.PRUNE), dentry=D, parent=D - 4096, ino=42,
                         name="f000123.dat", tid=9, pid=9, comm="kswapd0"))
        rows.append(dict(event_id=2, ts_ns=1_200_000, kind=int(Kind.IPUT), dentry=D, parent=D - 4096, ino=42,
                         name="f000123.dat", tid=9, pid=9, comm="kswapd0", flags=int(Flag.PRUNE_INFLIGHT)))
    rows.append(dict(event_id=3, ts_ns=1_400_000, kind=int(Kind.WALK_RETURN), dentry=D, parent=D - 4096, ret=ENOENT,
                     name="f000123.dat", tid=77, pid=77, comm="cp", flags=neg))
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        blank = "" if NUMPY_DTYPES[c] is object else 0
        df[c] = (df[c].fillna(blank) if c in df else blank)
        df[c] = df[c].astype(NUMPY_DTYPES[c])
    df = df[list(COLUMNS)]
    df.attrs["meta"] = {"lost_total": 0}
    return df


def test_a_race_on_the_bit_cites_its_prune_and_without_one_is_uncertain():
    from vfstrace.correlate import correlate

    v = correlate(_trace(with_prune=True)).set_index("event_id")
    assert v.loc[3, "verdict"] == "race"
    assert {1, 2} <= set(v.loc[3, "evidence"])
    v = correlate(_trace(with_prune=False)).set_index("event_id")
    assert v.loc[3, "verdict"] == "uncertain"
    assert "no PRUNE event in the trace" in v.loc[3, "reason"]
