import shutil
import sysconfig
from pathlib import Path

import pytest

# A handful of real stdlib modules (small, stable across 3.10-3.13), plus test-suite files
# that the corpus builder must skip.
MICRO_FILES = (
    "bisect.py",
    "heapq.py",
    "textwrap.py",
    "json/decoder.py",
    "json/encoder.py",
    "json/scanner.py",
    "colorsys.py",
    "keyword.py",
)


@pytest.fixture(scope="session")
def micro_corpus(tmp_path_factory) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    root = tmp_path_factory.mktemp("micro-corpus")
    for name in MICRO_FILES:
        target = root / "lib" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stdlib / name, target)
    for excluded in (
        "test/test_x.py",
        "pkg/tests/util.py",
        "idlelib/idle_test/a.py",
        "pkg/test_y.py",
        "site-packages/thing.py",
        "notes.txt",
    ):
        target = root / excluded
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("EXCLUDED = True\n")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # NOTE: one cache per session, so tokenizers and token arrays are built once for all tests
    # but never land in the user's ~/.cache.
    monkeypatch.setenv("EMBER_CACHE", str(tmp_path_factory.getbasetemp() / "ember-cache"))
