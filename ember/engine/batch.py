"""What the scheduler hands the runner for one step: plain data, no tensors."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScheduledRequest:
    """Run ``token_ids`` at positions ``[start_position, start_position + len)``.

    Prefill, chunked prefill, decode and recomputation after preemption all take this shape.
    Keys are the request's storage ``[0, start_position + len)`` through ``block_ids``."""

    request_id: str
    token_ids: list[int]
    start_position: int
    block_ids: list[int]
    sample: bool  # sample a next token after the last one
    prompt_logits: bool = False  # return logits for every token (prompt logprobs)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def kv_len(self) -> int:
        return self.start_position + len(self.token_ids)


@dataclass(frozen=True)
class Batch:
    requests: list[ScheduledRequest]
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(r.num_tokens for r in self.requests)

    @property
    def is_empty(self) -> bool:
        return not self.requests
