"""Paced limits (vfstrace/vm/pace.py): quiet-guest seconds spent at the rate the guest runs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from vfstrace.vm import boot, pace


def test_a_slowed_guest_is_charged_less_than_its_wall_time():
    b = pace.Budget(10)
    b.charge(6, 3.0)  # 6 s at a third of quiet speed: 2 quiet-guest seconds
    assert b.spent == pytest.approx(2.0) and not b.over()
    b.charge(8, 1.0)
    assert b.over() and b.wall == 14


def test_slowdown_is_never_below_one_nor_above_the_cap():
    assert pace.slowdown(pace.QUIET_PROBE_S / 10) == 1.0
    assert pace.slowdown(pace.QUIET_PROBE_S * 3) == pytest.approx(3.0)
    assert pace.slowdown(1e9) == pace.MAX_SLOWDOWN
    b = pace.Budget(1)
    b.charge(1000, 1e9)  # a stalled probe cannot stretch a budget without bound
    assert b.spent == pytest.approx(1000 / pace.MAX_SLOWDOWN)


def test_run_returns_what_a_command_printed():
    r = pace.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"], 60)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")


def test_run_kills_a_command_that_outlives_its_budget(monkeypatch):
    monkeypatch.setattr(pace, "probe", lambda: pace.QUIET_PROBE_S)  # a quiet guest: wall rate
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as e:
        pace.run([sys.executable, "-c", "print('started', flush=True); import time; time.sleep(60)"], 1.0, poll_s=0.2)
    assert time.monotonic() - t0 < 30
    assert "started" in e.value.stdout


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _beat(path, probe_s, stop):
    seq = 0
    while not stop.is_set():
        seq += 1
        path.write_text(json.dumps({"seq": seq, "probe_s": probe_s, "uptime_s": seq}))
        stop.wait(0.1)


@pytest.mark.parametrize("slow", [1.0, 4.0])
def test_the_host_waits_for_a_guest_as_long_as_its_heartbeat_says_it_is_slowed(tmp_path, monkeypatch, slow):
    """boot._wait_paced: a 1 quiet-guest-second budget lasts ~1 s for a guest at
    quiet speed and ~4 s for one whose probe ran four times slower."""
    monkeypatch.setattr(pace, "HEARTBEAT_S", 0.1)
    beat = tmp_path / "heartbeat"
    stop = threading.Event()
    t = threading.Thread(target=_beat, args=(beat, pace.QUIET_PROBE_S * slow, stop), daemon=True)
    t.start()
    proc = _sleeper()
    try:
        t0 = time.monotonic()
        assert boot._wait_paced(proc, pace.Budget(1.0), beat) is False  # ran out: the caller kills qemu
        took = time.monotonic() - t0
    finally:
        stop.set()
        proc.kill()
        proc.wait()
    assert took >= 0.8 * slow
    assert took < 2.5 * slow + 2


def test_a_guest_without_a_heartbeat_is_charged_wall_time(tmp_path, monkeypatch):
    monkeypatch.setattr(pace, "HEARTBEAT_S", 0.1)
    proc = _sleeper()
    try:
        t0 = time.monotonic()
        assert boot._wait_paced(proc, pace.Budget(1.0), tmp_path / "none") is False
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
        proc.wait()


def test_a_guest_that_ends_in_time_is_not_cut(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert boot._wait_paced(proc, pace.Budget(60), tmp_path / "none") is True


def test_heartbeat_writes_what_read_heartbeat_accepts(tmp_path):
    path = tmp_path / "hb"
    stop = threading.Event()
    t = threading.Thread(target=pace.heartbeat, args=(str(path), stop, 0.05), daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    rec = None
    while time.monotonic() < deadline and not (rec and rec["seq"] >= 2):
        rec = pace.read_heartbeat(path)
        time.sleep(0.05)
    stop.set()
    t.join(5)
    assert rec and rec["seq"] >= 2 and rec["probe_s"] > 0
    path.write_text("{not json")
    assert pace.read_heartbeat(path) is None
    path.write_text(json.dumps({"seq": "1", "probe_s": 0.1}))
    assert pace.read_heartbeat(path) is None
