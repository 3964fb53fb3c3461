"""Debian kernels for the VM harness: which package, fetched where, bootable or not."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from vfstrace.errors import MissingDependency, VfstraceError

log = logging.getLogger("vfstrace.vm")

ROOT = Path(__file__).resolve().parents[2]  # the checkout (the cache lives beside it)
GUEST_DIR = Path(__file__).resolve().parent / "guest"  # init template and in-guest helpers
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
    log.info(f"vm: {msg}")


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


def _built_names() -> tuple[str, ...]:
    from vfstrace.vm.build import BUILT  # kernels built from source (vfstrace vm build)

    return tuple(BUILT)


def boot_names() -> list[str]:
    """Every kernel a guest can be asked to boot: Debian's series, then vfstrace's own builds."""
    return [*SERIES, *_built_names()]


def _kernel_dir(kernel: str) -> Path:
    if kernel in _built_names():
        return cache_dir() / kernel
    return cache_dir() / _series(kernel).name


def load_kernel(kernel: str) -> Kernel | None:
    """The fetched (or built) kernel of that name, or None if it is not (completely) there.

    A built kernel's manifest has the same shape as a fetched one's: its
    "series" is the build's name and its one package the source package.
    """
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
    """The fetched and built kernels, by name."""
    return {s: k for s in boot_names() if (k := load_kernel(s))}


def can_boot(kernel: str | None = None) -> tuple[bool, str]:
    """Whether a guest can boot here (qemu and busybox present, the kernel fetched), and if not why."""
    if not shutil.which(QEMU):
        return False, f"{QEMU} not installed (bash scripts/setup.sh installs qemu-system-x86)"
    if not os.path.isfile(BUSYBOX):
        return False, f"{BUSYBOX} missing (apt-get install busybox-static)"
    if not os.path.isfile(GUEST_PYTHON):
        return False, f"{GUEST_PYTHON} missing (the guest runs the host's python3)"
    built = _built_names()
    if kernel in built:
        if not load_kernel(kernel):
            return False, f"kernel {kernel} not built: run `vfstrace vm build --kernel {kernel}`"
        return True, "ok"
    wanted = _kernels(kernel) if kernel else list(SERIES)
    missing = [k for k in wanted if not load_kernel(k)]
    if missing:
        return False, f"kernel(s) {', '.join(missing)} not fetched: run `vfstrace vm fetch --kernel all`"
    return True, "ok"
