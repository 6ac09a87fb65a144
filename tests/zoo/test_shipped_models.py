"""The trained family shipped in the package: loads in Ember and in `transformers` with the
same greedy output, and `ember generate` uses ember-tiny when no model is named."""

import os
import subprocess
import sys

import pytest
import torch

from ember.zoo import BUILTIN_MODELS, ZOO_DIR

SHIPPED = [name for name, entry in BUILTIN_MODELS.items() if entry.materialize is None]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_matches_transformers(name):
    import transformers

    from ember import LLM, SamplingParams

    path = ZOO_DIR / name
    assert (path / "model.safetensors").exists() and (path / "MODEL_CARD.md").exists()
    prompt = "import os\n\n\ndef main(argv):\n"
    llm = LLM(name, dtype="float32")
    (out,) = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([out.prompt_token_ids])
    with torch.no_grad():
        for _ in range(16):
            ids = torch.cat([ids, hf(ids).logits[0, -1].argmax().view(1, 1)], dim=1)
    assert out.outputs[0].token_ids == ids[0, len(out.prompt_token_ids) :].tolist()


def test_generate_uses_ember_tiny_by_default():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "ember.cli", "generate", "def fibonacci(n):", "--max-tokens", "24"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_models_lists_the_family():
    result = subprocess.run([sys.executable, "-m", "ember.cli", "models"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for name in SHIPPED:
        line = next(row for row in result.stdout.splitlines() if row.startswith(name))
        assert "shipped" in line and "MB" in line
