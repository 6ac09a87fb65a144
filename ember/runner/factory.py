"""The one place that decides how a model runs: in this process (``ModelRunner``) or as
tensor/pipeline ranks in worker processes (``DistributedExecutor``); callers get a ``Runner``
either way (vLLM's ``Executor.get_class``)."""

from __future__ import annotations

import torch

from ember.distributed.layout import ParallelLayout
from ember.models.loader import LoadedModel, load_model
from ember.runner.base import Runner
from ember.runner.model_runner import ModelRunner


def load_for_layout(
    model: str, *, dtype: str | torch.dtype, device: str, layout: ParallelLayout
) -> tuple[LoadedModel, torch.dtype]:
    """A checkpoint's config, tokenizer and generation config, and its weights when they run
    in this process (a distributed instance's engine process holds none: ``module`` is None).
    Returns the resolved dtype too."""
    if layout.is_distributed:
        from ember.distributed.sharded_loader import load_checkpoint_info

        loaded, torch_dtype = load_checkpoint_info(model, dtype=dtype, device=device)
        layout.check_model(loaded.config)
        return loaded, torch_dtype
    loaded = load_model(model, dtype=dtype, device=device)
    return loaded, next(loaded.module.parameters()).dtype


def make_runner(
    loaded: LoadedModel,
    *,
    layout: ParallelLayout,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: str,
    attention_backend: str = "paged",
    compile: bool = False,
    launcher=None,
) -> Runner:
    """A runner for ``loaded`` (from ``load_for_layout`` with the same ``layout``).
    ``launcher``: how a distributed layout's ranks start (default: child processes here)."""
    if layout.is_distributed:
        from ember.distributed.executor import DistributedExecutor

        return DistributedExecutor(
            loaded.path,
            layout,
            num_blocks=num_blocks,
            block_size=block_size,
            dtype=dtype,
            device=device,
            attention_backend=attention_backend,
            launcher=launcher,
        )
    return ModelRunner(
        loaded.module,
        loaded.config,
        num_blocks=num_blocks,
        block_size=block_size,
        dtype=dtype,
        device=torch.device(device),
        attention_backend=attention_backend,
        compile=compile,
    )
