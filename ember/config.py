"""Engine configuration: nested, frozen, keyword-only dataclasses validated on construction.

``EngineConfig`` holds the model-level options and one section per component, each handed to
that component alone: ``cache`` (KV-cache manager), ``scheduler``, ``parallel`` (the
``ParallelLayout`` of tensor/pipeline ranks) and ``speculative``. Users and the CLI speak the
flat vLLM-style names (``--block-size``, ``--tensor-parallel-size``, ...):
``EngineConfig.from_kwargs`` sorts them into sections, and ``engine_options()`` lists every
flat option with its section, default and help, which is where the CLI flags come from.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Any

from ember.distributed.layout import ParallelLayout
from ember.errors import InvalidInputError


def _require(condition: bool, name: str, value, rule: str) -> None:
    if not condition:
        raise InvalidInputError(f"{name}={value!r}: {rule}", param=name)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


CACHE_POLICIES = ("asym", "lru", "lfu", "hash", "none")


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    block_size: int = field(default=16, metadata={"help": "tokens per KV-cache block"})
    num_kv_blocks: int | None = field(
        default=None, metadata={"help": "KV-cache blocks (default: from --kv-cache-memory-gb)"}
    )
    kv_cache_memory_gb: float = field(
        default=2.0, metadata={"help": "memory for the KV cache when --num-kv-blocks is unset"}
    )
    enable_prefix_caching: bool = field(default=True, metadata={"help": "reuse KV of shared prompt prefixes"})
    cache_policy: str = field(
        default="asym",
        metadata={"help": "KV reuse and eviction: asym (AsymCache) | lru | lfu | hash (vLLM-style) | none"},
    )

    def __post_init__(self) -> None:
        _require(_is_int(self.block_size) and self.block_size >= 1, "block_size", self.block_size, "must be >= 1")
        _require(
            self.num_kv_blocks is None or (_is_int(self.num_kv_blocks) and self.num_kv_blocks >= 1),
            "num_kv_blocks",
            self.num_kv_blocks,
            "must be >= 1",
        )
        _require(self.kv_cache_memory_gb > 0, "kv_cache_memory_gb", self.kv_cache_memory_gb, "must be > 0")
        _require(
            self.cache_policy in CACHE_POLICIES,
            "cache_policy",
            self.cache_policy,
            f"must be one of {', '.join(CACHE_POLICIES)}",
        )

    @property
    def effective_policy(self) -> str:
        """The policy the manager runs: ``none`` when prefix caching is off."""
        return self.cache_policy if self.enable_prefix_caching else "none"


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    max_num_seqs: int = field(default=128, metadata={"help": "requests running at once"})
    max_num_batched_tokens: int = field(
        default=2048, metadata={"help": "per-step token budget (prefill chunks + decodes)"}
    )
    max_model_len: int | None = field(default=None, metadata={"help": "context length (default: the model's)"})
    enable_chunked_prefill: bool = field(default=True, metadata={"help": "split long prompts across steps"})
    chunking: str = field(
        default="fixed",
        metadata={"help": "per-step token budget: fixed (--max-num-batched-tokens) | adaptive (latency model)"},
    )
    target_step_ms: float | None = field(
        default=None,
        metadata={"help": "adaptive chunking's step time (default: a full fixed-budget prefill step)"},
    )

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 1, name, value, "must be >= 1")
        _require(
            self.max_model_len is None or (_is_int(self.max_model_len) and self.max_model_len >= 1),
            "max_model_len",
            self.max_model_len,
            "must be >= 1",
        )
        _require(self.chunking in ("fixed", "adaptive"), "chunking", self.chunking, "must be 'fixed' or 'adaptive'")
        _require(
            self.target_step_ms is None or self.target_step_ms > 0, "target_step_ms", self.target_step_ms, "must be > 0"
        )


@dataclass(frozen=True, kw_only=True)
class SpeculativeConfig:
    models: tuple[str, ...] = field(
        default=(),
        metadata={
            "flag": "speculative_models",
            "type": str,
            "help": "SpecInfer proposers, comma-separated: draft models (names or paths, "
            "trees merged in this order) and/or 'ngram' (prompt lookup)",
        },
    )
    expansion: tuple[int, ...] = field(
        default=(1, 1, 1),
        metadata={
            "flag": "speculative_expansion",
            "type": str,
            "help": "draft-model tree: children per depth, e.g. 2,2,1 (1,1,... is a chain; the default "
            "was fastest at batch 1 in `ember bench spec` on this CPU)",
        },
    )
    ngram_max_n: int = field(default=4, metadata={"help": "ngram proposer: longest n-gram matched"})
    ngram_num_tokens: int = field(default=5, metadata={"help": "ngram proposer: tokens proposed per match"})
    ngram_branches: int = field(
        default=1, metadata={"help": "ngram proposer: distinct continuations (a tree when > 1)"}
    )
    max_batch_size: int = field(
        default=4,
        metadata={"flag": "speculative_max_batch_size", "help": "speculate only while at most this many requests run"},
    )

    def __post_init__(self) -> None:
        models = self.models
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",") if m.strip()]
        models = tuple(models or ())
        _require(all(isinstance(m, str) and m for m in models), "speculative_models", models, "must be names or paths")
        _require(len(set(models)) == len(models), "speculative_models", models, "lists a proposer twice")
        object.__setattr__(self, "models", models)
        expansion = self.expansion
        try:
            if isinstance(expansion, str):
                expansion = [int(k) for k in expansion.split(",")]
            expansion = tuple(int(k) for k in expansion)
        except (TypeError, ValueError):
            expansion = ()
        _require(
            bool(expansion) and all(k >= 1 for k in expansion) and len(expansion) <= 16,
            "speculative_expansion",
            self.expansion,
            "must be 1 to 16 positive widths, e.g. 2,2,1,1",
        )
        object.__setattr__(self, "expansion", expansion)
        for name in ("ngram_max_n", "ngram_num_tokens", "ngram_branches", "max_batch_size"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 1, _flag(SpeculativeConfig, name), value, "must be >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.models)

    @property
    def draft_models(self) -> tuple[str, ...]:
        """The proposers that are models (all but ``ngram``), in order."""
        return tuple(m for m in self.models if m != "ngram")


_PARALLEL_HELP = {
    "tensor_parallel_size": "tensor-parallel ranks (one worker process each; splits heads, MLP and vocab)",
    "pipeline_parallel_size": "pipeline stages (one worker process per rank; splits the layers)",
}


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    model: str = field(metadata={"help": "HF checkpoint directory or hub id"})
    dtype: str = field(
        default="auto",
        metadata={"help": "float32 | bfloat16 | float16 | auto (bf16 only where the hardware computes it natively)"},
    )
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu or cuda"})
    latency_model: str = field(
        default="auto",
        metadata={"help": "auto (profile once, cached on disk) | analytic (FLOP estimate) | PATH to a JSON"},
    )
    attention_backend: str = field(
        default="paged",
        metadata={
            "help": "paged (fast torch path) | reference (the torch oracle) | triton (GPU kernel; "
            "needs triton, on CPU only under TRITON_INTERPRET=1)"
        },
    )
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the decoder layers and the decode attention (slower start, faster steps)"},
    )
    seed: int = field(default=0, metadata={"help": "seed for requests without their own"})
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelLayout = field(default_factory=ParallelLayout)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)

    def __post_init__(self) -> None:
        _require(bool(self.model), "model", self.model, "a model path or id is required")
        _require(
            self.attention_backend in ("paged", "reference", "triton"),
            "attention_backend",
            self.attention_backend,
            "must be 'paged', 'reference' or 'triton'",
        )
        if self.attention_backend == "triton":
            block_size = self.cache.block_size
            _require(
                block_size & (block_size - 1) == 0,
                "block_size",
                block_size,
                "must be a power of two for the triton attention backend",
            )
            _require(
                importlib.util.find_spec("triton") is not None,
                "attention_backend",
                self.attention_backend,
                "needs the triton package (pip install triton)",
            )

    @classmethod
    def from_kwargs(cls, model: str, **options) -> EngineConfig:
        """Build from flat vLLM-style options (``block_size=32, tensor_parallel_size=2``)."""
        known = engine_options()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InvalidInputError(f"unknown engine option(s) {unknown}; valid options: {sorted(known)}")
        sections: dict[str | None, dict[str, Any]] = {}
        for flag, value in options.items():
            option = known[flag]
            sections.setdefault(option.section, {})[option.name] = value
        nested = {section: _SECTIONS[section](**values) for section, values in sections.items() if section is not None}
        return cls(model=model, **sections.get(None, {}), **nested)


@dataclass(frozen=True)
class EngineOption:
    """One flat engine option: ``flag`` (``block_size``) -> field ``name`` of ``section``."""

    flag: str
    section: str | None  # None: a field of EngineConfig itself
    name: str
    default: Any
    type: type
    help: str


_SECTIONS = {
    "cache": CacheConfig,
    "scheduler": SchedulerConfig,
    "parallel": lambda **kw: ParallelLayout(**kw),
    "speculative": SpeculativeConfig,
}


def _flag(cls, name: str) -> str:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.metadata.get("flag", name)


def engine_options() -> dict[str, EngineOption]:
    """Every flat option, by flag name, in a stable order (the CLI's)."""
    options: dict[str, EngineOption] = {}
    for f in dataclasses.fields(EngineConfig):
        if f.name in _SECTIONS or f.name == "model":
            continue
        options[f.name] = EngineOption(f.name, None, f.name, f.default, _base_type(f.type), f.metadata["help"])
    for section, cls in (("cache", CacheConfig), ("scheduler", SchedulerConfig), ("speculative", SpeculativeConfig)):
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("flag", f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            kind = f.metadata.get("type") or _base_type(f.type)
            options[flag] = EngineOption(flag, section, f.name, default, kind, f.metadata["help"])
    for name in ("tensor_parallel_size", "pipeline_parallel_size"):
        options[name] = EngineOption(name, "parallel", name, 1, int, _PARALLEL_HELP[name])
    return options


def _base_type(annotation) -> type:
    """``int | None`` -> int; annotations are strings under ``from __future__ import annotations``."""
    text = annotation if isinstance(annotation, str) else annotation.__name__
    first = text.split("|")[0].strip()
    return {"int": int, "float": float, "str": str, "bool": bool}.get(first, str)
