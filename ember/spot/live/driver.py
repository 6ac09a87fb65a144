"""One live run: a local Ray cluster, the router and the executor, a trace of instance
availability replayed as notices, and a workload streamed through the router while instances
come, get notices and go. What the chaos test and ``ember bench spot-live`` run.

Run it inside a loopback-only network namespace (Ray binds the external address otherwise):
``unshare -n sh -c 'ip link set lo up; python -m ember.spot.live.driver ...'``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ember.core.sampling_params import SamplingParams
from ember.spot.live.cluster import LocalRayCluster
from ember.spot.live.deployment import LiveDeploymentConfig, build_controller, served_model
from ember.spot.live.executor import LiveSpotExecutor
from ember.spot.live.router import SpotRouter
from ember.spot.notices import HeldReplay, MergedSource, NodeLoss, TraceReplayConfig
from ember.spot.traces import AvailabilityTrace


@dataclass(frozen=True)
class LiveRequest:
    request_id: str
    prompt: Any
    params: SamplingParams
    at_s: float  # seconds after the fleet first serves


@dataclass
class LiveRun:
    token_ids: dict[str, list[list[int]]] = field(default_factory=dict)  # per request, per sequence
    streamed_token_ids: dict[str, list[int]] = field(default_factory=dict)  # first sequence, as streamed
    latency_s: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    decisions: list[dict] = field(default_factory=list)
    router: dict = field(default_factory=dict)
    step_samples: list = field(default_factory=list)  # (per request (tokens, start), seconds) per step
    serving_at_s: float = 0.0  # when the first fleet served (the trace's t=0), on the decisions' clock
    wall_s: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


async def run_live(
    *,
    model: str,
    engine_options: dict,
    deployment: LiveDeploymentConfig,
    trace: AvailabilityTrace,
    replay: TraceReplayConfig,
    instance_ids: list[str],
    requests: list[LiveRequest],
    kills: list[tuple] = (),  # (seconds, instance or "@host"[, "serving" | "move"]): dies with no notice
    timeout_s: float = 600.0,
) -> LiveRun:
    start = time.monotonic()
    served = served_model(model, dtype=engine_options.get("dtype", "auto"))
    controller = build_controller(
        deployment, served.arch, served.latency, bytes_per_value=served.dtype.itemsize, pool_instances=len(instance_ids)
    )
    cluster = LocalRayCluster()
    router = SpotRouter(served, checkpoint_every=deployment.checkpoint_every)
    node_loss = NodeLoss()
    # NOTE: the trace plays from the moment the first fleet serves, not while it loads
    replayer = HeldReplay(trace, config=replay, instance_ids=instance_ids)
    executor = LiveSpotExecutor(
        controller=controller,
        router=router,
        cluster=cluster,
        notices=MergedSource([replayer, node_loss]),
        model=model,
        engine_options=engine_options,
        required_rate=deployment.required_rate,
        on_serving=replayer.begin,
    )
    stop = asyncio.Event()
    result = LiveRun()
    loop_task = asyncio.create_task(executor.run(until=stop))
    try:
        while executor.serving_at is None:  # the first decision starts the fleet
            if loop_task.done():
                loop_task.result()
            await asyncio.sleep(0.05)
        served_at = executor.serving_at
        result.serving_at_s = served_at - executor.started_at
        killers = [
            asyncio.create_task(
                _kill_later(node_loss, executor, served_at, k[0], k[1], k[2] if len(k) > 2 else "serving")
            )
            for k in kills
        ]
        tasks = [asyncio.create_task(_client(router, r, served_at, result)) for r in requests]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
        for k in killers:
            k.cancel()
    finally:
        stop.set()
        await asyncio.gather(loop_task, return_exceptions=True)
        result.decisions = [asdict(d) for d in executor.decisions]
        result.router = asdict(router.router_stats)
        await executor.shutdown()
        result.step_samples = executor.step_samples
        router.shutdown()
        cluster.shutdown()
        result.wall_s = time.monotonic() - start
    return result


async def _kill_later(
    node_loss: NodeLoss, executor: LiveSpotExecutor, served_at: float, after_s: float, instance_id: str, anchor: str
) -> None:
    """Report ``instance_id`` dead (with no notice) ``after_s`` seconds after serving starts, or
    with ``anchor`` "move" after the first reconfiguration that moved requests, once a replica
    serves them again. "@host" means whichever instance hosts the busiest replica then, "@rank1"
    the instance of that replica's rank 1 (its engine loses a rank; its actor lives on)."""
    at = served_at + after_s
    if anchor == "move":
        stats, router = executor.router.router_stats, executor.router
        while not (stats.num_migrated or stats.num_recomputed or stats.num_restarted):
            await asyncio.sleep(0.05)
        while not any(router.owned(name) for name in router.replicas):
            await asyncio.sleep(0.05)
        at = time.monotonic() + after_s
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    if instance_id in ("@host", "@rank1"):
        busiest = max(executor.hosts, key=lambda name: len(executor.router.owned(name)), default=None)
        if busiest is None:
            return
        instance_id = executor.hosts[busiest] if instance_id == "@host" else executor.rank_instances[busiest][1]
    node_loss.report(instance_id)


async def _client(router: SpotRouter, r: LiveRequest, served_at: float, result: LiveRun) -> None:
    await asyncio.sleep(max(0.0, served_at + r.at_s - time.monotonic()))
    sent = time.monotonic()
    streamed: list[int] = []
    try:
        stream = await router.add_request(r.request_id, r.prompt, r.params)  # waits for a replica if none serves
        last = None
        async for last in stream:
            tokens = last.outputs[0].token_ids
            # NOTE: what a client sees: each output extends the previous one, never rewrites it
            if tokens[: len(streamed)] != streamed:
                raise AssertionError(f"{r.request_id}: stream went back from {streamed} to {tokens}")
            streamed = list(tokens)
    except Exception as exc:  # noqa: BLE001 - recorded as a lost request
        result.failed[r.request_id] = repr(exc)
        return
    result.token_ids[r.request_id] = [c.token_ids for c in last.outputs]
    result.streamed_token_ids[r.request_id] = streamed
    result.latency_s[r.request_id] = time.monotonic() - sent
