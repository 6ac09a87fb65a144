"""What the scheduler hands the runner for one step: plain data, no tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.spec.token_tree import SerializedTree


@dataclass(frozen=True)
class ScheduledRequest:
    """Run ``token_ids`` at the positions of ``ranges`` (ascending ``[start, end)`` token
    ranges, in the request's own positions).

    Prefill, chunked prefill, decode, recomputation after preemption and hole recomputation
    all take this shape: a hole's range comes before the new tokens. Keys are the request's
    storage ``[0, kv_len)`` through ``block_ids``.

    A speculative step carries a ``tree`` instead (``ember.spec.token_tree``): its nodes are
    the tokens, ``ranges`` is the one storage range they are written to, and positions are
    context length + depth."""

    request_id: str
    token_ids: list[int]
    ranges: list[tuple[int, int]]
    block_ids: list[int]
    sample: bool  # sample a next token after the last one
    prompt_logits: bool = False  # return logits for every token (prompt logprobs)
    tree: SerializedTree | None = None  # speculated tokens to verify (logits for every node)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def start_position(self) -> int:
        return self.ranges[0][0]

    @property
    def kv_len(self) -> int:
        return self.ranges[-1][1]

    def positions(self) -> range | list[int]:
        if self.tree is not None:
            return self.tree.positions
        if len(self.ranges) == 1:
            return range(*self.ranges[0])
        return [p for start, end in self.ranges for p in range(start, end)]


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
