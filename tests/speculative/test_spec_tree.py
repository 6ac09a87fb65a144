import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.attention import build_attention_metadata
from ember.core.batch import ancestor_matrix
from ember.speculative.token_tree import TokenTree, expand_tree, merge_trees

# (parent choice, token) pairs; the parent choice is reduced modulo the nodes so far
random_edges = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 5)), max_size=24)


def tree_from_edges(edges, root=0, proposer=0) -> TokenTree:
    tree = TokenTree(root)
    for parent, token in edges:
        tree.add_child(parent % tree.num_nodes, token, proposer=proposer)
    return tree


def brute_force_ancestors(parents) -> torch.Tensor:
    q = len(parents)
    mask = torch.zeros(q, q, dtype=torch.bool)
    for i in range(q):
        j = i
        while j is not None:
            mask[i, j] = True
            j = parents[j]
    return mask


def node_paths(tree: TokenTree) -> set[tuple[int, ...]]:
    return {tuple(tree.path_token_ids(u)) for u in range(tree.num_nodes)}


def test_build_from_paths():
    tree = TokenTree.from_paths(7, [[1, 2, 3], [1, 2, 4], [1, 5], [6]])
    assert tree.token_ids == [7, 1, 2, 3, 4, 5, 6]
    assert tree.parents == [None, 0, 1, 2, 2, 1, 0]
    assert tree.depths == [0, 1, 2, 3, 3, 2, 1]
    assert (tree.num_nodes, tree.max_depth) == (7, 3)
    assert sorted(tree.paths()) == [[1, 2, 3], [1, 2, 4], [1, 5], [6]]
    assert tree.leaves() == [3, 4, 5, 6]
    assert tree.path(4) == [0, 1, 2, 4] and tree.path_token_ids(4) == [7, 1, 2, 4]
    assert tree.child(1, 5) == 5 and tree.child(1, 9) is None
    assert TokenTree(3).paths() == [[]] and TokenTree(3).max_depth == 0


def test_serialize_positions_and_parents():
    tree = TokenTree.from_paths(7, [[1, 2], [3]])
    s = tree.serialize(start_position=10)
    assert s.token_ids == [7, 1, 2, 3]
    assert s.positions == [10, 11, 12, 11]
    assert s.parent_indices == [None, 0, 1, 0]
    assert (s.num_tokens, s.kv_len) == (4, 14)
    assert list(s.storage_indices) == [10, 11, 12, 13]  # node order, unlike positions
    expected = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]]
    assert s.tree_mask().tolist() == [[bool(x) for x in row] for row in expected]


@settings(max_examples=60, deadline=None)
@given(random_edges)
def test_ancestor_matrix_matches_brute_force(edges):
    tree = tree_from_edges(edges)
    mask = tree.serialize(0).tree_mask()
    assert mask.dtype == torch.bool
    assert torch.equal(mask, brute_force_ancestors(tree.parents))
    # node order is topological and depth is the number of strict ancestors
    assert all(p is None or p < i for i, p in enumerate(tree.parents))
    assert mask.sum(dim=1).tolist() == [d + 1 for d in tree.depths]


def test_ancestor_matrix_rejects_a_parent_after_its_child():
    with pytest.raises(ValueError, match="parent of node 1"):
        ancestor_matrix([None, 2, 0])


def test_tree_mask_is_what_attention_metadata_expects():
    # context of 5 committed tokens, then the tree (root included) at storage [5, 5 + Q)
    tree = TokenTree.from_paths(7, [[1, 2], [1, 3], [4]])
    s = tree.serialize(start_position=5)
    meta = build_attention_metadata(
        query_lens=[s.num_tokens],
        positions=torch.tensor(s.positions),
        kv_lens=[s.kv_len],
        block_tables=[[0, 1, 2]],
        block_size=4,
        storage_index=torch.tensor(s.storage_indices),
        tree_masks=[s.tree_mask()],
    )
    visible = meta.spans[0].mask
    ancestors = brute_force_ancestors(tree.parents)
    for i in range(s.num_tokens):
        assert visible[i, :5].all()  # all committed context
        assert visible[i, 5:].tolist() == ancestors[i].tolist()  # itself and its ancestors


