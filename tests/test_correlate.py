"""The correlator's rules on small hand-built traces, and against simulator ground truth."""

import numpy as np
import pandas as pd
import pytest

from vfstrace.correlate import VERDICT_COLUMNS, StreamingCorrelator, Windows, correlate
from vfstrace.errors import VfstraceError
from vfstrace.events import COLUMNS, ECHILD, ENOENT, NUMPY_DTYPES, Flag, Kind, Op
from vfstrace.workload.simulate import simulate

D, P, D2 = 0xFFFF888100001000, 0xFFFF888100000100, 0xFFFF888100002000
RCU = int(Flag.RCU)


def trace(*rows):
    """Rows are (ts_us, kind, fields); event ids follow the order given."""
    out = []
    for i, (ts, kind, f) in enumerate(rows, 1):
        r = {c: ("" if NUMPY_DTYPES[c] is object else 0) for c in COLUMNS}
        r.update(event_id=i, ts_ns=int(ts * 1000), kind=int(kind), tid=f.pop("tid", 100), pid=100, comm="cp")
        r.update(f)
        out.append(r)
    df = pd.DataFrame(out, columns=list(COLUMNS))
    return df.astype({c: NUMPY_DTYPES[c] for c in COLUMNS})


def walk(t0, *middle, ret=ENOENT, dentry=D, enter=True, name="f", path="/d/f", found_ino=7):
    rows = []
    if enter:
        rows.append((t0, Kind.WALK_ENTER, dict(parent=P, name=name, path=path, flags=RCU)))
    rows.append((t0 + 0.1, Kind.LOOKUP_RETURN, dict(dentry=dentry, parent=P, ino=found_ino,
                                                    flags=RCU | (0 if found_ino else int(Flag.NEGATIVE)))))
    rows += list(middle)
    rows.append((t0 + 10, Kind.WALK_RETURN, dict(dentry=dentry, parent=P, ret=ret, flags=RCU | int(Flag.NEGATIVE))))
    return rows


def prune(t, dentry=D, ino=7, tid=90):
    return [(t, Kind.PRUNE, dict(dentry=dentry, parent=P, ino=ino, name="f", tid=tid)),
            (t + 0.2, Kind.UNHASH, dict(dentry=dentry, parent=P, name="f", tid=tid)),
            (t + 0.4, Kind.IPUT, dict(dentry=dentry, ino=ino, tid=tid))] if ino else [
            (t, Kind.PRUNE, dict(dentry=dentry, parent=P, name="f", tid=tid)),
            (t + 0.2, Kind.UNHASH, dict(dentry=dentry, parent=P, name="f", tid=tid))]


def verdict_of(df, **kw):
    v = correlate(df, **kw)
    judged = v[v["event_id"] == df[df["kind"] == Kind.WALK_RETURN]["event_id"].max()]
    assert len(judged) == 1
    return judged.iloc[0]


def by_time(rows):
    return sorted(rows, key=lambda r: r[0])


def test_prune_inside_walk_without_recheck_is_a_race_citing_its_evidence():
    rows = by_time(walk(100) + prune(103))
    df = trace(*rows)
    v = verdict_of(df)
    assert v.verdict == "race"
    prune_ids = set(df[df["kind"].isin([Kind.PRUNE, Kind.UNHASH, Kind.IPUT])]["event_id"])
    assert prune_ids <= set(v.evidence)
    assert v["dentry"] == D and v["name"] == "f" and v["path"] == "/d/f"


def test_seq_check_failure_makes_it_retried_and_echild_return_is_retried():
    # The tracer copies the walk state's flags into a re-check inside a walk (IN_WALK).
    rows = by_time(walk(100, (106, Kind.SEQ_CHECK, dict(op=Op.STEP_INTO, dentry=D, ret=ECHILD,
                                                        flags=RCU | int(Flag.IN_WALK)))) + prune(103))
    df = trace(*rows)
    v = verdict_of(df)
    assert v.verdict == "retried"
    assert int(df[df["kind"] == Kind.SEQ_CHECK]["event_id"].iloc[0]) in v.evidence
    df = trace(*by_time(walk(100, ret=ECHILD) + prune(103)))
    assert verdict_of(df).verdict == "retried"


