"""Token-tree verification (SpecInfer §4.3): which proposed tokens the target keeps.

The target runs every node of a request's tree in one pass (``TokenTree`` order, root first),
so logits row u scores the token after node u's path. Both rules return, per request, the
accepted path (node indices, root excluded, by depth) and its tokens plus one bonus token:
every verify step emits ``len(accepted_nodes) + 1`` tokens.

    greedy       lossless w.r.t. argmax decoding: the tokens are exactly what sequential
                 greedy decoding with the same logits would emit
    stochastic   multi-step speculative sampling (MSS): the emitted tokens follow the target's
                 sampling distribution exactly, for any tree whose draws keep the draw
                 invariant (``ember.speculative.token_tree``)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ember.core.sampling import SamplingState, penalize, sampling_probs
from ember.speculative.token_tree import TokenTree


@dataclass(frozen=True)
class Verified:
    accepted_nodes: list[int]  # node indices of the accepted path, root excluded, by depth
    token_ids: list[int]  # tokens of accepted_nodes, then the bonus token


@dataclass(frozen=True)
class PackedDraws:
    """The draws of B trees as padded tensors (Q = most nodes, D = most draws at a node)."""

    token_ids: torch.Tensor  # [B, Q, D] long
    children: torch.Tensor  # [B, Q, D] long: node index of the drawn child, in its tree
    prob_rows: torch.Tensor  # [B, Q, D] long: row of draft_probs holding the draw's q
    is_point: torch.Tensor  # [B, Q, D] bool: deterministic pick, q = one-hot at the token
    num_draws: torch.Tensor  # [B, Q] long: draws at each node (the rest is padding)
    draft_probs: torch.Tensor  # [R, V] fp32, R >= 1: the distinct q rows
    max_depth: int

    @property
    def max_draws(self) -> int:
        return self.token_ids.shape[2]


def pack_draws(trees: Sequence[TokenTree], vocab_size: int, device="cpu") -> PackedDraws:
    """Trees -> ``PackedDraws``. A q tensor shared by several draws is stored once."""
    shape = (len(trees), max(t.num_nodes for t in trees), max(t.max_draws for t in trees))
    rows: dict[int, int] = {}  # id(q) -> row; every q stays alive in its tree meanwhile
    q_list: list[torch.Tensor] = []
    where, fields, counts = [], [], []  # (b, node, j); (token, child, row, is_point); per node
    for b, tree in enumerate(trees):
        for node, draws in enumerate(tree.draws):
            counts.append((b, node, len(draws)))
            for j, d in enumerate(draws):
                row = 0
                if d.probs is not None:
                    row = rows.setdefault(id(d.probs), len(q_list))
                    if row == len(q_list):
                        q_list.append(d.probs)
                where.append((b, node, j))
                fields.append((d.token_id, d.child, row, d.probs is None))
    # NOTE: filled in numpy with one fancy-index write per field: per-element tensor writes
    # cost microseconds each, which adds up for big batches.
    packed = np.zeros((4, *shape), dtype=np.int64)
    packed[3] = 1  # padding reads as a deterministic pick of token 0: valid indices, never used
    num_draws = np.zeros(shape[:2], dtype=np.int64)
    b, node, count = np.array(counts, dtype=np.int64).reshape(-1, 3).T
    num_draws[b, node] = count
    if where:
        b, node, j = np.array(where, dtype=np.int64).T
        packed[:, b, node, j] = np.array(fields, dtype=np.int64).T
    token_ids, children, prob_rows, is_point = torch.from_numpy(packed).to(device)
    draft_probs = (
        torch.stack([q.to(device, torch.float32) for q in q_list])
        if q_list
        else torch.zeros(1, vocab_size, device=device)
    )
    return PackedDraws(
        token_ids,
        children,
        prob_rows,
        is_point.bool(),
        torch.from_numpy(num_draws).to(device),
        draft_probs,
        max(t.max_depth for t in trees),
    )


def speculative_sample_tree(
    target_probs: torch.Tensor,
    row_offsets: torch.Tensor,
    draws: PackedDraws,
    uniforms: torch.Tensor,
    bonus_noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-step speculative sampling down B trees at once; randomness comes in as tensors.

    Args:
        target_probs: ``[N, V]`` the target's sampling distribution at every node.
        row_offsets: ``[B]`` row of tree b's root in ``target_probs`` (its node u is row
            ``row_offsets[b] + u``).
        uniforms: ``[B, max_depth, D]`` U[0, 1): one per attempt (depth, draw slot).
        bonus_noise: ``[B, V]`` Exp(1), for the final draw.

    Returns ``path [B, max_depth]`` (accepted node per depth), ``num_accepted [B]`` (how much of
    path is real) and ``bonus [B]``. No host sync: padding is masked, not branched on.
    """
    # At node u with target p, try its draws c_j ~ q_j in order:
    #   accept c_j with prob min(1, p(c_j) / q_j(c_j))  -> descend into c_j, p := target at c_j
    #   else p := norm(max(0, p - q_j))                  -> try the next draw
    # No draw accepted (or a leaf): bonus ~ p. Each attempt leaves the output ~ p (SpecInfer
    # Thm 4.2): P(y) = min(q(y), p(y)) + P(reject) * max(0, p(y) - q(y)) / P(reject) = p(y).
    num_trees = row_offsets.shape[0]
    batch = torch.arange(num_trees, device=row_offsets.device)
    node = torch.zeros_like(row_offsets)
    p = target_probs[row_offsets]
    walking = torch.ones(num_trees, dtype=torch.bool, device=row_offsets.device)
    path = torch.zeros(num_trees, draws.max_depth, dtype=torch.long, device=row_offsets.device)
    num_accepted = torch.zeros_like(row_offsets)
    for depth in range(draws.max_depth):
        accepted = torch.zeros_like(walking)
        child = node
        num_here = draws.num_draws[batch, node]
        for j in range(draws.max_draws):
            trying = walking & ~accepted & (j < num_here)
            token = draws.token_ids[batch, node, j]
            q = draws.draft_probs[draws.prob_rows[batch, node, j]]
            point = draws.is_point[batch, node, j][:, None]
            # NOTE: scatter, not F.one_hot, which checks its input's range with a host sync
            q = torch.where(point, torch.zeros_like(q).scatter_(1, token[:, None], 1.0), q)
            ok = trying & _accept(uniforms[:, depth, j], p, q, token)
            p = torch.where((trying & ~ok)[:, None], _residual(p, q), p)
            child = torch.where(ok, draws.children[batch, node, j], child)
            accepted |= ok
        path[:, depth] = child
        num_accepted += accepted
        node = child
        p = torch.where(accepted[:, None], target_probs[row_offsets + node], p)
        walking = accepted
    # NOTE: exponential race as in ember.core.sampling.draw: argmax p / E is y w.p. p(y).
    bonus = (p / bonus_noise.clamp_min(torch.finfo(p.dtype).tiny)).argmax(dim=-1)
    return path, num_accepted, bonus


