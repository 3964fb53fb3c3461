"""The tracepoint tier, live on this kernel: recorded facts match what the test itself did."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT, VFSTRACE, need, need_tracing

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def churn_trace(tmp_path_factory):
    """One recording: `vfstrace record --tier tracepoint --workload stress` (churn), while
    this test stats a known-missing path and writes drop_caches itself."""
    need_tracing()
    d = tmp_path_factory.mktemp("tp")
    trace = d / "churn.trace"
    missing = str(d / f"missing-{uuid.uuid4().hex}")
    # the workload's own directory: other tracers on the machine (a second
    # recorder's re-checks, another stress) make churn paths too
    work = f"/var/tmp/vt-tp-{uuid.uuid4().hex[:12]}"
    os.mkdir(work)
    # the workload: 8 s of stress with churn (the workload's own -d)
    p = subprocess.Popen(
        [*VFSTRACE, "record", "--tier", "tracepoint", "-o", str(trace), "-d", "8", "--",
         sys.executable, "-m", "vfstrace.cli", "stress", "-d", "8", "--churn", "--files", "300", "-j", "2",
         "--pressure", "none", "--workdir", work],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 90
    # events flowing: the recorder has flushed at least one chunk
    while time.monotonic() < deadline and not (trace.is_dir() and any(trace.glob("part-*"))):
        time.sleep(0.2)
    time.sleep(0.5)
    for _ in range(3):
        assert not os.path.exists(missing)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
    out, err = p.communicate(timeout=180)
    shutil.rmtree(work, ignore_errors=True)
    assert p.returncode == 0, err
    from vfstrace.store import load, read_meta

    return load(trace), read_meta(trace), missing, work


def test_enoent_of_this_test_recorded_with_pid(churn_trace):
    from vfstrace.events import Kind

    df, meta, missing, _ = churn_trace
    rows = df[(df.path == missing) & (df.kind == int(Kind.PATH_SYSCALL))]
    # three stat() calls: a record each, or identical repeats folded into
    # one record's count (bpf/tracepoint.c coalescing); three results either way
    assert int(rows["count"].sum()) == 3 and 1 <= len(rows) <= 3
    assert set(rows.ret) == {-2}
    assert set(rows.pid) == {os.getpid()}
    assert meta["tier"] == "tracepoint" and meta["closed"]


def test_dentry_frees_with_addresses_during_drop_caches(churn_trace):
    from vfstrace.events import Kind

    df, meta, _, _ = churn_trace
    frees = df[df.kind == int(Kind.D_FREE)]
    assert len(frees) > 100
    assert (frees.dentry > 0xFFFF800000000000).all()  # kernel addresses (x86-64 direct map)
    assert meta["lost_total"] == 0


def test_churn_enoent_explained_by_ns_ops_in_trace(churn_trace):
    from vfstrace.events import Kind, Op

    df, _, _, work = churn_trace
    enoent = df[(df.kind == int(Kind.PATH_SYSCALL)) & (df.ret == -2) & df.path.str.startswith(work + "/")
                & df.path.str.contains("/churn/c")]
    assert len(enoent) > 0
    removals = [int(Op.UNLINK), int(Op.RMDIR), int(Op.RENAME)]
    removed = set(df[(df.kind == int(Kind.NS_OP)) & df.op.isin(removals)].path)
    # Every churn ENOENT names a path the churn unlinked or renamed away, or
    # the copy of one: `cp -a SRC DST` makes DST/REL of SRC/REL, so a name the
    # churn took from SRC before cp reached it is missing from DST too, where
    # the stress workload's own look at the copy stats it.
    assert {re.sub(r"/copy\d+/r\d+/", "/src/", p, count=1) for p in enoent.path} <= removed


def _correlate(df):
    need(importlib.util.find_spec("vfstrace.correlate") is not None, "vfstrace.correlate (the correlator) is not in this tree yet")
    from vfstrace.correlate import StreamingCorrelator

    c = StreamingCorrelator()
    import pandas as pd

    parts = [c.feed(df)]
    parts.append(c.finish())
    return pd.concat([p for p in parts if p is not None and len(p)], ignore_index=True) if any(
        p is not None and len(p) for p in parts) else pd.DataFrame(columns=["verdict", "path"])


def test_verdicts_explained_for_churn(churn_trace):
    df, _, _, _ = churn_trace
    v = _correlate(df)
    churn = v[v.path.astype(str).str.contains("/churn/c")]
    assert (churn.verdict == "explained").sum() > 0
    assert "race" not in set(v.verdict)


def test_no_transient_without_churn(tmp_path):
    need_tracing()
    need(importlib.util.find_spec("vfstrace.correlate") is not None, "vfstrace.correlate (the correlator) is not in this tree yet")
    trace = tmp_path / "quiet.trace"
    r = subprocess.run(
        [*VFSTRACE, "record", "--tier", "tracepoint", "-o", str(trace), "-d", "30", "--",
         sys.executable, "-m", "vfstrace.cli", "stress", "-d", "6", "--files", "300", "-j", "2", "--workdir", "/var/tmp"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert r.returncode == 0, r.stderr
    from vfstrace.store import load

    v = _correlate(load(trace))
    assert not {"transient", "race"} & set(v.verdict)


# What a child process does, by raw syscall number so the libc in use cannot
# turn stat() into newfstatat()/statx(): stat(a) (path in arg 0), rename(a, b)
# (args 0, 1) and renameat2(AT_FDCWD, a, AT_FDCWD, b, 0) (args 1, 3): all ENOENT.
SYSCALLS_CHILD = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = sys.argv[1].encode(), sys.argv[2].encode()
buf = ctypes.create_string_buffer(256)
assert libc.syscall(4, a, buf) == -1 and ctypes.get_errno() == 2
assert libc.syscall(82, a, b) == -1 and ctypes.get_errno() == 2
assert libc.syscall(316, -100, a, -100, b, 0) == -1 and ctypes.get_errno() == 2
"""


