"""`vfstrace export --perfetto`: a trace as Chrome trace-event JSON.

Perfetto's UI (ui.perfetto.dev) and chrome://tracing open this format, so a
race can be looked at on a zoomable per-thread timeline: each task is a
track (pid/tid from the trace), each walk or lookup a slice from its enter
to its return (B/E pairs, which nest the way the kernel's calls do), and
prune, unhash, iput, free and alloc instants on the task that did them.
Verdicts, when the correlator is present, are global instants named after
the verdict. Timestamps are microseconds from the first event.

The writer streams event by event, so memory stays flat however large the
trace; export is a viewing aid, so its speed was not tuned further.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import click
import numpy as np

from vfstrace.correlate import correlate
from vfstrace.report.analyze import _evidence_list
from vfstrace.errors import VfstraceError
from vfstrace.events import Kind, kind_name, op_name
from vfstrace.report.terminal import json_text
from vfstrace.store.files import open_private

_BEGIN = {int(Kind.WALK_ENTER): "walk", int(Kind.LOOKUP_ENTER): "lookup"}
_END = {int(Kind.WALK_RETURN): "walk", int(Kind.LOOKUP_RETURN): "lookup"}
VERDICT_PID = 0  # verdict and lost-event instants are global (scope "g")


def _ret(r: int) -> str:
    return str(r) if r >= 0 else f"-{errno.errorcode.get(-r, str(-r))}"


def trace_events(df, verdicts=None):
    """Yield Chrome trace-event dicts for ``df`` (sorted by timestamp, then event id)."""
    if not len(df):
        return
    order = np.lexsort((df["event_id"].to_numpy(), df["ts_ns"].to_numpy()))
    t0 = int(df["ts_ns"].to_numpy().min())
    cols = {c: df[c].to_numpy()[order] for c in df.columns}
    seen_threads = {}
    open_slices: dict[int, list[str]] = {}
    for i in range(len(order)):
        pid, tid = int(cols["pid"][i]), int(cols["tid"][i])
        comm = str(cols["comm"][i])
        if tid not in seen_threads or seen_threads[tid] != comm:
            seen_threads[tid] = comm
            yield {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": f"{comm} [{tid}]"}}
        k = int(cols["kind"][i])
        ts = (int(cols["ts_ns"][i]) - t0) / 1000.0
        name = str(cols["name"][i])
        args = {"event_id": int(cols["event_id"][i]), "cpu": int(cols["cpu"][i])}
        for c in ("dentry", "parent"):
            if int(cols[c][i]):
                args[c] = f"{int(cols[c][i]):#x}"
        for c in ("ino", "seq", "seq2", "flags"):
            if int(cols[c][i]):
                args[c] = int(cols[c][i])
        for c in ("name", "path", "path2"):
            if cols[c][i]:
                args[c] = str(cols[c][i])
        if int(cols["op"][i]):
            args["op"] = op_name(cols["op"][i])
        args["ret"] = _ret(int(cols["ret"][i]))
        if k in _BEGIN:
            label = f"{_BEGIN[k]} {name}" if name else _BEGIN[k]
            open_slices.setdefault(tid, []).append(_BEGIN[k])
            yield {"ph": "B", "name": label, "cat": "lookup", "ts": ts, "pid": pid, "tid": tid, "args": args}
        elif k in _END:
            stack = open_slices.get(tid)
            if stack and _END[k] in stack:
                # Close inner slices whose return was lost, then this one.
                while stack:
                    top = stack.pop()
                    yield {"ph": "E", "ts": ts, "pid": pid, "tid": tid,
                           "args": args if top == _END[k] else {"note": "return not recorded"}}
                    if top == _END[k]:
                        break
            else:
                # A return whose enter was not recorded: show it as an instant.
                yield {"ph": "i", "s": "t", "name": f"{kind_name(k)} (no enter)", "cat": "lookup", "ts": ts,
                       "pid": pid, "tid": tid, "args": args}
        elif k == int(Kind.LOST):
            yield {"ph": "i", "s": "g", "name": f"LOST {int(cols['ret'][i])} events on cpu{int(cols['cpu'][i])}",
                   "cat": "lost", "ts": ts, "pid": VERDICT_PID, "tid": 0, "args": args}
        else:
            label = kind_name(k)
            if int(cols["op"][i]):
                label += f" {op_name(cols['op'][i])}"
            if name:
                label += f" {name}"
            elif cols["path"][i]:
                label += f" {cols['path'][i]}"
            yield {"ph": "i", "s": "t", "name": label, "cat": kind_name(k), "ts": ts, "pid": pid, "tid": tid,
                   "args": args}
    # Leave no slice open: Perfetto draws unterminated B slices to the end.
    t_end = (int(df["ts_ns"].to_numpy().max()) - t0) / 1000.0
    for tid, stack in open_slices.items():
        for _ in stack:
            yield {"ph": "E", "ts": t_end, "pid": _pid_of(df, tid), "tid": tid, "args": {"note": "return not recorded"}}
    if verdicts is not None and len(verdicts):
        for r in verdicts.itertuples(index=False):
            yield {"ph": "i", "s": "g", "name": f"{r.verdict}: {getattr(r, 'path', '') or r.name}", "cat": "verdict",
                   "ts": (int(r.ts_ns) - t0) / 1000.0, "pid": VERDICT_PID, "tid": 0,
                   "args": {"event_id": int(r.event_id), "tid": int(r.tid), "comm": str(r.comm),
                            "dentry": f"{int(r.dentry):#x}", "evidence": _evidence_list(r.evidence),
                            "reason": str(r.reason)}}


def _pid_of(df, tid: int) -> int:
    m = df["tid"].to_numpy() == tid
    return int(df["pid"].to_numpy()[m][0]) if m.any() else tid


def write_perfetto(df, out, verdicts=None, meta: dict | None = None) -> int:
    """Write Chrome trace-event JSON to ``out``; returns the number of trace events written."""
    out = Path(out)
    meta = meta if meta is not None else dict(df.attrs.get("meta") or {})
    other = {k: meta.get(k) for k in ("tier", "kernel_release", "host", "workload", "start_time", "lost_total")}
    n = 0
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open_private(tmp, text=True) as f:  # 0600: the export holds traced paths
            f.write('{"displayTimeUnit": "ns", "otherData": ')
            f.write(json.dumps(other, default=str))
            f.write(', "traceEvents": [\n')
            for ev in trace_events(df, verdicts):
                if n:
                    f.write(",\n")
                f.write(json_text(ev))  # names a terminal would act on, escaped
                n += 1
            f.write("\n]}\n")
        tmp.replace(out)
    except OSError as e:
        raise VfstraceError(f"{out}: cannot write: {e.strerror}") from None
    return n


# --format name -> writer(df, out, verdicts, meta) returning the number of records written.
WRITERS = {"perfetto": write_perfetto}


@click.command("export")
@click.argument("trace", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=click.Choice(sorted(WRITERS)), default="perfetto", show_default=True,
              help="Output format: perfetto is Chrome/Perfetto trace-event JSON.")
# The flag the first release had; kept so scripts that use it still run.
@click.option("--perfetto", "fmt", flag_value="perfetto", hidden=True)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output .json file.")
@click.option("--no-verdicts", is_flag=True, help="Do not run the correlator to mark verdicts.")
def export(trace, fmt, output, no_verdicts):
    """Export a trace for Perfetto's UI (ui.perfetto.dev) or chrome://tracing.

    \b
    Example:
      vfstrace export run.vft --format perfetto -o run.json
    """
    from vfstrace.store import load

    df = load(trace)
    verdicts = None if no_verdicts else correlate(df)
    n = WRITERS[fmt](df, output, verdicts, df.attrs["meta"])
    click.echo(f"wrote {output}: {n} trace events from {len(df)} vfstrace events", err=True)
