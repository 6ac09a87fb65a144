"""Hand-made inputs shared by the spot tests."""

from __future__ import annotations

from pathlib import Path

from ember.spot.hardware import InstanceSpec, ModelMemory
from ember.spot.profile import LatencyProfile

DATA = Path(__file__).resolve().parent / "data"


def tiny_profile(**overrides) -> LatencyProfile:
    """A hand-made profile: 4 layers, tp in {1, 2}, bsz in {1, 2}."""
    kw = dict(
        name="tiny",
        num_layers=4,
        num_padded_layers=4,
        hidden_size=64,
        max_tp=2,
        fix_factor=1.0,
        pp_prefill_comm_ms=2.0,
        pp_decode_comm_ms=0.1,
        embed_ms=(0.5, 0.6),
        prefill_ms={(1, 1): 10.0, (1, 2): 18.0, (2, 1): 6.0, (2, 2): 10.0},
        decode_ms={(1, 1): 1.0, (1, 2): 1.2, (2, 1): 0.6, (2, 2): 0.7},
        profiled_input_len=8,
    )
    kw.update(overrides)
    return LatencyProfile(**kw)


def tiny_memory() -> ModelMemory:
    return ModelMemory(num_layers=4, hidden_size=64, vocab_size=1000)


def instance(**overrides) -> InstanceSpec:
    return InstanceSpec(**overrides)
