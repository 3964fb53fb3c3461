"""Build vfstrace's own kernels: on each kernel line, one with the 2011 dcache race, one without.

Every Debian kernel vfstrace boots is fixed, so a `race 0` there cannot tell
a working detector from a blind one. These builds give it real kernels that
have the bug and controls that do not, from the same source and config, on
each kernel line (``LINES``: 6.1 and 6.12 from the host's bookworm lists,
5.10 from bullseye through the VM harness's private apt configuration):

- ``<line>-control``: Debian's ``linux-source-<line>``, unmodified.
- ``<line>-prepatch``: the same tree with ``kbuild/<line>-prepatch.patch``,
  which reverts that line's form of "vfs: fix race in rcu lookup of pruned
  dentry" (3.0, 2011) in fs/namei.c and records each spurious ENOENT it
  causes (the ground truth, the same interface on every line; see each
  patch's header for where the check lives there).

All are ``kbuild/vfstrace.config`` (shared) merged with the line's own
``kbuild/<line>.config`` where it has one (only the options whose names or
choices differ on that line), over allnoconfig: only what the tiers, the
guest's root (9p, virtio, overlayfs, built in, so the initramfs carries no
modules) and Debian's userland need, and IKHEADERS so BCC finds matching
headers in /sys/kernel/kheaders.tar.xz (there is no headers package for
them).

Cost: a full build is a few CPU-minutes, so one tree per line serves both
its kernels: the first kernel asked for is built in full, the other by
applying (or reversing) the patch and rebuilding incrementally (fs/namei.o,
the few files that include the release string, relink, BTF). Each line has
its own unpacked tree and lock, so two lines build side by side. Results are
cached under the VM cache by (source package and version, merged config
fragment, patch, recipe); a second build returns in seconds.

Nothing the user types reaches a shell or the kernel source: the kernel name
is checked against a fixed list, and make, patch and tar get argv lists.

Kept as one module because the source, the shared tree, the patch state and
the cache key are one build recipe: split, each part would have to know the
order of the others.
"""

from __future__ import annotations

import dataclasses
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
from vfstrace.vm.kernels import SERIES, VmError, _apt_options, _apt_update, cache_dir

log = logging.getLogger("vfstrace.vm")

KBUILD = Path(__file__).resolve().parent / "kbuild"
FRAGMENT = KBUILD / "vfstrace.config"  # shared by every line


@dataclasses.dataclass(frozen=True)
class Line:
    """A kernel line vfstrace builds: its Debian source package and where apt finds it."""

    name: str  # "6.12"
    apt_series: str  # the vfstrace.vm.kernels.SERIES whose apt lists carry the source package

    @property
    def package(self) -> str:
        return f"linux-source-{self.name}"

    @property
    def tarball(self) -> str:
        return f"usr/src/{self.package}.tar.xz"

    @property
    def tree_name(self) -> str:
        return self.package  # the tarball's top directory

    @property
    def fragment(self) -> Path:
        """The line's own config fragment (only options that differ on it; may not exist)."""
        return KBUILD / f"{self.name}.config"

    @property
    def lock_name(self) -> str:
        return f".build-{self.name}.lock"


# In the order `vm build --kernel all` builds them; 6.1 first (the line every
# check ran on first), 5.10 last (bullseye's private lists; not in CI's all).
LINES = {
    "6.1": Line("6.1", "6.1"),
    "6.12": Line("6.12", "6.12"),
    "5.10": Line("5.10", "5.10"),
}
# What `--kernel all` builds: the lines from the host's own (bookworm) lists;
# 5.10 is built by naming it. CI checks 6.1 only (tests/test_prepatch_vm.py):
# a line's two boots are about 25 guest-minutes under TCG.
ALL_LINES = ("6.1", "6.12")

# Bump when the way a kernel is made changes (make targets, install layout),
# so an old cached kernel is rebuilt rather than reused.
RECIPE = "vfstrace-kbuild-2"  # 2: allnoconfig + fragment (was defconfig + kvm_guest.config)

# name -> patch applied to its line's tree (None: the unmodified source);
# per line, the control first (the full build), then the prepatch
# (incremental)
BUILT = {name: patch for ln in LINES
         for name, patch in ((f"{ln}-control", None), (f"{ln}-prepatch", f"{ln}-prepatch.patch"))}

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


def choices() -> list[str]:
    """What `vm build --kernel` accepts: each built kernel, each line (its two kernels), all."""
    return [*BUILT, *LINES, "all"]


def names(kernel: str) -> list[str]:
    """The built kernels ``kernel`` stands for: a line, its control then its
    prepatch; "all", those of ALL_LINES, line by line."""
    if kernel == "all":
        return [n for n in BUILT if line_of(n).name in ALL_LINES]
    if kernel in LINES:
        return [n for n in BUILT if line_of(n).name == kernel]
    if kernel not in BUILT:
        raise BuildError(f"unknown kernel to build {kernel!r}: choose one of {', '.join(choices())}")
    return [kernel]


