"""Capture what symbol resolution needs from the running kernel into a folder.

Run inside a vfstrace guest (by `vfstrace vm capture-symbols`) or on the host
as root. Writes, filtered to the functions of the lookup/prune race (NAME_RE):
  kallsyms.txt          /proc/kallsyms text symbols (addresses kept)
  kprobe_blacklist.txt  /sys/kernel/debug/kprobes/blacklist entries
  filter_functions.txt  /sys/kernel/tracing/available_filter_functions entries
  features.json         kernel config and BPF features that pick the tier
  capture.json          what was read from where, and what could not be read
Files that cannot be read (EPERM under lockdown, no kprobes) are left out and
the reason is recorded in capture.json, so a missing file is never mistaken
for an empty list.

Standard library only, except bcc for BPF.support_kfunc() when importable.
"""

import gzip
import json
import os
import platform
import re
import subprocess
import sys
import time

NAME_RE = re.compile(
    r"^(walk_component|lookup_fast|lookup_slow|__lookup_slow|do_lookup|__dentry_kill|dentry_kill|"
    r"__d_drop|___d_drop|d_drop|dentry_iput|dentry_unlink_inode|try_to_unlazy|try_to_unlazy_next|"
    r"unlazy_walk|unlazy_child|complete_walk|step_into|lock_for_kill|shrink_kill|__d_lookup_rcu|"
    r"__d_lookup|d_delete|__d_free|d_free|__d_free_external|dentry_free|dput|shrink_dentry_list|"
    r"prune_dcache_sb|d_alloc|__d_alloc|vfs_unlink|vfs_rename|vfs_rmdir|link_path_walk|path_lookupat|"
    r"handle_dots|legitimize_path|legitimize_links|legitimize_root|d_invalidate|__d_rehash|"
    r"d_lru_shrink_move|dentry_lru_isolate)(\..+)?$"
)
CONFIGS = ["CONFIG_KPROBES", "CONFIG_FPROBE", "CONFIG_DEBUG_INFO_BTF", "CONFIG_BPF_KPROBE_OVERRIDE",
           "CONFIG_KPROBE_EVENTS", "CONFIG_FUNCTION_TRACER", "CONFIG_BPF_EVENTS"]
MOUNTS = [("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug"),
          ("securityfs", "/sys/kernel/security")]


def ensure_mounts(notes):
    with open("/proc/mounts") as f:
        mounted = {line.split()[1] for line in f}
    for fstype, where in MOUNTS:
        if where not in mounted:
            r = subprocess.run(["mount", "-t", fstype, fstype, where], capture_output=True, text=True)
            notes.append(f"mounted {fstype} on {where} by hand" if r.returncode == 0
                         else f"could not mount {fstype} on {where}: {r.stderr.strip()}")


def read_lines(path, notes, what):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError as e:
        notes.append(f"{what}: {path} unreadable: {e.strerror} (errno {e.errno})")
        return None


def filtered(out, name, lines, symbol_of):
    keep = [ln for ln in lines if (s := symbol_of(ln)) and NAME_RE.match(s)]
    with open(os.path.join(out, name), "w") as f:
        f.write("".join(ln + "\n" for ln in keep))
    return len(keep)


def kernel_config(notes):
    """CONFIG_* values from /boot/config-$(uname -r) or /proc/config.gz; None = not set."""
    rel = os.uname().release
    for path in (f"/boot/config-{rel}", "/proc/config.gz", f"/lib/modules/{rel}/build/.config"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                text = f.read()
        except OSError:
            continue
        vals = {}
        for key in CONFIGS:
            m = re.search(rf"^{key}=(\S+)$", text, re.M)
            vals[key] = m.group(1) if m else None
        return vals, path
    notes.append("no kernel config found (/boot/config-*, /proc/config.gz, build/.config)")
    return {k: None for k in CONFIGS}, None


def support_kfunc(notes):
    try:
        from bcc import BPF
    except ImportError as e:
        notes.append(f"bcc not importable, support_kfunc unknown: {e}")
        return None
    try:
        return bool(BPF.support_kfunc())
    except Exception as e:  # a probe of the kernel; record whatever it says
        notes.append(f"BPF.support_kfunc() raised {type(e).__name__}: {e}")
        return None


def lockdown(notes):
    lines = read_lines("/sys/kernel/security/lockdown", notes, "lockdown")
    if not lines:
        return None
    m = re.search(r"\[(\w+)\]", lines[0])
    return m.group(1) if m else lines[0].strip()


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    notes = []
    ensure_mounts(notes)
    rel = os.uname().release
    counts, sources = {}, {}

    lines = read_lines("/proc/kallsyms", notes, "kallsyms")
    if lines is not None:
        text = [ln.split() for ln in lines if len(ln.split()) >= 3 and ln.split()[1] in "tT"]
        if text and all(int(f[0], 16) == 0 for f in text[:100]):
            notes.append("kallsyms addresses read as zero (kptr_restrict or not root)")
        counts["kallsyms.txt"] = filtered(
            out, "kallsyms.txt", lines,
            lambda ln: ln.split()[2] if len(ln.split()) >= 3 and ln.split()[1] in "tT" else None)
        sources["kallsyms.txt"] = "/proc/kallsyms (types t/T)"

    bl = "/sys/kernel/debug/kprobes/blacklist"
    lines = read_lines(bl, notes, "kprobe blacklist")
    if lines is not None:
        counts["kprobe_blacklist.txt"] = filtered(
            out, "kprobe_blacklist.txt", lines, lambda ln: ln.split()[1] if len(ln.split()) >= 2 else None)
        sources["kprobe_blacklist.txt"] = bl

    ff = "/sys/kernel/tracing/available_filter_functions"
    lines = read_lines(ff, notes, "available_filter_functions")
    if lines is not None:
        counts["filter_functions.txt"] = filtered(
            out, "filter_functions.txt", lines, lambda ln: ln.split()[0] if ln.split() else None)
        sources["filter_functions.txt"] = ff

    config, config_src = kernel_config(notes)
    ver = tuple(int(x) for x in re.findall(r"\d+", rel)[:2])
    features = {
        "kernel_release": rel,
        "debian_package": None,  # filled in by the host, which knows what it fetched
        **{k: config[k] for k in ("CONFIG_KPROBES", "CONFIG_FPROBE", "CONFIG_DEBUG_INFO_BTF",
                                  "CONFIG_BPF_KPROBE_OVERRIDE")},
        "ringbuf": ver >= (5, 8),
        "support_kfunc": support_kfunc(notes),
        "lockdown": lockdown(notes),
        "btf_vmlinux": os.path.exists("/sys/kernel/btf/vmlinux"),
        "kprobe_events_writable": os.access("/sys/kernel/tracing/kprobe_events", os.W_OK),
        "config": config,
    }
    with open(os.path.join(out, "features.json"), "w") as f:
        json.dump(features, f, indent=1, sort_keys=False)
        f.write("\n")
    capture = {
        "kernel_release": rel,
        "kernel_version": platform.version(),
        "captured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "in_vm": os.environ.get("VFSTRACE_IN_VM") == "1",
        "config_source": config_src,
        "sources": sources,
        "counts": counts,
        "notes": notes,
        "regex": NAME_RE.pattern,
    }
    with open(os.path.join(out, "capture.json"), "w") as f:
        json.dump(capture, f, indent=1)
        f.write("\n")
    print(json.dumps({"release": rel, "counts": counts, "notes": notes}))


if __name__ == "__main__":
    main()
