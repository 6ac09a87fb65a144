"""Tiny random transformers models (the oracle) saved as real checkpoints, and a paged runner.

Helpers are handed to tests as fixtures, so that no test imports this module by name."""

from __future__ import annotations

import pytest
import torch
from checkpoints import VARIANTS, build_hf_model

from ember.attention import allocate_kv_cache, build_attention_metadata


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def hf_model_factory():
    """``hf_model_factory(variant, seed=0, **config_overrides) -> transformers model``."""
    return build_hf_model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """``hf_checkpoint(variant) -> (hf_model, path)``, one saved checkpoint per variant."""
    cache = {}

    def make(variant: str):
        if variant not in cache:
            model = build_hf_model(variant)
            path = tmp_path_factory.mktemp(variant)
            model.save_pretrained(path)
            cache[variant] = (model, path)
        return cache[variant]

    return make


@pytest.fixture(scope="session")
def paged():
    """The paged-mode helpers: ``paged.run(...)`` and ``paged.new_kv_caches(...)``."""
    import types

    return types.SimpleNamespace(run=run_paged, new_kv_caches=new_kv_caches)


def new_kv_caches(config, num_blocks: int = 16, block_size: int = 4, dtype=torch.float32):
    return allocate_kv_cache(
        num_layers=config.num_layers,
        num_blocks=num_blocks,
        block_size=block_size,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        dtype=dtype,
    )


def run_paged(module, config, seqs, schedule, block_tables, block_size: int = 4):
    """Run ``seqs`` (token id lists) through paged steps; ``schedule`` is a list of steps,
    each ``{seq_index: num_tokens}``. Returns per sequence its logits ``[len, vocab]``."""
    caches = new_kv_caches(config, block_size=block_size)
    done = [0] * len(seqs)
    logits = [[] for _ in seqs]
    for step in schedule:
        order = sorted(step)
        ids, positions = [], []
        for i in order:
            ids += seqs[i][done[i] : done[i] + step[i]]
            positions += range(done[i], done[i] + step[i])
        positions = torch.tensor(positions)
        meta = build_attention_metadata(
            query_lens=[step[i] for i in order],
            positions=positions,
            kv_lens=[done[i] + step[i] for i in order],
            block_tables=[block_tables[i] for i in order],
            block_size=block_size,
        )
        with torch.no_grad():
            out = module.compute_logits(module(torch.tensor(ids), positions, caches, meta))
        start = 0
        for i in order:
            logits[i].append(out[start : start + step[i]])
            start += step[i]
            done[i] += step[i]
    return [torch.cat(rows) for rows in logits]
