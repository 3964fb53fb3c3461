"""`vfstrace watch` and `vfstrace record`: trace a live kernel, flag suspects as they happen.

Lifecycle (every tier, through the Tracer interface of tracers/__init__.py):
choose the tier (vfstrace.doctor.choose_tier) -> build the tracer -> load it
(compile + attach; ``--dry-run`` stops here and says what attached; an
unusable ``-o`` is refused before this, and the workload starts after it,
tied to our life by vfstrace.workload.child) -> poll
in batches through vfstrace.recorder.Recorder, the stream's one owner: it
numbers events, turns loss counters into LOST rows once, and hands each
batch to the trace writer (``-o``) and to the streaming correlator; every
suspect verdict (race, uncertain, transient,
retried) is printed as it happens, with a status line on stderr every few
seconds -> at the end (duration, Ctrl-C, SIGTERM, or the workload exiting)
the last events are drained, every probe is detached, the trace is closed
with its metadata (tier, probes, kernel, lost per CPU, workload) and a
summary table is printed. The trace writer flushes crash-safe chunks about
once a second, so even a killed recorder leaves the chunks it flushed.

EXAMPLES
  vfstrace watch -d 30 --workload stress     # the reproducer, watched live
  vfstrace watch -c cp --path-prefix /srv    # only cp's lookups under /srv
  vfstrace record -o cp.trace -- cp -a /usr/share/doc /var/tmp/doc-copy
  vfstrace watch --tier tracepoint --dry-run # what would attach here
  vfstrace watch -o run.vft --metrics 9464   # Prometheus metrics on 127.0.0.1:9464
"""

from __future__ import annotations

import json
import os
import time

import click
import numpy as np

from vfstrace.correlate import SUSPECT_VERDICTS, StreamingCorrelator
from vfstrace.correlate.batch import count_verdicts
from vfstrace.errors import PrivilegeError, VfstraceError
from vfstrace.metrics import options as metrics_options
from vfstrace.options import Duration
from vfstrace.report.answer import answer, first_paths
from vfstrace.report.terminal import term
from vfstrace.workload.child import Stop as _Stop
from vfstrace.workload.child import start_workload as _start_workload
from vfstrace.workload.child import stop_workload as _stop_workload
from vfstrace.workload.child import workload_argv as _workload_argv

STATUS_EVERY = 5.0
POLL_MS = 200


def _correlator():
    return StreamingCorrelator()


