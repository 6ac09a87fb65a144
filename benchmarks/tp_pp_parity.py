"""Distributed (tensor/pipeline parallel) vs one process on the same device: greedy tokens
and prompt logits. Used by benchmarks/tp_pp_gpu.sh; runs on CPU too (--device cpu).

    python benchmarks/tp_pp_parity.py --device cuda --tp 2 --pp 1
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from ember import LLM, SamplingParams
from ember.bench.offline import write_bench_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--model", default=None, help="checkpoint (default: a random ~46M Llama)")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--atol", type=float, default=1e-3)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or str(write_bench_checkpoint(Path(tmp) / "bench-llama"))
        rng = random.Random(0)
        prompts = [[rng.randrange(3, 8000) for _ in range(rng.randint(8, 96))] for _ in range(args.num_prompts)]
        params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True, prompt_logprobs=1)
        options = dict(dtype="float32", device=args.device, max_num_batched_tokens=128, latency_model="analytic")
        results = {}
        for name, parallel in (
            ("single", {}),
            ("distributed", dict(tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp)),
        ):
            start = time.perf_counter()
            with LLM(path, **options, **parallel) as llm:
                outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
            results[name] = outputs
            print(f"{name}: {time.perf_counter() - start:.1f} s (including start-up)")
    same_tokens = all(
        a.outputs[0].token_ids == b.outputs[0].token_ids for a, b in zip(results["single"], results["distributed"])
    )
    worst = 0.0
    for a, b in zip(results["single"], results["distributed"]):
        for x, y in zip(a.prompt_logprobs or [], b.prompt_logprobs or []):
            if x is not None and y is not None:  # TokenLogprobs of each prompt token
                worst = max(worst, abs(x.logprob - y.logprob))
    print(f"tp={args.tp} pp={args.pp}: greedy tokens equal: {same_tokens}; max |prompt logprob diff| {worst:.2e}")
    return 0 if same_tokens and worst <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main())
