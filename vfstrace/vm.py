"""Boot real Debian kernels under qemu and run one command inside.

This machine's own kernel has no kprobes, so the kprobe tier is proven on
Debian's 5.10, 6.1 and 6.12 kernels booted under qemu TCG. The kernels and
their exactly matching headers are fetched with `apt-get download` + `dpkg -x`
into a cache folder (never installed on the host). A guest boots from a small
busybox initramfs, mounts the host's / read-only over 9p with a tmpfs overlay
on top, chroots into it, and runs the command with the kernel's headers and
modules linked where BCC looks for them. A second, writable 9p share carries
the command's output and exit code back.

Pure Python: subprocess to apt-get, dpkg-deb and qemu; no bcc here. Nothing
the user types reaches a shell: the command travels as a JSON argv list.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from vfstrace.errors import MissingDependency, VfstraceError

ROOT = Path(__file__).resolve().parent.parent
GUEST_DIR = ROOT / "tests" / "vm"  # init template and in-guest helpers
QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
GUEST_PYTHON = "/usr/bin/python3"  # Debian's, which sees python3-bpfcc
GUEST_OUT = "/vmout"  # where the results share is mounted inside
STARTED_MARK = "@@vfstrace-vm: command started"
TIMEOUT_EXIT = 124  # like timeout(1)


class VmError(VfstraceError):
    """The VM could not be prepared or booted, or the guest died."""

    exit_code = 7


class VmTimeout(VmError):
    """The guest did not finish in time; qemu was killed."""

    exit_code = TIMEOUT_EXIT

    def __init__(self, message, console=""):
        super().__init__(message)
        self.console = console


@dataclasses.dataclass(frozen=True)
class Series:
    """A Debian kernel line: where its packages come from and how its ABI is spelled."""

    name: str
    abi_re: str  # the ABI part of package names, e.g. 6.1.0-56 or 6.12.117+deb12
    suite: str | None  # None: the host's own apt lists (bookworm)

    @property
    def flavour_re(self):
        return re.compile(rf"^linux-image-({self.abi_re})-amd64(-unsigned)?$")


SERIES = {
    "5.10": Series("5.10", r"5\.10\.0-\d+", "bullseye"),
    "6.1": Series("6.1", r"6\.1\.0-\d+", None),
    "6.12": Series("6.12", r"6\.12\.\d+\+deb12", None),
}

# The modules a guest needs before it can mount its root: virtio transport,
# 9p over virtio, overlayfs. Their dependencies (netfs, fscache, ...) come
# from the kernel's own modules.dep; built-in ones are skipped.
BOOT_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]


def cache_dir() -> Path:
    return Path(os.environ.get("VFSTRACE_VM_CACHE") or ROOT / ".cache" / "vm").resolve()


def _say(msg: str) -> None:
    print(f"vm: {msg}", file=sys.stderr, flush=True)


def _series(kernel: str) -> Series:
    try:
        return SERIES[kernel]
    except KeyError:
        raise VmError(f"unknown kernel {kernel!r}: choose one of {', '.join(SERIES)}") from None


def _kernels(kernel: str) -> list[str]:
    return list(SERIES) if kernel == "all" else [_series(kernel).name]


# --------------------------------------------------------------------------
# apt: the host's lists for bookworm, a private configuration for bullseye


def _apt_options(series: Series) -> list[str]:
    """`-o` options that point apt at this series' package lists."""
    if series.suite is None:
        return []
    base = cache_dir() / f"apt-{series.suite}"
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    sl = base / "sources.list"
    if not sl.exists():
        for d in ("lists/partial", "cache/archives/partial"):
            (base / d).mkdir(parents=True, exist_ok=True)
        sl.write_text(
            f"deb [signed-by={keyring}] http://deb.debian.org/debian {series.suite} main\n"
            f"deb [signed-by={keyring}] http://deb.debian.org/debian-security {series.suite}-security main\n"
        )
    return [
        "-o", f"Dir::Etc::SourceList={sl}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", f"Dir::State::Lists={base / 'lists'}",
        "-o", f"Dir::Cache={base / 'cache'}",
        # Security Release files expire within days; an old clock or mirror
        # must not stop a download of packages whose hashes still check out.
        "-o", "Acquire::Check-Valid-Until=false",
    ]


