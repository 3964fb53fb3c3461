#!/usr/bin/env python3
"""vfstrace beside its peers on a stat() storm: ns per call, ratio to untraced, events kept. One run.

    sudo .venv/bin/python bench/compare.py [--calls N] [--rounds R] [--small] [--breakdown] [--distinct K]

What runs, each as its own real process, on the same C loop of N stat()
calls (bench/_statgen.py: first a path that does not exist, the ENOENT
path, then one that does, the hit path):

  untraced                 the loop alone
  bpftrace empty           an empty program on sys_exit_newfstatat (the floor:
                           syscall tracepoints on, a BPF program run per call)
  bpftrace count           an in-kernel count of the loop's ENOENTs
  bpftrace printf          a printf per ENOENT of the loop (every event to user space)
  BCC perf + callback      a BCC perf buffer, one Python callback per ENOENT
  vfstrace record          `vfstrace record --tier tracepoint -- LOOP`, the
                           trace loaded afterwards
  vfstrace --dentry-allocs the same with the opt-in dentry-allocation probe,
                           which runs on every slab allocation (the getname()
                           of each stat() among them): what leaving it off saves
  vfstrace no creators     the same without the creator probes (creat, mknod*,
                           symlink*, mount, move_mount, io_uring, and the open
                           probes' O_CREAT record: tracers/tracepoint.py
                           CREATOR_ONLY), the tier as it was before them: the
                           line "creator probes" prints what they add to the
                           hit ratio, beside today's

Rounds are interleaved (every tracer once per round, in the same order), and
the median over rounds is printed. The loops time themselves in their own
CPU time (user + kernel, where every tracer's BPF program runs; ``--wall``
for wall time), which other work on a shared machine disturbs far less. "events kept" is, for the loop's ENOENT
path, what reached user space over the N calls made: printf lines,
callbacks, or the trace's PATH_SYSCALL rows for the path (their ``count``
summed: vfstrace folds identical repeats in the kernel, see
bpf/tracepoint.c); "counted" where only a number leaves the kernel. The
loops run at a raised priority (nice -10) so a busy machine's background
work disturbs both sides alike less. It prints numbers; it asserts nothing.

``--distinct K`` makes the ENOENT loop cycle over K distinct absent names
(``absent-0`` .. ``absent-(K-1)``) instead of one: identical repeats can no
longer be folded in the kernel, so every failure is a record that must
cross the ring, the stream and the trace writer (issue #27's storm: 1M
calls over 100,000 names). "events kept" then counts the rows of all K.

``--breakdown`` adds one untimed pass after the rounds: with
kernel.bpf_stats_enabled on, the loops run once more under `vfstrace
record` with empty programs on the same tracepoints beside it, and each
program's own run time per call is printed (bpftool's run_time_ns /
run_cnt, read between the loops). The empty programs' figure is the
dispatch floor bpf_stats itself measures (its clock reads included); what
a vfstrace program shows above it is its body.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _statgen import StatGen  # noqa: E402

COMM = "vfs-cmp"
# The CLI of this checkout, run by this interpreter (main() puts the checkout on PYTHONPATH).
VFSTRACE = [sys.executable, "-m", "vfstrace.cli"]
ATTACH_WAIT_S = 1.0  # after a tracer says it attached, before the loop starts

BCC_CALLBACK = r'''
import os, signal, sys
from bcc import BPF
prog = r"""
struct ev { u32 pid; s32 ret; char comm[16]; };
BPF_PERF_OUTPUT(events);
TRACEPOINT_PROBE(syscalls, sys_exit_newfstatat) {
    if (args->ret != -2) return 0;
    struct ev e = {};
    e.pid = bpf_get_current_pid_tgid() >> 32;
    e.ret = args->ret;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.perf_submit(args, &e, sizeof(e));
    return 0;
}
"""
b = BPF(text=prog.encode())
n = [0]; lost = [0]; comm = sys.argv[1].encode()
def cb(cpu, data, size):
    e = b["events"].event(data)
    if e.comm == comm:
        n[0] += 1
def lcb(k):
    lost[0] += k
b["events"].open_perf_buffer(cb, page_cnt=256, lost_cb=lcb)
stop = [False]
signal.signal(signal.SIGINT, lambda *a: stop.__setitem__(0, True))
print("attached", flush=True)
while not stop[0]:
    b.perf_buffer_poll(50)
b.perf_buffer_poll(0)
print(f"kept {n[0]} lost {lost[0]}", flush=True)
'''


def bpftrace_programs():
    tp = "tracepoint:syscalls:sys_exit_newfstatat"
    flt = f'/args->ret == -2 && comm == "{COMM}"/'
    return {
        "bpftrace empty": f"{tp} {{ }}",
        "bpftrace count": f"{tp} {flt} {{ @n = count(); }}",
        "bpftrace printf": f'{tp} {flt} {{ printf("e\\n"); }}',
    }


class Loop:
    """The C stat() loop, run at nice -10; parses its `calls fails seconds ns` line.
    With ``cpu_time`` the loop times itself in CPU time (CLOCK_PROCESS_CPUTIME_ID:
    its user and kernel time, where the tracers' BPF programs run) instead of
    wall time: on a shared machine other work inflates wall time, not that."""

    def __init__(self, gen: StatGen, cpu_time: bool, distinct: tuple[str, int] | None = None):
        self.exe = gen.exe
        self.cpu_time = cpu_time
        self.distinct = distinct  # (path, K): that path's loop cycles over K names path-0 .. path-(K-1)

    def argv(self, path, n):
        names = [f"names={self.distinct[1]}"] if self.distinct and path == self.distinct[0] else []
        return ["nice", "-n", "-10", self.exe, path, str(n), "0", COMM] + (["cpu"] if self.cpu_time else []) + names

    def run(self, path, n):
        out = subprocess.run(self.argv(path, n), capture_output=True, text=True, check=True).stdout
        return parse_loop(out)[0]


def parse_loop(text):
    """ns/call of every loop result line in ``text`` (lines of four numbers)."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) == 4:
            try:
                int(f[0]), int(f[1]), float(f[2])
                out.append(float(f[3]))
            except ValueError:
                continue
    return out


def wait_for(proc, word, timeout=120.0):
    """Read the tracer's output until a line containing ``word`` (it attached)."""
    t0 = time.monotonic()
    proc.seen = []  # what it said before, for why()
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            return False
        if word in line:
            return True
        proc.seen.append(line)
    return False


def why(proc, out: str) -> str:
    """What a tracer that did not attach said last, on one line, and how it ended."""
    lines = [ln.strip() for ln in [*getattr(proc, "seen", []), *out.splitlines()] if ln.strip()]
    rc = proc.returncode
    said = " | ".join(lines[-3:])[-300:] or "no output"
    return f"{said} (exit {rc})" if rc is not None else said


def stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def run_untraced(loop, miss, hit, n):
    return loop.run(miss, n), loop.run(hit, n), None


def run_bpftrace(name, prog, loop, miss, hit, n):
    p = subprocess.Popen(["bpftrace", "-e", prog], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, BPFTRACE_NO_CPP_DEMANGLE="1"))
    try:
        if not wait_for(p, "Attaching"):
            raise RuntimeError(f"{name}: bpftrace did not attach: {why(p, stop(p))}")
        time.sleep(ATTACH_WAIT_S)
        e, h = loop.run(miss, n), loop.run(hit, n)
    finally:
        out = stop(p)
    if "printf" in name:
        kept = sum(1 for line in out.splitlines() if line.strip() == "e")
    elif "count" in name:
        kept = "counted"
    else:
        kept = None
    return e, h, kept


