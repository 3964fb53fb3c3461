"""Kernel headers for BCC: the one place every program vfstrace compiles finds them.

BCC compiles C at run time and needs a kernel tree to include from. Where
that tree is depends on the kernel, not on the program: Debian's split
``linux-headers`` packages under /lib/modules/<release>/{build,source}, the
kernel's own ``/sys/kernel/kheaders.tar.xz`` (CONFIG_IKHEADERS: vfstrace's
own guest kernels, which have no headers package), or only some other
kernel's headers. Each tracer and the widening program used to decide this
on its own, and the widening program did not: it left kheaders to libbcc,
which unpacks them under /tmp each time and, when that fails (a memory
cgroup too small for tar and clang, a drop_caches pass evicting the
directories tar just made on an overlayfs /tmp), says only "Unable to find
kernel headers" and then fails to chdir into /lib/modules/<release>/build.

:func:`prepare` is the one function: it sets ``BCC_KERNEL_SOURCE`` where
libbcc would not find a usable tree by itself, unpacks kheaders once per
kernel into a private cache (0700) reused by every later compile of that
boot, and refuses headers of another kernel unless the caller says they
are safe for its program (``fallback_ok``: the tracepoint tier, whose
records are laid out from the format files, and verification-only loads).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vfstrace.errors import MissingDependency, TierUnavailable

log = logging.getLogger("vfstrace.tracers.headers")

KHEADERS = Path("/sys/kernel/kheaders.tar.xz")
# BCC_KERNEL_SOURCE values this process set, and whether each is the running
# kernel's own tree: a fallback set for the tracepoint tier must not pass
# for matching headers when a kprobe program compiles next in the process.
_SET: dict[str, bool] = {}


def cache_root() -> Path:
    """Where assembled and unpacked header trees live (VFSTRACE_CACHE or /var/cache/vfstrace)."""
    return Path(os.environ.get("VFSTRACE_CACHE", "/var/cache/vfstrace"))


def has_full_tree(d: Path) -> bool:
    """A tree libbcc accepts as BCC_KERNEL_SOURCE: sources and generated config in one place."""
    return (d / "include/linux/kconfig.h").is_file() and (d / "include/generated/autoconf.h").is_file()


def bcc_kernel_source(headers: str | None) -> str | None:
    """A directory libbcc accepts as BCC_KERNEL_SOURCE for ``headers``.

    Debian splits headers into linux-headers-<v>-common (sources) and
    -<arch> (generated config); /lib/modules/<v>/ links them as source and
    build. libbcc wants both in one tree, so such a pair becomes a symlink
    farm under <cache>/bcc-headers/<v> (built once). A kheaders archive is
    unpacked by :func:`unpack_kheaders`.
    """
    if not headers:
        return None
    d = Path(headers)
    if d.name.endswith(".tar.xz"):
        return str(unpack_kheaders(d))
    if has_full_tree(d):
        return str(d)
    build, source = d, None
    if (d / "build").is_dir() and (d / "source").is_dir():
        build, source = (d / "build").resolve(), (d / "source").resolve()
    elif d.name.startswith("linux-headers-"):
        common = d.parent / (d.name.rsplit("-", 1)[0] + "-common")
        if common.is_dir():
            source = common
        else:
            mk = d / "Makefile"
            if mk.is_file():  # Debian's -amd64 Makefile includes the -common one
                for line in mk.read_text(errors="replace").splitlines():
                    if line.startswith("include ") and "-common" in line:
                        source = Path(line.split()[1]).parent
    if source is None or not source.is_dir() or not build.is_dir():
        return None
    farm = cache_root() / "bcc-headers" / build.name
    if not has_full_tree(farm):
        tmp = farm.with_name(farm.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
        for src in (source, build):
            r = subprocess.run(["cp", "-rsf", f"{src}/.", f"{tmp}/"], capture_output=True, text=True)
            if r.returncode != 0 and not has_full_tree(tmp):
                raise MissingDependency(f"could not assemble kernel headers for BCC from {src}: {r.stderr.strip()[:200]}")
        shutil.rmtree(farm, ignore_errors=True)
        os.replace(tmp, farm)
    return str(farm) if has_full_tree(farm) else None


def unpack_kheaders(archive: Path = KHEADERS, release: str | None = None) -> Path:
    """The kernel's own headers (CONFIG_IKHEADERS) unpacked once, into a private directory.

    Keyed by release and the archive's size (a rebuilt kernel of the same
    release has another archive). Unpacked into a temporary sibling and
    renamed, so a reader never sees half a tree; 0700, like everything
    vfstrace caches as root.
    """
    release = release or os.uname().release
    try:
        size = archive.stat().st_size
    except OSError as e:
        raise MissingDependency(f"cannot read {archive}: {e.strerror}") from None
    dest = cache_root() / "kheaders" / f"{release}-{size}"
    if has_full_tree(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(dest.parent, 0o700)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    r = subprocess.run(["tar", "-xJf", str(archive), "-C", str(tmp)], capture_output=True, text=True)
    if r.returncode != 0 or not has_full_tree(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        why = (r.stderr.strip().splitlines() or ["no include/generated/autoconf.h in it"])[-1][:200]
        raise MissingDependency(f"could not unpack the kernel's own headers {archive} into {tmp}: {why}")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    log.debug("unpacked %s into %s", archive, dest)
    return dest


def find_fallback_headers() -> str | None:
    """Any installed kernel headers BCC can compile tracepoint programs with."""
    cands = sorted(Path("/lib/modules").glob("*/build"), reverse=True)
    cands += sorted(Path("/usr/src").glob("linux-headers-*"), reverse=True)
    for c in cands:
        if c.name.endswith("-common"):
            continue
        if has_full_tree(c.resolve()) or (c.resolve().is_dir() and "linux-headers-" in c.resolve().name):
            return str(c.resolve())
    return None


@dataclass
class Headers:
    """What :func:`prepare` settled on: the tree, whether it is this kernel's, and a notice when not."""

    source: str | None
    exact: bool
    notice: str | None = None


