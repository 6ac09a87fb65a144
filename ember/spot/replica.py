"""Runtime state the simulator keeps per request and per replica (the executor's side; the
controller never sees these)."""

from __future__ import annotations

from dataclasses import dataclass

from ember.spot.arrivals import Arrival
from ember.spot.config import ParallelConfig
from ember.spot.recovery import BatchProgress


@dataclass
class SimRequest:
    arrival: Arrival
    committed: int = 0
    finish_s: float | None = None


@dataclass
class SimBatch:
    requests: list[SimRequest]
    progress: BatchProgress
    token: int


@dataclass
class SimReplica:
    rid: int
    config: ParallelConfig
    ready_at: float
    batch: SimBatch | None = None
    resume: tuple[list[SimRequest], int] | None = None  # inherited batch waiting for ready_at
    stopping: bool = False
    interrupted: tuple[list[SimRequest], int] | None = None
    instance_ids: frozenset[str] = frozenset()
    stop_by: float | None = None  # set with `stopping` when a reconfiguration plans the stop
    stop_mode: str = "restart"
