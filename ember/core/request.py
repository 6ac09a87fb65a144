"""A request as the scheduler sees it: token ids and progress, no tensors.

The scheduler owns every field but ``generator`` (the sampler's random stream, set when the
request is created and only ever drawn from by the sampler and tree verification)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from ember.core.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self in (
            RequestStatus.FINISHED_STOPPED,
            RequestStatus.FINISHED_LENGTH,
            RequestStatus.FINISHED_ABORTED,
        )

    @property
    def finish_reason(self) -> str | None:
        return self.value if self.is_finished else None


@dataclass(eq=False)
class Request:
    """One sequence to generate. ``n > 1`` fans out into several of these.

    Progress invariant::

        [0, num_computed_tokens)          KV in the cache (computed or a prefix-cache hit),
                                          except the ranges in ``pending_holes``
        pending_holes                     evicted KV inside a prefix hit, to recompute first
        [num_computed_tokens, num_tokens) still to run; the last one is sampled from
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    pending_holes: list[tuple[int, int]] = field(default_factory=list)
    num_cached_prompt_tokens: int = 0
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: int | str | None = None
    generator: torch.Generator | None = field(default=None, repr=False)  # None for greedy

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished
