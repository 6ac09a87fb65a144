"""Engine configuration: frozen keyword-only dataclasses validated on construction."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, fields

from ember.errors import InvalidInputError


def _require(condition: bool, field_name: str, value, rule: str) -> None:
    if not condition:
        raise InvalidInputError(f"{field_name}={value!r}: {rule}", param=field_name)


CACHE_POLICIES = ("asym", "lru", "lfu", "hash", "none")


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    model: str = field(metadata={"help": "HF checkpoint directory or hub id"})
    dtype: str = field(default="auto", metadata={"help": "float32 | bfloat16 | float16 | auto"})
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu or cuda"})
    block_size: int = field(default=16, metadata={"help": "tokens per KV-cache block"})
    num_kv_blocks: int | None = field(
        default=None, metadata={"help": "KV-cache blocks (default: from --kv-cache-memory-gb)"}
    )
    kv_cache_memory_gb: float = field(
        default=2.0, metadata={"help": "memory for the KV cache when --num-kv-blocks is unset"}
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "context length (default: the model's)"}
    )
    max_num_seqs: int = field(default=128, metadata={"help": "requests running at once"})
    max_num_batched_tokens: int = field(
        default=2048, metadata={"help": "per-step token budget (prefill chunks + decodes)"}
    )
    enable_chunked_prefill: bool = field(
        default=True, metadata={"help": "split long prompts across steps"}
    )
    enable_prefix_caching: bool = field(
        default=True, metadata={"help": "reuse KV of shared prompt prefixes"}
    )
    cache_policy: str = field(
        default="asym",
        metadata={"help": "KV reuse and eviction: asym (AsymCache) | lru | lfu | hash (vLLM-style) | none"},
    )
    chunking: str = field(
        default="fixed",
        metadata={"help": "per-step token budget: fixed (--max-num-batched-tokens) | adaptive (latency model)"},
    )
    target_step_ms: float | None = field(
        default=None,
        metadata={"help": "adaptive chunking's step time (default: a full fixed-budget prefill step)"},
    )
    latency_model: str = field(
        default="auto",
        metadata={"help": "auto (profile once, cached on disk) | analytic (FLOP estimate) | PATH to a JSON"},
    )
    attention_backend: str = field(
        default="paged",
        metadata={"help": "paged (fast torch path) | reference (the torch oracle) | triton (GPU kernel; "
                          "needs triton, on CPU only under TRITON_INTERPRET=1)"},
    )
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the decoder layers and the decode attention (slower start, faster steps)"},
    )
    tensor_parallel_size: int = field(
        default=1, metadata={"help": "tensor-parallel ranks (one worker process each; splits heads, MLP and vocab)"}
    )
    pipeline_parallel_size: int = field(
        default=1, metadata={"help": "pipeline stages (one worker process per rank; splits the layers)"}
    )
    seed: int = field(default=0, metadata={"help": "seed for requests without their own"})
    speculative_models: str | tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "SpecInfer proposers, comma-separated: draft models (names or paths, "
                          "trees merged in this order) and/or 'ngram' (prompt lookup)"},
    )  # fmt: skip
    speculative_expansion: str | tuple[int, ...] = field(
        default=(1, 1, 1),
        metadata={"help": "draft-model tree: children per depth, e.g. 2,2,1 (1,1,... is a chain; the default "
                          "was fastest at batch 1 in `ember bench spec` on this CPU)"},
    )
    ngram_max_n: int = field(default=4, metadata={"help": "ngram proposer: longest n-gram matched"})
    ngram_num_tokens: int = field(default=5, metadata={"help": "ngram proposer: tokens proposed per match"})
    ngram_branches: int = field(default=1, metadata={"help": "ngram proposer: distinct continuations (a tree when > 1)"})
    speculative_max_batch_size: int = field(
        default=4, metadata={"help": "speculate only while at most this many requests run"}
    )

    def __post_init__(self) -> None:
        _require(bool(self.model), "model", self.model, "a model path or id is required")
        _require(self.block_size >= 1, "block_size", self.block_size, "must be >= 1")
        _require(
            self.num_kv_blocks is None or self.num_kv_blocks >= 1,
            "num_kv_blocks",
            self.num_kv_blocks,
            "must be >= 1",
        )
        _require(self.kv_cache_memory_gb > 0, "kv_cache_memory_gb", self.kv_cache_memory_gb, "must be > 0")
        _require(
            self.max_model_len is None or self.max_model_len >= 1,
            "max_model_len",
            self.max_model_len,
            "must be >= 1",
        )
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, value, "must be an integer >= 1")
        _require(self.max_num_seqs >= 1, "max_num_seqs", self.max_num_seqs, "must be >= 1")
        _require(
            self.max_num_batched_tokens >= 1,
            "max_num_batched_tokens",
            self.max_num_batched_tokens,
            "must be >= 1",
        )

        _require(
            self.cache_policy in CACHE_POLICIES,
            "cache_policy",
            self.cache_policy,
            f"must be one of {', '.join(CACHE_POLICIES)}",
        )
        _require(self.chunking in ("fixed", "adaptive"), "chunking", self.chunking, "must be 'fixed' or 'adaptive'")
        _require(
            self.target_step_ms is None or self.target_step_ms > 0, "target_step_ms", self.target_step_ms, "must be > 0"
        )
        _require(
            self.attention_backend in ("paged", "reference", "triton"),
            "attention_backend",
            self.attention_backend,
            "must be 'paged', 'reference' or 'triton'",
        )
        if self.attention_backend == "triton":
            _require(
                self.block_size & (self.block_size - 1) == 0,
                "block_size",
                self.block_size,
                "must be a power of two for the triton attention backend",
            )
            _require(
                importlib.util.find_spec("triton") is not None,
                "attention_backend",
                self.attention_backend,
                "needs the triton package (pip install triton)",
            )
        self._normalize_speculation()

    def _normalize_speculation(self) -> None:
        models = self.speculative_models
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",") if m.strip()]
        models = tuple(models or ())
        _require(all(isinstance(m, str) and m for m in models), "speculative_models", models, "must be names or paths")
        _require(len(set(models)) == len(models), "speculative_models", models, "lists a proposer twice")
        object.__setattr__(self, "speculative_models", models or None)
        expansion = self.speculative_expansion
        try:
            if isinstance(expansion, str):
                expansion = [int(k) for k in expansion.split(",")]
            expansion = tuple(int(k) for k in expansion)
        except (TypeError, ValueError):
            expansion = ()
        _require(
            bool(expansion) and all(k >= 1 for k in expansion) and len(expansion) <= 16,
            "speculative_expansion",
            self.speculative_expansion,
            "must be 1 to 16 positive widths, e.g. 2,2,1,1",
        )
        object.__setattr__(self, "speculative_expansion", expansion)
        for name in ("ngram_max_n", "ngram_num_tokens", "ngram_branches", "speculative_max_batch_size"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")

    @classmethod
    def from_kwargs(cls, model: str, **kwargs) -> "EngineConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise InvalidInputError(
                f"unknown engine option(s) {unknown}; valid options: {sorted(names - {'model'})}"
            )
        return cls(model=model, **kwargs)
