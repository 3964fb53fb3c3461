"""The qemu harness boots each Debian kernel and runs a command in it faithfully.

One boot per kernel does every check (boots are slow under TCG): the guest
reports the fetched kernel's release, the command's exit code comes back,
the results share is writable, the kernel's own headers sit at
/lib/modules/$(uname -r)/build, and a kprobe can really be created.
The rest checks the pieces that need no VM.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, need
from vfstrace import vm

GUEST_CHECKS = r"""
rel=$(uname -r)
echo "release=$rel"
echo written > /vmout/probe.txt && echo "share=ok"
b=/lib/modules/$rel/build
[ -f "$b/include/generated/autoconf.h" ] && [ -f "$b/Makefile" ] && echo "headers=ok"
grep -q "^CONFIG_KPROBES=y" "$b/.config" && echo "config_kprobes=y"
# A kprobe on walk_component, created and removed through tracefs.
if echo 'p:vfstrace_harness walk_component' >> /sys/kernel/tracing/kprobe_events; then
    grep -q vfstrace_harness /sys/kernel/tracing/kprobe_events && echo "kprobe=ok"
    echo '-:vfstrace_harness' >> /sys/kernel/tracing/kprobe_events
fi
echo "cwd=$(pwd)"
echo "in_vm=$VFSTRACE_IN_VM"
echo "cpus=$(nproc)"
echo to-stderr >&2
exit 3
"""


@pytest.mark.vm
@pytest.mark.parametrize("kernel", list(vm.SERIES))
def test_guest_runs_command_on_fetched_kernel(kernel, tmp_path):
    ok, why = vm.can_boot(kernel)
    need(ok, why)
    fetched = vm.load_kernel(kernel)
    res = vm.run(kernel, ["sh", "-c", GUEST_CHECKS], timeout=600, out_dir=tmp_path, cwd=ROOT)
    facts = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    assert res.kernel_release == fetched.release, res.console[-2000:]
    assert facts.get("release") == fetched.release
    assert res.returncode == 3
    assert facts.get("share") == "ok" and (tmp_path / "probe.txt").read_text() == "written\n"
    assert facts.get("headers") == "ok", res.stdout
    assert facts.get("config_kprobes") == "y"
    assert facts.get("kprobe") == "ok", res.console[-2000:]
    assert facts.get("cwd") == str(ROOT)
    assert facts.get("in_vm") == "1"
    assert facts.get("cpus") == "2" and res.cpus == 2  # the race needs a second CPU
    assert res.stderr == "to-stderr\n"
    assert res.boot_s is not None and 0 < res.boot_s < res.duration_s
    print(f"{kernel} {res.kernel_release}: boot-to-command {res.boot_s:.1f} s, total {res.duration_s:.1f} s")


@pytest.mark.vm
def test_hung_guest_becomes_a_timeout(tmp_path):
    """A guest that never finishes is killed at the timeout, with one clear error."""
    kernel = "6.1"
    ok, why = vm.can_boot(kernel)
    need(ok, why)
    with pytest.raises(vm.VmTimeout) as ei:
        vm.run(kernel, ["sleep", "1000"], timeout=8, out_dir=tmp_path)
    assert ei.value.exit_code == vm.TIMEOUT_EXIT
    msg = str(ei.value)
    assert "did not finish within its limit, 8 quiet-guest s" in msg
    assert "\n" not in msg
    # where it hung, and the kernel's own account of it, kept beside the results
    assert "hung while booting" in msg or "its command started" in msg
    assert (tmp_path / ".vm" / "console.log").read_text() == ei.value.console + "\n"


# ---- pieces that need no VM ----------------------------------------------


def test_module_order_puts_dependencies_first_and_skips_builtins(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n"
        "kernel/net/9p/9pnet.ko.xz: kernel/fs/netfs/netfs.ko.xz\n"
        "kernel/fs/netfs/netfs.ko.xz:\n"
        "kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n"
        "kernel/fs/overlayfs/overlay.ko.xz:\n"
    )
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    order = vm.module_order(tmp_path)
    names = [p.rsplit("/", 1)[-1] for p in order]
    assert sorted(names) == sorted(["netfs.ko.xz", "9pnet.ko.xz", "9pnet_virtio.ko.xz", "9p.ko.xz", "overlay.ko.xz"])
    assert names.index("netfs.ko.xz") < names.index("9pnet.ko.xz") < names.index("9pnet_virtio.ko.xz")
    assert names.index("9pnet.ko.xz") < names.index("9p.ko.xz")


def test_module_order_names_a_missing_module(tmp_path):
    (tmp_path / "modules.dep").write_text("kernel/fs/overlayfs/overlay.ko:\n")
    with pytest.raises(vm.VmError, match="virtio_pci"):
        vm.module_order(tmp_path)


def test_cpio_archive_is_readable_by_cpio(tmp_path):
    need(shutil.which("cpio") is not None, "cpio not installed")
    c = vm._Cpio()
    c.dir("bin")
    c.file("bin/hello", b"hi\n", 0o755)
    c.symlink("bin/sh", "hello")
    c.chardev("console", 5, 1)
    img = tmp_path / "x.cpio"
    img.write_bytes(c.finish())
    listing = subprocess.run(["cpio", "-itv"], stdin=open(img, "rb"), capture_output=True, text=True, check=True)
    rows = {ln.split()[-1] if "->" not in ln else ln.split()[-3]: ln for ln in listing.stdout.splitlines()}
    assert set(rows) == {"bin", "bin/hello", "bin/sh", "console"}
    assert rows["bin/hello"].startswith("-rwxr-xr-x")
    assert rows["console"].startswith("crw-------") and "5," in rows["console"]
    assert rows["bin/sh"].startswith("lrwxrwxrwx")
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--no-absolute-filenames", "bin/hello"], stdin=open(img, "rb"),
                   cwd=out, capture_output=True, check=True)
    assert (out / "bin" / "hello").read_bytes() == b"hi\n"


def test_qemu_argv_escapes_commas_and_keeps_the_root_read_only(tmp_path):
    k = vm.Kernel("6.1", "6.1.0-1-amd64", tmp_path / "root", [{"name": "x", "version": "1", "arch": "amd64"}], "")
    argv = vm.qemu_argv(k, tmp_path / "initrd", tmp_path / "a,b", mem="1G", cpus=1)
    shares = [argv[i + 1] for i, a in enumerate(argv) if a == "-virtfs"]
    assert shares[0].startswith("local,path=/,") and "readonly=on" in shares[0]
    assert f"path={tmp_path}/a,,b," in shares[1] and "readonly" not in shares[1]
    assert "-no-reboot" in argv
    # The x86-64-v2 set (what the guest's wheels need) and nothing wider:
    # TCG emulates every vector instruction, AVX2 the dearest.
    model, *features = argv[argv.index("-cpu") + 1].split(",")
    assert model == "qemu64" and {"+sse4.2", "+popcnt", "+ssse3"} <= set(features)
    assert not any("avx" in f for f in features)
    assert "panic=-1" in argv[argv.index("-append") + 1]


def test_guest_links_expose_headers_modules_and_kbuild(tmp_path):
    root = tmp_path / "root"
    for d in ("lib/modules/6.1.0-1-amd64", "usr/src/linux-headers-6.1.0-1-amd64",
              "usr/src/linux-headers-6.1.0-1-common", "usr/lib/linux-kbuild-6.1", "usr/lib/other", "boot"):
        (root / d).mkdir(parents=True)
    (root / "boot" / "config-6.1.0-1-amd64").write_text("")
    k = vm.Kernel("6.1", "6.1.0-1-amd64", root, [], "")
    links = {link: target for target, link in vm._guest_links(k)}
    assert links["/lib/modules/6.1.0-1-amd64"] == str(root / "lib/modules/6.1.0-1-amd64")
    assert "/usr/src/linux-headers-6.1.0-1-common" in links and "/usr/lib/linux-kbuild-6.1" in links
    assert "/usr/lib/other" not in links
    assert "/boot/config-6.1.0-1-amd64" in links


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vfstrace.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_run_on_unfetched_kernel_is_one_line_error(tmp_path):
    need(shutil.which(vm.QEMU) is not None, f"{vm.QEMU} not installed")
    r = _cli("vm", "run", "--kernel", "6.1", "--", "true", env={"VFSTRACE_VM_CACHE": str(tmp_path)})
    assert r.returncode == vm.VmError.exit_code
    assert r.stderr.count("\n") == 1 and "not fetched" in r.stderr and "vm fetch" in r.stderr


def test_list_reports_an_empty_cache(tmp_path):
    r = _cli("vm", "list", "--json", env={"VFSTRACE_VM_CACHE": str(tmp_path)})
    assert r.returncode == 0
    rows = json.loads(r.stdout)
    # Debian's kernels, then the ones built from Debian's source: none there yet.
    assert [x["kernel"] for x in rows] == ["5.10", "6.1", "6.12", "6.1-control", "6.1-prepatch", "6.12-control",
                                           "6.12-prepatch", "5.10-control", "5.10-prepatch"]
    assert all(x["release"] is None for x in rows)


def test_unknown_kernel_is_refused():
    r = _cli("vm", "run", "--kernel", "4.19", "--", "true")
    assert r.returncode != 0 and "4.19" in r.stderr


@pytest.mark.vm
def test_cached_initramfs_holds_decompressed_modules():
    k = vm.load_kernel("6.12")
    need(k is not None, "kernel 6.12 not fetched: run `vfstrace vm fetch --kernel 6.12`")
    img = vm.build_initramfs(k)
    data = gzip.decompress(img.read_bytes())
    listing = subprocess.run(["cpio", "-it"], input=data, capture_output=True, check=True).stdout.decode()
    names = listing.split()
    assert "init" in names and "bin/busybox" in names and "guest_run.py" in names
    mods = [n for n in names if n.startswith("lib/modules/") and n.endswith(".ko")]
    assert {"lib/modules/9p.ko", "lib/modules/overlay.ko", "lib/modules/netfs.ko"} <= set(mods)
    assert not any(n.endswith((".xz", ".zst")) for n in names)


@pytest.mark.vm
def test_guest_panic_is_reported_not_hung(tmp_path):
    """A guest kernel that panics ends the run at once with one clear line."""
    kernel = "6.12"
    ok, why = vm.can_boot(kernel)
    need(ok, why)
    with pytest.raises(vm.VmError) as ei:
        vm.run(kernel, ["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 1000"], timeout=300, out_dir=tmp_path)
    assert not isinstance(ei.value, vm.VmTimeout)
    assert "stopped without a result (kernel panic" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_paths_the_guest_mounts_over_are_recognised(tmp_path):
    """The guest mounts its own /run, so a cache there would be invisible inside.

    /tmp is not covered (it stays on the overlay), so a clone under /tmp works.
    """
    assert vm._hidden_in_guest(Path("/run/x/6.1/root")) == "/run"
    assert vm._hidden_in_guest(Path("/runfoo/x")) is None
    assert vm._hidden_in_guest(Path("/tmp/x/6.1/root")) is None
    assert vm._hidden_in_guest(ROOT / ".cache" / "vm") is None


CANCEL_CHILD = r"""
import json, sys, threading, time
from pathlib import Path
from vfstrace.vm import build
tree = Path(sys.argv[1])
out = {}
def run():
    try:
        build._make(tree, ["all"], "test", tree / "build.log", jobs=2)
    except build.BuildError as e:
        out["error"] = str(e)
