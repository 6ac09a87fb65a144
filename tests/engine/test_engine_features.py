"""Sampling, stops, n > 1, streaming, abort and chat through the whole engine."""

import pytest
from engine_util import greedy, run_checked

from ember.core.sampling_params import SamplingParams
from ember.engine.llm import LLM


@pytest.fixture(scope="module")
def llm(debug_llama):
    return LLM(str(debug_llama), dtype="float32", block_size=4)


def test_text_prompts_and_detokenized_text(llm):
    (out,) = run_checked(llm, ["def fibonacci(n):"], greedy(20))
    completion = out.outputs[0]
    assert len(completion.token_ids) == 20
    assert completion.text == llm.tokenizer.decode(completion.token_ids)
    assert out.prompt_token_ids == llm.tokenizer.encode("def fibonacci(n):")


def test_seeded_sampling_is_reproducible_regardless_of_batch(llm):
    params = SamplingParams(temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True)
    others = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=9, ignore_eos=True)
    (alone,) = run_checked(llm, ["import os"], params)
    batched = run_checked(llm, ["x = 1", "import os", "class A:"], [others, params, others])
    assert batched[1].outputs[0].token_ids == alone.outputs[0].token_ids
    (other_seed,) = run_checked(
        llm, ["import os"], SamplingParams(temperature=1.0, seed=99, max_tokens=16, ignore_eos=True)
    )
    assert other_seed.outputs[0].token_ids != alone.outputs[0].token_ids


def test_top_k_samples_stay_in_the_top_k(llm):
    params = SamplingParams(temperature=1.5, top_k=3, seed=7, max_tokens=40, ignore_eos=True, logprobs=5)
    (out,) = run_checked(llm, ["for i in range(10):"], params)
    ranks = [lp.rank for lp in out.outputs[0].logprobs]
    assert len(ranks) == 40 and max(ranks) <= 3 and len(set(ranks)) > 1


def test_n_completions_share_the_prompt_and_differ(llm):
    params = SamplingParams(n=4, temperature=1.0, seed=5, max_tokens=12, ignore_eos=True)
    (out,) = run_checked(llm, ["while True:"], params)
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_cuts_exactly(llm, include):
    (free,) = run_checked(llm, ["def f(x):"], greedy(30))
    text = free.outputs[0].text
    stop = text[8:11]
    assert stop and text.find(stop) >= 0
    params = greedy(30, stop=[stop], include_stop_str_in_output=include)
    (out,) = run_checked(llm, ["def f(x):"], params)
    cut = text.find(stop) + (len(stop) if include else 0)
    assert out.outputs[0].text == text[:cut]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == stop
    assert len(out.outputs[0].token_ids) < 30


def test_stop_token_ids_and_min_tokens(llm):
    (free,) = run_checked(llm, ["print("], greedy(12))
    ids = free.outputs[0].token_ids
    stop_id = ids[5]
    (out,) = run_checked(llm, ["print("], greedy(12, stop_token_ids=[stop_id]))
    assert out.outputs[0].token_ids == ids[: ids.index(stop_id) + 1]
    assert out.outputs[0].stop_reason == stop_id
    (late,) = run_checked(llm, ["print("], greedy(12, stop_token_ids=[stop_id], min_tokens=12))
    # NOTE: below min_tokens the stop ids are masked out of sampling (as in vLLM)
    late_ids = late.outputs[0].token_ids
    assert late_ids[:5] == ids[:5] and stop_id not in late_ids
    assert len(late_ids) == 12 and late.outputs[0].finish_reason == "length"


def test_prompt_logprobs_cover_every_prompt_token(llm):
    prompt = "import sys\nimport os\n"
    params = greedy(2, prompt_logprobs=2)
    (cold,) = run_checked(llm, [prompt], params)
    ids = cold.prompt_token_ids
    assert cold.prompt_logprobs[0] is None and len(cold.prompt_logprobs) == len(ids)
    chunked = LLM(llm.engine.config.model, dtype="float32", block_size=4, max_num_batched_tokens=3)
    (again,) = run_checked(chunked, [prompt], params)
    for a, b in zip(cold.prompt_logprobs[1:], again.prompt_logprobs[1:]):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_stream_yields_growing_text_and_abort_frees_blocks(llm):
    outputs = list(llm.stream("def g():", greedy(10)))
    assert outputs[-1].finished and not any(o.finished for o in outputs[:-1])
    lengths = [len(o.outputs[0].token_ids) for o in outputs]
    assert lengths == sorted(lengths) and lengths[-1] == 10
    stream = llm.stream("def h():", greedy(50))
    next(stream)
    assert llm.engine.has_unfinished_requests()
    stream.close()
    assert not llm.engine.has_unfinished_requests()
    llm.engine.check_integrity()
    assert llm.engine.kv_cache.num_free_blocks == llm.engine.kv_cache.num_blocks


def test_chat_uses_the_template(llm):
    (out,) = llm.chat([{"role": "user", "content": "hi"}], greedy(5))
    rendered = llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert out.prompt == rendered and len(out.outputs[0].token_ids) == 5


def test_abort_mid_batch_leaves_the_others_untouched(llm):
    prompts = ["def a():", "def b():", "def c():"]
    expected = [o.outputs[0].token_ids for o in run_checked(llm, prompts, greedy(16))]
    engine = llm.engine
    ids = [engine.add_request(None, p, greedy(16)) for p in prompts]
    for _ in range(4):
        engine.step()
    engine.abort_request(ids[1])
    engine.check_integrity()
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            finished[output.request_id] = output
        engine.check_integrity()
    assert ids[1] not in finished
    assert [finished[i].outputs[0].token_ids for i in (ids[0], ids[2])] == [expected[0], expected[2]]
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
