"""`vfstrace stress`: the generator, cp error parsing, and a live run that leaves nothing behind."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, VFSTRACE, cli, is_root, need, need_kernel_without_kprobes
from vfstrace.workload.stress import CP_ENOENT, fs_type, generate_tree, list_files, pick_workdir


def test_generate_tree_makes_exactly_n_files(tmp_path):
    n = generate_tree(tmp_path / "t", files=137, depth=3, size=100)
    files = list_files(tmp_path / "t")
    assert n == 137 and len(files) == 137
    assert all(os.path.getsize(f) == 100 for f in files)
    assert max(Path(f).relative_to(tmp_path / "t").parts.__len__() for f in files) == 4  # 3 dirs + file


def test_cp_enoent_line_parsed():
    m = CP_ENOENT.match("cp: cannot stat 'src/d001/f000012.dat': No such file or directory")
    assert m and m.group("path") == "src/d001/f000012.dat"
    assert not CP_ENOENT.match("cp: cannot create regular file 'x': Permission denied")


def test_workdir_avoids_tmpfs_or_says_so():
    d, notice = pick_workdir(None)
    assert (fs_type(d) not in ("tmpfs", "ramfs")) or notice


def test_bad_flag_is_one_line():
    r = cli("stress", "--workdir", "/nonexistent/dir", "-d", "1")
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "workdir" in r.stderr


@pytest.mark.parametrize("delay", ["200", "2ms", "200us; rm -rf /", "0.1us"])
def test_bad_widen_delay_is_one_line(delay):
    r = cli("stress", "--widen", delay, "-d", "1")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--widen" in r.stderr


@pytest.mark.live
def test_stress_widen_refused_without_kprobes_before_anything_starts(tmp_path):
    """Widening needs a probe inside the path walk: on a kernel without
    kprobes one line, exit 4 (no usable tier), and no tree, no cgroup."""
    need_kernel_without_kprobes("widening would run here (tested in the VMs: tests/test_widen_vm.py)")
    r = cli("stress", "--widen", "200us", "-d", "5", "--workdir", str(tmp_path), timeout=60)
    assert r.returncode == 4, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--widen needs kprobes" in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.live
def test_stress_20s_leaves_nothing_behind(tmp_path):
    need(is_root(), "needs root for memory pressure (drop_caches / cgroup)")
    need(fs_type(str(tmp_path)) not in ("tmpfs", "ramfs"), f"{tmp_path} is tmpfs: dentries never pruned")
    r = cli("stress", "-d", "20", "--churn", "--workdir", str(tmp_path), "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["copy_rounds"] >= 1 and res["files_copied"] > 0
    assert res["pressure"] in ("cgroup+drop_caches", "drop_caches")
    assert res["drop_caches_writes"] > 0 or res["memory_max"]
    assert res["stat_calls"] > 0 and res["churn_ops"] > 0
    assert list(tmp_path.iterdir()) == []  # no tree, no copies
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.isdir(root):
            assert not [p for p in os.listdir(root) if p.startswith("vfstrace-stress-")]


def test_sigterm_while_the_tree_is_generated_still_cleans_up(tmp_path):
    """An orphaned stress run is sent SIGTERM at any moment, even before its tree is complete."""
    import signal
    import time

    p = subprocess.Popen([*VFSTRACE, "stress", "-d", "60", "--files", "200000", "--pressure", "none",
                          "--workdir", str(tmp_path)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    src = None
    while time.monotonic() < end and src is None:
        src = next((d / "src" for d in tmp_path.iterdir() if (d / "src").is_dir()), None)
        time.sleep(0.05)
    assert src is not None, "stress never started its tree"
    while time.monotonic() < end and not any(src.iterdir()):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)  # 200,000 files take far longer than this to write
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "SIGTERM" in out
    assert list(tmp_path.iterdir()) == []


def test_memory_limit_leaves_the_workers_their_memory_and_squeezes_the_tree():
    from vfstrace.workload.stress import WORKER_ANON_BYTES, memory_limit

    gib = 1 << 30
    small, large = memory_limit(200, 1024, 4, 2 * gib), memory_limit(20000, 1024, 4, 2 * gib)
    assert WORKER_ANON_BYTES <= small < large
    # below the tree's footprint (source + one per copy), so the cgroup reclaims its own dentries
    footprint = 20000 * (4096 + 2048) * 5
    assert large - WORKER_ANON_BYTES < footprint
    # a quarter of the machine at most, the workers' own memory at least
    assert memory_limit(10**7, 1 << 20, 8, 2 * gib) == gib // 2
    assert memory_limit(1, 0, 1, 64 << 20) == WORKER_ANON_BYTES


def _cgroup2_root() -> str | None:
    for line in open("/proc/self/mounts"):
        p = line.split()
        if len(p) >= 3 and p[2] == "cgroup2":
            return p[1]
    return None


@pytest.mark.live
def test_a_worker_is_in_the_cgroup_before_it_runs_and_the_controller_never_is(tmp_path):
    """join_and_exec: the worker's first instruction runs inside the cgroup;
    the path reaches sh as data, so a hostile one is written to, not run."""
    from vfstrace.workload.stress import join_and_exec

    need(is_root(), "creating a cgroup needs root")
    root = _cgroup2_root()
    need(root is not None, "no cgroup v2 hierarchy mounted")
    cg = Path(root) / f"vfstrace-test-join-{os.getpid()}"
    cg.mkdir()
    try:
        mine = Path("/proc/self/cgroup").read_text()
        r = subprocess.run(join_and_exec(cg / "cgroup.procs", ["cat", "/proc/self/cgroup"]), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        rel = "/" + str(cg.relative_to(root))
        assert f"0::{rel}" in r.stdout.splitlines()
        assert Path("/proc/self/cgroup").read_text() == mine
        evil = tmp_path / "$(touch pwned)"
        r = subprocess.run(join_and_exec(evil, ["true"]), capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0 and not (tmp_path / "pwned").exists() and evil.is_file()
    finally:
        cg.rmdir()


def test_churn_makes_names_through_every_creating_call_and_stops(tmp_path):
    """The --churn task, on its own for a moment: it unlinks and re-creates its names through each creating
    call in turn (vfstrace/workload/creators.py; a directory, a FIFO, a symlink among what it leaves) and ends
    when the run's stop is set."""
    import stat
    import threading
    import time

    from vfstrace.workload.creators import CALLS
    from vfstrace.workload.stress import CHURN_NAMES, Stress

    s = Stress(duration=1, churn=True, pressure="none", churn_rate=5000)
    t = threading.Thread(target=s._churn_loop, args=(tmp_path / "churn",))
    t.start()
    end = time.monotonic() + 30
    while s.churn_ops < 4 * len(CALLS) and time.monotonic() < end:
        time.sleep(0.05)
    s.stop_ev.set()
    t.join(timeout=10)
    assert not t.is_alive() and s.churn_ops >= 4 * len(CALLS)
    left = list((tmp_path / "churn").iterdir())
    kinds = {stat.S_IFMT(p.lstat().st_mode) for p in left}
    assert {stat.S_IFDIR, stat.S_IFIFO, stat.S_IFLNK, stat.S_IFREG} <= kinds
    assert len([p for p in left if not p.name.startswith(".")]) <= CHURN_NAMES


def test_bad_churn_rate_is_one_line():
    r = cli("stress", "--churn", "--churn-rate", "0", "-d", "1")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--churn-rate" in r.stderr
