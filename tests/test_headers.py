"""tracers/headers.py: the one place a BCC compile finds kernel headers."""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from tracers import headers
from vfstrace.errors import TierUnavailable


def _fake_kheaders(tmp_path: Path) -> Path:
    """A kheaders.tar.xz as CONFIG_IKHEADERS lays it out: include/ with the generated config."""
    tree = tmp_path / "tree"
    (tree / "include/linux").mkdir(parents=True)
    (tree / "include/generated").mkdir(parents=True)
    (tree / "include/linux/kconfig.h").write_text("/* kconfig */\n")
    (tree / "include/generated/autoconf.h").write_text("#define CONFIG_X86_64 1\n")
    archive = tmp_path / "kheaders.tar.xz"
    subprocess.run(["tar", "-cJf", str(archive), "-C", str(tree), "."], check=True)
    return archive


@pytest.fixture
def no_headers(monkeypatch, tmp_path):
    """A kernel release with no /lib/modules tree, a private cache, no BCC_KERNEL_SOURCE."""
    monkeypatch.setenv("VFSTRACE_CACHE", str(tmp_path / "cache"))
    # set, then deleted: monkeypatch then restores the variable's state at teardown
    # even though prepare() sets it directly (a deletion of an unset variable records nothing)
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "unset-by-the-fixture")
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    monkeypatch.setattr(headers, "_SET", {})
    real = os.uname()
    fake = os.uname_result((real.sysname, real.nodename, "0.0.0-vfstrace-test", real.version, real.machine))
    monkeypatch.setattr(headers.os, "uname", lambda: fake)
    monkeypatch.setattr(headers, "KHEADERS", tmp_path / "absent.tar.xz")
    return tmp_path


def test_kheaders_are_unpacked_once_into_a_private_cache(no_headers, monkeypatch):
    archive = _fake_kheaders(no_headers)
    monkeypatch.setattr(headers, "KHEADERS", archive)
    h = headers.prepare("a test program")
    assert h.exact and os.environ["BCC_KERNEL_SOURCE"] == h.source
    src = Path(h.source)
    assert headers.has_full_tree(src)
    assert (src.parent.stat().st_mode & 0o777) == 0o700
    before = src.stat().st_mtime_ns
    del os.environ["BCC_KERNEL_SOURCE"]
    assert headers.prepare("a test program").source == h.source
    assert src.stat().st_mtime_ns == before  # reused, not unpacked again
    assert not [p for p in src.parent.iterdir() if ".tmp" in p.name]


def test_no_matching_headers_is_one_clear_error_unless_a_fallback_is_safe(no_headers):
    with pytest.raises(TierUnavailable) as e:
        headers.prepare("the widening program")
    assert "the widening program needs kernel headers matching 0.0.0-vfstrace-test" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_fallback_set_for_one_program_is_not_taken_as_matching_by_the_next(no_headers, monkeypatch):
    """The tracepoint tier may compile against another kernel's headers; a
    kprobe program compiled later in the same process must still refuse them."""
    tree = no_headers / "other"
    (tree / "include/linux").mkdir(parents=True)
    (tree / "include/generated").mkdir(parents=True)
    (tree / "include/linux/kconfig.h").write_text("")
    (tree / "include/generated/autoconf.h").write_text("")
    monkeypatch.setattr(headers, "find_fallback_headers", lambda: str(tree))
    h = headers.prepare("the tracepoint program", fallback_ok=True)
    assert not h.exact and os.environ["BCC_KERNEL_SOURCE"] == str(tree)
    with pytest.raises(TierUnavailable, match="headers matching"):
        headers.prepare("the kprobe tier's program")


def test_a_corrupt_kheaders_archive_is_one_line(no_headers, monkeypatch):
    bad = no_headers / "kheaders.tar.xz"
    bad.write_bytes(b"not xz at all")
    monkeypatch.setattr(headers, "KHEADERS", bad)
    from vfstrace.errors import MissingDependency

    with pytest.raises(MissingDependency, match="could not unpack the kernel's own headers"):
        headers.prepare("a test program")


def test_every_program_compile_finds_headers_through_prepare():
    """Each function in tracers/ that compiles with BCC calls headers.prepare (or is given it)."""
    missing = []
    for path in (ROOT / "tracers").glob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef) or fn.name == "build_bpf":
                continue
            calls = {getattr(c.func, "attr", getattr(c.func, "id", "")) for c in ast.walk(fn) if isinstance(c, ast.Call)}
            if ("build_bpf" in calls or "BPF" in calls) and not ({"prepare", "_headers_env", "_prepare_headers"} & calls):
                missing.append(f"{path.name}:{fn.name}")
    assert missing == []
