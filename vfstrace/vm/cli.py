"""`vfstrace vm`: fetch, list, run and capture-symbols."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import click

from vfstrace.options import Duration
from vfstrace.vm import build as kbuild
from vfstrace.vm.boot import run
from vfstrace.vm.kernels import (
    GUEST_DIR,
    GUEST_OUT,
    GUEST_PYTHON,
    SERIES,
    Kernel,
    VmError,
    _deb_name,
    _kernels,
    _last_line,
    _run,
    _say,
    _series,
    boot_names,
    cache_dir,
    can_boot,
    fetch,
    load_kernel,
)

# --------------------------------------------------------------------------
# command line


@click.group("vm")
def vm_group():
    """Boot Debian kernels 5.10, 6.1, 6.12 (and vfstrace's own builds of each line) under qemu.

    \b
    vfstrace vm fetch --kernel all          download kernels + matching headers
    vfstrace vm build --kernel all          build 6.1- and 6.12-prepatch (the 2011 race) and -control
    vfstrace vm build --kernel 5.10         build 5.10-prepatch and 5.10-control
    vfstrace vm list                        what is fetched and built
    vfstrace vm run --kernel 6.12 -- uname -r
    """


vm_group.add_command(kbuild.build_cmd)


_KCHOICE = click.Choice([*SERIES, "all"])


@vm_group.command("fetch")
@click.option("--kernel", "-k", type=_KCHOICE, default="all", show_default=True)
def fetch_cmd(kernel):
    """Download kernel images, modules and exactly matching headers into the cache.

    Uses `apt-get download` + `dpkg -x` into $VFSTRACE_VM_CACHE (default
    .cache/vm); nothing is installed on the host. Safe to run again.
    """
    for s in _kernels(kernel):
        fetch(s)
    return 0


@vm_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json):
    """Show which kernels are fetched (Debian's) and built (vfstrace's own), and where."""
    rows = []
    for s in boot_names():
        k = load_kernel(s)
        built = kbuild.is_built_name(s)
        man = kbuild.load_manifest(s) if built and k else None
        rows.append({
            "kernel": s,
            "source": "built" if built else "fetched",
            "release": k.release if k else None,
            "package": f"{k.image_package['name']} {k.image_package['version']}" if k else None,
            "patch": (man or {}).get("built", {}).get("patch") if built else None,
            "fetched": k.fetched if k else None,
            "path": str(k.root.parent) if k else None,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        if r["release"]:
            how = f"built from {r['package']}" + (f" + {r['patch']}" if r["patch"] else "") if r["source"] == "built" \
                else r["package"]
            click.echo(f"{r['kernel']:13} {r['release']:26} {how}  ({r['path']})")
        elif r["source"] == "built":
            click.echo(f"{r['kernel']:13} not built (vfstrace vm build --kernel {r['kernel']})")
        else:
            click.echo(f"{r['kernel']:13} not fetched (vfstrace vm fetch --kernel {r['kernel']})")
    ok, why = can_boot()
    click.echo(f"can boot: {'yes' if ok else 'no: ' + why}")
    return 0


@vm_group.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--kernel", "-k", type=click.Choice(boot_names()), required=True)
@click.option("--timeout", type=Duration(0), default=900, show_default=True, help="Limit in quiet-guest seconds (a slowed guest gets more wall time) before qemu is killed.")
@click.option("--mem", default="2G", show_default=True)
@click.option("--cpus", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Host folder shared at /vmout (default: a temp dir).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the command's output, not the guest console.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def run_cmd(kernel, timeout, mem, cpus, out_dir, quiet, command):
    """Boot a kernel and run COMMAND inside (host / read-only + tmpfs overlay).

    Exits with the command's exit code; 124 if the guest timed out, 7 if it
    died without a result. The kernel's headers are at
    /lib/modules/$(uname -r)/build inside; /vmout is writable and shared.
    """
    if not re.fullmatch(r"\d+[KMG]?", mem):
        raise VmError(f"--mem {mem!r}: give a size like 2G or 2048M")
    stream = None if quiet else (lambda line: click.echo(line))
    res = run(kernel, list(command), timeout=timeout, out_dir=out_dir, mem=mem, cpus=cpus, stream=stream)
    if quiet:
        sys.stdout.write(res.stdout)
        sys.stdout.flush()
        sys.stderr.write(res.stderr)
    boot = f"{res.boot_s:.1f} s" if res.boot_s is not None else "?"
    _say(f"{res.kernel_release}: exit {res.returncode}, boot-to-command {boot}, total {res.duration_s:.1f} s")
    return res.returncode


@vm_group.command("capture-symbols")
@click.option("--kernel", "-k", type=click.Choice([*SERIES, "all", "host"]), default="all", show_default=True)
@click.option("--dest", type=click.Path(file_okay=False), required=True,
              show_default=True, help="Fixtures land in DEST/<kernel release>/.")
@click.option("--timeout", type=Duration(0), default=900, show_default=True)
def capture_symbols_cmd(kernel, dest, timeout):
    """Capture kallsyms, kprobe blacklist and ftrace entries of the race functions as test fixtures.

    Boots each kernel (or reads this host's, with `--kernel host`) and writes
    kallsyms.txt, kprobe_blacklist.txt, filter_functions.txt, features.json
    and SOURCE.md under DEST/<kernel release>/.
    """
    for s in (["host"] if kernel == "host" else _kernels(kernel)):
        out = capture_symbols(s, dest, timeout=timeout)
        _say(f"{s}: fixtures written to {out}")
    return 0


# --------------------------------------------------------------------------
# symbol fixtures


FIXTURE_FILES = ["kallsyms.txt", "kprobe_blacklist.txt", "filter_functions.txt", "features.json", "capture.json"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def capture_symbols(kernel: str, dest, timeout: float = 900, stream=None) -> Path:
    """Capture the race functions' kallsyms/blacklist/ftrace entries of a kernel into dest/<release>/.

    ``kernel`` is a series (booted under qemu) or "host" (this machine, as root).
    """
    script = GUEST_DIR / "capture_symbols.py"
    if not script.is_file():
        raise VmError(f"{script} is missing")
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="vfstrace-caps-") as td:
        caps = Path(td) / "caps"
        if kernel == "host":
            if os.geteuid() != 0:
                from vfstrace.errors import PrivilegeError

                raise PrivilegeError("capture-symbols --kernel host reads /proc/kallsyms and tracefs: run as root")
            r = _run([GUEST_PYTHON, str(script), str(caps)])
            if r.returncode != 0:
                raise VmError(f"capture on the host failed: {_last_line(r.stderr)}")
            k, how = None, (
                f"on the host itself, as root, by `vfstrace vm capture-symbols --kernel host` "
                f"(vfstrace/vm/guest/capture_symbols.py under {GUEST_PYTHON})"
            )
        else:
            k = load_kernel(kernel) or fetch(kernel)
            res = run(kernel, [GUEST_PYTHON, str(script), f"{GUEST_OUT}/caps"], timeout=timeout,
                      out_dir=td, stream=stream)
            if res.returncode != 0:
                raise VmError(f"{kernel}: capture script exited {res.returncode}: {_last_line(res.stderr)}")
            how = (
                f"booted under qemu TCG (2 vCPUs, 2 GiB, host root over 9p) by "
                f"`vfstrace vm capture-symbols --kernel {kernel}`, which ran vfstrace/vm/guest/capture_symbols.py "
                f"as root inside the guest"
            )
        features = json.loads((caps / "features.json").read_text())
        capture = json.loads((caps / "capture.json").read_text())
        rel = features["kernel_release"]
        if k:
            if rel != k.release:
                raise VmError(f"{kernel}: guest reported {rel}, expected {k.release}")
            features["debian_package"] = {"name": k.image_package["name"], "version": k.image_package["version"]}
            (caps / "features.json").write_text(json.dumps(features, indent=1) + "\n")
        out = dest / rel
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for name in FIXTURE_FILES:
            if (caps / name).exists():
                shutil.copyfile(caps / name, out / name)
    (out / "SOURCE.md").write_text(_source_md(k, kernel, rel, how, capture))
    return out


def _source_md(k: Kernel | None, kernel: str, rel: str, how: str, capture: dict) -> str:
    lines = [f"# Symbol fixture: Linux {rel}", ""]
    if k:
        suite = _series(kernel).suite or "bookworm"
        lines.append("Kernel: Debian's own build, from deb.debian.org (" + suite + "):")
        debs = cache_dir() / "debs"
        for p in k.packages:
            deb = debs / _deb_name(p)
            digest = f", sha256 {_sha256(deb)}" if deb.is_file() else ""
            lines.append(f"- `{p['name']}` {p['version']} ({p['arch']}{digest})")
        lines.append("")
    else:
        lines += [f"Kernel: this project's development/CI machine's own kernel ({capture.get('kernel_version', '')}),",
                  "not a Debian package (debian_package is null).", ""]
    lines += [
        f"Captured {capture['captured_utc']}, {how}.",
        "",
        "Files (each filtered to symbol names matching the regex below; addresses kept as read):",
    ]
    for name, src in capture.get("sources", {}).items():
        lines.append(f"- `{name}`: {capture['counts'][name]} lines from `{src}`")
    lines.append("- `features.json`: kernel config (from "
                 f"`{capture.get('config_source')}`), ringbuf (kernel >= 5.8), "
                 "`BPF.support_kfunc()` from bcc (its check is BTF present + the symbol "
                 "bpf_trampoline_link_prog in kallsyms; it attaches nothing), lockdown mode")
    lines.append("- `capture.json`: the capture's own record (sources, counts, notes)")
    missing = [n for n in ("kallsyms.txt", "kprobe_blacklist.txt", "filter_functions.txt")
               if n not in capture.get("sources", {})]
    if missing or capture.get("notes"):
        lines += ["", "Notes (what could not be read, and what was done by hand):"]
        lines += [f"- {n}" for n in capture.get("notes", [])]
        if missing:
            lines.append(f"- absent here, because unreadable (see above): {', '.join(missing)}")
    lines += ["", "Symbol name regex (Python):", "", "```", capture["regex"], "```", ""]
    return "\n".join(lines)
