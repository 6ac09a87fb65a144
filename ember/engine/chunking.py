"""Adaptive chunking: size each step's token budget from the latency model so the step
stays near a target time (so decodes sharing it keep their pace) while long prefills and
hole recomputation get whatever time is left.

As a prefill's context grows, each of its tokens costs more (attention over everything
before it), so the same target admits fewer tokens: chunks shrink with depth, as in SGLang's
dynamic chunking, instead of a fixed count whose step time grows with the context."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ember.core.request import Request
from ember.kvcache.cost_model import LatencyModel


@dataclass(frozen=True, kw_only=True)
class AdaptiveBudget:
    model: LatencyModel
    target_s: float
    max_tokens: int  # never more than the fixed budget: beyond it the hardware is busy anyway
    min_chunk: int  # a prefill always advances at least this much

    def __call__(self, running: list[Request]) -> int:
        decodes, prefill_context = 0, None
        elapsed = self.model.fixed_s
        for request in running:
            remaining = request.num_tokens - request.num_computed_tokens + sum(e - s for s, e in request.pending_holes)
            if remaining == 1:
                decodes += 1
                elapsed += self.model.per_token_s + self.model.per_pair_s * request.num_computed_tokens
            elif prefill_context is None:
                prefill_context = min([s for s, _ in request.pending_holes] + [request.num_computed_tokens])
        left = self.target_s - elapsed
        chunk = self._tokens_within(left, prefill_context or 0)
        return max(1, min(self.max_tokens, decodes + max(chunk, self.min_chunk)))

    def _tokens_within(self, seconds: float, context: int) -> int:
        """Largest n with ``b n + c (n ctx + n^2 / 2) <= seconds``."""
        if seconds <= 0:
            return 0
        b, c = self.model.per_token_s, self.model.per_pair_s
        linear = b + c * context
        if c <= 0:
            return int(seconds / linear) if linear > 0 else self.max_tokens
        return int((-linear + math.sqrt(linear * linear + 2 * c * seconds)) / c)
