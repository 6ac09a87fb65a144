"""The engine: glue between scheduler, model runner, sampler and output processing.

    step():  scheduler.schedule() -> Batch -> runner.run(batch) -> logits rows
             -> sampler -> scheduler.update(...) -> detokenize, stop strings -> RequestOutputs
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Union

import torch

from ember.config import EngineConfig
from ember.distributed.executor import DistributedExecutor
from ember.distributed.layout import ParallelLayout
from ember.distributed.sharded_loader import load_checkpoint_info
from ember.engine.output_processor import RequestGroup, SequenceState
from ember.engine.outputs import RequestOutput
from ember.engine.request import Request, RequestStatus
from ember.engine.sampler import Sampler, SamplingState, make_generator, prompt_logprobs
from ember.engine.scheduler import Scheduler, SchedulerConfig
from ember.errors import InvalidInputError
from ember.engine.chunking import AdaptiveBudget
from ember.kvcache.profiler import load_latency_model
from ember.kvcache.factory import make_kv_cache_manager
from ember.models.loader import load_model
from ember.models.tokenizer import IncrementalDetokenizer
from ember.runner.model_runner import ModelRunner, kv_bytes_per_block
from ember.sampling_params import SamplingParams
from ember.zoo import resolve_model

PromptType = Union[str, list[int], dict[str, Any]]


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        layout = ParallelLayout(config.tensor_parallel_size, config.pipeline_parallel_size)
        if layout.is_distributed:
            # NOTE: the engine process holds no weights; each rank worker loads its shard.
            loaded, dtype = load_checkpoint_info(resolve_model(config.model), dtype=config.dtype, device=config.device)
            layout.check_model(loaded.config)
        else:
            loaded = load_model(resolve_model(config.model), dtype=config.dtype, device=config.device)
            dtype = next(loaded.module.parameters()).dtype
        self.model = loaded.module  # None when distributed
        self.arch = loaded.config
        self.tokenizer = loaded.tokenizer
        self.generation_config = loaded.generation_config
        self.device = torch.device(config.device)
        self.max_model_len = min(
            config.max_model_len or self.arch.max_position_embeddings,
            self.arch.max_position_embeddings,
        )
        num_blocks = self._num_kv_blocks(dtype)
        if layout.is_distributed:
            self.runner = DistributedExecutor(
                loaded.path,
                layout,
                num_blocks=num_blocks,
                block_size=config.block_size,
                dtype=dtype,
                device=config.device,
                attention_backend=config.attention_backend,
            )
        else:
            self.runner = ModelRunner(
                self.model,
                self.arch,
                num_blocks=num_blocks,
                block_size=config.block_size,
                dtype=dtype,
                device=self.device,
                attention_backend=config.attention_backend,
                compile=config.compile,
            )
        self.latency_model = load_latency_model(config, self.runner, self.arch, str(loaded.path), self.max_model_len)
        self.kv_cache = make_kv_cache_manager(
            config.cache_policy if config.enable_prefix_caching else "none",
            num_blocks=num_blocks,
            block_size=config.block_size,
            latency_model=self.latency_model,
        )
        budget_fn = None
        if config.chunking == "adaptive":
            target_s = (config.target_step_ms or 0) / 1e3 or self.latency_model.step_time(config.max_num_batched_tokens)
            budget_fn = AdaptiveBudget(
                model=self.latency_model,
                target_s=target_s,
                max_tokens=config.max_num_batched_tokens,
                min_chunk=config.block_size,
            )
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                max_model_len=self.max_model_len,
                enable_chunked_prefill=config.enable_chunked_prefill,
            ),
            self.kv_cache,
            budget_fn=budget_fn,
        )
        self.sampler = Sampler()
        self.speculator = None
        if config.speculative_models:
            from ember.spec.speculator import build_speculator

            self.speculator = build_speculator(config, vocab_size=self.arch.vocab_size, num_blocks=num_blocks,
                                               max_model_len=self.max_model_len)  # fmt: skip
        self.eos_token_ids = frozenset(loaded.eos_token_ids)
        self._groups: dict[str, RequestGroup] = {}
        self._sequences: dict[str, tuple[RequestGroup, SequenceState]] = {}
        self._seed_rng = torch.Generator().manual_seed(config.seed)
        self._ids = itertools.count()

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
        if request_id in self._groups:
            raise InvalidInputError(f"request id {request_id!r} is already in use", param="request_id")
        prompt_text, prompt_ids = self._process_prompt(prompt)
        self._validate(prompt_ids, params)
        group = RequestGroup(request_id, prompt_text, prompt_ids)
        if arrival_time is not None:
            group.arrival_time = arrival_time
        for index in range(params.n):
            seq_id = request_id if params.n == 1 else f"{request_id}#{index}"
            request = Request(
                request_id=seq_id,
                prompt_token_ids=list(prompt_ids),
                sampling_params=params,
                eos_token_ids=self.eos_token_ids,
                arrival_time=group.arrival_time,
            )
            seed = None if params.seed is None else params.seed + index
            generator = None
            if not params.is_greedy:
                if seed is None:
                    seed = int(torch.randint(0, 2**62, (), generator=self._seed_rng))
                generator = make_generator(seed, self.device)
            sampling = SamplingState(
                params=params,
                generator=generator,
                prompt_token_ids=request.prompt_token_ids,
                output_token_ids=request.output_token_ids,
                eos_token_ids=self.eos_token_ids,
            )
            detokenizer = None
            if self.tokenizer is not None:
                detokenizer = IncrementalDetokenizer(
                    self.tokenizer, prompt_ids, skip_special_tokens=params.skip_special_tokens
                )
            seq = SequenceState(
                request, index, sampling, detokenizer, logprobs=[] if params.logprobs is not None else None
            )
            group.sequences.append(seq)
            self._sequences[seq_id] = (group, seq)
            self.scheduler.add(request)
        self._groups[request_id] = group
        return request_id

    def abort_request(self, request_id: str) -> None:
        group = self._groups.pop(request_id, None)
        if group is None:
            return
        for seq in group.sequences:
            self.scheduler.abort(seq.request.request_id)
            self._sequences.pop(seq.request.request_id, None)
            if self.speculator is not None:
                self.speculator.release(seq.request.request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self._groups)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._groups)

    # --------------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the outputs of requests that progressed."""
        trees = self._propose() if self.speculator is not None else None
        batch = self.scheduler.schedule(trees)
        if batch.is_empty:
            return []
        result = self.runner.run(batch)
        states = [self._sequences[rid][1].sampling for rid in result.sample_ids]
        sampled = self.sampler(result.logits, states)
        for rid, (first_pos, logits) in result.prompt_logits.items():
            self._record_prompt_logprobs(rid, first_pos, logits)
        token_of: dict[str, int | list[int]] = dict(zip(result.sample_ids, sampled.token_ids))
        logprobs_of = dict(zip(result.sample_ids, sampled.logprobs))
        if result.tree_logits:
            token_of.update(self._verify(batch, trees, result.tree_logits))
        now = time.monotonic()
        num_before = {
            item.request_id: self._sequences[item.request_id][1].request.num_output_tokens
            for item in batch.requests
            if item.request_id in self._sequences
        }
        touched: dict[str, RequestGroup] = {}
        for request in self.scheduler.update(batch, token_of):
            group, seq = self._sequences[request.request_id]
            group.first_token_time = group.first_token_time or now
            request.first_token_time = request.first_token_time or now
            first_new = num_before[request.request_id]
            for k, token_id in enumerate(request.output_token_ids[first_new:]):
                stop = seq.add_token(token_id, logprobs_of.get(request.request_id))
                if stop is not None:
                    # NOTE: a stop string inside a speculated run drops the tokens after it
                    # (and wins over a stop those tokens hit: max_tokens, EOS).
                    dropped = len(request.output_token_ids) - (first_new + k + 1)
                    del request.output_token_ids[first_new + k + 1 :]
                    if not request.is_finished:
                        self.scheduler.finish(request, RequestStatus.FINISHED_STOPPED, stop_reason=stop)
                    elif dropped:
                        request.status, request.stop_reason = RequestStatus.FINISHED_STOPPED, stop
                    break
            if request.is_finished:
                seq.finish()
            touched[group.request_id] = group
        outputs = []
        for group in touched.values():
            if group.finished:
                group.finished_time = now
                self._release(group)
            outputs.append(group.to_output())
        return outputs

    def close(self) -> None:
        """Stop the tensor/pipeline worker processes, if any (idempotent)."""
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def check_integrity(self) -> None:
        self.scheduler.check_integrity()

    # ---------------------------------------------------------------- internals
    def _release(self, group: RequestGroup) -> None:
        self._groups.pop(group.request_id, None)
        for seq in group.sequences:
            self._sequences.pop(seq.request.request_id, None)
            if self.speculator is not None:
                self.speculator.release(seq.request.request_id)

    def _propose(self) -> dict:
        sampling = {rid: seq.sampling for rid, (_, seq) in self._sequences.items()}
        return self.speculator.propose(self.scheduler.running, sampling)

    def _verify(self, batch, trees: dict, tree_logits: dict) -> dict[str, list[int]]:
        """Verify the step's trees and commit the accepted paths' KV; tokens per request."""
        items = [item for item in batch.requests if item.tree is not None and item.request_id in self._sequences]
        sampling = {item.request_id: self._sequences[item.request_id][1].sampling for item in items}
        verified = self.speculator.verify(items, trees, tree_logits, sampling)
        moves = []
        for item in items:
            moves += self.speculator.commit_moves(item, trees[item.request_id], verified[item.request_id])
        self.runner.copy_kv(moves)
        return {rid: v.token_ids for rid, v in verified.items()}

    def _record_prompt_logprobs(self, seq_id: str, first_pos: int, logits: torch.Tensor) -> None:
        group, seq = self._sequences[seq_id]
        if seq.index != 0:
            return
        request = seq.request
        n_prompt = request.num_prompt_tokens
        rows = logits[: max(0, n_prompt - first_pos - 1)]
        targets = request.prompt_token_ids[: first_pos + 1 + rows.shape[0]]
        chunk = prompt_logprobs(rows, targets[first_pos:], request.sampling_params.prompt_logprobs)
        if group.prompt_logprobs is None:
            group.prompt_logprobs = [None]
        if len(group.prompt_logprobs) == first_pos + 1:  # NOTE: not again after preemption
            group.prompt_logprobs.extend(chunk[1:])

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
        needed = -(-(len(prompt_ids) + 1) // self.config.block_size)
        if needed > self.kv_cache.num_blocks:
            raise InvalidInputError(
                f"the prompt needs {needed} KV blocks but the cache has {self.kv_cache.num_blocks}; "
                "raise num_kv_blocks or kv_cache_memory_gb",
                param="prompt",
            )

    def _num_kv_blocks(self, dtype: torch.dtype) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        per_block = kv_bytes_per_block(self.arch, self.config.block_size, dtype)
        by_memory = int(self.config.kv_cache_memory_gb * 2**30 // per_block)
        # NOTE: more than every sequence at full length can ever use is wasted memory.
        blocks_per_seq = -(-self.max_model_len // self.config.block_size)
        by_demand = self.config.max_num_seqs * blocks_per_seq
        num_blocks = min(by_memory, by_demand)
        if num_blocks < blocks_per_seq:
            raise InvalidInputError(
                f"kv_cache_memory_gb={self.config.kv_cache_memory_gb} holds {num_blocks} blocks, "
                f"fewer than one sequence of max_model_len={self.max_model_len} needs ({blocks_per_seq})",
                param="kv_cache_memory_gb",
            )
        return num_blocks
