"""Tensor and pipeline parallel inference inside one serving instance.

``layout`` (degrees and rank coordinates), ``shards`` (which slice of which checkpoint
tensor each coordinate holds), ``reshard`` (the transfer plan between two layouts),
``tp_layers`` + ``sharded_loader`` + ``stage`` (a rank's part of the model), ``worker`` and
``executor`` (the rank processes and the engine-side runner that drives them).
See docs/distributed.md.
"""

from ember.distributed.layout import ParallelLayout, RankCoord

__all__ = ["ParallelLayout", "RankCoord"]
