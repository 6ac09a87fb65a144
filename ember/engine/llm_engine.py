"""The engine: the composition root of one serving instance, and its step.

    step():  proposals = speculator.propose(running)     token trees, or nothing
             batch     = scheduler.schedule(proposals)   plain data, KV copies included
             out       = runner.run(batch)               logits rows
             samples   = sampler.sample(batch, out, ..)  plain rows and tree verification
             updated   = scheduler.update(batch, ..)     appends, stops, frees
             -> output processor: detokenize, stop strings (back to the scheduler), outputs

The engine wires these calls and never writes request state itself.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import torch

from ember.config import EngineConfig
from ember.core.batch import Batch
from ember.core.request import Request
from ember.core.sampling import Sampler, make_generator
from ember.core.sampling_params import SamplingParams
from ember.distributed.layout import ParallelLayout
from ember.engine.chunking import AdaptiveBudget
from ember.engine.migration import RequestSnapshot, export_requests, import_requests
from ember.engine.output_processor import OutputProcessor, RequestGroup, SequenceState
from ember.engine.outputs import RequestOutput
from ember.engine.scheduler import Scheduler
from ember.errors import InvalidInputError
from ember.kvcache.factory import make_kv_cache_manager
from ember.models.loader import load_model
from ember.models.tokenizer import IncrementalDetokenizer
from ember.runner.base import Runner
from ember.runner.factory import load_for_layout, make_runner
from ember.runner.latency import load_latency_model
from ember.runner.model_runner import kv_bytes_per_block
from ember.speculative.speculator import Speculator, build_speculator
from ember.zoo import resolve_model

PromptType = str | list[int] | dict[str, Any]


class LLMEngine:
    def __init__(self, config: EngineConfig, *, rank_launcher=None) -> None:
        """``rank_launcher``: how a tensor/pipeline-parallel engine's ranks start
        (``ember.distributed.executor.RankLauncher``; default: child processes here)."""
        self.config = config
        loaded, dtype = load_for_layout(
            resolve_model(config.model), dtype=config.dtype, device=config.device, layout=config.parallel
        )
        self.arch = loaded.config
        self.tokenizer = loaded.tokenizer
        self.generation_config = loaded.generation_config
        self.eos_token_ids = frozenset(loaded.eos_token_ids)
        self.device = torch.device(config.device)
        self.max_model_len = min(
            config.scheduler.max_model_len or self.arch.max_position_embeddings,
            self.arch.max_position_embeddings,
        )
        num_blocks = self._num_kv_blocks(dtype)
        self.runner: Runner = make_runner(
            loaded,
            layout=config.parallel,
            num_blocks=num_blocks,
            block_size=config.cache.block_size,
            dtype=dtype,
            device=config.device,
            attention_backend=config.attention_backend,
            compile=config.compile,
            launcher=rank_launcher,
        )
        scheduler_config = dataclasses.replace(config.scheduler, max_model_len=self.max_model_len)
        self.latency_model = load_latency_model(
            config.latency_model,
            self.runner,
            self.arch,
            str(loaded.path),
            max_model_len=self.max_model_len,
            max_tokens=scheduler_config.max_num_batched_tokens,
            max_seqs=scheduler_config.max_num_seqs,
        )
        self.kv_cache = make_kv_cache_manager(
            config.cache, num_blocks=num_blocks, recompute_cost=self.latency_model.recompute_cost
        )
        self.scheduler = Scheduler(scheduler_config, self.kv_cache, budget_fn=self._budget_fn(scheduler_config))
        self.speculator: Speculator | None = None
        if config.speculative.enabled:
            self.speculator = build_speculator(
                config.speculative,
                draft_runners=self._draft_runners(num_blocks),
                max_model_len=self.max_model_len,
                seed=config.seed,
            )
        self.sampler = Sampler(verifier=self.speculator)
        self.outputs = OutputProcessor(stop=self.scheduler.stop)
        self._seed_rng = torch.Generator().manual_seed(config.seed)
        self._ids = itertools.count()
        self.last_batch: Batch | None = None  # what the last step ran (for callers that time steps)

    # ----------------------------------------------------------------- requests
    def add_request(
        self,
        request_id: str | None,
        prompt: PromptType,
        params: SamplingParams | None = None,
        *,
        arrival_time: float | None = None,
    ) -> str:
        params = params or SamplingParams()
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self.outputs.groups:
            raise InvalidInputError(f"request id {request_id!r} is already in use", param="request_id")
        prompt_text, prompt_ids = self._process_prompt(prompt)
        self._validate(prompt_ids, params)
        group = RequestGroup(request_id, prompt_text, prompt_ids)
        if arrival_time is not None:
            group.arrival_time = arrival_time
        for index in range(params.n):
            request = Request(
                request_id=request_id if params.n == 1 else f"{request_id}#{index}",
                prompt_token_ids=list(prompt_ids),
                sampling_params=params,
                eos_token_ids=self.eos_token_ids,
                arrival_time=group.arrival_time,
                generator=self._generator(params, index),
            )
            detokenizer = None
            if self.tokenizer is not None:
                detokenizer = IncrementalDetokenizer(
                    self.tokenizer, prompt_ids, skip_special_tokens=params.skip_special_tokens
                )
            logprobs = [] if params.logprobs is not None else None
            group.sequences.append(SequenceState(request, index, detokenizer, logprobs=logprobs))
        self.outputs.add(group)
        for seq in group.sequences:
            self.scheduler.add(seq.request)
        return request_id

    def abort_request(self, request_id: str) -> None:
        group = self.outputs.remove(request_id)
        if group is not None:
            for seq in group.sequences:
                self.scheduler.abort(seq.request.request_id)
            self._release(group)

    def export_requests(
        self, request_ids: list[str] | None = None, *, with_kv: bool = True, remove: bool = True
    ) -> list[RequestSnapshot]:
        """Take unfinished requests out (all by default) as snapshots for another engine of
        the same model (``ember.engine.migration``); ``remove=False`` checkpoints them
        instead. Call between steps."""
        return export_requests(self, request_ids, with_kv=with_kv, remove=remove)

    def import_requests(self, snapshots: list[RequestSnapshot]) -> list[str]:
        """Continue exported requests here, each at its next token."""
        return import_requests(self, snapshots)

    def has_unfinished_requests(self) -> bool:
        return bool(self.outputs.groups)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.outputs.groups)

    # --------------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the outputs of requests that progressed."""
        proposals = self.speculator.propose(self.scheduler.running) if self.speculator is not None else None
        batch = self.last_batch = self.scheduler.schedule(proposals)
        if batch.is_empty:
            return []
        out = self.runner.run(batch)
        samples = self.sampler.sample(batch, out, self.scheduler.requests)
        updated = self.scheduler.update(batch, samples.token_ids)
        outputs, finished = self.outputs.process(updated, samples, out.prompt_logits)
        for group in finished:
            self._release(group)
        return outputs

    def close(self) -> None:
        """Stop the tensor/pipeline worker processes, if any (idempotent)."""
        self.runner.close()
        if self.speculator is not None:
            for runner in self._drafts:
                runner.close()

    def check_integrity(self) -> None:
        self.scheduler.check_integrity()

    # ---------------------------------------------------------------- internals
    def _release(self, group: RequestGroup) -> None:
        if self.speculator is not None:
            for seq in group.sequences:
                self.speculator.release(seq.request.request_id)

    def _generator(self, params: SamplingParams, index: int) -> torch.Generator | None:
        if params.is_greedy:
            return None
        seed = (
            params.seed + index
            if params.seed is not None
            else int(torch.randint(0, 2**62, (), generator=self._seed_rng))
        )
        return make_generator(seed, self.device)

    def _budget_fn(self, config) -> AdaptiveBudget | None:
        if config.chunking != "adaptive":
            return None
        target_s = (config.target_step_ms or 0) / 1e3 or self.latency_model.step_time(config.max_num_batched_tokens)
        return AdaptiveBudget(
            model=self.latency_model,
            target_s=target_s,
            max_tokens=config.max_num_batched_tokens,
            min_chunk=self.config.cache.block_size,
        )

    def _draft_runners(self, num_blocks: int) -> list[Runner]:
        """One single-process runner per draft model the speculative config names."""
        self._drafts: list[Runner] = []
        for name in self.config.speculative.draft_models:
            draft = load_model(resolve_model(name), dtype=self.config.dtype, device=self.config.device)
            if draft.config.vocab_size != self.arch.vocab_size:
                raise InvalidInputError(
                    f"speculative model {name!r} has vocabulary size {draft.config.vocab_size}, the "
                    f"target {self.arch.vocab_size}: a draft must share the target's tokenizer",
                    param="speculative_models",
                )
            self._drafts.append(
                make_runner(
                    draft,
                    layout=ParallelLayout(),
                    num_blocks=num_blocks,
                    block_size=self.config.cache.block_size,
                    dtype=next(draft.module.parameters()).dtype,
                    device=self.config.device,
                    attention_backend=self.config.attention_backend,
                )
            )
        return self._drafts

    def _process_prompt(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                return prompt.get("prompt"), self._check_ids(ids)
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise InvalidInputError("a prompt dict needs 'prompt' or 'prompt_token_ids'", param="prompt")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidInputError(
                    "this model has no tokenizer files; pass {'prompt_token_ids': [...]} instead of text",
                    param="prompt",
                )
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)):
            return None, self._check_ids(prompt)
        raise InvalidInputError(f"unsupported prompt type {type(prompt).__name__}", param="prompt")

    def _check_ids(self, ids) -> list[int]:
        if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise InvalidInputError("prompt_token_ids must be a list of integers", param="prompt")
        bad = [t for t in ids if not 0 <= t < self.arch.vocab_size]
        if bad:
            raise InvalidInputError(
                f"token id {bad[0]} is outside the vocabulary [0, {self.arch.vocab_size})", param="prompt"
            )
        return list(ids)

    def _validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if not prompt_ids:
            raise InvalidInputError("the prompt is empty", param="prompt")
        if len(prompt_ids) >= self.max_model_len:
            raise InvalidInputError(
                f"the prompt has {len(prompt_ids)} tokens but the context length (max_model_len) "
                f"is {self.max_model_len}; it must leave room for at least one new token",
                param="prompt",
            )
        needed = -(-(len(prompt_ids) + 1) // self.config.cache.block_size)
        if needed > self.kv_cache.num_blocks:
            raise InvalidInputError(
                f"the prompt needs {needed} KV blocks but the cache has {self.kv_cache.num_blocks}; "
                "raise num_kv_blocks or kv_cache_memory_gb",
                param="prompt",
            )

    def _num_kv_blocks(self, dtype: torch.dtype) -> int:
        cache = self.config.cache
        if cache.num_kv_blocks is not None:
            return cache.num_kv_blocks
        per_block = kv_bytes_per_block(self.arch, cache.block_size, dtype)
        by_memory = int(cache.kv_cache_memory_gb * 2**30 // per_block)
        # NOTE: more than every sequence at full length can ever use is wasted memory.
        blocks_per_seq = -(-self.max_model_len // cache.block_size)
        by_demand = self.config.scheduler.max_num_seqs * blocks_per_seq
        num_blocks = min(by_memory, by_demand)
        if num_blocks < blocks_per_seq:
            raise InvalidInputError(
                f"kv_cache_memory_gb={cache.kv_cache_memory_gb} holds {num_blocks} blocks, "
                f"fewer than one sequence of max_model_len={self.max_model_len} needs ({blocks_per_seq})",
                param="kv_cache_memory_gb",
            )
        return num_blocks
