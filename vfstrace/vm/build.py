"""Build vfstrace's own 6.1 kernels: one with the 2011 dcache race, one without.

Every Debian kernel vfstrace boots is fixed, so a `race 0` there cannot tell
a working detector from a blind one. These builds give it a real kernel
that has the bug and a control that does not, from the same source and
config:

- ``6.1-control``: Debian's ``linux-source-6.1``, unmodified.
- ``6.1-prepatch``: the same tree with ``kbuild/6.1-prepatch.patch``, which
  reverts the modern form of "vfs: fix race in rcu lookup of pruned dentry"
  (3.0, 2011) in fs/namei.c step_into() and records each spurious ENOENT
  it causes (the ground truth; see the patch's header).

Both use ``kbuild/vfstrace.config`` over defconfig + kvm_guest.config, with
everything a guest needs built in (9p, virtio, overlayfs), so the initramfs
carries no modules, and IKHEADERS so BCC finds matching headers in
/sys/kernel/kheaders.tar.xz (there is no headers package for them).

Cost: a full build is ~17 CPU-minutes, so one tree serves both kernels: the
first kernel asked for is built in full, the other by applying (or
reversing) the patch and rebuilding incrementally (fs/namei.o, the few files
that include the release string, relink, BTF). Results are cached under the
VM cache by (source package version, config fragment, patch, recipe); a
second build returns in seconds.

Nothing the user types reaches a shell or the kernel source: the kernel name
is checked against a fixed list, and make, patch and tar get argv lists.

Kept as one module because the source, the shared tree, the patch state and
the cache key are one build recipe: split, each part would have to know the
order of the others.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import click

from vfstrace.errors import MissingDependency
from vfstrace.vm.kernels import VmError, cache_dir

log = logging.getLogger("vfstrace.vm")

KBUILD = Path(__file__).resolve().parent / "kbuild"
FRAGMENT = KBUILD / "vfstrace.config"
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = "usr/src/linux-source-6.1.tar.xz"
TREE_NAME = "linux-source-6.1"

# Bump when the way a kernel is made changes (make targets, install layout),
# so an old cached kernel is rebuilt rather than reused.
RECIPE = "vfstrace-kbuild-1"

# name -> patch applied to the tree (None: the unmodified source)
BUILT = {
    "6.1-control": None,
    "6.1-prepatch": "6.1-prepatch.patch",
}

# Free space a first build needs: the unpacked tree (~1.5 GB) plus objects
# with DWARF for BTF (~4 GB), with room to spare.
NEED_FREE_BYTES = 10 << 30

PROGRESS_EVERY_S = 30.0


class BuildError(VmError):
    """A kernel could not be built: missing tools, a patch that does not apply, make failing."""

    exit_code = 8


def _cache_dir() -> Path:
    # the VM cache (VFSTRACE_VM_CACHE or .cache/vm), shared with fetched kernels
    return cache_dir()


def _say(msg: str) -> None:
    log.info(f"vm build: {msg}")


def _fmt_s(secs: float) -> str:
    secs = int(round(secs))
    return f"{secs // 60}m{secs % 60:02d}s" if secs >= 60 else f"{secs}s"


def names(kernel: str) -> list[str]:
    """The built kernels ``kernel`` stands for ("all": both, control first)."""
    if kernel == "all":
        return list(BUILT)
    if kernel not in BUILT:
        raise BuildError(f"unknown kernel to build {kernel!r}: choose one of {', '.join(BUILT)} or all")
    return [kernel]


def is_built_name(kernel: str) -> bool:
    return kernel in BUILT


def patch_path(name: str) -> Path | None:
    p = BUILT[name]
    return KBUILD / p if p else None


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_key(name: str, version: str) -> str:
    """The cache key of one kernel: source version, config fragment, its patch, the recipe.

    The control's key leaves the patch out, so editing the patch rebuilds
    only the prepatch kernel.
    """
    h = hashlib.sha256()
    for part in (RECIPE.encode(), SOURCE_PACKAGE.encode(), version.encode(), FRAGMENT.read_bytes()):
        h.update(part + b"\0")
    pp = patch_path(name)
    h.update(pp.read_bytes() if pp else b"(unpatched)")
    return h.hexdigest()[:16]


def localversion(name: str) -> str:
    """The release suffix, so `uname -r` in a guest says which kernel it is (6.1.192-vfstrace-prepatch)."""
    return "-vfstrace-" + name.split("-", 1)[1]


# --------------------------------------------------------------------------
# tools and source


def _run(argv, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise MissingDependency(f"{argv[0]} not found: run `bash scripts/setup.sh`") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


TOOLS = {  # tool -> Debian package
    "make": "build-essential", "gcc": "build-essential", "bc": "bc", "bison": "bison",
    "flex": "flex", "pahole": "dwarves", "patch": "patch", "tar": "tar", "xz": "xz-utils",
    "dpkg-deb": "dpkg", "apt-get": "apt", "cpio": "cpio", "nice": "coreutils",
}
HEADERS = {"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/ssl.h": "libssl-dev"}


def check_tools() -> None:
    """Refuse early, naming the packages, if a build could not finish here."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)}
                     | {pkg for path, pkg in HEADERS.items() if not os.path.exists(path)})
    if not (shutil.which("depmod") or os.path.exists("/usr/sbin/depmod")):
        missing.append("kmod")
    if missing:
        raise MissingDependency(
            f"building kernels needs {', '.join(missing)}: run `bash scripts/setup.sh` "
            f"(or apt-get install {' '.join(missing)})"
        )


