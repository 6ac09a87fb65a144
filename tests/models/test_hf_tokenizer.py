"""Tokenizer vs ``tokenizers``/``transformers``; streaming detokenization vs a full decode."""

from __future__ import annotations

import json

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.errors import InvalidInputError
from ember.models.tokenizer import IncrementalDetokenizer, Tokenizer, load_tokenizer
from ember.zoo.debug import make_debug_checkpoint

TEXTS = [
    "Hello, world! How are you today?",
    "def fibonacci(n):\n    return [0, 1][:n]\n",
    "東京と北京 — naïve café 🙂🚀 한국어",
    "  leading spaces and\ttabs\n\nnewlines  ",
    "<s> literal specials </s> <|im_start|>",
    "",
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_debug_checkpoint(tmp_path_factory.mktemp("debug"))


@pytest.fixture(scope="module")
def tok(ckpt) -> Tokenizer:
    return load_tokenizer(ckpt)


@pytest.fixture(scope="module")
def hf_tok(ckpt):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpt)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_tokenizers_and_transformers(tok, ckpt, hf_tok, text):
    raw = tokenizers.Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    ids = tok.encode(text)
    assert ids == raw.encode(text).ids == hf_tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id  # the post-processor adds BOS
    plain = raw.encode(text, add_special_tokens=False).ids
    assert tok.encode(text, add_special_tokens=False) == plain
    assert tok.decode(ids) == raw.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == hf_tok.decode(ids)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40))
def test_round_trip_is_lossless(tok, text):
    assert tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=False) == text


def test_special_ids_and_vocab(tok, hf_tok):
    assert tok.vocab_size == len(hf_tok) == 384
    assert tok.eos_token_ids == (hf_tok.eos_token_id,)
    assert tok.bos_token_id == hf_tok.bos_token_id


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(tok, hf_tok, add_generation_prompt):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi! 東京?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Bye"},
    ]
    expected = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert tok.apply_chat_template(messages, add_generation_prompt) == expected


def test_chat_template_errors(tok):
    with pytest.raises(InvalidInputError, match="unknown role: robot"):
        tok.apply_chat_template([{"role": "robot", "content": "beep"}])
    with pytest.raises(InvalidInputError, match="messages must be a list"):
        tok.apply_chat_template([{"content": "no role"}])
    no_template = Tokenizer(tok.backend, special_tokens=tok.special_tokens)
    with pytest.raises(InvalidInputError, match="no chat template"):
        no_template.apply_chat_template([{"role": "user", "content": "x"}])


def test_template_helpers_like_transformers(tok):
    template = (
        "{{ bos_token }}{{ messages[0] | tojson }}{{ strftime_now('%Y') | length }}"
        "{% for m in messages %}{% if loop.index > 0 %}{% break %}{% endif %}{% endfor %}"
        "{% generation %}{{ eos_token }}{% endgeneration %}"
    )
    custom = Tokenizer(tok.backend, special_tokens=tok.special_tokens, chat_template=template)
    out = custom.apply_chat_template([{"role": "user", "content": "é<b>"}])
    assert out == '<s>{"role": "user", "content": "é<b>"}4</s>'


def test_sandbox_blocks_attribute_escape(tok):
    evil = "{{ messages.__class__.__mro__ }}"
    custom = Tokenizer(tok.backend, special_tokens=tok.special_tokens, chat_template=evil)
    with pytest.raises(InvalidInputError):
        custom.apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_jinja_file_takes_priority(ckpt, tmp_path):
    for f in ckpt.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "chat_template.jinja").write_text("{{ messages | length }}")
    assert load_tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) == "1"


def test_no_tokenizer_files_gives_none(tmp_path):
    assert load_tokenizer(tmp_path) is None


def _stream(tok, prompt_ids, ids, skip=True) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(tok, prompt_ids, skip_special_tokens=skip)
    deltas = [detok.add(i) for i in ids]
    deltas.append(detok.flush())
    assert detok.text == "".join(deltas)
    return deltas, detok.text


@pytest.mark.parametrize("text", TEXTS[:4])
def test_incremental_deltas_concatenate_to_full_decode(tok, text):
    prompt = tok.encode("Question: ")
    ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_ids[0]]
    for skip in (True, False):
        _, streamed = _stream(tok, prompt, ids, skip)
        assert streamed == tok.decode(ids, skip_special_tokens=skip)


def test_multibyte_character_is_held_back_until_complete(tok):
    ids = tok.encode("a🙂b", add_special_tokens=False)
    assert len(ids) >= 4  # the emoji is split over several byte tokens
    deltas, text = _stream(tok, [], ids)
    assert text == "a🙂b"
    assert "\ufffd" not in text and "" in deltas[1:-2]
    assert all("\ufffd" not in d for d in deltas)


@settings(max_examples=80, deadline=None)
@given(
    ids=st.lists(st.integers(min_value=0, max_value=383), max_size=24),
    prompt=st.lists(st.integers(min_value=0, max_value=383), max_size=8),
    skip=st.booleans(),
)
def test_random_id_streams_match_full_decode(tok, ids, prompt, skip):
    """Any id sequence, even invalid UTF-8 bytes and special tokens, streams to the same
    text as one decode (with a prompt that ends on a character boundary)."""
    prompt = tok.encode(tok.decode(prompt, skip_special_tokens=True).replace("\ufffd", ""))
    assert _stream(tok, prompt, ids, skip)[1] == tok.decode(ids, skip_special_tokens=skip)


def test_tokenizer_config_added_token_dicts(ckpt, tmp_path):
    for f in ckpt.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["eos_token"] = {"__type": "AddedToken", "content": "<|im_end|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(tmp_path).eos_token_ids == (4,)
