"""The offline API, shaped like vLLM's: ``LLM(model=...).generate(prompts, params)``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from tqdm.auto import tqdm

from ember.config import EngineConfig
from ember.core.sampling_params import SamplingParams
from ember.engine.llm_engine import LLMEngine, PromptType
from ember.engine.outputs import RequestOutput
from ember.errors import InvalidInputError


class LLM:
    """Offline batched generation.

    >>> llm = LLM(model="path/to/hf-checkpoint", dtype="auto")
    >>> outputs = llm.generate(["Hello"], SamplingParams(max_tokens=16))
    >>> outputs[0].outputs[0].text
    """

    def __init__(self, model: str, **engine_options) -> None:
        self.engine = LLMEngine(EngineConfig.from_kwargs(model, **engine_options))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def close(self) -> None:
        """Release the engine's worker processes (tensor/pipeline parallel); idempotent."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate for every prompt; returns one ``RequestOutput`` per prompt, in order.

        A prompt is a string, a list of token ids, or ``{"prompt_token_ids": [...]}``."""
        prompt_list = _as_prompt_list(prompts)
        params_list = _as_params_list(sampling_params, len(prompt_list))
        ids = []
        try:
            for prompt, params in zip(prompt_list, params_list):
                ids.append(self.engine.add_request(None, prompt, params))
        except Exception:
            for request_id in ids:
                self.engine.abort_request(request_id)
            raise
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | None = None,
        *,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Render each conversation with the model's chat template, then generate."""
        if self.tokenizer is None:
            raise InvalidInputError("this model has no tokenizer, so it has no chat template")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [
            {"prompt_token_ids": self.tokenizer.encode(text, add_special_tokens=False), "prompt": text}
            for text in (self.tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in conversations)
        ]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def stream(self, prompt: PromptType, sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield the request's output after every step that advanced it (cumulative text and
        tokens); the last one has ``finished=True``. Closing the iterator aborts the request."""
        request_id = self.engine.add_request(None, prompt, sampling_params)
        finished = False
        try:
            while not finished:
                for output in self.engine.step():
                    if output.request_id == request_id:
                        finished = output.finished
                        yield output
        finally:
            if not finished:
                self.engine.abort_request(request_id)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        results: dict[str, RequestOutput] = {}
        wanted = set(ids)
        with tqdm(total=len(ids), desc="generate", disable=not use_tqdm, unit="req") as bar:
            while len(results) < len(wanted):
                for output in self.engine.step():
                    if output.finished and output.request_id in wanted:
                        results[output.request_id] = output
                        bar.update(1)
        return [results[i] for i in ids]


def _as_prompt_list(prompts) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # one prompt given as token ids
    return prompts


def _as_params_list(params, count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(count)]
    if isinstance(params, SamplingParams):
        return [params] * count
    params = list(params)
    if len(params) != count:
        raise InvalidInputError(f"got {len(params)} sampling params for {count} prompts")
    return params
