"""ModelArchConfig.from_hf on the config.json shapes of transformers 4.x and 5.x."""

from __future__ import annotations

import pytest

from ember.errors import ModelLoadError
from ember.models.config import ModelArchConfig, RopeScaling
from ember.models.registry import get_model_class, supported_architectures

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def test_legacy_rope_keys_equal_transformers5_rope_parameters():
    legacy = ModelArchConfig.from_hf(
        {
            **LLAMA,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        }
    )
    v5 = ModelArchConfig.from_hf(
        {
            **LLAMA,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        }
    )
    assert legacy == v5
    assert v5.rope_theta == 500000.0 and v5.rope_scaling.rope_type == "llama3"


def test_defaults_and_derived_values():
    config = ModelArchConfig.from_hf({**LLAMA, "eos_token_id": [5, 7], "torch_dtype": "bfloat16"})
    assert config.head_dim == 16 and config.num_kv_heads == 2 and config.num_layers == 2
    assert config.rope_scaling == RopeScaling() and config.rope_theta == 10000.0
    assert config.eos_token_ids == (5, 7) and config.torch_dtype == "bfloat16"
    assert config.kv_cache_bytes_per_token(2) == 2 * 2 * 2 * 16 * 2
    assert ModelArchConfig.from_hf({**LLAMA, "eos_token_id": 3}).eos_token_ids == (3,)
    hash(config)  # frozen and hashable


def test_family_specific_fields():
    qwen2 = ModelArchConfig.from_hf({**LLAMA, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})
    assert qwen2.qkv_bias and not qwen2.o_proj_bias and not qwen2.qk_norm
    qwen3 = ModelArchConfig.from_hf(
        {**LLAMA, "model_type": "qwen3", "head_dim": 32, "architectures": ["Qwen3ForCausalLM"]}
    )
    assert qwen3.qk_norm and qwen3.head_dim == 32
    opt = ModelArchConfig.from_hf(
        {
            "architectures": ["OPTForCausalLM"],
            "model_type": "opt",
            "vocab_size": 300,
            "hidden_size": 64,
            "ffn_dim": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "do_layer_norm_before": False,
            "word_embed_proj_dim": 32,
        }
    )
    assert opt.intermediate_size == 256 and opt.embed_dim == 32 and opt.position_offset == 2
    assert not opt.has_final_layer_norm and opt.tie_word_embeddings and opt.hidden_act == "relu"


def test_architecture_from_model_type_when_architectures_missing():
    config = ModelArchConfig.from_hf({k: v for k, v in LLAMA.items() if k != "architectures"})
    assert config.architecture == "LlamaForCausalLM"


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_type='dynamic'"),
        ({"num_key_value_heads": 3}, "num_kv_heads=3"),
        ({"hidden_act": "swish2"}, "hidden_act='swish2'"),
        ({"vocab_size": 0}, "vocab_size=0"),
    ],
)
def test_invalid_configs_name_the_problem(overrides, match):
    with pytest.raises(ModelLoadError, match=match):
        ModelArchConfig.from_hf({**LLAMA, **overrides})


def test_registry():
    assert set(supported_architectures()) == {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "OPTForCausalLM",
    }
    with pytest.raises(ModelLoadError, match="'FooForCausalLM'.*OPTForCausalLM"):
        get_model_class("FooForCausalLM")
