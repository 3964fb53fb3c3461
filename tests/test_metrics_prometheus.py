"""A real Prometheus server scrapes vfstrace's metrics endpoints and is queried through its HTTP API.

Two endpoints, one Prometheus (Debian's ``prometheus``, started here on
127.0.0.1 with a generated config, scrape interval 1 s, storage in a
temporary directory):

* ``analyze TRACE --metrics`` serving a simulated buggy kernel's trace (the
  kprobe view, races in it): Prometheus's ``vfstrace_races_total`` must be
  the races `analyze --json` finds in that trace, and more than none;
* ``watch --metrics`` live on this kernel's tracepoint tier (marked live):
  events by kind, failed lookups by verdict and lost events, as Prometheus
  stored them from a scrape after the watch ended, must be its --json
  summary's.

Waits are bounded by what was measured: Prometheus's own start-up time and
the scrape interval, never a long fixed sleep.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import VFSTRACE, cli, free_port, need, need_tracing

SCRAPE_S = 1.0


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _wait(what: str, fn, timeout: float, step: float = 0.1):
    """fn() until it returns something true, at most ``timeout`` seconds; its value."""
    end = time.monotonic() + timeout
    while True:
        try:
            v = fn()
        except OSError:
            v = None
        if v:
            return v
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {timeout:.1f} s")
        time.sleep(step)


class Prometheus:
    def __init__(self, tmp, targets: dict[str, int]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "prometheus.yml"
        jobs = "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
                       for job, port in targets.items())
        cfg.write_text(f"global:\n  scrape_interval: {SCRAPE_S:g}s\n  scrape_timeout: {SCRAPE_S:g}s\n"
                       f"scrape_configs:\n{jobs}")
        self.log = open(tmp / "prometheus.log", "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait("prometheus ready", lambda: self.proc.poll() is None and _get(self.url + "/-/ready"), 60)
        self.startup_s = time.monotonic() - t0
        # A scrape is due within one interval of a target coming up; allow for a
        # host as slow as this start-up was, several intervals over.
        self.scrape_wait_s = 5 * SCRAPE_S + 3 * self.startup_s

    def query(self, expr: str) -> dict:
        """{frozenset(labels minus job/instance): value} of an instant query."""
        body = json.loads(_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        assert body["status"] == "success", body
        return {frozenset((k, v) for k, v in r["metric"].items() if k not in ("job", "instance", "__name__")):
                float(r["value"][1]) for r in body["data"]["result"]}

    def scraped_since(self, job: str, t: float) -> bool:
        """A scrape of ``job`` that began after ``t`` (wall clock) has been stored."""
        got = self.query(f'timestamp(vfstrace_info{{job="{job}"}})')
        return bool(got) and min(got.values()) > t

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def targets():
    return {"trace": free_port(), "watch": free_port()}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, targets):
    need(shutil.which("prometheus") is not None, "needs Debian's prometheus (scripts/setup.sh installs it)")
    p = Prometheus(tmp_path_factory.mktemp("prometheus"), targets)
    yield p
    p.stop()


def _served(argv, request):
    """``vfstrace ARGV`` in the background, SIGTERMed (its --linger ended) at the test's end."""
    proc = subprocess.Popen([*VFSTRACE, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)

    def stop():
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    request.addfinalizer(stop)
    return proc, stop


def test_prometheus_counts_the_races_of_a_simulated_buggy_kernel(tmp_path, prometheus, targets, request):
    trace = tmp_path / "buggy.vft"
    r = cli("simulate", "--semantics", "buggy", "--tier", "kprobe", "--seed", "3", "-o", trace)
    assert r.returncode == 0, r.stderr
    r = cli("analyze", trace, "--json")
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)["verdicts"]["counts"]
    assert counts.get("race", 0) > 0, counts

    proc, stop = _served(["analyze", trace, "--metrics", f"127.0.0.1:{targets['trace']}", "--linger", 600], request)
    t0 = time.monotonic()
    races = _wait("a scrape of the trace's endpoint", lambda: prometheus.query('vfstrace_races_total{job="trace"}'),
                  prometheus.scrape_wait_s + 30)  # + the analysis itself (the endpoint serves once it is done)
    print(f"prometheus up in {prometheus.startup_s:.2f} s; first races sample {time.monotonic() - t0:.2f} s "
          f"after analyze started; races {races}, analyze --json {counts['race']}")
    assert races == {frozenset({("tier", "simulated")}): counts["race"]}
    failed = prometheus.query('vfstrace_failed_lookups_total{job="trace"} > 0')
    assert {dict(k)["verdict"]: v for k, v in failed.items()} == counts
    info = prometheus.query('vfstrace_info{job="trace"}')
    assert [dict(k)["tier"] for k in info] == ["simulated"]
    stop()
    assert proc.returncode == 0, proc.stderr.read().decode()


def _summary(proc, timeout: float) -> dict:
    """The watch's --json summary line, read as it is printed (the watch then lingers)."""
    end, buf = time.monotonic() + timeout, b""
    fd = proc.stdout.fileno()
    while time.monotonic() < end:
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            buf += chunk
            for line in buf.splitlines():
                if line.startswith(b'{"type": "summary"') and buf.endswith(b"\n"):
                    return json.loads(line)
    pytest.fail(f"no summary from watch within {timeout:.0f} s: {proc.stderr.read1().decode()[-500:]}")


@pytest.mark.live
def test_prometheus_stores_a_live_watchs_counts(tmp_path, prometheus, targets, request):
    need_tracing()
    # Lookups that fail: -ENOENT under a directory that exists, to be judged.
    work = tmp_path / "w"
    work.mkdir()
    script = f"for i in 1 2 3 4 5 6 7 8; do stat {work}/missing-$i >/dev/null 2>&1; done; sleep 1"
    proc, stop = _served(["watch", "--tier", "tracepoint", "-d", 3, "--json", "--metrics",
                          f"127.0.0.1:{targets['watch']}", "--linger", 600, "--", "sh", "-c", script], request)
    t0 = time.monotonic()
    s = _summary(proc, 120)  # BPF build and load, then -d 3
    done_wall, took = time.time(), time.monotonic() - t0
    _wait("a scrape after the watch ended", lambda: prometheus.scraped_since("watch", done_wall),
          prometheus.scrape_wait_s)
    kinds = {dict(k)["kind"]: v for k, v in prometheus.query('vfstrace_events_total{job="watch"}').items()}
    failed = {dict(k)["verdict"]: v for k, v in
              prometheus.query('vfstrace_failed_lookups_total{job="watch", tier="tracepoint"} > 0').items()}
    lost = prometheus.query('vfstrace_lost_events_total{job="watch"}')
    print(f"watch summary after {took:.1f} s; events {sum(kinds.values()):.0f} ({len(kinds)} kinds), "
          f"failed lookups {failed}, lost {lost}")
    assert kinds == s["events_by_kind"] and s["events"] > 0
    assert failed == s["verdicts"] and sum(failed.values()) >= 8
    assert lost == {frozenset(): s["lost_total"]}
    stop()
    assert proc.returncode == 0, proc.stderr.read().decode()
