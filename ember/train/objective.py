"""The training losses: next-token cross entropy, optionally mixed with the KL divergence to
a teacher's distribution (SpecInfer's boost-tuning of a draft toward its target)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lm_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy; ``input_ids``/``labels`` ``[B, S]`` -> scalar fp32."""
    logits = model.compute_logits(model(input_ids))
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


class DistillLoss(nn.Module):
    """``(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T)``.

    The teacher is frozen and runs without gradients on the same ``input_ids``; ``T`` is the
    softmax temperature (the T^2 keeps the gradient scale independent of T).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, alpha: float, temperature: float):
        super().__init__()
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.alpha = alpha
        self.temperature = temperature

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.student.compute_logits(self.student(input_ids)).flatten(0, 1)
        with torch.no_grad():
            teacher_logits = self.teacher.compute_logits(self.teacher(input_ids)).flatten(0, 1)
        ce = F.cross_entropy(logits, labels.flatten())
        t = self.temperature
        kl = F.kl_div(
            F.log_softmax(logits / t, dim=-1),
            F.log_softmax(teacher_logits / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        return (1.0 - self.alpha) * ce + self.alpha * t * t * kl
