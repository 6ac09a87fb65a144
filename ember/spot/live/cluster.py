"""Instances as Ray nodes. Each instance is a node with a custom resource of its own
(``ember_instance_<id>``), so a replica actor lands on the instance its devices are on.

On one machine the instances are the nodes of a ``ray.cluster_utils.Cluster`` (adding one
is an instance arriving, removing one is an instance gone); on a real cluster the same code
attaches to running Ray nodes that were started with that resource (``--address``).

NOTE: Ray binds the machine's external address; on a shared machine run this in a network
namespace with only loopback (``unshare -n sh -c 'ip link set lo up; ...'``).
"""

from __future__ import annotations

import re

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def instance_resource(instance_id: str) -> str:
    return f"ember_instance_{instance_id}"


class LocalRayCluster:
    """A head node plus one node per instance, on this machine."""

    def __init__(self, *, cpus_per_instance: float = 1, object_store_memory: int = 256 * 2**20) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.cpus_per_instance = cpus_per_instance
        self.object_store_memory = object_store_memory
        self._cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "object_store_memory": object_store_memory, "include_dashboard": False},
        )
        self._nodes: dict[str, object] = {}
        ray.init(address=self._cluster.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)

    @property
    def address(self) -> str:
        return self._cluster.address

    @property
    def instances(self) -> list[str]:
        return list(self._nodes)

    def add_instance(self, instance_id: str) -> None:
        if not _ID.match(instance_id):
            raise ValueError(f"instance id must be 1-64 letters, digits or ._-, got {instance_id!r}")
        if instance_id in self._nodes:
            raise ValueError(f"instance {instance_id!r} is already in the cluster")
        self._nodes[instance_id] = self._cluster.add_node(
            num_cpus=self.cpus_per_instance,
            resources={instance_resource(instance_id): 1},
            object_store_memory=self.object_store_memory,
        )
        self._cluster.wait_for_nodes()

    def remove_instance(self, instance_id: str) -> None:
        """The instance is gone (its processes are killed, as a preempted VM's are)."""
        node = self._nodes.pop(instance_id, None)
        if node is not None:
            self._cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self._cluster.shutdown()
        self._nodes.clear()


class AttachedRayCluster:
    """A running Ray cluster (``ray start`` on each instance with ``--resources
    '{"ember_instance_<id>": 1}'``): the cloud adds and removes its nodes; here an arrival is
    checked against Ray's view and a removal only stops using the instance."""

    def __init__(self, address: str) -> None:
        import ray

        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        self.address = address

    @property
    def instances(self) -> list[str]:
        return sorted(alive_instances())

    def add_instance(self, instance_id: str) -> None:
        if instance_id not in alive_instances():
            raise ValueError(f"instance {instance_id!r} has no alive Ray node with {instance_resource(instance_id)}")

    def remove_instance(self, instance_id: str) -> None:
        """Nothing to do: the instance's node goes with the instance (the executor no longer uses it)."""

    def shutdown(self) -> None:
        import ray

        ray.shutdown()


def alive_instances() -> set[str]:
    """The instance ids of the alive Ray nodes that carry an ``ember_instance_<id>`` resource."""
    import ray

    prefix = instance_resource("")
    return {
        key.removeprefix(prefix)
        for node in ray.nodes()
        if node.get("Alive")
        for key in node.get("Resources", {})
        if key.startswith(prefix)
    }
