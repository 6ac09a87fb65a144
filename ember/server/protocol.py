"""Request and response schemas of the OpenAI API (and vLLM's extensions), as pydantic models.

Field bounds live here so that the served OpenAPI spec states them and a bad value is a 400
naming the field before anything reaches the engine. Unknown fields are ignored, as OpenAI's
and vLLM's servers do, so newer clients keep working.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ember.core.sampling_params import MAX_LOGPROBS, SamplingParams

TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
# NOTE: the range torch.Generator.manual_seed accepts, as SamplingParams checks it.
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]

# Request fields that mirror a SamplingParams field default to its value (the declared
# defaults, not a normalised instance: `stop` stays None). The ones that differ on purpose
# say so where they are declared.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplingParams)}


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class SamplingRequest(OpenAIModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = Field(None, description="a served model name; default: the served model")
    n: int = Field(_DEFAULTS["n"], ge=1, le=128)
    # NOTE: None on purpose for temperature .. repetition_penalty: unset means the model's
    # generation_config, else SamplingParams' default (vLLM's `--generation-config auto`).
    temperature: float | None = Field(
        None, ge=0.0, description=f"default: the model's generation_config, else {_DEFAULTS['temperature']:g}"
    )
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1, description="0 or -1: off")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float = Field(_DEFAULTS["presence_penalty"], ge=-2.0, le=2.0)
    frequency_penalty: float = Field(_DEFAULTS["frequency_penalty"], ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0)
    stop: str | list[str] | None = _DEFAULTS["stop"]
    stop_token_ids: list[TokenId] | None = _DEFAULTS["stop_token_ids"]
    seed: Seed | None = _DEFAULTS["seed"]
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = _DEFAULTS["ignore_eos"]
    min_tokens: int = Field(_DEFAULTS["min_tokens"], ge=0)
    skip_special_tokens: bool = _DEFAULTS["skip_special_tokens"]
    include_stop_str_in_output: bool = _DEFAULTS["include_stop_str_in_output"]
    user: str | None = None


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(
        description="text, token ids, or a list of either (one choice set per prompt)"
    )
    # NOTE: 16 is OpenAI's documented default for /v1/completions, part of the API whatever
    # SamplingParams' default is.
    max_tokens: int | None = Field(16, ge=1, description="null: up to the context length")
    logprobs: int | None = Field(_DEFAULTS["logprobs"], ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None


class TextContent(OpenAIModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIModel):
    role: str
    content: str | list[TextContent] | None = None
    name: str | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    # NOTE: OpenAI's chat shapes, not SamplingParams': no max_tokens means up to the context
    # length, and logprobs is a switch (top_logprobs says how many).
    max_tokens: int | None = Field(None, ge=1, description="deprecated alias of max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    response_format: ResponseFormat | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None


# ------------------------------------------------------------------ responses
class PromptTokensDetails(OpenAIModel):
    cached_tokens: int = 0


class UsageInfo(OpenAIModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionLogprobs(OpenAIModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(OpenAIModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionResponse(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class TopLogprob(OpenAIModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(OpenAIModel):
    content: list[ChatTokenLogprob] | None = None


class AssistantMessage(OpenAIModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(OpenAIModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class DeltaMessage(OpenAIModel):
    role: str | None = None
    content: str | None = None


class ChatStreamChoice(OpenAIModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(OpenAIModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "ember"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeCompletionRequest(OpenAIModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class TokenizeChatRequest(OpenAIModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool = False


class TokenizeResponse(OpenAIModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(OpenAIModel):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(OpenAIModel):
    prompt: str


class ErrorInfo(OpenAIModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIModel):
    error: ErrorInfo
