"""Prometheus metrics of a watch (``watch --metrics``) or of a recorded trace (``analyze --metrics``).

Why: the race is rare, so ``watch`` is left running for days; a metrics
endpoint lets Prometheus alert on the first race and chart losses without
anyone reading the terminal (as ebpf_exporter and Inspektor Gadget expose
eBPF results). What is served, all from this module's private
CollectorRegistry (never prometheus_client's global one, so nothing else
in the process, and no second registry in tests, leaks in):

* ``vfstrace_failed_lookups_total{verdict,tier}``: judged failed lookups
  (a folded record counts its repeats, as the summary does);
* ``vfstrace_races_total{tier}`` and ``vfstrace_retried_overlaps_total{tier}``:
  the two verdicts an alert is written on, by themselves;
* ``vfstrace_events_total{kind}``: rows handed on, by event kind (the
  summary's ``events_by_kind``, LOST rows included);
* ``vfstrace_lost_events_total``: events the kernel counted as dropped, the
  recorder's one loss count (``Recorder.lost_total``);
* ``vfstrace_ring_fill_ratio{ring}``: how full each BPF ring buffer is at the
  scrape (producer minus consumer position over its size, two loads of the
  mapped pages: cheap). A perf buffer (kernels before 5.8) offers no such
  reading, so there it is not served;
* ``vfstrace_info{tier,kernel}``: what the numbers were measured on.

Every label has a bounded set of values: verdicts, tiers and event kinds
outside the known ones are served as ``other``; nothing from a trace (no
path, no comm) becomes a label. The counters are fed whole frames at a
time (a bincount of the kind column, a group-by of the verdict column),
never per event in Python.

The endpoint listens on 127.0.0.1 unless a host is given explicitly.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
import pandas as pd

from vfstrace.errors import VfstraceError
from vfstrace.events import Kind

log = logging.getLogger("vfstrace.metrics")

DEFAULT_HOST = "127.0.0.1"
VERDICTS = ("race", "uncertain", "transient", "retried", "explained", "absent")
TIERS = ("fentry", "kprobe", "tracepoint", "simulated")
OTHER = "other"
# Event kinds are a u8: a label per value 0..255, known ones by name, the rest "other".
_KIND_LABEL = np.array([Kind(k).name.lower() if k in Kind._value2member_map_ else OTHER for k in range(256)],
                       dtype=object)


def parse_address(spec: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port); host 127.0.0.1 when not given.

    A usage error (exit status 2) otherwise."""
    text = str(spec).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise VfstraceError(f"--metrics {text!r}: write an IPv6 host in brackets, e.g. [::1]:9464", exit_code=2)
    if not host:
        raise VfstraceError(f"--metrics {text!r}: the host before ':' is empty (give PORT or HOST:PORT)", exit_code=2)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise VfstraceError(f"--metrics {text!r}: the port must be a number from 1 to 65535", exit_code=2)
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _label(value: str, known: tuple[str, ...]) -> str:
    return value if value in known else OTHER


