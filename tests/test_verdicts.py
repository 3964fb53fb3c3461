"""Issue 14's classes of wrong verdicts, each as the event sequence a real kernel produces.

Every trace here is written from fs/namei.c and fs/dcache.c, not from what
the correlator printed: which events the kprobe tier (bpf/kprobe.c) or the
tracepoint tier (bpf/tracepoint.c) emits for that sequence, in the order
and with the fields they carry. docs/verdicts.md is the table these hold
the correlator to.
"""

import numpy as np
import pandas as pd
import pytest
from test_correlate import D, D2, P, RCU, by_time, prune, trace, verdict_of, walk

from vfstrace.correlate import StreamingCorrelator, correlate
from vfstrace.events import EBADF, ECHILD, ENOENT, ESRCH, Flag, Kind, Op, op_name
from vfstrace.selftest import judge

IN_WALK = int(Flag.IN_WALK)
NEG = int(Flag.NEGATIVE)


def kwalk(t0, ret=ENOENT):
    """A walk as the kprobe tier streams it: walk_component's entry and its return."""
    return [(t0, Kind.WALK_ENTER, dict(parent=P, name="f", path="/d/f", flags=RCU)),
            (t0 + 10, Kind.WALK_RETURN, dict(dentry=D, parent=P, ret=ret, flags=RCU | NEG))]


def renumber(df, order):
    """Give the rows event ids in another arrival order (``order``: row positions, first delivered first)."""
    df = df.iloc[list(order)].reset_index(drop=True)
    df["event_id"] = np.arange(1, len(df) + 1, dtype=np.uint64)
    return df


def streamed(df, cut=3, reorder_ns=100_000_000):
    sc = StreamingCorrelator(reorder_ns=reorder_ns)
    outs = [sc.feed(df.iloc[i:i + cut]) for i in range(0, len(df), cut)] + [sc.finish()]
    return pd.concat(outs, ignore_index=True).sort_values("event_id").reset_index(drop=True)


def agree(df):
    """Batch verdicts, checked against the streaming correlator's."""
    v = correlate(df)
    s = streamed(df)
    pd.testing.assert_frame_equal(v, s)
    return v


# --- 1. selftest: PASS only on retries with a prune of their own dentry seen -------------------------


def _echild_walks(n, with_prune, race_at=None):
    rows = []
    for k in range(n):
        d, t0 = D + 0x1000 * k, 1_000 * k
        ret = ENOENT if k == race_at else ECHILD
        # step_into(): read_seqcount_retry(&dentry->d_seq) failed -> -ECHILD, no re-check site call.
        rows += [(t0, Kind.WALK_ENTER, dict(parent=P, name="f", path="/d/f", flags=RCU)),
                 (t0 + 10, Kind.WALK_RETURN, dict(dentry=d, parent=P, ret=ret, flags=RCU | NEG))]
        if with_prune or k == race_at:
            rows += [(t0 + 3, Kind.PRUNE, dict(dentry=d, parent=P, ino=7, name="f", tid=90)),
                     (t0 + 3.2, Kind.UNHASH, dict(dentry=d, parent=P, name="f", tid=90)),
                     (t0 + 3.4, Kind.IPUT, dict(dentry=d, ino=7, tid=90))]
    return trace(*by_time(rows))


def test_echild_retries_without_any_prune_do_not_pass():
    # Many walks the kernel retried for reasons of their own (a rename elsewhere bumps
    # rename_lock, a parent's d_seq moved), and not one prune: nothing was tested.
    ph = judge.judge_events(_echild_walks(30, with_prune=False))
    assert (ph.retried, ph.retried_no_prune, ph.overlaps) == (30, 30, 0)
    verdict, reason = judge.verdict_of([ph])
    assert verdict == judge.INCONCLUSIVE
    assert "30 -ECHILD retries with no prune" in reason


def test_retries_with_a_prune_pass_and_one_race_fails():
    ph = judge.judge_events(_echild_walks(judge.MIN_OVERLAPS, with_prune=True))
    assert (ph.retried_no_prune, ph.overlaps, ph.race) == (0, judge.MIN_OVERLAPS, 0)
    assert judge.verdict_of([ph])[0] == judge.PASS
    ph = judge.judge_events(_echild_walks(judge.MIN_OVERLAPS, with_prune=True, race_at=4))
    assert ph.race == 1
    assert judge.verdict_of([ph])[0] == judge.FAIL


def test_overlap_column_marks_prune_seen_apart_from_the_kernels_own_retry():
    v = correlate(_echild_walks(4, with_prune=False))
    assert (v["verdict"] == "retried").all() and not v["overlap"].any()
    assert v["reason"].str.contains("not an overlap").all()
    v = correlate(_echild_walks(4, with_prune=True))
    assert (v["verdict"] == "retried").all() and v["overlap"].all()


# --- 2. a re-check belongs to the walk it checked -------------------------------------------------------


