"""Multi-step speculative sampling is lossless: the emitted tokens follow the target exactly.

Each trial draws a fresh tree from the drafts (the theorem averages over the drafts' randomness
too) and verifies it with its own generator. Chi-square on the first emitted token, or on the
first 2-3 tokens for deeper trees (a trial that emits fewer tokens continues with exact samples
from the target, as the next engine steps would). Plausible wrong rules must fail the same test.
"""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from scipy.stats import chisquare

import ember.speculative.verify as verify_module
from ember.core.sampling import SamplingState
from ember.core.sampling_params import SamplingParams
from ember.speculative.token_tree import TokenTree, expand_tree, merge_trees
from ember.speculative.verify import (
    tree_target_probs,
    verify_stochastic,
)

VOCAB = 6
TRIALS = 20_000
ROOT = 0


class Model:
    """A toy LM: a fixed random distribution per context, the same tensor object each time."""

    def __init__(self, seed: int, scale: float = 1.5) -> None:
        self.seed, self.scale, self.cache = seed, scale, {}

    def logits(self, context: tuple[int, ...]) -> torch.Tensor:
        g = torch.Generator().manual_seed(hash((self.seed, *context)) % 2**62)
        return torch.randn(VOCAB, generator=g) * self.scale

    def __call__(self, context: tuple[int, ...]) -> torch.Tensor:
        if context not in self.cache:
            self.cache[context] = self.logits(context).softmax(-1)
        return self.cache[context]


TARGET = Model(seed=1)
DRAFTS = [Model(seed=2), Model(seed=3, scale=2.5)]