def run_bcc(loop, miss, hit, n, env):
    p = subprocess.Popen([sys.executable, "-c", BCC_CALLBACK, COMM], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env)
    try:
        if not wait_for(p, "attached"):
            raise RuntimeError(f"BCC callback baseline did not attach: {why(p, stop(p))}")
        time.sleep(ATTACH_WAIT_S)
        e, h = loop.run(miss, n), loop.run(hit, n)
    finally:
        out = stop(p)
    kept = 0
    for line in out.splitlines():
        if line.startswith("kept "):
            kept = int(line.split()[1])
    return e, h, kept


BCC_EMPTY = r'''
import signal
from bcc import BPF
b = BPF(text=b"""
TRACEPOINT_PROBE(syscalls, sys_exit_newfstatat) { return 0; }
RAW_TRACEPOINT_PROBE(kmem_cache_free) { return 0; }
""")
signal.signal(signal.SIGINT, lambda *a: None)
print("attached", flush=True)
signal.pause()
'''


def bpf_runs(text):
    """{program id: (name, run_cnt, run_time_ns)} from the JSON of `bpftool prog show -j`."""
    import json

    return {p["id"]: (p.get("name", "?"), p.get("run_cnt", 0), p.get("run_time_ns", 0)) for p in json.loads(text)}


