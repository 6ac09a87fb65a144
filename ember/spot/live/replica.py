"""One SpotServe replica: an Ember engine (its tensor/pipeline ranks included) that the router
drives step by step, as a Ray actor placed on the instance that holds its devices.

The router calls ``step`` in a loop while the replica has work; ``add``/``abort``/``export``
/``import_`` are other actor calls, which Ray runs between two steps (an actor runs one call at
a time, in the order a caller sent them), so the engine needs no lock. Moving requests is
``export`` on one replica and ``import_`` of the returned object on another: the snapshots
(tokens, RNG state, KV) travel through Ray's object store.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ember.config import EngineConfig
from ember.core.sampling_params import SamplingParams
from ember.engine.llm_engine import LLMEngine
from ember.engine.migration import RequestSnapshot
from ember.engine.outputs import RequestOutput


@dataclass(frozen=True)
class ReplicaLoad:
    """What the controller's ``ClusterView`` needs of one replica."""

    num_requests: int
    inflight_tokens: int  # tokens (prompt + output) of its unfinished sequences: the KV to move
    committed_tokens: int  # output tokens generated so far by its unfinished sequences


class ReplicaServer:
    """The replica's engine behind a small call interface (plain Python; ``ReplicaActor`` is
    the same class as a Ray actor)."""

    def __init__(
        self,
        model: str,
        engine_options: Mapping[str, Any],
        *,
        name: str,
        num_threads: int | None = 1,
        rank_instances: list[str] | None = None,
    ) -> None:
        """``rank_instances``: the instance of each tensor/pipeline rank (by rank), where the
        ranks run as processes of their own (``ember.spot.live.ranks``); None: all here."""
        if num_threads is not None:
            import torch

            # NOTE: replicas share the machine's cores here; one thread each avoids oversubscription.
            torch.set_num_threads(num_threads)
        self.name = name
        launcher = None
        if rank_instances is not None and len(rank_instances) > 1:
            from ember.spot.live.ranks import RayRankLauncher

            launcher = RayRankLauncher(rank_instances)
        self.engine = LLMEngine(EngineConfig.from_kwargs(model, **dict(engine_options)), rank_launcher=launcher)
        self.num_steps = 0
        # recent steps (see step_log): what a latency model of this replica, as it ran here, is fitted to
        self._step_log: deque = deque(maxlen=4096)

    def ready(self) -> dict:
        """Where the replica runs (also: the actor has finished loading its model)."""
        return {"name": self.name, "pid": os.getpid(), "node": _node_id()}

    def add(self, request_id: str, prompt, params: SamplingParams, arrival_time: float | None = None) -> None:
        self.engine.add_request(request_id, prompt, params, arrival_time=arrival_time)

    def abort(self, request_id: str) -> None:
        self.engine.abort_request(request_id)

    def step(self) -> list[RequestOutput]:
        """One engine step (nothing when idle): the outputs of the requests it advanced."""
        if not self.engine.has_unfinished_requests():
            return []
        self.num_steps += 1
        start, cpu = time.monotonic(), time.thread_time()
        outputs = self.engine.step()
        batch = self.engine.last_batch
        if batch is not None and not batch.is_empty:
            items = [(r.num_tokens, r.start_position) for r in batch.requests]
            self._step_log.append((items, time.monotonic() - start, time.thread_time() - cpu, start))
        return outputs

    def step_log(self) -> list[tuple[list[tuple[int, int]], float, float, float]]:
        """The recent steps: (per request (new tokens, start position), wall seconds, CPU
        seconds of this thread, start on the machine's monotonic clock). With one torch thread
        the CPU seconds are what the step costs on a core of its own; the wall seconds add the
        wait for a core that other processes hold."""
        return list(self._step_log)

    def export(self, request_ids: list[str] | None = None, with_kv: bool = True) -> list[RequestSnapshot]:
        """Take requests out (all by default) to continue elsewhere."""
        return self.engine.export_requests(request_ids, with_kv=with_kv)

    def checkpoint(self) -> list[RequestSnapshot]:
        """Every unfinished request's state without KV, left running: what a survivor
        recomputes from if this replica dies without notice."""
        return self.engine.export_requests(with_kv=False, remove=False)

    def import_(self, snapshots: list[RequestSnapshot]) -> list[str]:
        return self.engine.import_requests(list(snapshots))

    def load(self) -> ReplicaLoad:
        groups = self.engine.outputs.groups.values()
        sequences = [s.request for g in groups for s in g.sequences]
        return ReplicaLoad(
            num_requests=len(groups),
            inflight_tokens=sum(r.num_tokens for r in sequences),
            committed_tokens=sum(r.num_output_tokens for r in sequences),
        )

    def close(self) -> None:
        self.engine.close()


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except ImportError:  # pragma: no cover - ray is the spot extra
        return None


def replica_actor(instance_id: str, *, num_cpus: float = 0):
    """``ReplicaServer`` as a Ray actor class pinned to ``instance_id``'s node (its custom
    resource, see ``ember.spot.live.cluster``)."""
    import ray

    from ember.spot.live.cluster import instance_resource

    # NOTE: max_restarts=0: a replica lost with its instance is recovered by the router from
    # checkpoints, never restarted by Ray on another node behind the controller's back.
    return ray.remote(ReplicaServer).options(
        num_cpus=num_cpus, resources={instance_resource(instance_id): 0.001}, max_restarts=0
    )