def _complete_walk_then_racing_walk(seq_flags=0):
    # stat("/d/a"): walk_component("a") succeeds (its return is not streamed), then
    # complete_walk() -> try_to_unlazy() fails: the tracer holds no walk state there,
    # so the SEQ_CHECK has no dentry and no IN_WALK; ref-walk redoes it and succeeds.
    # stat("/d/f") next: __d_lookup_rcu() finds f's dentry D, the shrinker kills D
    # (__dentry_kill -> __d_drop -> dentry_unlink_inode), the walk trusts d_inode == NULL.
    stale = (95, Kind.SEQ_CHECK, dict(op=Op.COMPLETE_WALK, ret=ECHILD, flags=seq_flags))
    return trace(*by_time([stale] + walk(100) + prune(103)))


def test_a_failed_complete_walk_of_an_earlier_lookup_does_not_retry_the_next_walk():
    df = _complete_walk_then_racing_walk()
    v = verdict_of(df)
    assert v.verdict == "race"
    stale_id = int(df[df["kind"] == Kind.SEQ_CHECK]["event_id"].iloc[0])
    assert stale_id not in v.evidence
    agree(df)


def test_a_recheck_inside_the_walk_is_the_walks_own():
    # try_to_unlazy_next(nd, dentry) inside lookup_fast() fails -> the walk returns -ECHILD.
    inside = (106, Kind.SEQ_CHECK, dict(op=Op.TRY_TO_UNLAZY_NEXT, dentry=D, ret=ECHILD, flags=RCU | IN_WALK))
    df = trace(*by_time(walk(100, inside, ret=ECHILD) + prune(103)))
    v = verdict_of(df)
    assert v.verdict == "retried" and v.overlap
    assert int(df[df["kind"] == Kind.SEQ_CHECK]["event_id"].iloc[0]) in v.evidence
    # Traces recorded before IN_WALK existed: the walk state's RCU flag says the same.
    old = (106, Kind.SEQ_CHECK, dict(op=Op.TRY_TO_UNLAZY_NEXT, dentry=D, ret=ECHILD, flags=RCU))
    df = trace(*by_time(walk(100, old, ret=ECHILD) + prune(103)))
    assert int(df[df["kind"] == Kind.SEQ_CHECK]["event_id"].iloc[0]) in verdict_of(df).evidence


def test_a_recheck_naming_another_dentry_is_not_this_walks():
    # A stale walk state (its walk's return was lost) re-checked dentry D2: not D's walk.
    other = (99, Kind.SEQ_CHECK, dict(op=Op.TRY_TO_UNLAZY_NEXT, dentry=D2, ret=ECHILD, flags=RCU | IN_WALK))
    df = trace(*by_time([other] + walk(100) + prune(103)))
    assert verdict_of(df).verdict == "race"


def test_a_walk_is_its_events_in_time_order_not_in_delivery_order():
    # A widened walk (200 us in the window) that migrated: its WALK_ENTER on CPU 1 is
    # delivered after its WALK_RETURN on CPU 0 (per-CPU buffers drained in turns).
    rows = by_time([(100, Kind.WALK_ENTER, dict(parent=P, name="f", path="/d/f", flags=RCU, cpu=1)),
                    (300, Kind.WALK_RETURN, dict(dentry=D, parent=P, ret=ENOENT, flags=RCU | NEG))]
                   + prune(150))
    df = trace(*rows)
    assert verdict_of(df).verdict == "race"
    late = renumber(df, [1, 2, 3, 4, 0])  # the WALK_ENTER arrives last
    wr = int(late.loc[late["kind"] == Kind.WALK_RETURN, "event_id"].iloc[0])
    assert correlate(late).set_index("event_id").loc[wr, "verdict"] == "race"


# --- 3. same incarnation: by time, not by event id ----------------------------------------------------


def test_a_free_delivered_early_does_not_hide_the_race():
    # The walk holds D under rcu_read_lock(); D's memory goes back one grace period after
    # the walk (d_free -> call_rcu): D_FREE is stamped after the return. The reader drained
    # the pruner's CPU first, then the CPU of the RCU callback, then the walker's: by id
    # the free lies between the prune and the walk's return.
    rows = by_time(walk(100) + prune(103) + [(140, Kind.D_FREE, dict(dentry=D, tid=0, cpu=2))])
    df = trace(*rows)
    assert verdict_of(df).verdict == "race"
    k = df["kind"].to_numpy()
    pr = list(np.flatnonzero(np.isin(k, [Kind.PRUNE, Kind.UNHASH, Kind.IPUT])))
    fr = list(np.flatnonzero(k == Kind.D_FREE))
    early = renumber(df, pr + fr + [i for i in range(len(df)) if i not in pr + fr])
    v = correlate(early)
    wr = int(early.loc[early["kind"] == Kind.WALK_RETURN, "event_id"].iloc[0])
    assert v.set_index("event_id").loc[wr, "verdict"] == "race"


