"""The README as a test: every fenced example runs as written and shows what the README says.

The examples and their markers are read from README.md (tests/readme.py).
Guest examples run in the 6.1-prepatch and 6.1-control boots that
tests/test_prepatch_vm.py makes anyway (after its own checks, in the same
boot: a boot under TCG costs minutes); host ones run here; ``ci`` ones are
checked to be what .ci/run runs; the Python block runs against a trace.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import readme
import test_prepatch_vm
from conftest import ROOT, cli, is_root, need

EXAMPLES = readme.examples()
GUEST = [e for e in EXAMPLES if e.where == "guest"]
HOST = [e for e in EXAMPLES if e.where == "host"]


def _id(e: readme.Example) -> str:
    return " ".join(e.inner)[:60]


def guest_boots(items) -> list:
    """The prepatch module's boots that this module's guest examples read."""
    kernels = {e.kernel for it in items for e in GUEST if hasattr(it, "callspec") and it.callspec.params.get("ex") is e}
    return [(test_prepatch_vm.BOOT_ESTIMATE_S[k], *test_prepatch_vm._job(k)) for k in sorted(kernels)]


def test_every_fenced_block_has_a_marker_and_a_place_to_run():
    """Every command of every fenced block is one example (a block without a
    marker raises when EXAMPLES is read), and every guest kernel is one
    a VM test boots."""
    text = (ROOT / "README.md").read_text()
    blocks = sum(1 for ln in text.splitlines() if readme.FENCE.match(ln) and readme.FENCE.match(ln).group(1))
    assert blocks == len({e.block for e in EXAMPLES}) >= 4
    assert {e.kernel for e in GUEST} <= set(test_prepatch_vm.TIERS)
    first = text.splitlines()[3:5]  # the two set-up commands, right under the title
    assert [ln.split("#")[0].strip() for ln in first] == ["make demo", "make test"]


def test_a_block_without_a_marker_is_refused():
    with pytest.raises(readme.MarkerError, match="no readme-test marker"):
        readme.examples("# t\n\n```sh\nvfstrace doctor\n```\n\nmore text\n")
    with pytest.raises(readme.MarkerError, match="2 commands but 1 marker"):
        readme.examples("```sh\na\nb\n```\n<!-- readme-test\nhost | exit 0\n-->\n")
    with pytest.raises(readme.MarkerError, match="boots 6.1-control"):
        readme.examples("```sh\nvfstrace vm run --kernel 6.1-control -- x\n```\n<!-- readme-test\n"
                        "guest 6.1-prepatch | exit 0\n-->\n")[0].inner


def test_a_marker_judges_what_a_run_showed():
    ex = readme.examples("```sh\nvfstrace stress\n```\n<!-- readme-test\nguest 6.1-prepatch | exit 0 | "
                         "line ^cp errors: No such file or directory\\s+[1-9] | noline Traceback | truth>0\n-->\n")[0]
    assert ex.check(0, "cp errors: No such file or directory   3\n", truth=2) == []
    assert len(ex.check(1, "cp errors: No such file or directory   0\nTraceback\n", truth=0)) == 4


@pytest.mark.parametrize("ex", [e for e in EXAMPLES if e.where == "ci"], ids=_id)
def test_ci_example_is_what_ci_runs(ex):
    ci = (ROOT / ".ci" / "run").read_text()
    argv = ex.inner
    what = " ".join(argv) if argv[0] == "make" else next(a for a in argv if a.endswith(".py"))
    assert what in ci, f"README's {ex.command!r}: .ci/run does not run {what}"


def test_python_example_runs(tmp_path):
    ex = next(e for e in EXAMPLES if e.where == "python")
    sim = cli("simulate", "-d", "2", "-o", "run.vft", cwd=tmp_path, timeout=300)
    assert sim.returncode == 0, sim.stderr
    r = subprocess.run([sys.executable, "-c", ex.command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ex.check(r.returncode, r.stdout + r.stderr) == [], r.stdout + r.stderr


def _env() -> dict:
    return dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.mark.live
@pytest.mark.parametrize("ex", [e for e in HOST if e.inner[:2] != ["vfstrace", "vm"]], ids=_id)
def test_host_example_runs_as_written(ex):
    need(is_root(), f"{ex.command!r} runs as root")
    r = subprocess.run(ex.inner, cwd=ROOT, capture_output=True, text=True, env=_env(),
                       timeout=4 * readme.seconds(ex.inner) + 600)
    assert ex.check(r.returncode, r.stdout + r.stderr) == [], (r.stdout + r.stderr)[-3000:]


@pytest.mark.vm
@pytest.mark.parametrize("ex", [e for e in HOST if e.inner[:2] == ["vfstrace", "vm"]], ids=_id)
def test_host_vm_example_runs_as_written(ex):
    """After the pooled boots have built what they boot: `vm build` then finds its cache."""
    need(is_root(), f"{ex.command!r} runs as root")
    for k in test_prepatch_vm.TIERS:
        test_prepatch_vm._boot(k)
    r = subprocess.run(ex.inner, cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=3600)
    assert ex.check(r.returncode, r.stdout + r.stderr) == [], (r.stdout + r.stderr)[-3000:]


@pytest.mark.vm
@pytest.mark.parametrize("ex", GUEST, ids=lambda e: f"{e.kernel}: {_id(e)}")
def test_guest_example_shows_what_the_readme_says(ex):
    runs = {r["command"]: r for r in test_prepatch_vm.readme_results(ex.kernel)}
    assert ex.command in runs, f"{ex.kernel}'s boot did not run {ex.command!r}"
    r = runs[ex.command]
    print(f"{ex.kernel}: {ex.command}: exit {r['returncode']} in {r['seconds']} s (limit {r['limit_s']} quiet-guest s), "
          f"spurious ENOENT (kernel) {r['truth_count']}")
    bad = ex.check(r["returncode"], r["output"], r["truth_count"])
    assert bad == [], f"{'; '.join(bad)}\n{r['output'][-3000:]}"
