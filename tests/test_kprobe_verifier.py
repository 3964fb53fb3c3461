"""The kprobe tier on this host: BTF layouts, planning, and the real verifier.

This machine's kernel has no kprobes, but BPF kprobe-type programs still go
through the kernel's verifier when loaded (not attached). So the programs of
bpf/kprobe.c are compiled here and loaded one by one. There are no headers
for this kernel: BCC compiles against Debian's 6.1 headers through
BCC_KERNEL_SOURCE. That is fine for verification only: every struct offset
the program uses comes from this kernel's BTF, but LOOKUP_RCU and BCC's own
includes are the 6.1 headers', so nothing read through them is trusted for
tracing (load() refuses non-matching headers; only verify() accepts them).
The same programs attach and run in VMs on 5.10, 6.1 and 6.12
(tests/test_kprobe_vm.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import is_root, need
from tracers.btf import Btf, BtfError
from vfstrace.errors import TierUnavailable, VfstraceError
from vfstrace.options import TraceOptions

BTF_PATH = Path("/sys/kernel/btf/vmlinux")



def _need_bcc():
    """Loading a program for real: root and BCC, or the skip (the failure, strict) saying which is missing."""
    need(is_root(), "loading BPF programs needs root")
    try:
        import bcc
    except ImportError:
        need(False, "bcc is not importable (bash scripts/setup.sh installs python3-bpfcc)")
    return bcc


def _choice(tier="kprobe", ringbuf=True, **over):
    from vfstrace.kernel import symbols
    from vfstrace.kernel.doctor import TierChoice, find_headers

    ks = symbols.running_kernel_symbols()
    roles = symbols.resolve(ks)
    syms = {r: roles[r].symbol for r in symbols.ROLES}
    syms["recheck"] = list(roles["recheck"].symbols)
    syms.update(over)
    hdr, match = find_headers(os.uname().release)
    return TierChoice(tier, "constructed by the test", syms, tier == "fentry", ringbuf, hdr, match, os.uname().release)


@pytest.fixture(scope="module")
def btf():
    need(BTF_PATH.exists(), "no /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF)")
    return Btf.from_file(BTF_PATH)


# -- BTF reader -------------------------------------------------------------


def test_btf_offsets_match_the_c_compiler_for_a_uapi_struct(btf, tmp_path):
    """x86-64's struct stat is the same in the kernel's BTF and in glibc: a cross-check by a compiler."""
    src = tmp_path / "off.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <sys/stat.h>\n"
        "int main(void){printf(\"%zu %zu %zu %zu %zu\\n\", offsetof(struct stat, st_ino),"
        " offsetof(struct stat, st_nlink), offsetof(struct stat, st_mode),"
        " offsetof(struct stat, st_size), offsetof(struct stat, st_blocks));return 0;}\n"
    )
    exe = tmp_path / "off"
    r = subprocess.run(["cc", "-o", str(exe), str(src)], capture_output=True, text=True)
    need(r.returncode == 0, f"no working C compiler: {r.stderr[:200]}")
    want = [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    got = [btf.offsetof("stat", f) for f in ("st_ino", "st_nlink", "st_mode", "st_size", "st_blocks")]
    assert got == want


def test_btf_nested_and_anonymous_members(btf):
    # struct path { struct vfsmount *mnt; struct dentry *dentry; }
    assert btf.offsetof("path", "dentry") == 8
    # struct qstr { union { struct { HASH_LEN_DECLARE; }; u64 hash_len; }; const unsigned char *name; }
    # on little-endian HASH_LEN_DECLARE is "u32 hash; u32 len": len sits inside two anonymous members
    assert btf.offsetof("qstr", "len") == 4
    assert btf.offsetof("qstr", "name") == 8
    nd_path = btf.offsetof("nameidata", "path")
    assert btf.offsetof("nameidata", "path.dentry") == nd_path + 8
    assert btf.offsetof("dentry", "d_name.name") == btf.offsetof("dentry", "d_name") + 8
    assert btf.func_nargs("walk_component") in (2, None)  # None only where it is inlined
    assert btf.func_nargs("__d_lookup_rcu") == 3
    assert btf.func_nargs("no_such_function_in_any_kernel") is None


def test_btf_errors_are_one_line(btf, tmp_path):
    with pytest.raises(BtfError, match="no member nosuch"):
        btf.offsetof("dentry", "nosuch")
    with pytest.raises(BtfError, match="no struct"):
        btf.offsetof("vfstrace_no_such_struct", "x")
    bad = tmp_path / "btf"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(BtfError, match="not BTF"):
        Btf.from_file(bad)
    with pytest.raises(BtfError, match="cannot read kernel BTF"):
        Btf.from_file(tmp_path / "missing")


# -- planning (no root, no bcc) -----------------------------------------------


def test_missing_role_is_one_line_naming_role_and_kernel(btf):
    from tracers.kprobe import KprobeTracer

    with pytest.raises(TierUnavailable) as ei:
        KprobeTracer(TraceOptions(), _choice(unhash=None))
    msg = str(ei.value)
    assert "roles not found: unhash" in msg and os.uname().release in msg and "\n" not in msg


def test_isra_clone_whose_arguments_are_read_is_refused(btf):
    from tracers.kprobe import KprobeTracer

    with pytest.raises(TierUnavailable, match=r"walk_component\.isra\.0.*cannot be read"):
        KprobeTracer(TraceOptions(), _choice(walk="walk_component.isra.0"))


class _StepBtf:
    """This kernel's BTF with step_into() and nameidata as another kernel's source declares them."""

    def __init__(self, btf, nargs, next_seq):
        self._btf, self._nargs, self._next_seq = btf, nargs, next_seq

    def func_nargs(self, name):
        return self._nargs if name == "step_into" else self._btf.func_nargs(name)

    def has_member(self, struct, member):
        return self._next_seq if (struct, member) == ("nameidata", "next_seq") else self._btf.has_member(struct, member)

    def offsetof(self, struct, member):
        assert (struct, member) != ("nameidata", "next_seq") or self._next_seq, "read a member the kernel lacks"
        return self._btf.offsetof(struct, member)


def _step_flags(btf, tier, nargs, next_seq):
    from tracers.kprobe import KprobeTracer

    t = KprobeTracer(TraceOptions(), _choice(tier=tier, step="step_into"))
    t._btf = _StepBtf(btf, nargs, next_seq)
    return t, t.cflags()


@pytest.mark.parametrize("tier", ["kprobe", "fentry"])
def test_step_into_signature_comes_from_btf(btf, tier):
    # 5.10: step_into(nd, flags, dentry, inode, seq), the sample is argument 5;
    # 6.x (a4f5b52167a8, 03fa86e9f79d): step_into(nd, flags, dentry), the sample in nd->next_seq.
    t, flags = _step_flags(btf, tier, 5, False)
    assert "-DVFS_STEP_SEQ=5" in flags and not any("NEXT_SEQ" in f for f in flags)
    if tier == "fentry":
        assert "-DVFS_MODE_STEP=2" in flags and "-DVFS_NARGS_STEP=5" in flags
    t, flags = _step_flags(btf, tier, 3, True)
    assert "-DVFS_STEP_SEQ=0" in flags
    assert f"-DVFS_OFF_ND_NEXT_SEQ={btf.offsetof('nameidata', 'next_seq')}" in flags
    assert f"-DVFS_MODE_STEP={2 if tier == 'fentry' else 1}" in flags
    if tier == "kprobe":
        # No BTF FUNC (a kprobe on a clone): next_seq, added by the same series, decides.
        assert "-DVFS_STEP_SEQ=0" in _step_flags(btf, tier, None, True)[1]
        assert "-DVFS_STEP_SEQ=5" in _step_flags(btf, tier, None, False)[1]


def test_unknown_step_into_signature_is_not_probed_and_the_tier_still_runs(btf):
    # 3 parameters but no next_seq to read the sample from: neither known shape.
    t, flags = _step_flags(btf, "kprobe", 3, False)
    assert not any("MODE_STEP" in f for f in flags)
    assert "step" not in {p.role for p in t.probes}
    assert any("open()'s last component is unwatched" in n for n in t.notes)


def test_kernel_without_step_into_runs_and_says_open_is_unwatched(btf):
    from tracers.kprobe import KprobeTracer

    t = KprobeTracer(TraceOptions(), _choice(step=None))
    assert "step" not in {p.role for p in t.probes}
    assert any("step_into not found" in n and "open()'s last component is unwatched" in n for n in t.notes)


def test_fentry_falls_back_to_kprobe_for_a_clone_and_says_so(btf):
    from tracers.kprobe import KprobeTracer

    t = KprobeTracer(TraceOptions(), _choice(tier="fentry", lookup="lookup_fast.constprop.0"))
    flags = t.cflags()
    modes = {p.symbol: p.mode for p in t.probes}
    assert modes["lookup_fast.constprop.0"] == "kprobe"
    assert modes[t.choice.symbols["prune"]] == "fentry"
    assert "-DVFS_MODE_LOOKUP=1" in flags and "-DVFS_MODE_PRUNE=2" in flags
    assert any("lookup_fast.constprop.0" in n and "kprobe used" in n for n in t.notes)
    assert "-DVFS_NARGS_RCU=3" in flags
    assert "kretprobe:lookup_fast.constprop.0 (lookup)" in t.attached()


def test_user_filters_reach_the_program_only_as_numbers(btf):
    from tracers.kprobe import KprobeTracer

    comm = 'a"); x(); //'
    t = KprobeTracer(TraceOptions(pid=4242, comm=comm), _choice())
    flags = t.cflags()
    assert "-DVFS_FILTER_PID=4242" in flags and "-DVFS_FILTER_COMM=1" in flags
    assert not any(comm in f or '"' in f for f in flags)
    w0 = int.from_bytes(comm.encode().ljust(16, b"\0")[:8], "little")
    assert f"-DVFS_COMM0={w0}ULL" in flags
    # offsets are BTF's, as numbers
    assert f"-DVFS_OFF_D_INODE={btf.offsetof('dentry', 'd_inode')}" in flags
    assert f"-DVFS_OFF_ND_FLAGS={btf.offsetof('nameidata', 'flags')}" in flags


def test_load_refuses_non_matching_headers(btf):
    from tracers.kprobe import KprobeTracer

    c = _choice()
    need(c.headers_match != "exact", "this kernel has exact headers; the refusal is for machines without them")
    need(is_root(), "load() checks root first")
    t = KprobeTracer(TraceOptions(), c)
    try:
        import bcc  # noqa: F401
    except ImportError:
        need(False, "bcc is not importable (bash scripts/setup.sh)")
    with pytest.raises(TierUnavailable, match="headers matching"):
        t.load()
    t.close()


# -- the real verifier ----------------------------------------------------------


@pytest.mark.live
@pytest.mark.parametrize("ringbuf", [True, False], ids=["ringbuf", "perfbuf"])
def test_real_verifier_accepts_every_kprobe_program(btf, ringbuf, monkeypatch):
    bcc = _need_bcc()
    from tracers.kprobe import KprobeTracer

    c = _choice(ringbuf=ringbuf)
    need(c.headers is not None, "no kernel headers at all (apt-get install linux-headers-amd64)")
    from tracers.headers import bcc_kernel_source

    # compile() sets BCC_KERNEL_SOURCE itself; monkeypatch it so it is unset again afterwards
    monkeypatch.setenv("BCC_KERNEL_SOURCE", bcc_kernel_source(c.headers) or "")
    t = KprobeTracer(TraceOptions(comm="stat"), c)
    try:
        names = t.verify()
        fds = {n: t.bpf.funcs[n.encode()].fd for n in names}
    finally:
        t.close()
    roles = {p.role for p in t.probes}
    assert {"walk", "lookup", "prune", "unhash", "iput", "rcu_lookup", "d_free", "recheck",
            "ns_unlink", "ns_rename", "step"} <= roles
    assert {"vt_step_enter", "vt_step_return"} <= set(names)
    expected = {n for p in t.probes for n in (p.entry, p.ret) if n}
    assert set(names) == expected
    assert all(fd > 0 for fd in fds.values())
    assert bcc.BPF.KPROBE  # the type they were loaded as


@pytest.mark.live
def test_verifier_error_is_one_line(btf, monkeypatch):
    """A broken program (a role forced to a symbol list the program cannot serve) fails as one line."""
    _need_bcc()
    from tracers import kprobe

    from tracers.headers import bcc_kernel_source

    c = _choice()
    monkeypatch.setenv("BCC_KERNEL_SOURCE", bcc_kernel_source(c.headers) or "")
    t = kprobe.KprobeTracer(TraceOptions(), c)
    t.cflags()
    t._defines = [f for f in t._defines if not f.startswith("-DVFS_OFF_D_INODE=")]  # undefined -> compile error
    with pytest.raises(VfstraceError) as ei:
        t.verify()
    assert "\n" not in str(ei.value) and "could not build" in str(ei.value)
    t.close()


def test_the_empty_program_is_planned_on_the_tiers_own_attach_points(btf):
    """bench/probe_cost.py's floor: the same symbols, modes and defines as the tier, in both modes."""
    from tracers.kprobe import EmptyKprobeTracer, KprobeTracer

    for tier in ("kprobe", "fentry"):
        real = KprobeTracer(TraceOptions(), _choice(tier=tier, lookup="lookup_fast.constprop.0"))
        empty = EmptyKprobeTracer(TraceOptions(), _choice(tier=tier, lookup="lookup_fast.constprop.0"))
        assert empty.cflags() == real.cflags()
        assert empty.attached() == real.attached()
        assert empty.kfunc_names() == real.kfunc_names()
    # fentry: one program per probe, named as BCC attaches them; the clone stays a kretprobe
    assert b"kfunc__walk_component" in empty.kfunc_names() and b"kretfunc__walk_component" in empty.kfunc_names()
    assert not any(b"lookup_fast" in n for n in empty.kfunc_names())
    assert empty.kprobe_functions() == ["vt_empty"]


