"""Moving unfinished requests between engines (SpotServe's token-level recovery).

``export_requests`` takes requests out of an engine between steps as plain snapshots: the
request's tokens so far, its sampler's RNG state (so seeded sampling continues exactly), its
output state (logprobs) and, when the runner can read it, the KV of its committed tokens.
``import_requests`` puts them into another engine of the same model, which continues every
request at its next token: with the KV written into fresh blocks, or by recomputing the
committed tokens (as after a preemption) when there is no KV or no room for it. Either way
the continuation is the one an uninterrupted run would produce (tested against one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ember.core.batch import storage_slot
from ember.core.request import Request
from ember.core.sampling_params import SamplingParams
from ember.engine.output_processor import RequestGroup, SequenceState
from ember.errors import InvalidInputError
from ember.models.tokenizer import IncrementalDetokenizer

if TYPE_CHECKING:
    from ember.engine.llm_engine import LLMEngine


@dataclass(frozen=True)
class SequenceSnapshot:
    """One of a request's ``n`` sequences, between two steps."""

    request_id: str  # the sequence's id (``rid`` or ``rid#i``)
    index: int
    output_token_ids: tuple[int, ...]
    num_preemptions: int
    num_cached_prompt_tokens: int
    generator_state: torch.Tensor | None  # torch.Generator.get_state(); None for greedy
    logprobs: tuple | None  # TokenLogprobs per output token, when the request asked
    cumulative_logprob: float | None
    kv: torch.Tensor | None  # [num_layers, 2, num_kv_heads, num_kv_tokens, head_dim] on the CPU

    @property
    def num_kv_tokens(self) -> int:
        """Leading tokens (prompt + output) whose KV travels with the snapshot."""
        return 0 if self.kv is None else int(self.kv.shape[3])

    @property
    def kv_bytes(self) -> int:
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()


@dataclass(frozen=True)
class RequestSnapshot:
    request_id: str
    prompt: str | None
    prompt_token_ids: tuple[int, ...]
    sampling_params: SamplingParams
    arrival_time: float
    first_token_time: float | None
    prompt_logprobs: tuple | None
    sequences: tuple[SequenceSnapshot, ...]

    @property
    def kv_bytes(self) -> int:
        return sum(s.kv_bytes for s in self.sequences)


def export_requests(
    engine: LLMEngine, request_ids: Sequence[str] | None = None, *, with_kv: bool = True, remove: bool = True
) -> list[RequestSnapshot]:
    """Snapshot unfinished requests (all by default) and remove them from ``engine`` (their KV
    blocks are freed), or with ``remove=False`` leave them running: a checkpoint to resume
    from if the engine is lost. Call between steps."""
    ids = list(engine.outputs.groups) if request_ids is None else list(request_ids)
    unknown = [rid for rid in ids if rid not in engine.outputs.groups]
    if unknown:
        raise InvalidInputError(f"no unfinished request with id {unknown[0]!r}", param="request_id")
    snapshots = []
    for rid in ids:
        group = engine.outputs.groups[rid]
        sequences = tuple(_snapshot_sequence(engine, seq, with_kv=with_kv) for seq in group.sequences)
        snapshots.append(
            RequestSnapshot(
                request_id=group.request_id,
                prompt=group.prompt,
                prompt_token_ids=tuple(group.prompt_token_ids),
                sampling_params=group.sequences[0].request.sampling_params,
                arrival_time=group.arrival_time,
                first_token_time=group.first_token_time,
                prompt_logprobs=tuple(group.prompt_logprobs) if group.prompt_logprobs is not None else None,
                sequences=sequences,
            )
        )
        if remove:
            engine.abort_request(rid)
    return snapshots


