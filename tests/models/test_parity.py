"""Ember models vs transformers: plain-mode logits, paged prefill + decode logits, greedy tokens."""

from __future__ import annotations

import pytest
import torch

from ember.attention import build_attention_metadata
from ember.models.loader import load_model

ATOL = 1e-4
VOCAB = 300


@pytest.fixture(scope="session")
def pair(variant, hf_checkpoint):
    hf_model, path = hf_checkpoint(variant)
    return hf_model, load_model(path)


def _hf_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0].float()


def test_plain_mode_matches_transformers(pair):
    hf_model, loaded = pair
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(ids).logits
        hidden = loaded.module(ids)
        got = loaded.module.compute_logits(hidden)
    assert hidden.shape[:2] == (2, 12)
    assert got.dtype == torch.float32 and got.shape == (2, 12, VOCAB)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_paged_prefill_and_decode_match_transformers(pair, paged):
    hf_model, loaded = pair
    gen = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in (12, 9)]
    # A prefill of both, then a step mixing a decode with a 2-token chunk, then decodes.
    schedule = [{0: 5, 1: 3}, {0: 1, 1: 2}] + [{0: 1, 1: 1}] * 4 + [{0: 1}] * 2
    # Interleaved, out-of-order blocks so that a slot-mapping mistake shows up.
    tables = [[7, 0, 12, 3], [2, 9, 5, 14]]
    got = paged.run(loaded.module, loaded.config, seqs, schedule, tables)
    for seq, logits in zip(seqs, got):
        torch.testing.assert_close(logits, _hf_logits(hf_model, seq), atol=ATOL, rtol=0)


def test_explicit_positions_offset_plain_mode(pair):
    """Plain mode with positions that do not start at 0 (a continuation) equals HF's."""
    hf_model, loaded = pair
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    positions = torch.arange(10, 16)[None]
    with torch.no_grad():
        expected = hf_model(ids, position_ids=positions).logits
        got = loaded.module.compute_logits(loaded.module(ids, positions))
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_hf_state_dict_round_trips_names_and_values(pair):
    hf_model, loaded = pair
    expected = hf_model.state_dict()
    if loaded.config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    got = loaded.module.hf_state_dict()
    assert sorted(got) == sorted(expected)
    for name, tensor in got.items():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize("name", ["llama_gqa", "qwen3", "opt_post_ln_proj"])
def test_greedy_paged_generation_equals_transformers_generate(name, hf_checkpoint, paged):
    hf_model, path = hf_checkpoint(name)
    module, config = (loaded := load_model(path)).module, loaded.config
    prompt = torch.randint(0, VOCAB, (7,), generator=torch.Generator().manual_seed(4)).tolist()
    num_new = 32
    with torch.no_grad():
        expected = hf_model.generate(
            torch.tensor([prompt]),
            max_new_tokens=num_new,
            min_new_tokens=0,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
    assert len(expected) == num_new

    block_size, table = 4, list(range(15, 3, -1))
    caches = paged.new_kv_caches(config, block_size=block_size)
    tokens, step_ids, got = list(prompt), list(prompt), []
    with torch.no_grad():
        while len(got) < num_new:
            start = len(tokens) - len(step_ids)
            positions = torch.arange(start, len(tokens))
            meta = build_attention_metadata(
                query_lens=[len(step_ids)],
                positions=positions,
                kv_lens=[len(tokens)],
                block_tables=[table],
                block_size=block_size,
            )
            hidden = module(torch.tensor(step_ids), positions, caches, meta)
            next_id = int(module.compute_logits(hidden[-1]).argmax())
            got.append(next_id)
            tokens.append(next_id)
            step_ids = [next_id]
    assert got == expected
