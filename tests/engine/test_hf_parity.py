"""Ember against `transformers` on every supported architecture variant."""

import pytest
import torch
from checkpoints import VARIANTS, load_hf
from engine_util import greedy, prompt_logits_in_two_chunks, random_prompts, run_checked

from ember.engine.llm import LLM

NUM_NEW = 32


def hf_greedy(model, prompt: list[int], num_new: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(num_new):
            next_id = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return ids[0, len(prompt) :].tolist()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_tokens_match_transformers_in_a_mixed_batch(variant, hf_checkpoints):
    path = hf_checkpoints(variant)
    hf = load_hf(path)
    prompts = random_prompts(8, vocab=300, min_len=2, max_len=40, seed=1)
    llm = LLM(str(path), dtype="float32", block_size=4, max_num_batched_tokens=64)
    outputs = run_checked(llm, prompts, greedy(NUM_NEW))
    for prompt, output in zip(prompts, outputs):
        assert output.outputs[0].token_ids == hf_greedy(hf, prompt, NUM_NEW)
        assert output.outputs[0].finish_reason == "length"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prompt_logits_match_transformers_in_two_chunks(variant, hf_checkpoints):
    """8 prompts of different lengths in one step, then their second halves in a second
    step that reads the first halves back from the paged cache."""
    path = hf_checkpoints(variant)
    hf = load_hf(path)
    llm = LLM(str(path), dtype="float32", block_size=4, cache_policy="hash")
    prompts = random_prompts(8, vocab=300, min_len=3, max_len=48, seed=2)
    got_all = prompt_logits_in_two_chunks(llm, prompts)
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            expected = hf(torch.tensor([prompt])).logits[0]
        got = got_all[str(i)]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