class DrawSource:
    """Draft samples for every trial, drawn vectorised once per (context, proposer, k)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.cache: dict = {}

    def tokens(self, trial, context, proposer, k, replacement=False) -> list[int]:
        key = (context, proposer, k, replacement)
        if key not in self.cache:
            q = DRAFTS[proposer](context).expand(TRIALS, -1)
            drawn = torch.multinomial(q, k, replacement=replacement, generator=self.generator)
            self.cache[key] = drawn.tolist()
        return self.cache[key][trial]


# --- scenarios: trial index + draw source -> that trial's tree --------------------------------


def one_child(t, src):
    tree = TokenTree(ROOT)
    [token] = src.tokens(t, (ROOT,), 0, 1)
    tree.add_child(0, token, probs=DRAFTS[0]((ROOT,)))
    return tree


def children_without_replacement(t, src):
    tree = TokenTree(ROOT)
    tree.add_sampled_children(0, src.tokens(t, (ROOT,), 0, 3), DRAFTS[0]((ROOT,)))
    return tree


def iid_children_with_duplicates(t, src):
    tree = TokenTree(ROOT)  # repeated tokens are one node with several draws
    for token in src.tokens(t, (ROOT,), 0, 3, replacement=True):
        tree.add_child(0, token, probs=DRAFTS[0]((ROOT,)))
    return tree


def merged_two_proposers(t, src):
    trees = []
    for proposer in (0, 1):
        tree = TokenTree(ROOT)
        q = DRAFTS[proposer]((ROOT,))
        kids = tree.add_sampled_children(0, src.tokens(t, (ROOT,), proposer, 2), q, proposer=proposer)
        for node in kids:
            ctx = tuple(tree.path_token_ids(node))
            [token] = src.tokens(t, ctx, proposer, 1)
            tree.add_child(node, token, proposer=proposer, probs=DRAFTS[proposer](ctx))
        trees.append(tree)
    return merge_trees(trees)


def chain_of_three(t, src):
    tree, node = TokenTree(ROOT), 0
    for _ in range(3):
        ctx = tuple(tree.path_token_ids(node))
        [token] = src.tokens(t, ctx, 0, 1)
        node = tree.add_child(node, token, probs=DRAFTS[0](ctx))
    return tree


def top2_picks(t, src):
    # deterministic picks (q: a point mass at each pick): the same tree for every trial
    return _top2_tree(soft_q=False)


def top2_picks_recorded_with_soft_q(t, src):
    # WRONG usage: deterministic top-2 picks recorded as if sampled from the draft's q
    return _top2_tree(soft_q=True)


@functools.cache
def _top2_tree(soft_q: bool) -> TokenTree:
    if not soft_q:
        draft = lambda paths: torch.stack([DRAFTS[0](tuple(p)) for p in paths])
        return expand_tree(ROOT, [2, 1], draft)
    tree = TokenTree(ROOT)
    q = DRAFTS[0]((ROOT,))
    for token in q.topk(2).indices.tolist():
        tree.add_child(0, token, probs=q)
    return tree


def without_replacement_recorded_with_base_q(t, src):
    # WRONG usage: drawn without replacement, but every draw records the first draw's q
    tree = TokenTree(ROOT)
    for token in src.tokens(t, (ROOT,), 0, 3):
        tree.add_child(0, token, probs=DRAFTS[0]((ROOT,)))
    return tree


# --- harness ----------------------------------------------------------------------------------


@functools.cache
def build_trees(scenario, seed=0) -> list[TokenTree]:
    """TRIALS trees; cached, as the power tests reuse the scenarios."""
    src = DrawSource(seed)
    return [scenario(t, src) for t in range(TRIALS)]


def node_target_probs(trees) -> torch.Tensor:
    return torch.stack([TARGET(tuple(t.path_token_ids(u))) for t in trees for u in range(t.num_nodes)])


def emitted(trees, probs=None, seed=0) -> list[list[int]]:
    probs = node_target_probs(trees) if probs is None else probs
    generators = [torch.Generator().manual_seed(seed * TRIALS + i) for i in range(len(trees))]
    return [v.token_ids for v in verify_stochastic(trees, probs, generators)]


def complete(sequences, length, seed=0) -> torch.Tensor:
    """Extend each sequence to ``length`` with exact target samples -> [trials, length]."""
    g = torch.Generator().manual_seed(10_000 + seed)
    sequences = [s[:length] for s in sequences]
    for step in range(1, length):
        short: dict[tuple, list[int]] = {}
        for i, s in enumerate(sequences):
            if len(s) == step:
                short.setdefault((ROOT, *s), []).append(i)
        for ctx, rows in short.items():
            for i, token in zip(rows, torch.multinomial(TARGET(ctx), len(rows), True, generator=g)):
                sequences[i].append(int(token))
    return torch.tensor(sequences)


def sequence_probs(length) -> torch.Tensor:
    """The target's probability of every token sequence of ``length``, flattened."""
    probs = torch.ones(1, dtype=torch.float64)
    contexts = [(ROOT,)]
    for _ in range(length):
        rows = torch.stack([TARGET(c) for c in contexts]).double()
        probs = (probs[:, None] * rows).flatten()
        contexts = [(*c, v) for c in contexts for v in range(VOCAB)]
    return probs