def test_merge_dedups_identical_paths_and_keeps_each_proposers_q():
    q_a, q_b = torch.tensor([0.1, 0.4, 0.3, 0.2]), torch.tensor([0.25, 0.25, 0.25, 0.25])
    q_a1, q_b1 = torch.tensor([0.0, 0.0, 0.5, 0.5]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    a = TokenTree(0)
    a1, _ = a.add_sampled_children(0, [1, 2], q_a, proposer=0)
    a.add_child(a1, 3, proposer=0, probs=q_a1)
    b = TokenTree(0)
    b1, _ = b.add_sampled_children(0, [1, 3], q_b, proposer=1)
    b.add_child(b1, 2, proposer=1, probs=q_b1)

    merged = merge_trees([a, b])
    assert node_paths(merged) == node_paths(a) | node_paths(b)
    assert merged.num_nodes == 6  # root, 1, 2, 3, 1->3, 1->2: the shared "1" is one node
    one = merged.child(0, 1)
    assert merged.proposer_ids[one] == {0, 1}
    assert merged.proposer_ids[merged.child(0, 2)] == {0}
    assert merged.proposer_ids[merged.child(0, 3)] == {1}
    root_draws = merged.draws[0]
    assert [(d.token_id, d.proposer) for d in root_draws] == [(1, 0), (2, 0), (1, 1), (3, 1)]
    assert root_draws[0].probs is q_a and root_draws[2].probs is q_b  # by reference
    # the second draw without replacement records q without the first token, renormalised
    assert torch.allclose(root_draws[1].probs, torch.tensor([1, 0, 3, 2]) / 6)
    assert torch.allclose(root_draws[3].probs, torch.tensor([1.0, 0, 1, 1]) / 3)
    assert [d.child for d in root_draws] == [one, merged.child(0, 2), one, merged.child(0, 3)]
    assert [d.probs for d in merged.draws[one]] == [q_a1, q_b1]
    # the order of the inputs fixes the order of the draws
    assert [d.proposer for d in merge_trees([b, a]).draws[0]] == [1, 1, 0, 0]


@settings(max_examples=40, deadline=None)
@given(random_edges, random_edges)
def test_merge_is_the_union_of_paths(edges_a, edges_b):
    a, b = tree_from_edges(edges_a, proposer=0), tree_from_edges(edges_b, proposer=1)
    merged = merge_trees([a, b])
    assert node_paths(merged) == node_paths(a) | node_paths(b)
    assert merged.num_nodes == len(node_paths(merged))
    assert torch.equal(merged.serialize(0).tree_mask(), brute_force_ancestors(merged.parents))
    for u in range(1, merged.num_nodes):
        path = tuple(merged.path_token_ids(u))
        assert merged.proposer_ids[u] == {i for i, t in enumerate((a, b)) if path in node_paths(t)}


def test_merge_rejects_different_roots():
    with pytest.raises(ValueError, match="root"):
        merge_trees([TokenTree(1), TokenTree(2)])


def test_repeated_deterministic_pick_adds_no_draw_but_records_the_proposer():
    tree = TokenTree(0)
    first = tree.add_child(0, 5, proposer=0)
    assert tree.add_child(0, 5, proposer=1) == first
    assert len(tree.draws[0]) == 1 and tree.proposer_ids[first] == {0, 1}
    tree.add_child(0, 5, proposer=1, probs=torch.full((8,), 1 / 8))  # a soft draw counts
    assert len(tree.draws[0]) == 2


def test_add_child_rejects_an_unknown_parent():
    with pytest.raises(ValueError, match="parent"):
        TokenTree(0).add_child(1, 3)


def test_draws_without_replacement_must_differ():
    with pytest.raises(ValueError, match="differ"):
        TokenTree(0).add_sampled_children(0, [2, 2], torch.full((4,), 0.25))


def toy_draft(paths: list[list[int]]) -> torch.Tensor:
    """Distinct, context-dependent probabilities over 8 tokens."""
    rows = []
    for path in paths:
        g = torch.Generator().manual_seed(hash(tuple(path)) % 2**31)
        rows.append(torch.randn(8, generator=g).softmax(-1))
    return torch.stack(rows)


def test_expansion_config_builds_specinfer_tree():
    tree = expand_tree(0, [2, 2, 1], toy_draft)  # <2,2,1>: 2 + 4 + 4 nodes below the root
    assert (tree.num_nodes, tree.max_depth) == (11, 3)
    for u in range(tree.num_nodes):
        width = {0: 2, 1: 2, 2: 1, 3: 0}[tree.depths[u]]
        assert len(tree.children(u)) == width
        expected = toy_draft([tree.path_token_ids(u)])[0].topk(width).indices.tolist()
        assert [d.token_id for d in tree.draws[u]] == expected  # top-k, most likely first
        assert all(d.probs is None for d in tree.draws[u])  # deterministic picks


def test_sampled_expansion_records_the_conditional_q_of_each_draw():
    tree = expand_tree(0, [3, 2], toy_draft, generator=torch.Generator().manual_seed(0))
    assert tree.num_nodes == 1 + 3 + 6
    for u in range(tree.num_nodes):
        q = toy_draft([tree.path_token_ids(u)])[0]
        seen = []
        for d in tree.draws[u]:
            expected = q.clone()
            expected[seen] = 0
            assert torch.allclose(d.probs, expected / expected.sum())
            seen.append(d.token_id)
        assert len(set(seen)) == len(seen)  # without replacement


def test_expansion_never_proposes_impossible_tokens():
    one_hot = lambda paths: torch.eye(8)[[3] * len(paths)]
    assert expand_tree(0, [4], one_hot).paths() == [[3]]
    sampled = expand_tree(0, [4], one_hot, generator=torch.Generator().manual_seed(0))
    assert sampled.paths() == [[3]]