def import_requests(engine: LLMEngine, snapshots: Sequence[RequestSnapshot]) -> list[str]:
    """Continue exported requests in ``engine``; returns their request ids."""
    for snap in snapshots:
        if snap.request_id in engine.outputs.groups:
            raise InvalidInputError(f"request id {snap.request_id!r} is already in use", param="request_id")
        bad = [t for t in snap.prompt_token_ids if not 0 <= t < engine.arch.vocab_size]
        if bad:
            raise InvalidInputError(
                f"snapshot {snap.request_id!r} has token id {bad[0]} outside this model's vocabulary"
            )
    for snap in snapshots:
        group = RequestGroup(snap.request_id, snap.prompt, list(snap.prompt_token_ids))
        group.arrival_time = snap.arrival_time
        group.first_token_time = snap.first_token_time
        group.prompt_logprobs = list(snap.prompt_logprobs) if snap.prompt_logprobs is not None else None
        for s in snap.sequences:
            group.sequences.append(_restore_sequence(engine, snap, s))
        engine.outputs.add(group)
        for seq, s in zip(group.sequences, snap.sequences, strict=True):
            _resume(engine, seq.request, s)
    return [snap.request_id for snap in snapshots]


def _snapshot_sequence(engine: LLMEngine, seq: SequenceState, *, with_kv: bool) -> SequenceSnapshot:
    request = seq.request
    kv = None
    # NOTE: KV is exact only for a contiguous computed prefix; with holes pending, recompute.
    if with_kv and request.num_computed_tokens > 0 and not request.pending_holes:
        blocks = engine.kv_cache.block_table(request.request_id)
        bs = engine.kv_cache.block_size
        kv = engine.runner.read_kv([storage_slot(blocks, bs, i) for i in range(request.num_computed_tokens)])
    return SequenceSnapshot(
        request_id=request.request_id,
        index=seq.index,
        output_token_ids=tuple(request.output_token_ids),
        num_preemptions=request.num_preemptions,
        num_cached_prompt_tokens=request.num_cached_prompt_tokens,
        generator_state=request.generator.get_state() if request.generator is not None else None,
        logprobs=tuple(seq.logprobs) if seq.logprobs is not None else None,
        cumulative_logprob=seq.cumulative_logprob,
        kv=kv,
    )


def _restore_sequence(engine: LLMEngine, snap: RequestSnapshot, s: SequenceSnapshot) -> SequenceState:
    generator = None
    if s.generator_state is not None:
        generator = torch.Generator(device=engine.device)
        generator.set_state(s.generator_state)
    request = Request(
        request_id=s.request_id,
        prompt_token_ids=list(snap.prompt_token_ids),
        sampling_params=snap.sampling_params,
        eos_token_ids=engine.eos_token_ids,
        arrival_time=snap.arrival_time,
        output_token_ids=list(s.output_token_ids),
        num_preemptions=s.num_preemptions,
        num_cached_prompt_tokens=s.num_cached_prompt_tokens,
        generator=generator,
    )
    detokenizer = None
    text = ""
    if engine.tokenizer is not None:
        params = snap.sampling_params
        detokenizer = IncrementalDetokenizer(
            engine.tokenizer, snap.prompt_token_ids, skip_special_tokens=params.skip_special_tokens
        )
        # NOTE: detokenizing is deterministic, so replaying the tokens rebuilds text and offsets.
        text = "".join(detokenizer.add(t) for t in s.output_token_ids)
    seq = SequenceState(
        request,
        s.index,
        detokenizer,
        text=text,
        logprobs=list(s.logprobs) if s.logprobs is not None else None,
        cumulative_logprob=s.cumulative_logprob,
    )
    seq.num_seen_tokens = len(s.output_token_ids)
    return seq


def _resume(engine: LLMEngine, request: Request, s: SequenceSnapshot) -> None:
    """Adopt the request with its KV when it fits, else queue it to recompute."""
    expected = (engine.arch.num_layers, 2, engine.arch.num_kv_heads, s.num_kv_tokens, engine.arch.head_dim)
    if s.kv is not None and tuple(s.kv.shape) != expected:
        raise InvalidInputError(
            f"snapshot {s.request_id!r} carries KV of shape {tuple(s.kv.shape)}; this model's is {expected}"
        )
    # NOTE: the last token always runs again (it gives the logits of the next one).
    num_kv_tokens = min(s.num_kv_tokens, request.num_tokens - 1)
    blocks = engine.scheduler.adopt(request, num_kv_tokens) if num_kv_tokens > 0 else None
    if blocks is None:
        engine.scheduler.add(request, front=True)
        return
    bs = engine.kv_cache.block_size
    engine.runner.write_kv([storage_slot(blocks, bs, i) for i in range(num_kv_tokens)], s.kv[:, :, :, :num_kv_tokens])
    engine.scheduler.cache_computed(request)
