"""The guest's busybox initramfs: the kernel's boot modules and vfstrace's init."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from vfstrace.vm.kernels import BOOT_MODULES, BUSYBOX, GUEST_DIR, Kernel, VmError

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