def _child_syscalls_traced(tmp_path, syscall_args):
    """(tracer mode, the rows naming the child's paths, child pid, a, b)."""
    from tracers.tracepoint import TracepointTracer
    from vfstrace.options import TraceOptions

    a = str(tmp_path / f"missing-{uuid.uuid4().hex}")
    b = a + ".renamed"
    t = TracepointTracer(TraceOptions(extra={"syscall_args": syscall_args, "recheck": False}))
    t.load()
    try:
        child = subprocess.run([sys.executable, "-c", SYSCALLS_CHILD, a, b], capture_output=True, text=True, timeout=60)
        assert child.returncode == 0, child.stderr
        import pandas as pd

        parts, deadline = [], time.monotonic() + 5
        while time.monotonic() < deadline:
            df = t.poll(100)
            parts.append(df[(df.path == a) | (df.path2 == b)])
            if sum(len(p) for p in parts) >= 3:
                time.sleep(0.3)  # a fourth row would be a duplicate: let it arrive
                df = t.poll(0)
                parts.append(df[(df.path == a) | (df.path2 == b)])
                break
        rows = pd.concat(parts, ignore_index=True).sort_values("ts_ns", ignore_index=True)
        return t.mode, t.attached(), rows, a, b
    finally:
        t.close()


def test_exit_only_mode_is_chosen_where_it_can_be():
    """On x86-64 with kernel BTF (this host) the tracer reads syscall arguments
    from saved registers at sys_exit: no sys_enter program is attached."""
    need_tracing()
    from tracers.tracepoint import TracepointTracer, regs_unavailable
    from vfstrace.options import TraceOptions

    why = regs_unavailable()
    need(why is None, f"exit-only mode cannot run here: {why}")
    t = TracepointTracer(TraceOptions(extra={"recheck": False}))
    t.load()
    try:
        assert t.mode == "regs" and t.mode_note is None
        probes = t.attached()
        assert "tracepoint:syscalls:sys_exit_newstat" in probes
        assert not [p for p in probes if ":sys_enter_" in p]
    finally:
        t.close()


