"""Per-request generation options, shaped like vLLM's ``SamplingParams`` so user code can switch.

Every bad value raises ``InvalidInputError(message, param=field)`` at construction, so the
server can answer 400 naming the field before the request reaches the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ember.errors import InvalidInputError

MAX_LOGPROBS = 20
# NOTE: the range torch.Generator.manual_seed accepts.
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to pick each next token and when to stop (vLLM's names and defaults).

    Each field's ``metadata["help"]`` documents it; ``ember generate`` and the server's
    request models take their flags, help and defaults from these fields.
    """

    n: int = field(default=1, metadata={"help": "sequences to generate per prompt"})
    presence_penalty: float = field(
        default=0.0,
        metadata={
            "help": "in [-2, 2]; subtract p * (count > 0) from the logits of tokens "
            "already generated (the prompt does not count)"
        },
    )
    frequency_penalty: float = field(
        default=0.0,
        metadata={
            "help": "in [-2, 2]; subtract f * count from the logits of tokens already "
            "generated (the prompt does not count)"
        },
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={
            "help": "> 0; 1 is off. Logits of tokens in prompt or output are divided by "
            "it when positive and multiplied by it when negative"
        },
    )
    temperature: float = field(default=1.0, metadata={"help": ">= 0; 0 is greedy"})
    top_p: float = field(
        default=1.0,
        metadata={"help": "in (0, 1]; keep the smallest set of most likely tokens whose mass reaches top_p"},
    )
    top_k: int = field(
        default=0,
        metadata={"help": "keep the k most likely tokens; 0 or -1 is off (normalised to 0)"},
    )
    min_p: float = field(
        default=0.0,
        metadata={"help": "in [0, 1]; drop tokens less likely than min_p times the most likely one"},
    )
    seed: int | None = field(
        default=None,
        metadata={"help": "makes this request's samples reproducible whatever else shares the batch"},
    )
    stop: str | list[str] | None = field(
        default=None, metadata={"help": "strings that end generation (normalised to a list)"}
    )
    stop_token_ids: list[int] | None = field(
        default=None, metadata={"help": "token ids that end generation (normalised to a list)"}
    )
    include_stop_str_in_output: bool = field(
        default=False, metadata={"help": "keep the matched stop string in the text"}
    )
    ignore_eos: bool = field(default=False, metadata={"help": "keep generating after the model's EOS token"})
    max_tokens: int | None = field(
        default=16,
        metadata={"help": "output tokens at most; None means up to the context length"},
    )
    min_tokens: int = field(
        default=0,
        metadata={"help": "EOS and stop_token_ids are masked until this many tokens are out"},
    )
    logprobs: int | None = field(
        default=None,
        metadata={"help": f"return the sampled token's logprob plus this many top alternatives (0-{MAX_LOGPROBS})"},
    )
    prompt_logprobs: int | None = field(
        default=None,
        metadata={"help": f"the same as logprobs for every prompt token after the first (0-{MAX_LOGPROBS})"},
    )
    skip_special_tokens: bool = field(
        default=True, metadata={"help": "detokenisation: leave special tokens out of the text"}
    )
    spaces_between_special_tokens: bool = field(
        default=True,
        metadata={"help": "detokenisation: put spaces between special tokens in the text"},
    )

    def __post_init__(self) -> None:
        self._check_int("n", lo=1)
        self._check_float("presence_penalty", lo=-2.0, hi=2.0)
        self._check_float("frequency_penalty", lo=-2.0, hi=2.0)
        self._check_float("repetition_penalty", lo=0.0, lo_open=True)
        self._check_float("temperature", lo=0.0)
        self._check_float("top_p", lo=0.0, hi=1.0, lo_open=True)
        self._check_int("top_k", lo=-1)
        if self.top_k == -1:
            self._set("top_k", 0)
        self._check_float("min_p", lo=0.0, hi=1.0)
        self._check_int("seed", lo=_SEED_MIN, hi=_SEED_MAX, optional=True)
        self._check_int("max_tokens", lo=1, optional=True)
        self._check_int("min_tokens", lo=0, hi=self.max_tokens)
        self._check_int("logprobs", lo=0, hi=MAX_LOGPROBS, optional=True)
        self._check_int("prompt_logprobs", lo=0, hi=MAX_LOGPROBS, optional=True)
        for name in (
            "include_stop_str_in_output",
            "ignore_eos",
            "skip_special_tokens",
            "spaces_between_special_tokens",
        ):
            if not isinstance(getattr(self, name), bool):
                self._fail(name, "a bool")
        self._normalise_stop()

    @property
    def is_greedy(self) -> bool:
        """Argmax decoding: no randomness, so no generator is needed."""
        return self.temperature == 0.0 or self.top_k == 1

    def _normalise_stop(self) -> None:
        stop = self.stop
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        elif isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
            stop = list(stop)
        else:
            self._fail("stop", "a string or a list of strings")
        if any(s == "" for s in stop):
            self._fail("stop", "non-empty strings")
        self._set("stop", stop)

        ids = self.stop_token_ids
        if ids is None:
            ids = []
        elif not isinstance(ids, (list, tuple, set, frozenset)) or not all(_is_int(t) and t >= 0 for t in ids):
            self._fail("stop_token_ids", "a list of non-negative token ids")
        self._set("stop_token_ids", list(ids))

    def _check_int(self, name: str, *, lo: int, hi: int | None = None, optional: bool = False):
        value = getattr(self, name)
        if value is None and optional:
            return
        rule = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        if not _is_int(value) or value < lo or (hi is not None and value > hi):
            self._fail(name, rule + (" or None" if optional else ""))

    def _check_float(self, name: str, *, lo: float, hi: float | None = None, lo_open: bool = False) -> None:
        value = getattr(self, name)
        left = "(" if lo_open else "["
        rule = f"a number > {lo}" if lo_open else f"a number >= {lo}"
        if hi is not None:
            rule = f"a number in {left}{lo}, {hi}]"
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > lo if lo_open else value >= lo)
            and (hi is None or value <= hi)
        )
        if not ok:
            self._fail(name, rule)
        self._set(name, float(value))

    def _fail(self, name: str, rule: str) -> None:
        raise InvalidInputError(f"{name} must be {rule}, got {getattr(self, name)!r}", param=name)

    def _set(self, name: str, value) -> None:
        # NOTE: frozen dataclass; normalisation happens once, here, before anyone holds it.
        object.__setattr__(self, name, value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
