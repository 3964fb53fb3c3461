"""Runs inside a vfstrace guest, first in a recording's workload: a negative dentry whose d_seq is known not to be 0.

usage: seq_sample.py DIR ARGV...

An ext4 filesystem (a small image beside DIR, on a loop device) is mounted on DIR; in
it one name is created and unlinked CYCLES times, then stat()ed STATS
times; then ARGV is exec'ed (the same process: the recording's workload
goes on as ARGV, and never outlives its recorder).

Why ext4: tmpfs, 9p and overlayfs drop a name's dentry at unlink
(always_delete_dentry, d_drop), so their -ENOENT walks find a fresh
negative dentry, d_seq 0, or none; ext4 keeps it. Each unlink goes through
d_delete() -> dentry_unlink_inode(), whose raw_write_seqcount_begin/end
adds 2 to d_seq, and the dentry stays hashed and negative; the next create
reuses it (d_instantiate() adds 2 more). After CYCLES cycles its d_seq is
at least 2 * CYCLES and, with no writer left, stays put. Every stat() is
then an RCU walk that finds that dentry and returns -ENOENT, so its
WALK_RETURN must carry, as the sample the walk took (seq), the d_seq read
at the walk's return (seq2), and a non-zero one: a sample read from the
wrong place, or not read at all, shows up as seq != seq2 or as 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NAME = "vt-seq-sample"
CYCLES = 8
STATS = 200


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: seq_sample.py DIR ARGV...")
    d = Path(sys.argv[1])
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    img = d.with_name(d.name + ".img")
    for argv in (["modprobe", "-a", "loop", "ext4"], ["mkfs.ext4", "-q", "-F", str(img), "4M"],
                 ["mount", "-o", "loop", str(img), str(d)]):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode:
            print(f"seq_sample: {argv[0]} exited {r.returncode}: {r.stderr.strip()[-300:]}", file=sys.stderr)
    p = d / NAME
    for _ in range(CYCLES):
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
        os.unlink(p)
    for _ in range(STATS):
        try:
            os.stat(p)
        except FileNotFoundError:
            pass
    argv = sys.argv[2:]
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
