"""Batched next-token sampling, and the step's sampling: plain rows here, token trees through
an injected ``TreeVerifier`` (speculative decoding).

Each step ``Sampler.sample(batch, out, requests)`` samples one row of fp32 logits per plain
request that samples, under that request's ``SamplingState``. Order, as in vLLM:

    penalties -> min_tokens mask -> greedy rows: argmax
                                    other rows: temperature -> top-k -> top-p -> min-p -> draw

Logprobs are "raw": log_softmax of the model's logits before penalties, masking and temperature
(vLLM's default ``raw_logprobs``), so they describe the model, not the sampling rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ember.core.batch import Batch, RunnerOutput, ScheduledRequest
from ember.core.request import Request
from ember.core.sampling_params import SamplingParams

# NOTE: an odd 64-bit constant, so seq_index 0 keeps the user's seed and the others spread out.
_SEQ_SEED_STRIDE = 0x9E3779B97F4A7C15
_PROMPT_LOGPROBS_CHUNK = 256  # rows per log_softmax: bounds memory at chunk * vocab floats


def make_generator(seed: int | None, device: torch.device | str = "cpu", *, seq_index: int = 0) -> torch.Generator:
    """A generator for one sampled sequence, on the device the logits will live on.

    ``seed=None`` draws a seed from torch's global RNG, so ``torch.manual_seed`` before a run
    makes unseeded requests reproducible too. ``seq_index`` separates the ``n`` sequences of
    one seeded request, which would otherwise all draw the same tokens.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**63 - 1, ()).item())
    generator = torch.Generator(device=device)
    generator.manual_seed((seed + seq_index * _SEQ_SEED_STRIDE) % 2**64)
    return generator


@dataclass
class SamplingState:
    """What the sampler reads about one sequence. In the engine it is a view of the
    ``Request``, made for one step (``of``): the request owns the tokens and the generator."""

    params: SamplingParams
    generator: torch.Generator | None  # None for greedy
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int] = field(default_factory=list)
    eos_token_ids: frozenset[int] = frozenset()

    @classmethod
    def of(cls, request: Request) -> SamplingState:
        return cls(
            request.sampling_params,
            request.generator,
            request.prompt_token_ids,
            request.output_token_ids,
            request.eos_token_ids,
        )

    @classmethod
    def create(
        cls,
        params: SamplingParams,
        prompt_token_ids: list[int],
        eos_token_ids: frozenset[int] | set[int] = frozenset(),
        device: torch.device | str = "cpu",
        *,
        seq_index: int = 0,
    ) -> SamplingState:
        generator = None
        if not params.is_greedy:
            generator = make_generator(params.seed, device, seq_index=seq_index)
        return cls(params, generator, list(prompt_token_ids), [], frozenset(eos_token_ids))

    @property
    def has_penalties(self) -> bool:
        p = self.params
        return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0

    @property
    def banned_token_ids(self) -> list[int]:
        """Ids masked this step: EOS (unless ignore_eos) and stop ids while output < min_tokens."""
        if len(self.output_token_ids) >= self.params.min_tokens:
            return []
        ids = set(self.params.stop_token_ids)
        if not self.params.ignore_eos:
            ids |= self.eos_token_ids
        return sorted(ids)

    @property
    def is_plain_greedy(self) -> bool:
        return (
            self.params.is_greedy
            and self.params.logprobs is None
            and not self.has_penalties
            and not self.banned_token_ids
        )


@dataclass(frozen=True)
class TokenLogprobs:
    token_id: int
    logprob: float  # raw: log_softmax of the model's logits
    rank: int  # 1 + number of tokens with a strictly higher logprob
    top_logprobs: list[tuple[int, float]]  # (token id, logprob), most likely first


@dataclass(frozen=True)
class SamplerOutput:
    token_ids: list[int]  # one per logits row
    logprobs: list[TokenLogprobs | None]  # None where params.logprobs is None


class TreeVerifier(Protocol):
    """Decides which speculated tokens of a step's token trees the target keeps."""

    def verify(
        self,
        items: Sequence[ScheduledRequest],
        logits: Mapping[str, torch.Tensor],
        states: Mapping[str, SamplingState],
    ) -> dict[str, list[int]]:
        """``items``: the step's requests that ran a tree; ``logits``: request id -> ``[nodes,
        V]``. Returns per request the accepted path's tokens, then one bonus token."""


@dataclass(frozen=True)
class StepSamples:
    """What a step sampled, by request id."""

    token_ids: dict[str, list[int]]  # one token, or a tree's accepted tokens + the bonus token
    logprobs: dict[str, TokenLogprobs]  # plain rows of requests that asked for logprobs


