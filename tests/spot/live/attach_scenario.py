"""`ember spot serve --address` attached to a running Ray cluster (two nodes that carry
``ember_instance_a`` / ``ember_instance_b``): clients stream while node b leaves with no notice.
Run in a loopback-only network namespace; prints JSON on the last line."""

import json
import sys
import threading
import time

from ray.cluster_utils import Cluster
from sse_scenario import PROMPTS, start_server, stream_all


def main(max_tokens: int) -> None:
    # NOTE: Ray's health checks decide when a node that vanished is dead (by default after
    # about 15 s); checked more often here, so the test need not wait that long
    head = {"num_cpus": 1, "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}}  # fmt: skip
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        nodes = {
            iid: cluster.add_node(num_cpus=1, resources={f"ember_instance_{iid}": 1}, object_store_memory=128 * 2**20)
            for iid in ("a", "b")
        }
        cluster.wait_for_nodes()
        server, url, lines = start_server(["--address", cluster.address, "--instances", "2"])
        deltas = [[] for _ in PROMPTS]
        client = threading.Thread(target=stream_all, args=(url, max_tokens, deltas))
        client.start()
        while min(len(d) for d in deltas) < 40 and client.is_alive():
            time.sleep(0.05)
        at_loss = [len(d) for d in deltas]
        cluster.remove_node(nodes["b"], allow_graceful=False)  # node b is gone, nobody said so
        client.join()
        deadline = time.monotonic() + 60  # the streams may end before Ray calls node b dead
        while not any("b terminated" in x for x in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        server.terminate()
        server.wait(60)
    finally:
        cluster.shutdown()
    decisions = [x.strip() for x in lines if "[spot]" in x]
    results = [{"text": "".join(d), "events": len(d)} for d in deltas]
    print(json.dumps({"streams": results, "decisions": decisions, "at_loss": at_loss}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
