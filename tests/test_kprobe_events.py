"""Stale kprobe events: which a new recorder removes (only a dead process's, on its own functions);
how many instances a kretprobe asks for, and what kprobe_profile says it missed."""

from __future__ import annotations

import pytest

from tracers.kprobe_events import (KRETPROBE_INSTANCES, bcc_event_base, kretprobe_default_instances,
                                   kretprobe_maxactive, parse_cpu_list, possible_cpus, profile_missed, remove_stale,
                                   stale_events)

# kprobe_events as a 6.12 guest showed it after a recorder (pid 412) was
# SIGKILLed, plus a live BCC tool (pid 900) and a hand-made probe.
TEXT = """\
r128:kprobes/r_walk_component_bcc_412 walk_component
r128:kprobes/r_lookup_fast_bcc_412 lookup_fast
r128:kprobes/r___d_lookup_rcu_bcc_412 __d_lookup_rcu
r128:kprobes/r_try_to_unlazy_bcc_412 try_to_unlazy
r128:kprobes/r_try_to_unlazy_next_bcc_412 try_to_unlazy_next
r:kprobes/r_walk_component_bcc_900 walk_component
p:kprobes/p_vfs_read_bcc_412 vfs_read
p:kprobes/myprobe do_sys_open
"""
OURS = {bcc_event_base("ret", s) for s in ("walk_component", "lookup_fast", "__d_lookup_rcu",
                                            "try_to_unlazy", "try_to_unlazy_next")}


def alive(pid):
    return pid == 900


def test_only_dead_owners_on_our_functions_are_stale():
    got = stale_events(TEXT, OURS, alive)
    assert [n for n, _ in got] == [
        "kprobes/r_walk_component_bcc_412", "kprobes/r_lookup_fast_bcc_412", "kprobes/r___d_lookup_rcu_bcc_412",
        "kprobes/r_try_to_unlazy_bcc_412", "kprobes/r_try_to_unlazy_next_bcc_412",
    ]
    assert {pid for _, pid in got} == {412}


def test_clone_names_follow_bcc():
    assert bcc_event_base("ret", "lookup_fast.constprop.0") == "r_lookup_fast_constprop_0"
    assert bcc_event_base("entry", "__dentry_kill") == "p___dentry_kill"
    line = "r128:kprobes/r_lookup_fast_constprop_0_bcc_77 lookup_fast.constprop.0\n"
    assert stale_events(line, {"r_lookup_fast_constprop_0"}, lambda pid: False) == [
        ("kprobes/r_lookup_fast_constprop_0_bcc_77", 77)]


def test_remove_writes_minus_lines(tmp_path):
    """remove_stale appends "-:group/event" per stale event to kprobe_events."""
    f = tmp_path / "kprobe_events"
    f.write_text(TEXT)
    removed, left = remove_stale(tmp_path, OURS, alive)
    assert len(removed) == 5 and left == []
    written = f.read_text()[len(TEXT):].splitlines()
    assert written == [f"-:{n}" for n in removed]


def test_no_tracefs_file_is_nothing_to_do(tmp_path):
    assert remove_stale(tmp_path, OURS, alive) == ([], [])


# -- kretprobe instances ------------------------------------------------------


@pytest.mark.parametrize("release,cpus,preemptible,default", [
    # before 3b7ddab8a19a (v6.2, 6.1.3): num_possible_cpus() without CONFIG_PREEMPTION
    ("5.10.262-vfstrace-prepatch", 2, False, 2),  # the 5.10 prepatch guest: PREEMPT_VOLUNTARY, 2 CPUs
    ("5.10.0-30-amd64", 2, False, 2),  # Debian's 5.10: PREEMPT_VOLUNTARY too
    ("5.10.0-30-amd64", 16, False, 16),
    ("5.15.0-91-generic", 4, True, 10),  # a PREEMPT(_DYNAMIC) kernel had max(10, 2 * CPUs) already
    ("5.15.0-91-generic", 8, True, 16),
    # since: every kernel, whatever its preemption model
    ("6.1.192-vfstrace-prepatch", 2, False, 10),
    ("6.1.0-41-amd64", 2, False, 10),  # Debian's name for 6.1.y: the line decides, never the sublevel
    ("6.12.118-vfstrace-control", 2, False, 10),
    ("6.12.48+deb12-amd64", 64, False, 128),
])
def test_default_kretprobe_pool_follows_the_kernel(release, cpus, preemptible, default):
    assert kretprobe_default_instances(release, cpus, preemptible) == default


def test_a_kretprobe_asks_for_instances_only_where_the_default_is_the_cpu_count():
    # the default pool serves: no maxactive, so libbcc attaches through the PMU (cleaned up with the process)
    assert kretprobe_maxactive("6.1.192-vfstrace-prepatch", 2, False) == 0
    assert kretprobe_maxactive("6.12.48+deb12-amd64", 2, False) == 0
    assert kretprobe_maxactive("5.15.0-91-generic", 2, True) == 0
    # 5.10 without preemption: 2 instances on 2 CPUs; the tier asks for its own pool
    assert kretprobe_maxactive("5.10.262-vfstrace-prepatch", 2, False) == KRETPROBE_INSTANCES
    assert kretprobe_maxactive("5.10.0-30-amd64", 1, False) == KRETPROBE_INSTANCES
    # never fewer than later kernels' default, never more than kprobe_events accepts
    assert kretprobe_maxactive("5.10.0-30-amd64", 100, False) == 200
    assert kretprobe_maxactive("5.10.0-30-amd64", 4000, False) == 4096
    # a release that names no version: treated as the oldest kernel
    assert kretprobe_maxactive("custom", 2, False) == KRETPROBE_INSTANCES


def test_possible_cpus_reads_sysfs_lists(tmp_path):
    assert parse_cpu_list("0-1\n") == 2
    assert parse_cpu_list("0") == 1
    assert parse_cpu_list("0,2-3,8-11") == 7
    assert parse_cpu_list("") == 0
    f = tmp_path / "possible"
    f.write_text("0-7\n")
    assert possible_cpus(str(f)) == 8
    assert possible_cpus(str(tmp_path / "absent")) >= 1


def test_profile_missed_reads_the_kretprobes_own_lines():
    text = """\
  r_walk_component_bcc_412                                 496108             3817
  r_lookup_fast_bcc_412                                    458656                0
  p_walk_component_bcc_412                                 500000                0
  r_walk_component_bcc_900                                   1000              999
  myprobe                                                      12                1
"""
    ours = {"r_walk_component_bcc_412", "r_lookup_fast_bcc_412", "r_step_into_bcc_412"}
    assert profile_missed(text, ours) == {"r_walk_component_bcc_412": 3817, "r_lookup_fast_bcc_412": 0}
    assert profile_missed("", ours) == {}
