"""Runs inside a vfstrace guest: record the race functions under a pruning workload.

One boot per kernel does everything (TCG is slow): `vfstrace doctor --json`,
then `vfstrace record --tier kprobe` (and a shorter `--tier fentry` where the
kernel supports fentry) around `vfstrace stress` — parallel `cp -a` of a
tree, a stat() loop over its existing files, unlink/rename churn, and
`echo 2 > /proc/sys/vm/drop_caches` in a loop — on the overlay root (over
9p), whose dentries can be pruned (tmpfs ones are pinned and never are).

Each trace is loaded back and summarised (events per kind, failed walks,
SEQ_CHANGED, attach points, kernel counters, lost events, and the
correlator's verdicts when vfstrace.correlate is present) into
OUT/summary.json; a small slice of the trace (the -ECHILD/-ENOENT walks and
every prune-side event of the same dentries, a few thousand events) is saved
as OUT/<tier>-fixture.jsonl for the recorded-trace tests. The host-side test
(tests/test_kprobe_vm.py) makes the assertions.

usage: kprobe_check.py OUT [--kprobe-seconds N] [--fentry-seconds N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests/vm"))

from steps import run  # noqa: E402

VFSTRACE = [sys.executable, "-m", "vfstrace.cli"]
FIXTURE_EVENTS = 3000



def summarise(trace: Path) -> tuple[dict, object]:
    import numpy as np

    from vfstrace.events import ECHILD, ENOENT, Flag, Kind
    from vfstrace.store import load

    df = load(trace)
    meta = dict(df.attrs.get("meta") or {})
    kinds = {Kind(int(k)).name: int(c) for k, c in zip(*np.unique(df["kind"].values, return_counts=True))}
    walks = df[df["kind"] == int(Kind.WALK_RETURN)]
    prunes = df[df["kind"] == int(Kind.PRUNE)]
    s = {
        "events": int(len(df)),
        "by_kind": kinds,
        "walk_enoent": int((walks["ret"] == ENOENT).sum()),
        "walk_echild": int((walks["ret"] == ECHILD).sum()),
        "walk_echild_seq_changed": int(((walks["ret"] == ECHILD) & ((walks["flags"] & int(Flag.SEQ_CHANGED)) != 0)).sum()),
        "walk_echild_with_dentry": int(((walks["ret"] == ECHILD) & (walks["dentry"] != 0)).sum()),
        "walk_prune_inflight": int(((walks["flags"] & int(Flag.PRUNE_INFLIGHT)) != 0).sum()),
        "prune_with_dentry": int((prunes["dentry"] != 0).sum()),
        "prune_named": int((prunes["name"] != "").sum()),
        "seq_check_fail": int(((df["kind"] == int(Kind.SEQ_CHECK)) & (df["ret"] == ECHILD)).sum()),
        "meta": {k: meta.get(k) for k in ("tier", "probes", "kernel_counters", "lost_per_cpu", "verdict_counts",
                                          "workload_exit", "stop_reason")},
    }
    s["seq_sample"] = seq_sample_summary(walks)
    # ECHILD walks whose dentry has a PRUNE in the trace: the kernel's re-check caught a prune.
    echild = walks[(walks["ret"] == ECHILD) & (walks["dentry"] != 0)]
    s["walk_echild_pruned_dentry"] = int(echild["dentry"].isin(set(prunes["dentry"].tolist())).sum())
    try:
        from vfstrace.correlate import correlate
    except ImportError:
        s["verdicts"] = None
    else:
        v = correlate(df)
        col = "verdict" if "verdict" in getattr(v, "columns", ()) else None
        s["verdicts"] = {str(k): int(c) for k, c in v[col].value_counts().items()} if col else None
        # Each `retried` must rest on the kernel's own retry (a failed d_seq
        # re-check or an -ECHILD walk); how many also cite a prune of their
        # own dentry is reported.
        kind_of = dict(zip(df["event_id"].tolist(), df["kind"].tolist()))
        ret_of = dict(zip(df["event_id"].tolist(), df["ret"].tolist()))
        dentry_of = dict(zip(df["event_id"].tolist(), df["dentry"].tolist()))
        prune_kinds = {int(Kind.PRUNE), int(Kind.UNHASH), int(Kind.IPUT)}
        retry_kinds = {int(Kind.SEQ_CHECK), int(Kind.WALK_RETURN), int(Kind.LOOKUP_RETURN)}
        tied = cites_retry = 0
        retried = v[v["verdict"] == "retried"] if col else v.iloc[0:0]
        for d, ev in zip(retried["dentry"].tolist(), retried["evidence"].tolist()):
            ev = [int(e) for e in ev]
            if any(kind_of.get(e) in retry_kinds and ret_of.get(e) == ECHILD for e in ev):
                cites_retry += 1
            if d and any(kind_of.get(e) in prune_kinds and dentry_of.get(e) == d for e in ev):
                tied += 1
        s["retried_cites_kernel_retry"] = cites_retry
        s["retried_tied_to_prune"] = tied
    return s, df


def seq_sample_summary(walks) -> dict:
    """seq_sample.py's -ENOENT walks that found its dentry: how many, how many in RCU mode, the (seq, seq2) pairs."""
    from seq_sample import NAME, STATS

    from vfstrace.events import ENOENT, Flag

    w = walks[(walks["ret"] == ENOENT) & (walks["name"] == NAME) & (walks["dentry"] != 0)]
    rcu = w[(w["flags"] & int(Flag.RCU)) != 0]
    pairs = sorted({(int(a), int(b)) for a, b in zip(rcu["seq"].tolist(), rcu["seq2"].tolist())})
    return {"stats": STATS, "walks": int(len(w)), "rcu_walks": int(len(rcu)), "pairs": pairs[:20],
            "seq_changed": int(((w["flags"] & int(Flag.SEQ_CHANGED)) != 0).sum())}


