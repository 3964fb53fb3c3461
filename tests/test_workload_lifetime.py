"""A workload never outlives its recorder; an unusable -o stops a run before anything loads or starts."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT, VFSTRACE, cli, is_root, need, need_tracing

STARTER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from vfstrace.workload import child
p = child.start(sys.argv[2:])
print(p.pid, flush=True)
time.sleep(300)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _gone_within(pid, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def test_child_dies_with_its_starter():
    """PR_SET_PDEATHSIG: SIGKILL of the process that started the workload ends it."""
    p = subprocess.Popen([sys.executable, "-c", STARTER, str(ROOT), "sleep", "300"], stdout=subprocess.PIPE, text=True)
    pid = int(p.stdout.readline())
    assert _alive(pid)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert _gone_within(pid, 5)


def _one_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("vfstrace: error:"), r.stderr
    return lines[0]


@pytest.mark.parametrize("case", ["file", "nonempty", "readonly", "devfull"])
def test_bad_output_refused_before_load_and_workload(tmp_path, case):
    need(is_root(), "tracing commands check root before -o")
    marker = tmp_path / "workload-ran"
    mounted = None
    if case == "file":
        out = tmp_path / "x.vft"
        out.write_text("not a trace")
    elif case == "nonempty":
        out = tmp_path / "x.vft"
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    elif case == "readonly":
        mounted = tmp_path / "ro"
        mounted.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(mounted)], check=True)
        out = mounted / "x.vft"
    else:
        out = "/dev/full"
    try:
        r = cli("record", "-o", str(out), "--", "touch", str(marker), timeout=120)
    finally:
        if mounted is not None:
            subprocess.run(["umount", str(mounted)], check=True)
    line = _one_line(r)  # nothing compiled: the tracepoint tier's build notice would be a second line
    assert str(out) in line
    assert not marker.exists()
    if case == "nonempty":
        assert (out / "mine.txt").read_text() == "keep"


def _sigkill_recorder(tmp_path, workload_argv, is_workload, ready=lambda: True):
    need_tracing()
    trace = tmp_path / "k.vft"
    p = subprocess.Popen([*VFSTRACE, "record", "--tier", "tracepoint", "-o", str(trace), "--", *workload_argv],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 120
    kids = []
    while time.monotonic() < end and not kids:
        kids = [k for k in _children(p.pid) if is_workload(k)]
        time.sleep(0.2)
    assert kids, "the workload never started"
    while time.monotonic() < end and not ready():
        time.sleep(0.1)
    assert ready(), "the workload never got going"
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return kids[0], trace


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except FileNotFoundError:
        return []


@pytest.mark.live
def test_sigkill_of_record_ends_its_command(tmp_path):
    tag = f"300.{uuid.uuid4().int % 1000}"
    pid, trace = _sigkill_recorder(tmp_path, ["sleep", tag], lambda k: tag.encode() in _cmdline(k))
    assert _gone_within(pid, 5)


@pytest.mark.live
def test_sigkill_of_record_ends_stress_which_cleans_up(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    argv = [*VFSTRACE, "stress", "-d", "120", "--files", "200", "-j", "1", "--pressure", "none", "--workdir", str(work)]
    pid, _ = _sigkill_recorder(tmp_path, argv, lambda k: b"stress" in _cmdline(k),
                               ready=lambda: any(work.iterdir()))  # its trees exist when the recorder dies
    assert _gone_within(pid, 30)
    assert list(work.iterdir()) == []  # trees and copies removed on the way out
    cg = [d for d in os.listdir("/sys/fs/cgroup") if d.startswith(f"vfstrace-stress-{pid}")] \
        if os.path.isdir("/sys/fs/cgroup") else []
    assert cg == []


def _pids_with(tag):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and tag.encode() in _cmdline(int(d)) and _alive(int(d)):
            out.append(int(d))
    return out


@pytest.mark.live
def test_sigkill_of_record_ends_what_its_command_forked(tmp_path):
    """A shell's background children get no parent-death signal; the workload's guarded cgroup ends them."""
    from vfstrace.workload.child import GUARD_GRACE

    need(os.path.isdir("/sys/fs/cgroup"), "needs a cgroup v2 mount")
    tag = f"{400 + uuid.uuid4().int % 100}.5"
    sh = f"sleep {tag} & sleep {tag} & wait"
    _sigkill_recorder(tmp_path, ["sh", "-c", sh], lambda k: b"sh" in _cmdline(k)[0],
                      ready=lambda: len(_pids_with(tag)) == 2)
    end = time.monotonic() + GUARD_GRACE + 10
    while time.monotonic() < end and _pids_with(tag):
        time.sleep(0.1)
    assert _pids_with(tag) == []
    assert not [d for d in os.listdir("/sys/fs/cgroup") if d.startswith("vfstrace-workload-")
                and not os.path.exists(f"/proc/{d.rsplit('-', 1)[1]}")]


@pytest.mark.live
def test_record_ends_a_daemon_its_command_left(tmp_path):
    """The command exits, leaving a child in a session of its own: record's stop ends it too."""
    need_tracing()
    tag = f"{500 + uuid.uuid4().int % 100}.5"
    r = cli("record", "--tier", "tracepoint", "-o", str(tmp_path / "d.vft"), "--",
            "sh", "-c", f"setsid sleep {tag} >/dev/null 2>&1 < /dev/null & sleep 1; exit 0", timeout=180)
    assert r.returncode == 0, r.stderr
    end = time.monotonic() + 5
    while time.monotonic() < end and _pids_with(tag):
        time.sleep(0.1)
    assert _pids_with(tag) == []


@pytest.mark.live
def test_disk_full_stops_record_with_one_line_and_ends_the_workload(tmp_path):
    need_tracing()
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
    tag = f"{600 + uuid.uuid4().int % 100}.5"
    gen = ("import os\nfor i in range(50_000_000):\n    os.path.exists('/nonexistent/full-%d' % i)\n")
    try:
        r = cli("record", "--tier", "tracepoint", "-o", str(full / "t.vft"), "--",
                "sh", "-c", f"sleep {tag} & {sys.executable} -c \"{gen}\"", timeout=300)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vfstrace: error:")]
        assert r.returncode != 0 and len(errors) == 1 and "No space left" in errors[0], r.stderr
        assert "Traceback" not in r.stderr
        assert _pids_with(tag) == []
        from vfstrace.store import load

        assert not list((full / "t.vft").glob(".*.tmp"))
        assert len(load(full / "t.vft")) > 0  # the parts flushed before the disk filled are readable
    finally:
        subprocess.run(["umount", str(full)], check=True)
