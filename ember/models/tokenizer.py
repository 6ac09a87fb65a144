"""The checkpoint's tokenizer (``tokenizer.json`` through the ``tokenizers`` library), its chat
template, and incremental detokenization for streaming."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import tokenizers

from ember.errors import InvalidInputError, ModelLoadError

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


# ChatML, the chat template of Ember's own tokenizers (the built-in models).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Tokenizer:
    """Text <-> token ids with the checkpoint's special tokens and chat template.

    Special tokens are added exactly as ``tokenizer.json``'s post-processor says (which is
    what transformers 5 does too; ``add_bos_token`` in ``tokenizer_config.json`` is ignored).
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        special_tokens: Mapping[str, str] | None = None,
        chat_template: str | None = None,
    ):
        self.backend = backend
        self.special_tokens = dict(special_tokens or {})
        self.chat_template = chat_template
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.bos_token_id = self.token_to_id(self.bos_token)
        eos_id = self.token_to_id(self.eos_token)
        self.eos_token_ids: tuple[int, ...] = () if eos_id is None else (eos_id,)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (the model's vocab may be larger)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise InvalidInputError(f"text to encode must be a string, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs
    ) -> str:
        """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) with the checkpoint's
        jinja chat template, in a sandbox, with the variables transformers provides."""
        if self.chat_template is None:
            raise InvalidInputError(
                "this model's tokenizer has no chat template; send a plain prompt instead",
                param="messages",
            )
        if not isinstance(messages, Sequence) or not all(isinstance(m, Mapping) and "role" in m for m in messages):
            raise InvalidInputError("messages must be a list of objects with a 'role'", param="messages")
        import jinja2

        try:
            template = _compile_template(self.chat_template)
            return template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                tools=None,
                documents=None,
                **{**self.special_tokens, **kwargs},
            )
        except jinja2.TemplateError as exc:
            raise InvalidInputError(f"chat template failed: {exc}", param="messages") from None


class IncrementalDetokenizer:
    """Turns a stream of generated ids into text deltas.

    Each step decodes a short window ``ids[prefix_offset:]`` and emits what it adds beyond
    ``ids[prefix_offset:read_offset]``; decoding with a few tokens of left context keeps
    tokenizers that strip a leading space (or merge bytes) consistent with a full decode. Text
    ending in U+FFFD is held back: it is a multi-byte character whose bytes are split across
    tokens and not all have arrived.
    """

    _CONTEXT_TOKENS = 5

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(prompt_ids)
        self._prefix_offset = max(len(self._ids) - self._CONTEXT_TOKENS, 0)
        self._read_offset = len(self._ids)
        self.text = ""  # generated text finalized so far

    def add(self, token_id: int) -> str:
        """Append one generated id; returns the newly finalized text (maybe ``""``)."""
        self._ids.append(token_id)
        prefix_text, new_text = self._window()
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end of generation: the held-back text (an incomplete character's U+FFFD)."""
        prefix_text, new_text = self._window()
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        self.text += delta
        return delta

    def _window(self) -> tuple[str, str]:
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset], self._skip)
        return prefix, decode(self._ids[self._prefix_offset :], self._skip)


def load_tokenizer(path: str | Path) -> Tokenizer | None:
    """The tokenizer of a checkpoint directory, or None when it has no ``tokenizer.json``."""
    path = Path(path)
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    try:
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # the Rust library raises plain Exception subclasses
        raise ModelLoadError(f"cannot read tokenizer {tokenizer_file}: {exc}") from None
    config = _read_json(path / "tokenizer_config.json")
    special_tokens = {}
    for key in _SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, Mapping):  # serialized AddedToken
            value = value.get("content")
        if isinstance(value, str):
            special_tokens[key] = value
    template = _chat_template(path, config)
    return Tokenizer(backend, special_tokens=special_tokens, chat_template=template)


def _read_json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file} must hold a JSON object")
    return data


def _chat_template(path: Path, config: Mapping[str, Any]) -> str | None:
    # transformers >= 4.43 saves the template as chat_template.jinja, which takes priority.
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template") or _read_json(path / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    return template if isinstance(template, str) else None


@lru_cache(maxsize=16)
def _compile_template(source: str):
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks in
        # transformers; rendering just emits the body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # NOTE: jinja's own tojson escapes HTML characters, which chat templates must not do.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
