"""Ember: an LLM serving and training system.

`from ember import LLM, SamplingParams` mirrors vLLM's offline API.
"""

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    # NOTE: lazy so that `import ember` (e.g. for the CLI's --help) does not import torch.
    if name == "LLM":
        from ember.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from ember.core.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'ember' has no attribute {name!r}")