t = threading.Thread(target=run)
t.start()
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not ((tree / "a.o").exists() and (tree / "b.o").exists()):
    time.sleep(0.1)
out["started"] = (tree / "a.o").exists() and (tree / "b.o").exists()
t0 = time.monotonic()
build.cancel()
t.join(30)
out["ended"] = not t.is_alive()
out["seconds"] = time.monotonic() - t0
print(json.dumps(out), flush=True)
"""


def test_a_cancelled_build_stops_make_and_every_job_under_it(tmp_path):
    """A cancelled kernel build (vfstrace.vm.build.cancel(), from another
    thread) stops make and the jobs it started, all in one process
    group, are gone, the build fails with one line, and nothing it was
    writing is left to look up to date next time (make deleted the target).
    In a process of its own: cancel() stops every build of its process."""
    need(shutil.which("make") is not None, "make is not installed")
    tag = f"vt-cancel-{os.getpid()}"
    # Two jobs (-j2): each a shell writing its target, then sleeping in it.
    (tmp_path / "Makefile").write_text(
        "all: a.o b.o\n"
        f"%.o:\n\techo partial > $@; exec sh -c 'sleep 300; : {tag}'\n"
    )
    try:
        r = subprocess.run([sys.executable, "-c", CANCEL_CHILD, str(tmp_path)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["started"], "make did not start its two jobs"
        assert out["ended"], "the build did not end when cancelled"
        assert out["seconds"] < 25, out
        assert "cancelled" in out.get("error", ""), out
        left = subprocess.run(["pgrep", "-f", tag], capture_output=True, text=True).stdout.split()
        assert left == [], f"jobs of the cancelled make still run: {left}"
        assert not (tmp_path / "a.o").exists() and not (tmp_path / "b.o").exists(), \
            "make left a target it was writing"
    finally:
        subprocess.run(["pkill", "-f", tag], capture_output=True)
