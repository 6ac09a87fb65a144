from __future__ import annotations

import numpy as np
import pytest

from ember.errors import InvalidInputError
from ember.spot.arrivals import gamma_arrivals, load_arrivals, mean_rate, parse_arrivals, poisson_arrivals
from ember.spot.traces import (
    counts_to_trace,
    load_csv_trace,
    load_segment_trace,
    load_skypilot_trace,
    load_trace,
    scale_trace,
    synthetic_trace,
)


def test_csv_groups_same_time_same_kind(data_dir):
    tr = load_csv_trace(data_dir / "g4dn_head.csv")
    first = tr.events[0]
    assert (first.time_s, first.kind, first.instance_ids) == (480.0, "add", ("node1",))
    three = next(e for e in tr.events if e.time_s == 600.0 and e.kind == "add")
    assert three.instance_ids[:3] == ("node3", "node4", "node5") and len(three.instance_ids) == 19
    assert tr.end_s == tr.events[-1].time_s


def test_segments_done_and_rate_events(data_dir):
    tr = load_segment_trace(data_dir / "trace_0304_real.txt")
    assert tr.end_s == 1320.0
    assert len(tr.alive_at(0.0)) == 7 and len(tr.alive_at(400.0)) == 10 and len(tr.alive_at(1300.0)) == 8
    assert tr.max_instances == 10
    wl = load_segment_trace(data_dir / "trace_0506_workload.txt")
    rates = [(e.time_s, e.required_rate) for e in wl.events if e.kind == "rate"]
    assert rates == [(300.0, 0.8), (600.0, 0.6)]
    # the remove carrying required_tpt is still a remove
    assert any(e.kind == "remove" and e.time_s == 600.0 for e in wl.events)


def test_skypilot_counts_become_events(data_dir):
    tr = load_skypilot_trace(data_dir / "skypilot_us-east-2b_v100_head.json")
    counts = [0, 0, 0, 3, 3, 3, 3, 7, 7, 7, 9, 9, 9, 7]
    for tick, n in enumerate(counts):
        assert len(tr.alive_at(tick * 300.0)) == n
    assert tr.end_s == 40 * 300.0


def test_load_trace_detects_format(data_dir):
    assert load_trace(data_dir / "g4dn_head.csv").events[0].instance_ids == ("node1",)
    assert load_trace(data_dir / "trace_0506_real.txt").end_s == 1020.0
    assert load_trace(data_dir / "skypilot_us-east-2b_v100_head.json").max_instances == 16


@pytest.mark.parametrize("text", ["1000,add,node1\n2000,explode,node1\n", "abc,add,node1\n", "1000,remove,node9\n"])
def test_bad_csv_raises_invalid_input(tmp_path, text):
    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(InvalidInputError):
        load_csv_trace(p)


def test_bad_segment_and_missing_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text('[0, "add", {"nodes": ["a"]}]\n[5, "teleport", {"nodes": []}]\n')
    with pytest.raises(InvalidInputError, match="unknown operation"):
        load_segment_trace(p)
    with pytest.raises(InvalidInputError, match="not found"):
        load_trace(tmp_path / "missing.txt")


def test_counts_remove_newest_first():
    tr = counts_to_trace([2, 3, 1], 10.0)
    assert tr.alive_at(25.0) == {"i0"}


def test_synthetic_is_seeded_and_valid():
    a = synthetic_trace(initial=4, duration_s=3600, mean_lifetime_s=900, mean_gap_s=200, max_instances=6, seed=3)
    b = synthetic_trace(initial=4, duration_s=3600, mean_lifetime_s=900, mean_gap_s=200, max_instances=6, seed=3)
    c = synthetic_trace(initial=4, duration_s=3600, mean_lifetime_s=900, mean_gap_s=200, max_instances=6, seed=4)
    assert a.events == b.events and a.events != c.events
    assert any(e.kind == "remove" for e in a.events)
    assert len(a.alive_at(0.0)) == 4


def test_query_csv_loader(data_dir):
    arr = load_arrivals(data_dir / "query_tpt0.35_cv6_head.txt")
    assert len(arr) == 400 and arr[0].prompt_len == 512
    assert abs(mean_rate(arr) - 0.35) < 0.02
    assert all(x.time_s <= y.time_s for x, y in zip(arr, arr[1:]))


def test_generated_arrivals_match_rate_and_cv():
    p = poisson_arrivals(rate=2.0, duration_s=5000, seed=1)
    gaps = np.diff([a.time_s for a in p])
    assert abs(1 / gaps.mean() - 2.0) < 0.1 and abs(gaps.std() / gaps.mean() - 1.0) < 0.05
    g = gamma_arrivals(rate=2.0, cv=3.0, duration_s=20000, seed=1)
    gaps = np.diff([a.time_s for a in g])
    assert abs(1 / gaps.mean() - 2.0) < 0.15 and abs(gaps.std() / gaps.mean() - 3.0) < 0.4
    assert [a.time_s for a in poisson_arrivals(rate=1.0, duration_s=100, seed=7)] == [
        a.time_s for a in parse_arrivals("poisson:1", duration_s=100, seed=7)
    ]


@pytest.mark.parametrize("spec", ["poisson:x", "gamma:1", "poisson:-1"])
def test_bad_arrival_specs(spec):
    with pytest.raises(InvalidInputError):
        parse_arrivals(spec, duration_s=10)


def test_scale_trace_keeps_times_and_scales_the_count(data_dir):
    """A_S (7 up, 8 at 240 s, 10 at 360, 9 at 600, 10 at 900, 8 at 1200) at 0.4: 3, 4 at 360 s, 3
    at 1200 s (the other changes round away); the newest instance goes first."""
    a_s = load_trace(data_dir / "trace_0304_real.txt")
    scaled = scale_trace(a_s, 0.4)
    assert [(e.time_s, e.kind, e.instance_ids) for e in scaled.events] == [
        (0.0, "add", ("s0", "s1", "s2")),
        (360.0, "add", ("s3",)),
        (1200.0, "remove", ("s3",)),
    ]
    assert scaled.end_s == a_s.end_s
    for t in (0.0, 250.0, 400.0, 700.0, 1000.0, 1300.0):
        assert len(scaled.alive_at(t)) == max(1, round(len(a_s.alive_at(t)) * 0.4))
    assert len(scale_trace(a_s, 0.01, min_instances=2).alive_at(500.0)) == 2
    assert [len(scale_trace(a_s, 1.0).alive_at(t)) for t in (0.0, 700.0)] == [7, 9]
    with pytest.raises(ValueError, match="factor"):
        scale_trace(a_s, 0.0)