def _run(argv, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise MissingDependency(f"{argv[0]} not found: run `bash scripts/setup.sh`") from None


def _apt_update(series: Series, force: bool = False) -> None:
    """Make sure the series' package lists exist; ``force`` refreshes them (stale lists)."""
    if series.suite is None:
        if force:
            _say("apt-get update (the host's lists name packages the mirror no longer has)")
            r = _run(["apt-get", "update"])
            if r.returncode != 0:
                raise VmError(f"apt-get update failed: {_last_line(r.stderr)}")
        return
    lists = cache_dir() / f"apt-{series.suite}" / "lists"
    opts = _apt_options(series)
    if any(lists.glob("*_Packages*")) and not force:
        return
    _say(f"apt-get update for {series.suite} (private lists under {lists.parent})")
    r = _run(["apt-get", *opts, "update"])
    if r.returncode != 0:
        raise VmError(f"apt-get update for {series.suite} failed: {_last_line(r.stderr)}")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _apt_show(series: Series, pkg: str) -> dict | None:
    """The candidate record of ``pkg`` as a dict of fields, or None if unavailable."""
    r = _run(["apt-cache", *_apt_options(series), "show", "--no-all-versions", pkg])
    if r.returncode != 0 or not r.stdout.strip():
        return None
    fields, key = {}, None
    for line in r.stdout.splitlines():
        if not line.strip():
            break
        if line[0].isspace() and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, val = line.partition(":")
            fields[key] = val.strip()
    return fields if "Version" in fields else None


def _abi_key(abi: str):
    return tuple(int(x) for x in re.findall(r"\d+", abi))


def resolve(kernel: str) -> dict:
    """Pick the newest ABI of a series with both image and headers available.

    Returns {"release", "packages": [{"name", "version", "arch"}]}: the
    image, the -amd64 and -common headers, and linux-kbuild (the headers'
    scripts point into it).
    """
    series = _series(kernel)
    _apt_update(series)
    r = _run(["apt-cache", *_apt_options(series), "pkgnames", "linux-image-"])
    abis = {}
    for name in r.stdout.split():
        m = series.flavour_re.match(name)
        if m:
            abis.setdefault(m.group(1), set()).add(name)
    for abi in sorted(abis, key=_abi_key, reverse=True):
        image = None
        for cand in (f"linux-image-{abi}-amd64-unsigned", f"linux-image-{abi}-amd64"):
            if cand in abis[abi]:
                image = (cand, _apt_show(series, cand))
                if image[1]:
                    break
        headers = f"linux-headers-{abi}-amd64"
        hfields = _apt_show(series, headers)
        if not image or not image[1] or not hfields:
            continue
        pkgs = [image, (headers, hfields)]
        for dep in hfields.get("Depends", "").split(","):
            dname = dep.strip().split()[0] if dep.strip() else ""
            if dname.startswith(("linux-headers-", "linux-kbuild-")):
                f = _apt_show(series, dname)
                if not f:
                    raise VmError(f"{headers} needs {dname}, which apt cannot find")
                pkgs.append((dname, f))
        return {
            "series": series.name,
            "release": f"{abi}-amd64",
            "packages": [
                {"name": n, "version": f["Version"], "arch": f.get("Architecture", "amd64")}
                for n, f in pkgs
            ],
        }
    raise VmError(
        f"no Debian {kernel} kernel with matching headers in apt's lists "
        f"(looked for linux-image-<abi>-amd64 and linux-headers-<abi>-amd64)"
    )


# --------------------------------------------------------------------------
# fetch


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A fetched kernel: its release string and where its files are."""

    series: str
    release: str
    root: Path  # dpkg -x of image + headers + kbuild
    packages: list
    fetched: str

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def image_package(self) -> dict:
        return self.packages[0]


def _download(kernel: str, res: dict) -> None:
    series = _series(kernel)
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for p in res["packages"]:
        path = debs / _deb_name(p)
        if path.is_file():
            _say(f"{kernel}: have {path.name}")
            continue
        _say(f"{kernel}: downloading {p['name']} {p['version']}")
        r = _run(["apt-get", *_apt_options(series), "download", f"{p['name']}={p['version']}"], cwd=debs)
        if r.returncode != 0 or not path.is_file():
            raise VmError(f"{kernel}: apt-get download {p['name']}={p['version']} failed: {_last_line(r.stderr)}")


def _kernel_dir(kernel: str) -> Path:
    return cache_dir() / _series(kernel).name


def load_kernel(kernel: str) -> Kernel | None:
    """The fetched kernel of a series, or None if it is not (completely) fetched."""
    d = _kernel_dir(kernel)
    try:
        man = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    k = Kernel(man["series"], man["release"], d / "root", man["packages"], man.get("fetched", ""))
    return k if k.vmlinuz.is_file() else None


def _deb_name(p: dict) -> str:
    # apt-get download spells an epoch's colon as %3a in file names
    return f"{p['name']}_{p['version'].replace(':', '%3a')}_{p['arch']}.deb"


def fetch(kernel: str) -> Kernel:
    """Download and unpack one series' kernel, modules and matching headers (idempotent)."""
    _series(kernel)
    cache_dir().mkdir(parents=True, exist_ok=True)
    # one fetch per series at a time (parallel test runs, make test in two shells)
    with open(cache_dir() / f".fetch-{kernel}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _fetch_locked(kernel)


def _fetch_locked(kernel: str) -> Kernel:
    have = load_kernel(kernel)
    if have:
        _say(f"{kernel}: {have.release} already fetched in {have.root.parent}")
        return have
    t0 = time.monotonic()
    series = _series(kernel)
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if not shutil.which(tool):
            raise MissingDependency(f"{tool} not found: vm fetch needs Debian's apt and dpkg")
    _say(f"{kernel}: resolving packages")
    res = resolve(kernel)
    try:
        _download(kernel, res)
    except VmError as e:
        # Old lists name versions the mirror has replaced (404): refresh once, resolve again.
        _say(f"{e}; refreshing the package lists and retrying")
        _apt_update(series, force=True)
        res = resolve(kernel)
        _download(kernel, res)
    debs = cache_dir() / "debs"
    kdir = _kernel_dir(kernel)
    tmp = kdir / "root.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(kdir / "root", ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in res["packages"]:
        _say(f"{kernel}: unpacking {p['name']}")
        r = _run(["dpkg-deb", "-x", str(debs / _deb_name(p)), str(tmp)])
        if r.returncode != 0:
            raise VmError(f"{kernel}: dpkg-deb -x {p['name']} failed: {_last_line(r.stderr)}")
    # Debian's image packages leave modules.dep to depmod at install time;
    # the initramfs builder needs it to order the boot modules.
    rel = res["release"]
    if not shutil.which("depmod") and not os.path.exists("/usr/sbin/depmod"):
        raise MissingDependency("depmod not found: apt-get install kmod")
    r = _run([shutil.which("depmod") or "/usr/sbin/depmod", "-b", str(tmp), rel])
    if r.returncode != 0:
        raise VmError(f"{kernel}: depmod for {rel} failed: {_last_line(r.stderr)}")
    tmp.rename(kdir / "root")
    secs = time.monotonic() - t0
    man = dict(res, fetched=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), fetch_seconds=round(secs, 1))
    (kdir / "manifest.json").write_text(json.dumps(man, indent=1) + "\n")
    k = load_kernel(kernel)
    if not k:
        raise VmError(f"{kernel}: unpacked, but {kdir / 'root'} has no boot/vmlinuz-{res['release']}")
    _say(f"{kernel}: {k.release} fetched in {secs:.1f} s")
    return k


def available_kernels() -> dict[str, Kernel]:
    """The fetched kernels, by series name."""
    return {s: k for s in SERIES if (k := load_kernel(s))}


def can_boot(kernel: str | None = None) -> tuple[bool, str]:
    """Whether a guest can boot here (qemu and busybox present, the kernel fetched), and if not why."""
    if not shutil.which(QEMU):
        return False, f"{QEMU} not installed (bash scripts/setup.sh installs qemu-system-x86)"
    if not os.path.isfile(BUSYBOX):
        return False, f"{BUSYBOX} missing (apt-get install busybox-static)"
    if not os.path.isfile(GUEST_PYTHON):
        return False, f"{GUEST_PYTHON} missing (the guest runs the host's python3)"
    wanted = _kernels(kernel) if kernel else list(SERIES)
    missing = [k for k in wanted if not load_kernel(k)]
    if missing:
        return False, f"kernel(s) {', '.join(missing)} not fetched: run `vfstrace vm fetch --kernel all`"
    return True, "ok"


# --------------------------------------------------------------------------
# initramfs


def _mod_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def module_order(modules_dir: Path, wanted=BOOT_MODULES) -> list[str]:
    """Relative paths of ``wanted`` modules and their dependencies, dependencies first.

    Built-in modules (modules.builtin) are left out: 6.12 builds virtio in.
    """
    deps, paths = {}, {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        name = _mod_name(mod)
        paths[name] = mod
        deps[name] = [_mod_name(d) for d in rest.split()]
    builtin = set()
    bpath = modules_dir / "modules.builtin"
    if bpath.exists():
        builtin = {_mod_name(x) for x in bpath.read_text().split()}
    order: list[str] = []

    def visit(name, stack=()):
        if name in order or name in stack:
            return
        for d in deps.get(name, []):
            visit(d, stack + (name,))
        order.append(name)

    for w in wanted:
        if w in paths:
            visit(w)
        elif w not in builtin:
            raise VmError(f"module {w} is neither in {modules_dir}/modules.dep nor built in")
    return [paths[n] for n in order]


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        r = subprocess.run(["zstd", "-dc", str(path)], capture_output=True)
        if r.returncode != 0:
            raise VmError(f"zstd could not decompress {path}")
        return r.stdout
    return data


class _Cpio:
    """A newc cpio archive written in memory (device nodes need no mknod)."""

    def __init__(self):
        self.buf = bytearray()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        hdr = "070701" + "".join(
            f"{v:08x}"
            for v in (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        )
        self.ino += 1
        self.buf += hdr.encode() + name.encode() + b"\0"
        self.buf += b"\0" * (-len(self.buf) % 4)
        self.buf += data
        self.buf += b"\0" * (-len(self.buf) % 4)

    def dir(self, name):
        self._entry(name, 0o040755)

    def file(self, name, data, mode=0o644):
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name, target):
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name, major, minor):
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self.buf)


