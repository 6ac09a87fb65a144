"""Tiny random transformers models (the oracle) and the real checkpoints they save.

One table of architecture variants for every test that needs an HF checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import torch

VOCAB = 300
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=512,
)
_OPT = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    ffn_dim=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=512,
    dropout=0.0,
)

# name -> (transformers config class name, config kwargs)
VARIANTS = {
    "llama_gqa": ("LlamaConfig", dict(_COMMON, num_key_value_heads=2)),
    "llama_tied": ("LlamaConfig", dict(_COMMON, num_key_value_heads=4, tie_word_embeddings=True)),
    "llama3_rope": (
        "LlamaConfig",
        dict(
            _COMMON,
            num_key_value_heads=2,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
    ),
    "llama_linear_rope": (
        "LlamaConfig",
        dict(_COMMON, num_key_value_heads=2, rope_scaling=dict(rope_type="linear", factor=4.0)),
    ),
    "llama_yarn_rope": (
        "LlamaConfig",
        dict(
            _COMMON,
            num_key_value_heads=2,
            rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=32),
        ),
    ),
    "llama_bias": ("LlamaConfig", dict(_COMMON, num_key_value_heads=2, attention_bias=True, mlp_bias=True)),
    "mistral": ("MistralConfig", dict(_COMMON, num_key_value_heads=2, sliding_window=4096)),
    "qwen2": ("Qwen2Config", dict(_COMMON, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(_COMMON, num_key_value_heads=2, head_dim=32)),
    "mqa": ("LlamaConfig", dict(_COMMON, num_key_value_heads=1)),
    "opt_pre_ln": ("OPTConfig", dict(_OPT, do_layer_norm_before=True, word_embed_proj_dim=64)),
    "opt_post_ln_proj": ("OPTConfig", dict(_OPT, do_layer_norm_before=False, word_embed_proj_dim=32)),
}


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


def write_hf_checkpoint(path: Path, variant: str, *, seed: int = 0, **overrides) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    build_hf_model(variant, seed, **overrides).save_pretrained(path)
    return path


def load_hf(path: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
