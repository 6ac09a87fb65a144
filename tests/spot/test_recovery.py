from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.spot.profile import BatchLatency
from ember.spot.recovery import BatchProgress, choose_recovery, plan_stop

LAT = BatchLatency(prefill_s=1.0, step_s=0.1, fixed_s=0.2)


def batch(**kw) -> BatchProgress:
    return BatchProgress(**{"start_s": 0.0, "committed_at_start": 0, "output_len": 10, "latency": LAT, **kw})


def test_timeline():
    b = batch()
    assert b.first_token_s == pytest.approx(1.2) and b.finish_s == pytest.approx(2.2)
    assert b.committed(1.25) == 0 and b.committed(1.35) == 1 and b.committed(5.0) == 10
    resumed = batch(committed_at_start=6, with_prefill=False)
    assert resumed.finish_s == pytest.approx(0.2 + 4 * 0.1)


def test_plan_stop_cases():
    assert plan_stop(batch(), now=0.5, stop_by=3.0).finishes
    # until 1.75: 5 steps fit, one held back -> 4 committed, stopped at 1.6
    d = plan_stop(batch(), now=0.5, stop_by=1.75)
    assert (d.finishes, d.committed, d.stop_s, d.extra_steps) == (False, 4, pytest.approx(1.6), 4)
    # never below what is already committed
    assert plan_stop(batch(), now=1.55, stop_by=1.75).committed == 4
    # still in prefill at the stop point: stop now, nothing new committed
    d = plan_stop(batch(committed_at_start=3), now=0.5, stop_by=1.0)
    assert (d.committed, d.stop_s) == (3, 0.5)


@given(now=st.floats(0, 3), window=st.floats(0, 3), c0=st.integers(0, 9))
def test_stop_never_passes_deadline_or_loses_tokens(now, window, c0):
    b = batch(committed_at_start=c0)
    d = plan_stop(b, now=now, stop_by=now + window)
    assert d.stop_s <= now + window + 1e-9
    assert b.committed(now) <= d.committed <= b.output_len
    assert d.finishes == (d.committed == b.output_len)


def test_choose_recovery():
    assert choose_recovery(now=0, deadline=None, est_with_kv_s=5, est_params_s=3) == ("migrate_kv", 0, True)
    assert choose_recovery(now=0, deadline=30, est_with_kv_s=5, est_params_s=3) == ("migrate_kv", 25, True)
    assert choose_recovery(now=0, deadline=30, est_with_kv_s=40, est_params_s=10) == ("recompute", 20, True)
    assert choose_recovery(now=0, deadline=30, est_with_kv_s=50, est_params_s=40) == ("recompute", 0, False)
    assert (
        choose_recovery(now=0, deadline=30, est_with_kv_s=5, est_params_s=3, can_migrate_kv=False).mode == "recompute"
    )