def _init_script() -> str:
    path = GUEST_DIR / "init.sh"
    try:
        return path.read_text()
    except OSError:
        raise VmError(f"guest init template {path} is missing") from None


def build_initramfs(k: Kernel) -> Path:
    """The kernel's initramfs (busybox, boot modules, init, guest runner), cached by content."""
    mods = module_order(k.modules)
    init = _init_script()
    runner = (GUEST_DIR / "guest_run.py").read_bytes()
    h = hashlib.sha256(init.encode() + runner + Path(BUSYBOX).read_bytes()[:4096])
    for m in mods:
        h.update(m.encode())
    out = k.root.parent / f"initramfs-{h.hexdigest()[:12]}.cpio.gz"
    if out.is_file():
        return out
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "newroot", "host", "upper"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    c.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    c.symlink("bin/sh", "busybox")
    names = []
    for m in mods:
        name = m.rsplit("/", 1)[-1]
        name = re.sub(r"\.(xz|zst|gz)$", "", name)
        c.file(f"lib/modules/{name}", _read_module(k.modules / m))
        names.append(name)
    c.file("modules.order", ("\n".join(names) + "\n").encode())
    c.file("init", init.encode(), 0o755)
    c.file("guest_run.py", runner, 0o644)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".initramfs-", suffix=".partial")
    with os.fdopen(fd, "wb") as f:
        f.write(gzip.compress(c.finish(), compresslevel=6))
    os.replace(tmp, out)  # atomic: a concurrent run sees the old image or the whole new one
    for old in k.root.parent.glob("initramfs-*.cpio.gz"):
        # images of older init scripts; spare recent ones another run may be booting
        if old != out and time.time() - old.stat().st_mtime > 3600:
            old.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------
