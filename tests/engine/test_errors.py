"""Bad input gets a clear error naming the problem."""

import subprocess
import sys

import pytest

from ember.core.sampling_params import SamplingParams
from ember.engine.llm import LLM
from ember.errors import InvalidInputError, ModelLoadError


@pytest.fixture(scope="module")
def llm(hf_checkpoints):
    return LLM(str(hf_checkpoints("llama_gqa")), dtype="float32", max_model_len=64)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="does-not-exist"):
        LLM(str(tmp_path / "does-not-exist"))


def test_unknown_engine_option(hf_checkpoints):
    with pytest.raises(InvalidInputError, match="max_num_seq"):
        LLM(str(hf_checkpoints("llama_gqa")), max_num_seq=4)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"block_size": 0}, "block_size"), ({"max_num_batched_tokens": 0}, "max_num_batched_tokens")],
)
def test_invalid_engine_values(hf_checkpoints, kwargs, field):
    with pytest.raises(InvalidInputError, match=field):
        LLM(str(hf_checkpoints("llama_gqa")), **kwargs)


def test_prompt_longer_than_context(llm):
    with pytest.raises(InvalidInputError, match="max_model_len"):
        llm.generate({"prompt_token_ids": [1] * 64})
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"prompt_token_ids": []}, "empty"),
        ({"prompt_token_ids": [1, 99999]}, "vocabulary"),
        ({"prompt_token_ids": ["a"]}, "integers"),
        ("text", "no tokenizer"),
        ({"foo": 1}, "prompt_token_ids"),
    ],
)
def test_bad_prompts(llm, prompt, message):
    with pytest.raises(InvalidInputError, match=message):
        llm.generate(prompt)


def test_a_bad_prompt_in_a_list_leaves_nothing_behind(llm):
    with pytest.raises(InvalidInputError):
        llm.generate([{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": []}])
    assert not llm.engine.has_unfinished_requests()
    llm.engine.check_integrity()


def test_invalid_sampling_values():
    with pytest.raises(InvalidInputError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(InvalidInputError, match="top_p"):
        SamplingParams(top_p=0)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ember.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_requires_a_prompt():
    result = run_cli("generate", "--model", "debug-llama")
    assert result.returncode == 1
    assert "PROMPT" in result.stderr and "Traceback" not in result.stderr


def test_cli_reports_a_missing_model_without_traceback(tmp_path):
    result = run_cli("generate", "hello", "--model", str(tmp_path / "nope"))
    assert result.returncode == 1 and "nope" in result.stderr and "Traceback" not in result.stderr


def test_cli_rejects_invalid_sampling(debug_llama):
    result = run_cli("generate", "hello", "--model", str(debug_llama), "--top-p", "2")
    assert result.returncode == 1 and "top_p" in result.stderr and "Traceback" not in result.stderr


def test_cli_generates_text_and_streams(debug_llama):
    plain = run_cli("generate", "def f(x):", "--model", str(debug_llama), "--max-tokens", "8")
    streamed = run_cli("generate", "def f(x):", "--model", str(debug_llama), "--max-tokens", "8", "--stream")
    assert plain.returncode == 0 and streamed.returncode == 0, plain.stderr + streamed.stderr
    assert plain.stdout.strip() and plain.stdout == streamed.stdout


def test_cli_lists_models():
    result = run_cli("models")
    assert result.returncode == 0 and "debug-llama" in result.stdout
