"""Train, save and cache the byte-level BPE tokenizer of Ember's own models.

The saved folder holds ``tokenizer.json`` and ``tokenizer_config.json`` and loads with both
``ember.models.tokenizer.load_tokenizer`` and ``transformers.AutoTokenizer``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ember.errors import InvalidInputError
from ember.models.tokenizer import CHATML_TEMPLATE
from ember.train.corpus import Corpus

EOS_TOKEN = "<|endoftext|>"  # end of a document, document separator, and BOS
SPECIAL_TOKENS = (EOS_TOKEN, "<|im_start|>", "<|im_end|>")
MAX_VOCAB_SIZE = 65536  # token ids are cached as uint16
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` with ``vocab_size`` ids (specials included).

    Encoding with special tokens prepends ``<|endoftext|>``: every training document follows
    one, so a prompt that starts with it looks like the start of a document.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    num_bytes = 256 + len(SPECIAL_TOKENS)
    if not num_bytes < vocab_size <= MAX_VOCAB_SIZE:
        raise InvalidInputError(f"vocab_size={vocab_size} must be in ({num_bytes}, {MAX_VOCAB_SIZE}]")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOS_TOKEN} $A",
        pair=f"{EOS_TOKEN} $A {EOS_TOKEN} $B",
        special_tokens=[(EOS_TOKEN, tokenizer.token_to_id(EOS_TOKEN))],
    )
    return tokenizer


def save_tokenizer(tokenizer, path: str | Path, *, model_max_length: int) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (eos = bos = ``<|endoftext|>``,
    pad = eos, a ChatML-style chat template) into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHATML_TEMPLATE,
    }
    _write_json(path / "tokenizer_config.json", config)
    return path


def tokenizer_hash(path: str | Path) -> str:
    """sha256 of ``tokenizer.json``: the key of everything tokenized with it."""
    return hashlib.sha256((Path(path) / "tokenizer.json").read_bytes()).hexdigest()


def cached_tokenizer(corpus: Corpus, vocab_size: int, cache_root: Path, *, model_max_length: int = 1024) -> Path:
    """The folder of the tokenizer trained on ``corpus``'s train split, training it once.

    Keyed by the corpus fingerprint and ``vocab_size``, so the target and its drafts (same
    corpus, same vocab size) share one tokenizer, which speculative decoding requires.
    """
    key = f"py{corpus.python_version}-{corpus.fingerprint[:12]}-v{vocab_size}"
    target = cache_root / "tokenizers" / key
    if (target / "tokenizer_config.json").is_file():
        return target
    tokenizer = train_tokenizer(corpus.texts("train"), vocab_size)
    # NOTE: written beside and renamed, so a crash never leaves a half-written tokenizer.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}-"))
    save_tokenizer(tokenizer, staging, model_max_length=model_max_length)
    _write_json(staging / "corpus.json", corpus.summary())
    try:
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # a concurrent writer won the race
    return target


def _write_json(file: Path, data: dict) -> None:
    file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
