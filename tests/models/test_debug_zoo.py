"""The debug checkpoint is a real HF checkpoint: transformers loads it and agrees with Ember."""

from __future__ import annotations

import time

import pytest
import torch

from ember.models.loader import load_model
from ember.zoo.debug import make_debug_checkpoint


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
        ("opt", {}),
        ("opt", {"do_layer_norm_before": False, "word_embed_proj_dim": 32}),
    ],
)
def test_debug_checkpoint_loads_in_ember_and_transformers(tmp_path, arch, overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_debug_checkpoint(tmp_path, arch=arch, **overrides)
    loaded = load_model(path)
    hf_model = AutoModelForCausalLM.from_pretrained(path).eval()
    hf_tok = AutoTokenizer.from_pretrained(path)

    prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "Hello there!"}])
    ids = loaded.tokenizer.encode(prompt)
    assert ids == hf_tok(prompt)["input_ids"]
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits
        got = loaded.module.compute_logits(loaded.module(torch.tensor([ids])))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert loaded.eos_token_ids == (1, 4)  # </s> and <|im_end|>
    assert loaded.config.vocab_size == loaded.tokenizer.vocab_size


def test_debug_checkpoint_is_deterministic_and_seeded(tmp_path):
    a = make_debug_checkpoint(tmp_path / "a")
    b = make_debug_checkpoint(tmp_path / "b")
    c = make_debug_checkpoint(tmp_path / "c", seed=1)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_debug_checkpoint_is_fast(tmp_path):
    make_debug_checkpoint(tmp_path / "warm")
    start = time.perf_counter()
    make_debug_checkpoint(tmp_path / "timed", arch="llama")
    # NOTE: generous bound: the machine is shared; the real cost is ~10 ms once warm.
    assert time.perf_counter() - start < 1.0


def test_debug_checkpoint_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="arch='gpt2'"):
        make_debug_checkpoint(tmp_path, arch="gpt2")
    with pytest.raises(ValueError, match="vocab_size=100"):
        make_debug_checkpoint(tmp_path, vocab_size=100)