def test_an_allocation_delivered_late_still_separates_incarnations():
    # The old dentry at D is pruned and freed; the walk misses the cache, and d_alloc()
    # in lookup_slow() hands it the same address: a new negative dentry, a true -ENOENT.
    rows = by_time(walk(100, enter=True) + prune(101)
                   + [(102, Kind.D_FREE, dict(dentry=D, tid=0, cpu=3)),
                      (106, Kind.D_ALLOC, dict(dentry=D, parent=P, name="f", cpu=3))])
    df = trace(*rows)
    assert verdict_of(df).verdict == "absent"
    cpu3 = [i for i in range(len(df)) if int(df["cpu"].iloc[i]) == 3]
    late = renumber(df, [i for i in range(len(df)) if i not in cpu3] + cpu3)
    wr = int(late.loc[late["kind"] == Kind.WALK_RETURN, "event_id"].iloc[0])
    assert correlate(late).set_index("event_id").loc[wr, "verdict"] == "absent"


# --- 4. transient in a default tracepoint recording -------------------------------------------------


def _sc(ts, path, ret, flags=0, tid=100, op=Op.NEWFSTATAT, **kw):
    return (ts, Kind.PATH_SYSCALL, dict(op=op, path=path, ret=ret, flags=flags, tid=tid, **kw))


def _ns(ts, op, path, path2="", **kw):
    return (ts, Kind.NS_OP, dict(op=op, path=path, path2=path2, ret=0, **{"tid": 80, **kw}))


def _rc(ts, path, ret=0, resolved=None, chain="", flags=0, tid=100, **kw):
    """tracers/tracepoint.py's re-check of a failed path as its task meant it (a RECHECK row): ``resolved`` the
    path in the task's view, ``chain`` the inodes of the directories on it, root first."""
    resolved = (path if ret == 0 else "") if resolved is None else resolved
    return (ts, Kind.RECHECK, dict(op=Op.NEWFSTATAT, path=path, path2=resolved, name=chain, ret=ret, flags=flags,
                                   tid=tid, **kw))


FREE = (5_050, Kind.D_FREE, dict(dentry=D, tid=0))
EA = int(Flag.EXISTS_AFTER)
DIRFD, BASE = int(Flag.DIRFD), int(Flag.BASE)

# Every successful operation after which /t/x exists (bpf/tracepoint.c streams each on success).
CREATORS = [(Op.MKDIR, "/t/x", ""), (Op.LINK, "/t/orig", "/t/x"), (Op.RENAME, "/t/tmp", "/t/x"),
            (Op.CREATE, "/t/x", ""), (Op.MKNOD, "/t/x", ""), (Op.SYMLINK, "orig", "/t/x")]


@pytest.mark.parametrize("op,path,path2", CREATORS)
def test_a_creation_and_the_tracers_recheck_make_transient_without_streamed_successes(op, path, path2):
    # Default recording: successes are not streamed. The tracer's re-check right after
    # stat("/t/x") failed (while dentries were freed) found it, and nothing that can make
    # it ran in between: it existed at the failure.
    rows = [_ns(1_000, op, path, path2), _sc(5_000, "/t/x", ENOENT, flags=EA), FREE, _rc(5_200, "/t/x")]
    v = agree(trace(*rows)).set_index("event_id")
    assert v.loc[2, "verdict"] == "transient"
    assert "re-check found it (event 4)" in v.loc[2, "reason"] and {3, 4} <= set(v.loc[2, "evidence"])
    # Issue 28 replaces "existed before" (the creation) with existence at the failure: the same
    # creation between the failure and the re-check explains the re-check's find, a plain miss.
    rows = [_sc(5_000, "/t/x", ENOENT, flags=EA), FREE, _ns(5_100, op, path, path2), _rc(5_200, "/t/x")]
    v = agree(trace(*rows)).set_index("event_id")
    assert v.loc[1, "verdict"] == "absent" and f"{op_name(op)} of /t/x (event 3)" in v.loc[1, "reason"]
    assert 3 in v.loc[1, "evidence"]
    # Issue 28: a trace recorded before re-checks were rows (the flag alone) cannot place a
    # creator before or after the re-check: no longer transient, uncertain.
    v = agree(trace(_ns(1_000, op, path, path2), _sc(5_000, "/t/x", ENOENT, flags=EA), FREE)).set_index("event_id")
    assert v.loc[2, "verdict"] == "uncertain" and "time is not in this trace" in v.loc[2, "reason"]
    # Without the re-check's word nothing says it existed after: a plain miss.
    v = agree(trace(_ns(1_000, op, path, path2), _sc(5_000, "/t/x", ENOENT), FREE)).set_index("event_id")
    assert v.loc[2, "verdict"] == "absent" and "no re-check found it" in v.loc[2, "reason"]