def source_version() -> str:
    """The candidate version of linux-source-6.1 in apt's lists (the cache key's first part)."""
    r = _run(["apt-cache", "show", "--no-all-versions", SOURCE_PACKAGE])
    m = re.search(r"^Version:\s*(\S+)", r.stdout, re.M)
    if r.returncode != 0 or not m:
        debs = sorted((_cache_dir() / "debs").glob(f"{SOURCE_PACKAGE}_*_all.deb"))
        if debs:  # offline, but downloaded before: use what is there
            return debs[-1].name.split("_")[1].replace("%3a", ":")
        raise BuildError(f"apt knows no {SOURCE_PACKAGE} package (run apt-get update): {_last_line(r.stderr)}")
    return m.group(1)


def _deb(version: str) -> Path:
    debs = _cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    path = debs / f"{SOURCE_PACKAGE}_{version.replace(':', '%3a')}_all.deb"
    if path.is_file():
        return path
    _say(f"downloading {SOURCE_PACKAGE} {version} (~140 MB)")
    r = _run(["apt-get", "download", f"{SOURCE_PACKAGE}={version}"], cwd=debs)
    if r.returncode != 0 or not path.is_file():
        raise BuildError(f"apt-get download {SOURCE_PACKAGE}={version} failed: {_last_line(r.stderr)}")
    return path


def _src_root(version: str) -> Path:
    return _cache_dir() / "src" / f"{SOURCE_PACKAGE}_{version.replace(':', '%3a')}"


def source_tree(version: str) -> Path:
    """Debian's 6.1 source (Debian's patches already applied), unpacked once."""
    root = _src_root(version)
    tree = root / TREE_NAME
    if (root / ".unpacked").is_file() and (tree / "Makefile").is_file():
        return tree
    deb = _deb(version)
    free = shutil.disk_usage(_cache_dir()).free
    if free < NEED_FREE_BYTES:
        raise BuildError(f"{_cache_dir()} has {free >> 30} GiB free; a kernel build needs about {NEED_FREE_BYTES >> 30} GiB")
    t0 = time.monotonic()
    _say(f"unpacking {deb.name} into {root}")
    shutil.rmtree(root, ignore_errors=True)
    (root / "deb").mkdir(parents=True)
    r = _run(["dpkg-deb", "-x", str(deb), str(root / "deb")])
    if r.returncode != 0:
        raise BuildError(f"dpkg-deb -x {deb.name} failed: {_last_line(r.stderr)}")
    tarball = root / "deb" / SOURCE_TARBALL
    if not tarball.is_file():
        raise BuildError(f"{deb.name} has no {SOURCE_TARBALL}")
    r = _run(["tar", "-xf", str(tarball), "-C", str(root)])
    if r.returncode != 0 or not (tree / "Makefile").is_file():
        raise BuildError(f"unpacking {tarball.name} failed: {_last_line(r.stderr)}")
    shutil.rmtree(root / "deb")
    (root / ".unpacked").write_text(version + "\n")
    _say(f"source unpacked in {_fmt_s(time.monotonic() - t0)}")
    return tree