def chi_square_pvalue(sequences: torch.Tensor, probs: torch.Tensor) -> float:
    cells = torch.zeros(len(sequences), dtype=torch.long)
    for col in range(sequences.shape[1]):
        cells = cells * VOCAB + sequences[:, col]
    observed = torch.bincount(cells, minlength=len(probs)).double()
    expected = probs / probs.sum() * len(sequences)
    if observed[expected == 0].any():
        return 0.0  # a sequence the target never emits
    observed, expected = observed[expected > 0], expected[expected > 0]
    small = expected < 5  # pool sparse cells so the chi-square approximation holds
    if small.any():
        observed = torch.cat([observed[~small], observed[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    return float(chisquare(observed.numpy(), expected.numpy()).pvalue)


def target_pvalue(scenario, length) -> float:
    trees = build_trees(scenario)
    return chi_square_pvalue(complete(emitted(trees), length), sequence_probs(length))


# --- lossless -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario, length",
    [
        (one_child, 1),
        (children_without_replacement, 1),
        (iid_children_with_duplicates, 1),
        (merged_two_proposers, 2),
        (chain_of_three, 3),
        (top2_picks, 2),
    ],
)
def test_mss_output_follows_the_target(scenario, length):
    assert target_pvalue(scenario, length) > 1e-3


def test_mss_with_sampled_expansion_tree_follows_the_target():
    # the real builder, per trial (Python-heavy): half the trials
    g = torch.Generator().manual_seed(5)
    draft = lambda paths: torch.stack([DRAFTS[1](tuple(p)) for p in paths])
    trees = [expand_tree(ROOT, [2, 2], draft, proposer=1, generator=g) for _ in range(TRIALS // 2)]
    assert chi_square_pvalue(complete(emitted(trees), 2), sequence_probs(2)) > 1e-3


def test_mss_follows_the_requests_filtered_distribution():
    # p after temperature and top-k: draft tokens outside the top 3 must never come out
    params = SamplingParams(temperature=0.7, top_k=3, seed=0)
    trees = build_trees(children_without_replacement)
    logits = torch.stack([TARGET.logits(tuple(t.path_token_ids(u))) for t in trees for u in range(t.num_nodes)])
    states = [SamplingState.create(params, [ROOT])] * len(trees)
    probs = tree_target_probs(logits, trees, states)
    first = complete(emitted(trees, probs), 1)
    root_logits = TARGET.logits((ROOT,))
    expected = (root_logits / 0.7).masked_fill(root_logits < root_logits.topk(3).values[-1], -torch.inf)
    assert set(first.flatten().tolist()) <= set(root_logits.topk(3).indices.tolist())
    assert chi_square_pvalue(first, expected.softmax(-1).double()) > 1e-3


# --- power: the same test rejects plausible wrong rules -------------------------------------------


def test_wrong_rule_no_residual_fails(monkeypatch):
    # accept with min(1, p/q) but on rejection keep sampling from p (no subtraction of q)
    monkeypatch.setattr(verify_module, "_residual", lambda p, q: p)
    assert target_pvalue(children_without_replacement, 1) < 1e-6


def test_wrong_rule_accept_if_in_target_top_k_fails(monkeypatch):
    # FlexFlow specscheduler's test: accept any child among the target's top-k
    def in_top_k(u, p, q, token):
        return (p.topk(2, dim=-1).indices == token[:, None]).any(dim=-1)

    monkeypatch.setattr(verify_module, "_accept", in_top_k)
    assert target_pvalue(one_child, 1) < 1e-6


def test_soft_q_recorded_for_deterministic_picks_fails():
    assert target_pvalue(top2_picks_recorded_with_soft_q, 1) < 1e-6


def test_base_q_recorded_for_draws_without_replacement_fails():
    assert target_pvalue(without_replacement_recorded_with_base_q, 1) < 1e-6


def test_acceptance_rate_matches_theory():
    # Lossless alone would also pass for "never accept, sample from p": check the rate too.
    # Exact P(some child accepted) for 3 draws without replacement, by enumeration (float64).
    p0, q0 = TARGET((ROOT,)).double(), DRAFTS[0]((ROOT,)).double()
    expected = 0.0
    for c in itertools.permutations(range(VOCAB), 3):
        q, p, prob_draws, prob_reject_all = q0.clone(), p0.clone(), 1.0, 1.0
        for token in c:
            prob_draws *= float(q[token] / q.sum())
            qn = q / q.sum()
            prob_reject_all *= 1 - min(1.0, float(p[token] / qn[token]))
            residual = (p - qn).clamp_min(0)
            p = residual / residual.sum() if residual.sum() > 0 else p
            q[token] = 0
        expected += prob_draws * (1 - prob_reject_all)
    trees = build_trees(children_without_replacement)
    probs = node_target_probs(trees)
    generators = [torch.Generator().manual_seed(i) for i in range(TRIALS)]
    results = verify_stochastic(trees, probs, generators)
    rate = sum(len(v.accepted_nodes) for v in results) / TRIALS
    z = (rate - expected) / math.sqrt(expected * (1 - expected) / TRIALS)
    assert abs(z) < 4, (rate, expected)
    assert expected > 0.75  # vs sum(min(p, q)) for one child
    assert float(torch.minimum(p0, q0).sum()) < 0.6
