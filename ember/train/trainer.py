"""The single-device trainer: one optimizer step, one evaluation, and its resumable state.

The loop around it (time budget, progress, checkpoints) is ``ember.train.loop``; the
multi-device runtime will wrap the same pieces (model, batches, objective, optimizer).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from ember.train.config import TrainConfig
from ember.train.data import TrainBatches
from ember.train.objective import lm_loss
from ember.train.optim import build_optimizer, build_scheduler

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, labels) -> loss
Batch = tuple[torch.Tensor, torch.Tensor]


class StepResult(NamedTuple):
    step: int  # optimizer steps done, this one included
    loss: float  # mean over the step's micro-batches
    grad_norm: float  # before clipping
    lr: float  # the learning rate this step used
    num_tokens: int
    seconds: float


class EvalResult(NamedTuple):
    loss: float
    perplexity: float
    num_tokens: int


class Trainer:
    """Owns the optimizer, the schedule and the data position of one model.

    ``objective`` defaults to the next-token cross entropy of ``model``; a distillation
    objective wraps the same model. ``config.precision == "bf16"`` runs forward and backward
    under bf16 autocast while weights, gradients and optimizer state stay fp32.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_batches: TrainBatches,
        val_batches: list[Batch],
        *,
        objective: Objective | None = None,
        device: torch.device | str = "cpu",
    ):
        self.model = model
        self.config = config
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.device = torch.device(device)
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self._eager_objective = objective or functools.partial(lm_loss, model)
        self.objective = self._eager_objective
        self._is_compile_pending = config.compile
        if config.compile:
            self.objective = torch.compile(self._eager_objective)
        self.step = 0
        self.tokens_seen = 0
        self.elapsed_s = 0.0  # training seconds over all sessions of this run

    def autocast(self) -> contextlib.AbstractContextManager:
        enabled = self.config.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self) -> StepResult:
        """One optimizer step over ``grad_accum`` micro-batches."""
        start = time.perf_counter()
        self.model.train()
        accum = self.config.grad_accum
        total_loss = 0.0
        for _ in range(accum):
            input_ids, labels = self.train_batches.next_batch()
            input_ids, labels = input_ids.to(self.device), labels.to(self.device)
            with self.autocast():
                loss = self._forward(input_ids, labels)
            # NOTE: scaled so that the accumulated gradient is that of the mean loss.
            (loss / accum).backward()
            total_loss += loss.item()
        max_norm = self.config.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        num_tokens = accum * self.config.batch_size * self.config.seq_len
        self.tokens_seen += num_tokens
        seconds = time.perf_counter() - start
        self.elapsed_s += seconds
        return StepResult(self.step, total_loss / accum, float(grad_norm), lr, num_tokens, seconds)

    def _forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self._is_compile_pending:
            return self.objective(input_ids, labels)
        # NOTE: compilation happens on the first call and needs a working C++ toolchain; a
        # failure there costs speed, not the run.
        self._is_compile_pending = False
        try:
            return self.objective(input_ids, labels)
        except Exception as exc:  # inductor/dynamo raise many types
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); running eagerly", stacklevel=2)
            self.objective = self._eager_objective
            return self.objective(input_ids, labels)

    @torch.no_grad()
    def evaluate(self) -> EvalResult | None:
        """Mean next-token loss over the fixed validation batches (None when there are none)."""
        if not self.val_batches:
            return None
        self.model.eval()
        total, count = 0.0, 0
        for input_ids, labels in self.val_batches:
            input_ids, labels = input_ids.to(self.device), labels.to(self.device)
            with self.autocast():
                loss = lm_loss(self.model, input_ids, labels)
            total += loss.item() * labels.numel()
            count += labels.numel()
        mean = total / count
        return EvalResult(mean, math.exp(min(mean, 50.0)), count)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": self.train_batches.state_dict(),
            "trainer": {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed_s},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_batches.load_state_dict(state["data"])
        self.step = int(state["trainer"]["step"])
        self.tokens_seen = int(state["trainer"]["tokens_seen"])
        self.elapsed_s = float(state["trainer"]["elapsed_s"])
