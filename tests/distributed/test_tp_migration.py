"""Requests move between instances of different layouts (one process, TP=2, PP=2) with their
KV: what SpotServe does when it re-parallelizes. The continuation equals an uninterrupted
one-process run, and the KV a distributed instance reads back is the one it was given."""

import pytest
import torch

from ember.core.batch import storage_slot
from ember.core.sampling_params import SamplingParams
from ember.engine.llm import LLM

PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n"]
PARAMS = [
    SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True),
    SamplingParams(temperature=0.8, seed=5, max_tokens=16, ignore_eos=True),
]
OPTIONS = {"latency_model": "analytic"}


def _tokens(outputs):
    return {o.request_id: o.outputs[0].token_ids for o in outputs}


@pytest.fixture(scope="module")
def oracle():
    with LLM(model="ember-tiny", **OPTIONS) as llm:
        return _tokens(llm.generate(PROMPTS, PARAMS))


def _finish(engine):
    done = []
    while engine.has_unfinished_requests():
        done += [o for o in engine.step() if o.finished]
    return done


@pytest.mark.parametrize(("source", "target"), [({"tensor_parallel_size": 2}, {}), ({}, {"pipeline_parallel_size": 2})])
def test_requests_move_between_layouts_with_their_kv(oracle, source, target):
    with LLM(model="ember-tiny", **OPTIONS, **source) as a, LLM(model="ember-tiny", **OPTIONS, **target) as b:
        for i, (prompt, params) in enumerate(zip(PROMPTS, PARAMS)):
            a.engine.add_request(str(i), prompt, params)
        for _ in range(5):
            a.engine.step()
        snapshots = a.engine.export_requests()
        assert all(s.kv is not None for snap in snapshots for s in snap.sequences)
        b.engine.import_requests(snapshots)
        for snap in snapshots:  # the KV in the target is the KV that left the source
            (seq,) = snap.sequences
            blocks = b.engine.kv_cache.block_table(seq.request_id)
            slots = [storage_slot(blocks, b.engine.kv_cache.block_size, i) for i in range(seq.num_kv_tokens)]
            assert torch.equal(b.engine.runner.read_kv(slots), seq.kv)
        assert _tokens(_finish(b.engine)) == oracle
