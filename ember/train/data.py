"""Tokenized corpus (cached uint16 arrays) and the batches the trainer consumes.

Stream layout: ``<|endoftext|> doc_0 <|endoftext|> doc_1 ...``: every document follows the
separator, which is also the BOS that the tokenizer prepends to a prompt.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ember.train.corpus import Corpus, Split
from ember.train.tokenizer_trainer import EOS_TOKEN, tokenizer_hash

_ENCODE_BATCH = 64  # documents per encode_batch call (bounds memory; the library is parallel)


def tokenize_split(corpus: Corpus, split: Split, tokenizer_dir: Path) -> np.ndarray:
    """All documents of ``split`` as one uint16 stream (separator before each document)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos = tokenizer.token_to_id(EOS_TOKEN)
    assert eos is not None and tokenizer.get_vocab_size() <= 65536
    pieces: list[np.ndarray] = []
    texts = list(corpus.texts(split))
    for start in range(0, len(texts), _ENCODE_BATCH):
        encodings = tokenizer.encode_batch(texts[start : start + _ENCODE_BATCH], add_special_tokens=False)
        for encoding in encodings:
            pieces.append(np.asarray([eos, *encoding.ids], dtype=np.uint16))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


def cached_token_arrays(corpus: Corpus, tokenizer_dir: Path, cache_root: Path) -> dict[Split, np.ndarray]:
    """``{"train": ..., "val": ...}`` uint16 streams, tokenized once and cached.

    Keyed by the Python version, the corpus fingerprint and the tokenizer hash; the arrays
    are memory-mapped on later calls.
    """
    key = f"py{corpus.python_version}-{corpus.fingerprint[:12]}-tok{tokenizer_hash(tokenizer_dir)[:12]}"
    folder = cache_root / "tokens" / key
    arrays: dict[Split, np.ndarray] = {}
    for split in ("train", "val"):
        file = folder / f"{split}.npy"
        if not file.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tokens = tokenize_split(corpus, split, tokenizer_dir)
            # NOTE: written beside and renamed so a crash never leaves a truncated array.
            fd, staging = tempfile.mkstemp(dir=folder, suffix=".npy")
            with os.fdopen(fd, "wb") as f:
                np.save(f, tokens)
            os.replace(staging, file)
        arrays[split] = np.load(file, mmap_mode="r")
    meta = folder / "meta.json"
    if not meta.is_file():
        summary = {**corpus.summary(), "num_tokens": {s: int(a.size) for s, a in arrays.items()}}
        meta.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return arrays


@dataclass(frozen=True)
class DataPosition:
    """Where the training stream is: ``index`` batches into ``epoch``."""

    epoch: int = 0
    index: int = 0


class TrainBatches:
    """Random contiguous windows, each training token used once per epoch.

    Epoch ``e`` cuts the stream into windows of ``seq_len + 1`` tokens starting at an
    offset drawn from ``(seed, e)`` and visits them in an order drawn from the same seed;
    a batch takes the next ``batch_size`` windows. Everything is a function of the
    position, so saving ``position`` is enough to resume exactly.
    """

    def __init__(self, tokens: np.ndarray, *, seq_len: int, batch_size: int, seed: int):
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        if self.batches_per_epoch(0) < 1:
            raise ValueError(
                f"the training split has {tokens.size} tokens, too few for one batch of {batch_size} x {seq_len + 1}"
            )
        self.position = DataPosition()
        self._epoch_plan: tuple[int, int, np.ndarray] | None = None  # (epoch, offset, order)

    def batches_per_epoch(self, offset: int) -> int:
        return (self.tokens.size - offset) // (self.seq_len + 1) // self.batch_size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)``, each ``[batch_size, seq_len]`` int64; labels are the
        inputs shifted left by one."""
        epoch, index = self.position.epoch, self.position.index
        offset, order = self._plan(epoch)
        if index >= self.batches_per_epoch(offset):
            epoch, index = epoch + 1, 0
            offset, order = self._plan(epoch)
        window = self.seq_len + 1
        starts = offset + order[index * self.batch_size : (index + 1) * self.batch_size] * window
        rows = np.stack([np.asarray(self.tokens[s : s + window]) for s in starts])
        self.position = DataPosition(epoch=epoch, index=index + 1)
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        return {"epoch": self.position.epoch, "index": self.position.index}

    def load_state_dict(self, state: dict) -> None:
        self.position = DataPosition(epoch=int(state["epoch"]), index=int(state["index"]))

    def _plan(self, epoch: int) -> tuple[int, np.ndarray]:
        if self._epoch_plan is None or self._epoch_plan[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(0, self.seq_len + 1))
            num_windows = (self.tokens.size - offset) // (self.seq_len + 1)
            self._epoch_plan = (epoch, offset, rng.permutation(num_windows))
        return self._epoch_plan[1], self._epoch_plan[2]


def val_batches(
    tokens: np.ndarray, *, seq_len: int, batch_size: int, max_tokens: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation batches: consecutive windows from the start of the val stream,
    at most ``max_tokens`` predicted tokens (the same every evaluation)."""
    window = seq_len + 1
    num_windows = min(tokens.size // window, max(max_tokens // seq_len, 1))
    rows = np.asarray(tokens[: num_windows * window]).astype(np.int64).reshape(-1, window)
    rows = torch.from_numpy(rows)
    return [(rows[i : i + batch_size, :-1], rows[i : i + batch_size, 1:]) for i in range(0, num_windows, batch_size)]
