import itertools
import math
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planner_instances import random_profiles

from ember.planner.cost_model import CostModel
from ember.planner.profiles import analytic_model, cluster_hardware
from ember.planner.search import SearchSpace, candidate_strategies, search, search_pure
from ember.planner.strategy import Plan


def _compositions(total, parts):
    if parts == 1:
        yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def brute_force(cost_model, space):
    """Every plan of the space, priced by the cost model: [(per-sample time, peak, plan)]."""
    model = cost_model.model
    out = []
    pp = 1
    while pp <= min(space.num_devices, model.num_layers):
        n = space.num_devices // pp
        strategies = candidate_strategies(
            space, devices_per_stage=n, tp_degrees=model.layer.tp_degrees, node_size=cost_model.hw.devices_per_node
        )
        for gbs in space.global_batch_sizes:
            for m in space.micro_batch_counts:
                if gbs % (m * n):
                    continue
                for schedule in space.schedules:
                    for split in _compositions(model.num_layers, pp):
                        for layers in itertools.product(strategies, repeat=model.num_layers):
                            plan = Plan(
                                num_devices=space.num_devices,
                                pp=pp,
                                stage_layers=split,
                                layers=layers,
                                global_batch_size=gbs,
                                num_micro_batches=m,
                                schedule=schedule,
                            )
                            cost = cost_model.evaluate(plan)
                            out.append((cost.iteration_s / gbs, cost.peak_memory_bytes, plan))
        pp *= 2
    return out


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**9), shape=st.sampled_from([(1, 4), (2, 3), (2, 4), (4, 3)]), tied=st.booleans())
def test_search_matches_brute_force(seed, shape, tied):
    rng = random.Random(seed)
    num_devices, num_layers = shape
    model, hw = random_profiles(rng, num_layers=num_layers, tied=tied)
    cost_model = CostModel(model, hw)
    base = dict(
        num_devices=num_devices,
        global_batch_sizes=(4, 8),
        micro_batch_counts=(1, 2),
        dp_types=("ddp", "zero3"),
        schedules=("gpipe", "1f1b"),
        memory_unit_bytes=1.0,
    )
    everything = brute_force(cost_model, SearchSpace(memory_budget_bytes=1e18, **base))
    peaks = sorted(p for _, p, _ in everything)
    budgets = [peaks[0] - 1, peaks[0], peaks[len(peaks) // 10], peaks[len(peaks) // 2], peaks[-1]]
    for budget in budgets:
        space = SearchSpace(memory_budget_bytes=budget, **base)
        feasible = [(t, p, plan) for t, p, plan in everything if p <= budget]
        found = search(cost_model, space)
        if not feasible:
            assert found.plan is None
            continue
        best = min(t for t, _, _ in feasible)
        assert found.plan is not None, (budget, best)
        got = cost_model.evaluate(found.plan)
        assert got.peak_memory_bytes <= budget
        assert got.iteration_s / found.plan.global_batch_size == pytest.approx(best, rel=1e-9)


def test_pure_strategies_are_never_better_than_the_search(rng):
    model, hw = random_profiles(rng, num_layers=4)
    cost_model = CostModel(model, hw)
    space = SearchSpace(num_devices=4, memory_budget_bytes=1e18, global_batch_sizes=(8,), micro_batch_counts=(1, 2))
    best = search(cost_model, space)
    pure = search_pure(cost_model, space)
    assert set(pure) == {"dp", "zero3", "tp", "pp"}
    for name, result in pure.items():
        assert result.plan is not None, name
        assert result.cost.samples_per_s <= best.cost.samples_per_s * (1 + 1e-12)
        assert len({s for s in result.plan.layers}) == 1
    assert pure["pp"].plan.pp == 4 and pure["tp"].plan.layers[0].tp == 4
    assert all(s.dp_type == "zero3" for s in pure["zero3"].plan.layers)


def test_tight_budget_prefers_memory_saving_strategies():
    cost_model = CostModel(
        analytic_model(num_layers=8, hidden_size=1024, intermediate_size=2816, seq_len=1024), cluster_hardware()
    )
    loose = search(cost_model, SearchSpace(num_devices=8, memory_budget_bytes=1e12, global_batch_sizes=(32,)))
    need = loose.cost.peak_memory_bytes
    tight = search(cost_model, SearchSpace(num_devices=8, memory_budget_bytes=need / 3, global_batch_sizes=(32,)))
    assert tight.plan is not None
    assert tight.cost.peak_memory_bytes <= need / 3
    assert tight.cost.iteration_s >= loose.cost.iteration_s
    nothing = search(cost_model, SearchSpace(num_devices=8, memory_budget_bytes=1e3, global_batch_sizes=(32,)))
    assert nothing.plan is None and nothing.cost is None


@pytest.mark.parametrize("num_devices", [8, 64])
def test_32_layers_search_in_seconds(num_devices):
    cost_model = CostModel(analytic_model(num_layers=32), cluster_hardware(max_devices=64))
    start = time.perf_counter()
    space = SearchSpace(
        num_devices=num_devices,
        memory_budget_bytes=40e9,
        global_batch_sizes=(64, 128),
        dp_types=("ddp", "zero2", "zero3"),
        schedules=("gpipe", "1f1b"),
    )
    result = search(cost_model, space)
    pure = search_pure(cost_model, space)
    seconds = time.perf_counter() - start
    assert result.plan is not None and result.cost.peak_memory_bytes <= 40e9
    assert seconds < 30, seconds
    for r in pure.values():
        if r.plan is not None:
            assert r.cost.samples_per_s <= result.cost.samples_per_s * (1 + 1e-9)
    assert math.isfinite(result.cost.iteration_s)
