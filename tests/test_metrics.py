"""vfstrace/metrics.py: the address, the bounded label sets, and the counts a trace's frames give.

The counts are checked against `analyze`'s own (VerdictTally, TraceCounts):
a different code path over the same trace, so the metrics' group-bys and
bincounts must agree with the summary a user reads.
"""

import socket

import numpy as np
import pandas as pd
import pytest

from conftest import cli, free_port, scrape, write_parts
from vfstrace.errors import VfstraceError
from vfstrace.metrics import OTHER, TIERS, VERDICTS, Endpoint, Metrics, is_loopback, observe_trace, parse_address


@pytest.mark.parametrize("spec, want", [
    ("9464", ("127.0.0.1", 9464)),
    (" 9464 ", ("127.0.0.1", 9464)),
    ("localhost:1", ("localhost", 1)),
    ("[::1]:65535", ("::1", 65535)),
    ("10.0.0.7:9100", ("10.0.0.7", 9100)),
])
def test_address_defaults_to_loopback_and_takes_an_explicit_host(spec, want):
    assert parse_address(spec) == want


@pytest.mark.parametrize("spec", ["", "http", "0", "65536", ":9464", "::1:9464", "127.0.0.1:", "-1", "9464x"])
def test_bad_address_is_a_usage_error(spec):
    with pytest.raises(VfstraceError) as e:
        parse_address(spec)
    assert e.value.exit_code == 2 and "--metrics" in str(e.value)


def test_only_loopback_hosts_count_as_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.7", "example.org"]))


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "sim.vft"
    r = cli("simulate", "--semantics", "buggy", "--tier", "kprobe", "-d", "0.01", "-o", path)
    assert r.returncode == 0, r.stderr
    return path


def test_a_bad_metrics_option_gives_one_line():
    r = cli("watch", "--metrics", "nope")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == ["vfstrace: error: --metrics 'nope': the port must be a number from 1 to 65535"]


@pytest.mark.parametrize("argv", [["--metrics", "127.0.0.1:0"], ["--linger", "3"], ["--metrics", "9464", "--linger", "x"]])
def test_bad_metrics_options_of_analyze_are_refused(argv, small_trace):
    from conftest import invoke

    with pytest.raises(VfstraceError) as e:
        invoke(["analyze", small_trace, *argv])
    assert str(e.value).startswith(("--metrics", "--linger"))


def test_port_in_use_is_refused_before_the_analysis(small_trace):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = cli("analyze", small_trace, "--metrics", s.getsockname()[1], "--linger", "0")
    assert r.returncode == 1 and r.stdout == ""  # nothing analysed, nothing printed
    assert r.stderr.splitlines() == [r.stderr.strip()] and "cannot listen on 127.0.0.1:" in r.stderr


def _samples(m: Metrics) -> list:
    return [s for fam in m.registry.collect() for s in fam.samples]


def test_label_sets_are_bounded_whatever_the_frames_hold():
    m = Metrics("no-such-tier", "6.1.0-test")
    m.add_events(np.array([1, 1, 2, 15, 16, 200, 0], dtype=np.uint8))
    m.add_verdicts(pd.DataFrame({
        "verdict": ["race", "race", "made-up", "explained", "retried"],
        "count": [3, 1, 1, 0, 2],  # a folded record stands for `count` lookups, at least 1
        "path": ["/a", "/b", "/c", "/d", "/e"], "comm": ["x", "y", "z", "w", "v"],
    }))
    labels = {}
    for s in _samples(m):
        for k, v in s.labels.items():
            labels.setdefault(k, set()).add(v)
    assert set(labels) == {"verdict", "tier", "kind", "kernel"}  # never a path or a comm
    assert labels["verdict"] <= set(VERDICTS) | {OTHER} and labels["tier"] == {OTHER}
    assert labels["kind"] == {"walk_enter", "walk_return", "lost", "recheck", OTHER}
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in _samples(m)}
    assert got[("vfstrace_failed_lookups_total", (("tier", OTHER), ("verdict", "race")))] == 4
    assert got[("vfstrace_failed_lookups_total", (("tier", OTHER), ("verdict", OTHER)))] == 1
    assert got[("vfstrace_races_total", (("tier", OTHER),))] == 4
    assert got[("vfstrace_retried_overlaps_total", (("tier", OTHER),))] == 2
    assert got[("vfstrace_events_total", (("kind", OTHER),))] == 2  # kinds 0 and 200
    assert TIERS == ("fentry", "kprobe", "tracepoint", "simulated")