def breakdown(loop, miss, hit, n, work, env):
    """Lines: each BPF program's own ns per stat() on the ENOENT and the hit loop, vfstrace's and empty ones."""
    bpftool = shutil.which("bpftool")
    if not bpftool:
        return ["breakdown: not run: needs bpftool"]
    knob = "/proc/sys/kernel/bpf_stats_enabled"
    with open(knob) as f:
        was = f.read().strip()
    # Three snapshots taken inside the recorded command, between its loops.
    snaps = [os.path.join(work, f"progs{i}.json") for i in range(3)]

    def loaded():
        return set(bpf_runs(subprocess.run([bpftool, "prog", "show", "-j"], capture_output=True, text=True,
                                           check=True).stdout))

    before = loaded()
    empty = subprocess.Popen([sys.executable, "-c", BCC_EMPTY], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env=env)
    try:
        if not wait_for(empty, "attached"):
            return ["breakdown: not run: the empty programs did not attach"]
        empty_ids = loaded() - before
        with open(knob, "w") as f:
            f.write("1")
        show = f"{bpftool} prog show -j > "
        script = " && ".join([show + snaps[0], " ".join(loop.argv(miss, n)), show + snaps[1],
                              " ".join(loop.argv(hit, n)), show + snaps[2]])
        trace = os.path.join(work, "breakdown.vft")
        r = subprocess.run([*VFSTRACE, "record", "--tier", "tracepoint", "-o", trace, "--", "sh", "-c", script],
                           capture_output=True, text=True, env=env)
        shutil.rmtree(trace, ignore_errors=True)
        if r.returncode != 0:
            return [f"breakdown: vfstrace record failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-200:]}"]
    finally:
        with open(knob, "w") as f:
            f.write(was)
        stop(empty)
    s = []
    for p in snaps:
        with open(p) as f:
            s.append(bpf_runs(f.read()))
    out = [f"per-program run time (kernel.bpf_stats_enabled; one pass of {n:,} calls per loop; ns per stat() call)",
           f"{'program':<54} {'ENOENT ns':>10} {'hit ns':>9}  runs per call (ENOENT, hit)"]
    for pid, (name, _, _) in sorted(s[2].items(), key=lambda kv: (kv[0] in empty_ids, kv[1][0])):
        rows = []
        for a_, b_ in ((0, 1), (1, 2)):
            _, c0, t0 = s[a_].get(pid, (name, 0, 0))
            _, c1, t1 = s[b_].get(pid, (name, 0, 0))
            rows.append((c1 - c0, t1 - t0))
        if max(c for c, _ in rows) < n // 10:
            continue  # a program the loops do not run (another syscall's, the shrinker's)
        label = ("empty: " if pid in empty_ids else "vfstrace: ") + name
        out.append(f"{label:<54} {rows[0][1] / n:10.1f} {rows[1][1] / n:9.1f}  "
                   f"{rows[0][0] / n:.2f}, {rows[1][0] / n:.2f}")
    return out


# The vfstrace rows: name -> extra `vfstrace record` flags.
VFSTRACE_RUNS = {"vfstrace record": (), "vfstrace --dentry-allocs": ("--dentry-allocs",),
                 "vfstrace no creators": ("--no-creator-probes",)}


def run_vfstrace(loop, miss, hit, n, work, env, flags=()):
    import pandas as pd

    from vfstrace.events import Kind
    from vfstrace.store import load

    trace = os.path.join(work, "cmp.vft")
    shutil.rmtree(trace, ignore_errors=True)
    cmd = " && ".join(" ".join(loop.argv(p, n)) for p in (miss, hit))
    r = subprocess.run([*VFSTRACE, "record", "--tier", "tracepoint", *flags, "-o", trace, "--", "sh", "-c", cmd],
                       capture_output=True, text=True, env=env)
    ns = parse_loop(r.stdout)
    if r.returncode != 0 or len(ns) != 2:
        raise RuntimeError(f"vfstrace record failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
    df = load(trace)
    mine = df["path"] == miss
    if loop.distinct:
        mine |= df["path"].str.startswith(miss + "-")
    m = (df["kind"] == int(Kind.PATH_SYSCALL)) & mine & (df["comm"] == COMM)
    kept = int(df.loc[m, "count"].sum()) if "count" in df else int(m.sum())
    lost = int(df.loc[df["kind"] == int(Kind.LOST), "ret"].sum())
    shutil.rmtree(trace, ignore_errors=True)
    del pd
    return ns[0], ns[1], (kept, int(m.sum()), lost)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2_000_000, help="stat() calls per loop (default 2M)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="CI size: 200k calls, 1 round")
    ap.add_argument("--wall", action="store_true", help="time the loops in wall time, not their CPU time")
    ap.add_argument("--breakdown", action="store_true",
                    help="then one untimed pass: each BPF program's own run time per call (bpf_stats)")
    ap.add_argument("--distinct", type=int, default=0, metavar="K",
                    help="the ENOENT loop cycles over K distinct absent names (no folding of repeats)")
    a = ap.parse_args()
    if a.small:
        a.calls, a.rounds = 200_000, 1
    if os.geteuid() != 0:
        raise SystemExit("bench/compare.py: needs root (BPF)")
    have_bpftrace = shutil.which("bpftrace") is not None

    from tracers.headers import prepare

    # The baseline BCC programs compile in children: they get the tree the
    # tracers would use through the environment prepare() sets.
    prepare("the BCC baseline", fallback_ok=True, why_fallback="tracepoint records only")
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")

    gen = StatGen()
    work = tempfile.mkdtemp(prefix="vfstrace-compare-", dir="/var/tmp")
    hit = os.path.join(work, "present")
    open(hit, "w").close()
    miss = os.path.join(work, "absent")
    loop = Loop(gen, cpu_time=not a.wall, distinct=(miss, a.distinct) if a.distinct > 0 else None)
    names = ["untraced"] + (list(bpftrace_programs()) if have_bpftrace else []) + ["BCC perf + callback", *VFSTRACE_RUNS]
    res = {k: {"enoent": [], "hit": [], "kept": []} for k in names}
    errors = {}
    per_program = []
    try:
        loop.run(miss, a.calls // 10)  # warm the dcache: the negative dentry, the hit's dentry
        loop.run(hit, a.calls // 10)
        for _ in range(a.rounds):
            for name in names:
                try:
                    if name == "untraced":
                        e, h, kept = run_untraced(loop, miss, hit, a.calls)
                    elif name.startswith("bpftrace"):
                        e, h, kept = run_bpftrace(name, bpftrace_programs()[name], loop, miss, hit, a.calls)
                    elif name.startswith("BCC"):
                        e, h, kept = run_bcc(loop, miss, hit, a.calls, env)
                    else:
                        e, h, kept = run_vfstrace(loop, miss, hit, a.calls, work, env, VFSTRACE_RUNS[name])
                except (RuntimeError, subprocess.CalledProcessError, OSError) as ex:
                    errors[name] = " ".join(str(ex).split())[:400]
                    continue
                res[name]["enoent"].append(e)
                res[name]["hit"].append(h)
                res[name]["kept"].append(kept)
        if a.breakdown:
            try:
                per_program = breakdown(loop, miss, hit, a.calls, work, env)
            except (OSError, ValueError, subprocess.CalledProcessError) as ex:
                per_program = [f"breakdown: not run: {str(ex).splitlines()[0][:200]}"]
    finally:
        gen.close()
        shutil.rmtree(work, ignore_errors=True)

    def med(v):
        return statistics.median(v) if v else float("nan")

    base_e, base_h = med(res["untraced"]["enoent"]), med(res["untraced"]["hit"])
    clock = "wall time" if a.wall else "CPU time of the loop"
    over = f" over {a.distinct:,} distinct absent names" if a.distinct > 0 else ""
    print(f"kernel {os.uname().release}   {a.calls:,} stat() calls per loop{over}   rounds: {a.rounds} (medians)   "
          f"ns: {clock}")
    print(f"{'tracer':<24} {'ENOENT ns':>10} {'ratio':>6} {'hit ns':>9} {'ratio':>6}  events kept")
    verdict = {}
    for name in names:
        r = res[name]
        if not r["enoent"]:
            print(f"{name:<24} did not run: {errors.get(name, '?')}")
            continue
        e, h = med(r["enoent"]), med(r["hit"])
        kept = r["kept"][-1]
        if kept is None:
            ktxt = "-"
        elif kept == "counted":
            ktxt = "counted in the kernel"
        elif isinstance(kept, tuple):
            pct = [k[0] / a.calls * 100 for k in r["kept"]]
            ktxt = (f"{min(pct):.1f}-{max(pct):.1f} % ({kept[0]:,} ENOENTs in {kept[1]:,} records, "
                    f"{kept[2]:,} lost, last round)")
            if name == "vfstrace record":
                verdict = {"kept": min(pct), "enoent": e / base_e, "hit": h / base_h}
        else:
            pct = [k / a.calls * 100 for k in r["kept"]]
            ktxt = f"{min(pct):.1f}-{max(pct):.1f} %"
        print(f"{name:<24} {e:10.1f} {e / base_e:6.2f} {h:9.1f} {h / base_h:6.2f}  {ktxt}")
    if verdict:
        print(f"vfstrace: keeps {verdict['kept']:.1f} % (goal >= 99: {'met' if verdict['kept'] >= 99 else 'NOT met'}), "
              f"ENOENT ratio {verdict['enoent']:.2f} (goal <= 1.75: {'met' if verdict['enoent'] <= 1.75 else 'NOT met'}), "
              f"hit ratio {verdict['hit']:.2f} (goal <= 1.25: {'met' if verdict['hit'] <= 1.25 else 'NOT met'})")
    on, off = res["vfstrace record"]["hit"], res["vfstrace no creators"]["hit"]
    if on and off:
        print(f"creator probes: hit ratio {med(on) / base_h:.2f} with them, {med(off) / base_h:.2f} without "
              f"(added {med(on) / med(off):.3f}x on the hit path)")
    for line in per_program:
        print(line)


if __name__ == "__main__":
    main()
