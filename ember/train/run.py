"""One training run end to end: corpus -> tokenizer -> cached tokens -> model -> fit -> export.

Layout of ``out_dir``: ``recipe.json``, ``metrics.jsonl``, ``checkpoints/step-N.pt`` (the
newest two) and ``hf/`` (the exported Hugging Face checkpoint, rewritten at every stop).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ember.errors import InvalidInputError
from ember.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from ember.train.config import Recipe
from ember.train.corpus import Corpus, build_corpus
from ember.train.data import TrainBatches, cached_token_arrays, val_batches
from ember.train.export import export_hf
from ember.train.loop import FitResult, fit
from ember.train.model_init import build_model
from ember.train.tokenizer_trainer import (
    EOS_TOKEN,
    MAX_VOCAB_SIZE,
    TOKENIZER_FILES,
    cached_tokenizer,
    tokenizer_hash,
)
from ember.train.trainer import Trainer

# Changing these on resume would change what the saved data position means.
_DATA_FIELDS = ("seq_len", "batch_size", "seed", "vocab_size", "val_fraction")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where a run reads and writes, and when it stops (everything that is not the recipe)."""

    out_dir: Path
    corpus_root: Path | None = None  # None = this interpreter's standard library
    cache_root: Path | None = None  # None = $EMBER_CACHE/train
    tokenizer_dir: Path | None = None  # None = train (once) and cache a tokenizer
    export_dir: Path | None = None  # None = <out_dir>/hf
    resume: bool = False
    max_minutes: float | None = None
    stop_at_step: int | None = None
    distill_from: Path | None = None
    progress: bool = True

    def __post_init__(self):
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes={self.max_minutes} must be positive")
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise ValueError(f"stop_at_step={self.stop_at_step} must be at least 1")


@dataclass(frozen=True, kw_only=True)
class PreparedData:
    corpus: Corpus
    tokenizer_dir: Path
    tokens: dict[str, np.ndarray]  # split -> uint16 stream
    vocab_size: int
    eos_token_id: int


@dataclass(frozen=True, kw_only=True)
class RunResult:
    fit: FitResult
    export_dir: Path


def prepare_data(recipe: Recipe, options: RunOptions) -> PreparedData:
    """Build the corpus, get the tokenizer (trained once per corpus and vocab size, or
    ``options.tokenizer_dir``) and the cached token streams."""
    from tokenizers import Tokenizer

    cache_root = options.cache_root or _default_cache_root()
    corpus = build_corpus(options.corpus_root, val_fraction=recipe.train.val_fraction)
    tokenizer_dir = options.tokenizer_dir
    if tokenizer_dir is None:
        tokenizer_dir = cached_tokenizer(
            corpus,
            recipe.train.vocab_size,
            cache_root,
            model_max_length=recipe.model.max_position_embeddings,
        )
    else:
        missing = [n for n in TOKENIZER_FILES if not (tokenizer_dir / n).is_file()]
        if missing:
            raise InvalidInputError(f"--tokenizer {tokenizer_dir}: no {' or '.join(missing)}")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    except Exception as exc:  # the Rust library raises plain Exception subclasses
        raise InvalidInputError(f"cannot read {tokenizer_dir}/tokenizer.json: {exc}") from None
    eos = tokenizer.token_to_id(EOS_TOKEN)
    if eos is None or tokenizer.get_vocab_size() > MAX_VOCAB_SIZE:
        raise InvalidInputError(
            f"tokenizer {tokenizer_dir} needs an {EOS_TOKEN} token and at most "
            f"{MAX_VOCAB_SIZE} ids (token ids are stored as uint16)"
        )
    return PreparedData(
        corpus=corpus,
        tokenizer_dir=tokenizer_dir,
        tokens=cached_token_arrays(corpus, tokenizer_dir, cache_root),
        vocab_size=tokenizer.get_vocab_size(),
        eos_token_id=eos,
    )


def build_trainer(recipe: Recipe, data: PreparedData, *, distill_from: Path | None = None) -> Trainer:
    """The model, batches and objective of ``recipe`` over ``data``, at step 0."""
    config = recipe.train
    model = build_model(
        recipe.model,
        vocab_size=data.vocab_size,
        bos_token_id=data.eos_token_id,
        eos_token_id=data.eos_token_id,
        seed=config.seed,
    )
    try:
        batches = TrainBatches(
            data.tokens["train"],
            seq_len=config.seq_len,
            batch_size=config.batch_size,
            seed=config.seed,
        )
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    val = val_batches(
        data.tokens["val"],
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        max_tokens=config.eval_tokens,
    )
    objective = None
    if distill_from is not None:
        objective = _distill_objective(model, data, distill_from, config)
    return Trainer(model, config, batches, val, objective=objective)


