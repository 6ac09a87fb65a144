"""The trained tokenizer: lossless round trip, special tokens, loads in Ember and transformers."""

from __future__ import annotations

import pytest

from ember.errors import InvalidInputError
from ember.models.tokenizer import load_tokenizer
from ember.train.corpus import build_corpus
from ember.train.tokenizer_trainer import (
    EOS_TOKEN,
    SPECIAL_TOKENS,
    cached_tokenizer,
    save_tokenizer,
    tokenizer_hash,
    train_tokenizer,
)

SAMPLES = [
    "def f(x):\n    return x ** 2  # square\n",
    "class A:\n\tpass\n\n\n",
    "s = 'café 東京 🙂' + \"\\n\"\r\n",
    "   leading and trailing spaces   ",
    "",
]


@pytest.fixture(scope="module")
def tokenizer_dir(micro_corpus, tmp_path_factory):
    corpus = build_corpus(micro_corpus, val_fraction=0.3)
    tokenizer = train_tokenizer(corpus.texts("train"), 320)
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok"), model_max_length=256)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_lossless(tokenizer_dir, text):
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_special_tokens_and_bos(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.vocab_size == 320
    eos = tokenizer.token_to_id(EOS_TOKEN)
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert tokenizer.eos_token_ids == (eos,) and tokenizer.bos_token_id == eos
    ids = tokenizer.encode("import os")
    assert ids[0] == eos and ids[1:] == tokenizer.encode("import os", add_special_tokens=False)
    # a special token in text is one id, never split into bytes
    assert tokenizer.encode("<|im_end|>", add_special_tokens=False) == [2]


def test_transformers_agrees(tokenizer_dir):
    from transformers import AutoTokenizer

    ours = load_tokenizer(tokenizer_dir)
    theirs = AutoTokenizer.from_pretrained(tokenizer_dir)
    messages = [{"role": "user", "content": "Write a loop."}]
    prompt = ours.apply_chat_template(messages)
    expected = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == expected
    assert prompt.endswith("<|im_start|>assistant\n")
    for text in SAMPLES + [prompt]:
        assert ours.encode(text) == theirs(text)["input_ids"]
    assert theirs.eos_token == EOS_TOKEN


def test_cached_tokenizer_trains_once(micro_corpus, tmp_path):
    corpus = build_corpus(micro_corpus, val_fraction=0.3)
    first = cached_tokenizer(corpus, 300, tmp_path)
    mtime = (first / "tokenizer.json").stat().st_mtime_ns
    again = cached_tokenizer(corpus, 300, tmp_path)
    assert again == first and (again / "tokenizer.json").stat().st_mtime_ns == mtime
    other = cached_tokenizer(corpus, 310, tmp_path)
    assert other != first and tokenizer_hash(other) != tokenizer_hash(first)
    # NOTE: training is deterministic, so a second machine with the same stdlib gets the
    # same tokenizer (and a draft trained there matches a target trained here).
    retrained = save_tokenizer(train_tokenizer(corpus.texts("train"), 300), tmp_path / "re", model_max_length=1024)
    assert tokenizer_hash(retrained) == tokenizer_hash(first)


def test_vocab_size_out_of_range():
    with pytest.raises(InvalidInputError, match="vocab_size=100"):
        train_tokenizer(["abc"], 100)
    with pytest.raises(InvalidInputError, match="vocab_size=70000"):
        train_tokenizer(["abc"], 70000)
