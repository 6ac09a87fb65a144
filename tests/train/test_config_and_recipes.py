"""Config validation names the field; recipes have the shapes the family promises."""

from __future__ import annotations

import pytest

from ember.train.config import ModelShape, Recipe, TrainConfig
from ember.train.recipes import RECIPES, get_recipe


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"warmup_steps": -1}, "warmup_steps=-1"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio=1.5"),
        ({"beta2": 1.0}, "beta2=1.0"),
        ({"precision": "fp16"}, "precision='fp16'"),
        ({"grad_clip": -1.0}, "grad_clip=-1.0"),
        ({"val_fraction": 1.0}, "val_fraction=1.0"),
        ({"warmup_steps": 10, "max_steps": 10}, "warmup_steps=10"),
    ],
)
def test_train_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        TrainConfig(**overrides)


def test_model_shape_validation():
    with pytest.raises(ValueError, match="num_heads=3 must divide hidden_size=64"):
        ModelShape(hidden_size=64, num_layers=1, num_heads=3, num_kv_heads=1, intermediate_size=8)
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
        ModelShape(hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=3, intermediate_size=8)


def test_recipe_round_trips_through_a_dict():
    recipe = get_recipe("ember-tiny")
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_family_shapes():
    tiny = get_recipe("ember-tiny")
    vocab = tiny.train.vocab_size
    assert 20e6 <= tiny.model.num_params(vocab) <= 40e6
    assert tiny.model.max_position_embeddings >= 1024 and tiny.train.seq_len >= 1024
    drafts = [get_recipe("ember-draft-a"), get_recipe("ember-draft-b")]
    for draft in drafts:
        assert 1e6 <= draft.model.num_params(vocab) <= 4e6
        # speculation needs one tokenizer and the target's context
        assert draft.train.vocab_size == vocab
        assert draft.train.val_fraction == tiny.train.val_fraction
        assert draft.model.max_position_embeddings == tiny.model.max_position_embeddings
    assert drafts[0].model != drafts[1].model and drafts[0].train.seed != drafts[1].train.seed
    assert set(RECIPES) >= {"ember-tiny", "ember-draft-a", "ember-draft-b", "ember-debug"}


def test_num_params_matches_the_module():
    from ember.train.model_init import build_model

    for name in RECIPES:
        recipe = get_recipe(name)
        if recipe.model.hidden_size > 256:
            continue  # keep the test micro
        vocab = recipe.train.vocab_size
        model = build_model(recipe.model, vocab_size=vocab, bos_token_id=0, eos_token_id=0, seed=0)
        assert sum(p.numel() for p in model.parameters()) == recipe.model.num_params(vocab)
