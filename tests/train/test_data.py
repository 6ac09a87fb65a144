"""Token cache and batches: layout, determinism, once-per-epoch coverage, exact positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.train.corpus import build_corpus
from ember.train.data import TrainBatches, cached_token_arrays, val_batches
from ember.train.tokenizer_trainer import cached_tokenizer


def test_cached_token_arrays(micro_corpus, tmp_path):
    from ember.models.tokenizer import load_tokenizer

    corpus = build_corpus(micro_corpus, val_fraction=0.3)
    tok_dir = cached_tokenizer(corpus, 320, tmp_path)
    arrays = cached_token_arrays(corpus, tok_dir, tmp_path)
    tokenizer = load_tokenizer(tok_dir)
    eos = tokenizer.eos_token_ids[0]
    for split in ("train", "val"):
        tokens = arrays[split]
        assert tokens.dtype == np.uint16
        # one separator before each document, and the documents decode back to the files
        assert int((tokens == eos).sum()) == len(corpus.split_files(split))
        docs = np.split(np.asarray(tokens), np.flatnonzero(tokens == eos))[1:]
        assert [tokenizer.decode(d[1:].tolist()) for d in docs] == list(corpus.texts(split))
    again = cached_token_arrays(corpus, tok_dir, tmp_path)
    assert isinstance(again["train"], np.memmap)
    assert np.array_equal(again["train"], arrays["train"])


def _tokens(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint16)


def test_batches_shift_labels_and_cover_each_window_once_per_epoch():
    batches = TrainBatches(_tokens(1000), seq_len=9, batch_size=3, seed=0)
    seen = []
    for _ in range(batches.batches_per_epoch(batches._plan(0)[0])):
        inputs, labels = batches.next_batch()
        assert inputs.shape == labels.shape == (3, 9) and inputs.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], labels[:, :-1])
        seen += inputs[:, 0].tolist()
    assert batches.position.epoch == 0
    assert len(seen) == len(set(seen))  # no window twice in an epoch
    batches.next_batch()
    assert batches.position.epoch == 1 and batches.position.index == 1


def test_batches_resume_from_position():
    a = TrainBatches(_tokens(5000), seq_len=15, batch_size=4, seed=7)
    for _ in range(100):  # crosses epoch boundaries
        a.next_batch()
    b = TrainBatches(_tokens(5000), seq_len=15, batch_size=4, seed=7)
    b.load_state_dict(a.state_dict())
    for _ in range(30):
        assert all(torch.equal(x, y) for x, y in zip(a.next_batch(), b.next_batch()))
    c = TrainBatches(_tokens(5000), seq_len=15, batch_size=4, seed=8)
    assert not torch.equal(
        c.next_batch()[0], TrainBatches(_tokens(5000), seq_len=15, batch_size=4, seed=7).next_batch()[0]
    )


def test_too_few_tokens_is_a_clear_error():
    with pytest.raises(ValueError, match="too few for one batch"):
        TrainBatches(_tokens(50), seq_len=16, batch_size=4, seed=0)


def test_val_batches_are_fixed_and_bounded():
    first = val_batches(_tokens(1000), seq_len=9, batch_size=4, max_tokens=90)
    assert sum(labels.numel() for _, labels in first) == 90
    second = val_batches(_tokens(1000), seq_len=9, batch_size=4, max_tokens=90)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    assert val_batches(_tokens(5), seq_len=9, batch_size=4, max_tokens=90) == []