def test_namespace_operation_explains_the_enoent():
    ns = (104, Kind.NS_OP, dict(op=Op.UNLINK, path="/d/f", parent=P, name="f", dentry=D, tid=80))
    df = trace(*by_time(walk(100) + [(103.5, Kind.IPUT, dict(dentry=D, ino=7, tid=80)), ns]))
    v = verdict_of(df)
    assert v.verdict == "explained"
    assert int(df[df["kind"] == Kind.NS_OP]["event_id"].iloc[0]) in v.evidence
    # rename g onto f: d_move() replaces f's dentry atomically, f exists throughout, so the
    # prune of the old f (the replaced target) under a walk that answers -ENOENT is the race.
    ren = (104, Kind.NS_OP, dict(op=Op.RENAME, path="/d/g", path2="/d/f", parent=P, name="g", dentry=D2, tid=80))
    assert verdict_of(trace(*by_time(walk(100) + prune(103) + [ren]))).verdict == "race"
    # rename f away (to g): the name f is gone, that explains it.
    away = (104, Kind.NS_OP, dict(op=Op.RENAME, path="/d/f", path2="/d/g", parent=P, name="f", dentry=D, tid=80))
    assert verdict_of(trace(*by_time(walk(100) + prune(103) + [away]))).verdict == "explained"
    # mkdir does not remove a name: not an explanation
    mk = (104, Kind.NS_OP, dict(op=Op.MKDIR, path="/d/f", parent=P, name="f", tid=80))
    assert verdict_of(trace(*by_time(walk(100) + [mk]))).verdict == "absent"


def test_plain_miss_is_absent_and_lost_events_make_it_uncertain_never_race():
    assert verdict_of(trace(*walk(100))).verdict == "absent"
    lost = (150, Kind.LOST, dict(ret=12, cpu=1, tid=0))
    assert verdict_of(trace(*walk(100), lost)).verdict == "uncertain"
    v = verdict_of(trace(*by_time(walk(100) + prune(103)), lost))
    assert v.verdict == "uncertain" and "lost" in v.reason
    # A LOST record long after the window does not matter.
    far = (100 + 5_000, Kind.LOST, dict(ret=12, cpu=1, tid=0))
    assert verdict_of(trace(*by_time(walk(100) + prune(103)), far)).verdict == "race"


def test_address_reuse_separates_old_prunes_from_new_dentries():
    rows = prune(101) + [(102, Kind.D_FREE, dict(dentry=D, tid=0)), (104, Kind.D_ALLOC, dict(dentry=D, parent=P, name="f"))]
    rows = by_time(walk(100) + rows)
    assert verdict_of(trace(*rows)).verdict == "absent"
    # Same trace without the free/alloc: the prune is of this dentry.
    rows = by_time(walk(100) + prune(101))
    assert verdict_of(trace(*rows)).verdict == "race"


def test_prune_of_a_different_name_at_the_address_is_not_tied():
    other = [(103, Kind.PRUNE, dict(dentry=D, parent=P, ino=9, name="zzz", tid=90))]
    assert verdict_of(trace(*by_time(walk(100) + other))).verdict == "absent"


def test_prune_of_a_negative_dentry_is_not_a_race():
    assert verdict_of(trace(*by_time(walk(100) + prune(103, ino=0)))).verdict == "absent"


def test_prune_of_another_dentry_is_not_tied():
    assert verdict_of(trace(*by_time(walk(100) + prune(103, dentry=D2)))).verdict == "absent"


def test_return_without_enter_uses_the_earliest_event_or_a_window():
    rows = by_time(walk(100, enter=False) + prune(103))
    assert verdict_of(trace(*rows)).verdict == "race"
    # Nothing but the return: the prune 50 us earlier is inside the assumed walk window ...
    only = [(200, Kind.WALK_RETURN, dict(dentry=D, parent=P, name="f", ret=ENOENT))]
    assert verdict_of(trace(*prune(150), *only)).verdict == "race"
    # ... and one 5 ms earlier is not.
    assert verdict_of(trace(*prune(200 - 5_000 + 5_000 - 5_000 + 0), *[(5_200, Kind.WALK_RETURN, dict(dentry=D, parent=P, name="f", ret=ENOENT))])).verdict == "absent"


def _open_last(t, ret=ENOENT, flags=0, dentry=D, name="f", tid=100):
    """An open()'s last component as the kprobe tier records it.

    open_last_lookups() calls lookup_fast() and then step_into() itself, not
    walk_component(): the tracer holds no walk state during that lookup_fast
    (no LOOKUP_RETURN) and step_into's return is the WALK_RETURN, with STEP.
    """
    return (t, Kind.WALK_RETURN, dict(dentry=dentry, parent=P, name=name, ret=ret, seq=4, seq2=6, tid=tid,
                                      flags=RCU | int(Flag.STEP) | flags))


def test_open_last_component_is_judged_like_a_walk():
    neg = int(Flag.NEGATIVE)
    inflight = neg | int(Flag.SEQ_CHANGED) | int(Flag.PRUNE_INFLIGHT)
    # Pre-3.0 order (6.1-prepatch): step_into trusts the negative inode of a dentry whose
    # prune made it negative (IPUT) before the d_seq re-check: -ENOENT for an existing file.
    df = trace(*prune(103), _open_last(104, flags=inflight))
    v = verdict_of(df)
    assert v.verdict == "race"
    assert set(df[df["kind"].isin([Kind.PRUNE, Kind.UNHASH, Kind.IPUT])]["event_id"]) <= set(v.evidence)
    # The fixed kernel re-checks d_seq first: the unhash bumped it, so -ECHILD and a ref-walk retry.
    assert verdict_of(trace(*prune(103), _open_last(104, ret=ECHILD, flags=inflight))).verdict == "retried"
    # open() of a name that is not there: a negative dentry nobody pruned.
    assert verdict_of(trace(_open_last(104, flags=neg))).verdict == "absent"