class Sampler:
    def __init__(self, verifier: TreeVerifier | None = None) -> None:
        self.verifier = verifier

    def sample(self, batch: Batch, out: RunnerOutput, requests: Mapping[str, Request]) -> StepSamples:
        """Tokens for every request of ``batch`` that samples. A request aborted while the step
        ran (gone from ``requests``) gets none."""
        rows = [i for i, rid in enumerate(out.sample_ids) if rid in requests]
        sample_ids = [out.sample_ids[i] for i in rows]
        logits = out.logits if len(rows) == len(out.sample_ids) else out.logits[rows]
        plain = self(logits, [SamplingState.of(requests[rid]) for rid in sample_ids])
        token_ids = {rid: [token] for rid, token in zip(sample_ids, plain.token_ids)}
        logprobs = {rid: lp for rid, lp in zip(sample_ids, plain.logprobs) if lp is not None}
        trees = [item for item in batch.requests if item.tree is not None and item.request_id in requests]
        if trees:
            if self.verifier is None:
                raise RuntimeError("a batch with token trees needs a sampler with a tree verifier")
            states = {item.request_id: SamplingState.of(requests[item.request_id]) for item in trees}
            token_ids.update(self.verifier.verify(trees, out.tree_logits, states))
        return StepSamples(token_ids, logprobs)

    def __call__(self, logits: torch.Tensor, states: list[SamplingState]) -> SamplerOutput:
        """logits [N, V] (any float dtype; never modified), states: N, row-aligned.
        Generators must be on ``logits.device``."""
        assert logits.dim() == 2 and logits.shape[0] == len(states)
        if all(s.is_plain_greedy for s in states):
            return SamplerOutput(logits.argmax(dim=-1).tolist(), [None] * len(states))

        adjusted = penalize(logits.float(), states)
        token_ids = adjusted.argmax(dim=-1)  # kept for greedy rows, overwritten for the others
        rows = [i for i, s in enumerate(states) if not s.params.is_greedy]
        if rows:
            probs = sampling_probs(adjusted[rows], [states[i].params for i in rows])
            token_ids[rows] = draw(probs, [states[i].generator for i in rows])

        logprob_rows = [i for i, s in enumerate(states) if s.params.logprobs is not None]
        logprobs: list[TokenLogprobs | None] = [None] * len(states)
        if logprob_rows:
            raw = torch.log_softmax(logits[logprob_rows].float(), dim=-1)
            top_ns = [states[i].params.logprobs for i in logprob_rows]
            for i, entry in zip(logprob_rows, token_logprobs(raw, token_ids[logprob_rows], top_ns)):
                logprobs[i] = entry
        return SamplerOutput(token_ids.tolist(), logprobs)


def penalize(logits: torch.Tensor, states: list[SamplingState]) -> torch.Tensor:
    """logits [N, V] fp32 -> a new [N, V]: penalties applied, then banned ids at -inf."""
    logits = logits.clone()
    vocab_size = logits.shape[1]
    rows = [i for i, s in enumerate(states) if s.has_penalties]
    if rows:
        subset = [states[i] for i in rows]
        device = logits.device
        prompt_mask = token_counts([s.prompt_token_ids for s in subset], vocab_size, device) > 0
        output_counts = token_counts([s.output_token_ids for s in subset], vocab_size, device)
        logits[rows] = apply_penalties(
            logits[rows],
            prompt_mask,
            output_counts,
            repetition=_column([s.params.repetition_penalty for s in subset], logits).squeeze(1),
            frequency=_column([s.params.frequency_penalty for s in subset], logits).squeeze(1),
            presence=_column([s.params.presence_penalty for s in subset], logits).squeeze(1),
        )
    banned = [(i, t) for i, s in enumerate(states) for t in s.banned_token_ids if t < vocab_size]
    if banned:
        row_idx, token_idx = zip(*banned)
        logits[list(row_idx), list(token_idx)] = float("-inf")
    return logits


def token_counts(id_lists: list[list[int]], vocab_size: int, device) -> torch.Tensor:
    """R lists of token ids -> [R, V] fp32 occurrence counts (one scatter, no loop over vocab)."""
    counts = torch.zeros(len(id_lists), vocab_size, device=device)
    lengths = torch.tensor([len(ids) for ids in id_lists], device=device)
    row_idx = torch.repeat_interleave(torch.arange(len(id_lists), device=device), lengths)
    flat_ids = list(itertools.chain.from_iterable(id_lists))
    token_idx = torch.tensor(flat_ids, dtype=torch.long, device=device)
    ones = torch.ones_like(token_idx, dtype=counts.dtype)
    return counts.index_put_((row_idx, token_idx), ones, accumulate=True)


