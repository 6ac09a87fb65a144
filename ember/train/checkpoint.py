"""Training checkpoints: everything needed to continue a run exactly where it stopped.

One file per checkpoint, ``<out>/checkpoints/step-<N>.pt``, written beside and renamed so a
crash never leaves a truncated file under a checkpoint name; the newest ``keep`` are kept.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from ember.errors import InvalidInputError

FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Checkpoint files of a run, oldest first."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(out_dir: Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write ``state`` (plus format version and RNG states) as the checkpoint of ``step``
    and delete all but the newest ``keep`` checkpoints."""
    folder = checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:07d}.pt"
    payload = {"format": FORMAT_VERSION, "step": step, "rng": rng_state(), **state}
    fd, staging = tempfile.mkstemp(dir=folder, prefix=".step-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(out_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (tensors on CPU); raises InvalidInputError when it is not one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise InvalidInputError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise InvalidInputError(f"{path} is not an ember train checkpoint (format {FORMAT_VERSION})")
    return payload