def test_mkdir_after_the_failure_is_not_existence_before_it():
    df = trace(_sc(5_000, "/t/x", ENOENT, flags=EA), FREE, _ns(5_100, Op.MKDIR, "/t/x"))
    v = agree(df).set_index("event_id")
    assert v.loc[1, "verdict"] == "absent" and "mkdir of /t/x (event 3)" in v.loc[1, "reason"]
    # ... nor existence at it: mkdir succeeds only where the name is not there.
    df = trace(_sc(5_000, "/t/x/f", ENOENT, flags=EA), FREE, _ns(5_100, Op.MKDIR, "/t/x"), _rc(5_200, "/t/x/f"))
    v = agree(df).set_index("event_id")
    assert v.loc[1, "verdict"] == "absent" and "a directory above it" in v.loc[1, "reason"]


def test_a_recheck_is_the_same_tasks_same_dirfd_right_after():
    rc = _rc(5_200, "x", resolved="/t/x", chain="2:700", flags=DIRFD, seq=5)
    fail = _sc(5_000, "x", ENOENT, flags=EA | DIRFD | BASE, seq=5, ino=700, op=Op.OPENAT)
    assert agree(trace(fail, FREE, rc)).set_index("event_id").loc[1, "verdict"] == "transient"
    # Another dirfd's "x", another task's, one a window later, one before the failure: none is its re-check.
    for other in (_rc(5_200, "x", resolved="/u/x", chain="2:800", flags=DIRFD, seq=6),
                  _rc(5_200, "x", resolved="/t/x", chain="2:700", flags=DIRFD, seq=5, tid=101),
                  _rc(5_000 + 1_000_001, "x", resolved="/t/x", chain="2:700", flags=DIRFD, seq=5),
                  _rc(4_900, "x", resolved="/t/x", chain="2:700", flags=DIRFD, seq=5)):
        v = agree(trace(*by_time([fail, FREE, other]))).set_index("event_id")
        judged = int(v.index[0])
        assert v.loc[judged, "verdict"] == "uncertain" and "time is not in this trace" in v.loc[judged, "reason"]


@pytest.mark.parametrize("creator,made", [
    (_ns(5_100, Op.CREATE, "x", flags=DIRFD | BASE, seq=9, ino=700), True),  # openat(fd of /t, "x", O_CREAT)
    (_ns(5_100, Op.CREATE, "x", flags=DIRFD | BASE, seq=9, ino=900), False),  # the same name in another directory
    (_ns(5_100, Op.CREATE, "/t/x", flags=BASE, ino=2), True),  # the absolute path, from the root
    (_ns(5_100, Op.CREATE, "/u/x", flags=BASE, ino=2), False),
    (_ns(5_100, Op.CREATE, "t/x", flags=BASE, ino=2), True),  # relative, from a task whose cwd is /
    (_ns(5_100, Op.CREATE, "x"), True),  # no base read: placed by its name alone, so it can have made it
    (_ns(5_100, Op.CREATE, "y"), False),
    (_ns(5_100, Op.MKDIR, "t", flags=BASE, ino=2), True),  # the directory above it
    (_ns(5_100, Op.RENAME, "/t2", "t", flags=BASE, ino=2), True),  # a directory renamed onto /t
    (_ns(5_100, Op.MOUNT, "/t", flags=BASE, ino=2), True),  # a mount over /t
    (_ns(5_100, Op.MOUNT, "/t/x", flags=BASE, ino=2), False),  # a mount point exists before its mount
    (_ns(5_100, Op.MOUNT, ""), True),  # move_mount by fd: over anything
])
def test_a_creator_is_placed_by_the_directory_its_path_starts_from(creator, made):
    # openat(fd, "x") of a task whose fd 5 is /t (inode 700) failed; the tracer's re-check
    # through /proc/TID/fd/5 found /t/x, on directories / (inode 2) and /t (inode 700).
    fail = _sc(5_000, "x", ENOENT, flags=EA | DIRFD | BASE, seq=5, ino=700, op=Op.OPENAT)
    rc = _rc(5_200, "x", resolved="/t/x", chain="2:700", flags=DIRFD, seq=5)
    v = agree(trace(fail, FREE, creator, rc)).set_index("event_id")
    assert v.loc[1, "verdict"] == ("absent" if made else "transient")
    assert ("(event 3) can have made it" in v.loc[1, "reason"]) == made
    assert "as /t/x" in v.loc[1, "reason"]  # the path resolved beside the one recorded