def _accept(u, p, q, token) -> torch.Tensor:
    # u * q < p  <=>  u < p / q: probability min(1, p/q). q(c) = 0 is a draw q could not make
    # (numerics); it is accepted iff p(c) > 0, the limit of p/q -> inf.
    p_token = p.gather(1, token[:, None]).squeeze(1)
    q_token = q.gather(1, token[:, None]).squeeze(1)
    return u * q_token < p_token


def _residual(p, q) -> torch.Tensor:
    # norm(max(0, p - q)); its mass is TV(p, q), zero only if p == q, where a rejection has
    # probability 0. Numerics can still get there: keep p then. Support never grows (<= p).
    residual = (p - q).clamp_min(0)
    mass = residual.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp_min(torch.finfo(p.dtype).tiny), p)


def verify_stochastic(
    trees: Sequence[TokenTree], target_probs: torch.Tensor, generators: Sequence[torch.Generator]
) -> list[Verified]:
    """MSS for a batch of requests. ``target_probs`` ``[N, V]``: every node's sampling
    distribution (``tree_target_probs``), trees concatenated in order; one generator per tree,
    on ``target_probs.device``. Each request draws a fixed amount of randomness from its own
    generator (set by its tree alone), so a seeded request's tokens do not depend on the batch.
    """
    device, vocab_size = target_probs.device, target_probs.shape[1]
    draws = pack_draws(trees, vocab_size, device)
    uniforms = torch.zeros(len(trees), draws.max_depth, draws.max_draws, device=device)
    noise = torch.empty(len(trees), vocab_size, device=device)
    for b, (tree, generator) in enumerate(zip(trees, generators, strict=True)):
        shape = (tree.max_depth, tree.max_draws)
        uniforms[b, : shape[0], : shape[1]] = torch.rand(shape, generator=generator, device=device)
        noise[b] = torch.empty(vocab_size, device=device).exponential_(generator=generator)
    offsets = torch.tensor(_row_offsets(trees), device=device)
    path, num_accepted, bonus = speculative_sample_tree(target_probs, offsets, draws, uniforms, noise)
    results = []
    for tree, nodes, n, token in zip(trees, path.tolist(), num_accepted.tolist(), bonus.tolist()):
        results.append(Verified(nodes[:n], [tree.token_ids[u] for u in nodes[:n]] + [token]))
    return results


