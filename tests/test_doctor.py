"""`vfstrace doctor` on the running kernel, compared with what the kernel really has."""

import json
import os

from conftest import cli, is_root, need


def run(*args, user=None):
    kw = {}
    if user is not None:
        kw["preexec_fn"] = lambda: (os.setgid(user), os.setuid(user))
    return cli(*args, timeout=120, **kw)


def test_doctor_json_matches_this_kernel():
    need(is_root(), "doctor needs root")
    r = run("doctor", "--json")
    d = json.loads(r.stdout)
    assert d["kernel_release"] == os.uname().release
    kprobe_pmu = os.path.exists("/sys/bus/event_source/devices/kprobe/type")
    assert d["checks"]["kprobes"]["ok"] is kprobe_pmu
    if not kprobe_pmu:
        assert d["tiers"]["kprobe"]["ok"] is False
        assert "CONFIG_KPROBES" in d["tiers"]["kprobe"]["detail"]
    if d["checks"]["fentry"]["ok"] is False:
        assert d["tiers"]["fentry"]["ok"] is False
    # every role doctor names must really be in this kernel's kallsyms
    text = open("/proc/kallsyms").read().split()
    for role in ("walk", "lookup", "prune", "unhash", "iput"):
        sym = d["roles"][role]["symbol"]
        if sym:
            assert sym in text, (role, sym)
    assert (r.returncode == 0) == (d["tier"] != "none")


def test_doctor_on_a_kernel_without_kprobes_picks_tracepoints():
    need(is_root(), "doctor needs root")
    need(not os.path.exists("/sys/bus/event_source/devices/kprobe/type"),
         "this kernel has kprobes; the no-kprobes case is this host's (6.18) situation")
    d = json.loads(run("doctor", "--json").stdout)
    assert d["tier"] == "tracepoint"
    assert d["tiers"]["tracepoint"]["ok"] is True
    for role, sym in {"walk": "walk_component", "lookup": "lookup_fast", "prune": "__dentry_kill",
                      "iput": "dentry_unlink_inode"}.items():
        assert d["roles"][role]["symbol"] == sym
    assert d["roles"]["unhash"]["symbol"] in ("___d_drop", "__d_drop")


def test_not_root_is_one_line_and_nonzero():
    need(is_root(), "needs root to drop to another user")
    r = run("doctor", user=65534)
    assert r.returncode == 5
    assert r.stderr.count("\n") == 1 and "root" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_flag_is_one_line():
    r = run("doctor", "--no-such-flag")
    assert r.returncode != 0 and "Traceback" not in r.stderr