def test_a_relative_path_is_placed_against_the_tasks_cwd():
    # stat("d/f") from cwd /home (inode 10): the re-check found /home/d/f.
    fail = _sc(5_000, "d/f", ENOENT, flags=EA | BASE, ino=10)
    rc = _rc(5_200, "d/f", resolved="/home/d/f", chain="2:10:20")
    mk = _ns(5_100, Op.MKDIR, "d", flags=BASE, ino=10)  # mkdir("d") from the same cwd: its parent
    v = agree(trace(fail, FREE, mk, rc)).set_index("event_id")
    assert v.loc[1, "verdict"] == "absent" and "mkdir of d (event 3)" in v.loc[1, "reason"]
    elsewhere = _ns(5_100, Op.MKDIR, "d", flags=BASE, ino=30)  # mkdir("d") from another cwd
    assert agree(trace(fail, FREE, elsewhere, rc)).set_index("event_id").loc[1, "verdict"] == "transient"
    # A path through a symlink cannot be placed (the re-check records no chain): by name alone.
    rc_link = _rc(5_200, "d/f", resolved="/home/d/f")
    assert agree(trace(fail, FREE, elsewhere, rc_link)).set_index("event_id").loc[1, "verdict"] == "absent"
    # Successes of "d/f" name another file in another task's cwd: not existence before and after.
    rows = [_sc(1_000, "d/f", 0, tid=101), _sc(5_000, "d/f", ENOENT), FREE, _sc(6_000, "d/f", 0, tid=102)]
    assert agree(trace(*rows)).set_index("event_id").loc[2, "verdict"] == "absent"


def test_a_rename_exchange_removes_and_makes_neither_of_its_names():
    # renameat2("/t/x", "/t/y", RENAME_EXCHANGE) needs both names and leaves both: around
    # stat("/t/x")'s failure it neither explains it nor can have made /t/x.
    xch = int(Flag.EXCHANGE)
    for ts in (4_990, 5_100):
        rows = by_time([_sc(5_000, "/t/x", ENOENT, flags=EA), FREE, _rc(5_200, "/t/x"),
                        _ns(ts, Op.RENAME, "/t/x", "/t/y", flags=xch)])
        v = agree(trace(*rows)).set_index("event_id")
        judged = int(trace(*rows).query("kind == @Kind.PATH_SYSCALL")["event_id"].iloc[0])
        assert v.loc[judged, "verdict"] == "transient"
    # A plain rename of /t/x away explains it.
    rows = [_ns(4_990, Op.RENAME, "/t/x", "/t/y"), _sc(5_000, "/t/x", ENOENT), FREE, _rc(5_200, "/t/x", ret=ENOENT)]
    assert agree(trace(*rows)).set_index("event_id").loc[2, "verdict"] == "explained"
    # Directories swapped above the path: what lay below them went, and came.
    rows = [_ns(4_990, Op.RENAME, "/t/d", "/t/e", flags=xch), _sc(5_000, "/t/d/f", ENOENT), FREE,
            _rc(5_200, "/t/d/f", ret=ENOENT)]
    assert agree(trace(*rows)).set_index("event_id").loc[2, "verdict"] == "explained"
    rows = [_sc(5_000, "/t/d/f", ENOENT, flags=EA), FREE, _ns(5_150, Op.RENAME, "/t/e", "/t/d", flags=xch),
            _rc(5_200, "/t/d/f")]
    v = agree(trace(*rows)).set_index("event_id")
    assert v.loc[1, "verdict"] == "absent" and "rename of /t/d (event 3)" in v.loc[1, "reason"]


def test_an_unseen_creator_makes_it_uncertain_never_transient():
    base = [_sc(5_000, "/t/x", ENOENT, flags=EA), FREE]
    # An io_uring submission that can create a name (IORING_OP_OPENAT), its path unseen.
    uring = (4_800, Kind.NS_OP, dict(op=Op.URING, seq=18, tid=81))
    v = agree(trace(*by_time(base + [uring, _rc(5_200, "/t/x")]))).set_index("event_id")
    assert v.loc[2, "verdict"] == "uncertain" and "io_uring" in v.loc[2, "reason"] and 1 in v.loc[2, "evidence"]
    # A network or FUSE filesystem: the name can appear without a syscall of this kernel.
    v = agree(trace(*base, _rc(5_200, "/t/x", flags=int(Flag.REMOTE_FS)))).set_index("event_id")
    assert v.loc[1, "verdict"] == "uncertain" and "network or FUSE" in v.loc[1, "reason"]
    # Events lost between the failure and the re-check: the creator may be among them.
    lost = (5_100, Kind.LOST, dict(ret=12, cpu=1, tid=0))
    v = agree(trace(*base, lost, _rc(5_200, "/t/x"))).set_index("event_id")
    assert v.loc[1, "verdict"] == "uncertain" and "lost between the failure" in v.loc[1, "reason"]
    assert 3 in v.loc[1, "evidence"]
    # ... even with no dentry frees seen: they may be among them too.
    v = agree(trace(base[0], lost, _rc(5_200, "/t/x"))).set_index("event_id")
    assert v.loc[1, "verdict"] == "uncertain"
    # Losses well past the re-check (and its LOST horizon) leave it transient.
    far = (5_200 + 1_500, Kind.LOST, dict(ret=12, cpu=1, tid=0))
    assert agree(trace(*base, _rc(5_200, "/t/x"), far)).set_index("event_id").loc[1, "verdict"] == "transient"


@pytest.mark.parametrize("ret,why", [(ESRCH, "the task had exited"), (EBADF, "closed or names another directory"),
                                     (ENOENT, "did not find it")])
