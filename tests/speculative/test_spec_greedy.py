import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.core.sampling import Sampler, SamplingState
from ember.core.sampling_params import SamplingParams
from ember.speculative.token_tree import TokenTree
from ember.speculative.verify import tree_target_ids, verify_greedy

VOCAB = 6


def hand_tree() -> TokenTree:
    # nodes: 0 root(7), 1 "1", 2 "1 2", 3 "1 2 3", 4 "1 4", 5 "5", 6 "5 6"
    return TokenTree.from_paths(7, [[1, 2, 3], [1, 4], [5, 6]])


def test_greedy_walks_the_argmax_and_appends_the_bonus():
    tree = hand_tree()
    #         node: 0  1  2  3  4  5  6
    argmax_table = [1, 4, 0, 0, 7, 6, 8]
    [v] = verify_greedy([tree], argmax_table)
    assert v.accepted_nodes == [1, 4] and v.token_ids == [1, 4, 7]
    [v] = verify_greedy([tree], torch.tensor([5, 0, 0, 0, 0, 6, 8]))
    assert v.accepted_nodes == [5, 6] and v.token_ids == [5, 6, 8]  # a full branch + bonus
    [v] = verify_greedy([tree], [9, 1, 2, 3, 4, 5, 6])
    assert v.accepted_nodes == [] and v.token_ids == [9]  # nothing accepted: one token
    [v] = verify_greedy([TokenTree(3)], [2])
    assert v.accepted_nodes == [] and v.token_ids == [2]  # root only = plain decode


def test_greedy_batch_uses_each_trees_rows():
    a, b = hand_tree(), TokenTree.from_paths(0, [[2, 2]])
    out = verify_greedy([a, b], [1, 2, 3, 9, 0, 0, 0] + [2, 2, 5])
    assert [v.token_ids for v in out] == [[1, 2, 3, 9], [2, 2, 5]]
    assert [v.accepted_nodes for v in out] == [[1, 2, 3], [1, 2]]


def toy_logits(context: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash(context) % 2**31)
    return torch.randn(VOCAB, generator=g)


def greedy_next(context) -> int:
    return int(toy_logits(tuple(context)).argmax())


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, VOCAB - 1),
    st.integers(0, 4),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, VOCAB - 1)), max_size=16),
)
def test_greedy_equals_sequential_greedy_decoding(root, num_true, edges):
    # a random tree that holds the first num_true greedy tokens as one of its paths
    tree, node, context = TokenTree(root), 0, [root]
    for _ in range(num_true):
        context.append(greedy_next(context))
        node = tree.add_child(node, context[-1])
    for parent, token in edges:
        tree.add_child(parent % tree.num_nodes, token)
    target = [greedy_next(tree.path_token_ids(u)) for u in range(tree.num_nodes)]

    [v] = verify_greedy([tree], target)
    sequential = [root]
    for _ in range(len(v.token_ids)):
        sequential.append(greedy_next(sequential))
    assert v.token_ids == sequential[1:]
    assert len(v.accepted_nodes) >= num_true  # the planted path is found
    # maximal: the walk stops only where the tree has no child with the greedy token
    last = v.accepted_nodes[-1] if v.accepted_nodes else 0
    assert tree.child(last, v.token_ids[-1]) is None
    assert [tree.token_ids[u] for u in v.accepted_nodes] == v.token_ids[:-1]


def test_greedy_with_penalties_matches_the_sampler_step_by_step():
    # Penalties and min_tokens depend on the output so far, which at a tree node includes its
    # path: token 3 is the favourite everywhere, but presence penalty makes a second 3 lose.
    logits_of = lambda ctx: torch.tensor([0.0, 0.5, 0.2, 2.0, 1.6, 2.5])
    params = SamplingParams(temperature=0.0, presence_penalty=1.0, min_tokens=3)
    state = SamplingState.create(params, [0, 1], eos_token_ids={5})  # root: prompt's last token

    sequential = SamplingState.create(params, [0, 1], eos_token_ids={5})
    for _ in range(5):
        [token] = Sampler()(logits_of(None)[None], [sequential]).token_ids
        sequential.output_token_ids.append(token)
    # EOS (5) is banned until 3 outputs, then it wins; a repeated 3 pays the penalty
    assert sequential.output_token_ids == [3, 4, 3, 5, 5]

    tree = TokenTree.from_paths(1, [[3, 3, 3], [3, 4, 3, 5], [3, 4, 2, 5], [5]])
    logits = torch.stack([logits_of(None)] * tree.num_nodes)
    [v] = verify_greedy([tree], tree_target_ids(logits, [tree], [state]))
    assert v.token_ids == sequential.output_token_ids  # 4 accepted + the bonus
    assert state.output_token_ids == []  # per-node views are copies


def test_kv_commit_moves():
    tree = hand_tree()  # nodes 0..6 at storage start + index
    # path 5 -> 6: node 5 (depth 1) moves from start+5 to start+1; node 6 from start+6 to +2
    assert tree.serialize(10).kv_commit_moves([5, 6]) == [(15, 11), (16, 12)]
    # path 1 -> 2 -> 3 is already in place (nodes at index == depth): nothing to move
    assert tree.serialize(10).kv_commit_moves([1, 2, 3]) == []
    # path 1 -> 4: node 1 in place, node 4 (depth 2) from start+4 to start+2
    assert tree.serialize(0).kv_commit_moves([1, 4]) == [(4, 2)]
    assert tree.serialize(3).kv_commit_moves([]) == []


def test_kv_moves_applied_in_order_leave_the_path_contiguous():
    # simulate the cache as a list of "KV" labels: after the moves, storage
    # [start, start + 1 + n) holds the root and the accepted path in depth order
    tree = TokenTree.from_paths(0, [[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    start = 4
    for leaf in tree.leaves():
        path = tree.path(leaf)[1:]
        storage = list(range(start)) + [f"node{u}" for u in range(tree.num_nodes)]
        for src, dst in tree.serialize(start).kv_commit_moves(path):
            storage[dst] = storage[src]
        assert storage[start : start + 1 + len(path)] == [f"node{u}" for u in [0] + path]
