"""Stale kprobe events: which a new recorder removes (only a dead process's, on its own functions)."""

from __future__ import annotations

from tracers.kprobe_events import bcc_event_base, remove_stale, stale_events

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
