"""The widening program on real kernels: who it holds, for how long, what it leaves.

One boot per kernel runs tests/vm/widen_check.py: a lookup loop in the
target cgroup and one in another cgroup, with the program attached
disarmed and then armed, as an fexit program and as a kretprobe; then
`vfstrace stress --widen`. Compared with what the loops themselves
counted:

- disarmed, the program counts the target's lookups (at least one per call
  of its loop, far fewer than both loops' together: the other cgroup is
  not selected) and holds none;
- armed, it holds the target's lookups, each for at least the delay and
  none cut short by the iteration bound, and the target loop slows to a
  small fraction of its disarmed rate;
- after close() no kprobe, no widening program and no cgroup is left;
- `vfstrace stress --widen` reports lookups held for about the delay, and
  cleans up likewise.

Rates of the other cgroup are timing, so they are measured by
bench/widen_isolation.py, not asserted here.
"""

import json

import pytest

from conftest import ROOT, need_guest_with_statloop

DELAY_NS = 200_000
PHASE_SECONDS = 3
# Timing is what this asserts on: its guest boots first among the VM tests, at
# normal priority, the pooled guests beside it at nice 19 (tests/guests.py).
GUEST_TIMED = True


def _check_mode(r):
    dis, arm = r["disarmed"], r["armed"]
    t_calls = dis["target_loop"]["stats"]
    o_calls = dis["other_loop"]["stats"]
    w = dis["widen"]
    assert w["delayed"] == 0 and w["unarmed"] == w["target_lookups"]
    assert w["target_lookups"] >= t_calls > 1000
    # the other loop, as busy as the target, is not counted: selection works
    assert w["target_lookups"] < t_calls + o_calls / 2
    wa = arm["widen"]
    assert wa["delayed"] > 0 and wa["unarmed"] == 0 and wa["capped"] == 0
    assert wa["delayed"] >= arm["target_loop"]["stats"]
    mean = wa["delay_ns_total"] / wa["delayed"]
    assert DELAY_NS <= mean < 5 * DELAY_NS
    assert arm["target_loop"]["stats_per_s"] < 0.2 * dis["target_loop"]["stats_per_s"]
    after = r["after"]
    assert after["kprobes"] == [] and after["progs"] == [] and after["cgroups"] == [], after
    return mean


@pytest.mark.vm
@pytest.mark.parametrize("kernel", ["5.10", "6.12"])
def test_widening_holds_only_the_target_and_cleans_up(kernel, tmp_path):
    from vfstrace import vm

    need_guest_with_statloop(kernel)
    py = str(ROOT / ".venv" / "bin" / "python")
    res = vm.run(kernel, [py, str(ROOT / "tests/vm/widen_check.py"), "-d", str(PHASE_SECONDS), "--stress", "15"],
                 timeout=900, out_dir=tmp_path, cwd=str(ROOT))
    rows = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith('{"check"')]
    assert res.returncode == 0 and rows, f"guest failed ({res.returncode}): {res.stderr[-2000:]}"
    modes = {r["mode_requested"]: r for r in rows if r["check"] == "mode"}
    assert set(modes) == {"fentry", "kprobe"}
    # these kernels have fentry and BTF for the site: the fexit program is used
    assert modes["fentry"]["mode"] == "fentry" and modes["fentry"]["how"] == "fexit on __d_lookup_rcu"
    assert modes["kprobe"]["how"] == "kretprobe on __d_lookup_rcu"
    for name, r in modes.items():
        mean = _check_mode(r)
        d, a = r["disarmed"], r["armed"]
        print(f"{res.kernel_release} {r['how']}: target {d['target_loop']['stats']} calls / "
              f"{d['widen']['target_lookups']} counted disarmed (other loop {d['other_loop']['stats']}); "
              f"armed {a['widen']['delayed']} held, mean {mean / 1000:.0f} us, target "
              f"{d['target_loop']['stats_per_s']:.0f} -> {a['target_loop']['stats_per_s']:.0f}/s")
    st = next(r for r in rows if r["check"] == "stress")
    assert st["returncode"] == 0, st.get("stderr_tail")
    w = st["result"]["widen"]
    assert w["how"] == "fexit on __d_lookup_rcu" and w["delay_ns"] == DELAY_NS
    assert w["delayed"] > 0 and w["capped"] == 0
    assert DELAY_NS <= w["mean_delay_ns"] < 5 * DELAY_NS
    assert st["result"]["copy_rounds"] > 0
    assert st["after"]["kprobes"] == [] and st["after"]["progs"] == [] and st["after"]["cgroups"] == [], st["after"]
    print(f"{res.kernel_release} stress --widen: {w['delayed']} of {w['target_lookups']} lookups held, "
          f"mean {w['mean_delay_ns'] / 1000:.0f} us; {st['result']['copy_rounds']} copy rounds")