def check_output(path) -> None:
    """Refuse an unusable ``-o`` before anything is compiled, attached or started."""
    from pathlib import Path

    p = Path(path)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise VfstraceError(f"{p}: exists and is not a trace directory (choose another name)")
        if any(p.iterdir()):
            raise VfstraceError(f"{p}: already exists and is not empty (choose another name)")
        parent = p
    else:
        parent = p.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise VfstraceError(f"{p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VfstraceError(f"{p}: cannot write in {parent}")
    try:
        st = os.statvfs(parent)
    except OSError as e:
        raise VfstraceError(f"{p}: {e.strerror}") from None
    if st.f_flag & os.ST_RDONLY:
        raise VfstraceError(f"{p}: {parent} is on a read-only file system")


def _fmt_verdict(v) -> str:
    dentry = int(v.get("dentry", 0) or 0)
    return term(  # comm, path and reason carry traced names: escaped for the terminal
        f"{str(v.get('verdict', '')).upper():<10} pid={v.get('pid')} tid={v.get('tid')} comm={v.get('comm')} "
        f"path={v.get('path') or v.get('name') or '?'}" + (f" dentry=0x{dentry:x}" if dentry else "") + f"  {v.get('reason', '')}"
    )


def _jsonable(v: dict) -> dict:
    out = {}
    for k, x in v.items():
        if isinstance(x, np.generic):
            x = x.item()
        out[k] = x
    return out


class Session:
    """One watch/record run; kept as an object so tests can drive it directly.

    The event stream itself belongs to a vfstrace.recorder.Recorder; the
    session sets it up, prints verdicts and status, and owns the workload.
    """

    def __init__(self, tier="auto", pid=None, comm=None, path_prefix=None, duration=None, output=None,
                 as_json=False, quiet_verdicts=False, extra=None, ring_pages=256, shared=False, metrics=None):
        from vfstrace.options import TraceOptions

        self.tier = tier
        self.options = TraceOptions(pid=pid, comm=comm, path_prefix=path_prefix, ring_pages=ring_pages,
                                    extra=dict(extra or {})).validate()
        self.duration = duration
        self.output = output
        self.shared = bool(shared)  # --shared: the trace 0750/0640 instead of 0700/0600
        self.as_json = as_json
        self.quiet_verdicts = quiet_verdicts
        self.verdict_counts: dict[str, int] = {}
        self.suspects: list[dict] = []
        self.tracer = None
        self.writer = None
        self.recorder = None
        self.choice = None
        self.stop_reason = None
        self.workload_rc = None
        self.counters: dict = {}
        self.metrics_spec = metrics  # --metrics [HOST:]PORT (vfstrace/metrics.py)
        self.metrics = self.endpoint = None

    # -- setup -------------------------------------------------------------
    def prepare(self):
        """Check privilege and ``-o``, choose the tier, build (not load) the tracer."""
        if os.geteuid() != 0:
            raise PrivilegeError("tracing needs root (CAP_BPF and CAP_PERFMON or CAP_SYS_ADMIN): run as root")
        if self.output:
            check_output(self.output)
        from tracers import make_tracer
        from vfstrace.kernel.doctor import choose_tier

        self.choice = choose_tier(self.tier)
        self.tracer = make_tracer(self.choice, self.options)
        return self.tracer

    def open_outputs(self, workload_argv=None):
        """Create the trace (``-o``) and the recorder; before load(), so a trace
        that cannot be written stops the run before anything is attached."""
        if self.output and self.writer is None:
            from vfstrace.store import TraceWriter

            self.writer = TraceWriter(
                self.output,
                meta={
                    "tier": self.choice.tier,
                    "tier_reason": self.choice.reason,
                    "workload": " ".join(workload_argv) if workload_argv else None,
                    "filters": {"pid": self.options.pid, "comm": self.options.comm, "path_prefix": self.options.path_prefix},
                    "headers": self.choice.headers,
                    "headers_match": self.choice.headers_match,
                },
                shared=self.shared,
            )
        if self.metrics_spec and self.endpoint is None:
            from vfstrace.metrics import open_endpoint

            self.metrics, self.endpoint = open_endpoint(self.metrics_spec, self.choice.tier, os.uname().release)
            self.endpoint.start()
        from vfstrace.recorder import Recorder

        self.recorder = Recorder(self.tracer, writer=self.writer, correlator=_correlator(), on_verdicts=self._verdicts)

    def _verdicts(self, vdf) -> None:
        count_verdicts(self.verdict_counts, vdf)
        if self.metrics is not None:
            self.metrics.add_verdicts(vdf)
        sus = vdf["verdict"].astype(str).isin(SUSPECT_VERDICTS).to_numpy()
        if not sus.any():
            return
        for v in vdf.loc[sus].to_dict("records"):
            self.suspects.append(v)
            if not self.quiet_verdicts:
                click.echo(json.dumps({"type": "verdict", **_jsonable(v)}) if self.as_json else _fmt_verdict(v))

    # -- main loop ---------------------------------------------------------
    def run(self, workload=None, cmd=(), status_every=STATUS_EVERY, hard_stop=None):
        argv = _workload_argv(workload, cmd, self.duration)
        self.open_outputs(argv)
        tracer, rec = self.tracer, self.recorder
        proc = None
        # Signals are a flag from before load: a SIGTERM or Ctrl-C while BCC
        # compiles ends the run cleanly once loaded, and no workload starts.
        with _Stop() as stop:
            try:
                try:
                    tracer.load()
                except BaseException:
                    self._discard_empty_trace()
                    raise
                if self.writer is not None:
                    self.writer.update_meta(probes=tracer.attached())
                if self.metrics is not None:
                    self.metrics.watch_rings(tracer)
                proc = None if stop.reason else _start_workload(argv)
                start = time.monotonic()
                last_status, last_events = start, 0
                limit = self.duration
                if proc is not None and limit:
                    limit = limit + (hard_stop if hard_stop is not None else 60.0)  # the workload's own -d ends it first
                while True:
                    self._observe([rec.poll(POLL_MS)])
                    now = time.monotonic()
                    if stop.reason:
                        self.stop_reason = stop.reason
                        break
                    if limit and now - start >= limit:
                        self.stop_reason = "duration"
                        break
                    if proc is not None and proc.poll() is not None:
                        self.stop_reason = "workload exited"
                        break
                    if now - last_status >= status_every:
                        rate = (rec.events - last_events) / (now - last_status)
                        click.echo(
                            f"[{now - start:6.1f}s] {rec.events} events ({rate:,.0f}/s), "
                            f"lost {rec.lost_total}, suspects {len(self.suspects)}, tier {tracer.tier}",
                            err=True,
                        )
                        last_status, last_events = now, rec.events
                self.workload_rc = _stop_workload(proc)
                proc = None
                # What the kernel produced up to now, including the workload's last moments.
                self._observe(rec.drain())
            finally:
                if proc is not None:  # an error mid-run: the workload must not outlive us
                    self.workload_rc = _stop_workload(proc, grace=5.0)
                self.finish()
        return self.summary()

    def _observe(self, batches) -> None:
        """The batches' rows and the loss count so far into the metrics (--metrics)."""
        if self.metrics is not None:
            for df in batches:
                self.metrics.add_events(df)
            self.metrics.set_lost(self.recorder.lost_total)

    def close_metrics(self, linger_s=None, *, linger=False) -> None:
        """Serve the final counts (``linger``: for ``linger_s`` seconds, or until a signal), then stop serving."""
        if self.endpoint is None:
            return
        from vfstrace.metrics import linger as serve_on

        try:
            if linger:
                serve_on(self.endpoint, linger_s)
        finally:
            self.endpoint.close()
            self.endpoint = None

    def _discard_empty_trace(self) -> None:
        """Nothing was recorded (load failed): remove the trace directory we created."""
        if self.writer is None:
            return
        import shutil

        path, self.writer = self.writer.path, None
        shutil.rmtree(path, ignore_errors=True)

    def finish(self) -> None:
        tracer = self.tracer
        if tracer is not None:
            if self.metrics is not None:
                self.metrics.forget_rings()  # no scrape reads the rings once they are unmapped
            try:
                self.counters = tracer.counters()
            except Exception:  # noqa: BLE001 - counters are best effort at teardown
                self.counters = {}
            tracer.close()
        if self.recorder is not None:
            self.recorder.finish()
        if self.writer is not None:
            self.writer.update_meta(
                kernel_counters=self.counters,
                stop_reason=self.stop_reason,
                workload_exit=self.workload_rc,
                verdict_counts=self.verdict_counts,
            )
            self.writer.close()
            self.writer = None

    def answer(self) -> str:
        """The summary's first line (vfstrace/report/answer.py): what the verdicts so far mean."""
        s = self.summary()
        return answer(s["verdicts"], s["tier"], lost=s["lost_total"], first=first_paths(self.suspects))

    def summary(self) -> dict:
        rec = self.recorder
        lost = dict(rec.lost_seen) if rec else {}
        return {
            "tier": self.choice.tier if self.choice else None,
            "events": rec.events if rec else 0,
            "events_by_kind": dict(sorted(rec.kind_counts.items())) if rec else {},
            "verdicts": dict(sorted(self.verdict_counts.items())),
            "suspects": len(self.suspects),
            "lost_per_cpu": {int(k): int(v) for k, v in lost.items()},
            "lost_total": int(sum(lost.values())),
            "kernel_counters": self.counters,
            "stop_reason": self.stop_reason,
            "workload_exit": self.workload_rc,
            "trace": str(self.output) if self.output else None,
        }


def render_summary(s: dict) -> str:
    from tabulate import tabulate

    out = [s["answer"], f"tier: {s['tier']}   stopped: {s['stop_reason']}   events: {s['events']}"
           + (f"   trace: {s['trace']}" if s["trace"] else "")]
    out.append(tabulate(sorted(s["events_by_kind"].items()), headers=["event kind", "count"]))
    if s["verdicts"]:
        out.append(tabulate(sorted(s["verdicts"].items()), headers=["verdict", "count"]))
    else:
        out.append("verdicts: none (no failed lookup to judge)")
    lost = s["lost_per_cpu"]
    out.append(
        tabulate(sorted(lost.items()), headers=["cpu", "lost events"]) if lost else "lost events: 0"
    )
    if s["kernel_counters"]:
        out.append(tabulate(sorted(s["kernel_counters"].items()), headers=["kernel counter", "count"]))
    if s.get("workload_exit") not in (None, 0):
        out.append(f"workload exit status: {s['workload_exit']}")
    return "\n\n".join(out)


def _run(tier, pid, comm, path_prefix, duration, output, as_json, dry_run, ebpf, workload, cmd, stream_success,
         ring_pages=256, shared=False, dentry_allocs=False, creators=True, metrics_spec=None, linger=None):
    extra = {"stream_success": True} if stream_success else {}
    if not creators:
        extra["creators"] = False
    if dentry_allocs:
        extra["dentry_allocs"] = True
    sess = Session(tier, pid, comm, path_prefix, duration, output, as_json, extra=extra, ring_pages=ring_pages,
                   shared=shared, metrics=None if (dry_run or ebpf) else metrics_spec)
    if os.geteuid() != 0 and not ebpf:
        raise PrivilegeError("tracing needs root (CAP_BPF and CAP_PERFMON or CAP_SYS_ADMIN): run as root")
    tracer = sess.prepare()
    if ebpf:
        click.echo(tracer.program_text())
        return 0
    if dry_run:
        tracer.load()
        try:
            probes = tracer.attached()
            if as_json:
                click.echo(json.dumps({"tier": sess.choice.tier, "reason": sess.choice.reason, "attached": probes}))
            else:
                click.echo(f"tier {sess.choice.tier}: {sess.choice.reason}")
                click.echo(f"attached {len(probes)} probes:")
                for p in probes:
                    click.echo(f"  {p}")
        finally:
            tracer.close()
        return 0
    if not as_json:
        click.echo(f"vfstrace: tier {sess.choice.tier} ({sess.choice.reason.split(' — ')[0]}); Ctrl-C to stop", err=True)
    try:
        s = sess.run(workload=workload, cmd=cmd)
        s["answer"] = sess.answer()
        click.echo(json.dumps({"type": "summary", **s}) if as_json else render_summary(s))
        sess.close_metrics(linger, linger=linger is not None)
    finally:
        sess.close_metrics()
    return 0


_common = [
    click.option("--tier", type=click.Choice(["auto", "fentry", "kprobe", "tracepoint"]), default="auto", show_default=True,
                 help="Tracing tier; auto picks the best this kernel allows."),
    click.option("-p", "--pid", type=int, help="Only this process (tgid)."),
    click.option("-c", "--comm", help="Only tasks with this comm."),
    click.option("--path-prefix", help="Only path events under this prefix."),
    click.option("-d", "--duration", type=Duration(0.1, min_open=False), help="Stop after SECONDS."),
    click.option("--ring-pages", type=click.IntRange(1, 1 << 16), default=256, show_default=True,
                 help="Ring buffer size, pages per CPU (a power of two); larger rings lose fewer events in bursts."),
    click.option("--json", "as_json", is_flag=True, help="JSON lines for verdicts and a JSON summary."),
    click.option("--dry-run", is_flag=True, help="Compile and attach, say what attached, then stop."),
    click.option("--ebpf", is_flag=True, hidden=True, help="Print the final kernel program and exit."),
    click.option("--all-paths", "stream_success", is_flag=True,
                 help="Also stream successful path syscalls (tracepoint tier; a firehose)."),
    click.option("--dentry-allocs", is_flag=True,
                 help="Also record dentry-cache allocations (tracepoint tier; its probe runs on every slab "
                      "allocation of the machine, and no verdict of that tier needs them)."),
    click.option("--no-creator-probes", "creators", flag_value=False, default=True, hidden=True,
                 help="Tracepoint tier: leave the creating syscalls' probes off (bench/compare.py's baseline: "
                      "without them a name made after a failure reads as existence at it)."),
    click.option("--shared", is_flag=True,
                 help="Let the trace's group read it (0750/0640); by default only its owner can (0700/0600)."),
]


def _with_common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


_EXAMPLES = "\b\nExamples:" + __doc__.split("EXAMPLES", 1)[1]


@click.command("watch", epilog=_EXAMPLES)
@_with_common
@metrics_options("With --metrics: once the watch ends, keep serving its final counts this long (a signal ends it).")
@click.option("-o", "--output", type=click.Path(), help="Also write the events to this trace directory.")
@click.option("--workload", type=click.Choice(["stress"]), help="Run `vfstrace stress` as the workload; stop when it ends.")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def watch_cmd(tier, pid, comm, path_prefix, duration, ring_pages, as_json, dry_run, ebpf, stream_success, dentry_allocs,
              creators, shared, metrics_spec, linger, output, workload, cmd):
    """Watch path lookups and dentry pruning live; print suspects as they happen.

    \b
    Runs until Ctrl-C, SIGTERM, -d SECONDS, or the workload (--workload
    stress, or -- CMD ARGS...) exits; then detaches every probe, closes the
    trace (-o) and prints a summary of events, verdicts and lost events.
    --metrics [HOST:]PORT serves its counts to Prometheus meanwhile.
    """
    if linger is not None and not metrics_spec:
        raise VfstraceError("--linger needs --metrics")
    return _run(tier, pid, comm, path_prefix, duration, output, as_json, dry_run, ebpf, workload, cmd, stream_success,
                ring_pages, shared, dentry_allocs, creators, metrics_spec, linger)


@click.command("record", epilog=_EXAMPLES)
@_with_common
@click.option("-o", "--output", type=click.Path(), required=True, help="Trace directory to write.")
@click.option("--workload", type=click.Choice(["stress"]), help="Run `vfstrace stress` as the workload.")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def record_cmd(tier, pid, comm, path_prefix, duration, ring_pages, as_json, dry_run, ebpf, stream_success, dentry_allocs,
               creators, shared, output, workload, cmd):
    """Record a trace while a command runs (or for -d SECONDS); stop when it exits.

    \b
    vfstrace record -o cp.trace -- cp -a SRC DST
    vfstrace record -o idle.trace -d 10
    """
    return _run(tier, pid, comm, path_prefix, duration, output, as_json, dry_run, ebpf, workload, cmd, stream_success,
                ring_pages, shared, dentry_allocs, creators)
