"""`vfstrace selftest`: does this kernel re-check d_seq when a prune hits an RCU lookup?

A verdict a kernel developer can paste in a mail. On the running kernel it
runs the stress workload (a stat() loop, parallel `cp -a`, drop_caches
pressure) under the kprobe tier twice, each phase ``-d`` seconds: once as
is and once with the race window widened (tracers/widen.py holds the
workload's own RCU walks between finding a dentry and re-checking its
d_seq). Both phases are recorded and correlated (vfstrace/correlate/);
every lookup that overlapped a prune of the same dentry is either
``retried`` (the kernel saw d_seq change and retried in ref-walk: the 2011
fix at work) or ``race`` (trusted without a re-check: the bug).

* PASS: enough overlaps, every one retried (exit 0);
* FAIL: at least one ``race``, each cited by event id, dentry, name, tid (exit 1);
* INCONCLUSIVE: too few overlaps to say; it says how long to run (exit 2).

Before judging the kernel it judges the judge: the correlator must call a
simulated pre-patch trace FAIL and a fixed one clean, else a PASS would mean
nothing (``--kernel-only`` skips this). ``--from-trace`` judges a recorded or
simulated trace instead of the live kernel (no root needed).
"""

from __future__ import annotations

from vfstrace.selftest.judge import (EXIT, FAIL, INCONCLUSIVE, MIN_OVERLAPS, PASS, Phase, Result, detector_check,
                                     from_trace, judge_events, verdict_of, widening_factor)
from vfstrace.selftest.render import render_text
from vfstrace.workload.selftest_workers import MAX_STAT_RATE, STAT_OP, _stat_dir, stat_rate_for