def test_lost_follows_the_cumulative_count():
    m = Metrics("tracepoint", "k")
    for total in (5, 3, 7, 7):
        m.set_lost(total)
    assert [s.value for s in _samples(m) if s.name == "vfstrace_lost_events_total"] == [7]


class _Rings:
    """What a tracer's ring_fill() reads: real RingViews over positions a test sets."""

    def __init__(self, size=4096):
        from tracers.stream import RingView
        from vfstrace.events import BPF_EVENT_DTYPE

        self.cons, self.prod = np.zeros(1, "<u8"), np.zeros(1, "<u8")
        self.view = RingView(self.cons, self.prod, memoryview(bytearray(2 * size)), size, BPF_EVENT_DTYPE)

    def ring_fill(self):
        return {"events": self.view.fill(), "paths": 0.0}


def test_ring_fill_is_read_at_the_scrape_clamped_and_forgotten_before_close():
    m, rings = Metrics("tracepoint", "k"), _Rings()
    m.watch_rings(rings)
    rings.prod[0] = 1024
    fills = {s.labels["ring"]: s.value for s in _samples(m) if s.name == "vfstrace_ring_fill_ratio"}
    assert fills == {"events": 0.25, "paths": 0.0}
    rings.cons[0] = 2048  # a drain between the two loads: never negative
    assert [s.value for s in _samples(m) if s.labels.get("ring") == "events"] == [0.0]
    m.forget_rings()
    assert not [s for s in _samples(m) if s.name == "vfstrace_ring_fill_ratio"]


def test_endpoint_serves_the_private_registry_on_loopback():
    m = Metrics("tracepoint", "6.1.0-test")
    m.add_events(np.array([11, 11], dtype=np.uint8))
    port = free_port()
    ep = Endpoint(str(port), m.registry).start()
    try:
        assert ep.host == "127.0.0.1" and ep.url == f"http://127.0.0.1:{port}/metrics"
        got = scrape(ep.url)
    finally:
        ep.close()
    assert got[("vfstrace_events_total", (("kind", "path_syscall"),))] == 2
    assert got[("vfstrace_info", (("kernel", "6.1.0-test"), ("tier", "tracepoint")))] == 1
    assert not any(name.startswith(("python_", "process_")) for name, _ in got)  # not the global registry


@pytest.mark.parametrize("parts", [None, 5000])
def test_a_traces_metrics_are_its_analysis(small_trace, tmp_path, parts):
    """Loaded whole (one part) and part by part (the parts correlator): the counts analyze reports."""
    from vfstrace.report.analyze import analyze_parts
    from vfstrace.store import load

    path = small_trace
    if parts:
        df = load(small_trace)
        path = write_parts(tmp_path / "parts.vft", df.drop(columns=[]), parts, meta=df.attrs["meta"])
    s = analyze_parts(path)
    m = Metrics(s["trace"]["tier"], s["trace"]["kernel_release"])
    observe_trace(path, m)
    got = {(s_.name, tuple(sorted(s_.labels.items()))): s_.value for s_ in _samples(m)}
    verdicts = {dict(k[1])["verdict"]: v for k, v in got.items() if k[0] == "vfstrace_failed_lookups_total" and v}
    kinds = {dict(k[1])["kind"]: v for k, v in got.items() if k[0] == "vfstrace_events_total"}
    assert verdicts == s["verdicts"]["counts"] and s["verdicts"]["counts"].get("race", 0) > 0
    assert kinds == s["by_kind"]
    assert got[("vfstrace_races_total", (("tier", "simulated"),))] == s["verdicts"]["counts"]["race"]
