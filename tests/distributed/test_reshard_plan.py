"""The re-sharding plan against brute force: slicing real tensors on small shapes."""

import itertools

import pytest
import torch

from ember.distributed.layout import ParallelLayout
from ember.distributed.reshard import held_slice, plan_reshard
from ember.distributed.shards import kv_specs, shard_slice, split_range, tensor_specs
from ember.models.config import ModelArchConfig

LLAMA = dict(
    architecture="LlamaForCausalLM",
    model_type="llama",
    vocab_size=37,
    hidden_size=16,
    intermediate_size=24,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=4,
    max_position_embeddings=32,
)
ARCHS = {
    "llama_gqa": ModelArchConfig(**LLAMA),
    "llama_tied_bias": ModelArchConfig(**{**LLAMA, "tie_word_embeddings": True, "qkv_bias": True, "mlp_bias": True}),
    "mqa": ModelArchConfig(**{**LLAMA, "num_kv_heads": 1}),
    "opt": ModelArchConfig(
        **{
            **LLAMA,
            "architecture": "OPTForCausalLM",
            "model_type": "opt",
            "num_kv_heads": 4,
            "hidden_act": "relu",
            "position_offset": 2,
            "word_embed_proj_dim": 8,
        }
    ),
}
LAYOUTS = [ParallelLayout(tp, pp) for tp in (1, 2, 4) for pp in (1, 2, 3)]


def full_tensors(arch):
    gen = torch.Generator().manual_seed(0)
    specs = {**tensor_specs(arch), **{s.name: s for s in kv_specs(arch)}}
    return specs, {name: torch.randn(spec.shape, generator=gen) for name, spec in specs.items()}


def shards_of(arch, layout, specs, tensors):
    """rank -> name -> the slice that rank holds (direct slicing of the full tensors)."""
    out = {}
    for rank in range(layout.world_size):
        out[rank] = {}
        for name, spec in specs.items():
            piece = held_slice(spec, arch, layout, rank)
            if piece is not None:
                out[rank][name] = (piece, tensors[name].narrow(piece.dim, piece.start, piece.size))
    return out


@pytest.mark.parametrize("arch_name", sorted(ARCHS))
@pytest.mark.parametrize("old,new", [(a, b) for a, b in itertools.product(LAYOUTS, LAYOUTS) if a != b][::3])
def test_plan_rebuilds_every_new_shard_from_old_shards_exactly_once(arch_name, old, new):
    arch = ARCHS[arch_name]
    specs, tensors = full_tensors(arch)
    old_shards = shards_of(arch, old, specs, tensors)
    new_shards = shards_of(arch, new, specs, tensors)
    plan = plan_reshard(arch, old, new)
    built = {r: {n: torch.full_like(t, float("nan")) for n, (_, t) in s.items()} for r, s in new_shards.items()}
    count = {r: {n: torch.zeros_like(t) for n, (_, t) in s.items()} for r, s in new_shards.items()}
    for t in plan.transfers:
        assert (t.kind == "kv") == t.name.startswith("kv.")
        src_piece, src_tensor = old_shards[t.src_rank][t.name]  # the source really holds it
        dst_piece, _ = new_shards[t.dst_rank][t.name]
        assert src_piece.start <= t.start < t.stop <= src_piece.stop
        assert dst_piece.start <= t.start < t.stop <= dst_piece.stop
        data = src_tensor.narrow(t.dim, t.start - src_piece.start, t.stop - t.start)
        built[t.dst_rank][t.name].narrow(t.dim, t.start - dst_piece.start, t.stop - t.start).copy_(data)
        count[t.dst_rank][t.name].narrow(t.dim, t.start - dst_piece.start, t.stop - t.start).add_(1)
    for rank, names in new_shards.items():
        for name, (_, expected) in names.items():
            assert torch.equal(count[rank][name], torch.ones_like(expected)), (rank, name)
            assert torch.equal(built[rank][name], expected), (rank, name)


@pytest.mark.parametrize("arch_name", sorted(ARCHS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_identical_layouts_give_an_all_local_plan(arch_name, layout):
    plan = plan_reshard(ARCHS[arch_name], layout, layout)
    assert plan.transfers and not plan.remote
    assert all(t.src == t.dst for t in plan.transfers)


def test_kv_records_name_layers_and_head_ranges():
    arch = ARCHS["llama_gqa"]  # 2 KV heads, 3 layers
    plan = plan_reshard(arch, ParallelLayout(1, 1), ParallelLayout(2, 3))
    kv = sorted((t.dst_rank, t.layer, t.start, t.stop, t.src_rank) for t in plan.transfers if t.kind == "kv")
    assert kv == [(0, 0, 0, 1, 0), (1, 0, 1, 2, 0), (2, 1, 0, 1, 0), (3, 1, 1, 2, 0), (4, 2, 0, 1, 0), (5, 2, 1, 2, 0)]


def test_kv_heads_replicate_when_fewer_than_ranks():
    assert [split_range(2, 1, 4, r) for r in range(4)] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    spec = tensor_specs(ARCHS["mqa"])["model.layers.0.self_attn.k_proj.weight"]
    assert {shard_slice(spec, 4, r).stop - shard_slice(spec, 4, r).start for r in range(4)} == {4}


def test_vocab_shards_are_clipped_to_the_real_rows():
    spec = tensor_specs(ARCHS["llama_gqa"])["lm_head.weight"]  # 37 rows over 4 ranks: 10 each
    assert [(shard_slice(spec, 4, r).start, shard_slice(spec, 4, r).stop) for r in range(4)] == [
        (0, 10),
        (10, 20),
        (20, 30),
        (30, 37),
    ]
