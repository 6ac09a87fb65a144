"""Built-in models, addressable by name wherever a model path is accepted.

Two kinds: the trained family shipped inside this package (``ember-tiny`` and its drafts,
each an HF checkpoint folder beside this file with a model card), and random-weight models
written on first use (``debug-*``, ``bench-*``) for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


ZOO_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "ember-tiny"


@dataclass(frozen=True)
class BuiltinModel:
    description: str
    materialize: Callable[[Path], Path] | None = None  # writes a checkpoint folder; None = shipped

    def shipped_path(self, name: str) -> Path | None:
        path = ZOO_DIR / name
        return path if self.materialize is None and (path / "model.safetensors").exists() else None


def _debug(arch: str, **overrides) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        from ember.zoo.debug import make_debug_checkpoint

        return make_debug_checkpoint(path, arch=arch, **overrides)

    return write


# ~7M parameters: big enough that attention and recomputation cost real time, small enough
# that a cache benchmark's many configurations run in minutes on a CPU.
_BENCH_LLAMA = dict(
    hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=4096, max_position_embeddings=4096,
)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "ember-tiny": BuiltinModel("Llama 8x512, 23M params, trained by Ember on Python's stdlib (the default)"),
    "ember-draft-a": BuiltinModel("Llama 4x192, 3M params, draft of ember-tiny for speculative decoding"),
    "ember-draft-b": BuiltinModel("Llama 2x256, 4M params, second draft (another shape and seed)"),
    "debug-llama": BuiltinModel("random-weight tiny Llama (smoke tests; output is gibberish)", _debug("llama")),
    "debug-opt": BuiltinModel("random-weight tiny OPT (smoke tests; output is gibberish)", _debug("opt")),
    "bench-llama": BuiltinModel("random-weight ~7M Llama for cache benchmarks", _debug("llama", **_BENCH_LLAMA)),
}


def cache_dir() -> Path:
    root = os.environ.get("EMBER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ember")
    return Path(root)


def resolve_model(model: str) -> str:
    """A built-in name becomes the path of its checkpoint (written on first use); any other
    string is returned unchanged."""
    entry = BUILTIN_MODELS.get(model)
    if entry is None or os.path.isdir(model):
        return model
    if entry.materialize is None:
        path = entry.shipped_path(model)
        if path is None:
            from ember.errors import ModelLoadError

            raise ModelLoadError(f"built-in model {model!r} is not shipped in this installation ({ZOO_DIR / model})")
        return str(path)
    target = cache_dir() / "models" / model
    if not (target / "config.json").exists():
        # NOTE: written beside and renamed, so a crash or a concurrent writer never leaves
        # a half-written checkpoint under the final name.
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{model}-"))
        entry.materialize(staging)
        try:
            os.replace(staging, target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another writer won the race
    return str(target)


def default_model() -> str | None:
    """The model commands use when none is given: ``ember-tiny`` where it is shipped."""
    return DEFAULT_MODEL if BUILTIN_MODELS[DEFAULT_MODEL].shipped_path(DEFAULT_MODEL) else None
