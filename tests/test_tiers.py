"""doctor and the kprobe tracer decide "this tier can run" with one function.

Each kernel's symbols are the ones captured from it (tests/fixtures/kallsyms);
the tier needs the walk, its lookup, the prune and both of its steps
(unhash, inode release). A kernel whose unhash step cannot be found must be
refused by both, with the same reason.
"""

import dataclasses

import pytest

from conftest import FIXTURES
from tracers.kprobe import KprobeTracer
from vfstrace.errors import TierUnavailable
from vfstrace.kernel import doctor, symbols
from vfstrace.kernel.tiers import PROBE_TIER_ROLES, probe_tier_blockers
from vfstrace.options import TraceOptions

KERNELS = sorted(p.name for p in (FIXTURES / "kallsyms").iterdir() if (p / "kallsyms.txt").exists())
ALL_OK = {k: doctor.Check(True, k) for k in ("root", "bpf", "bcc", "kprobes", "fentry", "tracepoints", "ringbuf")}


def _doctor_and_tracer(roles):
    tier = doctor._judge_tiers(ALL_OK, roles, "exact")["kprobe"]
    syms = {r: roles[r].symbol for r in symbols.ROLES}
    syms["recheck"] = list(roles["recheck"].symbols)
    choice = doctor.TierChoice("kprobe", "test", syms, kernel_release="test")
    try:
        KprobeTracer(TraceOptions(), choice)
        tracer_error = None
    except TierUnavailable as e:
        tracer_error = str(e)
    return tier, tracer_error


@pytest.mark.parametrize("release", KERNELS)
def test_captured_kernels_agree(release):
    roles = symbols.resolve(symbols.load_fixture(FIXTURES / "kallsyms" / release))
    tier, tracer_error = _doctor_and_tracer(roles)
    found = all(roles[r].symbol for r in PROBE_TIER_ROLES)
    attachable = all(roles[r].attachable is not False for r in PROBE_TIER_ROLES)
    assert tier.ok is (found and attachable)
    if not found:
        assert tracer_error is not None and "roles not found" in tracer_error


def test_a_kernel_without_its_unhash_step_is_refused_by_both():
    ks = symbols.load_fixture(FIXTURES / "kallsyms" / "6.1.0-56-amd64")
    text = {n: a for n, a in ks.text.items() if n.split(".")[0] not in ("___d_drop", "__d_drop")}
    roles = symbols.resolve(dataclasses.replace(ks, text=text))
    assert roles["unhash"].symbol is None and roles["lookup"].symbol and roles["prune"].symbol
    tier, tracer_error = _doctor_and_tracer(roles)
    assert tier.ok is False and "roles not found: unhash" in tier.detail
    assert tracer_error is not None and "roles not found: unhash" in tracer_error


@pytest.mark.parametrize("release", [k for k in KERNELS if not k.startswith("3.")])
def test_step_into_is_optional_and_its_absence_is_said(release):
    """Without step_into the tier still runs; doctor and the tracer say an open()'s last component is unwatched."""
    ks = symbols.load_fixture(FIXTURES / "kallsyms" / release)
    roles = symbols.resolve(ks)
    assert roles["step"].symbol == "step_into"  # out of line on 5.10, 6.1, 6.12 and 6.18
    tier, tracer_error = _doctor_and_tracer(roles)
    assert tier.ok and tracer_error is None and "unwatched" not in tier.detail
    text = {n: a for n, a in ks.text.items() if n.split(".")[0] != "step_into"}
    roles = symbols.resolve(dataclasses.replace(ks, text=text))
    assert roles["step"].symbol is None
    tier, tracer_error = _doctor_and_tracer(roles)
    assert tier.ok and tracer_error is None
    assert "open()'s last component is unwatched" in tier.detail


def test_blockers_name_missing_and_refused_roles():
    syms = {"walk": "walk_component", "lookup": "lookup_fast", "prune": "__dentry_kill", "unhash": None,
            "iput": "dentry_unlink_inode"}
    assert probe_tier_blockers(syms) == ["roles not found: unhash"]
    assert probe_tier_blockers({**syms, "unhash": "___d_drop"}, {"prune": "in kprobe blacklist"}) == [
        "not attachable: prune (in kprobe blacklist)"]
    assert probe_tier_blockers({**syms, "unhash": "___d_drop"}) == []
