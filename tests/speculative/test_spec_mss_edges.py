"""Multi-step speculative sampling: exact edge cases (impossible draws, degenerate and one-hot
targets, residuals without mass) and reproducibility of seeded requests."""

from __future__ import annotations

import torch
from test_spec_mss import DrawSource, chain_of_three, merged_two_proposers, node_target_probs

from ember.speculative.token_tree import TokenTree
from ember.speculative.verify import PackedDraws, pack_draws, speculative_sample_tree, verify_greedy, verify_stochastic


def run_core(tree: TokenTree, p: torch.Tensor, uniforms: torch.Tensor):
    """One tree whose nodes all have target ``p``, one trial per uniforms row -> (accepted
    paths, bonus) per trial."""
    rows = uniforms.shape[0]
    probs = p.expand(tree.num_nodes, -1)
    packed = pack_draws([tree], probs.shape[1])
    draws = PackedDraws(
        *(
            x.expand(rows, *x.shape[1:])
            for x in (
                packed.token_ids,
                packed.children,
                packed.prob_rows,
                packed.is_point,
                packed.num_draws,
            )
        ),
        packed.draft_probs,
        packed.max_depth,
    )
    noise = torch.empty(rows, probs.shape[1]).exponential_(generator=torch.Generator().manual_seed(0))
    path, n, bonus = speculative_sample_tree(probs, torch.zeros(rows, dtype=torch.long), draws, uniforms, noise)
    return [p[:k] for p, k in zip(path.tolist(), n.tolist())], bonus.tolist()


def test_a_draw_its_q_called_impossible_is_accepted_iff_the_target_allows_it():
    q = torch.tensor([0.5, 0.5, 0.0, 0.0])
    p = torch.tensor([[0.25, 0.25, 0.5, 0.0]])
    u = torch.linspace(0, 0.999, 50)[:, None, None]
    tree = TokenTree(0)
    tree.add_child(0, 2, probs=q)  # q(2) = 0 < p(2): ratio +inf, always accepted
    paths, _ = run_core(tree, p, u)
    assert paths == [[1]] * 50
    tree = TokenTree(0)
    tree.add_child(0, 3, probs=q)  # q(3) = p(3) = 0: rejected; residual keeps p's support
    paths, bonus = run_core(tree, p, u)
    assert paths == [[]] * 50 and set(bonus) <= {2}  # max(0, p - q) = 0.5 on token 2 only


def test_degenerate_target_always_emits_its_token():
    p = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    q = torch.full((6,), 1 / 6)
    tree = TokenTree(0)
    tree.add_sampled_children(0, [1, 3, 4], q)
    u = torch.rand(200, 1, 3, generator=torch.Generator().manual_seed(0))
    paths, _ = run_core(tree, p, u)
    assert paths == [[2]] * 200  # node 2 carries token 3
    tree = TokenTree(0)
    tree.add_sampled_children(0, [1, 4], q)
    paths, bonus = run_core(tree, p, u[:, :, :2])
    assert paths == [[]] * 200 and set(bonus) == {3}


def test_residual_with_no_mass_keeps_p_instead_of_nan():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    tree = TokenTree(0)
    tree.add_child(0, 2, probs=p[0].clone())  # q == p, and q(2) = 0: rejected, p - q = 0
    paths, bonus = run_core(tree, p, torch.rand(100, 1, 1))
    assert paths == [[]] * 100 and set(bonus) == {0, 1}


def test_one_hot_targets_reduce_to_greedy():
    tree = TokenTree.from_paths(7, [[1, 2, 3], [1, 4], [5, 6]])
    q = torch.full((10,), 0.1)
    tree.add_child(0, 8, probs=q)
    tree.add_child(1, 9, probs=q)
    argmax = torch.tensor([1, 9, 0, 0, 0, 6, 8, 0, 2])
    greedy = verify_greedy([tree], argmax)
    sampled = verify_stochastic([tree], torch.eye(10)[argmax], [torch.Generator().manual_seed(0)])
    assert sampled == greedy and greedy[0].token_ids == [1, 9, 2]


def test_seeded_requests_are_reproducible_and_batch_invariant():
    src = DrawSource(0)
    a, b = merged_two_proposers(0, src), chain_of_three(1, src)
    pa, pb = node_target_probs([a]), node_target_probs([b])
    gen = lambda seed: torch.Generator().manual_seed(seed)
    alone = verify_stochastic([a], pa, [gen(1)])
    batched = verify_stochastic([b, a], torch.cat([pb, pa]), [gen(2), gen(1)])
    assert batched[1] == alone[0]
    assert verify_stochastic([b], pb, [gen(2)])[0] == batched[0]
    # and a different seed eventually gives a different result
    assert any(verify_stochastic([a], pa, [gen(s)]) != alone for s in range(3, 40))
