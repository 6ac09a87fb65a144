"""Continuous batching under a per-step token budget.

Each step: running requests first (decodes and unfinished prefill chunks, oldest first),
then waiting requests while the budget, the sequence limit and free KV blocks allow. When a
running request cannot get a block, the newest running request is preempted: its blocks are
freed and it returns to the front of the queue to be recomputed (its tokens are kept, so
nothing is lost and greedy output is unchanged)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ember.engine.batch import Batch, ScheduledRequest
from ember.engine.request import Request, RequestStatus
from ember.kvcache.manager import KVCacheManager, PrefixHit


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool = True


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.append(request)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def schedule(self) -> Batch:
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        preempted: list[str] = []

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = self._num_new_tokens(request, budget)
            if num_new == 0:
                i += 1
                continue
            while not self.kv_cache.allocate_slots(request, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
            else:
                scheduled.append((request, num_new))
                budget -= num_new
                i += 1

        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            if preempted:
                break  # NOTE: no admissions in a step that had to preempt: memory is short.
            request = self.waiting[0]
            # NOTE: prompt logprobs need every prompt position run, so no prefix hit.
            if request.sampling_params.prompt_logprobs is None:
                hit = self.kv_cache.match_prefix(request)
            else:
                hit = PrefixHit([], 0)
            request.num_computed_tokens = 0
            remaining = request.num_tokens - hit.num_tokens
            num_new = min(remaining, budget)
            if num_new < remaining and not self.config.enable_chunked_prefill and scheduled:
                break
            if not self.config.enable_chunked_prefill:
                num_new = remaining
            if not self.kv_cache.allocate_slots(request, num_new, hit):
                break
            self.waiting.popleft()
            request.num_computed_tokens = hit.num_tokens
            if request.num_preemptions == 0:
                request.num_cached_prompt_tokens = hit.num_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            scheduled.append((request, num_new))
            budget -= num_new

        return Batch([self._to_scheduled(r, n) for r, n in scheduled], preempted)

    def update(self, batch: Batch, sampled: dict[str, int]) -> list[Request]:
        """Advance progress after a step; append sampled tokens and apply token-level stops.
        Returns the requests that got a new token (finished ones included)."""
        updated = []
        for item in batch.requests:
            request = self.requests.get(item.request_id)
            if request is None or request.is_finished:
                continue  # aborted while the step ran
            request.num_computed_tokens += item.num_tokens
            self.kv_cache.cache_computed_blocks(request)
            token_id = sampled.get(item.request_id)
            if token_id is None:
                continue
            request.output_token_ids.append(token_id)
            status = self._check_stop(request, token_id)
            if status is not None:
                self.finish(request, status)
            updated.append(request)
        return updated

    def finish(self, request: Request, status: RequestStatus, stop_reason=None) -> None:
        if request.is_finished:
            return
        request.status = status
        if stop_reason is not None:
            request.stop_reason = stop_reason
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv_cache.free(request)
        del self.requests[request.request_id]

    def abort(self, request_id: str) -> Request | None:
        request = self.requests.get(request_id)
        if request is not None:
            self.finish(request, RequestStatus.FINISHED_ABORTED)
        return request

    def check_integrity(self) -> None:
        self.kv_cache.check_integrity({r.request_id for r in self.running})
        assert len(self.running) + len(self.waiting) == len(self.requests)

    def _num_new_tokens(self, request: Request, budget: int) -> int:
        remaining = request.num_tokens - request.num_computed_tokens
        if not self.config.enable_chunked_prefill and remaining > budget:
            return 0 if budget < self.config.max_num_batched_tokens else remaining
        return min(remaining, budget)

    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request)
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _check_stop(self, request: Request, token_id: int) -> RequestStatus | None:
        params = request.sampling_params
        can_stop = request.num_output_tokens >= params.min_tokens
        if can_stop and not params.ignore_eos and token_id in request.eos_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if can_stop and token_id in params.stop_token_ids:
            request.stop_reason = token_id
            return RequestStatus.FINISHED_STOPPED
        max_tokens = params.max_tokens
        if max_tokens is not None and request.num_output_tokens >= max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.config.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _to_scheduled(self, request: Request, num_new: int) -> ScheduledRequest:
        start = request.num_computed_tokens
        end = start + num_new
        wants_prompt_logits = bool(request.sampling_params.prompt_logprobs is not None)
        return ScheduledRequest(
            request_id=request.request_id,
            token_ids=request.all_token_ids[start:end],
            start_position=start,
            block_ids=list(self.kv_cache.block_table(request.request_id)),
            sample=end == request.num_tokens,
            prompt_logits=wants_prompt_logits and start < request.num_prompt_tokens,
        )
