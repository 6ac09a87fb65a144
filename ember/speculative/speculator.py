"""SpecInfer in the engine step: propose trees, then verify them from one target pass.

    propose(running)  -> one merged tree per decoding request (root = last token), serialized
                         for the scheduler; the proposal itself (draws and their q) stays here
    scheduler         -> the tree's nodes run as that request's tokens (tree attention)
    verify(...)       -> called by the sampler: greedy or multi-step speculative sampling per
                         request; the scheduler then commits the accepted path's KV

Speculation is adaptive: above ``max_batch_size`` running requests a plain decode step is
already compute-efficient, and the extra tree tokens cost more than the steps they save, so
no tree is proposed (the threshold is measured, see docs/benchmarks.md "SpecInfer").
Requests that ask for logprobs are not speculated (their logprobs come from the sampler).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ember.config import SpeculativeConfig
from ember.core.batch import ScheduledRequest, SerializedTree
from ember.core.request import Request
from ember.core.sampling import SamplingState
from ember.runner.base import Runner
from ember.speculative.draft import DraftModelProposer
from ember.speculative.proposers import BaseProposer, DraftRequest, NgramConfig, NgramProposer
from ember.speculative.token_tree import TokenTree, merge_trees
from ember.speculative.verify import (
    Verified,
    tree_target_ids,
    tree_target_probs,
    verify_greedy,
    verify_stochastic,
)


@dataclass
class SpecStats:
    """Counters since the engine started (the server exports them as metrics)."""

    num_verify_steps: int = 0  # engine steps that verified at least one tree
    num_trees: int = 0  # request-steps that ran a tree
    num_draft_tokens: int = 0  # tree nodes below the root
    num_accepted_tokens: int = 0
    num_emitted_tokens: int = 0  # accepted + bonus
    accepted_by_depth: list[int] = field(default_factory=list)  # trees accepting >= d tokens
    draft_s: float = 0.0
    verify_s: float = 0.0

    @property
    def mean_accepted(self) -> float:
        """Accepted draft tokens per tree."""
        return self.num_accepted_tokens / self.num_trees if self.num_trees else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens a speculated request gains per target step (1 without speculation)."""
        return self.num_emitted_tokens / self.num_trees if self.num_trees else 0.0

    def to_dict(self) -> dict:
        return {
            "num_verify_steps": self.num_verify_steps,
            "num_trees": self.num_trees,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "mean_accepted": self.mean_accepted,
            "tokens_per_step": self.tokens_per_step,
            "acceptance_by_depth": [n / self.num_trees for n in self.accepted_by_depth] if self.num_trees else [],
            "draft_s": self.draft_s,
            "verify_s": self.verify_s,
        }


class Speculator:
    def __init__(
        self,
        proposers: Sequence[BaseProposer],
        *,
        max_depth: int,
        max_model_len: int,
        max_batch_size: int,
    ) -> None:
        self.proposers = list(proposers)
        self.max_depth = max_depth
        self.max_model_len = max_model_len
        self.max_batch_size = max_batch_size
        self.stats = SpecStats(accepted_by_depth=[0] * max_depth)
        self._proposed: dict[str, TokenTree] = {}  # this step's proposals, by request id

    def propose(self, running: Sequence[Request]) -> dict[str, SerializedTree]:
        """Trees for the decoding requests of ``running``, serialized at their root's position
        (``num_tokens - 1``); kept until ``verify``."""
        self._proposed = {}
        if not running or len(running) > self.max_batch_size:
            return {}
        requests = []
        for r in running:
            params = r.sampling_params
            if r.pending_holes or r.num_computed_tokens != r.num_tokens - 1 or params.logprobs is not None:
                continue
            # NOTE: every accepted token plus the bonus must fit max_tokens and the context.
            depth = min(self.max_depth, self.max_model_len - r.num_tokens - 1)
            if params.max_tokens is not None:
                depth = min(depth, params.max_tokens - r.num_output_tokens - 1)
            if depth > 0:
                requests.append(DraftRequest(r.request_id, r.all_token_ids, depth, SamplingState.of(r)))
        if not requests:
            return {}
        start = time.perf_counter()
        per_proposer = [p.propose(requests) for p in self.proposers]
        serialized = {}
        for i, r in enumerate(requests):
            own = [trees_of[i] for trees_of in per_proposer]
            tree = own[0] if len(own) == 1 else merge_trees(own)
            if tree.num_nodes > 1:
                self._proposed[r.request_id] = tree
                serialized[r.request_id] = tree.serialize(len(r.token_ids) - 1)
        self.stats.draft_s += time.perf_counter() - start
        return serialized

    def verify(
        self,
        items: Sequence[ScheduledRequest],
        logits: Mapping[str, torch.Tensor],
        states: Mapping[str, SamplingState],
    ) -> dict[str, list[int]]:
        """Verify the trees the step ran (``ember.core.sampling.TreeVerifier``): per request the
        accepted tokens and the bonus token. Tells every proposer what was accepted."""
        start = time.perf_counter()
        rids = [item.request_id for item in items]
        trees = {rid: self._proposed.pop(rid) for rid in rids}
        greedy = [rid for rid in rids if states[rid].params.is_greedy]
        sampled = [rid for rid in rids if not states[rid].params.is_greedy]
        results: dict[str, Verified] = {}
        for group, stochastic in ((greedy, False), (sampled, True)):
            if not group:
                continue
            group_trees = [trees[rid] for rid in group]
            group_states = [states[rid] for rid in group]
            rows = torch.cat([logits[rid] for rid in group])
            if stochastic:
                probs = tree_target_probs(rows, group_trees, group_states)
                verified = verify_stochastic(group_trees, probs, [s.generator for s in group_states])
            else:
                verified = verify_greedy(group_trees, tree_target_ids(rows, group_trees, group_states))
            results.update(zip(group, verified))
        stats = self.stats
        stats.num_verify_steps += 1
        for rid in rids:
            v, tree = results[rid], trees[rid]
            stats.num_trees += 1
            stats.num_draft_tokens += tree.num_nodes - 1
            stats.num_accepted_tokens += len(v.accepted_nodes)
            stats.num_emitted_tokens += len(v.token_ids)
            for d in range(len(v.accepted_nodes)):
                stats.accepted_by_depth[d] += 1
            for p in self.proposers:
                p.commit(rid, v.token_ids[:-1])
        stats.verify_s += time.perf_counter() - start
        return {rid: v.token_ids for rid, v in results.items()}

    def release(self, request_id: str) -> None:
        self._proposed.pop(request_id, None)
        for p in self.proposers:
            p.release(request_id)


def build_speculator(
    config: SpeculativeConfig, *, draft_runners: Sequence[Runner], max_model_len: int, seed: int
) -> Speculator:
    """The proposers ``config.models`` names, in order (their trees merge in it): ``ngram``,
    or a draft model, whose runner ``draft_runners`` holds (in the order drafts appear)."""
    proposers, depth = [], 0
    runners = iter(draft_runners)
    for i, name in enumerate(config.models):
        if name == "ngram":
            ngram = NgramConfig(
                max_n=config.ngram_max_n, num_tokens=config.ngram_num_tokens, num_branches=config.ngram_branches
            )
            proposers.append(NgramProposer(ngram, proposer_id=i))
            depth = max(depth, ngram.num_tokens)
            continue
        proposers.append(DraftModelProposer(next(runners), expansion=config.expansion, proposer_id=i, seed=seed))
        depth = max(depth, len(config.expansion))
    return Speculator(proposers, max_depth=depth, max_model_len=max_model_len, max_batch_size=config.max_batch_size)
