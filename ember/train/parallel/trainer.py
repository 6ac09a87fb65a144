"""The hybrid-parallel trainer: one optimizer step of a plan on this rank.

Same interface as ``ember.train.trainer.Trainer`` where ``ember.train.loop.fit`` uses it
(``config``, ``step``, ``tokens_seen``, ``elapsed_s``, ``train_step``, ``evaluate``), and the
same numbers: every rank draws the same global batch from the same ``TrainBatches`` and
keeps its slice, so the run follows the single-process run with ``batch_size =
micro_batch_size`` and ``grad_accum = num_micro_batches``.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ember.train.config import TrainConfig
from ember.train.data import TrainBatches
from ember.train.optim import build_scheduler
from ember.train.parallel.sync import clip_grad_norm, local
from ember.train.parallelize import ParallelModel, build_optimizer
from ember.train.trainer import StepResult


class DistTrainer:
    def __init__(self, parallel: ParallelModel, config: TrainConfig, train_batches: TrainBatches, *, meter=None):
        """``meter``: the ``MemoryMeter`` the stage records into; its peak is reset after
        the first step."""
        plan = parallel.plan
        m = plan.num_micro_batches
        if config.batch_size != plan.micro_batch_size or config.grad_accum != m:
            raise ValueError(
                f"batch_size={config.batch_size}, grad_accum={config.grad_accum} must match the "
                f"plan's micro-batch size {plan.micro_batch_size} and "
                f"{plan.num_micro_batches} micro-batches"
            )
        self.parallel = parallel
        self.model = parallel.stage
        self.config = config
        self.train_batches = train_batches
        self.meter = meter
        self.optimizer = build_optimizer(parallel, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.step = 0
        self.tokens_seen = 0
        self.elapsed_s = 0.0
        self.last_losses: list[float] = []  # this rank's scaled micro-batch losses
        self.peak_state_bytes = 0  # parameters + gradients + optimizer states, this rank
        self._is_first_step = True
        self._schedule = None
        if plan.pp > 1:
            self._schedule = self._build_schedule()

    def _build_schedule(self):
        from torch.distributed.pipelining import (
            PipelineStage,
            Schedule1F1B,
            ScheduleGPipe,
        )

        plan, mesh = self.parallel.plan, self.parallel.mesh
        stage = PipelineStage(self.model, mesh.stage, plan.pp, torch.device("cpu"), group=mesh.pp_group)
        kind = Schedule1F1B if plan.schedule == "1f1b" else ScheduleGPipe
        return kind(stage, n_microbatches=plan.num_micro_batches, loss_fn=self._loss, scale_grads=False)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # NOTE: divided by every rank and micro-batch of the step, so that gradients add up
        # (ember.train.parallel.sync) to those of the mean loss.
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        plan = self.parallel.plan
        return loss / (plan.devices_per_stage * plan.num_micro_batches)

    def _local_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of every micro-batch, stacked: ``[M * c, S]`` twice."""
        plan, mesh = self.parallel.plan, self.parallel.mesh
        c = plan.samples_per_rank
        rows = slice(mesh.local_rank * c, (mesh.local_rank + 1) * c)
        inputs, labels = [], []
        for _ in range(plan.num_micro_batches):
            x, y = self.train_batches.next_batch()
            inputs.append(x[rows])
            labels.append(y[rows])
        return torch.cat(inputs), torch.cat(labels)

    def train_step(self) -> StepResult:
        start = time.perf_counter()
        plan = self.parallel.plan
        m = plan.num_micro_batches
        self.model.train()
        inputs, labels = self._local_batch()
        self.last_losses = []
        self.parallel.grad_sync.start_step(m)
        if self._schedule is None:
            for x, y in zip(inputs.chunk(m), labels.chunk(m)):
                loss = self._loss(self.model(x), y)
                loss.backward()
                self.last_losses.append(loss.item())
        elif self.parallel.mesh.stage == 0:
            self._schedule.step(inputs)
        elif self.parallel.mesh.stage == plan.pp - 1:
            losses: list[torch.Tensor] = []
            self._schedule.step(target=labels, losses=losses)
            self.last_losses = [float(x.detach()) for x in losses]
        else:
            self._schedule.step()
        self.parallel.grad_sync.finish()
        grad_norm = clip_grad_norm(self.parallel.params, self.config.grad_clip or float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.peak_state_bytes = max(self.peak_state_bytes, self.state_bytes())
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.tensor([sum(self.last_losses)], dtype=torch.float64)
        dist.all_reduce(total)
        loss = float(total)  # the scaled losses add up to the step's mean loss
        self.step += 1
        if self.meter is not None and self._is_first_step:
            # NOTE: the first step also runs the pipeline's shape inference (a forward on the
            # first stage) and lazy initialization; the meter reports the steady state.
            self.meter.reset_peak()
        self._is_first_step = False
        num_tokens = plan.global_batch_size * self.config.seq_len
        self.tokens_seen += num_tokens
        seconds = time.perf_counter() - start
        self.elapsed_s += seconds
        return StepResult(self.step, loss, grad_norm, lr, num_tokens, seconds)

    def evaluate(self):
        """Validation is not run by the hybrid-parallel runtime yet (``fit`` skips None)."""
        return

    def state_bytes(self) -> int:
        """Bytes of this rank's parameters, gradients and optimizer states right now."""
        total = 0
        for p in self.model.parameters():
            total += local(p).nbytes
            if p.grad is not None:
                total += local(p.grad).nbytes
        for state in self.optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    total += local(value).nbytes
        return total
