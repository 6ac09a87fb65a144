"""ParallelLayout: validated degrees, rank <-> coordinates, stage layer ranges."""

import pytest

from ember.distributed.layout import ParallelLayout, RankCoord
from ember.errors import InvalidInputError
from ember.models.config import ModelArchConfig


def arch(**overrides) -> ModelArchConfig:
    base = dict(
        architecture="LlamaForCausalLM",
        model_type="llama",
        vocab_size=301,
        hidden_size=64,
        intermediate_size=96,
        num_layers=5,
        num_heads=8,
        num_kv_heads=2,
        head_dim=8,
        max_position_embeddings=64,
    )
    return ModelArchConfig(**{**base, **overrides})


@pytest.mark.parametrize("field", ["tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_degrees_must_be_positive_integers(field, value):
    with pytest.raises(InvalidInputError, match=field):
        ParallelLayout(**{field: value})


def test_rank_coordinates_round_trip_with_tensor_axis_fastest():
    layout = ParallelLayout(2, 3, 2)
    assert layout.world_size == 12
    coords = layout.coords()
    assert len(set(coords)) == 12
    assert all(layout.rank(c) == r for r, c in enumerate(coords))
    assert coords[1] == RankCoord(dp=0, pp=0, tp=1)
    assert coords[2] == RankCoord(dp=0, pp=1, tp=0)
    assert coords[6] == RankCoord(dp=1, pp=0, tp=0)
    assert layout.tp_group_ranks(1, 2) == [10, 11]
    with pytest.raises(ValueError):
        layout.coord(12)


@pytest.mark.parametrize("num_layers,pp", [(5, 1), (5, 2), (5, 3), (7, 4), (4, 4), (2, 2)])
def test_stages_cover_layers_contiguously_remainder_early(num_layers, pp):
    layout = ParallelLayout(1, pp)
    ranges = [layout.stage_layers(s, num_layers) for s in range(pp)]
    assert [layer for r in ranges for layer in r] == list(range(num_layers))
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert sizes == sorted(sizes, reverse=True)  # the remainder goes to the early stages
    for layer in range(num_layers):
        assert layer in ranges[layout.stage_of_layer(layer, num_layers)]


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_supported_tensor_degrees_including_kv_replication(tp):
    ParallelLayout(tp, 1).check_model(arch(intermediate_size=128))


@pytest.mark.parametrize(
    "layout,overrides,field",
    [
        (ParallelLayout(3, 1), {}, "tensor_parallel_size"),  # 8 heads
        (ParallelLayout(4, 1), {"num_kv_heads": 8, "num_heads": 8, "intermediate_size": 90}, "tensor_parallel_size"),
        (ParallelLayout(4, 1), {"num_heads": 12, "num_kv_heads": 3}, "tensor_parallel_size"),  # kv 3 vs tp 4
        (ParallelLayout(1, 6), {}, "pipeline_parallel_size"),  # 5 layers
    ],
)
def test_unsupported_layouts_are_rejected_with_the_field(layout, overrides, field):
    with pytest.raises(InvalidInputError, match=field) as info:
        layout.check_model(arch(**overrides))
    assert info.value.param == field


def test_engine_config_validates_degrees():
    from ember.config import EngineConfig

    config = EngineConfig.from_kwargs("m", tensor_parallel_size=2, pipeline_parallel_size=2)
    assert config.parallel.tensor_parallel_size == 2 and config.parallel.world_size == 4
    with pytest.raises(InvalidInputError, match="pipeline_parallel_size"):
        EngineConfig.from_kwargs("m", pipeline_parallel_size=0)
    with pytest.raises(InvalidInputError, match="tensor_parallel_size"):
        EngineConfig.from_kwargs("m", tensor_parallel_size=-2)
