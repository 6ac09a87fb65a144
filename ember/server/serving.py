"""What every generation endpoint shares: the model's names and limits, request -> sampling
parameters, and admission of prompts to the engine with their metrics."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ember.core.sampling_params import SamplingParams
from ember.engine.async_engine import AsyncLLMEngine, RequestStream
from ember.engine.outputs import RequestOutput
from ember.errors import InvalidInputError
from ember.server.config import ServerConfig
from ember.server.errors import APIError, context_length_error
from ember.server.logprobs import TokenStrings
from ember.server.metrics import RequestTimer, ServerMetrics
from ember.server.protocol import ChatMessage, SamplingRequest

# generation_config.json keys that become defaults for requests that leave them unset (vLLM
# does the same with its default `--generation-config auto`).
_GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclass
class Prompt:
    text: str | None
    token_ids: list[int]


class Admitted:
    """A prompt in the engine: its output stream and its latency timer."""

    def __init__(self, prompt: Prompt, params: SamplingParams, stream: RequestStream, timer: RequestTimer):
        self.prompt = prompt
        self.params = params
        self.stream = stream
        self.timer = timer

    def observe(self, output: RequestOutput) -> None:
        self.timer.observe(output)

    def close(self) -> None:
        """Abort if unfinished (idempotent); a request that never finished counts as aborted."""
        self.stream.abort()
        self.timer.finish(["abort"])


class ServingContext:
    def __init__(self, engine: AsyncLLMEngine, config: ServerConfig, metrics: ServerMetrics, model: str) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.model_path = model
        self.model_names = config.served_model_names or (model,)
        llm = engine.engine
        self.tokenizer = llm.tokenizer
        self.max_model_len = llm.max_model_len
        self.vocab_size = llm.arch.vocab_size
        self.token_strings = TokenStrings(self.tokenizer)
        generation = llm.generation_config or {}
        self.defaults = {k: generation[k] for k in _GENERATION_DEFAULTS if generation.get(k) is not None}

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    def check_model(self, name: str | None) -> str:
        if name is None or name in self.model_names or name == self.model_path:
            return name or self.model_name
        raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")

    # ------------------------------------------------------------------- prompts
    def require_tokenizer(self, param: str):
        if self.tokenizer is None:
            raise APIError(400, "this model has no tokenizer; send token ids instead of text", param=param)
        return self.tokenizer

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.require_tokenizer("prompt").encode(text, add_special_tokens=add_special_tokens)

    def render_chat(self, messages: list[ChatMessage], *, add_generation_prompt: bool) -> str:
        tokenizer = self.require_tokenizer("messages")
        plain = []
        for message in messages:
            content = message.content
            if isinstance(content, list):
                content = "\n".join(part.text for part in content)
            entry = {"role": message.role, "content": content or ""}
            if message.name is not None:
                entry["name"] = message.name
            plain.append(entry)
        return tokenizer.apply_chat_template(plain, add_generation_prompt=add_generation_prompt)

    def check_token_ids(self, token_ids: list[int], param: str) -> list[int]:
        bad = next((t for t in token_ids if t >= self.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary [0, {self.vocab_size})", param=param)
        return token_ids

    # -------------------------------------------------------------------- params
    def sampling_params(
        self,
        request: SamplingRequest,
        *,
        num_prompt_tokens: int,
        max_tokens: int | None,
        logprobs: int | None,
        prompt_param: str,
    ) -> SamplingParams:
        """The engine's parameters for one prompt; rejects a prompt plus ``max_tokens`` that
        does not fit in the context (vLLM's rule), and defaults ``max_tokens`` to what fits."""
        room = self.max_model_len - num_prompt_tokens
        if max_tokens is None:
            if room < 1:
                raise context_length_error(self.max_model_len, num_prompt_tokens, 1, prompt_param)
            max_tokens = room
        elif max_tokens > room:
            raise context_length_error(self.max_model_len, num_prompt_tokens, max_tokens, prompt_param)
        if request.stream_options is not None and not request.stream:
            raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options")
        # Set in the request, else in generation_config, else left out: SamplingParams' default.
        chosen = {}
        for k in _GENERATION_DEFAULTS:
            value = getattr(request, k)
            if value is None:
                value = self.defaults.get(k)
            if value is not None:
                chosen[k] = value
        return SamplingParams(
            **chosen,
            n=request.n,
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            seed=request.seed,
            stop=request.stop,
            stop_token_ids=request.stop_token_ids,
            ignore_eos=request.ignore_eos,
            logprobs=logprobs,
            skip_special_tokens=request.skip_special_tokens,
            include_stop_str_in_output=request.include_stop_str_in_output,
        )

    # ----------------------------------------------------------------- admission
    async def admit(self, prompts: list[Prompt], params: list[SamplingParams]) -> list[Admitted]:
        """Add every prompt to the engine, or none: a failure aborts those already added."""
        base = uuid.uuid4().hex
        admitted: list[Admitted] = []
        try:
            for i, (prompt, p) in enumerate(zip(prompts, params)):
                request_id = base if len(prompts) == 1 else f"{base}-{i}"
                engine_prompt = {"prompt_token_ids": prompt.token_ids, "prompt": prompt.text}
                stream = await self.engine.add_request(request_id, engine_prompt, p)
                admitted.append(Admitted(prompt, p, stream, self.metrics.timer(len(prompt.token_ids))))
        except BaseException:
            for item in admitted:
                item.close()
            raise
        return admitted


def request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def empty_prompt_error(param: str) -> InvalidInputError:
    return InvalidInputError(f"{param} must not be empty", param=param)
