"""64 concurrent streaming requests: every one completes with the right token count and
usage, and afterwards the cache is intact and every KV block is free."""

import asyncio

from server_util import MODEL_NAME, metric, wait_idle

NUM_REQUESTS = 64


def test_64_concurrent_streams_finish_and_free_every_block(async_client, http):
    finished_before = metric(http, "ember:request_success_total")

    async def completion(i):
        max_tokens = 4 + i % 13
        stream = await async_client.completions.create(
            model=MODEL_NAME,
            prompt=f"request {i}: " + "word " * (i % 7),
            max_tokens=max_tokens,
            temperature=0.8,
            seed=i,
            logprobs=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        num_tokens, finish, usage = 0, None, None
        async for chunk in stream:
            if chunk.choices:
                num_tokens += len(chunk.choices[0].logprobs.tokens) if chunk.choices[0].logprobs else 0
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        return max_tokens, num_tokens, finish, usage.completion_tokens

    async def chat(i):
        max_tokens = 4 + i % 11
        stream = await async_client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": f"question {i}"}],
            max_tokens=max_tokens,
            logprobs=True,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        num_tokens, finish, usage = 0, None, None
        async for chunk in stream:
            if chunk.choices:
                logprobs = chunk.choices[0].logprobs
                num_tokens += len(logprobs.content) if logprobs else 0
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        return max_tokens, num_tokens, finish, usage.completion_tokens

    async def main():
        jobs = [completion(i) if i % 2 else chat(i) for i in range(NUM_REQUESTS)]
        return await asyncio.wait_for(asyncio.gather(*jobs), timeout=120)

    results = asyncio.run(main())
    for max_tokens, num_tokens, finish, usage_tokens in results:
        assert (num_tokens, finish, usage_tokens) == (max_tokens, "length", max_tokens)
    report = wait_idle(http)
    assert report["idle"] and report["num_free_kv_blocks"] == report["num_kv_blocks"]
    stats = http.get("/debug/engine").json()
    assert stats["num_running"] == stats["num_waiting"] == stats["num_requests"] == 0
    assert metric(http, "ember:request_success_total") - finished_before == NUM_REQUESTS
