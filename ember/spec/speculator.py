"""SpecInfer in the engine step: propose trees, verify them from one target pass, commit.

    step:  propose(running)  -> one merged tree per decoding request (root = last token)
           scheduler         -> the tree's nodes run as that request's tokens (tree attention)
           verify(...)       -> greedy or multi-step speculative sampling per request
           commit_moves(...) -> KV slot copies that put the accepted path at its final slots

Speculation is adaptive: above ``max_batch_size`` running requests a plain decode step is
already compute-efficient, and the extra tree tokens cost more than the steps they save, so
no tree is proposed (the threshold is measured, see docs/benchmarks.md "SpecInfer").
Requests that ask for logprobs are not speculated (their logprobs come from the sampler).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ember.engine.batch import ScheduledRequest
from ember.engine.request import Request
from ember.engine.sampler import SamplingState
from ember.spec.proposers import BaseProposer, DraftRequest
from ember.spec.token_tree import TokenTree, merge_trees
from ember.spec.verify import (
    Verified,
    kv_commit_moves,
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

    def propose(self, running: Sequence[Request], sampling: dict[str, SamplingState]) -> dict[str, TokenTree]:
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
                requests.append(DraftRequest(r.request_id, r.all_token_ids, depth, sampling[r.request_id]))
        if not requests:
            return {}
        start = time.perf_counter()
        per_proposer = [p.propose(requests) for p in self.proposers]
        trees = {}
        for i, r in enumerate(requests):
            own = [trees_of[i] for trees_of in per_proposer]
            tree = own[0] if len(own) == 1 else merge_trees(own)
            if tree.num_nodes > 1:
                trees[r.request_id] = tree
        self.stats.draft_s += time.perf_counter() - start
        return trees

    def verify(
        self,
        items: Sequence[ScheduledRequest],
        trees: dict[str, TokenTree],
        logits: dict[str, torch.Tensor],
        sampling: dict[str, SamplingState],
    ) -> dict[str, Verified]:
        """Verify the trees the step ran; tells every proposer what was accepted."""
        start = time.perf_counter()
        rids = [item.request_id for item in items]
        greedy = [rid for rid in rids if sampling[rid].params.is_greedy]
        sampled = [rid for rid in rids if not sampling[rid].params.is_greedy]
        results: dict[str, Verified] = {}
        for group, stochastic in ((greedy, False), (sampled, True)):
            if not group:
                continue
            group_trees = [trees[rid] for rid in group]
            states = [sampling[rid] for rid in group]
            rows = torch.cat([logits[rid] for rid in group])
            if stochastic:
                probs = tree_target_probs(rows, group_trees, states)
                verified = verify_stochastic(group_trees, probs, [s.generator for s in states])
            else:
                verified = verify_greedy(group_trees, tree_target_ids(rows, group_trees, states))
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
        return results

    @staticmethod
    def commit_moves(item: ScheduledRequest, tree: TokenTree, verified: Verified) -> list[tuple[list[int], int, int]]:
        """KV copies for ``ModelRunner.copy_kv`` that move the accepted path to its slots."""
        moves = kv_commit_moves(tree, verified.accepted_nodes, item.start_position)
        return [(item.block_ids, src, dst) for src, dst in moves]

    def release(self, request_id: str) -> None:
        for p in self.proposers:
            p.release(request_id)


def build_speculator(config, *, vocab_size: int, num_blocks: int, max_model_len: int) -> Speculator:
    """The proposers ``config.speculative_models`` names, in order (their trees merge in it)."""
    from ember.errors import InvalidInputError
    from ember.models.loader import load_model
    from ember.runner.model_runner import ModelRunner
    from ember.spec.draft import DraftModelProposer
    from ember.spec.proposers import NgramConfig, NgramProposer
    from ember.zoo import resolve_model

    proposers, depth = [], 0
    for i, name in enumerate(config.speculative_models):
        if name == "ngram":
            ngram = NgramConfig(max_n=config.ngram_max_n, num_tokens=config.ngram_num_tokens,
                                num_branches=config.ngram_branches)  # fmt: skip
            proposers.append(NgramProposer(ngram, proposer_id=i))
            depth = max(depth, ngram.num_tokens)
            continue
        draft = load_model(resolve_model(name), dtype=config.dtype, device=config.device)
        if draft.config.vocab_size != vocab_size:
            raise InvalidInputError(
                f"speculative model {name!r} has vocabulary size {draft.config.vocab_size}, the "
                f"target {vocab_size}: a draft must share the target's tokenizer",
                param="speculative_models",
            )
        runner = ModelRunner(draft.module, draft.config, num_blocks=num_blocks, block_size=config.block_size,
                             dtype=next(draft.module.parameters()).dtype, device=torch.device(config.device),
                             attention_backend=config.attention_backend)  # fmt: skip
        proposers.append(DraftModelProposer(runner, expansion=config.speculative_expansion,
                                            vocab_size=vocab_size, proposer_id=i, seed=config.seed))  # fmt: skip
        depth = max(depth, len(config.speculative_expansion))
    return Speculator(proposers, max_depth=depth, max_model_len=max_model_len,
                      max_batch_size=config.speculative_max_batch_size)  # fmt: skip
