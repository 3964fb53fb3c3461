"""`vfstrace selftest`: its verdict rules, and its judgement of simulated kernels.

The FAIL path cannot be shown on a real kernel here (every bootable kernel
has the 2011 fix), so it is proven on the simulator's pre-patch traces: the
selftest must say FAIL and cite exactly the lookups the correlator calls
``race``, whose ground truth is ``race``; on post-patch traces it must say
PASS with every overlap retried.
"""

import json
import math

import pytest

from conftest import cli, invoke, is_root, need
from vfstrace import selftest
from vfstrace.selftest import FAIL, INCONCLUSIVE, PASS, Phase


def _has(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def test_verdict_rules():
    clean = Phase("baseline", 60, 1000, 50, overlaps=25, retried=25)
    assert selftest.verdict_of([clean])[0] == PASS
    racy = Phase("baseline", 60, 1000, 50, overlaps=3, retried=2, race=1,
                 races=[{"event_id": 17, "dentry": 0xFFFF8880DEAD, "name": "f001", "tid": 42, "comm": "cp",
                         "ts_ns": 1, "evidence": [3, 9]}])
    v, why = selftest.verdict_of([racy])
    assert v == FAIL and "event 17" in why and "0xffff8880dead" in why and "'f001'" in why and "tid 42" in why
    few = Phase("baseline", 30, 1000, 50, overlaps=4, retried=4)
    v, why = selftest.verdict_of([few])
    # 4 in 30 s = 8/min: 20 need 150 s, with a 1.5 margin 225 s
    assert v == INCONCLUSIVE and "-d 225" in why
    none = Phase("baseline", 30, 1000, 0)
    v, why = selftest.verdict_of([none])
    assert v == INCONCLUSIVE and "--widen" in why
    lossy = Phase("baseline", 60, 1000, 50, overlaps=30, retried=30, uncertain=10)
    assert selftest.verdict_of([lossy])[0] == INCONCLUSIVE
    assert {PASS: 0, FAIL: 1, INCONCLUSIVE: 2} == selftest.EXIT


def test_widening_factor_and_side_by_side_table():
    base = Phase("baseline", 30, 9000, 500, overlaps=10, retried=10)
    wide = Phase("widened", 30, 900, 480, overlaps=120, retried=120,
                 widen={"site": "__d_lookup_rcu", "rcu_only": True, "delay_ns": 200000, "delayed": 850,
                        "mean_delay_ns": 200400.0})
    assert selftest.widening_factor([base, wide]) == pytest.approx(12.0)
    res = selftest.Result(PASS, "ok", "6.12.0", "kprobe", ["kretprobe:__d_lookup_rcu"], [base, wide], "live",
                          factor=12.0)
    text = selftest.render_text(res)
    assert "overlaps/min without vs with widening: 20.0 vs 240.0 (x12.0)" in text
    row = next(line for line in text.splitlines() if line.startswith("overlaps per minute"))
    assert row.split()[-2:] == ["20.0", "240.0"]
    assert "delayed lookups" in text and "850" in text
    d = res.to_dict()
    assert d["widening_factor"] == 12.0 and d["phases"][1]["overlaps_per_min"] == 240.0
    assert selftest.widening_factor([base, Phase("widened", 30, 1, 1, widen={"x": 1})]) == 0.0
    assert math.isinf(selftest.widening_factor([Phase("baseline", 30, 1, 1), wide]))


@pytest.fixture(scope="module")
def sim_traces(tmp_path_factory):
    need(_has("vfstrace.workload.simulate") and _has("vfstrace.correlate"),
         "vfstrace.workload.simulate and vfstrace.correlate are needed to judge simulated kernels")
    from vfstrace.workload.simulate import simulate
    from vfstrace.store import save

    d = tmp_path_factory.mktemp("sim")
    out = {}
    for sem in ("buggy", "fixed"):
        events, truth = simulate(7, semantics=sem)
        path = d / f"{sem}.jsonl"
        save(events, path, {"kernel_release": f"simulated-{sem}", "tier": "simulated"})
        out[sem] = (path, events, truth)
    return out


def _run(args):
    """The command's exit code as main() would return it (standalone_mode=False), and its output."""
    r = invoke(args, standalone_mode=False)
    return r.return_value, r.output


def test_from_trace_buggy_kernel_fails_citing_the_racing_lookups(sim_traces):
    from vfstrace.correlate import correlate

    path, events, truth = sim_traces["buggy"]
    rc, out = _run(["selftest", "--from-trace", str(path), "--json"])
    assert rc == 1
    res = json.loads(out)
    assert res["verdict"] == "FAIL" and res["exit_code"] == 1
    ph = res["phases"][0]
    v = correlate(events)
    race_ids = set(v.loc[v["verdict"] == "race", "event_id"].astype(int))
    assert ph["race"] == len(race_ids) > 0
    cited = {r["event_id"] for r in ph["races"]}
    assert cited and cited <= race_ids
    # every cited lookup really raced (ground truth the correlator never saw)
    t = truth.set_index("event_id")["truth"]
    assert all(t.get(e) == "race" for e in cited)
    ev = events.set_index("event_id")
    for r in ph["races"]:
        assert r["dentry"] == int(ev.loc[r["event_id"], "dentry"]) or r["dentry"] != 0
        assert r["tid"] == int(ev.loc[r["event_id"], "tid"])
    rc, text = _run(["selftest", "--from-trace", str(path)])
    assert rc == 1
    first = ph["races"][0]
    assert f"event {first['event_id']}: dentry 0x{first['dentry']:x}" in text
    assert text.strip().splitlines()[-1].startswith("FAIL: ")


def test_from_trace_fixed_kernel_passes(sim_traces):
    path, events, truth = sim_traces["fixed"]
    rc, out = _run(["selftest", "--from-trace", str(path), "--json"])
    res = json.loads(out)
    ph = res["phases"][0]
    assert ph["race"] == 0
    # Overlaps are the retries with a prune of their own dentry seen; the others are counted apart.
    assert ph["retried"] - ph["retried_no_prune"] == ph["overlaps"] >= selftest.MIN_OVERLAPS
    assert (rc, res["verdict"]) == (0, "PASS")
    rc, _ = _run(["selftest", "--from-trace", str(path), "--min-overlaps", "100000"])
    assert rc == 2


def test_detector_check(sim_traces):
    d = selftest.detector_check()
    assert d["ok"] and d["buggy"]["race"] > 0 and d["fixed"]["race"] == 0


def test_from_trace_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    r = cli("selftest", "--from-trace", str(bad))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.startswith("vfstrace: error:") and len(r.stderr.strip().splitlines()) == 1


def test_bad_widen_is_one_line():
    r = cli("selftest", "--widen", "5ms")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--widen" in r.stderr


@pytest.mark.live
def test_refused_without_kprobes_in_one_line():
    import os

    need(is_root(), "the live selftest needs root")
    need(not os.path.exists("/sys/bus/event_source/devices/kprobe"),
         "this kernel has kprobes; the refusal is for kernels without (tests/test_selftest_vm.py covers the live run)")
    r = cli("selftest", "-d", "1")
    assert r.returncode == 4
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "selftest needs kprobes" in lines[0]


@pytest.mark.parametrize("impl", ["c", "python"])
@pytest.mark.parametrize("op", ["stat", "access", "open", "stat+open"])
def test_stat_loop_contract(impl, op, tmp_path, monkeypatch):
    """Both loops: "ready", then on SIGTERM one JSON line; only the dir's first N regular files."""
    import shutil
    import signal
    import subprocess
    import time

    from vfstrace.workload import statloop

    for name in ("c", "a", "b"):
        (tmp_path / name).write_text("x")
    (tmp_path / "0-subdir").mkdir()
    if impl == "c":
        need(shutil.which("cc") is not None, "no C compiler to build vfstrace/workload/statloop.c")
        monkeypatch.setenv("VFSTRACE_CACHE", str(tmp_path / "cache"))
    else:
        monkeypatch.setattr(statloop, "build", lambda: (None, "no C compiler (cc) found"))
    argv, notice = statloop.command(str(tmp_path), 2, 0, op)
    assert bool(notice) == (impl == "python")
    if impl == "c":
        assert argv[0].startswith(str(tmp_path / "cache"))
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    r = json.loads(out.strip().splitlines()[-1])
    assert (r["worker"], r["impl"], r["op"], r["files"], r["enoent"]) == ("stat", impl, op, 2, 0)
    assert r["stats"] > 0 and r["dir"] == str(tmp_path)
    with pytest.raises(ValueError):
        statloop.command(str(tmp_path), 2, 0, "unlink")


def test_stat_rate_follows_the_delay():
    assert selftest.stat_rate_for(200_000) == 5000.0  # one lookup per 200 us
    assert selftest.stat_rate_for(1_000) == selftest.MAX_STAT_RATE