def is_built_name(kernel: str) -> bool:
    return kernel in BUILT


def line_of(name: str) -> Line:
    """The kernel line of a built kernel ("6.12-prepatch" -> 6.12)."""
    if name not in BUILT:
        raise BuildError(f"unknown kernel to build {name!r}: choose one of {', '.join(choices())}")
    return LINES[name.rsplit("-", 1)[0]]


def patch_path(name: str) -> Path | None:
    p = BUILT[name]
    return KBUILD / p if p else None


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_key(name: str, version: str) -> str:
    """The cache key of one kernel: source package and version, merged config fragment, its patch, the recipe.

    The control's key leaves the patch out, so editing the patch rebuilds
    only the prepatch kernel; a line's own fragment is in its keys only,
    and a line without one (6.1) hashes the shared fragment alone, as
    before lines had fragments of their own.
    """
    line = line_of(name)
    h = hashlib.sha256()
    for part in (RECIPE.encode(), line.package.encode(), version.encode(), merged_fragment(line)):
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


def _apt(line: Line) -> list[str]:
    """apt's options for the line's lists: none for the host's (bookworm), the private bullseye ones for 5.10."""
    series = SERIES[line.apt_series]
    if series.suite is not None:
        _apt_update(series)  # the private lists, made once (vm fetch makes the same)
    return _apt_options(series)


def source_version(line: Line) -> str:
    """The candidate version of the line's linux-source package in apt's lists (the cache key's first part)."""
    r = _run(["apt-cache", *_apt(line), "show", "--no-all-versions", line.package])
    m = re.search(r"^Version:\s*(\S+)", r.stdout, re.M)
    if r.returncode != 0 or not m:
        debs = sorted((_cache_dir() / "debs").glob(f"{line.package}_*_all.deb"))
        if debs:  # offline, but downloaded before: use what is there
            return debs[-1].name.split("_")[1].replace("%3a", ":")
        raise BuildError(f"apt knows no {line.package} package (run apt-get update): {_last_line(r.stderr)}")
    return m.group(1)


def _deb(line: Line, version: str) -> Path:
    debs = _cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    path = debs / f"{line.package}_{version.replace(':', '%3a')}_all.deb"
    if path.is_file():
        return path
    _say(f"downloading {line.package} {version} (~140 MB)")
    r = _run(["apt-get", *_apt(line), "download", f"{line.package}={version}"], cwd=debs)
    if r.returncode != 0 or not path.is_file():
        raise BuildError(f"apt-get download {line.package}={version} failed: {_last_line(r.stderr)}")
    return path


def _src_root(line: Line, version: str) -> Path:
    return _cache_dir() / "src" / f"{line.package}_{version.replace(':', '%3a')}"


def source_tree(line: Line, version: str) -> Path:
    """Debian's source of the line (Debian's patches already applied), unpacked once."""
    root = _src_root(line, version)
    tree = root / line.tree_name
    if (root / ".unpacked").is_file() and (tree / "Makefile").is_file():
        return tree
    deb = _deb(line, version)
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
    tarball = root / "deb" / line.tarball
    if not tarball.is_file():
        raise BuildError(f"{deb.name} has no {line.tarball}")
    r = _run(["tar", "-xf", str(tarball), "-C", str(root)])
    if r.returncode != 0 or not (tree / "Makefile").is_file():
        raise BuildError(f"unpacking {tarball.name} failed: {_last_line(r.stderr)}")
    shutil.rmtree(root / "deb")
    (root / ".unpacked").write_text(version + "\n")
    _say(f"source unpacked in {_fmt_s(time.monotonic() - t0)}")
    return tree


# --------------------------------------------------------------------------
# config


def _option(text_line: str) -> tuple[str, str] | None:
    """("CONFIG_X", value) for a fragment line that sets an option, "n" for "# CONFIG_X is not set"."""
    if m := re.fullmatch(r"(CONFIG_\w+)=(\S+)", text_line.strip()):
        return m.group(1), m.group(2)
    if m := re.fullmatch(r"# (CONFIG_\w+) is not set", text_line.strip()):
        return m.group(1), "n"
    return None


def merge_fragments(shared: str, own: str | None, own_name: str = "the line's fragment") -> str:
    """The shared fragment with a line's own over it: each option the line's
    fragment sets is taken out of the shared text (a comment says where it
    went) and the line's text follows, so every option is set once and
    Kconfig never sees it reassigned. No line fragment: the shared text,
    unchanged (byte for byte, so its cache keys are too)."""
    if own is None:
        return shared
    mine = {o[0] for ln in own.splitlines() if (o := _option(ln))}
    out = []
    for ln in shared.splitlines():
        o = _option(ln)
        out.append(f"# ({o[0]}: set by {own_name} below)" if o and o[0] in mine else ln)
    return "\n".join(out) + f"\n#\n# ---- {own_name} ----\n" + own


