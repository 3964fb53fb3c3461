"""Runs inside a vfstrace guest (chrooted into the overlay root) as its last step.

Reads the spec the host wrote into the results share: the command as an argv
list (never a shell string), its working directory and environment, and the
symlinks that make this kernel's headers and modules visible where BCC looks
(/lib/modules/$(uname -r)/build, /usr/src/linux-headers-*). Runs the command,
copies its stdout/stderr both to files in the share and to the console, and
writes result.json with the exit code and `uname -r`.

Standard library only: it runs under the host's /usr/bin/python3.
"""

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time


def make_link(target, link):
    """Make ``link`` show ``target``: a symlink, or a bind mount over a host directory.

    Deleting a host directory (say the host's own copy of the same headers)
    in the overlay would whiteout every file one by one over 9p, which under
    TCG takes minutes; a bind mount over it takes no time.
    """
    if os.path.islink(link):
        if os.readlink(link) == target:
            return
        os.unlink(link)
    elif os.path.isdir(link):
        subprocess.run(["mount", "--bind", target, link], check=True)
        return
    elif os.path.exists(link):
        os.unlink(link)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)


def pump(src, path, console):
    with open(path, "wb") as f:
        while True:
            chunk = src.read1(65536)
            if not chunk:
                break
            f.write(chunk)
            f.flush()
            console.write(chunk)
            console.flush()


def start_heartbeat(spec):
    """Beat into the share for the host's paced limit (vfstrace/vm/pace.py, loaded by path)."""
    if not spec.get("pace") or not spec.get("heartbeat"):
        return
    try:
        loader = importlib.util.spec_from_file_location("vfstrace_pace", spec["pace"])
        pace = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(pace)
    except (OSError, ImportError, SyntaxError) as e:
        print(f"vfstrace-guest: no heartbeat ({e}): the host charges wall time", flush=True)
        return
    threading.Thread(target=pace.heartbeat, args=(spec["heartbeat"], threading.Event()), daemon=True).start()


def main():
    spec_path = sys.argv[1]
    with open(spec_path) as f:
        spec = json.load(f)
    start_heartbeat(spec)
    meta = os.path.dirname(spec_path)
    console = sys.stdout.buffer
    for target, link in spec["links"]:
        try:
            make_link(target, link)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"vfstrace-guest: cannot link {link} -> {target}: {e}", flush=True)
    release = os.uname().release
    cwd = spec["cwd"]
    if not os.path.isdir(cwd):
        print(f"vfstrace-guest: {cwd} does not exist here; running in /", flush=True)
        cwd = "/"
    print(spec["started_mark"], release, flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            spec["argv"], cwd=cwd, env=spec["env"], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    except OSError as e:
        rc = 127 if isinstance(e, FileNotFoundError) else 126
        msg = f"vfstrace-guest: cannot run {spec['argv'][0]}: {e}\n"
        with open(os.path.join(meta, "stderr"), "w") as f:
            f.write(msg)
        open(os.path.join(meta, "stdout"), "w").close()
        console.write(msg.encode())
    else:
        threads = [
            threading.Thread(target=pump, args=(proc.stdout, os.path.join(meta, "stdout"), console)),
            threading.Thread(target=pump, args=(proc.stderr, os.path.join(meta, "stderr"), console)),
        ]
        for t in threads:
            t.start()
        rc = proc.wait()
        if rc < 0:  # killed by a signal: report it the way a shell does
            rc = 128 - rc
        for t in threads:
            t.join()
    result = {"returncode": rc, "kernel_release": release, "command_s": round(time.monotonic() - t0, 2),
              "cpus": len(os.sched_getaffinity(0))}
    tmp = os.path.join(meta, "result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(meta, "result.json"))
    print(f"vfstrace-guest: command exited with {rc}", flush=True)


if __name__ == "__main__":
    main()
