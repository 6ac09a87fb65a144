"""Random planner instances whose memory figures are whole bytes (for exact-search tests)."""

import random

from ember.planner.profiles import (
    COLLECTIVES,
    Curve,
    HardwareProfile,
    LayerProfile,
    LinkCost,
    ModelProfile,
)


def random_profiles(rng: random.Random, *, num_layers: int, tp_degrees=(1, 2, 4), tied=False):
    """A small random model and machine whose memory figures are whole bytes, so that a
    memory unit of one byte makes the search exact."""

    def curve(scale: float, integer: bool = False) -> Curve:
        a, b = rng.uniform(0.2, 1.0) * scale, rng.uniform(0.2, 1.0) * scale
        if integer:
            a, b = float(int(a) + 1), float(int(b) + 1)
        return Curve(xs=(1.0, 2.0, 4.0), ys=(a, a + b, a + 3 * b))

    def per_tp(scale, integer=False):
        out = {}
        for tp in tp_degrees:
            c = curve(scale / tp, integer)
            out[tp] = c
        return out

    replicated = 8 * rng.randint(1, 4)
    layer = LayerProfile(
        num_params=replicated + 64 * rng.randint(4, 16),
        num_replicated_params=replicated,
        forward_s=per_tp(1.0),
        backward_s=per_tp(2.0),
        activation_bytes=per_tp(4000.0, integer=True),
        boundary_bytes_per_sample=16 * rng.randint(1, 20),
    )
    model = ModelProfile(
        name="random",
        seq_len=8,
        hidden_size=8,
        vocab_size=16,
        num_layers=num_layers,
        layer=layer,
        embed_params=64 * rng.randint(1, 8),
        head_params=8 * rng.randint(1, 40),
        tied_embeddings=tied,
        embed_forward_s=curve(0.1),
        embed_backward_s=curve(0.2),
        head_forward_s=curve(0.3),
        head_backward_s=curve(0.5),
        head_activation_bytes=curve(500.0, integer=True),
        optimizer_s_per_param=rng.uniform(0.0, 1e-3),
    )
    links = {
        kind: {g: LinkCost(latency_s=rng.uniform(0, 0.05), seconds_per_byte=rng.uniform(0, 1e-4)) for g in (2, 4, 8)}
        for kind in COLLECTIVES
    }
    hardware = HardwareProfile(
        name="random",
        links=links,
        overlap_slowdown=rng.uniform(1.0, 2.0),
        compute_slowdown={1: 1.0, 4: rng.uniform(1.0, 2.0)},
    )
    return model, hardware
