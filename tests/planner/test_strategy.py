import json

import pytest

from ember.planner.strategy import LayerStrategy, Plan, uniform_plan


def _plan(**over):
    fields = dict(
        num_devices=4,
        pp=2,
        stage_layers=(1, 2),
        layers=(LayerStrategy(tp=2), LayerStrategy(dp_type="zero3"), LayerStrategy(checkpoint=True)),
        global_batch_size=8,
        num_micro_batches=2,
        schedule="gpipe",
    )
    fields.update(over)
    return Plan(**fields)


def test_json_round_trip_and_derived_values(tmp_path):
    plan = _plan()
    path = tmp_path / "plan.json"
    plan.save(path, prediction={"iteration_s": 1.0})
    data = json.loads(path.read_text())
    assert data["format"] == "ember-plan" and data["version"] == 1
    assert data["prediction"] == {"iteration_s": 1.0}
    assert Plan.load(path) == plan
    assert plan.devices_per_stage == 2 and plan.micro_batch_size == 4
    assert plan.samples_per_rank == 2
    assert list(plan.stage_range(1)) == [1, 2] and plan.stage_of_layer(2) == 1
    assert plan.dp_degree(0) == 1 and plan.dp_degree(1) == 2
    assert "pp2 [1+2]" in plan.describe() and "tp1.dp2.zero3 x1" in plan.describe()


@pytest.mark.parametrize(
    "over, field",
    [
        (dict(pp=3), "pp"),
        (dict(stage_layers=(1, 1)), "stage_layers"),
        (dict(layers=(LayerStrategy(tp=4),) * 3), "tp"),
        (dict(global_batch_size=6), "global_batch_size"),
        (dict(schedule="zb"), "schedule"),
        (dict(num_micro_batches=0), "num_micro_batches"),
    ],
)
def test_validation_names_the_field(over, field):
    with pytest.raises(ValueError, match=field):
        _plan(**over)


def test_layer_strategy_validation():
    with pytest.raises(ValueError, match="tp=3"):
        LayerStrategy(tp=3)
    with pytest.raises(ValueError, match="dp_type"):
        LayerStrategy(dp_type="zero1")


def test_from_dict_names_bad_layer_and_missing_fields():
    data = _plan().to_dict()
    data["layers"][1]["dp_type"] = "nope"
    with pytest.raises(ValueError, match=r"layers\[1\]"):
        Plan.from_dict(data)
    data = _plan().to_dict()
    del data["pp"]
    with pytest.raises(ValueError, match="missing"):
        Plan.from_dict(data)
    with pytest.raises(ValueError, match="format"):
        Plan.from_dict({"pp": 1})


def test_uniform_plan_split_and_model_check():
    plan = uniform_plan(num_devices=4, num_layers=5, pp=2, global_batch_size=4)
    assert plan.stage_layers == (3, 2)
    plan.check_model(num_layers=5, tp_limit=2)
    with pytest.raises(ValueError, match="layers"):
        plan.check_model(num_layers=4, tp_limit=2)
    tp4 = uniform_plan(num_devices=4, num_layers=2, strategy=LayerStrategy(tp=4), global_batch_size=4)
    with pytest.raises(ValueError, match="tp=4"):
        tp4.check_model(num_layers=2, tp_limit=2)
