"""`vfstrace watch` and `vfstrace record`: trace a live kernel, flag suspects as they happen.

Lifecycle (every tier, through the Tracer interface of tracers/__init__.py):
choose the tier (vfstrace.doctor.choose_tier) -> build the tracer -> load it
(compile + attach; ``--dry-run`` stops here and says what attached) -> poll
in batches: each batch gets event ids, goes to the trace writer (``-o``) and
to the streaming correlator, and every suspect verdict (race, uncertain,
transient) is printed as it happens, with a status line on stderr every few
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
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import click
import numpy as np

from vfstrace.errors import PrivilegeError, VfstraceError
from vfstrace.events import Kind, kind_name

SUSPECT_VERDICTS = ("race", "uncertain", "transient")
STATUS_EVERY = 5.0
POLL_MS = 200


def _correlator():
    """The streaming correlator, when vfstrace.correlate is present."""
    try:
        from vfstrace.correlate import StreamingCorrelator
    except ImportError:
        return None
    return StreamingCorrelator()


class _Stop:
    """Turns SIGINT/SIGTERM into a flag the poll loop checks (never a traceback mid-write)."""

    def __init__(self):
        self.reason = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.reason = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def _start_workload(workload: str | None, cmd: tuple[str, ...], duration: float | None):
    if workload and cmd:
        raise VfstraceError("give either --workload or -- CMD, not both")
    if workload == "stress":
        argv = [sys.executable, "-m", "vfstrace.cli", "stress"]
        if duration:
            argv += ["-d", str(duration)]
    elif cmd:
        argv = list(cmd)
    else:
        return None, None
    try:
        # A session of its own: the terminal's Ctrl-C reaches vfstrace, which
        # then stops the workload with SIGTERM so it can clean up.
        return subprocess.Popen(argv, start_new_session=True), argv
    except OSError as e:
        raise VfstraceError(f"cannot start workload {argv[0]}: {e.strerror}") from None


def _stop_workload(proc, grace: float = 20.0) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def _fmt_verdict(v) -> str:
    dentry = int(v.get("dentry", 0) or 0)
    return (
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
    """One watch/record run; kept as an object so tests can drive it directly."""

    def __init__(self, tier="auto", pid=None, comm=None, path_prefix=None, duration=None, output=None,
                 as_json=False, quiet_verdicts=False, extra=None):
        from vfstrace.options import TraceOptions

        self.tier = tier
        self.options = TraceOptions(pid=pid, comm=comm, path_prefix=path_prefix, extra=dict(extra or {})).validate()
        self.duration = duration
        self.output = output
        self.as_json = as_json
        self.quiet_verdicts = quiet_verdicts
        self.kind_counts: dict[str, int] = {}
        self.verdict_counts: dict[str, int] = {}
        self.suspects: list[dict] = []
        self.events = 0
        self.next_id = 1
        self.lost_seen: dict[int, int] = {}
        self.tracer = None
        self.writer = None
        self.corr = None
        self.choice = None
        self.stop_reason = None
        self.workload_rc = None

    # -- setup -------------------------------------------------------------
    def prepare(self):
        if os.geteuid() != 0:
            raise PrivilegeError("tracing needs root (CAP_BPF and CAP_PERFMON or CAP_SYS_ADMIN): run as root")
        from tracers import make_tracer
        from vfstrace.kernel.doctor import choose_tier

        self.choice = choose_tier(self.tier)
        self.tracer = make_tracer(self.choice, self.options)
        return self.tracer

    def open_outputs(self, workload_argv):
        if self.output:
            from vfstrace.store import TraceWriter

            self.writer = TraceWriter(
                self.output,
                meta={
                    "tier": self.choice.tier,
                    "tier_reason": self.choice.reason,
                    "probes": self.tracer.attached(),
                    "workload": " ".join(workload_argv) if workload_argv else None,
                    "filters": {"pid": self.options.pid, "comm": self.options.comm, "path_prefix": self.options.path_prefix},
                    "headers": getattr(self.choice, "headers", None),
                    "headers_match": getattr(self.choice, "headers_match", None),
                },
            )
        self.corr = _correlator()

    # -- per batch ---------------------------------------------------------
    def handle(self, df) -> None:
        n = len(df)
        if n == 0:
            return
        df["event_id"] = np.arange(self.next_id, self.next_id + n, dtype=np.uint64)
        self.next_id += n
        self.events += n
        kinds, cnts = np.unique(df["kind"].values, return_counts=True)
        for k, c in zip(kinds, cnts):
            name = kind_name(k)
            self.kind_counts[name] = self.kind_counts.get(name, 0) + int(c)
        if self.writer is not None:
            self.writer.write(df)
        if self.corr is not None:
            self._verdicts(self.corr.feed(df))

    def _verdicts(self, vdf) -> None:
        if vdf is None or len(vdf) == 0:
            return
        for v in vdf.to_dict("records"):
            name = str(v.get("verdict"))
            self.verdict_counts[name] = self.verdict_counts.get(name, 0) + 1
            if name in SUSPECT_VERDICTS:
                self.suspects.append(v)
                if not self.quiet_verdicts:
                    click.echo(json.dumps({"type": "verdict", **_jsonable(v)}) if self.as_json else _fmt_verdict(v))

    def sync_lost(self) -> None:
        cur = self.tracer.lost()
        for cpu, n in cur.items():
            d = n - self.lost_seen.get(cpu, 0)
            if d > 0 and self.writer is not None:
                self.writer.add_lost(cpu, d)
        self.lost_seen = dict(cur)
        if self.lost_seen:
            self.kind_counts["lost"] = sum(self.lost_seen.values())

    # -- main loop ---------------------------------------------------------
    def run(self, workload=None, cmd=(), status_every=STATUS_EVERY, hard_stop=None):
        tracer = self.tracer
        tracer.load()
        proc, argv = _start_workload(workload, cmd, self.duration)
        self.open_outputs(argv)
        start = time.monotonic()
        last_status, last_events = start, 0
        limit = self.duration
        if proc is not None and limit:
            limit = limit + (hard_stop if hard_stop is not None else 60.0)  # the workload's own -d ends it first
        try:
            with _Stop() as stop:
                while True:
                    self.handle(tracer.poll(POLL_MS))
                    self.sync_lost()
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
                        rate = (self.events - last_events) / (now - last_status)
                        click.echo(
                            f"[{now - start:6.1f}s] {self.events} events ({rate:,.0f}/s), "
                            f"lost {sum(self.lost_seen.values())}, suspects {len(self.suspects)}, tier {tracer.tier}",
                            err=True,
                        )
                        last_status, last_events = now, self.events
                self.workload_rc = _stop_workload(proc)
                # What the kernel produced up to now, including the workload's last moments.
                for _ in range(50):
                    df = tracer.poll(0)
                    if not len(df):
                        break
                    self.handle(df)
                self.sync_lost()
        finally:
            self.finish(argv)
        return self.summary()

    def finish(self, argv=None) -> None:
        tracer = self.tracer
        counters = {}
        if tracer is not None:
            try:
                counters = tracer.counters()
            except Exception:  # noqa: BLE001 - counters are best effort at teardown
                counters = {}
            self.counters = counters
            tracer.close()
        if self.corr is not None:
            try:
                self._verdicts(self.corr.finish())
            finally:
                self.corr = None
        if self.writer is not None:
            self.writer.update_meta(
                lost_per_cpu=self.lost_seen,
                kernel_counters=counters,
                stop_reason=self.stop_reason,
                workload_exit=self.workload_rc,
                verdict_counts=self.verdict_counts,
            )
            self.writer.close()
            self.writer = None

    def summary(self) -> dict:
        return {
            "tier": self.choice.tier if self.choice else None,
            "events": self.events,
            "events_by_kind": dict(sorted(self.kind_counts.items())),
            "verdicts": dict(sorted(self.verdict_counts.items())),
            "suspects": len(self.suspects),
            "lost_per_cpu": {int(k): int(v) for k, v in self.lost_seen.items()},
            "lost_total": int(sum(self.lost_seen.values())),
            "kernel_counters": getattr(self, "counters", {}),
            "stop_reason": self.stop_reason,
            "workload_exit": self.workload_rc,
            "trace": str(self.output) if self.output else None,
            "correlator": self.corr is not None or bool(self.verdict_counts),
        }


def render_summary(s: dict) -> str:
    from tabulate import tabulate

    out = [f"tier: {s['tier']}   stopped: {s['stop_reason']}   events: {s['events']}"
           + (f"   trace: {s['trace']}" if s["trace"] else "")]
    out.append(tabulate(sorted(s["events_by_kind"].items()), headers=["event kind", "count"]))
    if s["verdicts"]:
        out.append(tabulate(sorted(s["verdicts"].items()), headers=["verdict", "count"]))
    else:
        out.append("verdicts: none" + ("" if s["correlator"] else " (no correlator available)"))
    lost = s["lost_per_cpu"]
    out.append(
        tabulate(sorted(lost.items()), headers=["cpu", "lost events"]) if lost else "lost events: 0"
    )
    if s["kernel_counters"]:
        out.append(tabulate(sorted(s["kernel_counters"].items()), headers=["kernel counter", "count"]))
    if s.get("workload_exit") not in (None, 0):
        out.append(f"workload exit status: {s['workload_exit']}")
    return "\n\n".join(out)


def _run(tier, pid, comm, path_prefix, duration, output, as_json, dry_run, ebpf, workload, cmd, stream_success):
    extra = {"stream_success": True} if stream_success else {}
    sess = Session(tier, pid, comm, path_prefix, duration, output, as_json, extra=extra)
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
    s = sess.run(workload=workload, cmd=cmd)
    click.echo(json.dumps({"type": "summary", **s}) if as_json else render_summary(s))
    return 0


_common = [
    click.option("--tier", type=click.Choice(["auto", "fentry", "kprobe", "tracepoint"]), default="auto", show_default=True,
                 help="Tracing tier; auto picks the best this kernel allows."),
    click.option("-p", "--pid", type=int, help="Only this process (tgid)."),
    click.option("-c", "--comm", help="Only tasks with this comm."),
    click.option("--path-prefix", help="Only path events under this prefix."),
    click.option("-d", "--duration", type=click.FloatRange(min=0.1), help="Stop after SECONDS."),
    click.option("--json", "as_json", is_flag=True, help="JSON lines for verdicts and a JSON summary."),
    click.option("--dry-run", is_flag=True, help="Compile and attach, say what attached, then stop."),
    click.option("--ebpf", is_flag=True, hidden=True, help="Print the final kernel program and exit."),
    click.option("--all-paths", "stream_success", is_flag=True,
                 help="Also stream successful path syscalls (tracepoint tier; a firehose)."),
]


def _with_common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


_EXAMPLES = "\b\nExamples:" + __doc__.split("EXAMPLES", 1)[1]


@click.command("watch", epilog=_EXAMPLES)
@_with_common
@click.option("-o", "--output", type=click.Path(), help="Also write the events to this trace directory.")
@click.option("--workload", type=click.Choice(["stress"]), help="Run `vfstrace stress` as the workload; stop when it ends.")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def watch_cmd(tier, pid, comm, path_prefix, duration, as_json, dry_run, ebpf, stream_success, output, workload, cmd):
    """Watch path lookups and dentry pruning live; print suspects as they happen.

    \b
    Runs until Ctrl-C, SIGTERM, -d SECONDS, or the workload (--workload
    stress, or -- CMD ARGS...) exits; then detaches every probe, closes the
    trace (-o) and prints a summary of events, verdicts and lost events.
    """
    return _run(tier, pid, comm, path_prefix, duration, output, as_json, dry_run, ebpf, workload, cmd, stream_success)


@click.command("record", epilog=_EXAMPLES)
@_with_common
@click.option("-o", "--output", type=click.Path(), required=True, help="Trace directory to write.")
@click.option("--workload", type=click.Choice(["stress"]), help="Run `vfstrace stress` as the workload.")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def record_cmd(tier, pid, comm, path_prefix, duration, as_json, dry_run, ebpf, stream_success, output, workload, cmd):
    """Record a trace while a command runs (or for -d SECONDS); stop when it exits.

    \b
    vfstrace record -o cp.trace -- cp -a SRC DST
    vfstrace record -o idle.trace -d 10
    """
    return _run(tier, pid, comm, path_prefix, duration, output, as_json, dry_run, ebpf, workload, cmd, stream_success)