# run


@dataclasses.dataclass
class VmResult:
    returncode: int
    stdout: str
    stderr: str
    console: str
    duration_s: float  # qemu start to qemu exit
    kernel_release: str  # `uname -r` as the guest reported it
    boot_s: float | None = None  # qemu start to the command starting
    out_dir: Path | None = None


# Host paths the guest mounts its own filesystems over (see tests/vm/init.sh).
GUEST_MOUNTS = ("/proc", "/sys", "/dev", "/run", GUEST_OUT)


def _hidden_in_guest(path: Path) -> str | None:
    """The guest mount that hides ``path`` from the guest, if any."""
    p = str(Path(path).resolve())
    return next((m for m in GUEST_MOUNTS if p == m or p.startswith(m + "/")), None)


def _guest_links(k: Kernel) -> list[list[str]]:
    """Symlinks made inside the guest so BCC and modprobe find this kernel's files.

    The cache folder is visible inside through the 9p root, so a link to it
    is enough; the headers' own absolute links (build -> /usr/src/...) then
    resolve too.
    """
    links = [[str(k.modules), f"/lib/modules/{k.release}"]]
    for sub in ("usr/src", "usr/lib"):
        d = k.root / sub
        if d.is_dir():
            for e in sorted(d.iterdir()):
                if sub == "usr/src" or e.name.startswith("linux-kbuild-"):
                    links.append([str(e), f"/{sub}/{e.name}"])
    for e in sorted((k.root / "boot").iterdir()):
        links.append([str(e), f"/boot/{e.name}"])
    return links


