"""The `vfstrace selftest` command."""

from __future__ import annotations

import os

import click

from vfstrace.options import Duration
from vfstrace.selftest.judge import DEFAULT_SECONDS, MIN_OVERLAPS, from_trace
from vfstrace.selftest.live import run_live
from vfstrace.selftest.render import _emit


@click.command("selftest")
@click.option("--kernel-only", is_flag=True, help="Skip the correlator's own check on simulated kernels.")
@click.option("-d", "--duration", "seconds", type=Duration(0), default=DEFAULT_SECONDS, show_default=True,
              help="Seconds per phase (without and with widening).")
@click.option("--widen", "widen", default="200us", show_default=True,
              help="Hold each RCU lookup of the workload this long (1us..1ms).")
@click.option("--stat-rate", type=click.FloatRange(0), default=None,
              help="stat() calls per second of the workload's loop in both phases "
                   "(default: one per widening delay; 0: flat out).")
@click.option("--no-baseline", is_flag=True, help="Run only the widened phase.")
@click.option("--ring-pages", type=click.IntRange(1, 1 << 16), default=1024, show_default=True,
              help="Ring buffer size, pages per CPU (a power of two); larger rings lose fewer events in bursts.")
@click.option("--from-trace", "trace", type=click.Path(), help="Judge a recorded or simulated trace instead.")
@click.option("-o", "--output", type=click.Path(), help="Keep the recorded events as a trace (.vft dir or .jsonl).")
@click.option("--min-overlaps", type=click.IntRange(1), default=MIN_OVERLAPS, show_default=True,
              help="Overlaps needed before a clean run counts as PASS.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def selftest_cmd(kernel_only, seconds, widen, stat_rate, no_baseline, ring_pages, trace, output, min_overlaps, as_json):
    """Tell whether this kernel re-checks d_seq when a prune hits an RCU lookup.

    \b
    Runs a stat() loop, `cp -a` and drop_caches pressure under the kprobe
    tier, once as is and once with the race window widened, and prints:
    lookups, prunes, lookups that overlapped a prune of the same dentry,
    how many the kernel re-checked and retried (retried) or trusted without
    a re-check (race), and overlaps per minute side by side.

    \b
    Exit status: 0 PASS (overlaps seen, every one retried), 1 FAIL (a race;
    the racing lookups are cited), 2 INCONCLUSIVE (too few overlaps: it
    says how long to run), 4 no kprobe tier on this kernel.

    \b
    EXAMPLES
      vfstrace selftest                      # 30 s without + 30 s with widening
      vfstrace selftest -d 60 --widen 500us
      vfstrace selftest --from-trace buggy.jsonl   # judge a recorded/simulated trace
    """
    from tracers.widen import parse_delay

    if trace:
        res = from_trace(trace, min_overlaps)
    else:
        if os.geteuid() != 0:
            from vfstrace.errors import PrivilegeError

            raise PrivilegeError("selftest on the live kernel needs root (or judge a trace with --from-trace)")
        phases = ("widened",) if no_baseline else ("baseline", "widened")
        res = run_live(seconds, parse_delay(widen), kernel_only, output, min_overlaps, phases,
                       stat_rate=stat_rate, ring_pages=ring_pages)
    _emit(res, as_json)
    return res.exit_code