class Metrics:
    """The counters of one run, in a registry of their own; fed frame by frame."""

    def __init__(self, tier: str, kernel: str):
        # Imported only when serving: the CLI starts without it. No *_created series: a counter's
        # start time per label set doubles the page for what Prometheus's own reset detection gives.
        from prometheus_client import CollectorRegistry, Counter, Info, disable_created_metrics

        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self.tier = _label(str(tier), TIERS)
        reg = self.registry
        self.failed = Counter("vfstrace_failed_lookups", "Failed lookups judged, by verdict and tier.",
                              ["verdict", "tier"], registry=reg)
        self.races = Counter("vfstrace_races", "Failed lookups judged races (lookup/prune).", ["tier"], registry=reg)
        self.retried = Counter("vfstrace_retried_overlaps",
                               "Failed lookups that overlapped a prune and were retried.", ["tier"], registry=reg)
        self.events = Counter("vfstrace_events", "Rows handed on, by event kind (LOST rows included).", ["kind"],
                              registry=reg)
        self.lost = Counter("vfstrace_lost_events", "Events the kernel counted as dropped.", registry=reg)
        Info("vfstrace", "What the counters were measured on.", registry=reg).info(
            {"tier": self.tier, "kernel": str(kernel)})
        for v in VERDICTS:  # every series present from the first scrape, at 0
            self.failed.labels(v, self.tier)
        self.races.labels(self.tier)
        self.retried.labels(self.tier)
        self._lost_seen = 0
        self._rings = None
        self._rings_lock = threading.Lock()
        reg.register(_RingFill(self))

    def add_events(self, kinds) -> None:
        """Count a frame's rows by kind (its ``kind`` column, or that column's values)."""
        k = kinds["kind"] if isinstance(kinds, pd.DataFrame) else kinds
        k = np.asarray(k, dtype=np.uint8)
        if not len(k):
            return
        counts = np.bincount(k, minlength=256)
        for i in np.flatnonzero(counts):
            self.events.labels(_KIND_LABEL[i]).inc(int(counts[i]))

    def add_verdicts(self, vdf) -> None:
        """Count a frame of verdicts: judged lookups, a folded record standing for ``count`` (at least 1)."""
        if vdf is None or not len(vdf):
            return
        if "count" in vdf:
            n = np.maximum(1, pd.to_numeric(vdf["count"], errors="coerce").fillna(1).to_numpy().astype(np.int64))
        else:
            n = np.ones(len(vdf), dtype=np.int64)
        by = pd.Series(n).groupby(vdf["verdict"].astype(str).to_numpy(), sort=False).sum()
        for verdict, count in by.items():
            label = _label(verdict, VERDICTS)
            self.failed.labels(label, self.tier).inc(int(count))
            if label == "race":
                self.races.labels(self.tier).inc(int(count))
            elif label == "retried":
                self.retried.labels(self.tier).inc(int(count))

    def set_lost(self, total: int) -> None:
        """The loss count so far (cumulative, as the recorder keeps it)."""
        total = int(total)
        if total > self._lost_seen:
            self.lost.inc(total - self._lost_seen)
            self._lost_seen = total

    def watch_rings(self, tracer) -> None:
        """Serve ``tracer.ring_fill()`` at each scrape, until :meth:`forget_rings`."""
        with self._rings_lock:
            self._rings = tracer

    def forget_rings(self) -> None:
        """Before the tracer closes: no scrape reads its rings' pages after they are unmapped."""
        with self._rings_lock:
            self._rings = None

    def ring_fill(self) -> dict[str, float]:
        with self._rings_lock:
            if self._rings is None:
                return {}
            try:
                return dict(self._rings.ring_fill())
            except Exception as e:  # noqa: BLE001 - a scrape must not fail the watch
                log.debug("ring fill not read: %s", e)
                return {}


