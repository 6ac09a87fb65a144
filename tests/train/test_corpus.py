"""Corpus: deterministic file list and split, test suites excluded, clear errors."""

from __future__ import annotations

import pytest

from ember.errors import InvalidInputError
from ember.train.corpus import build_corpus, is_excluded, split_of, stdlib_root


def test_corpus_is_deterministic_and_excludes_tests(micro_corpus):
    a = build_corpus(micro_corpus, val_fraction=0.3)
    b = build_corpus(micro_corpus, val_fraction=0.3)
    assert a == b
    paths = [f.relpath for f in a.files]
    assert paths == sorted(paths)
    assert len(paths) == 8 and all(p.startswith("lib/") for p in paths)
    assert {f.split for f in a.files} == {"train", "val"}
    assert a.num_bytes("train") + a.num_bytes("val") == sum(f.num_bytes for f in a.files)


def test_fingerprint_tracks_content_and_split(micro_corpus, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(micro_corpus, copy)
    base = build_corpus(copy, val_fraction=0.3)
    assert build_corpus(copy, val_fraction=0.1).fingerprint != base.fingerprint
    (copy / "lib" / "keyword.py").write_text("x = 1\n")
    assert build_corpus(copy, val_fraction=0.3).fingerprint != base.fingerprint


@pytest.mark.parametrize(
    "relpath, excluded",
    [
        ("json/decoder.py", False),
        ("doctest.py", False),
        ("unittest/case.py", False),
        ("test/test_json.py", True),
        ("lib2to3/tests/data/x.py", True),
        ("idlelib/idle_test/htest.py", True),
        ("tkinter/test_widgets.py", True),
        ("ctypes/foo_test.py", True),
        ("site-packages/numpy/core.py", True),
        ("json/__pycache__/x.py", True),
        ("README.txt", True),
    ],
)
def test_exclusion_rules(relpath, excluded):
    assert is_excluded(relpath) is excluded


def test_split_is_a_stable_function_of_the_path():
    paths = [f"pkg/mod_{i}.py" for i in range(2000)]
    splits = [split_of(p, 0.02) for p in paths]
    assert splits == [split_of(p, 0.02) for p in paths]
    assert 15 <= splits.count("val") <= 70  # ~2% of 2000
    assert all(split_of(p, 0.0) == "train" for p in paths)


def test_stdlib_file_list_excludes_test_suites():
    corpus = build_corpus(stdlib_root())
    paths = {f.relpath for f in corpus.files}
    assert "json/decoder.py" in paths
    assert not any(p.startswith(("test/", "idlelib/idle_test/")) for p in paths)
    assert not any("site-packages" in p for p in paths)
    assert 0 < len(corpus.split_files("val")) < 0.05 * len(paths)


def test_bad_root_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="is not a directory"):
        build_corpus(tmp_path / "missing")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_a.py").write_text("pass\n")
    with pytest.raises(InvalidInputError, match="holds no"):
        build_corpus(tmp_path)