def fixture_slice(df, window_ns: int = 2_000_000, limit: int = FIXTURE_EVENTS):
    """Every event within ``window_ns`` of the failed walks, -ECHILD ones first, capped.

    Whole time windows (not hand-picked rows) keep what the correlator needs
    to judge each walk: the prune of the same dentry, the NS_OP that
    explains a churn -ENOENT, and any LOST record.
    """
    import numpy as np

    from vfstrace.events import ECHILD, ENOENT, Kind

    df = df.sort_values("ts_ns", kind="stable").reset_index(drop=True)
    ts = df["ts_ns"].to_numpy().astype(np.int64)
    walks = df[(df["kind"] == int(Kind.WALK_RETURN)) & df["ret"].isin([ENOENT, ECHILD])]
    order = list(walks.index[walks["ret"] == ECHILD]) + list(walks.index[walks["ret"] == ENOENT])
    keep = np.zeros(len(df), dtype=bool)
    for i in order:
        lo = np.searchsorted(ts, ts[i] - window_ns, "left")
        hi = np.searchsorted(ts, ts[i] + window_ns, "right")
        if keep.sum() + (hi - lo) > limit and keep.any():
            break
        keep[lo:hi] = True
    return df[keep]


def record(out: Path, tier: str, seconds: float, workdir: str) -> dict:
    trace = out / f"{tier}.trace"
    # The workload: seq_sample.py's stat()s of a negative dentry with a known
    # d_seq history (before any pressure), then, in the same process, stress.
    seq_dir = f"/tmp/vt-seq-{tier}"
    argv = VFSTRACE + ["record", "--tier", tier, "-o", str(trace), "-d", str(seconds + 240), "--json", "--"] + [
        sys.executable, str(ROOT / "tests/vm/seq_sample.py"), seq_dir] + VFSTRACE + [
        "stress", "-d", str(seconds), "--churn", "--pressure", "drop_caches", "--files", "1500",
        "-j", "3", "--workdir", workdir, "--json",
    ]
    t0 = time.monotonic()
    # generous: this guest may share the host with another (tests/guests.py)
    r = run(argv, seconds + 800)
    res = {"tier": tier, "returncode": r.returncode, "seconds": round(time.monotonic() - t0, 1),
           "stderr_tail": r.stderr[-3000:], "stdout_tail": r.stdout[-3000:]}
    print(r.stderr[-3000:], flush=True)
    if trace.exists():
        s, df = summarise(trace)
        res.update(s)
        sl = fixture_slice(df)
        from vfstrace.store import write_jsonl

        meta = dict(df.attrs.get("meta") or {})
        meta["fixture_note"] = (f"slice of a {tier} recording in a {os.uname().release} guest: failed walks and "
                                "every event on their dentries")
        res["fixture_events"] = write_jsonl(sl, out / f"{tier}-fixture.jsonl", meta)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--kprobe-seconds", type=float, default=60)
    ap.add_argument("--fentry-seconds", type=float, default=25)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"kernel_release": os.uname().release, "runs": {}}
    d = run(VFSTRACE + ["doctor", "--json"], 300)
    try:
        summary["doctor"] = json.loads(d.stdout)
    except ValueError:
        summary["doctor"] = {"error": d.stderr[-2000:]}
    kfunc = bool(summary["doctor"].get("checks", {}).get("fentry", {}).get("ok"))
    if not kfunc:
        try:
            import bcc

            kfunc = bool(bcc.BPF.support_kfunc())
        except ImportError:
            pass
    summary["kfunc"] = kfunc
    os.makedirs("/var/tmp/vt-kprobe", exist_ok=True)
    summary["runs"]["kprobe"] = record(out, "kprobe", a.kprobe_seconds, "/var/tmp/vt-kprobe")
    if kfunc and a.fentry_seconds > 0:
        os.makedirs("/var/tmp/vt-fentry", exist_ok=True)
        summary["runs"]["fentry"] = record(out, "fentry", a.fentry_seconds, "/var/tmp/vt-fentry")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({t: {k: r.get(k) for k in ("returncode", "seconds", "by_kind", "walk_enoent", "walk_echild",
                                                 "walk_echild_pruned_dentry", "verdicts",
                                                 "retried_tied_to_prune", "retried_cites_kernel_retry")}
                      for t, r in summary["runs"].items()}, default=str), flush=True)


if __name__ == "__main__":
    main()
