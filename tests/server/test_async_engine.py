"""AsyncLLMEngine in-process: streaming, abort timing, the waiting-queue bound, shutdown."""

import asyncio
import time

import pytest
import torch

from ember.config import EngineConfig
from ember.core.sampling_params import SamplingParams
from ember.engine.async_engine import AsyncLLMEngine, EngineDeadError, EngineOverloadedError
from ember.engine.llm_engine import LLMEngine
from ember.errors import InvalidInputError

LONG = SamplingParams(temperature=0.0, max_tokens=450, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(debug_llama):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield LLMEngine(EngineConfig.from_kwargs(str(debug_llama), dtype="float32", max_num_seqs=1))
    torch.set_num_threads(threads)


def run(llm, body, **options):
    """Run ``body(engine)`` against a fresh engine thread; afterwards nothing may be held."""

    async def main():
        engine = AsyncLLMEngine(llm, **options)
        engine.start()
        try:
            return await body(engine)
        finally:
            engine.shutdown()
            llm.check_integrity()
            assert not llm.has_unfinished_requests()
            assert llm.kv_cache.num_free_blocks == llm.kv_cache.num_blocks

    return asyncio.run(main())


async def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)


def test_stream_is_cumulative_and_matches_offline_generation(llm):
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)

    async def body(engine):
        return [o async for o in engine.generate("a", "def f(x):", params)]

    outputs = run(llm, body)
    lengths = [len(o.outputs[0].token_ids) for o in outputs]
    assert lengths == sorted(lengths) and lengths[-1] == 12 and outputs[-1].finished
    assert not any(o.finished for o in outputs[:-1])
    llm.add_request("offline", "def f(x):", params)
    while llm.has_unfinished_requests():
        (final,) = llm.step()
    assert final.outputs[0].token_ids == outputs[-1].outputs[0].token_ids


def test_abort_frees_blocks_before_the_next_step(llm):
    async def body(engine):
        stream = await engine.add_request("long", "once upon a time", LONG)
        for _ in range(3):
            await stream.__anext__()
        stream.abort()
        steps_at_abort = engine.num_steps
        await wait_for(lambda: engine.stats.num_requests == 0)
        stats = engine.stats
        # NOTE: at most the step already running when abort() was called may still complete.
        assert stats.num_steps <= steps_at_abort + 1
        assert stats.num_free_kv_blocks == stats.num_kv_blocks
        return await engine.call(lambda e: e.kv_cache.num_free_blocks == e.kv_cache.num_blocks)

    assert run(llm, body)


def test_invalid_prompt_raises_at_add_and_engine_keeps_serving(llm):
    async def body(engine):
        with pytest.raises(InvalidInputError) as info:
            await engine.add_request("bad", {"prompt_token_ids": [10**6]}, SamplingParams())
        assert info.value.param == "prompt"
        with pytest.raises(InvalidInputError):
            await engine.add_request("empty", {"prompt_token_ids": []}, SamplingParams())
        outputs = [o async for o in engine.generate("ok", "hello", SamplingParams(max_tokens=3, ignore_eos=True))]
        return outputs[-1]

    assert len(run(llm, body).outputs[0].token_ids) == 3


def test_waiting_queue_bound_rejects_then_recovers(llm):
    async def body(engine):
        running = await engine.add_request("running", "a b c", LONG)
        await running.__anext__()  # max_num_seqs=1: it holds the only slot
        waiting = await engine.add_request("waiting", "d e f", LONG)
        with pytest.raises(EngineOverloadedError):
            await engine.add_request("rejected", "g h i", LONG)
        running.abort()
        waiting.abort()
        await wait_for(lambda: engine.stats.num_requests == 0)
        outputs = [o async for o in engine.generate("after", "j", SamplingParams(max_tokens=2))]
        return outputs[-1].finished

    assert run(llm, body, max_waiting_requests=1)


def test_shutdown_ends_streams_and_rejects_new_requests(llm):
    async def body(engine):
        stream = await engine.add_request("long", "x", LONG)
        await stream.__anext__()
        await asyncio.to_thread(engine.shutdown)
        with pytest.raises(EngineDeadError):
            async for _ in stream:
                pass
        with pytest.raises(EngineDeadError):
            await engine.add_request("late", "y", SamplingParams())
        with pytest.raises(EngineDeadError):
            await engine.call(lambda llm: llm.num_unfinished_requests)
        return engine.is_running

    assert run(llm, body) is False
