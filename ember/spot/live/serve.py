"""`ember spot serve`: the OpenAI-compatible server over a live SpotServe deployment on Ray.

The instances are nodes of a local Ray cluster (one per ``--instances`` slot), or, with
``--address``, of a running Ray cluster whose nodes carry the ``ember_instance_<id>`` resource.
Notices come from a replayed trace (``--trace``, time-compressed by ``--speedup``) and from
nodes that disappear. Each decision of the controller is logged in one line.

NOTE: Ray binds the machine's external address: on a shared machine run it in a loopback-only
network namespace, ``unshare -n sh -c 'ip link set lo up; ember spot serve ...'``.
"""

from __future__ import annotations

import argparse
import logging
import signal

from ember.errors import InvalidInputError


def register(sub) -> None:
    from ember.server.cli import add_server_args

    serve = sub.add_parser("serve", help="serve a model on preemptible instances (Ray), OpenAI API in front")
    serve.add_argument("--model", default=None, help="checkpoint or built-in model (default: ember-tiny)")
    serve.add_argument("--instances", type=int, default=2, help="instance slots (local Ray nodes; reroute's pool)")
    serve.add_argument(
        "--address",
        default=None,
        help="attach to this running Ray cluster: its nodes with an ember_instance_<id> resource are the fleet",
    )
    serve.add_argument("--policy", default="spotserve", choices=("spotserve", "reparallelize", "reroute"))
    serve.add_argument(
        "--trace", default=None, help="availability trace to replay from when the first fleet serves (default: fixed)"
    )
    serve.add_argument("--speedup", type=float, default=60.0, help="trace seconds per live second")
    serve.add_argument("--grace-period", type=float, default=30.0, help="trace seconds from notice to removal")
    serve.add_argument("--device-memory-mib", type=float, default=1024.0, help="memory of one device")
    serve.add_argument("--max-tp", type=int, default=1, help="largest tensor-parallel degree to choose")
    serve.add_argument("--checkpoint-every", type=int, default=8, help="steps between request checkpoints")
    add_server_args(serve)
    serve.set_defaults(func=run_spot_serve)


def run_spot_serve(args: argparse.Namespace) -> int:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InvalidInputError("`ember spot serve` needs the spot extra: pip install 'ember[spot]'") from None
    from ember.server.cli import bind, serve_engine, server_config
    from ember.spot.cli import parse_trace
    from ember.spot.live.cluster import AttachedRayCluster, LocalRayCluster
    from ember.spot.live.deployment import LiveDeploymentConfig, build_controller, served_model
    from ember.spot.live.executor import LiveSpotExecutor
    from ember.spot.live.frontend import SpotFrontEnd
    from ember.spot.live.router import SpotRouter
    from ember.spot.notices import HeldReplay, MergedSource, NodeLoss, RayNodeWatcher, TraceReplayConfig
    from ember.spot.traces import AvailabilityEvent, AvailabilityTrace

    model = args.model or "ember-tiny"
    if args.instances < 1:
        raise InvalidInputError(f"--instances must be >= 1, got {args.instances}", param="instances")
    if args.address and args.trace:
        raise InvalidInputError(
            "--trace replays onto local instances; with --address the fleet is the cluster's nodes", param="trace"
        )
    config = server_config(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        deployment = LiveDeploymentConfig(
            policy=args.policy,
            device_memory_mib=args.device_memory_mib,
            max_tp=args.max_tp,
            checkpoint_every=args.checkpoint_every,
        )
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    ids = [f"i{k}" for k in range(args.instances)]
    if args.trace:
        trace = parse_trace(args.trace)
    else:
        fleet = AvailabilityEvent(time_s=0.0, kind="add", instance_ids=tuple(ids))
        trace = AvailabilityTrace(events=(fleet,), end_s=1e12, source="fixed")
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    served = served_model(model)
    cluster = AttachedRayCluster(args.address) if args.address else LocalRayCluster()
    try:
        router = SpotRouter(served, checkpoint_every=deployment.checkpoint_every)
        if args.address:
            # NOTE: the fleet is what Ray sees: nodes that join are arrivals, nodes that leave
            # without a notice are terminations
            replayer = None
            notices = MergedSource([RayNodeWatcher(), NodeLoss()])
        else:
            replay = TraceReplayConfig(speedup=args.speedup, grace_period_s=args.grace_period)
            # NOTE: the trace plays from the moment the first fleet serves, not while it loads
            replayer = HeldReplay(trace, config=replay, instance_ids=ids)
            notices = MergedSource([replayer, NodeLoss()])
        executor = LiveSpotExecutor(
            controller=build_controller(
                deployment, served.arch, served.latency, bytes_per_value=served.dtype.itemsize, pool_instances=len(ids)
            ),
            router=router,
            cluster=cluster,
            notices=notices,
            model=model,
            engine_options={"latency_model": "analytic"},
            on_serving=replayer.begin if replayer is not None else None,
        )
        return serve_engine(
            SpotFrontEnd(router, executor), config, sock, model=model, url=url, command="ember spot serve"
        )
    finally:
        cluster.shutdown()
