"""Built-in models, addressable by name wherever a model path is accepted."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class BuiltinModel:
    description: str
    materialize: Callable[[Path], Path]  # writes the HF checkpoint into a folder, returns it


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
