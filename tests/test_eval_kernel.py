"""bench/eval_kernel.py's --churn reaches the guest's tests/vm/prepatch_check.py and its `vfstrace stress`
(argument passing only: no guest boots here), and a control's false suspects print as precision and recall."""

import importlib.util
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import eval_kernel  # noqa: E402


def _prepatch_check():
    spec = importlib.util.spec_from_file_location("prepatch_check", ROOT / "tests" / "vm" / "prepatch_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_churn_reaches_the_guest_script_and_its_stress_command():
    argv = eval_kernel.guest_argv(["tracepoint"], 20.0, "200us", None, churn=True)
    assert argv[1].endswith("tests/vm/prepatch_check.py") and argv[-1] == "--churn"
    assert "--churn" not in eval_kernel.guest_argv(["tracepoint"], 20.0, "200us", None)
    pc = _prepatch_check()
    stress = pc.stress_argv(20.0, "200us", None, "/var/tmp/vt", 200, "drop_caches", churn=True)
    assert "--churn" in stress and "--churn" not in pc.stress_argv(20.0, "200us", None, "/var/tmp/vt", 200, "none")
    # A command line `vfstrace stress` takes as it is (parsed, not run).
    from vfstrace.workload.stress import stress_cmd

    args = stress[stress.index("stress") + 1:]
    ctx = stress_cmd.make_context("stress", list(args))
    assert ctx.params["churn"] is True and ctx.params["widen"] == "200us"


def test_the_guest_script_takes_churn_from_its_command_line(monkeypatch, tmp_path):
    pc = _prepatch_check()
    seen = {}

    def fake_run(out, tier, seconds, widen, share, workdir, files, pressure, churn=False):
        seen[tier] = churn
        return {"tier": tier, "churn": churn}

    monkeypatch.setattr(pc, "tier_run", fake_run)
    monkeypatch.setattr(pc.os, "makedirs", lambda *a, **k: None)
    monkeypatch.setattr(sys, "argv", ["prepatch_check.py", str(tmp_path), "--tiers", "tracepoint", "--churn"])
    pc.main()
    assert seen == {"tracepoint": True}


def test_eval_kernel_churn_boots_with_it_and_prints_the_controls_precision(monkeypatch, capsys):
    from vfstrace import vm

    booted = {}

    def fake_boot(kernel, tiers, seconds, widen, share, churn=False):
        booted[kernel] = churn
        run = {"suspects": 3, "truth": 0, "matched": 0, "suspect": "transient", "first_suspect_s": 1.0,
               "first_truth_s": None, "suspects_citing_prune": 0, "verdicts": {"transient": 3, "explained": 40},
               "lost": 0, "churn": churn, "stress": {"cp_enoent": 7, "copy_rounds": 9}}
        return {"kernel_release": "6.1.0", "boot_seconds": 1.0, "runs": {t: run for t in tiers}}

    monkeypatch.setattr(vm, "can_boot", lambda k: (True, ""))
    monkeypatch.setattr(eval_kernel, "_boot", fake_boot)
    assert eval_kernel.main(["--kernel", "6.1-control", "--tiers", "tracepoint", "--churn"]) == 0
    assert booted == {"6.1-control": True}
    out = capsys.readouterr().out
    assert "stress --widen 200us --churn" in out
    assert "6.1-control   tracepoint precision 0.00 recall n/a (0 matched / 3 transient" in out
    assert "false transient 3" in out