@pytest.mark.parametrize("syscall_args", ["regs", "map"])
def test_child_syscalls_seen_exactly_once_with_their_paths(tmp_path, syscall_args):
    """Both modes: each ENOENT syscall of a child is one record with the child's
    pid, the syscall's kind/op/ret and both paths, i.e. what the child did."""
    need_tracing()
    from tracers.tracepoint import regs_unavailable
    from vfstrace.events import Kind, Op

    if syscall_args == "regs":
        why = regs_unavailable()
        need(why is None, f"exit-only mode cannot run here: {why}")
    mode, probes, rows, a, b = _child_syscalls_traced(tmp_path, syscall_args)
    assert mode == syscall_args
    assert bool([p for p in probes if ":sys_enter_" in p]) == (syscall_args == "map")
    assert len(rows) == 3, rows.to_string()
    assert len(set(rows.pid)) == 1 and rows.pid.iloc[0] != os.getpid()
    assert set(rows.ret) == {-2} and set(rows.path) == {a}
    got = [(int(k), int(o), p2) for k, o, p2 in zip(rows.kind, rows.op, rows.path2)]
    assert got == [
        (int(Kind.PATH_SYSCALL), int(Op.STAT), ""),
        (int(Kind.NS_OP), int(Op.RENAME), b),
        (int(Kind.NS_OP), int(Op.RENAME), b),
    ]


def test_exit_only_argument_indexes_match_the_syscalls():
    """bpf/tracepoint.c names each path argument by field (enter+map mode) and
    by index (exit-only mode); the index must be the field's position in this
    kernel's sys_enter_<syscall> format file."""
    import re

    need_tracing()
    from bpf import source
    from tracers.tracepoint import SOURCE, tracepoint_format

    src = source(SOURCE)
    table = [(sc, f, i) for sc, rest in re.findall(r"^(?:PATH1|OPEN1|NS1|NS2)\((\w+), (.*)\)$", src, re.M)
             for f, i in re.findall(r"ARG\((\w+), (\d)\)", rest)]
    assert len(table) >= 50  # paths, dirfds and flags of 31 syscalls
    checked = 0
    for sc, fld, idx in table:
        fmt = tracepoint_format("syscalls", f"sys_enter_{sc}")
        if fmt is None:
            continue
        args = [m for m in re.findall(r"field:[^;]*?(\w+);", fmt) if m not in ("__syscall_nr",) and not m.startswith("common_")]
        assert args.index(fld) == int(idx), (sc, fld, idx, args)
        checked += 1
    assert checked >= 10


def test_without_kernel_btf_falls_back_to_enter_map_with_a_notice(tmp_path, monkeypatch, capsys):
    need_tracing()
    import tracers.tracepoint as tp
    from vfstrace import log
    from vfstrace.options import TraceOptions

    log.setup(0)  # as the CLI does: notes reach stderr
    monkeypatch.setattr(tp, "KERNEL_BTF", tmp_path / "no-vmlinux")
    t = tp.TracepointTracer(TraceOptions(extra={"recheck": False}))
    t.load()
    try:
        assert t.mode == "map"
        assert "no kernel BTF" in t.mode_note and t.mode_note in capsys.readouterr().err
        assert "tracepoint:syscalls:sys_enter_newstat" in t.attached()
    finally:
        t.close()


def test_bad_syscall_args_is_one_clear_error():
    from tracers.tracepoint import TracepointTracer
    from vfstrace.errors import VfstraceError
    from vfstrace.options import TraceOptions

    with pytest.raises(VfstraceError, match="syscall_args must be one of auto, regs, map, not 'regz'"):
        TracepointTracer(TraceOptions(extra={"syscall_args": "regz"}))


