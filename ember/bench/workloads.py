"""Seeded serving workloads as plain data: token-id prompts with their output lengths, and
sessions whose turns run one after another. Generated offline (no server, no tokenizer), so
the same lists drive `ember bench serve` and AsymCache's cache benchmark.

    random         independent requests, lengths uniform in [len * (1 - r), len * (1 + r)]
    shared-prefix  groups of requests sharing a long prefix (few-shot templates, RAG documents)
    multi-turn     chat sessions; turn k's prompt = turn k-1's prompt + its reply + a new message
    agent          sessions on one long system prompt shared by all; each turn appends the
                   model's tool call and the tool's result, after a tool-latency gap

NOTE: replies inside later prompts are synthetic tokens fixed here, not the model's actual
output, so that the workload is data. A server caches a session's earlier prompts; the reply
tokens are new to it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ember.errors import InvalidInputError

# NOTE: the lowest ids are special tokens (BOS, EOS, pad...) in most vocabularies.
_FIRST_PLAIN_TOKEN = 10


@dataclass(frozen=True)
class WorkloadRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    session_id: str | None = None  # a session's requests run in turn order
    turn: int = 0
    gap_s: float = 0.0  # wait after the session's previous turn finished (think or tool time)


@dataclass(frozen=True)
class Workload:
    name: str
    requests: tuple[WorkloadRequest, ...]

    def sessions(self) -> list[list[WorkloadRequest]]:
        """Requests grouped by session (a request without one is a session of its own), in
        order of first appearance; turns in order."""
        groups: dict[str, list[WorkloadRequest]] = defaultdict(list)
        for request in self.requests:
            groups[request.session_id or request.request_id].append(request)
        return [sorted(turns, key=lambda r: r.turn) for turns in groups.values()]

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(r.prompt_token_ids) for r in self.requests)

    @property
    def max_seq_len(self) -> int:
        return max(len(r.prompt_token_ids) + r.max_tokens for r in self.requests)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "requests": [asdict(r) for r in self.requests]}


class _Tokens:
    def __init__(self, seed: int, vocab_size: int) -> None:
        if vocab_size <= _FIRST_PLAIN_TOKEN:
            raise InvalidInputError(f"vocab_size={vocab_size}: must be > {_FIRST_PLAIN_TOKEN}", param="vocab_size")
        self.rng = random.Random(seed)
        self.vocab_size = vocab_size

    def ids(self, count: int) -> tuple[int, ...]:
        return tuple(self.rng.randrange(_FIRST_PLAIN_TOKEN, self.vocab_size) for _ in range(count))

    def length(self, mean: int, range_ratio: float) -> int:
        low = max(1, round(mean * (1 - range_ratio)))
        return self.rng.randint(low, max(low, round(mean * (1 + range_ratio))))


def random_workload(
    num_requests: int,
    *,
    input_len: int = 128,
    output_len: int = 32,
    range_ratio: float = 0.5,
    vocab_size: int,
    seed: int = 0,
) -> Workload:
    tokens = _Tokens(seed, vocab_size)
    requests = tuple(
        WorkloadRequest(
            f"random-{i}",
            tokens.ids(tokens.length(input_len, range_ratio)),
            tokens.length(output_len, range_ratio),
        )
        for i in range(num_requests)
    )
    return Workload("random", requests)


def shared_prefix_workload(
    num_requests: int,
    *,
    num_groups: int = 4,
    prefix_len: int = 256,
    input_len: int = 32,
    output_len: int = 32,
    range_ratio: float = 0.5,
    vocab_size: int,
    seed: int = 0,
) -> Workload:
    """``num_groups`` prefixes of ``prefix_len`` tokens; each request is one of them plus a
    unique suffix of about ``input_len`` tokens. Groups are interleaved in arrival order."""
    tokens = _Tokens(seed, vocab_size)
    prefixes = [tokens.ids(prefix_len) for _ in range(num_groups)]
    requests = tuple(
        WorkloadRequest(
            f"prefix-{i}",
            prefixes[i % num_groups] + tokens.ids(tokens.length(input_len, range_ratio)),
            tokens.length(output_len, range_ratio),
        )
        for i in range(num_requests)
    )
    return Workload("shared-prefix", requests)


def multi_turn_workload(
    num_requests: int,
    *,
    num_turns: int = 4,
    input_len: int = 32,
    output_len: int = 32,
    range_ratio: float = 0.5,
    think_time_s: float = 0.0,
    vocab_size: int,
    seed: int = 0,
) -> Workload:
    """``num_requests // num_turns`` sessions (at least one) of ``num_turns`` turns."""
    tokens = _Tokens(seed, vocab_size)
    requests = []
    for s in range(max(1, num_requests // num_turns)):
        context: tuple[int, ...] = ()
        for turn in range(num_turns):
            context += tokens.ids(tokens.length(input_len, range_ratio))
            max_tokens = tokens.length(output_len, range_ratio)
            gap = tokens.rng.expovariate(1 / think_time_s) if turn and think_time_s else 0.0
            requests.append(WorkloadRequest(f"chat-{s}-{turn}", context, max_tokens, f"chat-{s}", turn, gap))
            context += tokens.ids(max_tokens)  # the (synthetic) reply joins the context
    return Workload("multi-turn", tuple(requests))


def agent_workload(
    num_requests: int,
    *,
    num_turns: int = 4,
    system_len: int = 256,
    input_len: int = 32,
    tool_result_len: int = 48,
    output_len: int = 24,
    range_ratio: float = 0.5,
    tool_latency_s: float = 0.05,
    vocab_size: int,
    seed: int = 0,
) -> Workload:
    """Sessions on one shared system prompt (tool descriptions): a task, then per turn the
    model's tool call (its reply) and the tool's result, sent after an exponential tool gap."""
    tokens = _Tokens(seed, vocab_size)
    system = tokens.ids(system_len)
    requests = []
    for s in range(max(1, num_requests // num_turns)):
        context = system + tokens.ids(tokens.length(input_len, range_ratio))
        for turn in range(num_turns):
            max_tokens = tokens.length(output_len, range_ratio)
            gap = tokens.rng.expovariate(1 / tool_latency_s) if turn and tool_latency_s else 0.0
            requests.append(WorkloadRequest(f"agent-{s}-{turn}", context, max_tokens, f"agent-{s}", turn, gap))
            context += tokens.ids(max_tokens) + tokens.ids(tokens.length(tool_result_len, range_ratio))
    return Workload("agent", tuple(requests))


WORKLOADS: dict[str, Callable[..., Workload]] = {
    "random": random_workload,
    "shared-prefix": shared_prefix_workload,
    "multi-turn": multi_turn_workload,
    "agent": agent_workload,
}


def make_workload(name: str, num_requests: int, *, vocab_size: int, seed: int = 0, **options) -> Workload:
    """A workload by name; ``options`` that this kind does not take are ignored, so one set of
    command-line lengths serves every kind."""
    import inspect

    try:
        build = WORKLOADS[name]
    except KeyError:
        raise InvalidInputError(f"unknown workload {name!r}; choose from {sorted(WORKLOADS)}") from None
    accepted = inspect.signature(build).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
    return build(num_requests, vocab_size=vocab_size, seed=seed, **kwargs)
