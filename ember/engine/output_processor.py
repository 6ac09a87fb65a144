"""Per-sequence output state: detokenization, stop strings, logprobs; and the grouping of
``n`` sequences of one request into a ``RequestOutput``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ember.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from ember.engine.request import Request
from ember.engine.sampler import SamplingState
from ember.models.tokenizer import IncrementalDetokenizer


@dataclass(eq=False)
class SequenceState:
    request: Request
    index: int
    sampling: SamplingState
    detokenizer: IncrementalDetokenizer | None
    text: str = ""
    logprobs: list | None = None
    cumulative_logprob: float | None = None
    stopped_by_string: str | None = None

    def add_token(self, token_id: int, token_logprobs) -> str | None:
        """Record one sampled token; returns the stop string it completed, if any."""
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
