"""`vfstrace selftest` on real kernels (Debian 5.10, 6.1, 6.12 under qemu): one boot each.

Every kernel here carries the 2011 fix, so the verdict must be PASS: lookups
overlapped prunes of their own dentries and the kernel re-checked d_seq and
retried each one. Widening must multiply the overlaps per minute by at
least 5 against the unwidened phase of the same run, and the delay must have
been applied only to the workload's stat loop (delayed lookups > 0).
"""

import json

import pytest

from tests.conftest import ROOT, need, is_root

PHASE_SECONDS = 45
MIN_FACTOR = 5.0


@pytest.mark.vm
@pytest.mark.parametrize("kernel", ["5.10", "6.1", "6.12"])
def test_selftest_passes_and_widening_multiplies_overlaps(kernel, tmp_path):
    from vfstrace import vm

    need(is_root(), "booting guests with the host root shared needs root")
    ok, why = vm.can_boot(kernel)
    need(ok, why)
    py = str(ROOT / ".venv" / "bin" / "python")
    res = vm.run(kernel, [py, "-m", "vfstrace.cli", "selftest", "--json", "-d", str(PHASE_SECONDS),
                          "-o", "/vmout/selftest.vft"],
                 timeout=600, out_dir=tmp_path, cwd=str(ROOT))
    assert res.stdout.strip(), f"no output from the guest; stderr: {res.stderr[-2000:]}"
    r = json.loads(res.stdout[res.stdout.index("{"):])
    base, wide = r["phases"]
    print(f"{res.kernel_release}: overlaps/min {base['overlaps_per_min']} -> {wide['overlaps_per_min']} "
          f"(x{r['widening_factor']}); retried {base['retried']}+{wide['retried']}, race {base['race']}+{wide['race']}; "
          f"delayed {wide['widen']['delayed']} (mean {wide['widen']['mean_delay_ns'] / 1000:.0f} us); "
          f"boot+run {res.duration_s:.0f} s")
    assert r["detector"]["ok"]
    assert base["race"] == wide["race"] == 0
    assert wide["widen"]["delayed"] > 0
    assert (r["verdict"], res.returncode) == ("PASS", 0), r["reason"]
    assert r["widening_factor"] == "inf" or r["widening_factor"] >= MIN_FACTOR
