"""Shared test helpers.

Live-kernel and VM tests call :func:`need` for what they require. Where it is
missing they skip with the reason printed; with VFSTRACE_STRICT=1 (set by CI)
the same condition fails the test instead, so CI cannot pass by skipping.

A test runs the CLI one of two ways: :func:`cli` in a subprocess
(``VFSTRACE`` is its argv, to put before a command in any argv a test builds)
or :func:`invoke` in-process over click's CliRunner. Test modules import
these as ``from conftest import ...``: pytest puts tests/ on sys.path when it
loads this file (rootdir conftest, default "prepend" import mode), whatever the
working directory.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
STRICT = os.environ.get("VFSTRACE_STRICT") == "1"

# The CLI as the venv's interpreter runs it from this checkout: the same with or
# without the console script installed (`make setup` installs .venv/bin/vfstrace).
VFSTRACE = [sys.executable, "-m", "vfstrace.cli"]

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cli(*args, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """``vfstrace ARGS`` in a subprocess: text output captured, run in the
    checkout (``cwd=`` overrides), ``env`` merged over os.environ; other
    keywords (``timeout=``, ``user=``...) go to subprocess.run."""
    kw.setdefault("cwd", ROOT)
    return subprocess.run([*VFSTRACE, *map(str, args)], capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env}, **kw)


def invoke(args, **kw):
    """``vfstrace ARGS`` in this process (click's CliRunner), its
    click.testing.Result; an exception other than SystemExit propagates
    (``catch_exceptions=True`` to keep it in the result instead)."""
    from click.testing import CliRunner

    from vfstrace.cli import cli as group

    kw.setdefault("catch_exceptions", False)
    return CliRunner().invoke(group, [str(a) for a in args], **kw)


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


def _vm_rank(item) -> int:
    if item.get_closest_marker("vm") is None:
        return 0
    return 1 if getattr(item.module, "GUEST_TIMED", False) else 2


def pytest_collection_modifyitems(config, items):
    """The VM tests after every host test, those that time their guest
    first among them (a stable sort: each keeps its order), so the pooled
    guests, which start together, never share the host with a test that times
    or traces it, and run beside the timed guests at the lowest priority."""
    items.sort(key=_vm_rank)


_guests_started = False


def pytest_runtest_setup(item):
    """At the first VM test, start every pooled guest boot the session's VM
    tests will read: each module's ``guest_boots(items)`` names its boots."""
    global _guests_started
    if _guests_started or item.get_closest_marker("vm") is None:
        return
    _guests_started = True
    import guests

    by_module: dict = {}
    for it in item.session.items:
        if it.get_closest_marker("vm") is not None:
            by_module.setdefault(it.module, []).append(it)
    boots = []
    for mod, its in by_module.items():
        fn = getattr(mod, "guest_boots", None)
        if fn is not None:
            boots += fn(its)
    guests.start(boots)


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
    """Where the VM tests' time went: every guest boot, started/ended in
    seconds from the first VM test, in start order."""
    if "guests" not in sys.modules:
        return
    rows = sys.modules["guests"].timeline()
    if rows:
        terminalreporter.section("guest boots (seconds from the first VM test)")
        terminalreporter.write_line(f"{'boot':<32} {'start':>7} {'end':>7} {'took':>8}")
        for r in rows:
            terminalreporter.write_line(r)


def write_parts(path: Path, df, rows: int, meta: dict | None = None) -> Path:
    """``df`` as a trace directory of ``rows``-event parts, laid out as TraceWriter lays them out.

    TraceWriter fsyncs each part and rewrites the whole listing after it, so
    thousands of tiny parts (the inputs that time the part-by-part readers)
    would take minutes to write with it: here it writes the trace once, and
    its one part is cut into parts of ``rows`` events, page checksums kept.
    """
    import json

    import pyarrow.parquet as pq

    from vfstrace import store

    with store.TraceWriter(path, meta=meta, chunk_events=max(len(df), 1), flush_seconds=1e9) as w:
        w.write(df)
    whole = path / "part-000000.parquet"
    t = pq.read_table(whole)
    m = json.loads((path / store.META_FILE).read_text())
    m["parts"] = []
    for k, i in enumerate(range(0, t.num_rows, rows)):
        part = t.slice(i, rows)
        name = f"part-{k:06d}.parquet"
        pq.write_table(part, path / name, write_page_checksum=True)
        ids = part.column("event_id").to_numpy()
        m["parts"].append({"file": name, "rows": part.num_rows, "first_event_id": int(ids.min()),
                           "last_event_id": int(ids.max())})
    (path / store.META_FILE).write_text(json.dumps(m))
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice), for a server a test starts on loopback."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str, timeout: float = 5.0) -> dict:
    """A Prometheus text page as {(metric name, ((label, value), ...)): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}