def _qemu_path(p: Path) -> str:
    return str(p).replace(",", ",,")  # qemu's option syntax doubles commas


def qemu_argv(k: Kernel, initrd: Path, out_dir: Path, mem="2G", cpus=2) -> list[str]:
    return [
        QEMU,
        "-cpu", "max", "-accel", "tcg,thread=multi",
        "-smp", str(int(cpus)), "-m", str(mem),
        "-display", "none", "-monitor", "none", "-serial", "stdio",
        "-no-reboot", "-nic", "none",
        "-kernel", str(k.vmlinuz), "-initrd", str(initrd),
        # panic=-1: a panicking guest reboots at once, and -no-reboot turns
        # that into qemu exiting, so a panic never looks like a hang.
        # tsc=reliable: under TCG the emulated HPET drifts against the TSC
        # when the host is busy, the clocksource watchdog then marks the TSC
        # unstable and the guest falls back to the HPET, whose every read is
        # an emulated MMIO access that serialises the vCPUs (seen as other
        # tasks slowing while a widened task reads the clock in a loop).
        "-append", "console=ttyS0 quiet loglevel=4 panic=-1 tsc=reliable",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={_qemu_path(out_dir)},mount_tag=vmout,security_model=none,multidevs=remap",
    ]


def _guest_env(extra: dict | None) -> dict:
    std = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    path = os.environ.get("PATH", "")
    parts = []
    for p in (path + ":" + std).split(":"):
        if p and p not in parts:
            parts.append(p)
    env = {
        "PATH": ":".join(parts),
        "HOME": "/root",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "VFSTRACE_IN_VM": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("VFSTRACE_STRICT", "VIRTUAL_ENV"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


def run(kernel: str, argv, timeout: float = 900, out_dir=None, mem: str = "2G", cpus: int = 2,
        env: dict | None = None, cwd=None, stream=None) -> VmResult:
    """Boot ``kernel`` and run ``argv`` inside; return its exit code and output.

    ``stream`` gets each console line as it arrives (None: keep quiet).
    Raises VmTimeout after ``timeout`` seconds (qemu killed), VmError if the
    guest stops without reporting a result (a panic, a broken init).
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise VmError("no command given to run in the guest")
    ok, why = can_boot(kernel)
    if not ok:
        raise VmError(why)
    k = load_kernel(kernel)
    hidden = _hidden_in_guest(k.root)
    if hidden:
        raise VmError(
            f"the VM cache {k.root.parent.parent} is under {hidden}, which the guest covers with its own "
            f"filesystem, so its kernel files would be invisible inside: set VFSTRACE_VM_CACHE elsewhere"
        )
    initrd = build_initramfs(k)
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="vfstrace-vm-")
        out = Path(tmp.name)
    else:
        out = Path(out_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
    try:
        return _boot(k, initrd, out, argv, timeout, mem, cpus, env, cwd, stream)
    finally:
        if tmp:
            tmp.cleanup()


def _boot(k, initrd, out, argv, timeout, mem, cpus, env, cwd, stream) -> VmResult:
    meta = out / ".vm"
    shutil.rmtree(meta, ignore_errors=True)
    meta.mkdir()
    spec = {
        "argv": argv,
        "cwd": str(Path(cwd or os.getcwd()).resolve()),
        "env": _guest_env(env),
        "links": _guest_links(k),
        "out": GUEST_OUT,
        "started_mark": STARTED_MARK,
    }
    (meta / "spec.json").write_text(json.dumps(spec, indent=1))
    cmd = qemu_argv(k, initrd, out, mem, cpus)
    console: list[str] = []
    started = [None]
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        raise VmError(f"cannot start {QEMU}: {e}") from None

    def pump():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            console.append(line)
            if started[0] is None and STARTED_MARK in line:
                started[0] = time.monotonic() - t0
            if stream:
                stream(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        reader.join(5)
        raise VmTimeout(
            f"{k.series} guest ({k.release}) did not finish within {timeout:g} s; qemu killed "
            f"(last console line: {_last_line(chr(10).join(console))})",
            console="\n".join(console),
        ) from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    reader.join(5)
    duration = time.monotonic() - t0
    text = "\n".join(console)
    try:
        res = json.loads((meta / "result.json").read_text())
    except (OSError, ValueError):
        why = "kernel panic" if "Kernel panic" in text else "init or runner failed"
        raise VmError(
            f"{k.series} guest ({k.release}) stopped without a result ({why}; qemu exit {proc.returncode}); "
            f"last console line: {_last_line(text)}"
        ) from None

    def read(name):
        try:
            return (meta / name).read_text(errors="replace")
        except OSError:
            return ""

    return VmResult(
        returncode=int(res["returncode"]),
        stdout=read("stdout"),
        stderr=read("stderr"),
        console=text,
        duration_s=round(duration, 2),
        kernel_release=res.get("kernel_release", ""),
        boot_s=round(started[0], 2) if started[0] is not None else None,
        out_dir=out,
    )


# --------------------------------------------------------------------------
# command line


@click.group("vm")
def vm_group():
    """Boot Debian kernels 5.10, 6.1, 6.12 under qemu and run commands in them.

    \b
    vfstrace vm fetch --kernel all          download kernels + matching headers
    vfstrace vm list                        what is fetched
    vfstrace vm run --kernel 6.12 -- uname -r
    """


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
    """Show which kernels are fetched and where."""
    rows = []
    for s in SERIES:
        k = load_kernel(s)
        rows.append({
            "kernel": s,
            "release": k.release if k else None,
            "package": f"{k.image_package['name']} {k.image_package['version']}" if k else None,
            "fetched": k.fetched if k else None,
            "path": str(k.root.parent) if k else None,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        if r["release"]:
            click.echo(f"{r['kernel']:5} {r['release']:24} {r['package']}  ({r['path']})")
        else:
            click.echo(f"{r['kernel']:5} not fetched (vfstrace vm fetch --kernel {r['kernel']})")
    ok, why = can_boot()
    click.echo(f"can boot: {'yes' if ok else 'no: ' + why}")
    return 0


@vm_group.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--kernel", "-k", type=click.Choice(list(SERIES)), required=True)
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds before qemu is killed.")
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
@click.option("--dest", type=click.Path(file_okay=False), default=str(ROOT / "tests" / "fixtures" / "kallsyms"),
              show_default=True, help="Fixtures land in DEST/<kernel release>/.")
@click.option("--timeout", type=float, default=900, show_default=True)
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
                f"(tests/vm/capture_symbols.py under {GUEST_PYTHON})"
            )
        else:
            k = load_kernel(kernel) or fetch(kernel)
            res = run(kernel, [GUEST_PYTHON, str(script), f"{GUEST_OUT}/caps"], timeout=timeout,
                      out_dir=td, stream=stream)
            if res.returncode != 0:
                raise VmError(f"{kernel}: capture script exited {res.returncode}: {_last_line(res.stderr)}")
            how = (
                f"booted under qemu TCG (2 vCPUs, 2 GiB, host root over 9p) by "
                f"`vfstrace vm capture-symbols --kernel {kernel}`, which ran tests/vm/capture_symbols.py "
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
