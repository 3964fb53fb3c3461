"""Shared test helpers.

Live-kernel and VM tests call :func:`need` for what they require. Where it is
missing they skip with the reason printed; with VFSTRACE_STRICT=1 (set by CI)
the same condition fails the test instead, so CI cannot pass by skipping.
"""

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
STRICT = os.environ.get("VFSTRACE_STRICT") == "1"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def need(condition: bool, reason: str) -> None:
    """Skip (or, under VFSTRACE_STRICT=1, fail) unless ``condition`` holds."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"VFSTRACE_STRICT=1 and this test cannot run: {reason}")
    pytest.skip(reason)


def is_root() -> bool:
    return os.geteuid() == 0


def need_tracing() -> None:
    """Root, tracefs and bcc: what the live tracepoint tests need."""
    need(is_root(), "needs root for BPF")
    try:
        from tracers.tracepoint import tracefs

        tracefs()
        import bcc  # noqa: F401
    except Exception as e:  # noqa: BLE001 (any failure here means: cannot trace)
        need(False, f"needs tracefs and bcc: {e}")


@pytest.fixture
def fixtures_dir():
    return FIXTURES


def need_kernel_without_kprobes(what: str) -> None:
    """These tests are about a kernel without kprobes (this host's 6.18).

    On a kernel that has them the behaviour under test does not apply, so
    this is a plain skip with its reason, not a need(): strict mode must not
    fail a test that is not meant for the running kernel.
    """
    need_tracing()
    if os.path.isdir("/sys/bus/event_source/devices/kprobe"):
        pytest.skip(f"this kernel has kprobes: {what}")


def need_guest_with_statloop(kernel: str) -> None:
    """Root, a bootable ``kernel`` and the compiled lookup loop, built on the
    host (the guest sees the same cache read-only)."""
    from vfstrace import vm
    from vfstrace.workload import statloop

    need(is_root(), "booting guests with the host root shared needs root")
    ok, why = vm.can_boot(kernel)
    need(ok, why)
    statloop.build()


# --------------------------------------------------------------------------
# VM tests: last, their boots two at a time (tests/guests.py)


def _rank(item) -> int:
    if item.get_closest_marker("vm") is None:
        return 0 if item.get_closest_marker("live") is not None else 1
    return 2 if getattr(item.module, "GUEST_TIMED", False) else 3


def pytest_collection_modifyitems(config, items):
    """The host tests that trace this kernel first, then the other host
    tests, then the VM tests, those that time their guest first among them
    (a stable sort: each keeps its order). The kernel builds the VM tests
    need start at the first host test that traces nothing, at the lowest
    priority, and the pooled guests, which start together, at the first VM
    test: so neither shares the host with a test that times or traces it,
    and the guests run beside the timed guests at the lowest priority."""
    items.sort(key=_rank)


_started = set()


def _vm_items_by_module(session) -> dict:
    by_module: dict = {}
    for it in session.items:
        if it.get_closest_marker("vm") is not None:
            by_module.setdefault(it.module, []).append(it)
    return by_module


def pytest_runtest_setup(item):
    """At the first host test that traces nothing, start the builds the
    session's VM tests need (each module's ``guest_builds(items)``); at the
    first VM test, every pooled guest boot they will read (``guest_boots``)."""
    rank = _rank(item)
    stage = "builds" if rank == 1 else "boots" if rank >= 2 else None
    if stage is None or stage in _started:
        return
    import guests

    work = []
    for mod, its in _vm_items_by_module(item.session).items():
        fn = getattr(mod, "guest_" + stage, None)
        if fn is not None:
            work += fn(its)
    _started.add(stage)
    if stage == "builds":
        guests.prebuild(work)
    else:
        _started.add("builds")
        guests.start(work)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """A timed VM test boots its guest in its own thread: its time goes in
    the session's guest timeline too."""
    timed = item.get_closest_marker("vm") is not None and getattr(item.module, "GUEST_TIMED", False)
    t = time.monotonic()
    yield
    if timed:
        import guests

        guests.note(("timed", item.name), t, time.monotonic())


def pytest_sessionfinish(session, exitstatus):
    import guests

    guests.shutdown()


def pytest_terminal_summary(terminalreporter):
    """Where the VM tests' time went: every kernel build and guest boot,
    started/ended in seconds from the first, in start order."""
    if "guests" not in sys.modules:
        return
    rows = sys.modules["guests"].timeline()
    if rows:
        terminalreporter.section("guest builds and boots (seconds from the first)")
        terminalreporter.write_line(f"{'boot':<32} {'start':>7} {'end':>7} {'took':>8}")
        for r in rows:
            terminalreporter.write_line(r)