def run_training(recipe: Recipe, options: RunOptions) -> RunResult:
    """Train ``recipe`` (fresh, or resumed from the newest checkpoint in ``out_dir``), then
    export. Raises InvalidInputError on an unusable ``out_dir``, corpus or checkpoint."""
    out_dir = options.out_dir
    checkpoints = list_checkpoints(out_dir)
    if checkpoints and not options.resume:
        raise InvalidInputError(
            f"{out_dir} already holds checkpoints; pass --resume to continue that run, or choose another --out"
        )
    if options.resume and not checkpoints:
        raise InvalidInputError(f"--resume: no checkpoints under {out_dir}/checkpoints")
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"--out {out_dir} exists and is not a directory")

    data = prepare_data(recipe, options)
    trainer = build_trainer(recipe, data, distill_from=options.distill_from)
    tok_hash = tokenizer_hash(data.tokenizer_dir)
    if checkpoints:
        state = load_checkpoint(checkpoints[-1])
        _check_resumable(state, recipe, tok_hash, checkpoints[-1])
        trainer.load_state_dict(state)
        set_rng_state(state["rng"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2) + "\n")

    def save() -> Path:
        extra = {"recipe": recipe.to_dict(), "tokenizer_hash": tok_hash}
        return save_checkpoint(out_dir, trainer.step, {**trainer.state_dict(), **extra})

    result = fit(
        trainer,
        save=save,
        metrics_file=out_dir / "metrics.jsonl",
        max_minutes=options.max_minutes,
        stop_at_step=options.stop_at_step,
        progress=options.progress,
    )
    metadata = {
        "recipe": recipe.to_dict(),
        "step": trainer.step,
        "tokens_seen": trainer.tokens_seen,
        "train_seconds": trainer.elapsed_s,
        "val_loss": None if result.last_eval is None else result.last_eval.loss,
        "corpus": data.corpus.summary(),
        "tokenizer_hash": tok_hash,
        "distilled_from": None if options.distill_from is None else str(options.distill_from),
    }
    export_dir = export_hf(
        trainer.model,
        recipe.model,
        data.tokenizer_dir,
        options.export_dir or out_dir / "hf",
        metadata=metadata,
    )
    return RunResult(fit=result, export_dir=export_dir)


def _check_resumable(state: dict, recipe: Recipe, tok_hash: str, path: Path) -> None:
    saved = Recipe.from_dict(state["recipe"])
    if saved.model != recipe.model:
        raise InvalidInputError(f"{path} was trained with model shape {saved.model}, not {recipe.model}")
    changed = [
        f"{name}: {getattr(saved.train, name)!r} -> {getattr(recipe.train, name)!r}"
        for name in _DATA_FIELDS
        if getattr(saved.train, name) != getattr(recipe.train, name)
    ]
    if changed:
        raise InvalidInputError(f"cannot resume {path} with changed data settings: {changed}")
    if state["tokenizer_hash"] != tok_hash:
        raise InvalidInputError(f"{path} was trained with a different tokenizer")


def _distill_objective(model, data: PreparedData, teacher_path: Path, config):
    from ember.models.loader import load_model
    from ember.train.objective import DistillLoss

    teacher_tokenizer = Path(teacher_path) / "tokenizer.json"
    if not teacher_tokenizer.is_file():
        raise InvalidInputError(f"--distill-from {teacher_path}: no tokenizer.json there")
    if tokenizer_hash(teacher_path) != tokenizer_hash(data.tokenizer_dir):
        raise InvalidInputError(
            f"--distill-from {teacher_path}: the teacher's tokenizer differs from this run's; "
            "a draft must share its target's tokenizer"
        )
    teacher = load_model(teacher_path, dtype="float32").module
    return DistillLoss(model, teacher, alpha=config.distill_alpha, temperature=config.distill_temperature)


def _default_cache_root() -> Path:
    from ember.zoo import cache_dir

    return cache_dir() / "train"


def with_overrides(recipe: Recipe, overrides: dict) -> Recipe:
    """``recipe`` with training overrides; raises InvalidInputError naming the bad field."""
    try:
        return recipe.replace_train(**overrides)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(str(exc)) from None
