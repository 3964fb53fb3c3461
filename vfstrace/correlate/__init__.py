"""The correlator: one verdict for every failed lookup, batch or streaming.

Given events in the schema of vfstrace/events.py, decide for each walk that
returned -ENOENT (or -ECHILD) whether it raced a prune of its dentry without
a d_seq re-check -- the bug fixed by "vfs: fix race in rcu lookup of pruned
dentry" -- and for each path syscall that returned -ENOENT what the
tracepoint tier can say about it. Two implementations, one set of rules:

* :func:`correlate` (batch, for ``analyze``/``report``): whole columns at once;
* :class:`StreamingCorrelator` (for ``watch``): ``feed()`` chunks as they
  arrive and get back the verdicts that can no longer change; memory holds
  only walks in flight, judged events still waiting for their window to
  close, and evidence young enough to matter (evicted by age).

Both call the same functions (vfstrace/correlate/walk.py,
vfstrace/correlate/syscall.py, vfstrace/correlate/existence.py) on the same
rows, so they agree exactly on any trace whose timestamps are out of order
by at most ``skew_ns``; the property tests check that over simulated traces
cut into random chunks.

Verdicts (column ``verdict``)
-----------------------------
Walk level (judged event: ``WALK_RETURN`` with -ENOENT or -ECHILD):
``race``      a prune (PRUNE/UNHASH/IPUT) of the same dentry -- same address,
              no D_FREE/D_ALLOC between, the dentry positive -- overlapped the
              walk, and the walk returned -ENOENT with no d_seq re-check;
``retried``   the walk returned -ECHILD, or a re-check of its own (one that
              ran inside the walk: SEQ_CHECK with IN_WALK, or LOOKUP_RETURN
              -ECHILD) failed during an overlapping prune: the fixed kernel
              doing its job; column ``overlap`` says whether a prune of its
              own dentry was seen (only those test the re-check);
``explained`` an unlink, rmdir or rename *away* removed that name (or that
              dentry, or the inode the walk found) within the window; a
              rename onto a name never explains;
``uncertain`` would be ``race`` or ``absent`` but events were lost (LOST) in
              the window, or the trace reports losses no LOST record
              places: never a guess at ``race``;
``absent``    a plain miss.
Syscall level (judged event: ``PATH_SYSCALL`` -ENOENT, lower resolution):
``transient``, ``explained``, ``uncertain``, ``absent``; see
vfstrace/correlate/syscall.py. docs/verdicts.md has the table of verdicts
and the evidence each requires; vfstrace/correlate/identity.py the rules
that tie evidence to a walk (its re-checks, the same dentry incarnation by
time, the same name by component).

Time windows (:class:`Windows`, all in ns) absorb clock skew between CPUs
(``skew_ns``), walks whose entry the kernel filtered out (``walk_ns``), syscall
exit tracepoints that fire after the namespace change (``explain_after_ns``)
and LOST records stamped when the drop was noticed (``loss_horizon_ns``).
"""

from __future__ import annotations

from vfstrace.correlate.batch import SUSPECT_VERDICTS, VERDICT_COLUMNS, VERDICTS, Windows, correlate, empty_verdicts
from vfstrace.correlate.streaming import StreamingCorrelator

__all__ = ["SUSPECT_VERDICTS", "VERDICT_COLUMNS", "VERDICTS", "StreamingCorrelator", "Windows", "correlate", "empty_verdicts"]
