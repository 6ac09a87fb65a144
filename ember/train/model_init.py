"""Build a freshly initialized Ember Llama from a ``ModelShape`` (the engine's own module)."""

from __future__ import annotations

import math

import torch

from ember.models.config import ModelArchConfig
from ember.models.llama import LlamaForCausalLM
from ember.train.config import ModelShape


def build_model(
    shape: ModelShape, *, vocab_size: int, bos_token_id: int, eos_token_id: int, seed: int
) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` in fp32 with seeded, GPT-2-style initialization.

    Same arguments, same weights: the init draws from its own generator, not the global one.
    """
    hf_config = shape.hf_config(vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    config = ModelArchConfig.from_hf(hf_config)
    # NOTE: built on meta and materialized once, so the default init (overwritten below)
    # costs nothing.
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    init_weights(model, std=shape.init_std, num_layers=shape.num_layers, seed=seed)
    return model


def init_weights(model: torch.nn.Module, *, std: float, num_layers: int, seed: int) -> None:
    """Normal(0, std) matrices; the projections that write into the residual stream
    (``o_proj``, ``down_proj``) scaled by 1/sqrt(2 * num_layers) so its variance does not grow
    with depth; norms at one; biases at zero."""
    gen = torch.Generator().manual_seed(seed)
    residual_std = std / math.sqrt(2 * num_layers)
    with torch.no_grad():
        # NOTE: sorted by name so the draw order, and so the weights, never depend on
        # module registration order.
        for name, param in sorted(model.named_parameters()):
            if "norm" in name:
                param.fill_(1.0)
            elif param.dim() == 1:
                param.zero_()
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                param.normal_(0.0, residual_std, generator=gen)
            else:
                param.normal_(0.0, std, generator=gen)