@pytest.mark.parametrize("syscall_args", ["auto", "map"])
def test_path_prefix_filter_keeps_only_paths_under_it(tmp_path, syscall_args):
    """A record is kept when its path, or a rename's second path, is under the prefix."""
    need_tracing()
    from tracers.tracepoint import TracepointTracer
    from vfstrace.options import TraceOptions

    inside = str(tmp_path / f"in-{uuid.uuid4().hex}")
    outside = f"/var/tmp/out-{uuid.uuid4().hex}"
    t = TracepointTracer(TraceOptions(path_prefix=str(tmp_path), extra={"syscall_args": syscall_args, "recheck": False}).validate())
    t.load()
    try:
        r = subprocess.run([sys.executable, "-c", SYSCALLS_CHILD, outside, inside], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        subprocess.run([sys.executable, "-c", SYSCALLS_CHILD, inside, outside], capture_output=True, timeout=60, check=True)
        time.sleep(0.3)
        df = t.poll(200)
        assert (df.path == inside).sum() == 3  # stat, rename, renameat2 of the second child
        assert set(df[df.path == outside].path2) == {inside}  # renames kept for their second path
        assert t.counters()["filtered_prefix"] >= 1  # the first child's stat(outside)
    finally:
        t.close()


STORM_CHILD = r"""
import os, sys
a, b, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for path in (a, b):
    for _ in range(n):
        try:
            os.stat(path)
        except FileNotFoundError:
            pass
"""


def _storm(tmp_path, n, **extra):
    """A child fails os.stat() on path a n times, then on b n times, under the tracer;
    (rows for a, rows for b, counters)."""
    from tracers.tracepoint import TracepointTracer
    from vfstrace.options import TraceOptions
    import pandas as pd

    a = str(tmp_path / f"storm-a-{uuid.uuid4().hex}")
    b = str(tmp_path / f"storm-b-{uuid.uuid4().hex}")
    t = TracepointTracer(TraceOptions(extra={"recheck": False, **extra}))
    t.load()
    try:
        child = subprocess.run([sys.executable, "-c", STORM_CHILD, a, b, str(n)], capture_output=True, text=True,
                               timeout=120)
        assert child.returncode == 0, child.stderr
        parts = [t.poll(50) for _ in range(5)] + [t.poll(0), t.poll(0)]
        df = pd.concat(parts, ignore_index=True)
        return df[df.path == a], df[df.path == b], t.counters()
    finally:
        t.close()


def test_a_storm_of_identical_failures_is_folded_and_every_one_accounted_for(tmp_path):
    """n identical failed stat() calls: their records' counts add up to exactly n
    (none lost, none counted twice), in far fewer records than n; the two
    paths are never folded together."""
    need_tracing()
    from vfstrace.events import Flag

    n = 20_000
    ra, rb, c = _storm(tmp_path, n)
    for rows in (ra, rb):
        assert int(rows["count"].sum()) == n, rows[["ts_ns", "count", "flags"]].to_string()
        assert len(rows) < n // 10
        assert set(rows.ret) == {-2}
        folded = rows[(rows["flags"] & int(Flag.COALESCED)) != 0]
        assert len(folded) >= 1 and (folded["count"] >= 1).all()
        assert ((rows["flags"] & int(Flag.COALESCED)) == 0).sum() >= 1  # the first of a run is streamed as itself
        assert rows["ts_ns"].is_monotonic_increasing or len(rows.cpu.unique()) > 1
    assert ra.ts_ns.max() < rb.ts_ns.min()  # all of a before all of b, as the child ran them
    assert c["coalesced"] >= 2 * n - len(ra) - len(rb)
    # Every path syscall that returned is counted once, by its outcome: the 2n
    # failures (kept, folded or not), and the successes and other errors
    # (the child's own start-up makes some) that nobody streams.
    assert c["path_ok_not_streamed"] > 0
    assert c["path_syscalls"] >= 2 * n + c["path_ok_not_streamed"] + c["path_other_errno_not_streamed"]


def test_coalescing_off_streams_every_failure_as_its_own_record(tmp_path):
    need_tracing()
    n = 2_000
    ra, rb, c = _storm(tmp_path, n, coalesce_ns=0)
    assert len(ra) == n and len(rb) == n
    assert set(ra["count"]) == {1} and c["coalesced"] == 0


def test_bad_coalesce_window_is_one_clear_error():
    from tracers.tracepoint import TracepointTracer
    from vfstrace.errors import VfstraceError
    from vfstrace.options import TraceOptions

    for bad in ("soon", -1, 2_000_000_000):
        with pytest.raises(VfstraceError, match="coalesce_ns"):
            TracepointTracer(TraceOptions(extra={"coalesce_ns": bad}))


def test_dentry_cache_probes_are_raw_where_btf_describes_the_cache_argument():
    """This kernel's kmem tracepoints pass the struct kmem_cache (BTF says so):
    the plan puts the probes on raw tracepoints, at that argument, with the
    offset of the cache's name from BTF; the tracer attaches them and counts
    dentry frees through them (drop_caches frees dentries)."""
    need_tracing()
    from tracers.btf import Btf, tracepoint_arg_pointees
    from tracers.tracepoint import TracepointTracer, raw_kmem_plan
    from vfstrace.options import TraceOptions

    btf = Btf.from_file()
    args = tracepoint_arg_pointees(btf, "kmem_cache_free")
    need(args is not None and "struct kmem_cache" in args, f"kmem_cache_free here does not pass the cache: {args}")
    plan = raw_kmem_plan(btf)
    assert plan["VFS_RAW_KMEM_CACHE_FREE_ARG"] == str(args.index("struct kmem_cache"))
    assert plan["VFS_OFF_KMEM_CACHE_NAME"] == str(btf.offsetof("kmem_cache", "name"))
    t = TracepointTracer(TraceOptions(extra={"recheck": False, "dentry_allocs": True}))
    t.load()
    try:
        assert "raw_tracepoint:kmem_cache_free" in t.attached()
        assert "raw_tracepoint:kmem_cache_alloc" in t.attached()
        d = f"/var/tmp/vfstrace-raw-{uuid.uuid4().hex}"
        os.mkdir(d)
        for i in range(200):
            try:
                os.stat(os.path.join(d, f"n{i}"))  # negative dentries, to be freed
            except FileNotFoundError:
                pass
        os.rmdir(d)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        # Dentries are freed a grace period after drop_caches kills them
        # (d_free -> call_rcu), so poll until the frees have arrived.
        import pandas as pd

        from vfstrace.events import Kind

        frames, deadline = [], time.monotonic() + 10
        while True:
            frames.append(t.poll(200))
            c = t.counters()
            if (c["dentry_frees"] >= 200 and c["dentry_allocs"] >= 200) or time.monotonic() > deadline:
                break
        df = pd.concat(frames, ignore_index=True)
        assert c["dentry_allocs"] >= 200 and c["dentry_frees"] >= 200, c
        assert (df["kind"] == int(Kind.D_FREE)).sum() >= 1  # D_FREE records with their addresses
    finally:
        t.close()


def test_dentry_allocations_are_probed_only_on_request():
    """By default the tier has no program on kmem_cache_alloc (none of its
    verdicts reads D_ALLOC, and the probe would run on every slab allocation
    of the machine): nothing attached there, none in the program, and no
    dentry_allocs counter, whose 0 would claim that none happened. Asked
    for, the probe is there and counts."""
    need_tracing()
    from tracers.tracepoint import TracepointTracer
    from vfstrace.options import TraceOptions

    t = TracepointTracer(TraceOptions(extra={"recheck": False}))
    t.load()
    try:
        assert not any("kmem_cache_alloc" in a for a in t.attached()), t.attached()
        assert any(a.endswith("kmem_cache_free") for a in t.attached()), t.attached()
        text = t.program_text()
        assert "#define VFS_RAW_KMEM_CACHE_ALLOC_ARG" not in text and "#define VFS_HAVE_kmem_cache_alloc" not in text
        assert "dentry_allocs" not in t.counters()
        assert "dentry_frees" in t.counters()
    finally:
        t.close()
    t = TracepointTracer(TraceOptions(extra={"recheck": False, "dentry_allocs": True}))
    t.load()
    try:
        assert any("kmem_cache_alloc" in a for a in t.attached()), t.attached()
        d = f"/var/tmp/vfstrace-alloc-{uuid.uuid4().hex}"
        os.mkdir(d)
        os.rmdir(d)  # a dentry allocated (and a positive one made negative)
        deadline = time.monotonic() + 10
        while t.counters().get("dentry_allocs", 0) < 1 and time.monotonic() < deadline:
            t.poll(100)
        assert t.counters()["dentry_allocs"] >= 1, t.counters()
    finally:
        t.close()


def test_bad_kmem_probe_is_one_clear_error():
    from tracers.tracepoint import TracepointTracer
    from vfstrace.errors import VfstraceError
    from vfstrace.options import TraceOptions

    with pytest.raises(VfstraceError, match="kmem_probe"):
        TracepointTracer(TraceOptions(extra={"kmem_probe": "fast"}))