def verify_greedy(trees: Sequence[TokenTree], target_ids: torch.Tensor | Sequence[int]) -> list[Verified]:
    """``target_ids`` ``[N]``: the target's argmax at every node (``tree_target_ids``), trees
    concatenated in order."""
    # u = root; while a child of u carries target(u): accept it, u := that child.
    # bonus = target(u). Children are unique by token, so the walk is unique.
    ids = target_ids.tolist() if isinstance(target_ids, torch.Tensor) else list(target_ids)
    results = []
    for tree, offset in zip(trees, _row_offsets(trees)):
        node, accepted = 0, []
        while (child := tree.child(node, ids[offset + node])) is not None:
            accepted.append(child)
            node = child
        results.append(Verified(accepted, [tree.token_ids[u] for u in accepted] + [ids[offset + node]]))
    return results


def tree_target_probs(
    logits: torch.Tensor, trees: Sequence[TokenTree], states: Sequence[SamplingState]
) -> torch.Tensor:
    """``logits`` ``[N, V]`` for every node (trees concatenated) -> ``[N, V]`` fp32 sampling
    distributions, exactly as ``Sampler`` would build them at each node: penalties and
    min_tokens see the node's path as generated output, then temperature, top-k, top-p, min-p.
    Greedy requests get a one-hot row at their argmax."""
    adjusted = penalize(logits.float(), _node_states(trees, states))
    params = [s.params for tree, s in zip(trees, states) for _ in range(tree.num_nodes)]
    probs = torch.zeros_like(adjusted).scatter_(1, adjusted.argmax(dim=-1, keepdim=True), 1.0)
    rows = [i for i, p in enumerate(params) if not p.is_greedy]
    if rows:
        probs[rows] = sampling_probs(adjusted[rows], [params[i] for i in rows])
    return probs


def tree_target_ids(logits: torch.Tensor, trees: Sequence[TokenTree], states: Sequence[SamplingState]) -> torch.Tensor:
    """``logits`` ``[N, V]`` for every node -> ``[N]`` greedy argmax after each node's
    penalties and min_tokens mask (as ``Sampler`` does for greedy rows)."""
    return penalize(logits.float(), _node_states(trees, states)).argmax(dim=-1)


def _node_states(trees: Sequence[TokenTree], states: Sequence[SamplingState]) -> list[SamplingState]:
    # NOTE: node u predicts the token after its path, so the path below the root (the root is
    # the request's last token, already in its output or prompt) counts as generated output.
    node_states: list[SamplingState] = []
    for tree, s in zip(trees, states, strict=True):
        if not s.has_penalties and len(s.output_token_ids) >= s.params.min_tokens:
            node_states += [s] * tree.num_nodes  # nothing here depends on the output: no copies
            continue
        node_states += [
            SamplingState(
                s.params,
                s.generator,
                s.prompt_token_ids,
                s.output_token_ids + tree.path_token_ids(u)[1:],
                s.eos_token_ids,
            )
            for u in range(tree.num_nodes)
        ]
    return node_states


def _row_offsets(trees: Sequence[TokenTree]) -> list[int]:
    offsets, total = [], 0
    for tree in trees:
        offsets.append(total)
        total += tree.num_nodes
    return offsets