def apply_penalties(
    logits: torch.Tensor,
    prompt_mask: torch.Tensor,
    output_counts: torch.Tensor,
    *,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """logits [R, V], prompt_mask [R, V] bool, output_counts [R, V], penalties [R] -> [R, V].

    Repetition (CTRL) hits every token seen in prompt or output: x / r if x > 0 else x * r.
    Frequency and presence (OpenAI) hit output tokens only: x - f * count - p * (count > 0).
    """
    seen = prompt_mask | (output_counts > 0)
    r = repetition[:, None]
    logits = torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
    return logits - frequency[:, None] * output_counts - presence[:, None] * (output_counts > 0)


def sampling_probs(logits: torch.Tensor, params: list) -> torch.Tensor:
    """logits [R, V] fp32 (penalties applied) of R sampled (non-greedy) rows -> [R, V], the
    distribution a token is drawn from: temperature, then top-k, top-p and min-p (only on the
    rows that ask for them)."""
    scaled = logits / _column([p.temperature for p in params], logits)
    to_filter = [j for j, p in enumerate(params) if p.top_k or p.top_p < 1 or p.min_p]
    if to_filter:
        sub = [params[j] for j in to_filter]
        scaled[to_filter] = filter_logits(
            scaled[to_filter],
            top_k=torch.tensor([p.top_k for p in sub], device=logits.device),
            top_p=_column([p.top_p for p in sub], scaled).squeeze(1),
            min_p=_column([p.min_p for p in sub], scaled).squeeze(1),
        )
    return scaled.softmax(dim=-1)


def filter_logits(
    logits: torch.Tensor, *, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """logits [R, V] (temperature applied), top_k [R] int (0 = off), top_p [R], min_p [R]
    -> [R, V] with every token outside the keep set at -inf. One sort serves all three rules:

    top-k keeps the k highest (ties broken by lower id); top-p, on the distribution renormalised
    after top-k, keeps the smallest prefix whose mass reaches p; min-p keeps tokens with
    prob >= min_p * max prob, a ratio that renormalising does not change.
    """
    vocab_size = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    position = torch.arange(vocab_size, device=logits.device)
    k = torch.where(top_k > 0, top_k, vocab_size)
    drop = position >= k[:, None]
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    # token i stays while the mass before it is < p; the first always stays (mass 0 < p)
    mass_before = probs.cumsum(dim=-1) - probs
    # NOTE: rows with top_p == 1 skip the rule: rounding could push the tail's mass past 1.
    drop |= (mass_before >= top_p[:, None]) & (top_p < 1)[:, None]
    drop |= sorted_logits < sorted_logits[:, :1] + torch.log(min_p)[:, None]
    mask = torch.empty_like(drop).scatter_(-1, order, drop)
    return logits.masked_fill(mask, float("-inf"))


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """probs [R, V], one generator per row -> [R] sampled ids.

    Exponential race: with E_i ~ Exp(1), argmax_i p_i / E_i is i with probability p_i. Each row
    takes exactly V draws from its own generator, so a seeded request gets the same tokens
    whatever else shares the batch.
    """
    noise = torch.empty_like(probs)
    for row, generator in enumerate(generators):
        noise[row].exponential_(generator=generator)
    # NOTE: a draw of exactly 0 would make 0/0 = NaN for a masked token, and argmax picks NaN.
    return (probs / noise.clamp_min_(torch.finfo(probs.dtype).tiny)).argmax(dim=-1)


def token_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor, top_ns: list[int]) -> list[TokenLogprobs]:
    """logprobs [R, V] (log_softmax'd), token_ids [R], top_ns: R counts -> R entries."""
    chosen = logprobs.gather(-1, token_ids[:, None])
    ranks = ((logprobs > chosen).sum(dim=-1) + 1).tolist()
    top_values: list[list[float]] = [[] for _ in top_ns]
    top_ids: list[list[int]] = [[] for _ in top_ns]
    if max(top_ns) > 0:
        values, ids = logprobs.topk(max(top_ns), dim=-1)
        top_values, top_ids = values.tolist(), ids.tolist()
    return [
        TokenLogprobs(token_id, logprob, rank, list(zip(top_ids[r][:n], top_values[r][:n])))
        for r, (token_id, logprob, rank, n) in enumerate(
            zip(token_ids.tolist(), chosen.squeeze(-1).tolist(), ranks, top_ns)
        )
    ]


def prompt_logprobs(
    logits: torch.Tensor, prompt_token_ids: list[int], top_n: int, *, start_position: int = 0
) -> list[TokenLogprobs | None]:
    """Raw logprobs of prompt tokens from a chunk of prompt logits.

    logits [n, V]: row i is the model's output at position ``start_position + i`` and so scores
    prompt token ``start_position + i + 1`` (a row past the prompt's end is ignored). The first
    prompt token has no score: it gets None. Concatenating the results of consecutive chunks,
    in order, gives one entry per prompt token.
    """
    end = min(start_position + logits.shape[0], len(prompt_token_ids) - 1)
    result: list[TokenLogprobs | None] = [None] if start_position == 0 and prompt_token_ids else []
    for lo in range(start_position, end, _PROMPT_LOGPROBS_CHUNK):
        hi = min(lo + _PROMPT_LOGPROBS_CHUNK, end)
        rows = logits[lo - start_position : hi - start_position].float()
        targets = torch.tensor(prompt_token_ids[lo + 1 : hi + 1], device=logits.device)
        result += token_logprobs(torch.log_softmax(rows, dim=-1), targets, [top_n] * (hi - lo))
    return result


def _column(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None]
