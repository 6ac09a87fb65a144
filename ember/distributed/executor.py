"""The engine-side runner of a distributed instance: starts one worker process per rank
(the engine process is not a rank), sends each step to every rank and returns the result
rank's logits: the ``ember.runner.base.Runner`` interface. A step is one ``StepRequest`` to
every rank (its KV copies ride in the batch).

Failure: the engine waits on the result pipe, every rank's pipe and every rank's process
sentinel at once, so a rank that dies (or reports an exception) ends the wait at once;
the executor then kills the remaining ranks, reaps them, and raises WorkerError. A step
that produces nothing for ``step_timeout_s`` is treated the same way. Workers watch the
engine's pid and exit if it dies.
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Protocol

import torch

from ember.core.batch import Batch, RunnerOutput
from ember.distributed.layout import ParallelLayout
from ember.distributed.messages import (
    KVShard,
    ReadKV,
    Ready,
    Shutdown,
    StepRequest,
    StepResult,
    WireTensor,
    WorkerFailed,
    WorkerInit,
    WriteKV,
)
from ember.distributed.process import free_port
from ember.distributed.shards import local_sizes
from ember.errors import WorkerError
from ember.models.config import ModelArchConfig
from ember.models.loader import _read_json


@dataclass(frozen=True)
class RankFailure:
    """What ended a distributed instance: reported to every failure listener (the SpotServe
    executor treats it as the instance's loss) before ``WorkerError`` is raised."""

    rank: int | None  # None when no single rank is to blame (e.g. a timeout)
    pid: int | None
    message: str


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped responding"
    if exitcode < 0:
        try:
            return f"exited with signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"exited with signal {-exitcode}"
    return f"exited with code {exitcode}"


@dataclass(frozen=True)
class LaunchedRank:
    """One started rank: its process (``subprocess.Popen``, or anything with ``pid``,
    ``poll()``, ``wait(timeout)``, ``kill()``, ``returncode``), the engine's end of its
    connection, and the pid the worker watches (it exits when that process goes)."""

    process: Any
    conn: Any
    parent_pid: int


class RankLauncher(Protocol):
    def launch(self, world_size: int) -> list[LaunchedRank]: ...

    def master_address(self) -> tuple[str, int]:
        """Where rank 0's process-group store listens (host, port)."""
        ...


class LocalLauncher:
    """Every rank a child process of the engine on this machine, connected by a socket pair."""

    def launch(self, world_size: int) -> list[LaunchedRank]:
        out = []
        for _ in range(world_size):
            # NOTE: a fresh interpreter per rank (not multiprocessing spawn, which re-imports
            # the caller's __main__ and so breaks scripts without a main guard); its end of
            # a socket pair is inherited by fd number.
            parent_end, child_end = Pipe()
            proc = subprocess.Popen(
                [sys.executable, "-m", "ember.distributed.worker", str(child_end.fileno())],
                pass_fds=(child_end.fileno(),),
            )
            child_end.close()
            out.append(LaunchedRank(process=proc, conn=parent_end, parent_pid=os.getpid()))
        return out

    def master_address(self) -> tuple[str, int]:
        return "127.0.0.1", free_port()


class DistributedExecutor:
    # NOTE: not profiled: its ranks' weights live in other processes, and tp*pp ranks timed
    # on shared cores measure contention more than the model.
    can_profile = False

    def __init__(
        self,
        model_path: str | Path,
        layout: ParallelLayout,
        *,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: str = "cpu",
        attention_backend: str = "paged",
        start_timeout_s: float = 300.0,
        step_timeout_s: float = 300.0,
        launcher: RankLauncher | None = None,
    ) -> None:
        self.layout = layout
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.device = torch.device(device)
        self.kv_dtype = dtype
        self.num_messages: list[Counter[str]] = [Counter() for _ in range(layout.world_size)]  # by type
        self.step_timeout_s = step_timeout_s
        self.arch = ModelArchConfig.from_hf(_read_json(Path(model_path) / "config.json", required=True))
        self.failure: RankFailure | None = None
        self._failure_listeners: list[Callable[[RankFailure], None]] = []
        self._closed_reason: str | None = None
        self._step_ids = itertools.count()
        launcher = launcher or LocalLauncher()
        ranks = launcher.launch(layout.world_size)
        self._procs = [r.process for r in ranks]
        # NOTE: a process sentinel where the rank is a child of ours; a remote rank's death shows
        # as its connection closing
        self._sentinels: dict[int, int] = {
            rank: os.pidfd_open(r.process.pid)
            for rank, r in enumerate(ranks)
            if isinstance(r.process, subprocess.Popen)
        }
        self._conns = [r.conn for r in ranks]
        self._inbox: list[list] = [[] for _ in range(layout.world_size)]
        atexit.register(self.close)
        master_addr, master_port = launcher.master_address()
        for rank, launched in enumerate(ranks):
            init = WorkerInit(
                rank=rank,
                layout=layout,
                model_path=Path(model_path),
                dtype=str(dtype).removeprefix("torch."),
                device=device,
                num_blocks=num_blocks,
                block_size=block_size,
                attention_backend=attention_backend,
                master_port=master_port,
                master_addr=master_addr,
                parent_pid=launched.parent_pid,
                timeout_s=max(start_timeout_s, step_timeout_s),
            )
            launched.conn.send(init)
            self.num_messages[rank]["WorkerInit"] += 1
        self.num_params = 0
        for rank in range(layout.world_size):
            ready = self._receive(rank, Ready, timeout_s=start_timeout_s, doing="starting")
            self.num_params += ready.num_params
        # NOTE: the result rank: last pipeline stage, tensor rank 0.
        self.result_rank = layout.world_size - layout.tp_size

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def _exit_of(self, rank: int, wait_s: float = 2.0) -> str:
        proc = self._procs[rank]
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            pass
        return f"tensor/pipeline worker rank {rank} (pid {proc.pid}) {describe_exit(proc.returncode)}"

    @property
    def is_closed(self) -> bool:
        return self._closed_reason is not None

    # ------------------------------------------------------------------ steps
    def run(self, batch: Batch) -> RunnerOutput:
        step_id = next(self._step_ids)
        self._broadcast(StepRequest(step_id=step_id, batch=batch))
        result = self._receive(self.result_rank, StepResult, timeout_s=self.step_timeout_s, doing="running a step")
        assert result.step_id == step_id, (result.step_id, step_id)

        def tensor(array):  # NOTE: on the engine's device, where the sampler's generators live
            return torch.from_numpy(array).to(self.device)

        return RunnerOutput(
            sample_ids=result.sample_ids,
            logits=tensor(result.logits),
            prompt_logits={rid: (pos, tensor(a)) for rid, (pos, a) in result.prompt_logits.items()},
            tree_logits={rid: tensor(a) for rid, a in result.tree_logits.items()},
        )

    def read_kv(self, slots: Sequence[int]) -> torch.Tensor:
        """Every rank's shard of the slots, assembled into whole layers and KV heads."""
        request_id = next(self._step_ids)
        self._broadcast(ReadKV(request_id=request_id, slots=list(slots)))
        arch = self.arch
        full = torch.empty(arch.num_layers, 2, arch.num_kv_heads, len(slots), arch.head_dim, dtype=self.kv_dtype)
        for rank in range(self.layout.world_size):
            shard = self._receive(rank, KVShard, timeout_s=self.step_timeout_s, doing="reading KV")
            assert shard.request_id == request_id, (shard.request_id, request_id)
            layers, heads = self._rank_kv_range(rank)
            # NOTE: replicated KV heads (tp > num_kv_heads) arrive from several ranks, equal.
            full[layers.start : layers.stop, :, heads.start : heads.stop] = shard.kv.tensor()
        return full

    def write_kv(self, slots: Sequence[int], kv: torch.Tensor) -> None:
        for rank in range(self.layout.world_size):
            layers, heads = self._rank_kv_range(rank)
            part = kv[layers.start : layers.stop, :, heads.start : heads.stop].to(self.kv_dtype)
            self._send(rank, WriteKV(slots=list(slots), kv=WireTensor.of(part)))

    def _rank_kv_range(self, rank: int) -> tuple[range, range]:
        """The layers and KV heads of the full cache that ``rank`` holds."""
        coord = self.layout.coord(rank)
        sizes = local_sizes(self.arch, self.layout.tp_size, coord.tp)
        heads = range(sizes["kv_head_start"], sizes["kv_head_start"] + sizes["num_kv_heads"])
        return self.layout.stage_layers(coord.pp, self.arch.num_layers), heads

    # -------------------------------------------------------------- failures
    def add_failure_listener(self, listener: Callable[[RankFailure], None]) -> None:
        """Call ``listener(failure)`` once when the instance fails (a rank dies, errs, or stops
        answering), before the error reaches whoever is waiting on it."""
        self._failure_listeners.append(listener)
        if self.failure is not None:
            listener(self.failure)

    # --------------------------------------------------------------- lifetime
    def close(self, timeout_s: float = 10.0) -> None:
        """Shut the ranks down (they leave the process group together); kill any rank still
        alive after ``timeout_s``. Idempotent."""
        atexit.unregister(self.close)
        if self._closed_reason is None:
            self._closed_reason = "the distributed executor was closed"
            for conn in self._conns:
                try:
                    conn.send(Shutdown())
                except (OSError, ValueError):
                    pass
            deadline = time.monotonic() + timeout_s
            for proc in self._procs:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        self._kill_all()

    def __enter__(self) -> DistributedExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _kill_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass  # NOTE: SIGKILLed; only an uninterruptible sleep delays the reaping
        for conn in self._conns:
            conn.close()
        for fd in self._sentinels.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._sentinels = {}

    def _fail(self, message: str, rank: int | None = None) -> None:
        if self.failure is None:
            pid = self._procs[rank].pid if rank is not None else None
            self.failure = RankFailure(rank=rank, pid=pid, message=message)
            for listener in self._failure_listeners:
                listener(self.failure)
        self._closed_reason = message
        atexit.unregister(self.close)
        self._kill_all()
        raise WorkerError(message)

    def _broadcast(self, message) -> None:
        for rank in range(self.layout.world_size):
            self._send(rank, message)

    def _send(self, rank: int, message) -> None:
        if self._closed_reason is not None:
            raise WorkerError(f"the tensor/pipeline workers are gone: {self._closed_reason}")
        try:
            self._conns[rank].send(message)
            self.num_messages[rank][type(message).__name__] += 1
        except (OSError, ValueError):
            self._check_alive()
            self._fail(f"tensor/pipeline worker rank {rank} is unreachable", rank)

    def _check_alive(self) -> None:
        for rank, proc in enumerate(self._procs):
            if proc.poll() is not None:
                self._fail(self._exit_of(rank), rank)

    def _dead_rank(self, wait_s: float) -> int | None:
        """The first rank found exited with an error within ``wait_s``, if any."""
        deadline = time.monotonic() + wait_s
        while True:
            for rank, proc in enumerate(self._procs):
                if proc.poll() not in (None, 0):
                    return rank
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def _receive(self, rank: int, kind: type, *, timeout_s: float, doing: str):
        """The next message of type ``kind`` from ``rank``; WorkerError if any rank dies or
        fails first, or nothing arrives within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        sentinels = {fd: r for r, fd in self._sentinels.items()}
        conns = {id(c): r for r, c in enumerate(self._conns)}
        while True:
            if self._inbox[rank]:
                message = self._inbox[rank].pop(0)
                if isinstance(message, kind):
                    return message
                self._fail(f"tensor/pipeline worker rank {rank} sent an unexpected {type(message).__name__}", rank)
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"tensor/pipeline workers: no reply from rank {rank} within {timeout_s:.0f} s while {doing}")
            ready = wait([*self._conns, *sentinels], timeout=left)
            # NOTE: pipes first: a rank that reported its exception and exited is named by
            # its report, not only by its exit code.
            for obj in ready:
                if obj in sentinels:
                    continue
                source = conns[id(obj)]
                try:
                    message = obj.recv()
                except (EOFError, OSError):
                    self._fail(f"{self._exit_of(source)} while {doing}", source)
                if isinstance(message, WorkerFailed):
                    # NOTE: a rank that died takes its peers' collectives down with it; their
                    # reports ("connection reset") can arrive before its exit status. Name
                    # the dead rank, the root cause, when there is one.
                    dead = self._dead_rank(wait_s=1.0)
                    if dead is not None and dead != message.rank:
                        last = message.error.strip().splitlines()[-1] if message.error.strip() else ""
                        self._fail(
                            f"{self._exit_of(dead)} while {doing} (rank {message.rank} then failed: {last})", dead
                        )
                    self._fail(
                        f"tensor/pipeline worker rank {message.rank} failed while {doing}:\n{message.error}",
                        message.rank,
                    )
                self._inbox[source].append(message)
            for obj in ready:
                if obj in sentinels:
                    self._fail(f"{self._exit_of(sentinels[obj])} while {doing}", sentinels[obj])
