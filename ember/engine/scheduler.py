"""Continuous batching under a per-step token budget.

Each step: running requests first (decodes and unfinished prefill chunks, oldest first),
then waiting requests while the budget, the sequence limit and free KV blocks allow. A
prefix-cache hit may come with holes (evicted KV inside the hit): they are scheduled first,
at their own positions, then the new tokens — possibly in the same step. When a running
request cannot get a block, the newest running request is preempted: its blocks are freed
and it returns to the front of the queue to be recomputed (its tokens are kept, so nothing
is lost and greedy output is unchanged).

Speculation: a decoding request handed a token tree runs the whole tree in its step (the tree
counts against the budget; a tree that does not fit falls back to a plain decode), and
``update`` then takes the tokens verification kept and queues the KV copies that move the
accepted path to its final slots; they ride in the next batch, before anything reads them.

The scheduler owns every request's state: the engine reports what was sampled (``update``)
and what the output processor decided (``stop`` at a stop string), never writes it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from ember.config import SchedulerConfig
from ember.core.batch import Batch, KVCopy, ScheduledRequest, SerializedTree
from ember.core.request import Request, RequestStatus
from ember.kvcache.interface import EMPTY_MATCH, BaseKVCacheManager

# running requests -> token budget for this step; see AdaptiveBudget
BudgetFn = Callable[[list[Request]], int]


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, kv_cache: BaseKVCacheManager, *, budget_fn: BudgetFn | None = None
    ) -> None:
        if config.max_model_len is None:
            raise ValueError("the scheduler needs a resolved max_model_len")
        self.config = config
        self.kv_cache = kv_cache
        self.budget_fn = budget_fn
        self.waiting: deque[Request] = deque()
        kv_cache.observe_queue(self.waiting)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self.num_recomputed_hole_tokens = 0
        self.num_tokens_run = 0
        self._pending_copies: list[KVCopy] = []  # from the last update, for the next batch

    def add(self, request: Request, *, front: bool = False) -> None:
        """Queue a request; ``front`` puts it before the others (one resumed from another
        engine was already in flight). Its tokens so far are computed again when it runs."""
        request.status, request.num_computed_tokens, request.pending_holes = RequestStatus.WAITING, 0, []
        self.requests[request.request_id] = request
        if front:
            self.waiting.appendleft(request)
        else:
            self.waiting.append(request)

    def adopt(self, request: Request, num_computed_tokens: int) -> list[int] | None:
        """Take a request in as running with the KV of its first ``num_computed_tokens``
        tokens about to be written by the caller to the returned block table (then
        ``cache_computed``). None, changing nothing, when the sequence limit or the free
        blocks do not allow it."""
        if len(self.running) >= self.config.max_num_seqs or not 0 < num_computed_tokens < request.num_tokens:
            return None
        request.num_computed_tokens, request.pending_holes = 0, []
        if not self.kv_cache.allocate_slots(request, num_computed_tokens):
            return None
        request.num_computed_tokens = num_computed_tokens
        request.status = RequestStatus.RUNNING
        self.requests[request.request_id] = request
        self.running.append(request)
        return list(self.kv_cache.block_table(request.request_id))

    def cache_computed(self, request: Request) -> None:
        """Offer the request's full computed blocks to the prefix cache (their KV is in)."""
        self.kv_cache.cache_computed_blocks(request)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def schedule(self, trees: Mapping[str, SerializedTree] | None = None) -> Batch:
        """``trees``: speculated continuations of decoding requests, serialized with the root
        (the last token) at its position ``num_tokens - 1``."""
        budget = self.budget_fn(self.running) if self.budget_fn else self.config.max_num_batched_tokens
        self._step_budget = budget
        scheduled: list[tuple[Request, list[tuple[int, int]]]] = []
        preempted: list[str] = []
        speculating: dict[str, SerializedTree] = {}

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            plan = self._plan(request, budget, is_first=not scheduled)
            if not plan:
                i += 1
                continue
            tree = trees.get(request.request_id) if trees else None
            if (
                tree is not None
                and 1 < tree.num_tokens <= budget
                and self._is_decode(request, plan)
                and tree.start_position == plan[0][0]
            ):
                tree_plan = [(tree.start_position, tree.kv_len)]  # storage of the tree's nodes
                # NOTE: speculation is optional: a tree gets blocks only if they are free now;
                # it never preempts anyone (itself included), the plain decode goes on instead.
                if self.kv_cache.allocate_slots(request, self._num_new(request, tree_plan)):
                    speculating[request.request_id] = tree
                    scheduled.append((request, tree_plan))
                    budget -= _count(tree_plan)
                    i += 1
                    continue
            while not self.kv_cache.allocate_slots(request, self._num_new(request, plan)):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                speculating.pop(victim.request_id, None)
                if victim is request:
                    break
            else:
                scheduled.append((request, plan))
                budget -= _count(plan)
                i += 1

        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            if preempted:
                break  # NOTE: no admissions in a step that had to preempt: memory is short.
            request = self.waiting[0]
            # NOTE: prompt logprobs need every prompt position run, so no prefix hit.
            if request.sampling_params.prompt_logprobs is None:
                match = self.kv_cache.match_prefix(request)
            else:
                match = EMPTY_MATCH
            request.num_computed_tokens = match.num_tokens
            request.pending_holes = match.holes
            plan = self._plan(request, budget, is_first=not scheduled)
            if not plan or not self.kv_cache.allocate_slots(request, self._num_new(request, plan), match):
                request.num_computed_tokens, request.pending_holes = 0, []
                break
            self.waiting.popleft()
            if request.num_preemptions == 0:
                request.num_cached_prompt_tokens = match.num_cached_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            scheduled.append((request, plan))
            budget -= _count(plan)

        batch = Batch([self._to_scheduled(r, plan, speculating.get(r.request_id)) for r, plan in scheduled], preempted)
        if not batch.is_empty and self._pending_copies:
            # NOTE: copies wait for a batch that runs: nothing reads KV in between.
            batch = Batch(batch.requests, batch.preempted_ids, tuple(self._pending_copies))
            self._pending_copies = []
        return batch

    def update(self, batch: Batch, sampled: Mapping[str, list[int]]) -> list[Request]:
        """Advance progress after a step; append sampled tokens and apply token-level stops.
        A plain item gets one token; a speculative item its accepted tokens, then the bonus
        token. Returns the requests that got new tokens (finished ones included)."""
        updated = []
        for item in batch.requests:
            request = self.requests.get(item.request_id)
            if request is None or request.is_finished:
                continue  # aborted while the step ran
            if item.tree is not None:
                self._update_speculated(request, item, sampled[item.request_id])
                updated.append(request)
                continue
            self._advance(request, item.ranges)
            self.kv_cache.cache_computed_blocks(request)
            tokens = sampled.get(item.request_id)
            if tokens is None:
                continue
            (token_id,) = tokens
            request.output_token_ids.append(token_id)
            status = self._check_stop(request, token_id)
            if status is not None:
                self.finish(request, status)
            updated.append(request)
        return updated

    def stop(self, request: Request, *, num_output_tokens: int, stop_reason: str) -> None:
        """The output processor found a stop string ending at output token
        ``num_output_tokens - 1``: drop the tokens after it and finish as stopped. A stop
        string inside a speculated run wins over a stop its later tokens hit (max_tokens,
        EOS); one on the very token that also hit such a stop leaves that reason."""
        if not 0 <= num_output_tokens <= request.num_output_tokens:
            raise ValueError(f"num_output_tokens={num_output_tokens} outside [0, {request.num_output_tokens}]")
        dropped = request.num_output_tokens - num_output_tokens
        del request.output_token_ids[num_output_tokens:]
        if not request.is_finished:
            self.finish(request, RequestStatus.FINISHED_STOPPED, stop_reason=stop_reason)
        elif dropped:
            request.status, request.stop_reason = RequestStatus.FINISHED_STOPPED, stop_reason

    def _update_speculated(self, request: Request, item: ScheduledRequest, tokens: list[int]) -> None:
        # NOTE: the root and the accepted nodes have KV at their final slots once the queued
        # copies run (before the next batch's tokens), so every appended token but the last
        # is computed. Tokens after a stop are dropped.
        self.num_tokens_run += item.num_tokens
        for src, dst in item.tree.kv_commit_moves(item.tree.accepted_nodes(tokens[:-1])):
            self._pending_copies.append(KVCopy.within(item.block_ids, self.kv_cache.block_size, src, dst))
        status = None
        for token_id in tokens:
            request.output_token_ids.append(token_id)
            status = self._check_stop(request, token_id)
            if status is not None:
                break
        request.num_computed_tokens = request.num_tokens - 1
        self.kv_cache.cache_computed_blocks(request)
        if status is not None:
            self.finish(request, status)

    @staticmethod
    def _is_decode(request: Request, plan: list[tuple[int, int]]) -> bool:
        return not request.pending_holes and plan == [(request.num_tokens - 1, request.num_tokens)]

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

    # ------------------------------------------------------------- internals
    def _plan(self, request: Request, budget: int, *, is_first: bool) -> list[tuple[int, int]]:
        """Token ranges to run for ``request`` within ``budget``: holes first (in order),
        then new tokens, which need every hole before them computed."""
        todo = list(request.pending_holes)
        if request.num_computed_tokens < request.num_tokens:
            todo.append((request.num_computed_tokens, request.num_tokens))
        total = sum(end - start for start, end in todo)
        if total > budget and not self.config.enable_chunked_prefill:
            # NOTE: without chunking a request runs whole, alone if it exceeds the budget.
            return todo if is_first and budget == self._step_budget else []
        plan: list[tuple[int, int]] = []
        for start, end in todo:
            if budget <= 0:
                break
            take = min(end - start, budget)
            plan.append((start, start + take))
            budget -= take
        return plan

    @staticmethod
    def _num_new(request: Request, plan: list[tuple[int, int]]) -> int:
        """Tokens of ``plan`` past the computed prefix (holes already have blocks)."""
        return max(0, plan[-1][1] - request.num_computed_tokens)

    def _advance(self, request: Request, ranges: list[tuple[int, int]]) -> None:
        for start, end in ranges:
            self.num_tokens_run += end - start
            if start < request.num_computed_tokens:
                self.num_recomputed_hole_tokens += end - start
                hole_start, hole_end = request.pending_holes[0]
                assert hole_start == start and end <= hole_end, "holes are run in order"
                if end == hole_end:
                    request.pending_holes.pop(0)
                else:
                    request.pending_holes[0] = (end, hole_end)
            else:
                request.num_computed_tokens = end

    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request)
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        request.pending_holes = []
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

    def _to_scheduled(
        self, request: Request, plan: list[tuple[int, int]], tree: SerializedTree | None = None
    ) -> ScheduledRequest:
        if tree is not None:
            return ScheduledRequest(
                request_id=request.request_id,
                token_ids=list(tree.token_ids),
                ranges=plan,
                block_ids=list(self.kv_cache.block_table(request.request_id)),
                sample=True,
                tree=tree,
            )
        all_ids = request.all_token_ids
        token_ids = [t for start, end in plan for t in all_ids[start:end]]
        wants_prompt_logits = request.sampling_params.prompt_logprobs is not None
        return ScheduledRequest(
            request_id=request.request_id,
            token_ids=token_ids,
            ranges=plan,
            block_ids=list(self.kv_cache.block_table(request.request_id)),
            sample=plan[-1][1] == request.num_tokens,
            prompt_logits=wants_prompt_logits and plan[0][0] < request.num_prompt_tokens,
        )


def _count(plan: list[tuple[int, int]]) -> int:
    return sum(end - start for start, end in plan)