@pytest.mark.live
def test_real_verifier_accepts_the_empty_program(btf, monkeypatch):
    _need_bcc()
    from tracers.kprobe import EmptyKprobeTracer
    from tracers.headers import bcc_kernel_source

    c = _choice()
    need(c.headers is not None, "no kernel headers at all (apt-get install linux-headers-amd64)")
    monkeypatch.setenv("BCC_KERNEL_SOURCE", bcc_kernel_source(c.headers) or "")
    t = EmptyKprobeTracer(TraceOptions(), c)
    try:
        assert t.verify() == ["vt_empty"]
        assert t.bpf.funcs[b"vt_empty"].fd > 0
        assert t.counters() == {} and t.poll() == []
    finally:
        t.close()


class _FakeBcc:
    """Records the attach calls the tracer makes (the kernel side is the VM tests')."""

    def __init__(self):
        self.calls = []

    def attach_kprobe(self, **kw):
        self.calls.append(("kprobe", kw))

    def attach_kretprobe(self, **kw):
        self.calls.append(("kretprobe", kw))


@pytest.mark.parametrize("release,preempt,pool", [
    ("5.10.262-vfstrace-prepatch", False, 128),  # num_possible_cpus() = 2 instances by default: ask
    ("5.10.262-vfstrace-prepatch", True, 0),  # CONFIG_PREEMPTION: max(10, 2 * CPUs) already
    ("6.1.192-vfstrace-prepatch", False, 0),  # 3b7ddab8a19a: max(10, 2 * CPUs) everywhere
])
def test_kretprobes_ask_for_a_pool_only_where_the_default_is_the_cpu_count(btf, monkeypatch, tmp_path,
                                                                              release, preempt, pool):
    from tracers import kprobe_events, tracepoint
    from tracers.kprobe import KprobeTracer

    monkeypatch.setattr(kprobe_events, "possible_cpus", lambda path=None: 2)
    t = KprobeTracer(TraceOptions(), _choice())
    t.release = release
    t._ks = {"preempt_schedule": 1} if preempt else {}
    assert t.kretprobe_pool() == pool
    assert any(n.startswith("kretprobes:") and f"asking for {pool}" in n for n in t.notes) is bool(pool)
    t.bpf = _FakeBcc()
    t._attach_kprobes()
    rets = [kw for kind, kw in t.bpf.calls if kind == "kretprobe"]
    assert {kw["event"] for kw in rets} >= {t.choice.symbols["walk"].encode(), t.choice.symbols["lookup"].encode()}
    assert all(kw.get("maxactive", 0) == pool for kw in rets)
    assert all("maxactive" not in kw for kind, kw in t.bpf.calls if kind == "kprobe")
    # what the named kretprobes missed, from kprobe_profile; PMU ones have no line there
    monkeypatch.setattr(tracepoint, "tracefs", lambda: tmp_path)
    pid = os.getpid()
    (tmp_path / "kprobe_profile").write_text(
        f"  r_walk_component_bcc_{pid}   1000   7\n  r_lookup_fast_bcc_{pid}   900   2\n"
        f"  p_walk_component_bcc_{pid}   1000   5\n  r_walk_component_bcc_1   10   10\n")
    assert t.kretprobe_missed() == (9 if pool else None)