def prepare(program: str, *, fallback_ok: bool = False, choice=None, why_fallback: str = "") -> Headers:
    """Make the next BCC compile of ``program`` find kernel headers; one clear error when none will do.

    Order: an explicit BCC_KERNEL_SOURCE (the user's, or a verification
    run's) is kept; the running kernel's /lib/modules/<release> tree, which
    libbcc finds itself; the kernel's own kheaders, unpacked by vfstrace;
    then, only when ``fallback_ok``, another kernel's headers (``choice``'s,
    as doctor found them, or any installed), with a notice saying so and
    ``why_fallback`` (why that is safe for this program).
    """
    release = os.uname().release
    mods = Path(f"/lib/modules/{release}")
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and (_SET.get(env, True) or fallback_ok):
        return Headers(env, exact=_SET.get(env, True))
    if env:
        del os.environ["BCC_KERNEL_SOURCE"]  # another kernel's, set here for a program that could take it
    if has_full_tree((mods / "build").resolve()) or ((mods / "build").is_dir() and (mods / "source").is_dir()):
        return Headers(str(mods / "build"), exact=True)  # libbcc finds these itself, split or not
    if KHEADERS.is_file():
        src = str(unpack_kheaders(KHEADERS, release))
        os.environ["BCC_KERNEL_SOURCE"] = src
        _SET[src] = True
        return Headers(src, exact=True)
    if not fallback_ok:
        raise TierUnavailable(
            f"{program} needs kernel headers matching {release} to compile (none under {mods}, no {KHEADERS}); "
            "see `vfstrace doctor`"
        )
    headers = (getattr(choice, "headers", None) if choice is not None else None) or find_fallback_headers()
    src = bcc_kernel_source(headers)
    if src is None:
        raise MissingDependency(
            f"no kernel headers BCC can compile {program} with (none for {release}): "
            "install linux-headers-amd64 (scripts/setup.sh does)"
        )
    os.environ["BCC_KERNEL_SOURCE"] = src
    _SET[src] = False
    notice = f"notice: no headers for {release}; compiling {program} against {src}" + (f" ({why_fallback})" if why_fallback else "")
    log.info(notice)
    return Headers(src, exact=False, notice=notice)
