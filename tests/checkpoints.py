"""Tiny random-weight Hugging Face checkpoints written by `transformers` (the oracle)."""

from __future__ import annotations

from pathlib import Path

import torch

_COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=512,
)

# variant name -> (config class name, config overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "llama-gqa": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-tied": ("LlamaConfig", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama3-rope": (
        "LlamaConfig",
        dict(
            num_key_value_heads=2,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "mistral-mqa": ("MistralConfig", dict(num_key_value_heads=1, head_dim=16)),
    "qwen2-bias": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen3-qknorm": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)),
    "opt-pre-ln": (
        "OPTConfig",
        dict(ffn_dim=128, do_layer_norm_before=True, word_embed_proj_dim=64, pad_token_id=1),
    ),
    "opt-post-ln": (
        "OPTConfig",
        dict(ffn_dim=128, do_layer_norm_before=False, word_embed_proj_dim=32, pad_token_id=1),
    ),
}


def write_hf_checkpoint(path: Path, variant: str, *, seed: int = 0, **overrides) -> Path:
    import transformers

    config_cls, extra = VARIANTS[variant]
    kwargs = {**_COMMON, **extra, **overrides}
    if config_cls == "OPTConfig":
        kwargs["num_hidden_layers"] = kwargs.pop("num_hidden_layers")
        kwargs.pop("intermediate_size")
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    # NOTE: random init with std 0.02 gives near-uniform logits and many argmax ties;
    # larger weights make greedy decoding decisive, so token equality is a sharp test.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.2 if "embed" not in name else 1.0)
    model.eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path


def load_hf(path: Path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    return model.eval()
