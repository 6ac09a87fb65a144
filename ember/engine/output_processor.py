"""Per-sequence output state (detokenization, stop strings, logprobs), the grouping of ``n``
sequences of one request into a ``RequestOutput``, and the step's output processing: turn the
requests a step advanced into outputs, and send stop-string decisions to the scheduler."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ember.core.request import Request
from ember.core.sampling import StepSamples, prompt_logprobs
from ember.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from ember.models.tokenizer import IncrementalDetokenizer

# (request, output tokens to keep, the stop string) -> None; the scheduler applies it
StopFn = Callable[..., None]


@dataclass(eq=False)
class SequenceState:
    request: Request
    index: int
    detokenizer: IncrementalDetokenizer | None
    text: str = ""
    logprobs: list | None = None
    cumulative_logprob: float | None = None
    stopped_by_string: str | None = None
    num_seen_tokens: int = 0  # output tokens already detokenized

    def add_token(self, token_id: int, token_logprobs) -> str | None:
        """Record one sampled token; returns the stop string it completed, if any."""
        self.num_seen_tokens += 1
        if token_logprobs is not None:
            self.logprobs.append(token_logprobs)
            self.cumulative_logprob = (self.cumulative_logprob or 0.0) + token_logprobs.logprob
        if self.detokenizer is None:
            return None
        previous_len = len(self.text)
        self.text += self.detokenizer.add(token_id)
        return self._match_stop_string(previous_len)

    def finish(self) -> None:
        """Emit text held back for an unfinished multi-byte character."""
        if self.detokenizer is not None and self.stopped_by_string is None:
            self.text += self.detokenizer.flush()

    def _match_stop_string(self, previous_len: int) -> str | None:
        params = self.request.sampling_params
        best: tuple[int, str] | None = None
        for stop in params.stop:
            start = max(0, previous_len - len(stop) + 1)
            idx = self.text.find(stop, start)
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is None:
            return None
        idx, stop = best
        self.text = self.text[: idx + len(stop)] if params.include_stop_str_in_output else self.text[:idx]
        self.stopped_by_string = stop
        return stop

    def to_output(self) -> CompletionOutput:
        request = self.request
        return CompletionOutput(
            index=self.index,
            text=self.text,
            token_ids=list(request.output_token_ids),
            cumulative_logprob=self.cumulative_logprob,
            logprobs=list(self.logprobs) if self.logprobs is not None else None,
            finish_reason=request.status.finish_reason,
            stop_reason=request.stop_reason,
        )


@dataclass(eq=False)
class RequestGroup:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    sequences: list[SequenceState] = field(default_factory=list)
    prompt_logprobs: list | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(s.request.is_finished for s in self.sequences)

    def to_output(self) -> RequestOutput:
        first = self.sequences[0].request
        metrics = RequestMetrics(
            arrival_time=self.arrival_time,
            first_token_time=self.first_token_time,
            finished_time=self.finished_time,
            num_cached_tokens=first.num_cached_prompt_tokens,
            num_preemptions=sum(s.request.num_preemptions for s in self.sequences),
        )
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[s.to_output() for s in self.sequences],
            finished=self.finished,
            prompt_logprobs=self.prompt_logprobs,
            metrics=metrics,
            num_cached_tokens=first.num_cached_prompt_tokens,
        )


class OutputProcessor:
    """The engine's unfinished request groups, by request id and by sequence id."""

    def __init__(self, stop: StopFn) -> None:
        self.stop = stop  # Scheduler.stop
        self.groups: dict[str, RequestGroup] = {}
        self.sequences: dict[str, tuple[RequestGroup, SequenceState]] = {}

    def add(self, group: RequestGroup) -> None:
        self.groups[group.request_id] = group
        for seq in group.sequences:
            self.sequences[seq.request.request_id] = (group, seq)

    def remove(self, request_id: str) -> RequestGroup | None:
        group = self.groups.pop(request_id, None)
        for seq in group.sequences if group is not None else ():
            self.sequences.pop(seq.request.request_id, None)
        return group

    def process(
        self,
        updated: list[Request],
        samples: StepSamples,
        prompt_logits: dict[str, tuple[int, torch.Tensor]],
    ) -> tuple[list[RequestOutput], list[RequestGroup]]:
        """Outputs of the groups a step advanced, and the groups it finished (removed here)."""
        for seq_id, (first_pos, logits) in prompt_logits.items():
            if seq_id in self.sequences:
                self._record_prompt_logprobs(seq_id, first_pos, logits)
        now = time.monotonic()
        touched: dict[str, RequestGroup] = {}
        for request in updated:
            group, seq = self.sequences[request.request_id]
            group.first_token_time = group.first_token_time or now
            for token_id in request.output_token_ids[seq.num_seen_tokens :]:
                stop = seq.add_token(token_id, samples.logprobs.get(request.request_id))
                if stop is not None:
                    # NOTE: a stop string inside a speculated run drops the tokens after it.
                    self.stop(request, num_output_tokens=seq.num_seen_tokens, stop_reason=stop)
                    break
            if request.is_finished:
                seq.finish()
            touched[group.request_id] = group
        outputs, finished = [], []
        for group in touched.values():
            if group.finished:
                group.finished_time = now
                self.remove(group.request_id)
                finished.append(group)
            outputs.append(group.to_output())
        return outputs, finished

    def _record_prompt_logprobs(self, seq_id: str, first_pos: int, logits: torch.Tensor) -> None:
        group, seq = self.sequences[seq_id]
        if seq.index != 0:
            return
        request = seq.request
        n_prompt = request.num_prompt_tokens
        rows = logits[: max(0, n_prompt - first_pos - 1)]
        targets = request.prompt_token_ids[: first_pos + 1 + rows.shape[0]]
        chunk = prompt_logprobs(rows, targets[first_pos:], request.sampling_params.prompt_logprobs)
        if group.prompt_logprobs is None:
            group.prompt_logprobs = [None]
        if len(group.prompt_logprobs) == first_pos + 1:  # NOTE: not again after preemption
            group.prompt_logprobs.extend(chunk[1:])