def test_a_recheck_that_could_not_resolve_the_path_is_a_plain_miss_saying_why(ret, why):
    df = trace(_sc(5_000, "x", ENOENT, flags=DIRFD | BASE, seq=5, ino=700), FREE, _rc(5_200, "x", ret=ret, seq=5,
                                                                                        flags=DIRFD))
    v = agree(df).set_index("event_id")
    assert v.loc[1, "verdict"] == "absent" and why in v.loc[1, "reason"] and 3 in v.loc[1, "evidence"]


def test_a_removal_of_the_path_or_a_parent_explains_it_whatever_the_recheck_found():
    for removal in (_ns(4_950, Op.UNLINK, "/t/d/x"), _ns(4_950, Op.RMDIR, "/t/d"),
                    _ns(4_950, Op.RENAME, "/t/d", "/t/e")):
        rows = [removal, _sc(5_000, "/t/d/x", ENOENT, flags=EA), FREE, _ns(5_100, Op.CREATE, "/t/d/x"),
                _rc(5_200, "/t/d/x")]
        v = agree(trace(*rows)).set_index("event_id")
        assert v.loc[2, "verdict"] == "explained" and v.loc[2, "evidence"] == [1, 2]


def test_batch_and_streaming_agree_on_rechecks_delivered_late():
    # Every rule above in one recording; the tracer appends its re-checks after the poll's
    # events, and the streaming correlator gets them in chunks of every size.
    rows = [_sc(5_000, "/t/a", ENOENT, flags=EA), _sc(5_010, "/t/b", ENOENT, flags=EA),
            _sc(5_020, "x", ENOENT, flags=EA | DIRFD | BASE, seq=5, ino=700), _sc(5_030, "/t/c", ENOENT, tid=101),
            _sc(5_040, "/t/d", ENOENT, flags=EA), _sc(5_045, "/t/e", ENOENT, flags=EA), FREE,
            _ns(5_100, Op.MKDIR, "/t/b"), (5_120, Kind.NS_OP, dict(op=Op.URING, seq=37, tid=81)),
            _ns(5_150, Op.UNLINK, "/t/zz"), _ns(5_160, Op.RENAME, "/t/e", "/t/f", flags=int(Flag.EXCHANGE)),
            _rc(5_200, "/t/a"), _rc(5_200, "/t/b"), _rc(5_200, "x", resolved="/t/x", chain="2:700", flags=DIRFD, seq=5),
            _rc(5_200, "/t/c", ret=ESRCH, tid=101), _rc(5_200, "/t/d", flags=int(Flag.REMOTE_FS)), _rc(5_200, "/t/e"),
            _sc(2_000_000, "/t/later", ENOENT, flags=EA), (2_000_100, Kind.SHRINK_START, dict(tid=0)),
            _rc(2_000_300, "/t/later")]
    df = trace(*rows)
    v = correlate(df)
    for cut in (1, 2, 5, 7):
        for reorder_ns in (0, 100_000_000):
            pd.testing.assert_frame_equal(v, streamed(df, cut=cut, reorder_ns=reorder_ns))
    got = dict(zip(v["path"], v["verdict"]))
    # The io_uring submission is around every failure here but the one seconds later.
    assert got == {"/t/a": "uncertain", "/t/b": "absent", "x": "uncertain", "/t/c": "absent", "/t/d": "uncertain",
                   "/t/e": "uncertain", "/t/later": "transient"}


# --- 5. losses no LOST record places ----------------------------------------------------------------


def test_reported_losses_without_lost_records_make_race_and_absent_uncertain():
    df = trace(*by_time(walk(100) + prune(103)))
    assert verdict_of(df).verdict == "race"
    df.attrs["meta"] = {"lost_total": 40}  # the recorder counted drops it could not stamp
    v = verdict_of(df)
    assert v.verdict == "uncertain" and "no LOST record places" in v.reason and "40" in v.reason
    miss = trace(*walk(100))
    miss.attrs["meta"] = {"lost_total": 40}
    assert verdict_of(miss).verdict == "uncertain"
    # Placed losses far from the window: nothing unplaced, the race stands.
    placed = trace(*by_time(walk(100) + prune(103)), (900_000, Kind.LOST, dict(ret=40, tid=0)))
    placed.attrs["meta"] = {"lost_total": 40}
    assert verdict_of(placed).verdict == "race"
    # An explanation does not rest on the window being complete.
    ns = (104, Kind.NS_OP, dict(op=Op.UNLINK, path="/d/f", parent=P, name="f", dentry=D, ino=7, tid=80))
    ex = trace(*by_time(walk(100) + [ns]))
    ex.attrs["meta"] = {"lost_total": 40}
    assert verdict_of(ex).verdict == "explained"


