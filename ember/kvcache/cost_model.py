"""Step latency model ``t(num_tokens, context)`` for the running model on the running machine.

    t = a + b * n + c * (n * ctx + n^2 / 2)

for ``n`` query tokens that follow ``ctx`` cached tokens: a fixed per-step cost, a linear
term (the matmuls), and an attention term (each query attends to everything before it).
Eviction uses it as the position-aware cost of recomputing a block; adaptive chunking uses
it to size a step to a target time."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True, kw_only=True)
class LatencyModel:
    fixed_s: float  # a
    per_token_s: float  # b
    per_pair_s: float  # c: per query-key pair
    source: str = "analytic"

    def step_time(self, num_tokens: int, context: int = 0) -> float:
        n = num_tokens
        return self.fixed_s + self.per_token_s * n + self.per_pair_s * (n * context + n * n / 2)

    def batch_time(self, items: Sequence[tuple[int, int]]) -> float:
        """One step running ``(num_tokens, context)`` for each request."""
        total = self.fixed_s
        for n, ctx in items:
            total += self.per_token_s * n + self.per_pair_s * (n * ctx + n * n / 2)
        return total

    def recompute_cost(self, position: int, num_tokens: int) -> float:
        """Marginal time to recompute ``num_tokens`` tokens that start at ``position``."""
        n = num_tokens
        return self.per_token_s * n + self.per_pair_s * (n * position + n * n / 2)

    @classmethod
    def analytic(cls, *, num_params: int, hidden_size: int, num_layers: int, flops_per_s: float = 2e11) -> LatencyModel:
        """From FLOPs alone (2 per parameter per token; 4 * hidden per layer per pair), before
        a profile exists. Only the ratio of the terms matters for eviction order."""
        return cls(
            fixed_s=2e-3,
            per_token_s=2 * num_params / flops_per_s,
            per_pair_s=4 * hidden_size * num_layers / flops_per_s,
        )

    @classmethod
    def fit_batches(
        cls, samples: Sequence[tuple[Sequence[tuple[int, int]], float]], source: str = "profile"
    ) -> LatencyModel:
        """Least squares over steps: ``([(num_tokens, context) per request], seconds)``."""
        from scipy.optimize import nnls

        rows = np.array(
            [[1.0, sum(n for n, _ in items), sum(n * ctx + n * n / 2 for n, ctx in items)] for items, _ in samples]
        )
        times = np.array([t for _, t in samples])
        scale = np.maximum(rows.max(axis=0), 1e-12)
        coef, _ = nnls(rows / scale, times)
        a, b, c = coef / scale
        return cls(fixed_s=float(a), per_token_s=float(b), per_pair_s=float(c), source=source)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> LatencyModel:
        return cls(**json.loads(path.read_text()))
