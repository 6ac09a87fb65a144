"""`ember bench offline`: Ember against `transformers.generate` on the same checkpoint,
dtype and machine, side by side in one run.

(a) throughput: many prompts of mixed lengths, a fixed number of new tokens each; HF gets
    them as one left-padded batch, as a user would write it.
(b) batch-1 decode: one prompt, tokens per second of the whole generate call.
"""

from __future__ import annotations

import functools
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ember.errors import InvalidInputError
from ember.zoo import resolve_model

# ~46M parameters: the Llama shape of the target in the engine issue.
BENCH_LLAMA = dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=12,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


@dataclass(frozen=True, kw_only=True)
class OfflineBenchConfig:
    model: str | None = None  # a checkpoint; None writes a random-weight BENCH_LLAMA
    dtype: str = "auto"  # resolved once per run (ember.models.loader.resolve_auto_dtype)
    num_prompts: int = 64
    min_prompt_len: int = 32
    max_prompt_len: int = 384
    output_len: int = 128
    batch1_prompt_len: int = 64
    compile: bool = True  # also run Ember with torch.compile
    seed: int = 0
    device: str = "cpu"
    tensor_parallel_size: int = 1  # > 1 (or pp > 1): also run Ember distributed, side by side
    pipeline_parallel_size: int = 1

    @property
    def distributed_name(self) -> str | None:
        if self.tensor_parallel_size * self.pipeline_parallel_size == 1:
            return None
        return f"ember-tp{self.tensor_parallel_size}-pp{self.pipeline_parallel_size}"


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise InvalidInputError(f"--dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def _check_dtype(name: str) -> None:
    if name != "auto":
        _torch_dtype(name)


def resolved_dtype_name(path: str, dtype: str, device: str) -> str:
    """``dtype`` as the concrete name every system runs in ("auto" resolved for ``path`` on
    ``device``), so that Ember and HF compare the same precision."""
    from ember.models.loader import resolve_checkpoint_dtype

    if dtype != "auto":
        return dtype
    return str(resolve_checkpoint_dtype(path, "auto", device)).removeprefix("torch.")


def write_bench_checkpoint(path: Path, seed: int = 0) -> Path:
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**BENCH_LLAMA))
    model.save_pretrained(path)
    return path


def make_prompts(cfg: OfflineBenchConfig, vocab_size: int) -> list[list[int]]:
    rng = random.Random(cfg.seed)
    return [
        [rng.randrange(3, vocab_size) for _ in range(rng.randint(cfg.min_prompt_len, cfg.max_prompt_len))]
        for _ in range(cfg.num_prompts)
    ]


def run_ember(
    path: str,
    dtype: str,
    prompts: list[list[int]],
    output_len: int,
    *,
    compile: bool = False,
    device: str = "cpu",
    **parallel,
) -> tuple[float, list[list[int]]]:
    from ember import LLM

    llm = LLM(path, dtype=dtype, compile=compile, device=device, **parallel)
    try:
        return _timed_generate(llm, prompts, output_len)
    finally:
        llm.close()


def _timed_generate(llm, prompts: list[list[int]], output_len: int) -> tuple[float, list[list[int]]]:
    from ember import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    # NOTE: warm-up covers the step shapes a run meets (several prefills, batched and
    # single decodes), so that compilation stays out of the timed part.
    warm = SamplingParams(max_tokens=4, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p[:16]} for p in prompts[:3]], warm)
    llm.generate({"prompt_token_ids": prompts[0][:8]}, warm)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    elapsed = time.perf_counter() - start
    return elapsed, [o.outputs[0].token_ids for o in outputs]


def run_hf(
    path: str, dtype: str, prompts: list[list[int]], output_len: int, *, device: str = "cpu"
) -> tuple[float, list[list[int]]]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype)).eval().to(device)
    width = max(len(p) for p in prompts)
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, as decoder-only generation requires
        input_ids[i, width - len(p) :] = torch.tensor(p)
        attention_mask[i, width - len(p) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        model.generate(input_ids[:1, -8:], max_new_tokens=4, min_new_tokens=4, **kwargs)
        start = time.perf_counter()
        out = model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=output_len, min_new_tokens=output_len, **kwargs
        )
        elapsed = time.perf_counter() - start
    return elapsed, out[:, width:].tolist()


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of new tokens equal up to each sequence's first disagreement (bf16 rounding
    differs between implementations, after which greedy paths may diverge)."""
    same = total = 0
    for x, y in zip(a, b):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        same, total = same + n, total + len(x)
    return same / max(total, 1)


def self_systems(cfg: OfflineBenchConfig):
    """The systems run side by side, HF last."""
    ember = functools.partial(run_ember, device=cfg.device)
    systems = [("ember", ember)]
    if cfg.compile:
        systems.append(("ember-compiled", functools.partial(ember, compile=True)))
    if cfg.distributed_name:
        parallel = dict(
            tensor_parallel_size=cfg.tensor_parallel_size, pipeline_parallel_size=cfg.pipeline_parallel_size
        )
        systems.append((cfg.distributed_name, functools.partial(ember, **parallel)))
    return systems + [("hf", functools.partial(run_hf, device=cfg.device))]


def run_offline_bench(cfg: OfflineBenchConfig, log=print) -> dict:
    _check_dtype(cfg.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = (
            resolve_model(cfg.model) if cfg.model else str(write_bench_checkpoint(Path(tmp) / "bench-llama", cfg.seed))
        )

        vocab = json.loads((Path(path) / "config.json").read_text())["vocab_size"]
        prompts = make_prompts(cfg, vocab)
        dtype = resolved_dtype_name(path, cfg.dtype, cfg.device)
        log(
            f"[bench offline] dtype: {dtype}" + (f" (from --dtype auto on {cfg.device})" if cfg.dtype == "auto" else "")
        )
        results = []
        for name, workload in (
            ("throughput", prompts),
            ("batch-1 decode", [prompts[0][: cfg.batch1_prompt_len]]),
        ):
            row = {"workload": name, "prompts": len(workload), "new tokens each": cfg.output_len}
            for system, runner in self_systems(cfg):
                log(f"[bench offline] {name}: {system} ...")
                elapsed, tokens = runner(path, dtype, workload, cfg.output_len)
                row[f"{system} s"] = elapsed
                row[f"{system} tok/s"] = sum(len(t) for t in tokens) / elapsed
                row[f"_{system}_tokens"] = tokens
            hf_tokens = row.pop("_hf_tokens")
            for system, _ in self_systems(cfg)[:-1]:
                row[f"{system} / hf"] = row[f"{system} tok/s"] / row["hf tok/s"]
                row[f"{system} agreement"] = agreement(row.pop(f"_{system}_tokens"), hf_tokens)
                rate, ratio = row[f"{system} tok/s"], row[f"{system} / hf"]
                log(f"[bench offline] {name}: {system} {rate:.1f} tok/s = {ratio:.2f}x hf")
            results.append(row)
    return {"config": {**cfg.__dict__, "resolved_dtype": dtype}, "results": results}