def test_reported_losses_make_syscall_verdicts_uncertain():
    df = trace(_ns(1_000, Op.MKDIR, "/t/x"), _sc(5_000, "/t/x", ENOENT, flags=EA), FREE,
               _sc(6_000, "/t/nx", ENOENT), _rc(5_200, "/t/x"), _sc(7_000, "/t/y", ENOENT, flags=EA))
    df.attrs["meta"] = {"lost_total": 3}
    v = correlate(df).set_index("event_id")
    assert (v["verdict"] == "uncertain").all()
    assert "no LOST record" in v.loc[2, "reason"] and "no LOST record" in v.loc[6, "reason"]


def test_selftest_phases_use_the_whole_traces_unplaced_losses():
    df = _echild_walks(judge.MIN_OVERLAPS, with_prune=True, race_at=3)
    ph = judge.judge_events(df, unplaced_lost=5)
    assert ph.race == 0 and ph.uncertain == 1  # not a FAIL when the race's window may miss a re-check


# --- 6. names: the component, not the rest of the path -----------------------------------------------


def test_a_rename_of_a_directory_mid_path_explains_a_dentryless_walk():
    # lookup of "bin" in /opt finds nothing (dentry 0) while /opt/bin is renamed away;
    # the kprobe tier reads the name from nd->last, which runs on: "bin/app".
    rows = [(100, Kind.WALK_ENTER, dict(parent=P, name="bin/app", path="/opt/bin/app", flags=RCU)),
            (102, Kind.NS_OP, dict(op=Op.RENAME, parent=P, name="bin", dentry=D2, ino=5, tid=80)),
            (110, Kind.WALK_RETURN, dict(parent=P, name="bin/app", ret=ENOENT, flags=RCU))]
    v = verdict_of(trace(*rows))
    assert v.verdict == "explained" and int(trace(*rows)["event_id"].iloc[1]) in v.evidence


# --- 7. what explains an -ENOENT ------------------------------------------------------------------


def test_unlink_then_recreate_then_a_prune_of_the_new_inode_is_not_explained():
    # unlink("/d/f") (inode 7): d_delete() leaves D hashed and negative; open(O_CREAT)
    # d_instantiate()s D with inode 9. A walk finds D positive (inode 9), the shrinker kills
    # it, the walk returns -ENOENT: the name existed when the walk found it.
    # The kprobe tier streams no lookup_fast return: the walk is its entry and its return.
    unlink = (100, Kind.NS_OP, dict(op=Op.UNLINK, path="/d/f", parent=P, name="f", dentry=D, ino=7, tid=80))
    rows = [unlink, (100.1, Kind.IPUT, dict(dentry=D, ino=7, tid=80))] + kwalk(400) + prune(403, ino=9)
    v = verdict_of(trace(*by_time(rows)))
    assert v.verdict == "race"
    # The same walk racing the unlink of inode 7 itself is explained.
    rows = kwalk(400) + [(403, Kind.IPUT, dict(dentry=D, ino=7, tid=80)),
                         (403.5, Kind.NS_OP, dict(op=Op.UNLINK, path="/d/f", parent=P, name="f", dentry=D, ino=7,
                                                  tid=80))]
    assert verdict_of(trace(*by_time(rows))).verdict == "explained"
    # A tier that streams lookup_fast's return: it found inode 9, the unlink of 7 is history.
    rows = [unlink] + walk(400, found_ino=9) + prune(403, ino=9)
    assert verdict_of(trace(*by_time(rows))).verdict == "race"
    # ... and one that found the dentry still negative was told the truth.
    rows = [unlink] + walk(400, found_ino=0) + prune(403, ino=9)
    assert verdict_of(trace(*by_time(rows))).verdict == "explained"


def test_syscall_level_rename_onto_and_recreate_do_not_explain():
    # rename("/d/g", "/d/f") replaces f atomically: stat("/d/f") failing around it is not explained.
    rows = [_sc(1_000, "/d/f", 0), _ns(4_900, Op.RENAME, "/d/g", "/d/f"), _sc(5_000, "/d/f", ENOENT), FREE,
            _sc(6_000, "/d/f", 0, tid=101)]
    v = agree(trace(*rows)).set_index("event_id")
    assert v.loc[3, "verdict"] == "transient"
    # unlink, then open(O_CREAT) succeeds (streamed with --all-paths), then stat fails:
    # the removal is history, the name existed again.
    rows = [_ns(4_000, Op.UNLINK, "/d/f"), _sc(4_300, "/d/f", 3, op=Op.OPENAT), _sc(5_000, "/d/f", ENOENT),
            FREE, _sc(6_000, "/d/f", 0, tid=101)]
    v = agree(trace(*rows)).set_index("event_id")
    assert v.loc[3, "verdict"] == "transient"
    # Without the re-create the unlink explains it.
    rows = [_sc(1_000, "/d/f", 0), _ns(4_000, Op.UNLINK, "/d/f"), _sc(5_000, "/d/f", ENOENT), FREE]
    assert correlate(trace(*rows)).set_index("event_id").loc[3, "verdict"] == "explained"


