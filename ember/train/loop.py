"""The training loop: steps until ``max_steps`` or the time budget, with periodic
validation, checkpoints, a progress bar and a metrics log."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

from ember.train.trainer import EvalResult, Trainer

StopReason = Literal["max_steps", "stop_at_step", "time_budget", "interrupted"]


class FitResult(NamedTuple):
    stop_reason: StopReason
    step: int
    last_eval: EvalResult | None


class _StopFlag:
    """Ctrl-C (SIGINT) asks the loop to stop after the current step; a second one aborts."""

    def __init__(self):
        self.is_set = False
        self._previous = None

    def __enter__(self):
        # NOTE: signal handlers can only be installed from the main thread.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame):
        if self.is_set:
            raise KeyboardInterrupt
        self.is_set = True


def fit(
    trainer: Trainer,
    *,
    save: Callable[[], Path],
    metrics_file: Path | None = None,
    max_minutes: float | None = None,
    stop_at_step: int | None = None,
    progress: bool = True,
) -> FitResult:
    """Train from ``trainer.step`` to ``config.max_steps``, or to ``stop_at_step`` (a pause
    that leaves the schedule unchanged), or until ``max_minutes`` of this session would be
    exceeded by one more step, or until Ctrl-C; then validate and ``save``.

    ``save()`` writes a checkpoint of the trainer's current state. The budget check reserves
    the slowest step seen so far plus the last validation's duration (the final one still has
    to run), so a run stops before, not after, its budget.
    """
    from tqdm import tqdm

    config = trainer.config
    deadline = None if max_minutes is None else time.monotonic() + 60.0 * max_minutes
    slowest = 0.0
    eval_seconds = 0.0  # duration of the last validation
    last_eval: EvalResult | None = None
    stop_reason: StopReason = "max_steps"
    bar = tqdm(
        total=config.max_steps,
        initial=trainer.step,
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    log = metrics_file.open("a", encoding="utf-8") if metrics_file is not None else None

    def record(entry: dict) -> None:
        if log is not None:
            log.write(json.dumps(entry) + "\n")
            log.flush()

    try:
        with _StopFlag() as stop:
            while trainer.step < config.max_steps:
                if stop_at_step is not None and trainer.step >= stop_at_step:
                    stop_reason = "stop_at_step"
                    break
                if stop.is_set:
                    stop_reason = "interrupted"
                    break
                if deadline is not None and time.monotonic() + slowest + eval_seconds > deadline:
                    stop_reason = "time_budget"
                    break
                result = trainer.train_step()
                # NOTE: a session's first step (compilation, cold caches) is the slowest;
                # counting it only makes the budget stop earlier, never late.
                slowest = max(slowest, result.seconds)
                tokens_per_s = result.num_tokens / result.seconds
                bar.update(1)
                bar.set_postfix(
                    loss=f"{result.loss:.3f}", lr=f"{result.lr:.1e}", tok_s=f"{tokens_per_s:.0f}", refresh=False
                )
                if trainer.step % config.log_interval == 0 or trainer.step == 1:
                    record(
                        {
                            **result._asdict(),
                            "tokens_per_s": tokens_per_s,
                            "tokens_seen": trainer.tokens_seen,
                            "elapsed_s": trainer.elapsed_s,
                        }
                    )
                is_last = trainer.step in (config.max_steps, stop_at_step)  # saved below
                if not is_last and _every(trainer.step, config.eval_interval):
                    last_eval, eval_seconds = _evaluate(trainer, bar, record)
                if not is_last and _every(trainer.step, config.checkpoint_interval):
                    save()
        last_eval, eval_seconds = _evaluate(trainer, bar, record)
        path = save()
        bar.write(f"stopped ({stop_reason}) at step {trainer.step}; checkpoint {path}")
    finally:
        bar.close()
        if log is not None:
            log.close()
    return FitResult(stop_reason, trainer.step, last_eval)


def _every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def _evaluate(trainer: Trainer, bar, record) -> tuple[EvalResult | None, float]:
    start = time.perf_counter()
    result = trainer.evaluate()
    seconds = time.perf_counter() - start
    if result is not None:
        record(
            {
                "step": trainer.step,
                "val_loss": result.loss,
                "val_ppl": result.perplexity,
                "val_tokens": result.num_tokens,
                "seconds": seconds,
            }
        )
        bar.write(f"step {trainer.step}: val loss {result.loss:.4f}, ppl {result.perplexity:.2f}")
    return result, seconds
