"""A step's model inputs, built the same way by the single-process runner and by every
tensor/pipeline rank: token ids, positions, the attention metadata, and which hidden rows
become logits."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from ember.attention.metadata import AttentionMetadata, build_attention_metadata
from ember.core.batch import ScheduledRequest


class LogitsRows(NamedTuple):
    """Hidden rows ``[start, end)`` of the step that become logits for one request."""

    kind: Literal["sample", "prompt", "tree"]
    request_id: str
    first_position: int  # prompt rows: the position of row ``start``
    start: int
    end: int


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    rows: list[LogitsRows]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def build_step_inputs(
    items: Sequence[ScheduledRequest], *, block_size: int, device: torch.device, backend: str, compiled: bool = False
) -> StepInputs:
    """Token ids, positions and attention metadata (tree masks included) for a step's
    requests, plus which hidden rows become logits: ``sample`` (the last row), ``prompt`` and
    ``tree`` (every row)."""
    input_ids = list(itertools.chain.from_iterable(r.token_ids for r in items))
    positions = list(itertools.chain.from_iterable(r.positions() for r in items))
    extra = {}
    if any(r.tree is not None for r in items):
        extra["storage_index"] = torch.tensor(
            list(itertools.chain.from_iterable(r.storage_indices() for r in items)), dtype=torch.long
        )
        extra["tree_masks"] = [r.tree.tree_mask() if r.tree else None for r in items]
    meta = build_attention_metadata(
        query_lens=[r.num_tokens for r in items],
        positions=torch.tensor(positions, dtype=torch.long),
        kv_lens=[r.kv_len for r in items],
        block_tables=[r.block_ids for r in items],
        block_size=block_size,
        device=device,
        backend=backend,
        compiled=compiled,
        **extra,
    )
    rows, end = [], 0
    for item in items:
        start, end = end, end + item.num_tokens
        if item.tree is not None:
            rows.append(LogitsRows("tree", item.request_id, 0, start, end))
            continue
        if item.prompt_logits:
            rows.append(LogitsRows("prompt", item.request_id, item.start_position, start, end))
        if item.sample:
            rows.append(LogitsRows("sample", item.request_id, 0, end - 1, end))
    return StepInputs(
        torch.tensor(input_ids, dtype=torch.long, device=device),
        torch.tensor(positions, dtype=torch.long, device=device),
        meta,
        rows,
    )
