"""The one way the in-guest checks run a command: echoed, output captured, paced.

Every limit is in quiet-guest seconds (vfstrace/vm/pace.py), so a host
that slows the guest down gives the command more wall time instead of
failing it; a command that hangs still meets its limit.
"""

from __future__ import annotations

import subprocess

from vfstrace.vm import pace


def run(argv, budget_s: float, **kw) -> subprocess.CompletedProcess:
    """The command's result; one that ran out of its limit has returncode
    None and says so at the end of its stderr (the check goes on to write
    its summary, and the host test fails on the None with that line)."""
    print("+", " ".join(map(str, argv)), f"(limit {budget_s:.0f} quiet-guest s)", flush=True)
    try:
        return pace.run([str(a) for a in argv], budget_s, **kw)
    except subprocess.TimeoutExpired as e:
        why = f"\n(killed: its limit of {budget_s:.0f} quiet-guest s was spent in {e.timeout:.0f} s of wall time)\n"
        print(why.strip(), flush=True)
        return subprocess.CompletedProcess(argv, None, e.stdout or "", (e.stderr or "") + why)
