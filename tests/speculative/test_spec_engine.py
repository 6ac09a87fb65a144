"""SpecInfer through the engine step: lossless greedy and sampled speculation with every
proposer, under continuous batching, chunked prefill, prefix caching, preemption and stops."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from engine_util import run_checked
from scipy import stats

from ember.core.sampling_params import SamplingParams
from ember.engine.llm import LLM
from ember.errors import EmberError, InvalidInputError

PROMPTS = [
    "def fibonacci(n):",
    "import os\n\n\ndef main():",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):",
    "for i in range(10):\n    for j in range(10):\n        for k in range(10):",
    '"""Utilities for parsing."""\n\nimport re\n',
    "    def __repr__(self):\n        return",
    "x = [1, 2, 3]\ny = [1, 2, 3]\nz =",
    "try:\n    import json\nexcept ImportError:",
]
REPEATS = 4  # its greedy continuation repeats itself: n-gram proposals get accepted
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)

PROPOSERS = {
    "ngram": dict(speculative_models="ngram"),
    "draft-chain": dict(speculative_models="ember-draft-a", speculative_expansion="1,1,1,1"),
    "draft-tree": dict(speculative_models="ember-draft-a", speculative_expansion="3,2,1"),
    "merged": dict(speculative_models="ember-draft-a,ember-draft-b,ngram", speculative_expansion="2,1,1"),
}


def tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def reference():
    llm = LLM(model="ember-tiny")
    return tokens(run_checked(llm, PROMPTS, GREEDY))


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("proposer", list(PROPOSERS))
def test_greedy_speculation_equals_greedy_decoding(reference, proposer, batch):
    llm = LLM(model="ember-tiny", speculative_max_batch_size=8, **PROPOSERS[proposer])
    got = []
    for start in range(0, len(PROMPTS), batch):
        got += tokens(run_checked(llm, PROMPTS[start : start + batch], GREEDY))
    assert got == reference
    spec = llm.engine.speculator.stats
    assert spec.num_trees > 0 and spec.num_accepted_tokens > 0  # it really speculated
    assert spec.num_emitted_tokens == spec.num_trees + spec.num_accepted_tokens


def test_speculation_under_chunking_prefix_hits_and_preemption(reference):
    # NOTE: a 16-token budget chunks every prompt and cannot fit some trees (they fall back to a
    # plain decode); 24 blocks of 4 tokens force preemptions; with 4 running at most, the
    # repeated prompts come in as the first ones finish and hit their cached blocks.
    llm = LLM(
        model="ember-tiny",
        speculative_models="ember-draft-a,ngram",
        speculative_expansion="2,2,1",
        speculative_max_batch_size=8,
        max_num_batched_tokens=16,
        block_size=4,
        num_kv_blocks=24,
        max_num_seqs=4,
    )
    prompts = PROMPTS[:3] + PROMPTS[:3] + PROMPTS[3:]
    got = tokens(run_checked(llm, prompts, GREEDY))
    assert got == reference[:3] + reference[:3] + reference[3:]
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.kv_cache.prefix_hit_rate > 0
    assert llm.engine.speculator.stats.num_accepted_tokens > 0


@pytest.fixture(scope="module")
def ngram_llm():
    return LLM(model="ember-tiny", speculative_models="ngram", ngram_num_tokens=6)


def test_max_tokens_reached_inside_a_tree(reference, ngram_llm):
    # The repetitive prompt makes the n-gram proposer's long runs accepted.
    for max_tokens in range(2, 12):
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        out = run_checked(ngram_llm, PROMPTS[REPEATS : REPEATS + 1], params)[0].outputs[0]
        assert out.token_ids == reference[REPEATS][:max_tokens] and out.finish_reason == "length"
    assert ngram_llm.engine.speculator.stats.accepted_by_depth[1] > 0  # runs of 2+ accepted tokens


def test_stops_inside_a_tree_drop_the_tokens_after_them(reference, ngram_llm):
    full = run_checked(ngram_llm, PROMPTS[REPEATS : REPEATS + 1], GREEDY)[0].outputs[0]
    plain = LLM(model="ember-tiny")
    stop_id = reference[REPEATS][9]
    stop_text = full.text[len(full.text) // 2 :][:5]
    for params in (
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop_token_ids=[stop_id]),
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop_text]),
        SamplingParams(
            temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop_text], include_stop_str_in_output=True
        ),
    ):
        want = run_checked(plain, PROMPTS[REPEATS : REPEATS + 1], params)[0].outputs[0]
        got = run_checked(ngram_llm, PROMPTS[REPEATS : REPEATS + 1], params)[0].outputs[0]
        assert (got.token_ids, got.text, got.finish_reason) == (want.token_ids, want.text, "stop")
        assert len(got.token_ids) < 24
        # max_tokens just past the stop changes nothing (the stop string still ends it)
        for extra in (1, 2, 3):
            both = dataclasses.replace(params, max_tokens=len(want.token_ids) + extra)
            got = run_checked(ngram_llm, PROMPTS[REPEATS : REPEATS + 1], both)[0].outputs[0]
            assert (got.token_ids, got.text, got.finish_reason) == (want.token_ids, want.text, "stop")


def test_speculation_pauses_above_the_batch_threshold():
    llm = LLM(model="ember-tiny", speculative_models="ngram", speculative_max_batch_size=2)
    run_checked(llm, PROMPTS[:4], GREEDY)  # four run together throughout: no trees
    assert llm.engine.speculator.stats.num_trees == 0
    run_checked(llm, PROMPTS[:2], GREEDY)
    assert llm.engine.speculator.stats.num_trees > 0


def test_logprob_requests_are_served_without_trees(reference):
    llm = LLM(model="ember-tiny", speculative_models="ngram")
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2)
    out = run_checked(llm, PROMPTS[REPEATS : REPEATS + 1], params)[0].outputs[0]
    assert out.token_ids == reference[REPEATS] and len(out.logprobs) == 24
    assert llm.engine.speculator.stats.num_trees == 0


def test_bad_speculation_options_are_clear_errors(hf_checkpoints):
    with pytest.raises(InvalidInputError, match="speculative_expansion"):
        LLM(model="ember-tiny", speculative_models="ngram", speculative_expansion="2,0")
    with pytest.raises(InvalidInputError, match="twice"):
        LLM(model="ember-tiny", speculative_models="ngram,ngram")
    with pytest.raises(EmberError, match="no-such-draft"):
        LLM(model="ember-tiny", speculative_models="no-such-draft")
    with pytest.raises(InvalidInputError, match="vocabulary"):
        LLM(model="ember-tiny", speculative_models=str(hf_checkpoints("llama_gqa")))


# ----------------------------------------------------------------- sampling: distribution
NUM_SAMPLES = 3000
PROMPT_IDS = [5, 17, 42, 99, 7, 250, 3, 64]


def _second_token_marginal(path) -> np.ndarray:
    """Exact P(2nd output token) at temperature 1 from transformers (the oracle):
    sum over t1 of p(t1 | prompt) p(t2 | prompt, t1)."""
    from checkpoints import load_hf

    model = load_hf(path)
    with torch.no_grad():
        first = model(torch.tensor([PROMPT_IDS])).logits[0, -1].double().softmax(-1)
        vocab = first.shape[0]
        seqs = torch.cat([torch.tensor(PROMPT_IDS).repeat(vocab, 1), torch.arange(vocab)[:, None]], dim=1)
        second = model(seqs).logits[:, -1].double().softmax(-1)
    return (first[:, None] * second).sum(0).numpy()


def _chi_square_p(samples: list[int], probs: np.ndarray) -> float:
    counts = np.bincount(samples, minlength=len(probs)).astype(float)
    expected = probs * len(samples)
    keep = expected >= 5  # NOTE: rare tokens are pooled into one bin
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    return float(stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


@pytest.fixture(scope="module")
def sampled_pair(tmp_path_factory):
    from checkpoints import write_hf_checkpoint

    root = tmp_path_factory.mktemp("spec-pair")
    # NOTE: a peaky target and a different draft, so a wrong acceptance rule shows.
    target = write_hf_checkpoint(root / "target", "llama_gqa", seed=0)
    draft = write_hf_checkpoint(root / "draft", "llama_gqa", seed=1)
    return target, draft, _second_token_marginal(target)


def _sample_second_tokens(target, draft) -> list[int]:
    llm = LLM(
        model=str(target),
        speculative_models=str(draft),
        speculative_expansion="2,2",
        speculative_max_batch_size=NUM_SAMPLES,
        max_num_seqs=NUM_SAMPLES,
        max_num_batched_tokens=NUM_SAMPLES * 8,
        block_size=4,
    )
    params = [SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True, seed=s) for s in range(NUM_SAMPLES)]
    outputs = llm.generate([{"prompt_token_ids": PROMPT_IDS}] * NUM_SAMPLES, params)
    assert llm.engine.speculator.stats.num_trees == NUM_SAMPLES  # every 2nd token was speculated
    return [o.outputs[0].token_ids[1] for o in outputs]


def test_sampled_speculation_follows_the_target_distribution(sampled_pair):
    target, draft, marginal = sampled_pair
    assert _chi_square_p(_sample_second_tokens(target, draft), marginal) > 1e-3


def test_a_wrong_acceptance_rule_fails_the_same_test(sampled_pair, monkeypatch):
    import ember.speculative.verify as verify

    def accept_if_in_target_top_k(u, p, q, token, k=20):
        return p.gather(1, token[:, None]).squeeze(1) >= p.topk(k, dim=-1).values[:, -1]

    monkeypatch.setattr(verify, "_accept", accept_if_in_target_top_k)
    target, draft, marginal = sampled_pair
    assert _chi_square_p(_sample_second_tokens(target, draft), marginal) < 1e-3
