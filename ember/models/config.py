"""The architecture of a checkpoint, normalised from a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ember.errors import ModelLoadError

ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_ARCH_OF_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "opt": "OPTForCausalLM",
}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
ACTIVATIONS = ("silu", "relu", "gelu", "gelu_new", "gelu_pytorch_tanh")


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """RoPE frequency scaling (HF ``rope_parameters`` / ``rope_scaling``); ``default`` = none."""

    rope_type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn; None = derived from factor (and mscale)
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type={self.rope_type!r} is not supported; supported: {ROPE_TYPES}")
        if self.factor <= 0:
            raise ValueError(f"factor={self.factor} must be positive")
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor={self.high_freq_factor} must exceed low_freq_factor={self.low_freq_factor}"
            )


@dataclass(frozen=True, kw_only=True)
class ModelArchConfig:
    """What Ember needs to build a model; everything else in ``config.json`` is ignored."""

    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # OPT: ffn_dim
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    norm_eps: float = 1e-6  # RMSNorm eps (Llama family) or LayerNorm eps (OPT: 1e-5)
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    # Llama family
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    qkv_bias: bool = False  # Qwen2; Llama attention_bias
    o_proj_bias: bool = False  # Llama attention_bias
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: per-head RMSNorm of q and k before RoPE
    # NOTE: Ember attends over the whole context; that equals sliding-window attention only
    # while a sequence is at most ``sliding_window`` tokens long.
    sliding_window: int | None = None
    # OPT
    do_layer_norm_before: bool = True
    word_embed_proj_dim: int | None = None  # None = hidden_size
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    has_final_layer_norm: bool = True
    position_offset: int = 0  # OPT's learned positions are looked up at position + 2
    # special tokens and storage
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    torch_dtype: str | None = None

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not one of {ACTIVATIONS}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps={self.norm_eps} must be positive")
        if self.torch_dtype is not None and self.torch_dtype not in _DTYPE_BYTES:
            raise ValueError(f"torch_dtype={self.torch_dtype!r} is not one of {list(_DTYPE_BYTES)}")

    @property
    def embed_dim(self) -> int:
        """Width of the token embeddings (OPT's ``word_embed_proj_dim``)."""
        return self.word_embed_proj_dim or self.hidden_size

    def kv_cache_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V bytes one token occupies across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> ModelArchConfig:
        """Normalise a ``config.json`` dict; raises ModelLoadError naming a bad or missing key."""
        try:
            architecture = hf_architecture(hf)
            if architecture == "OPTForCausalLM":
                fields = _opt_fields(hf)
            else:
                fields = _llama_fields(hf)
            return cls(architecture=architecture, **fields, **_token_fields(hf))
        except KeyError as exc:
            raise ModelLoadError(f"config.json is missing required key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"config.json is invalid: {exc}") from None


def hf_architecture(hf: Mapping[str, Any]) -> str:
    """The model class a ``config.json`` names (``architectures[0]``, else from model_type)."""
    archs = hf.get("architectures")
    if archs:
        if not isinstance(archs, list) or not isinstance(archs[0], str):
            raise ModelLoadError(f"config.json 'architectures' must be a list of names: {archs!r}")
        return archs[0]
    model_type = hf.get("model_type")
    if model_type in _ARCH_OF_MODEL_TYPE:
        return _ARCH_OF_MODEL_TYPE[model_type]
    raise ModelLoadError(f"config.json names no 'architectures' and its model_type {model_type!r} is unknown")


def _llama_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    num_heads = int(hf["num_attention_heads"])
    hidden_size = int(hf["hidden_size"])
    attention_bias = bool(hf.get("attention_bias", False))
    model_type = hf.get("model_type", "llama")
    rope_theta, rope_scaling = _rope(hf)
    use_sliding = hf.get("use_sliding_window", True)
    return dict(
        model_type=model_type,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden_size,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or hidden_size // num_heads),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        hidden_act=hf.get("hidden_act", "silu"),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        # NOTE: Qwen2 always has q/k/v bias and no o_proj bias; Llama's attention_bias covers
        # all four projections.
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_proj_bias=model_type != "qwen2" and attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        sliding_window=hf.get("sliding_window") if use_sliding else None,
    )


def _rope(hf: Mapping[str, Any]) -> tuple[float, RopeScaling]:
    # transformers 5 writes `rope_parameters` (rope_theta inside); 4.x writes `rope_theta` and
    # `rope_scaling` (with `type` in old checkpoints) at top level.
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if float(params.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    known = {f.name for f in dataclasses.fields(RopeScaling)}
    unknown = set(params) - known
    if rope_type != "default" and unknown:
        raise ValueError(f"unsupported {rope_type} rope parameters: {sorted(unknown)}")
    kwargs = {k: v for k, v in params.items() if k in known and v is not None}
    if rope_type in ("llama3", "yarn"):
        kwargs.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    if rope_type == "yarn" and "factor" not in kwargs:
        original = kwargs["original_max_position_embeddings"]
        kwargs["factor"] = hf["max_position_embeddings"] / original
    return theta, RopeScaling(rope_type=rope_type, **kwargs)


def _opt_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    hidden_size = int(hf["hidden_size"])
    num_heads = int(hf["num_attention_heads"])
    pre_ln = bool(hf.get("do_layer_norm_before", True))
    return dict(
        model_type="opt",
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden_size,
        intermediate_size=int(hf["ffn_dim"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        norm_eps=1e-5,
        hidden_act=hf.get("activation_function", "relu"),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        do_layer_norm_before=pre_ln,
        word_embed_proj_dim=int(hf.get("word_embed_proj_dim") or hidden_size),
        enable_bias=bool(hf.get("enable_bias", True)),
        layer_norm_elementwise_affine=bool(hf.get("layer_norm_elementwise_affine", True)),
        has_final_layer_norm=pre_ln and not hf.get("_remove_final_layer_norm", False),
        position_offset=2,
    )


def _token_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    eos = hf.get("eos_token_id")
    eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
    dtype = hf.get("dtype") or hf.get("torch_dtype")
    return dict(
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=tuple(int(e) for e in eos),
        pad_token_id=hf.get("pad_token_id"),
        torch_dtype=dtype if dtype in _DTYPE_BYTES else None,
    )
