"""A live replica's tensor/pipeline ranks on the instances their devices are on.

``RayRankLauncher(instances)`` is the ``DistributedExecutor``'s launcher for a replica whose
ranks the controller placed on several instances: one ``RankHost`` actor per rank, pinned to
its instance's node (the ``ember_instance_<id>`` resource), starts the rank's worker process
there; the worker connects back to the engine over TCP (an authenticated
``multiprocessing.connection``). The process group's store listens on rank 0's node.

So an instance that goes takes its ranks with it, as a preempted VM does: the engine sees their
connections close and fails over (``RankFailure``), and the router resumes the replica's
requests elsewhere. The ``RankHost`` actors belong to the replica's actor, so Ray stops them
with it; each worker also exits when its host or its engine goes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from ember.distributed.executor import LaunchedRank
from ember.distributed.process import free_port
from ember.errors import WorkerError
from ember.spot.live.cluster import instance_resource


class RankHost:
    """On one instance: the worker process of one rank (a Ray actor)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def address(self) -> tuple[str, int]:
        """This node's address and a port free on it (for the process group's store)."""
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def start(self, engine_address: str, authkey_hex: str) -> tuple[int, int]:
        env = dict(os.environ, EMBER_WORKER_AUTHKEY=authkey_hex)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ember.distributed.worker", "--connect", engine_address], env=env
        )
        return os.getpid(), self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout_s) if self.proc is not None else None
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class RemoteRank:
    """A rank's worker process on another instance, as ``DistributedExecutor`` sees a process.
    When its host is gone with its instance, the exit status is unknown (None)."""

    def __init__(self, host, pid: int, instance_id: str) -> None:
        self.host, self.pid, self.instance_id = host, pid, instance_id
        self.returncode: int | None = None

    def _ask(self, call, timeout_s: float):
        import ray

        try:
            return ray.get(call, timeout=timeout_s)
        except (ray.exceptions.RayError, TimeoutError):
            return None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._ask(self.host.poll.remote(), 10.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        timeout = 30.0 if timeout is None else timeout
        if self.returncode is None:
            self.returncode = self._ask(self.host.wait.remote(timeout), timeout + 10.0)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"rank on {self.instance_id}", timeout)
        return self.returncode

    def kill(self) -> None:
        import ray

        self._ask(self.host.kill.remote(), 10.0)
        try:
            ray.kill(self.host)
        except Exception:  # noqa: BLE001 - already gone with its instance
            pass


class RayRankLauncher:
    """Rank r of the replica runs on ``instances[r]`` (rank = stage * tp + tensor rank)."""

    def __init__(self, instances: Sequence[str], *, connect_timeout_s: float = 300.0) -> None:
        if not instances:
            raise ValueError("RayRankLauncher.instances must not be empty")
        self.instances = tuple(instances)
        self.connect_timeout_s = connect_timeout_s
        self._master: tuple[str, int] | None = None

    def launch(self, world_size: int) -> list[LaunchedRank]:
        from multiprocessing.connection import Listener

        import ray

        if world_size != len(self.instances):
            raise ValueError(f"RayRankLauncher: {len(self.instances)} instances for {world_size} ranks")
        actor = ray.remote(RankHost)
        hosts = [
            actor.options(num_cpus=0, resources={instance_resource(i): 0.001}, max_restarts=0).remote()
            for i in self.instances
        ]
        authkey = os.urandom(32)
        listener = Listener((ray.util.get_node_ip_address(), 0), authkey=authkey)
        try:
            engine_address = "{}:{}".format(*listener.address)
            started = ray.get([h.start.remote(engine_address, authkey.hex()) for h in hosts])
            rank_of = {worker_pid: rank for rank, (_, worker_pid) in enumerate(started)}
            conns = self._accept(listener, hosts, rank_of)
        finally:
            listener.close()
        self._master = tuple(ray.get(hosts[0].address.remote()))
        return [
            LaunchedRank(
                process=RemoteRank(hosts[r], started[r][1], self.instances[r]), conn=conns[r], parent_pid=started[r][0]
            )
            for r in range(world_size)
        ]

    def master_address(self) -> tuple[str, int]:
        if self._master is None:
            raise RuntimeError("RayRankLauncher.master_address: launch first")
        return self._master

    def _accept(self, listener, hosts, rank_of: dict[int, int]) -> dict:
        """Each worker's connection, by rank (a worker sends its pid first)."""
        import ray

        conns: dict[int, object] = {}
        errors: list[BaseException] = []

        def accept_all() -> None:
            try:
                while len(conns) < len(rank_of):
                    conn = listener.accept()
                    conns[rank_of[conn.recv()]] = conn
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=accept_all, name="ember-rank-accept", daemon=True)
        thread.start()
        deadline = time.monotonic() + self.connect_timeout_s
        while thread.is_alive():
            thread.join(0.5)
            exited = [r for r, code in enumerate(ray.get([h.poll.remote() for h in hosts])) if code is not None]
            if exited and thread.is_alive():
                r = exited[0]
                raise WorkerError(f"rank {r} on instance {self.instances[r]} exited before it connected")
            if time.monotonic() > deadline:
                raise WorkerError(f"ranks did not connect within {self.connect_timeout_s:.0f} s")
        if errors:
            raise WorkerError(f"a rank failed to connect: {errors[0]!r}")
        return conns
