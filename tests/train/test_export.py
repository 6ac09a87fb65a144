"""An exported run is a standard HF checkpoint: Ember and transformers load it and agree."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from train_recipes import micro_recipe

from ember.models.loader import load_model
from ember.train.run import RunOptions, run_training


@pytest.fixture(scope="module")
def exported(micro_corpus, tmp_path_factory):
    recipe = micro_recipe(max_steps=6, lr=1e-2, eval_interval=0, checkpoint_interval=0)
    # NOTE: a wide init keeps logits well separated after a few steps, so greedy tokens do not
    # hinge on rounding differences between the two implementations.
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, init_std=0.3))
    out = tmp_path_factory.mktemp("run")
    return run_training(recipe, RunOptions(out_dir=out, corpus_root=micro_corpus, progress=False))


def test_export_files(exported):
    path = exported.export_dir
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "bfloat16"
    assert config["vocab_size"] == 320 and config["tie_word_embeddings"] is True
    generation = json.loads((path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [0, 2]  # <|endoftext|>, <|im_end|>
    meta = json.loads((path / "ember_train.json").read_text())
    assert meta["step"] == 6 and meta["recipe"]["name"] == "ember-debug"
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        assert {f.get_tensor(name).dtype for name in names} == {torch.bfloat16}
        assert "model.layers.0.self_attn.q_proj.weight" in names


def test_ember_and_transformers_agree(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = exported.export_dir
    ours = load_model(path, dtype="float32")
    theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = "def decode(self, s):\n    "
    ids = ours.tokenizer.encode(prompt)
    assert ids == hf_tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        expected = theirs(torch.tensor([ids])).logits
        got = ours.module.compute_logits(ours.module(torch.tensor([ids])))
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        # NOTE: an explicit mask: with eos disabled, generate would otherwise infer one from
        # pad (= BOS = <|endoftext|>) and mask the prompt's first token.
        hf_greedy = theirs.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
        )[0, len(ids) :].tolist()

    from ember.core.sampling_params import SamplingParams
    from ember.engine.llm import LLM

    llm = LLM(str(path), dtype="float32")
    (result,) = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    assert result.outputs[0].token_ids == hf_greedy
