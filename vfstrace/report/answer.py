"""The answer, first: one plain sentence saying what a run saw and what it means.

`watch`'s summary, `analyze` and `report` (text and HTML) all begin with
the sentence :func:`answer` builds, so a reader who stops after one line
still knows whether a lookup/prune race was seen, how many failed lookups
that rests on, and how much the tier could see: a kprobe/fentry verdict
rests on the walk's own dentry and d_seq, a tracepoint verdict only on
system call results around dentry-cache activity (a suspect, never a
proof). It is built from the verdict counts and the trace's tier alone, so
the three commands cannot disagree.
"""

from __future__ import annotations

# What a verdict from each tier rests on (the resolution the sentence cites).
TIER_RESOLUTION = {
    "fentry": "fentry tier: function-level evidence, each walk's dentry and d_seq",
    "kprobe": "kprobe tier: function-level evidence, each walk's dentry and d_seq",
    "tracepoint": "tracepoint tier: syscall-level evidence; `vfstrace doctor` says why no kprobes",
    "simulated": "simulated trace: its --truth file holds the ground truth",
    "simulated-kprobe": "simulated kprobe view: its --truth file holds the ground truth",
    "simulated-tracepoint": "simulated tracepoint view, syscall-level evidence: its --truth file holds the ground truth",
}


def resolution(tier: str | None) -> str:
    return TIER_RESOLUTION.get(str(tier or ""), f"tier {tier or 'unknown'}")


def tier_of(meta: dict) -> str | None:
    """The tier a trace's verdicts rest on; for `vfstrace simulate`, which tier's view it emitted."""
    tier = meta.get("tier")
    w = meta.get("workload")
    sim = w.get("simulate") if isinstance(w, dict) else None
    if tier == "simulated" and isinstance(sim, dict) and sim.get("view") in ("kprobe", "tracepoint"):
        return f"simulated-{sim['view']}"
    return tier


def shown(text) -> str:
    """A path or name from the trace, as the sentence shows it.

    The one place the sentence formats text that came from a trace: a file
    may be called anything, so control characters and quotes are escaped
    (the way Python's repr does) and the result is quoted.
    """
    return repr(str(text))


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


def answer(counts: dict | None, tier: str | None, *, lost: int = 0, first: dict | None = None,
           events: int | None = None) -> str:
    """One sentence: what was seen, what it means, and the tier's resolution.

    ``counts`` maps verdict -> number of judged lookups (None: verdicts were
    not computed); ``first`` maps a verdict to the path (or name) of its
    first suspect; ``lost`` is the number of events the kernel dropped.
    """
    res = resolution(tier)
    first = first or {}
    lost_note = f"; {_n(lost, 'kernel event')} lost" if lost else ""
    if counts is None:
        seen = f"{events:,} events recorded" if events is not None else "events recorded"
        return f"No verdicts computed: {seen}, no lookup judged (run without --no-verdicts for the answer){lost_note} ({res})."
    c = {k: int(v) for k, v in counts.items()}
    judged = sum(c.values())
    race, transient, uncertain, retried = (c.get(k, 0) for k in ("race", "transient", "uncertain", "retried"))
    unsure = f"; {_n(uncertain, 'more is', 'more are')} uncertain (events lost around them)" if uncertain else ""
    if race:
        where = f"; the first on {shown(first['race'])}" if first.get("race") else ""
        what = ("a lookup returned -ENOENT while its dentry was being pruned, with no d_seq re-check: "
                "the kernel trusted a dying dentry" if race == 1 else
                "lookups returned -ENOENT while their dentry was being pruned, with no d_seq re-check: "
                "the kernel trusted dying dentries")
        return f"{_n(race, 'lookup/prune race')} seen: {what}{where}{unsure}{lost_note} ({res})."
    if transient:
        where = f"; the first on {shown(first['transient'])}" if first.get("transient") else ""
        return (f"{_n(transient, 'possible lookup/prune race')} seen: "
                f"{'a path syscall' if transient == 1 else 'path syscalls'} failed with -ENOENT on a path that "
                f"worked just before and after, while dentries were being freed (a suspect, not proof){where}"
                f"{unsure}{lost_note} ({res}).")
    if uncertain:
        where = f"; the first on {shown(first['uncertain'])}" if first.get("uncertain") else ""
        return (f"No lookup/prune race proven, but {uncertain:,} of {_n(judged, 'failed lookup')} "
                f"{'is' if uncertain == 1 else 'are'} uncertain: kernel events were lost around "
                f"{'it' if uncertain == 1 else 'them'}{where}{lost_note} ({res}).")
    if not judged:
        return f"No lookup/prune race seen: no failed lookups to judge{lost_note} ({res})."
    if retried:
        how = (f"none trusted a dentry being pruned, and {retried:,} that met a prune "
               f"{'was' if retried == 1 else 'were'} sent back to ref-walk by the d_seq re-check, the fix at work")
    else:
        how = "none while their dentry was being pruned"
    return f"No lookup/prune race seen: {_n(judged, 'failed lookup')}, {how}{lost_note} ({res})."


def first_paths(rows) -> dict:
    """verdict -> path (or name) of its first row, from verdict records in the order given."""
    out: dict = {}
    for r in rows:
        out.setdefault(str(r.get("verdict")), str(r.get("path") or r.get("name") or ""))
    return out
