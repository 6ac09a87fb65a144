"""The recipes of Ember's own model family, as functions returning frozen ``Recipe`` values.

All share one tokenizer (byte-level BPE, 8192 ids, trained on the stdlib's train split),
which speculative decoding needs: a draft proposes ids that the target verifies.
Shapes and step counts come from measured tokens/s on a 2-core AVX-512 CPU: ``max_steps``
fits the recommended ``--max-minutes`` of docs/training.md at the measured speed.
"""

from __future__ import annotations

from collections.abc import Callable

from ember.errors import InvalidInputError
from ember.train.config import ModelShape, Recipe, TrainConfig


def ember_tiny() -> Recipe:
    """The target: ~23M parameters (4.2M of them the tied embedding), context 1024.

    NOTE: intermediate 1024 (not 1408) keeps the shipped family (target + two drafts, bf16)
    under the repository's 60 MB budget; max_steps fits one hour on one core."""
    return Recipe(
        name="ember-tiny",
        description="Llama 8 x 512 (GQA 8/4), 23M params, ctx 1024; the target model",
        model=ModelShape(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1024),
        train=TrainConfig(
            batch_size=4,
            grad_accum=2,
            max_steps=300,
            lr=2e-3,
            warmup_steps=30,
            eval_interval=50,
            checkpoint_interval=25,
            compile=True,
        ),
    )


def ember_draft_a() -> Recipe:
    """Draft A: deep-narrow, ~3.2M parameters (half of them the embedding)."""
    return Recipe(
        name="ember-draft-a",
        description="Llama 4 x 192 (MQA), 3.2M params, ctx 1024; draft for speculation",
        model=ModelShape(hidden_size=192, num_layers=4, num_heads=3, num_kv_heads=1, intermediate_size=512),
        train=TrainConfig(
            batch_size=8,
            grad_accum=1,
            max_steps=700,
            lr=3e-3,
            warmup_steps=50,
            eval_interval=100,
            checkpoint_interval=100,
            compile=True,
            seed=1,
        ),
    )


def ember_draft_b() -> Recipe:
    """Draft B: wide-shallow, another seed, ~3.6M parameters, so its errors differ from A's
    (merge-based speculation gains most from drafts that disagree where they are wrong)."""
    return Recipe(
        name="ember-draft-b",
        description="Llama 2 x 256 (GQA 4/2), 3.6M params, ctx 1024; second draft",
        model=ModelShape(hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=704),
        train=TrainConfig(
            batch_size=8,
            grad_accum=1,
            max_steps=700,
            lr=3e-3,
            warmup_steps=50,
            eval_interval=100,
            checkpoint_interval=100,
            compile=True,
            seed=2,
        ),
    )


def ember_debug() -> Recipe:
    """A ~0.1M-parameter model for tests and smoke runs (seconds, not minutes)."""
    return Recipe(
        name="ember-debug",
        description="Llama 2 x 64, ctx 256; tests and smoke runs only",
        model=ModelShape(
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=128,
            max_position_embeddings=256,
        ),
        train=TrainConfig(
            seq_len=64,
            batch_size=4,
            max_steps=20,
            lr=3e-3,
            warmup_steps=2,
            eval_interval=10,
            eval_tokens=1024,
            checkpoint_interval=10,
            log_interval=1,
            vocab_size=512,
            val_fraction=0.2,
        ),
    )


RECIPES: dict[str, Callable[[], Recipe]] = {
    "ember-tiny": ember_tiny,
    "ember-draft-a": ember_draft_a,
    "ember-draft-b": ember_draft_b,
    "ember-debug": ember_debug,
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; raises InvalidInputError listing the known names."""
    factory = RECIPES.get(name)
    if factory is None:
        raise InvalidInputError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return factory()
