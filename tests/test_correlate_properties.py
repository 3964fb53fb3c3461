"""Streaming and batch correlators agree exactly, whatever the chunking (hypothesis)."""

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfstrace.correlate import StreamingCorrelator, correlate
from vfstrace.workload.simulate import simulate

_cache = {}


def _sim(seed, semantics, loss, view, delivery="ts"):
    key = (seed, semantics, loss, view, delivery)
    if key not in _cache:
        _cache[key] = simulate(seed, semantics=semantics, duration_ns=1_000_000, loss_rate=loss, view=view,
                               delivery=delivery)
    return _cache[key]


def _stream(ev, cuts, reorder_ns):
    sc = StreamingCorrelator(reorder_ns=reorder_ns)
    outs, i = [], 0
    for c in cuts:
        j = min(len(ev), i + c)
        outs.append(sc.feed(ev.iloc[i:j]))
        i = j
        if i >= len(ev):
            break
    if i < len(ev):
        outs.append(sc.feed(ev.iloc[i:]))
    outs.append(sc.finish())
    st_ = sc.stats()
    assert st_["verdicts"] == sum(len(o) for o in outs)
    return pd.concat(outs, ignore_index=True).sort_values("event_id", kind="stable").reset_index(drop=True)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 6), semantics=st.sampled_from(["buggy", "fixed"]),
       loss=st.sampled_from([0.0, 0.003]), view=st.sampled_from(["kprobe", "kprobe", "tracepoint"]),
       cuts=st.lists(st.integers(1, 6000), min_size=1, max_size=40),
       reorder_ns=st.sampled_from([0, 50_000, 100_000_000]))
def test_streaming_equals_batch(seed, semantics, loss, view, cuts, reorder_ns):
    ev, truth = _sim(seed, semantics, loss, view)
    batch = correlate(ev)
    stream = _stream(ev, cuts, reorder_ns)
    pd.testing.assert_frame_equal(batch, stream)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 6), loss=st.sampled_from([0.0, 0.003]))
def test_fixed_kernel_never_race_and_every_race_is_true(seed, loss):
    for sem in ("fixed", "buggy"):
        ev, truth = _sim(seed, sem, loss, "kprobe")
        v = correlate(ev)
        races = v[v["verdict"] == "race"]
        t = truth.set_index("event_id")["truth"]
        assert (t.reindex(races["event_id"]) == "race").all()
        if sem == "fixed":
            assert len(races) == 0


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 6), semantics=st.sampled_from(["buggy", "fixed"]),
       cuts=st.lists(st.integers(1, 6000), min_size=1, max_size=40))
def test_streaming_equals_batch_on_per_cpu_delivery(seed, semantics, cuts):
    # Ids in the order a reader of per-CPU perf buffers receives events; the
    # stream is out of time order by less than its reorder_ns.
    ev, truth = _sim(seed, semantics, 0.0, "kprobe", "percpu")
    assert (np.diff(ev["ts_ns"].to_numpy().astype(np.int64)) < 0).any()
    pd.testing.assert_frame_equal(correlate(ev), _stream(ev, cuts, 100_000_000))
