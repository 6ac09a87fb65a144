import pytest

from ember.speculative.proposers import (
    BaseProposer,
    DraftRequest,
    NgramConfig,
    NgramProposer,
    find_continuations,
)
from ember.speculative.token_tree import TokenTree, merge_trees
from ember.speculative.verify import verify_greedy


def propose(token_ids, max_depth=8, **config) -> list[list[int]]:
    [tree] = NgramProposer(NgramConfig(**config)).propose([DraftRequest("r", token_ids, max_depth)])
    assert tree.root_token_id == token_ids[-1]
    return sorted(tree.paths())


def test_proposes_the_continuation_of_the_earlier_occurrence():
    #          0  1  2  3  4  5  6  7  8
    tokens = [5, 1, 2, 3, 4, 9, 9, 1, 2]
    assert propose(tokens, max_n=2, num_tokens=3) == [[3, 4, 9]]
    assert propose(tokens, max_n=2, num_tokens=10) == [[3, 4, 9, 9, 1, 2]]  # up to the end


def test_longest_ngram_wins_over_a_more_recent_shorter_one():
    # "2" alone last occurred before 7; "1 2" only before 3
    tokens = [1, 2, 3, 8, 2, 7, 1, 2]
    assert propose(tokens, min_n=1, max_n=2, num_tokens=1) == [[3]]
    assert propose(tokens, min_n=1, max_n=1, num_tokens=1) == [[7]]  # most recent first


def test_several_matches_make_a_tree():
    tokens = [4, 1, 5, 6, 4, 1, 7, 8, 4, 1, 5, 9, 4, 1]
    paths = propose(tokens, min_n=2, max_n=2, num_tokens=2, num_branches=3)
    assert paths == [[5, 6], [5, 9], [7, 8]]
    # 2 branches: the two most recent matches
    assert propose(tokens, min_n=2, max_n=2, num_tokens=2, num_branches=2) == [[5, 9], [7, 8]]


def test_no_match_and_depth_limits():
    assert propose([1, 2, 3, 4]) == [[]]  # nothing repeats: root only
    assert propose([7]) == [[]]
    assert propose([1, 2, 1, 2, 1, 2], max_depth=0) == [[]]
    assert propose([3, 4, 5, 6, 3], max_n=3, num_tokens=9, max_depth=2) == [[4, 5]]
    assert propose([2, 2, 2], min_n=3, max_n=3) == [[]]  # the suffix is not its own match


def test_continuations_never_repeat_or_prefix_each_other():
    # three matches of "3", all continuing with 1 2: one branch
    found = find_continuations([3, 1, 2, 3, 1, 2, 3], min_n=1, max_n=1, num_tokens=2, num_branches=3)
    assert found == [[1, 2]]
    # the most recent match is cut short by the end ([3]); an older one extends it ([3, 5])
    found = find_continuations([3, 3, 5, 9, 3, 3], min_n=1, max_n=1, num_tokens=2, num_branches=3)
    assert found == [[3, 5], [5, 9]]


def test_draws_are_deterministic_picks_tagged_with_the_proposer():
    proposer = NgramProposer(NgramConfig(max_n=2, num_branches=2), proposer_id=3)
    [tree] = proposer.propose([DraftRequest("r", [1, 2, 5, 1, 2, 6, 1, 2], 4)])
    draws = [d for node_draws in tree.draws for d in node_draws]
    assert draws and all(d.probs is None and d.proposer == 3 for d in draws)
    assert all(tree.proposer_ids[u] == {3} for u in range(1, tree.num_nodes))
    assert isinstance(proposer, BaseProposer)


def test_batch_and_greedy_acceptance_of_a_repeating_text():
    # a periodic text: the target (here: "the text continues periodically") accepts it all
    period = [10, 11, 12, 13]
    requests = [DraftRequest(f"r{i}", period * 3 + period[:i], 5) for i in range(1, 4)]
    trees = NgramProposer(NgramConfig(max_n=3, num_tokens=5)).propose(requests)
    for request, tree in zip(requests, trees):
        n = len(request.token_ids)
        argmax = [period[(n - 1 + tree.depths[u] + 1) % 4] for u in range(tree.num_nodes)]
        [v] = verify_greedy([tree], argmax)
        assert len(v.accepted_nodes) == 5
        assert v.token_ids == [period[(n + k) % 4] for k in range(6)]


def test_merges_with_another_proposers_tree():
    a = NgramProposer(NgramConfig(max_n=1, num_tokens=2), proposer_id=0)
    b = NgramProposer(NgramConfig(max_n=3, num_tokens=2), proposer_id=1)
    request = DraftRequest("r", [1, 2, 3, 9, 2, 3, 4, 2, 3], 4)
    [ta], [tb] = a.propose([request]), b.propose([request])
    merged = merge_trees([ta, tb])
    assert {tuple(p) for p in merged.paths()} == {tuple(p) for p in ta.paths() + tb.paths()}


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_n"):
        NgramConfig(min_n=3, max_n=2)
    with pytest.raises(ValueError, match="num_tokens"):
        NgramConfig(num_tokens=0)


def test_base_proposer_is_abstract():
    with pytest.raises(TypeError):
        BaseProposer()  # type: ignore[abstract]

    class Fixed(BaseProposer):
        def propose(self, requests):
            return [TokenTree(r.token_ids[-1]) for r in requests]

    fixed = Fixed(proposer_id=2)
    assert fixed.proposer_id == 2
    assert fixed.propose([DraftRequest("r", [4, 5], 3)])[0].paths() == [[]]
    fixed.release("r")  # the default release is a no-op
