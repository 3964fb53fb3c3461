"""The simulator: deterministic, in the event schema, truth kept apart, hazards present."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from vfstrace.errors import VfstraceError
from vfstrace.events import COLUMNS, ECHILD, ENOENT, NUMPY_DTYPES, Kind
from vfstrace.workload.simulate import TRACEPOINT_KINDS, simulate, simulate_cmd

SMALL = dict(duration_ns=3_000_000)


@pytest.fixture(scope="module")
def buggy():
    return simulate(11, semantics="buggy", loss_rate=0.01, **SMALL)


@pytest.fixture(scope="module")
def fixed():
    return simulate(11, semantics="fixed", **SMALL)


def test_same_seed_same_trace_and_different_seed_differs():
    a, ta = simulate(5, **SMALL)
    b, tb = simulate(5, **SMALL)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(ta, tb)
    c, _ = simulate(6, **SMALL)
    assert len(c) != len(a) or not c["ts_ns"].equals(a["ts_ns"])


def test_events_are_in_the_schema_numbered_and_time_ordered(buggy):
    ev, truth = buggy
    assert tuple(ev.columns) == COLUMNS
    for c in COLUMNS:
        assert ev[c].dtype == np.dtype(NUMPY_DTYPES[c]), c
    assert (ev["event_id"].to_numpy() == np.arange(1, len(ev) + 1)).all()
    assert (np.diff(ev["ts_ns"].to_numpy().astype(np.int64)) >= 0).all()
    # Truth is apart from the events, and names only events that exist.
    assert "truth" not in ev.columns
    assert set(truth["event_id"]).issubset(set(ev["event_id"]))


def test_truth_labels_match_the_judged_events(buggy):
    ev, truth = buggy
    e = ev.set_index("event_id")
    walk = truth[truth["level"] == "walk"]
    rows = e.loc[walk["event_id"]]
    assert (rows["kind"] == Kind.WALK_RETURN).all()
    assert rows["ret"].isin([ENOENT, ECHILD]).all()
    # Every judged walk in the trace has a label.
    judged = ev[(ev["kind"] == Kind.WALK_RETURN) & ev["ret"].isin([ENOENT, ECHILD])]
    assert set(judged["event_id"]) == set(walk["event_id"])
    sc = truth[truth["level"] == "syscall"]
    assert (e.loc[sc["event_id"], "kind"] == Kind.PATH_SYSCALL).all()
    assert set(sc["truth"]) <= {"transient", "explained", "absent"}


def test_buggy_kernel_races_and_fixed_kernel_retries(buggy, fixed):
    _, tb = buggy
    ev_f, tf = fixed
    assert (tb["truth"] == "race").sum() > 0
    assert (tf["truth"] == "race").sum() == 0
    assert (tf["truth"] == "transient").sum() == 0
    assert (tf["truth"] == "retried").sum() > 0
    # The fixed kernel's retries show as SEQ_CHECK -ECHILD events.
    assert ((ev_f["kind"] == Kind.SEQ_CHECK) & (ev_f["ret"] == ECHILD)).sum() > 0
    # Real -ENOENT exists on both: explained (churn) and absent (never-existing names).
    for t in (tb, tf):
        assert {"explained", "absent"} <= set(t["truth"])


def test_hazards_reuse_loss_migration_and_filtered_entries(buggy):
    ev, _ = buggy
    allocs = ev[ev["kind"] == Kind.D_ALLOC]["dentry"]
    frees = ev[ev["kind"] == Kind.D_FREE]["dentry"]
    assert allocs.isin(frees).any(), "some freed address is allocated again"
    lost = ev[ev["kind"] == Kind.LOST]
    assert len(lost) > 0 and (lost["ret"] > 0).all()
    walkers = ev[ev["comm"] == "cp"]
    assert (walkers.groupby("tid")["cpu"].nunique() > 1).any(), "walkers migrate between CPUs"
    enters = (ev["kind"] == Kind.WALK_ENTER).sum()
    returns = (ev["kind"] == Kind.WALK_RETURN).sum()
    assert enters < returns, "some walks have no WALK_ENTER (kernel-side filtering)"


def test_no_reuse_means_every_address_is_allocated_once():
    ev, _ = simulate(3, reuse=False, **SMALL)
    allocs = ev[ev["kind"] == Kind.D_ALLOC]["dentry"]
    assert allocs.is_unique


def test_loss_drops_events_and_counts_them():
    full, _ = simulate(4, **SMALL)
    lossy, _ = simulate(4, loss_rate=0.01, **SMALL)
    lost = lossy[lossy["kind"] == Kind.LOST]
    assert len(lost) > 0
    assert len(lossy) - len(lost) + int(lost["ret"].sum()) == len(full)


def test_tracepoint_view_has_only_tracepoint_kinds():
    ev, truth = simulate(2, view="tracepoint", **SMALL)
    assert set(ev["kind"].unique()) <= {int(k) for k in TRACEPOINT_KINDS}
    assert (ev["kind"] == Kind.PATH_SYSCALL).sum() > 0
    assert (truth["level"] == "syscall").all() and len(truth)


@pytest.mark.parametrize("kw", [dict(semantics="maybe"), dict(walkers=0), dict(loss_rate=1.5), dict(view="x")])
def test_bad_arguments_raise_one_line_errors(kw):
    with pytest.raises(VfstraceError):
        simulate(1, **kw)


def test_cli_writes_a_trace_and_truth(tmp_path):
    from vfstrace.store import load

    out, truth = tmp_path / "t.vft", tmp_path / "truth.parquet"
    r = CliRunner().invoke(simulate_cmd, ["--seed", "9", "-d", "0.002", "--loss-rate", "0.002", "-o", str(out),
                                          "--truth", str(truth)])
    assert r.exit_code == 0, r.output
    ev = load(out)
    direct, dtruth = simulate(9, duration_ns=2_000_000, loss_rate=0.002)
    assert len(ev) == len(direct)
    assert (ev["event_id"].to_numpy() == direct["event_id"].to_numpy()).all()
    assert ev.attrs["meta"]["lost_total"] == int(direct.loc[direct["kind"] == Kind.LOST, "ret"].sum())
    t = pd.read_parquet(truth)
    assert list(t["event_id"]) == list(dtruth["event_id"]) and list(t["truth"]) == list(dtruth["truth"])


def test_cli_duration_is_seconds_and_tier_picks_the_view(tmp_path):
    from vfstrace.cli import main
    from vfstrace.store import load
    from vfstrace.workload.simulate import TRACEPOINT_KINDS

    out = tmp_path / "tp.vft"
    r = CliRunner().invoke(simulate_cmd, ["--seed", "3", "-d", "0.005", "--tier", "tracepoint", "-o", str(out)])
    assert r.exit_code == 0, r.output
    ev = load(out)
    assert set(ev["kind"].unique()) <= {int(k) for k in TRACEPOINT_KINDS}
    assert ev.attrs["meta"]["workload"]["simulate"]["duration_ns"] == 5_000_000
    # every event falls within the 5 ms simulated, give or take the per-CPU clock jitter (2 us)
    span = int(ev["ts_ns"].max()) - int(ev["ts_ns"].min())
    assert span <= 5_000_000 + 2 * 2_000
    for bad in (["--events", "kprobe"], ["-d", "20"]):  # the old flag; 20 s (it was milliseconds)
        with pytest.raises(SystemExit) as e:
            main(["simulate", *bad, "-o", str(tmp_path / "x.vft")])
        assert e.value.code == 2
    assert not (tmp_path / "x.vft").exists()


def test_cli_rejects_bad_flags(tmp_path):
    r = CliRunner().invoke(simulate_cmd, ["--semantics", "other", "-o", str(tmp_path / "x.vft")])
    assert r.exit_code != 0


def test_new_hazards_stale_rechecks_recreate_and_rename_onto():
    from vfstrace.events import Flag, Op

    ev, truth = simulate(4, semantics="buggy", duration_ns=8_000_000)
    sc = ev[ev["kind"] == Kind.SEQ_CHECK]
    outside = sc[sc["op"] == Op.COMPLETE_WALK]
    # complete_walk() runs after walk_component() returned: no walk state, no IN_WALK, no dentry.
    assert len(outside) > 0 and (outside["flags"] & int(Flag.IN_WALK) == 0).all() and (outside["dentry"] == 0).all()
    assert (sc.loc[sc["op"] != Op.COMPLETE_WALK, "flags"] & int(Flag.IN_WALK) != 0).all()
    # Unlinked names come back quickly (open O_CREAT by the churn task) within the explain window.
    un = ev[(ev["kind"] == Kind.NS_OP) & (ev["op"] == Op.UNLINK)]
    cr = ev[(ev["kind"] == Kind.PATH_SYSCALL) & (ev["comm"] == "churn")]
    t_un = dict(zip(un["path"], un["ts_ns"].astype(np.int64)))
    assert any(0 < t - t_un.get(p, -10**18) < 500_000 for p, t in zip(cr["path"], cr["ts_ns"].astype(np.int64)))
    # An unlink names the inode it removed (d_delete reads d_inode), a rename its source's.
    assert (ev.loc[(ev["kind"] == Kind.NS_OP) & ev["op"].isin([Op.UNLINK, Op.RENAME]), "ino"] != 0).all()


def test_per_cpu_delivery_renumbers_the_same_events():
    a, ta = simulate(5, **SMALL)
    b, tb = simulate(5, delivery="percpu", **SMALL)
    ts = b["ts_ns"].to_numpy().astype(np.int64)
    assert (np.diff(ts) < 0).any(), "ids are not time order"
    key = ["ts_ns", "cpu", "tid", "kind", "dentry"]
    pd.testing.assert_frame_equal(a.sort_values(key).drop(columns="event_id").reset_index(drop=True),
                                  b.sort_values(key).drop(columns="event_id").reset_index(drop=True))
    # The truth follows its events to their new ids.
    m = tb.merge(b[["event_id", "kind", "ts_ns"]], on="event_id")
    ma = ta.merge(a[["event_id", "kind", "ts_ns"]], on="event_id")
    assert sorted(zip(m["ts_ns"], m["truth"])) == sorted(zip(ma["ts_ns"], ma["truth"]))
    with pytest.raises(VfstraceError):
        simulate(5, delivery="sideways", **SMALL)


def test_tracepoint_default_recording_has_no_successes_and_the_tracers_recheck():
    from vfstrace.events import Flag

    ev, truth = simulate(7, view="tracepoint", all_paths=False, **SMALL)
    sc = ev[ev["kind"] == Kind.PATH_SYSCALL]
    assert len(sc) and (sc["ret"] == ENOENT).all()
    ea = (sc["flags"] & int(Flag.EXISTS_AFTER)) != 0
    t = truth.set_index("event_id")["truth"]
    # A raced stat of a file that existed throughout is there at the re-check; a never-existing name is not.
    assert ea[sc["event_id"].map(t).eq("transient").to_numpy()].all()
    assert not ea[sc["path"].str.contains("/nx").to_numpy()].any()
