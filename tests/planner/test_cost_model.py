import pytest

from ember.planner.cost_model import CostModel, in_flight, pipeline_time
from ember.planner.profiles import analytic_model, cluster_hardware
from ember.planner.strategy import LayerStrategy, Plan, uniform_plan


@pytest.fixture
def cost():
    return CostModel(analytic_model(num_layers=8), cluster_hardware())


def _layer(cost, s, *, n=8, mb=16, m=1):
    return cost.layer_cost(s, num_devices=n, devices_per_stage=n, micro_batch_size=mb, num_micro_batches=m)


def test_zero3_shards_states_and_pays_gathers(cost):
    ddp = _layer(cost, LayerStrategy(dp_type="ddp"))
    zero3 = _layer(cost, LayerStrategy(dp_type="zero3"))
    zero2 = _layer(cost, LayerStrategy(dp_type="zero2"))
    assert zero3.state_bytes == pytest.approx(ddp.state_bytes / 8)
    assert zero3.state_bytes < zero2.state_bytes < ddp.state_bytes
    assert zero3.micro_s > ddp.micro_s  # gathers every micro-batch
    assert ddp.step_s > 0 and zero3.transient_bytes > 0 == ddp.transient_bytes


def test_checkpoint_trades_time_for_activations(cost):
    plain = _layer(cost, LayerStrategy())
    ckpt = _layer(cost, LayerStrategy(checkpoint=True))
    assert ckpt.activation_bytes < plain.activation_bytes / 4
    assert ckpt.micro_s > plain.micro_s
    assert ckpt.transient_bytes == pytest.approx(plain.activation_bytes)


def test_tp_shards_parameters_and_activations_and_communicates(cost):
    tp1 = _layer(cost, LayerStrategy(tp=1))
    tp4 = _layer(cost, LayerStrategy(tp=4))
    assert tp4.state_bytes < tp1.state_bytes / 3
    # tp4 sees 4x the samples of a tp1 rank; its activations per sample are smaller
    assert tp4.activation_bytes < 4 * tp1.activation_bytes
    assert cost.transition_s(1, 4, samples_per_rank=2) > 0 == cost.transition_s(2, 2, samples_per_rank=2)


def test_pipeline_time_and_in_flight():
    assert pipeline_time([1.0, 2.0, 1.0], 4) == pytest.approx(4.0 + 3 * 2.0)
    # the first stage keeps torch's shape-inference forward alive: one more
    assert in_flight("gpipe", stage=0, pp=4, num_micro_batches=8) == 9
    assert in_flight("gpipe", stage=1, pp=4, num_micro_batches=8) == 8
    assert [in_flight("1f1b", stage=k, pp=4, num_micro_batches=8) for k in range(4)] == [5, 3, 2, 1]
    assert in_flight("1f1b", stage=1, pp=4, num_micro_batches=2) == 2
    assert in_flight("gpipe", stage=0, pp=1, num_micro_batches=8) == 1


def test_evaluate_gpipe_needs_more_memory_same_time(cost):
    kw = dict(num_devices=8, num_layers=8, pp=4, global_batch_size=64, num_micro_batches=8)
    a = cost.evaluate(uniform_plan(schedule="gpipe", **kw))
    b = cost.evaluate(uniform_plan(schedule="1f1b", **kw))
    assert a.iteration_s == pytest.approx(b.iteration_s)
    assert a.stages[0].memory_bytes > b.stages[0].memory_bytes
    assert a.stages[-1].memory_bytes > b.stages[-1].memory_bytes


def test_evaluate_adds_up(cost):
    plan = Plan(
        num_devices=4,
        pp=1,
        stage_layers=(8,),
        layers=(LayerStrategy(tp=2),) * 4 + (LayerStrategy(dp_type="zero3"),) * 4,
        global_batch_size=8,
        num_micro_batches=2,
    )
    result = cost.evaluate(plan)
    kw = dict(num_devices=4, micro_batch_size=4, num_micro_batches=2)
    fixed = cost.stage_fixed(stage=0, pp=1, schedule="1f1b", **kw)
    a = cost.layer_cost(LayerStrategy(tp=2), devices_per_stage=4, **kw)
    b = cost.layer_cost(LayerStrategy(dp_type="zero3"), devices_per_stage=4, **kw)
    trans = 2 * cost.transition_s(1, 2, samples_per_rank=1)
    micro = fixed.micro_s + 4 * (a.micro_s + a.step_s + b.micro_s + b.step_s) + trans
    assert result.iteration_s == pytest.approx(2 * micro + cost.step_sync_s(4))
    mem = (
        fixed.memory_bytes
        + 4 * (a.state_bytes + b.state_bytes)
        + 4 * (a.activation_bytes + b.activation_bytes)
        + max(a.transient_bytes, b.transient_bytes)
    )
    assert result.peak_memory_bytes == pytest.approx(mem)


def test_measured_layer_profiles_replace_modelled_communication():
    import dataclasses

    model = analytic_model(num_layers=4)
    hw = cluster_hardware()
    measured = dataclasses.replace(
        model, layer=dataclasses.replace(model.layer, measured_with_tp=True, zero_overhead_s={"zero3": {8: 0.5}})
    )
    plain, real = CostModel(model, hw), CostModel(measured, hw)
    kw = dict(num_devices=8, devices_per_stage=8, micro_batch_size=16, num_micro_batches=1)
    # TP all-reduces are inside measured times: no extra communication term
    assert real.layer_cost(LayerStrategy(tp=2), **kw).micro_s < plain.layer_cost(LayerStrategy(tp=2), **kw).micro_s
    # a measured FSDP overhead is added per micro-batch as is
    base = real.layer_cost(LayerStrategy(), **kw)
    zero3 = real.layer_cost(LayerStrategy(dp_type="zero3"), **kw)
    assert zero3.micro_s == pytest.approx(base.micro_s + 0.5)