def merged_fragment(line: Line) -> bytes:
    """The whole fragment a line's kernels are configured with (the shared one, then the line's own)."""
    own = line.fragment.read_text() if line.fragment.is_file() else None
    return merge_fragments(FRAGMENT.read_text(), own, line.fragment.name).encode()


def fragment_options(text: str | None = None) -> dict[str, str]:
    """CONFIG_X -> "y" or "n" as the fragment asks ("# CONFIG_X is not set" is "n"); the shared fragment by default."""
    opts = {}
    for ln in (FRAGMENT.read_text() if text is None else text).splitlines():
        if o := _option(ln):
            opts[o[0]] = o[1]
    return opts


def config_mismatches(config_text: str, fragment_text: str | None = None) -> list[str]:
    """Options of the fragment (the shared one by default) that the final .config does not have as asked."""
    have = {}
    for line in config_text.splitlines():
        if m := re.fullmatch(r"(CONFIG_\w+)=(\S+)", line.strip()):
            have[m.group(1)] = m.group(2)
    bad = []
    for opt, want in fragment_options(fragment_text).items():
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


def configure(tree: Path, line: Line, log: Path) -> None:
    """allnoconfig with the line's merged fragment as its fixed choices, then olddefconfig; verified option by option.

    KCONFIG_ALLCONFIG makes the fragment's values the ones allnoconfig
    starts from, so dependencies resolve around them (a merge after the
    fact would leave an option whose dependency allnoconfig turned off).
    A line without a fragment of its own is configured from the shared
    file itself; one with its own, from the merge written beside its tree.
    """
    merged = merged_fragment(line)
    frag_sha = _sha256_bytes(merged)
    state = _read_state(tree)
    if state.get("config_sha256") == frag_sha and (tree / ".config").is_file():
        return
    frag, label = FRAGMENT, FRAGMENT.name
    if line.fragment.is_file():
        frag = tree.parent / f"vfstrace-{line.name}.config"
        frag.write_bytes(merged)
        label = f"{FRAGMENT.name} + {line.fragment.name}"
    _say(f"{line.name}: configuring (allnoconfig + {label})")
    _make(tree, ["allnoconfig", f"KCONFIG_ALLCONFIG={frag}"], "allnoconfig", log)
    _make(tree, ["olddefconfig"], "olddefconfig", log)
    bad = config_mismatches((tree / ".config").read_text(), merged.decode())
    if bad:
        raise BuildError(f"the {line.name} kernel config dropped options of {label} (a Kconfig dependency): {', '.join(bad)}")
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
    line = line_of(name)
    man = {
        "series": name,
        "release": release,
        "packages": [{"name": line.package, "version": version, "arch": "all"}],
        "fetched": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "built": {
            "key": key,
            "recipe": RECIPE,
            "line": line.name,
            "config_fragments": [FRAGMENT.name] + ([line.fragment.name] if line.fragment.is_file() else []),
            "config_fragment_sha256": _sha256_bytes(merged_fragment(line)),
            "patch": pp.name if pp else None,
            "patch_sha256": _sha256_bytes(pp.read_bytes()) if pp else None,
            "make_seconds": round(make_s, 1),
        },
    }
    (kdir / "manifest.json").write_text(json.dumps(man, indent=1) + "\n")
    return man


def build(kernel: str = "all", force: bool = False) -> list[dict]:
    """Build (or find cached) the named kernel(s), line by line; return their manifests."""
    want = names(kernel)
    out = []
    for ln in dict.fromkeys(line_of(n).name for n in want):
        out += _build_line(LINES[ln], [n for n in want if line_of(n).name == ln], force)
    return out


def _build_line(line: Line, want: list[str], force: bool) -> list[dict]:
    """The kernels ``want`` of one line, from its one tree, under its lock."""
    version = source_version(line)
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
    with open(_cache_dir() / line.lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one tree per line, one build of it at a time
        t_all = time.monotonic()
        tree = source_tree(line, version)
        log = tree.parent / "build.log"
        configure(tree, line, log)
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
        _say(f"{line.name}: done in {_fmt_s(time.monotonic() - t_all)}")
    return out


@click.command("build")
@click.option("--kernel", "-k", type=click.Choice(choices()), default="all", show_default=True,
              help="A built kernel, a line (its control and prepatch: " + ", ".join(LINES) + "), or all "
                   "(the lines " + ", ".join(ALL_LINES) + ").")
@click.option("--force", is_flag=True, help="Rebuild even if the cache has this kernel.")
def build_cmd(kernel, force):
    """Build kernels with (prepatch) and without (control) the 2011 race, per kernel line.

    From Debian's linux-source-<line> (apt: bookworm for 6.1 and 6.12,
    bullseye for 5.10), with vfstrace's config fragment (and the line's
    own); the prepatch kernel gets vfstrace/vm/kbuild/<line>-prepatch.patch.
    Cached under $VFSTRACE_VM_CACHE: a second build returns at once. A
    first build of a line takes ~10 CPU-minutes and ~6 GB of disk.
    """
    build(kernel, force=force)
    return 0

