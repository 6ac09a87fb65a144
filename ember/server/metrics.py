"""Prometheus metrics of one server, in a registry of its own (names follow vLLM's, ``ember:``).

Latencies are measured where the server sees the engine's outputs, so they include the
engine thread's hand-off but not the network:

    arrival --TTFT--> first token --ITL--> next tokens ... last token
    TPOT = (last token - first token) / (output tokens - 1);  e2e = last output - arrival
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ember.engine.async_engine import EngineStats
from ember.engine.outputs import RequestOutput

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_TOKEN_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "ember:http_requests",
            "HTTP responses by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_success = Counter(
            "ember:request_success",
            "Finished generation requests by finish reason",
            ["finish_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter("ember:prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter("ember:generation_tokens", "Generated tokens", registry=r)
        self.ttft = Histogram(
            "ember:time_to_first_token_seconds", "Time to first token", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            "ember:time_per_output_token_seconds",
            "Mean time per output token after the first, per request",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "ember:inter_token_latency_seconds",
            "Time between successive outputs of a request",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "ember:e2e_request_latency_seconds",
            "Arrival to last output",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.running = Gauge("ember:num_requests_running", "Sequences in the running batch", registry=r)
        self.waiting = Gauge("ember:num_requests_waiting", "Sequences waiting for admission", registry=r)
        self.kv_usage = Gauge("ember:kv_cache_usage_perc", "Fraction of KV blocks in use (0-1)", registry=r)
        self.prefix_hit_rate = Gauge(
            "ember:prefix_cache_hit_rate",
            "Prompt tokens served from the prefix cache / prompt tokens queried",
            registry=r,
        )
        self.prefix_queries = Gauge(
            "ember:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache since start",
            registry=r,
        )
        self.prefix_hits = Gauge(
            "ember:prefix_cache_hits", "Prompt tokens found in the prefix cache since start", registry=r
        )
        self.preemptions = Gauge("ember:num_preemptions", "Preemptions since start", registry=r)
        self.spec = {
            key: Gauge(f"ember:spec_decode_{key}", text, registry=r)
            for key, text in (
                ("num_drafts", "Token trees verified since start (one per request-step)"),
                ("num_draft_tokens", "Speculated tokens (tree nodes below the root) since start"),
                ("num_accepted_tokens", "Speculated tokens the target accepted since start"),
                ("mean_accepted", "Accepted tokens per tree"),
                ("draft_seconds", "Seconds spent proposing since start"),
                ("verify_seconds", "Seconds spent verifying since start"),
            )
        }
        self.spec_by_depth = Gauge(
            "ember:spec_decode_acceptance_by_depth",
            "Fraction of trees accepting at least d tokens",
            ["depth"],
            registry=r,
        )
        self.spot = {
            key: Gauge(f"ember:spot_{key}", text, registry=r)
            for key, text in (
                ("reconfigurations", "SpotServe reconfigurations carried out since start"),
                ("replicas", "Replicas serving now"),
                ("instances", "Instances in the fleet now (dying ones included)"),
                ("migrations", "Moves of requests between replicas since start"),
                ("migration_seconds", "Seconds requests were paused by moves since start"),
                ("migrated_requests", "Requests moved with their KV since start"),
                ("migrated_kv_bytes", "KV bytes moved between replicas since start"),
                ("recomputed_requests", "Requests moved without KV (recomputed) since start"),
                ("recovered_requests", "Requests resumed from a checkpoint after a replica died since start"),
                ("restarted_requests", "Requests restarted from scratch (baseline policies) since start"),
                ("pause_p50_seconds", "Median pause of a move"),
                ("pause_p99_seconds", "99th-percentile pause of a move"),
            )
        }
        info = Gauge("ember:model_info", "The served model", ["model_name"], registry=r)
        info.labels(model_name=model_name).set(1)

    def render(self, stats: EngineStats) -> bytes:
        """The exposition text, with the engine gauges set from ``stats``."""
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.kv_usage.set(stats.kv_cache_usage)
        self.prefix_hit_rate.set(stats.prefix_cache_hit_rate)
        self.prefix_queries.set(stats.prefix_cache_queried_tokens)
        self.prefix_hits.set(stats.prefix_cache_hit_tokens)
        self.preemptions.set(stats.num_preemptions)
        if stats.speculation is not None:
            spec = stats.speculation
            values = {
                "num_drafts": spec["num_trees"],
                "num_draft_tokens": spec["num_draft_tokens"],
                "num_accepted_tokens": spec["num_accepted_tokens"],
                "mean_accepted": spec["mean_accepted"],
                "draft_seconds": spec["draft_s"],
                "verify_seconds": spec["verify_s"],
            }
            for key, value in values.items():
                self.spec[key].set(value)
            for depth, fraction in enumerate(spec["acceptance_by_depth"], start=1):
                self.spec_by_depth.labels(depth=str(depth)).set(fraction)
        if stats.spot is not None:
            for key, value in stats.spot.items():
                if key in self.spot:
                    self.spot[key].set(value)
        return generate_latest(self.registry)

    def timer(self, num_prompt_tokens: int) -> RequestTimer:
        self.prompt_tokens.inc(num_prompt_tokens)
        return RequestTimer(self)


class RequestTimer:
    """Latencies of one engine request (all its ``n`` sequences together)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.arrival = time.monotonic()
        self.first: float | None = None
        self.last: float | None = None
        self.num_tokens = 0  # over all sequences
        self.num_seq_tokens = 0  # of the longest sequence: TPOT is per sequence
        self.done = False

    def observe(self, output: RequestOutput) -> None:
        now = time.monotonic()
        num_tokens = sum(len(c.token_ids) for c in output.outputs)
        if num_tokens > self.num_tokens:
            self.metrics.generation_tokens.inc(num_tokens - self.num_tokens)
            if self.first is None:
                self.first = now
                self.metrics.ttft.observe(now - self.arrival)
            else:
                self.metrics.itl.observe(now - self.last)
            self.last = now
            self.num_tokens = num_tokens
            self.num_seq_tokens = max(len(c.token_ids) for c in output.outputs)
        if output.finished:
            self.finish([c.finish_reason or "abort" for c in output.outputs])

    def finish(self, finish_reasons: list[str]) -> None:
        """Record the end; a request that ends without a finished output passes ``["abort"]``."""
        if self.done:
            return
        self.done = True
        self.metrics.e2e.observe(time.monotonic() - self.arrival)
        if self.first is not None and self.num_seq_tokens > 1:
            self.metrics.tpot.observe((self.last - self.first) / (self.num_seq_tokens - 1))
        for reason in finish_reasons:
            self.metrics.request_success.labels(finish_reason=reason).inc()