# --------------------------------------------------------------------------
# config


def fragment_options() -> dict[str, str]:
    """CONFIG_X -> "y" or "n" as the fragment asks ("# CONFIG_X is not set" is "n")."""
    opts = {}
    for line in FRAGMENT.read_text().splitlines():
        if m := re.fullmatch(r"(CONFIG_\w+)=(\S+)", line.strip()):
            opts[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"# (CONFIG_\w+) is not set", line.strip()):
            opts[m.group(1)] = "n"
    return opts


def config_mismatches(config_text: str) -> list[str]:
    """Options of the fragment that the final .config does not have as asked."""
    have = {}
    for line in config_text.splitlines():
        if m := re.fullmatch(r"(CONFIG_\w+)=(\S+)", line.strip()):
            have[m.group(1)] = m.group(2)
    bad = []
    for opt, want in fragment_options().items():
        got = have.get(opt, "n")
        if (want == "n") != (got == "n") or (want != "n" and got != want):
            bad.append(f"{opt}={got} (asked {want})")
    return bad


_running: set = set()  # the makes this process runs, for cancel()
_cancelled = threading.Event()


def _stop_group(proc: subprocess.Popen) -> None:
    """A make and every compiler under it: SIGTERM first, so that make
    deletes the targets it was writing (no truncated object is left to look
    up to date next time), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def cancel() -> None:
    """Stop the builds this process runs (from another thread: a test
    session ending with a build still under way); build() then fails."""
    _cancelled.set()
    for proc in list(_running):
        _stop_group(proc)


def _make(tree: Path, args: list[str], label: str, log: Path, jobs: int | None = None) -> float:
    """Run make in ``tree`` at low priority, printing progress every 30 s; return its seconds."""
    argv = ["nice", "-n", "10", "make", f"-j{jobs or os.cpu_count() or 1}", *args]
    if _cancelled.is_set():
        raise BuildError(f"{label}: cancelled")
    t0 = time.monotonic()
    with open(log, "a") as lf:
        lf.write(f"\n### {' '.join(argv)}\n")
        lf.flush()
        # A session of its own: make and its compilers are stopped as one
        # group (cancel(), an exception here), never left running.
        proc = subprocess.Popen(argv, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)
        _running.add(proc)
        state = {"steps": 0, "last": ""}

        def pump():
            for line in proc.stdout:
                lf.write(line)
                s = line.strip()
                if re.match(r"(CC|LD|AR|AS|BTF|OBJCOPY|GEN|HOSTCC|BTFIDS|LDS)\b", s):
                    state["steps"] += 1
                    state["last"] = s

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            while True:
                try:
                    proc.wait(timeout=PROGRESS_EVERY_S)
                    break
                except subprocess.TimeoutExpired:
                    _say(f"{label}: {_fmt_s(time.monotonic() - t0)}, {state['steps']} steps, last: {state['last']}")
        except BaseException:
            _stop_group(proc)
            raise
        finally:
            _running.discard(proc)
        reader.join(10)
    secs = time.monotonic() - t0
    if _cancelled.is_set():
        raise BuildError(f"{label}: cancelled")
    if proc.returncode != 0:
        errs = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
                if re.search(r"\berror\b|\*\*\*", ln)]
        raise BuildError(f"{label}: make {' '.join(args)} failed (exit {proc.returncode}) after {_fmt_s(secs)}: "
                         f"{errs[-1] if errs else 'see ' + str(log)} (log: {log})")
    return secs


def _state_path(tree: Path) -> Path:
    return tree / ".vfstrace-state.json"


def _read_state(tree: Path) -> dict:
    try:
        return json.loads(_state_path(tree).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(tree: Path, state: dict) -> None:
    _state_path(tree).write_text(json.dumps(state, indent=1) + "\n")


def configure(tree: Path, log: Path) -> None:
    """defconfig + kvm_guest.config + the fragment, then olddefconfig; verified option by option."""
    frag_sha = _sha256_bytes(FRAGMENT.read_bytes())
    state = _read_state(tree)
    if state.get("config_sha256") == frag_sha and (tree / ".config").is_file():
        return
    _say(f"configuring (defconfig + kvm_guest.config + {FRAGMENT.name})")
    _make(tree, ["defconfig"], "defconfig", log)
    _make(tree, ["kvm_guest.config"], "kvm_guest.config", log)
    r = _run([str(tree / "scripts/kconfig/merge_config.sh"), "-m", ".config", str(FRAGMENT)], cwd=tree)
    if r.returncode != 0:
        raise BuildError(f"merge_config.sh {FRAGMENT.name} failed: {_last_line(r.stderr or r.stdout)}")
    _make(tree, ["olddefconfig"], "olddefconfig", log)
    bad = config_mismatches((tree / ".config").read_text())
    if bad:
        raise BuildError(f"the kernel config dropped options of {FRAGMENT.name} (a Kconfig dependency): {', '.join(bad)}")
    state["config_sha256"] = frag_sha
    _write_state(tree, state)


# --------------------------------------------------------------------------
# the patch


def _patch(tree: Path, patch: bytes, reverse: bool, label: str) -> None:
    """Apply (or reverse) ``patch``: a dry run first, so a patch that does not apply changes nothing."""
    base = ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch"]
    if reverse:
        base = ["patch", "-p1", "--reverse", "--batch", "--no-backup-if-mismatch"]
    r = subprocess.run([*base, "--dry-run"], cwd=tree, input=patch, capture_output=True)
    if r.returncode != 0:
        why = _last_line((r.stdout + r.stderr).decode(errors="replace"))
        raise BuildError(f"{label} does not {'reverse' if reverse else 'apply'} cleanly to {tree}: {why}")
    r = subprocess.run(base, cwd=tree, input=patch, capture_output=True)
    if r.returncode != 0:
        raise BuildError(f"{label}: patch failed after a clean dry run: {_last_line((r.stdout + r.stderr).decode(errors='replace'))}")


def set_tree_patch(tree: Path, name: str) -> None:
    """Bring the tree to the source of ``name``: unpatched for the control, patched for the prepatch.

    The applied patch is kept in the tree's state, so it is reversed with
    the very bytes that were applied even if the project's patch changed.
    """
    state = _read_state(tree)
    applied = state.get("applied_patch")
    pp = patch_path(name)
    want = pp.read_bytes() if pp else None
    if applied is not None and (want is None or applied.encode() != want):
        _say(f"{name}: reversing {state.get('applied_name')} in the tree")
        _patch(tree, applied.encode(), True, f"the tree's applied {state.get('applied_name')}")
        state.pop("applied_patch")
        state.pop("applied_name", None)
        _write_state(tree, state)
    if want is not None and state.get("applied_patch") is None:
        _say(f"{name}: applying {pp.relative_to(KBUILD.parent.parent.parent)}")
        _patch(tree, want, False, f"{pp.name}")
        state["applied_patch"] = want.decode()
        state["applied_name"] = pp.name
        _write_state(tree, state)


# --------------------------------------------------------------------------
# built kernels in the cache


def kernel_dir(name: str) -> Path:
    return _cache_dir() / name


def load_manifest(name: str) -> dict | None:
    """The manifest of a built kernel whose image is present, else None."""
    d = kernel_dir(name)
    try:
        man = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not (d / "root" / "boot" / f"vmlinuz-{man.get('release')}").is_file():
        return None
    return man


def _install(tree: Path, name: str, version: str, key: str, log: Path, make_s: float) -> dict:
    """Copy the image, config, System.map and module tree of the tree's last build into the cache."""
    lv = f"LOCALVERSION={localversion(name)}"
    r = _run(["make", "-s", lv, "kernelrelease"], cwd=tree)
    release = r.stdout.strip()
    if r.returncode != 0 or not release:
        raise BuildError(f"{name}: make kernelrelease failed: {_last_line(r.stderr)}")
    kdir = kernel_dir(name)
    tmp = kdir / "root.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "boot").mkdir(parents=True)
    shutil.copyfile(tree / "arch/x86/boot/bzImage", tmp / "boot" / f"vmlinuz-{release}")
    shutil.copyfile(tree / ".config", tmp / "boot" / f"config-{release}")
    shutil.copyfile(tree / "System.map", tmp / "boot" / f"System.map-{release}")
    # modules.dep and modules.builtin: the initramfs builder reads them to
    # see that 9p, virtio and overlayfs are built in
    _make(tree, [lv, f"INSTALL_MOD_PATH={tmp}", "modules_install"], f"{name}: modules_install", log)
    mdir = tmp / "lib" / "modules" / release
    for link in ("build", "source"):
        # they point into the build tree, which holds the other kernel's
        # fs/namei.c by now: headers come from the kernel's own kheaders
        (mdir / link).unlink(missing_ok=True)
    shutil.rmtree(kdir / "root", ignore_errors=True)
    kdir.mkdir(parents=True, exist_ok=True)
    tmp.rename(kdir / "root")
    for old in kdir.glob("initramfs-*.cpio.gz"):
        old.unlink(missing_ok=True)
    pp = patch_path(name)
    man = {
        "series": name,
        "release": release,
        "packages": [{"name": SOURCE_PACKAGE, "version": version, "arch": "all"}],
        "fetched": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "built": {
            "key": key,
            "recipe": RECIPE,
            "config_fragment_sha256": _sha256_bytes(FRAGMENT.read_bytes()),
            "patch": pp.name if pp else None,
            "patch_sha256": _sha256_bytes(pp.read_bytes()) if pp else None,
            "make_seconds": round(make_s, 1),
        },
    }
    (kdir / "manifest.json").write_text(json.dumps(man, indent=1) + "\n")
    return man


