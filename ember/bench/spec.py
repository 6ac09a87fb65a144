"""`ember bench spec`: speculative inference side by side on the built-in pair.

Systems (all greedy, same prompts, same target): Ember incremental decoding; Ember with draft
chains, token trees, merged drafts and the n-gram proposer; transformers' ``generate`` alone
and with ``assistant_model`` (assisted generation, HF's speculative decoding; batch 1 only, as
HF supports). Every round runs every system once, in turn, so load on a shared machine hits
them alike; times are the median over rounds. Prompts are the openings of validation-split
stdlib files (text the models never trained on).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

import torch

from ember.core.sampling_params import SamplingParams
from ember.engine.llm import LLM
from ember.speculative.speculator import SpecStats

# name -> engine options (the speculative ones); the first is the baseline
DEFAULT_SYSTEMS: dict[str, dict] = {
    "incremental": {},
    "chain a 1-1-1-1": dict(speculative_models="ember-draft-a", speculative_expansion="1,1,1,1"),
    "chain b 1-1-1": dict(speculative_models="ember-draft-b", speculative_expansion="1,1,1"),
    "tree b 2-1-1": dict(speculative_models="ember-draft-b", speculative_expansion="2,1,1"),
    "tree b 2-2-1": dict(speculative_models="ember-draft-b", speculative_expansion="2,2,1"),
    "tree b 3-1-1-1": dict(speculative_models="ember-draft-b", speculative_expansion="3,1,1,1"),
    "merged a+b 1-1-1": dict(speculative_models="ember-draft-a,ember-draft-b", speculative_expansion="1,1,1"),
    "ngram": dict(speculative_models="ngram"),
    "ngram + chain b": dict(speculative_models="ngram,ember-draft-b", speculative_expansion="1,1,1"),
}


@dataclass(frozen=True, kw_only=True)
class SpecBenchConfig:
    model: str = "ember-tiny"
    draft: str = "ember-draft-b"  # the assistant of HF assisted generation
    dtype: str = "float32"
    num_prompts: int = 8
    prompt_len: int = 128
    output_len: int = 96
    batch_sizes: tuple[int, ...] = (1, 8)
    rounds: int = 3
    hf: bool = True
    systems: dict[str, dict] = field(default_factory=lambda: dict(DEFAULT_SYSTEMS))


def validation_prompts(tokenizer, count: int, length: int) -> list[list[int]]:
    """The first ``length`` tokens of the first ``count`` validation-split stdlib files that
    are long enough (deterministic: the corpus file list is sorted)."""
    from ember.train.corpus import build_corpus

    prompts = []
    for text in build_corpus().texts("val"):
        ids = tokenizer.encode(text)
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == count:
            break
    if len(prompts) < count:
        raise RuntimeError(f"only {len(prompts)} validation files have {length} tokens")
    return prompts


def _run_ember(llm: LLM, prompts, output_len: int, batch: int) -> tuple[float, list[list[int]]]:
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    tokens, start = [], time.perf_counter()
    for i in range(0, len(prompts), batch):
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts[i : i + batch]], params, use_tqdm=False)
        tokens += [o.outputs[0].token_ids for o in outs]
    return time.perf_counter() - start, tokens


def _run_hf(model, prompts, output_len: int, assistant=None) -> tuple[float, list[list[int]]]:
    tokens, start = [], time.perf_counter()
    with torch.no_grad():
        for p in prompts:  # NOTE: assisted generation is batch-1 only in transformers
            ids = torch.tensor([p])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=output_len,
                min_new_tokens=output_len,
                do_sample=False,
                assistant_model=assistant,
                pad_token_id=0,
            )
            tokens.append(out[0, len(p) :].tolist())
    return time.perf_counter() - start, tokens


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = total = 0
    for x, y in zip(a, b):
        n = min(len(x), len(y))
        k = next((i for i in range(n) if x[i] != y[i]), n)
        same, total = same + k, total + len(x)
    return same / total if total else 1.0


def run_spec_bench(cfg: SpecBenchConfig, log=print) -> dict:
    from ember.zoo import resolve_model

    systems = {
        name: LLM(
            model=cfg.model,
            dtype=cfg.dtype,
            max_num_seqs=max(cfg.batch_sizes),
            speculative_max_batch_size=max(cfg.batch_sizes),
            **opts,
        )
        for name, opts in cfg.systems.items()
    }
    baseline = next(iter(systems))
    prompts = validation_prompts(systems[baseline].engine.tokenizer, cfg.num_prompts, cfg.prompt_len)
    hf = {}
    if cfg.hf:
        import transformers

        dtype = getattr(torch, cfg.dtype)
        target = transformers.AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model), dtype=dtype).eval()
        draft = transformers.AutoModelForCausalLM.from_pretrained(resolve_model(cfg.draft), dtype=dtype).eval()
        hf = {"hf generate": (target, None), f"hf assisted ({cfg.draft})": (target, draft)}

    times: dict[tuple[str, int], list[float]] = {}
    outputs: dict[tuple[str, int], list[list[int]]] = {}
    stats: dict[tuple[str, int], dict] = {}
    for llm in systems.values():  # warm-up: first-call costs stay out of the timings
        _run_ember(llm, prompts[:1], 8, 1)
    for r in range(cfg.rounds):
        for batch in cfg.batch_sizes:
            for name, llm in systems.items():
                spec = llm.engine.speculator
                before = copy.deepcopy(spec.stats) if spec else None
                seconds, tokens = _run_ember(llm, prompts, cfg.output_len, batch)
                times.setdefault((name, batch), []).append(seconds)
                outputs[(name, batch)] = tokens
                if spec:
                    stats[(name, batch)] = _delta(before, spec.stats)
                log(f"round {r + 1}/{cfg.rounds} batch {batch} {name}: {seconds:.2f} s")
            if batch == 1:
                for name, (model, assistant) in hf.items():
                    seconds, tokens = _run_hf(model, prompts, cfg.output_len, assistant)
                    times.setdefault((name, 1), []).append(seconds)
                    outputs[(name, 1)] = tokens
                    log(f"round {r + 1}/{cfg.rounds} batch 1 {name}: {seconds:.2f} s")

    num_tokens = cfg.num_prompts * cfg.output_len
    rows = []
    for (name, batch), samples in times.items():
        seconds = statistics.median(samples)
        base = statistics.median(times[(baseline, batch)])
        s = stats.get((name, batch), {})
        rows.append(
            {
                "system": name,
                "batch": batch,
                "tok/s": round(num_tokens / seconds, 1),
                "speedup": round(base / seconds, 2),
                "tokens/step": round(s["tokens_per_step"], 2) if s else (1.0 if name == baseline else None),
                "draft ms/step": round(s["draft_ms_per_step"], 1) if s else None,
                "agreement": round(_agreement(outputs[(baseline, batch)], outputs[(name, batch)]), 4),
                "acceptance by depth": [round(a, 2) for a in s.get("acceptance_by_depth", [])],
                "seconds": [round(x, 3) for x in samples],
            }
        )
    return {"config": {k: v for k, v in cfg.__dict__.items()}, "num_tokens": num_tokens, "results": rows}


def _delta(before: SpecStats, after: SpecStats) -> dict:
    """What one run added to a speculator's counters."""
    trees = after.num_trees - before.num_trees
    steps = after.num_verify_steps - before.num_verify_steps
    if not trees:
        return {"tokens_per_step": 0.0, "draft_ms_per_step": 0.0, "acceptance_by_depth": []}
    return {
        "tokens_per_step": (after.num_emitted_tokens - before.num_emitted_tokens) / trees,
        "draft_ms_per_step": 1e3 * (after.draft_s - before.draft_s) / steps,
        "acceptance_by_depth": [(a - b) / trees for a, b in zip(after.accepted_by_depth, before.accepted_by_depth)],
    }


def plot_spec(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        sel = [r for r in rows if r["batch"] == batch]
        ax.barh(
            [r["system"] for r in sel],
            [r["speedup"] for r in sel],
            color=["#888" if r["system"].startswith("hf") else "#d9622b" for r in sel],
        )
        ax.axvline(1.0, color="k", lw=0.8)
        ax.invert_yaxis()
        ax.set_title(f"batch {batch}: speedup over Ember incremental (greedy)")
        ax.set_xlabel("speedup (x)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