class _RingFill:
    """The ring fill gauge, read at scrape time (a custom collector: nothing to update between scrapes)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily("vfstrace_ring_fill_ratio", "BPF ring buffer fill at the scrape.", labels=["ring"])]

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily("vfstrace_ring_fill_ratio", "BPF ring buffer fill at the scrape.", labels=["ring"])
        for ring, fill in sorted(self.metrics.ring_fill().items()):
            g.add_metric([_label(ring, ("events", "paths"))], float(fill))
        yield g


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class Endpoint:
    """The HTTP endpoint: bound at construction (a port in use fails before any work), served by :meth:`start`."""

    def __init__(self, spec: str, registry):
        from prometheus_client.exposition import make_wsgi_app

        host, port = parse_address(spec)
        if not is_loopback(host):
            log.warning("metrics served on %s, not loopback: whoever can reach it can read them", host)
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as e:
            raise VfstraceError(f"--metrics {spec}: cannot resolve {host!r}: {e.strerror}") from None

        class Server(_Server):
            address_family = family

        try:
            self.httpd = make_server(host, port, make_wsgi_app(registry), Server, handler_class=_Quiet)
        except OSError as e:
            raise VfstraceError(f"--metrics {spec}: cannot listen on {host}:{port}: {e.strerror}") from None
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> "Endpoint":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vfstrace-metrics", daemon=True)
        self._thread.start()
        log.info("metrics on %s", self.url)
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self.httpd.server_close()


def observe_trace(path, metrics: Metrics) -> None:
    """A recorded trace's rows and verdicts into ``metrics``, part by part.

    The verdicts come from the streaming correlator, as a watch's do: through
    vfstrace.correlate.parts (the correlator fed part by part, with the
    trace's measured disorder) when the trace is a directory of parts whose
    ids rise, else the trace loaded whole in one feed.
    """
    from vfstrace.correlate.parts import COLUMNS
    from vfstrace.report.analyze import first_pass

    first = first_pass(path)
    if first is None:
        from vfstrace.correlate import StreamingCorrelator
        from vfstrace.store import load

        df = load(path)
        corr = StreamingCorrelator()
        metrics.add_events(df)
        metrics.add_verdicts(corr.feed(df))
        metrics.add_verdicts(corr.finish())
        meta = df.attrs.get("meta") or {}
    else:
        corr = first.correlator()
        for t in first.parts(COLUMNS):
            metrics.add_events(t.column("kind").to_numpy())
            metrics.add_verdicts(corr.feed(t))
        metrics.add_verdicts(corr.finish())
        meta = first.meta
    metrics.set_lost(int(meta.get("lost_total") or 0))


def open_endpoint(spec: str, tier: str, kernel: str) -> tuple[Metrics, Endpoint]:
    """The counters of one run and their endpoint, bound (not yet serving): a bad spec or a port in use
    is one error line before anything is compiled, attached or read."""
    m = Metrics(tier, kernel)
    return m, Endpoint(spec, m.registry)


def linger(endpoint: Endpoint, seconds: float | None) -> None:
    """Keep serving the final counts for ``seconds`` (None: until SIGINT/SIGTERM), so the scrapes after
    the run ended see them; either signal ends the wait early, with no traceback."""
    import signal

    done = threading.Event()
    old = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        log.info("serving the final counts on %s %s", endpoint.url,
                 f"for {seconds:g} s" if seconds is not None else "until Ctrl-C or SIGTERM")
        done.wait(seconds)
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def options(linger_help: str):
    """``--metrics [HOST:]PORT`` and ``--linger SECONDS``, as ``watch`` and ``analyze`` take them."""
    import click

    from vfstrace.options import Duration

    class Address(click.ParamType):
        name = "[HOST:]PORT"

        def convert(self, value, param, ctx):
            parse_address(value)  # refused here, before the command runs: exit status 2
            return str(value).strip()

    def deco(f):
        f = click.option("--linger", type=Duration(0.0, min_open=False), help=linger_help)(f)
        return click.option("--metrics", "metrics_spec", type=Address(),
                            help="Serve Prometheus metrics on HOST:PORT (host 127.0.0.1 unless given).")(f)

    return deco


def serve_trace(path, spec: str, seconds: float | None, analyse) -> None:
    """``analyze TRACE --metrics [HOST:]PORT``: a recorded trace's counts served as a watch's would be.

    Why a recorded trace is served at all: a trace recorded where nothing
    scraped (a guest, a host without Prometheus, a kernel only simulated)
    then reaches the same dashboards and alerts as the live watches, under
    the same metric names, its tier and kernel in ``vfstrace_info``; a
    recording of the race makes the race counter move without a kernel
    that races. The endpoint is bound first (a port in use is refused before
    the trace is read), ``analyse()`` prints the analysis, then the trace is
    read once more into the counters (its numeric columns and the rows the
    correlator needs: the streaming correlator, as a watch runs it), and
    only complete counts are served, for ``seconds`` or until a signal.
    """
    from vfstrace.store.read import read_meta

    meta = read_meta(path)
    m, endpoint = open_endpoint(spec, meta.get("tier") or "", meta.get("kernel_release") or "")
    try:
        analyse()
        observe_trace(path, m)
        linger(endpoint.start(), seconds)
    finally:
        endpoint.close()


def analyse_or_serve(path, spec: str | None, seconds: float | None, analyse) -> None:
    """``analyze``'s run: ``analyse()`` alone, or with ``--metrics`` through :func:`serve_trace`."""
    from vfstrace.errors import VfstraceError

    if seconds is not None and not spec:
        raise VfstraceError("--linger needs --metrics")
    if spec:
        serve_trace(path, spec, seconds, analyse)
    else:
        analyse()