def build(kernel: str = "all", force: bool = False) -> list[dict]:
    """Build (or find cached) the named kernel(s); return their manifests."""
    want = names(kernel)
    version = source_version()
    out, todo = [], []
    for name in want:
        man = load_manifest(name)
        key = build_key(name, version)
        if man and man.get("built", {}).get("key") == key and not force:
            _say(f"{name}: {man['release']} cached (key {key}, built {man['fetched']})")
            out.append(man)
        else:
            todo.append(name)
    if not todo:
        return out
    check_tools()
    _cache_dir().mkdir(parents=True, exist_ok=True)
    with open(_cache_dir() / ".build-6.1.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one tree, one build at a time
        t_all = time.monotonic()
        tree = source_tree(version)
        log = tree.parent / "build.log"
        configure(tree, log)
        for name in todo:
            key = build_key(name, version)
            man = load_manifest(name)
            if man and man.get("built", {}).get("key") == key and not force:  # built while we waited
                out.append(man)
                continue
            t0 = time.monotonic()
            set_tree_patch(tree, name)
            _say(f"{name}: make bzImage modules (log: {log})")
            make_s = _make(tree, [f"LOCALVERSION={localversion(name)}", "bzImage", "modules"], f"{name}: make", log)
            man = _install(tree, name, version, key, log, make_s)
            _say(f"{name}: {man['release']} built in {_fmt_s(time.monotonic() - t0)} (make {_fmt_s(make_s)}) "
                 f"-> {kernel_dir(name)}")
            out.append(man)
        _say(f"done in {_fmt_s(time.monotonic() - t_all)}")
    return out


@click.command("build")
@click.option("--kernel", "-k", type=click.Choice([*BUILT, "all"]), default="all", show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if the cache has this kernel.")
def build_cmd(kernel, force):
    """Build the 6.1 kernels with (prepatch) and without (control) the 2011 race.

    From Debian's linux-source-6.1 (apt), with vfstrace's config fragment;
    the prepatch kernel gets vfstrace/vm/kbuild/6.1-prepatch.patch. Cached
    under $VFSTRACE_VM_CACHE: a second build returns at once. A first build
    takes ~20 CPU-minutes and ~6 GB of disk.
    """
    build(kernel, force=force)
    return 0

