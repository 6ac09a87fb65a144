"""Workloads are seeded plain data with the structure each kind promises."""

import math

import numpy as np
import pytest

from ember.bench.serving import arrival_times
from ember.bench.workloads import WORKLOADS, make_workload
from ember.errors import InvalidInputError

VOCAB = 384


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workloads_are_deterministic_and_in_vocabulary(name):
    a = make_workload(name, 16, vocab_size=VOCAB, seed=3)
    assert a == make_workload(name, 16, vocab_size=VOCAB, seed=3)
    assert a != make_workload(name, 16, vocab_size=VOCAB, seed=4)
    ids = [t for r in a.requests for t in r.prompt_token_ids]
    assert min(ids) >= 10 and max(ids) < VOCAB
    assert len({r.request_id for r in a.requests}) == len(a.requests) == 16
    assert all(r.max_tokens >= 1 for r in a.requests)


def test_shared_prefix_groups_share_exactly_their_prefix():
    w = make_workload("shared-prefix", 12, vocab_size=VOCAB, num_groups=3, prefix_len=40)
    prefixes = {r.prompt_token_ids[:40] for r in w.requests}
    assert len(prefixes) == 3
    assert w.requests[0].prompt_token_ids[:40] == w.requests[3].prompt_token_ids[:40]


@pytest.mark.parametrize("name", ["multi-turn", "agent"])
def test_session_context_grows_turn_by_turn(name):
    w = make_workload(name, 12, vocab_size=VOCAB, num_turns=3, tool_latency_s=0.1)
    sessions = w.sessions()
    assert len(sessions) == 4 and all(len(s) == 3 for s in sessions)
    for turns in sessions:
        assert [t.turn for t in turns] == [0, 1, 2]
        for before, after in zip(turns, turns[1:]):
            # the next prompt extends the previous one by its reply and a new message
            assert after.prompt_token_ids[: len(before.prompt_token_ids)] == before.prompt_token_ids
            assert len(after.prompt_token_ids) > len(before.prompt_token_ids) + before.max_tokens
    if name == "agent":
        system = {s[0].prompt_token_ids[:256] for s in sessions}
        assert len(system) == 1 and all(t.gap_s > 0 for s in sessions for t in s[1:])


def test_unknown_workload_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="unknown workload"):
        make_workload("nope", 4, vocab_size=VOCAB)


def test_arrivals_have_the_requested_rate_and_burstiness():
    poisson = np.diff(arrival_times(4000, 10.0, 1.0, seed=0))
    bursty = np.diff(arrival_times(4000, 10.0, 0.25, seed=0))
    assert abs(poisson.mean() - 0.1) < 0.01 and abs(bursty.mean() - 0.1) < 0.01
    # coefficient of variation: 1 for Poisson, 1/sqrt(shape) for gamma
    assert abs(poisson.std() / poisson.mean() - 1.0) < 0.1
    assert abs(bursty.std() / bursty.mean() - 2.0) < 0.2
    assert arrival_times(3, math.inf, 1.0, seed=0) == [0.0, 0.0, 0.0]
