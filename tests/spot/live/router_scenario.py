"""Two replicas on two instances of a local Ray cluster: requests stream through the router, move
with their KV from one replica to the other mid-generation, then the second replica's instance
dies and they resume from checkpoints on the first. Prints JSON on the last line."""

import asyncio
import json

from ember.core.sampling_params import SamplingParams
from ember.spot.live.cluster import LocalRayCluster
from ember.spot.live.deployment import served_model
from ember.spot.live.replica import replica_actor
from ember.spot.live.router import SpotRouter

PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n", "class Stack:\n", "for i in range(10):"]
MAX_TOKENS = 160


def params(i: int) -> SamplingParams:
    if i % 2 == 0:
        return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return SamplingParams(temperature=0.8, top_p=0.9, seed=i, max_tokens=MAX_TOKENS, ignore_eos=True)


async def main() -> None:
    cluster = LocalRayCluster()
    try:
        for iid in ("a", "b"):
            cluster.add_instance(iid)
        router = SpotRouter(served_model("ember-tiny"), checkpoint_every=4)
        options = {"latency_model": "analytic"}
        r0 = replica_actor("a").remote("ember-tiny", options, name="r0")
        r1 = replica_actor("b").remote("ember-tiny", options, name="r1")
        await asyncio.gather(r0.ready.remote(), r1.ready.remote())
        router.add_replica("r0", r0)
        streams = [await router.add_request(str(i), p, params(i)) for i, p in enumerate(PROMPTS)]
        seen = {s.request_id: 0 for s in streams}

        async def consume(stream):
            async for out in stream:
                seen[stream.request_id] = len(out.outputs[0].token_ids)
            return out.outputs[0].token_ids

        tasks = [asyncio.create_task(consume(s)) for s in streams]
        while min(seen.values()) < 20:
            await asyncio.sleep(0.02)
        router.add_replica("r1", r1)
        moved = await router.migrate("r0", "r1", with_kv=True)
        at_move = dict(seen)
        while min(seen.values()) < min(at_move.values()) + 20:
            await asyncio.sleep(0.02)
        cluster.remove_instance("b")  # r1 dies with no notice; r0 resumes from checkpoints
        tokens = await asyncio.wait_for(asyncio.gather(*tasks), 300)
        stats = router.router_stats
        print(json.dumps({
            "tokens": tokens, "moved": moved, "at_move": at_move, "kv_bytes": stats.migrated_kv_bytes,
            "recovered": stats.num_recovered, "replicas": sorted(router.replicas),
        }), flush=True)  # fmt: skip
        router.shutdown()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