def test_open_last_component_after_a_failed_walk_is_its_own_lookup():
    # stat("/d/x") fails in walk_component, then the same task's open("/d/f") fails in
    # step_into during f's prune: two judged lookups, each on its own dentry.
    neg = int(Flag.NEGATIVE)
    rows = [(90, Kind.WALK_RETURN, dict(dentry=D2, parent=P, name="x", ret=ENOENT, flags=RCU | neg))]
    rows += prune(103) + [_open_last(104, flags=neg | int(Flag.SEQ_CHANGED) | int(Flag.PRUNE_INFLIGHT))]
    v = correlate(trace(*by_time(rows)))
    got = {int(r.dentry): r.verdict for r in v.itertuples()}
    assert got == {D2: "absent", D: "race"}


def test_clock_skew_tolerance():
    # The prune's events are stamped 15 us after the return (another CPU's clock): within skew.
    rows = walk(100) + prune(110 + 15)
    assert verdict_of(trace(*by_time(rows))).verdict == "race"
    assert verdict_of(trace(*by_time(rows)), skew_ns=1_000).verdict == "absent"


def test_syscall_level_transient_explained_absent():
    def sc(ts, path, ret, tid=100):
        return (ts, Kind.PATH_SYSCALL, dict(op=Op.NEWFSTATAT, path=path, ret=ret, tid=tid))
    free = (5_000, Kind.D_FREE, dict(dentry=D, tid=0))
    rows = [sc(1_000, "/a/x", 0), sc(2_000, "/a/y", 0), sc(4_000, "/a/x", ENOENT), free, sc(6_000, "/a/x", 0, tid=101),
            sc(7_000, "/a/nx", ENOENT),
            (7_500, Kind.NS_OP, dict(op=Op.RMDIR, path="/b", tid=80)), sc(7_600, "/b/c", ENOENT)]
    df = trace(*rows)
    v = correlate(df).set_index("event_id")["verdict"]
    assert v[3] == "transient"
    assert v[6] == "absent"
    assert v[8] == "explained"
    # No dentry-cache activity around it: not a suspect.
    df2 = trace(*[r for r in rows if r is not free])
    assert correlate(df2).set_index("event_id")["verdict"].iloc[0] == "absent"
    # Lost events in the span: uncertain.
    df3 = trace(*(rows[:4] + [(5_500, Kind.LOST, dict(ret=3, tid=0))] + rows[4:]))
    assert correlate(df3).set_index("event_id")["verdict"][3] == "uncertain"


def test_output_columns_order_and_empty_input():
    v = correlate(trace(*by_time(walk(100) + prune(103))))
    assert list(v.columns) == VERDICT_COLUMNS
    e = correlate(trace(*walk(100))[0:0])
    assert list(e.columns) == VERDICT_COLUMNS and len(e) == 0
    s = StreamingCorrelator()
    assert len(s.feed(trace(*walk(100))[0:0])) == 0


@pytest.mark.parametrize("bad", [pd.DataFrame({"x": [1]}), "not a frame",
                                 pd.DataFrame({"event_id": [1, 1], "ts_ns": [1, 2], "kind": [2, 2]})])
def test_bad_input_raises_a_vfstrace_error(bad):
    with pytest.raises(VfstraceError):
        correlate(bad)


def test_bad_windows_raise():
    with pytest.raises(VfstraceError):
        Windows(skew_ns=-1).check()
    with pytest.raises(VfstraceError):
        StreamingCorrelator(walk_ns=10, max_walk_ns=1)


def _scores(seeds, semantics, **kw):
    tp = fp = fn = 0
    for seed in seeds:
        ev, truth = simulate(seed, semantics=semantics, duration_ns=4_000_000, **kw)
        v = correlate(ev)
        m = truth.merge(v[["event_id", "verdict"]], on="event_id", how="left")
        tp += int(((m.truth == "race") & (m.verdict == "race")).sum())
        fp += int(((m.truth != "race") & (m.verdict == "race")).sum())
        fn += int(((m.truth == "race") & (m.verdict != "race")).sum())
    return tp, fp, fn


def test_ground_truth_buggy_kernel_races_are_found():
    tp, fp, fn = _scores(range(100, 106), "buggy")
    assert tp > 20
    assert tp / (tp + fp) >= 0.95 and tp / (tp + fn) >= 0.95


def test_ground_truth_fixed_kernel_has_no_race_and_reuse_loss_add_none():
    assert _scores(range(200, 204), "fixed", loss_rate=0.002)[:2] == (0, 0)
    tp, fp, fn = _scores(range(300, 303), "buggy", loss_rate=0.003)
    assert fp == 0
