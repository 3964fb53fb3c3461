"""The tracepoint tier, live on this kernel: recorded facts match what the test itself did."""

import importlib.util
import os
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT, need, need_tracing

pytestmark = pytest.mark.live
VFSTRACE = [sys.executable, "-m", "vfstrace.cli"]


@pytest.fixture(scope="module")
def churn_trace(tmp_path_factory):
    """One recording: `vfstrace record --tier tracepoint --workload stress` (churn), while
    this test stats a known-missing path and writes drop_caches itself."""
    need_tracing()
    d = tmp_path_factory.mktemp("tp")
    trace = d / "churn.trace"
    missing = str(d / f"missing-{uuid.uuid4().hex}")
    # the workload: 8 s of stress with churn (the workload's own -d)
    p = subprocess.Popen(
        [*VFSTRACE, "record", "--tier", "tracepoint", "-o", str(trace), "-d", "8", "--",
         sys.executable, "-m", "vfstrace.cli", "stress", "-d", "8", "--churn", "--files", "300", "-j", "2",
         "--pressure", "none", "--workdir", "/var/tmp"],
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
    assert p.returncode == 0, err
    from vfstrace.store import load, read_meta

    return load(trace), read_meta(trace), missing


def test_enoent_of_this_test_recorded_with_pid(churn_trace):
    df, meta, missing = churn_trace
    rows = df[df.path == missing]
    assert len(rows) == 3
    assert set(rows.ret) == {-2}
    assert set(rows.pid) == {os.getpid()}
    assert meta["tier"] == "tracepoint" and meta["closed"]


def test_dentry_frees_with_addresses_during_drop_caches(churn_trace):
    from vfstrace.events import Kind

    df, meta, _ = churn_trace
    frees = df[df.kind == int(Kind.D_FREE)]
    assert len(frees) > 100
    assert (frees.dentry > 0xFFFF800000000000).all()  # kernel addresses (x86-64 direct map)
    assert meta["lost_total"] == 0


def test_churn_enoent_explained_by_ns_ops_in_trace(churn_trace):
    from vfstrace.events import Kind, Op

    df, _, _ = churn_trace
    enoent = df[(df.kind == int(Kind.PATH_SYSCALL)) & (df.ret == -2) & df.path.str.contains("/churn/c")]
    assert len(enoent) > 0
    unlinked = set(df[(df.kind == int(Kind.NS_OP)) & (df.op == int(Op.UNLINK))].path)
    assert set(enoent.path) <= unlinked  # every churn ENOENT names a path the churn unlinked


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
    df, _, _ = churn_trace
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
