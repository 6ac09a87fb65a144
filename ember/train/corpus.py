"""The training corpus: the Python standard library source of this machine, as documents.

The file list is sorted and the train/validation split is a pure function of each file's
relative path, so two builds over the same tree give the same documents in the same order.
Nothing of the corpus is committed; it is read from the running interpreter's stdlib.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from ember.errors import InvalidInputError

Split = Literal["train", "val"]

# Test suites, installed third-party packages and byte-code are not "the standard library".
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


def stdlib_root() -> Path:
    """The standard library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_excluded(relpath: str) -> bool:
    """True for test suites (``test/``, ``tests/``, ``idle_test/``, ``test_*.py``,
    ``*_test.py``), site-packages and anything that is not a ``.py`` file."""
    path = PurePosixPath(relpath)
    if path.suffix != ".py" or any(part in EXCLUDED_DIRS for part in path.parts[:-1]):
        return True
    return path.name.startswith("test_") or path.stem.endswith("_test")


def split_of(relpath: str, val_fraction: float) -> Split:
    """``"val"`` for a stable ``val_fraction`` of paths (by a hash of the path), else ``"train"``.

    NOTE: a hash, not a random draw, so adding or removing one file never moves another.
    """
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return "val" if int.from_bytes(digest[:8], "big") < val_fraction * 2**64 else "train"


@dataclass(frozen=True, kw_only=True)
class CorpusFile:
    relpath: str  # POSIX-style, relative to the corpus root
    split: Split
    num_bytes: int


@dataclass(frozen=True, kw_only=True)
class Corpus:
    """A sorted list of source files under ``root`` with their split.

    ``fingerprint`` hashes the split and every path and its bytes: caches keyed by it are
    invalidated when any file changes. ``python_version`` records whose stdlib this is.
    """

    root: Path
    files: tuple[CorpusFile, ...]
    python_version: str
    fingerprint: str
    num_skipped: int  # files that are not valid UTF-8

    def split_files(self, split: Split) -> list[CorpusFile]:
        return [f for f in self.files if f.split == split]

    def texts(self, split: Split) -> Iterator[str]:
        """The documents of ``split`` in file order."""
        for file in self.split_files(split):
            yield (self.root / file.relpath).read_text(encoding="utf-8")

    def num_bytes(self, split: Split) -> int:
        return sum(f.num_bytes for f in self.split_files(split))

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "python_version": self.python_version,
            "fingerprint": self.fingerprint,
            "num_files": {s: len(self.split_files(s)) for s in ("train", "val")},
            "num_bytes": {s: self.num_bytes(s) for s in ("train", "val")},
            "num_skipped": self.num_skipped,
        }


def build_corpus(root: str | Path | None = None, *, val_fraction: float = 0.02) -> Corpus:
    """List the corpus under ``root`` (default: this interpreter's stdlib).

    Raises InvalidInputError when ``root`` is not a directory or holds no source files.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidInputError(f"val_fraction={val_fraction} must be in [0, 1)")
    root = stdlib_root() if root is None else Path(root).expanduser()
    if not root.is_dir():
        raise InvalidInputError(f"corpus root {str(root)!r} is not a directory")
    files: list[CorpusFile] = []
    # NOTE: the split is part of the fingerprint: a tokenizer trained on a different train
    # split must not be reused.
    digest = hashlib.sha256(f"val_fraction={val_fraction!r}".encode())
    num_skipped = 0
    for relpath in _walk(root):
        data = (root / relpath).read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            num_skipped += 1
            continue
        files.append(CorpusFile(relpath=relpath, split=split_of(relpath, val_fraction), num_bytes=len(data)))
        digest.update(relpath.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
    if not files:
        raise InvalidInputError(f"corpus root {str(root)!r} holds no (non-test) .py files")
    return Corpus(
        root=root,
        files=tuple(files),
        python_version=platform.python_version(),
        fingerprint=digest.hexdigest(),
        num_skipped=num_skipped,
    )


def _walk(root: Path) -> list[str]:
    relpaths = []
    for dirpath, dirnames, filenames in os.walk(root):
        # NOTE: pruned in place so os.walk never descends into site-packages or test suites;
        # symlinked directories are not followed (os.walk's default).
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            relpath = (rel_dir / name).as_posix()
            if not is_excluded(relpath) and os.path.isfile(os.path.join(dirpath, name)):
                relpaths.append(relpath)
    return sorted(relpaths)
