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

from vfstrace.vm.boot import VmResult, _guest_links, _hidden_in_guest, qemu_argv, run
from vfstrace.vm.initramfs import _Cpio, build_initramfs, module_order
from vfstrace.vm.kernels import (GUEST_OUT, QEMU, SERIES, TIMEOUT_EXIT, Kernel, VmError, VmTimeout, can_boot,
                                 cache_dir, fetch, load_kernel)
