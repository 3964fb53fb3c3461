"""`vfstrace watch` / `record`: lifecycle, one-line failures, traces that survive signals."""

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT, VFSTRACE, cli, is_root, need, need_kernel_without_kprobes, need_tracing


def _one_line_error(r):
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("vfstrace: error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_bad_comm_is_one_line():
    _one_line_error(cli("watch", "-c", "x" * 40, "-d", "1"))


def test_not_root_is_one_line():
    need(is_root(), "needs root to drop to an unprivileged user")
    r = cli("watch", "-d", "1", user=65534, env={"HOME": "/tmp"})
    _one_line_error(r)
    assert "root" in r.stderr


@pytest.mark.live
def test_kprobe_tier_refused_here_in_one_line():
    need_kernel_without_kprobes("the refusal is not expected here")
    r = cli("watch", "--tier", "kprobe", "-d", "1")
    _one_line_error(r)
    assert "kprobe" in r.stderr


@pytest.mark.live
def test_auto_falls_back_to_tracepoint_dry_run():
    need_kernel_without_kprobes("auto would not fall back")
    r = cli("watch", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["tier"] == "tracepoint"
    assert "tracepoint:syscalls:sys_exit_newfstatat" in d["attached"]
    # The dentry-cache frees: a raw tracepoint where BTF describes the cache
    # argument, the classic tracepoint otherwise.
    assert any(a.endswith("kmem_cache_free") for a in d["attached"]), d["attached"]


@pytest.mark.live
def test_ebpf_prints_program_with_numeric_filters_only():
    need_tracing()
    r = cli("watch", "--ebpf", "-c", "zq9\"*/x", "--path-prefix", "/tmp/\"; zq8")
    assert r.returncode == 0, r.stderr
    assert "TRACEPOINT_PROBE(kmem, kmem_cache_free)" in r.stdout
    assert "zq9" not in r.stdout and "zq8" not in r.stdout  # user text never reaches C


@pytest.mark.live
def test_record_command_traces_its_enoent(tmp_path):
    need_tracing()
    from vfstrace.store import load, read_meta

    missing = str(tmp_path / f"missing-{uuid.uuid4().hex}")
    trace = tmp_path / "t.trace"
    code = f"import os,time\ntime.sleep(0.3)\nprint(os.getpid())\nfor _ in range(5):\n  os.path.exists({missing!r})\n"
    r = cli("record", "-o", str(trace), "-d", "60", "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    child_pid = int(r.stdout.splitlines()[0])
    meta = read_meta(trace)
    assert meta["closed"] and meta["tier"] == "tracepoint" and meta["stop_reason"] == "workload exited"
    assert any("sys_exit_newfstatat" in p for p in meta["probes"])
    df = load(trace)
    from vfstrace.events import Kind

    hits = df[(df.path == missing) & (df.kind == int(Kind.PATH_SYSCALL))]  # not the tracer's RECHECK rows
    # Five failed stat()s: identical repeats may be folded into one record
    # carrying their count, so the counts add up to five.
    assert int(hits["count"].sum()) == 5
    assert set(hits.ret) == {-2} and set(hits.pid) == {child_pid}


@pytest.mark.live
def test_sigterm_flushes_and_closes_the_trace(tmp_path):
    need_tracing()
    from vfstrace.store import read_meta

    trace = tmp_path / "sig.trace"
    p = subprocess.Popen([*VFSTRACE, "watch", "-o", str(trace)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (trace.is_dir() and any(trace.iterdir())):
        time.sleep(0.2)
    time.sleep(2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    meta = read_meta(trace)
    assert meta["closed"] and meta["stop_reason"] == "SIGTERM"
    assert "event kind" in out
