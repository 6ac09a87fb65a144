"""Model classes keyed by the ``architectures`` name in ``config.json``."""

from __future__ import annotations

from torch import nn

from ember.errors import ModelLoadError
from ember.models.llama import LlamaForCausalLM
from ember.models.opt import OPTForCausalLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "OPTForCausalLM": OPTForCausalLM,
}


def supported_architectures() -> list[str]:
    return sorted(MODEL_CLASSES)


def get_model_class(architecture: str) -> type[nn.Module]:
    """The Ember class for an HF architecture name; ModelLoadError if there is none."""
    try:
        return MODEL_CLASSES[architecture]
    except KeyError:
        raise ModelLoadError(
            f"unsupported model architecture {architecture!r}; supported: {', '.join(supported_architectures())}"
        ) from None
