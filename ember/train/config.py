"""What a training run is: the model shape, the optimization settings, and the recipe that
names both. Frozen keyword-only dataclasses; ``__post_init__`` names a bad field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("bf16", "fp32")


def _doc(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


def _check_positive(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name}={value!r} must be positive")


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """A Llama decoder's shape; the vocabulary size comes from the tokenizer."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self):
        _check_positive(
            self,
            (
                "hidden_size",
                "num_layers",
                "num_heads",
                "num_kv_heads",
                "intermediate_size",
                "max_position_embeddings",
                "rope_theta",
                "norm_eps",
                "init_std",
            ),
        )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def hf_config(self, *, vocab_size: int, bos_token_id: int, eos_token_id: int) -> dict:
        """The ``config.json`` of this shape (HF ``LlamaForCausalLM``)."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "pad_token_id": eos_token_id,
            "torch_dtype": "bfloat16",
        }

    def num_params(self, vocab_size: int) -> int:
        """Parameter count (embeddings included, counted once when tied)."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        per_layer = h * (h + 2 * kv) + h * h + 3 * h * self.intermediate_size + 2 * h
        embed = vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embed + h


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimization, data and bookkeeping settings of a run (each is an ``ember train`` flag)."""

    seq_len: int = _doc("tokens per training sequence", 1024)
    batch_size: int = _doc("sequences per micro-batch", 8)
    grad_accum: int = _doc("micro-batches per optimizer step", 1)
    max_steps: int = _doc("optimizer steps (the cosine schedule ends here)", 1000)
    lr: float = _doc("peak learning rate", 2e-3)
    min_lr_ratio: float = _doc("final learning rate as a fraction of --lr", 0.1)
    warmup_steps: int = _doc("linear warmup steps", 50)
    weight_decay: float = _doc("AdamW weight decay (matrices only)", 0.1)
    beta1: float = _doc("AdamW beta1", 0.9)
    beta2: float = _doc("AdamW beta2", 0.95)
    grad_clip: float = _doc("max gradient norm; 0 = no clipping", 1.0)
    precision: str = _doc("bf16 (autocast; fp32 master weights) or fp32", "bf16")
    compile: bool = _doc("torch.compile the loss (slow start, faster steps)", False)
    eval_interval: int = _doc("steps between validations; 0 = only at the end", 100)
    eval_tokens: int = _doc("validation tokens per evaluation", 32768)
    checkpoint_interval: int = _doc("steps between checkpoints; 0 = only at the end", 100)
    log_interval: int = _doc("steps between lines in metrics.jsonl", 10)
    seed: int = _doc("seed of the initialization and the data order", 0)
    vocab_size: int = _doc("tokenizer vocabulary size (drafts must match the target)", 8192)
    val_fraction: float = _doc("fraction of corpus files held out for validation", 0.02)
    distill_alpha: float = _doc("weight of the KL to --distill-from's distribution", 0.5)
    distill_temperature: float = _doc("softmax temperature of distillation", 1.0)

    def __post_init__(self):
        _check_positive(
            self,
            (
                "seq_len",
                "batch_size",
                "grad_accum",
                "max_steps",
                "lr",
                "eval_tokens",
                "log_interval",
                "vocab_size",
                "distill_temperature",
            ),
        )
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative integer")
        for name in ("min_lr_ratio", "distill_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be in [0, 1]")
        for name in ("beta1", "beta2", "val_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"weight_decay={self.weight_decay} and grad_clip={self.grad_clip} must be non-negative")
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be below max_steps={self.max_steps}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of {PRECISIONS}")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size * self.grad_accum


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A named model of the family: its shape and how it is trained."""

    name: str
    description: str
    model: ModelShape
    train: TrainConfig

    def __post_init__(self):
        if self.train.seq_len > self.model.max_position_embeddings:
            raise ValueError(
                f"seq_len={self.train.seq_len} exceeds max_position_embeddings={self.model.max_position_embeddings}"
            )

    def replace_train(self, **overrides: Any) -> Recipe:
        """This recipe with some training settings changed (validated)."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **overrides))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        return cls(
            name=data["name"],
            description=data["description"],
            model=ModelShape(**data["model"]),
            train=TrainConfig(**data["train"]),
        )
