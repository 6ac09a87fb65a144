"""Tiny random transformers models (the oracle) saved as real checkpoints, and a paged runner.

Helpers are handed to tests as fixtures, so that no test imports this module by name."""

from __future__ import annotations

import math

import pytest
import torch

from ember.attention import build_attention_metadata

VOCAB = 300
_COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=128,
)  # fmt: skip
_OPT = dict(
    vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=128, dropout=0.0,
)  # fmt: skip

# name -> (transformers config class name, config kwargs)
VARIANTS = {
    "llama_gqa": ("LlamaConfig", dict(_COMMON, num_key_value_heads=2)),
    "llama_tied": ("LlamaConfig", dict(_COMMON, num_key_value_heads=4, tie_word_embeddings=True)),
    "llama3_rope": ("LlamaConfig", dict(
        _COMMON, num_key_value_heads=2, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=32),
    )),
    "llama_linear_rope": ("LlamaConfig", dict(
        _COMMON, num_key_value_heads=2, rope_scaling=dict(rope_type="linear", factor=4.0))),
    "llama_yarn_rope": ("LlamaConfig", dict(
        _COMMON, num_key_value_heads=2,
        rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=32))),
    "llama_bias": ("LlamaConfig", dict(_COMMON, num_key_value_heads=2, attention_bias=True,
                                       mlp_bias=True)),
    "mistral": ("MistralConfig", dict(_COMMON, num_key_value_heads=2, sliding_window=4096)),
    "qwen2": ("Qwen2Config", dict(_COMMON, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(_COMMON, num_key_value_heads=2, head_dim=32)),
    "mqa": ("LlamaConfig", dict(_COMMON, num_key_value_heads=1)),
    "opt_pre_ln": ("OPTConfig", dict(_OPT, do_layer_norm_before=True, word_embed_proj_dim=64)),
    "opt_post_ln_proj": ("OPTConfig", dict(_OPT, do_layer_norm_before=False,
                                           word_embed_proj_dim=32)),
}  # fmt: skip


def build_hf_model(variant: str, seed: int = 0, **overrides):
    """A transformers model of ``variant`` with seeded, deliberately non-default weights
    (norm weights != 1, biases != 0) so that a mapping mistake changes the logits."""
    import transformers

    class_name, kwargs = VARIANTS[variant]
    config = getattr(transformers, class_name)(**{**kwargs, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.dim() == 1:
                param.copy_(1.0 + 0.1 * noise if "norm" in name else 0.1 * noise)
            elif "embed" in name:
                param.copy_(noise)
            else:
                param.copy_(noise / math.sqrt(param.shape[1]))
    return model.eval()


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
    shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
    return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
            for _ in range(config.num_layers)]  # fmt: skip


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
