"""The widening program: delay parsing, site choice, and the real verifier.

The host kernel cannot attach kprobes, but it still verifies kprobe-type
programs, so loading (without attaching) proves the bounded busy-wait is
accepted by a real verifier. Attaching and delaying are proven in the VM
tests (tests/test_selftest_vm.py).
"""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from bpf import INCLUDE
from conftest import FIXTURES, is_root, need
from tracers import widen
from vfstrace.errors import TierUnavailable, VfstraceError


@pytest.mark.parametrize(
    "text,ns",
    [("200us", 200_000), ("0.2ms", 200_000), ("150000ns", 150_000), ("1ms", 1_000_000), ("1us", 1_000), ("5 µs", 5_000)],
)
def test_parse_delay(text, ns):
    assert widen.parse_delay(text) == ns


@pytest.mark.parametrize("text", ["200", "2ms", "0.5us", "abc", "-5us", "1e3us", "200us; rm -rf /"])
def test_parse_delay_rejects(text):
    with pytest.raises(VfstraceError):
        widen.parse_delay(text)


def test_iteration_bound_scales_and_caps():
    assert widen.max_iters(1_000) == 256
    assert widen.max_iters(200_000) == 200_000 // widen.NS_PER_ITER_FLOOR + 1
    assert widen.max_iters(widen.MAX_DELAY_NS) == widen.MAX_ITERS


def _choice(tier="kprobe", lookup="lookup_fast"):
    return SimpleNamespace(tier=tier, symbols={"lookup": lookup})


def test_site_prefers_rcu_lookup():
    text = (FIXTURES / "kallsyms/6.18.44-fc-v595/kallsyms.txt").read_text()
    assert widen.choose_site(_choice(), text) == ("__d_lookup_rcu", True)


def test_site_takes_a_clone_then_falls_back_to_the_lookup_role():
    clone = "ffffffff81000000 t __d_lookup_rcu.constprop.0\nffffffff81000100 t lookup_fast\n"
    assert widen.choose_site(_choice(), clone) == ("__d_lookup_rcu.constprop.0", True)
    assert widen.choose_site(_choice(lookup="do_lookup"), "ffffffff81000100 t do_lookup\n") == ("do_lookup", False)
    with pytest.raises(TierUnavailable):
        widen.choose_site(_choice(lookup=None), "")


@pytest.mark.parametrize("tier", ["tracepoint", None])
def test_refused_without_kprobes(tier):
    with pytest.raises(TierUnavailable, match="widening needs kprobes"):
        widen.Widener(_choice(tier=tier), 200_000, site="lookup_fast", rcu_only=False)


def test_options_reach_the_program_as_numbers_only():
    w = widen.Widener(_choice(), 200_000, cgroup_id=4242, site="__d_lookup_rcu", rcu_only=True)
    assert w.cflags() == [
        INCLUDE,
        "-DVFS_WIDEN_DELAY_NS=200000ULL",
        f"-DVFS_WIDEN_MAX_ITERS={widen.max_iters(200_000)}",
        "-DVFS_FILTER_CGROUP=4242ULL",
        "-DVFS_WIDEN_NEED_RESULT=1",
        "-DVFS_WIDEN_SAMPLE=65536",
        "-DVFS_WIDEN_MODE=1",
    ]
    text = w.program_text()
    assert "#define VFS_WIDEN_DELAY_NS 200000ULL" in text and "int widen_ret(struct pt_regs *ctx)" in text


@pytest.mark.parametrize("text,share,sample", [("1", 1.0, 65536), ("0.1", 0.1, 6554), ("25%", 0.25, 16384),
                                               ("0.00001", 0.00001, 1)])
def test_share_reaches_the_program_as_a_number_out_of_65536(text, share, sample):
    assert widen.parse_share(text) == pytest.approx(share)
    w = widen.Widener(_choice(), 200_000, site="__d_lookup_rcu", rcu_only=True, share=widen.parse_share(text))
    assert f"-DVFS_WIDEN_SAMPLE={sample}" in w.cflags()


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.1", "abc", "0.1; system()", "150%", ""])
def test_bad_share_is_one_error(bad):
    with pytest.raises(VfstraceError, match="--widen-share"):
        widen.parse_share(bad)