def test_recorded_6_1_trace_counts_only_the_retry_with_a_prune_as_an_overlap():
    # Recorded on a real 6.1 kernel: four -ECHILD walks; only one of them had its own
    # dentry under a prune (three found no dentry at all: retries for other reasons).
    # A prune is seen as a PRUNE/UNHASH/IPUT event of the dentry, or as the kernel side's
    # PRUNE_INFLIGHT on the walk (the dentry it found was dead, pruned while positive).
    from pathlib import Path

    import vfstrace

    df = vfstrace.load(Path(__file__).parent / "fixtures" / "traces" / "kprobe-6.1.jsonl")
    ph = judge.judge_events(df)
    wr = df[(df["kind"] == Kind.WALK_RETURN) & (df["ret"] == ECHILD)]
    pr = df[df["kind"].isin([Kind.PRUNE, Kind.UNHASH, Kind.IPUT])]
    inflight = int(Flag.PRUNE_INFLIGHT)
    with_prune = sum(1 for d, t, f in zip(wr["dentry"], wr["ts_ns"].astype(np.int64), wr["flags"])
                     if d and (f & inflight or ((pr["dentry"] == d) & (pr["ts_ns"].astype(np.int64) <= t)
                                                & (pr["ts_ns"].astype(np.int64) >= t - 1_000_000)).any()))
    assert (ph.retried, ph.race) == (len(wr), 0)
    assert ph.overlaps == with_prune < len(wr)
    assert ph.retried_no_prune == len(wr) - with_prune


def test_streaming_takes_unplaced_losses_as_the_batch_does():
    df = trace(*by_time(walk(100) + prune(103)), _sc(300, "/d/nx", ENOENT))
    v = correlate(df, unplaced_lost=7)
    sc = StreamingCorrelator(unplaced_lost=7)
    s = pd.concat([sc.feed(df.iloc[:4]), sc.feed(df.iloc[4:]), sc.finish()], ignore_index=True)
    pd.testing.assert_frame_equal(v, s.sort_values("event_id").reset_index(drop=True))
    assert (v["verdict"] == "uncertain").all()


# --- folded storms: a record the kernel folded stands for its repeats -------------------------------


def test_a_folded_storm_is_judged_once_and_counted_as_every_failure_it_stands_for():
    """bpf/tracepoint.c streams the first of a run of identical failures (same
    task, syscall, errno, path) as itself and folds the repeats within its
    window into one COALESCED record carrying their number: 1 + 999 stat()
    calls that failed. Each repeat shares the record's verdict, and the
    totals every report leads with count failed lookups, not records."""
    from vfstrace.report.analyze import summarize

    co = int(Flag.COALESCED)
    df = trace(_sc(1_000, "/t/missing", ENOENT), _sc(1_900, "/t/missing", ENOENT, flags=co))
    df.loc[1, "count"] = 999
    v = agree(df)
    assert list(v["verdict"]) == ["absent", "absent"] and list(v["count"]) == [1, 999]
    s = summarize(df, {"tier": "tracepoint"}, verdicts=v)
    assert s["verdicts"]["counts"] == {"absent": 1000}
    assert "1,000 failed lookups" in s["answer"]


@pytest.mark.parametrize("creator", [
    _ns(5_100, Op.CREATE, "x", flags=DIRFD | BASE, seq=9, ino=700, tid=81),  # openat(fd of /t, "x", O_CREAT)
    _ns(5_100, Op.MKNOD, "x", flags=DIRFD | BASE, seq=9, ino=700, tid=81),  # mknodat(fd of /t, "x"): mkfifo
    _ns(5_100, Op.LINK, ".src", "x", flags=DIRFD | BASE, seq=9, ino=700, tid=81),  # linkat(fd, ".src", fd, "x")
    _ns(5_100, Op.SYMLINK, ".src", "x", flags=DIRFD | BASE, seq=9, ino=700, tid=81),  # symlinkat(".src", fd, "x")
])
def test_a_creator_by_dirfd_of_a_task_the_filters_drop_is_the_failures_creator(creator):
    # `watch -c stat --path-prefix /t`: stat("/t/x") of the traced task fails (-ENOENT), then another task
    # makes x relative to its fd of /t (inode 700). The tier streams that creator whatever the comm filter (an
    # O_CREAT open is a creator from every task, as every NS_OP) and whatever the prefix (a relative path may
    # be under it: bpf/tracepoint.c paths_pass); the re-check then finds /t/x, made in between: a plain miss.
    fail = _sc(5_000, "/t/x", ENOENT, flags=EA | BASE, ino=2)
    rc = _rc(5_200, "/t/x", chain="2:700")
    v = agree(trace(fail, FREE, creator, rc)).set_index("event_id")
    assert v.loc[1, "verdict"] == "absent" and "(event 3) can have made it" in v.loc[1, "reason"]
    # Had the tier dropped it, the re-check's find would read as existence at the failure.
    assert agree(trace(fail, FREE, rc)).set_index("event_id").loc[1, "verdict"] == "transient"
