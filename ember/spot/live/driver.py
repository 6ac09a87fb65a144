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
from ember.kvcache.cost_model import LatencyModel
from ember.spot.live.cluster import LocalRayCluster
from ember.spot.live.deployment import LiveDeploymentConfig, build_controller
from ember.spot.live.executor import LiveSpotExecutor
from ember.spot.live.router import SpotRouter
from ember.spot.notices import MergedSource, NodeLoss, TraceReplayConfig, TraceReplayer
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
    kills: list[tuple[float, str]] = (),  # (seconds after serving starts, instance or "@host"): no notice
    timeout_s: float = 600.0,
) -> LiveRun:
    from ember.distributed.sharded_loader import load_checkpoint_info
    from ember.zoo import resolve_model

    start = time.monotonic()
    info, dtype = load_checkpoint_info(resolve_model(model), dtype=engine_options.get("dtype", "auto"), device="cpu")
    arch = info.config
    latency = LatencyModel.analytic(
        num_params=arch.num_layers * 12 * arch.hidden_size**2 + arch.vocab_size * arch.hidden_size,
        hidden_size=arch.hidden_size,
        num_layers=arch.num_layers,
    )
    controller = build_controller(
        deployment, arch, latency, bytes_per_value=dtype.itemsize, pool_instances=len(instance_ids)
    )
    cluster = LocalRayCluster()
    router = SpotRouter(info, checkpoint_every=deployment.checkpoint_every)
    node_loss = NodeLoss()
    replayer = TraceReplayer(trace, config=replay, instance_ids=instance_ids, start_at_s=time.monotonic())
    executor = LiveSpotExecutor(
        controller=controller,
        router=router,
        cluster=cluster,
        notices=MergedSource([replayer, node_loss]),
        model=model,
        engine_options=engine_options,
        required_rate=deployment.required_rate,
    )
    stop = asyncio.Event()
    result = LiveRun()
    loop_task = asyncio.create_task(executor.run(until=stop))
    try:
        while not router.replicas:  # the first decision starts the fleet
            if loop_task.done():
                loop_task.result()
            await asyncio.sleep(0.05)
        served_at = time.monotonic()
        killers = [asyncio.create_task(_kill_later(node_loss, executor, served_at + t, iid)) for t, iid in kills]
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
        router.shutdown()
        cluster.shutdown()
        result.wall_s = time.monotonic() - start
    return result


async def _kill_later(node_loss: NodeLoss, executor: LiveSpotExecutor, at: float, instance_id: str) -> None:
    """``instance_id`` "@host": whichever instance hosts the busiest replica then."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    if instance_id == "@host":
        busiest = max(executor.hosts, key=lambda name: len(executor.router.owned(name)), default=None)
        if busiest is None:
            return
        instance_id = executor.hosts[busiest]
    node_loss.report(instance_id)


async def _client(router: SpotRouter, r: LiveRequest, served_at: float, result: LiveRun) -> None:
    await asyncio.sleep(max(0.0, served_at + r.at_s - time.monotonic()))
    sent = time.monotonic()
    streamed: list[int] = []
    try:
        stream = await _add_with_retry(router, r)
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


async def _add_with_retry(router: SpotRouter, r: LiveRequest, *, attempts: int = 200):
    from ember.engine.async_engine import EngineDeadError

    for _ in range(attempts):
        try:
            return await router.add_request(r.request_id, r.prompt, r.params)
        except EngineDeadError:
            await asyncio.sleep(0.05)  # reconfiguring: no replica serves for a moment
    return await router.add_request(r.request_id, r.prompt, r.params)