class _FakeBtf:
    def __init__(self, funcs):
        self.funcs = funcs

    def func_nargs(self, name):
        return self.funcs.get(name)


def test_fentry_tier_widens_with_fexit_when_btf_has_the_site():
    w = widen.Widener(_choice("fentry"), 200_000, cgroup_id=7, site="__d_lookup_rcu", rcu_only=True,
                      btf=_FakeBtf({"__d_lookup_rcu": 3}))
    assert (w.mode, w.mode_note, w.how) == ("fentry", None, "fexit on __d_lookup_rcu")
    assert w.cflags()[-3:] == ["-DVFS_WIDEN_MODE=2", "-DVFS_WIDEN_FN=__d_lookup_rcu", "-DVFS_WIDEN_NARGS=3"]


@pytest.mark.parametrize("site,funcs,why", [
    ("__d_lookup_rcu.constprop.0", {"__d_lookup_rcu": 3}, "compiler clone"),
    ("__d_lookup_rcu", {}, "BTF has no function"),
])
def test_fentry_tier_falls_back_to_a_kretprobe_and_says_why(site, funcs, why):
    w = widen.Widener(_choice("fentry"), 200_000, site=site, rcu_only=True, btf=_FakeBtf(funcs))
    assert w.mode == "kprobe" and why in w.mode_note
    assert "-DVFS_WIDEN_MODE=1" in w.cflags() and not any(f.startswith("-DVFS_WIDEN_FN") for f in w.cflags())


def test_kprobe_tier_never_uses_fexit():
    w = widen.Widener(_choice("kprobe"), 200_000, site="__d_lookup_rcu", rcu_only=True,
                      btf=_FakeBtf({"__d_lookup_rcu": 3}))
    assert w.mode == "kprobe" and w.how == "kretprobe on __d_lookup_rcu"


def _debian_headers():
    cands = sorted(Path("/usr/src").glob("linux-headers-6.1*-amd64"))
    return str(cands[-1]) if cands else None


@pytest.fixture
def bcc_headers(monkeypatch):
    need(is_root(), "loading a BPF program needs root")
    try:
        import bcc  # noqa: F401
    except ImportError:
        need(False, "bcc is not importable (bash scripts/setup.sh installs python3-bpfcc)")
    hdr = _debian_headers()
    need(hdr is not None, "Debian 6.1 headers missing under /usr/src (apt-get install linux-headers-amd64)")
    from tracers.headers import bcc_kernel_source

    src = bcc_kernel_source(hdr)
    need(src is not None, f"could not assemble a BCC kernel source tree from {hdr}")
    monkeypatch.setenv("BCC_KERNEL_SOURCE", src)
    return src


@pytest.mark.live
@pytest.mark.parametrize("delay_ns", [widen.MIN_DELAY_NS, widen.DEFAULT_DELAY_NS, widen.MAX_DELAY_NS])
def test_real_verifier_accepts_the_bounded_wait(bcc_headers, delay_ns):
    fd = widen.verify_only(delay_ns, cgroup_id=12345)
    assert fd > 0


@pytest.mark.live
def test_real_verifier_accepts_the_sampled_wait(bcc_headers):
    assert widen.verify_only(widen.DEFAULT_DELAY_NS, cgroup_id=12345, share=0.1) > 0


@pytest.mark.live
def test_real_verifier_enforces_the_bound(bcc_headers):
    """Without the iteration bound scaled to the 1M-instruction limit the same loop is refused:
    the bound, not luck, is what makes the program loadable."""
    import bcc

    from bpf import INCLUDE, program

    flags = [INCLUDE, "-DVFS_WIDEN_DELAY_NS=1000000ULL", "-DVFS_WIDEN_MAX_ITERS=1000000", "-DVFS_FILTER_CGROUP=1ULL"]
    b = bcc.BPF(text=program("widen.c").encode(), cflags=flags)
    try:
        with pytest.raises(Exception, match="Argument list too long|too large|E2BIG"):
            b.load_func("widen_ret", bcc.BPF.KPROBE)
    finally:
        b.cleanup()
