"""The hybrid-parallel runtime trains exactly like one process: real ranks (gloo on
127.0.0.1), every strategy family, losses and gradient norms compared step by step."""

import pytest

from ember.planner.strategy import LayerStrategy as S
from ember.planner.strategy import Plan, uniform_plan
from ember.train.parallel.probe import reference_run, run_jobs


def _spec(*, kv_heads=2, tied=False, steps=3):
    shape = dict(
        hidden_size=32,
        num_layers=4,
        num_heads=4,
        num_kv_heads=kv_heads,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    return {"shape": shape, "vocab_size": 128, "seq_len": 16, "steps": steps, "seed": 0, "lr": 3e-3}


def _uniform(n, strategy: S | None = None, **kw):
    strategy = strategy or S()
    kw.setdefault("global_batch_size", 8)
    kw.setdefault("num_micro_batches", 2)
    return uniform_plan(num_devices=n, num_layers=4, strategy=strategy, **kw)


TWO = {
    "dp": (_uniform(2), _spec()),
    "zero3": (_uniform(2, S(dp_type="zero3")), _spec()),
    "zero2+ckpt": (_uniform(2, S(dp_type="zero2", checkpoint=True)), _spec()),
    "tp": (_uniform(2, S(tp=2)), _spec()),
    "pp-1f1b": (_uniform(2, pp=2), _spec()),
    "pp-gpipe-tied-uneven": (
        Plan(
            num_devices=2,
            pp=2,
            stage_layers=(3, 1),
            layers=(S(),) * 4,
            global_batch_size=8,
            num_micro_batches=4,
            schedule="gpipe",
        ),
        _spec(tied=True),
    ),
    "mixed": (
        Plan(
            num_devices=2,
            pp=1,
            stage_layers=(4,),
            layers=(S(tp=2), S(dp_type="zero3", checkpoint=True), S(), S(tp=2, checkpoint=True)),
            global_batch_size=8,
            num_micro_batches=2,
        ),
        _spec(tied=True),
    ),
}
FOUR = {
    "dp+zero3": (_uniform(4, S(dp_type="zero3"), global_batch_size=8), _spec()),
    "tp4": (_uniform(4, S(tp=4), global_batch_size=4, num_micro_batches=1), _spec(kv_heads=4)),
    "pp4": (_uniform(4, pp=4, global_batch_size=8, num_micro_batches=4), _spec()),
    "mixed-pp2": (
        Plan(
            num_devices=4,
            pp=2,
            stage_layers=(1, 3),
            layers=(S(tp=2, dp_type="zero3"), S(dp_type="zero3", checkpoint=True), S(tp=2), S()),
            global_batch_size=8,
            num_micro_batches=2,
        ),
        _spec(tied=True),
    ),
}


def _check(results, cases):
    for (name, (plan, spec)), got in zip(cases.items(), results):
        ref = reference_run(spec, batch_size=plan.micro_batch_size, grad_accum=plan.num_micro_batches)
        assert got["losses"] == pytest.approx(ref["losses"], rel=1e-5), name
        assert got["grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-4), name
        assert got["losses"][-1] < got["losses"][0], name  # it learns
        assert len(got["ranks"]) == plan.num_devices
        assert all(r["activation_peak_bytes"] > 0 and r["state_bytes"] > 0 for r in got["ranks"])


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    return run_jobs(list(TWO.values()), folder=tmp_path_factory.mktemp("two"))


def test_two_ranks_match_one_process(two_rank_results):
    _check(two_rank_results, TWO)


def test_sharding_cuts_state_memory(two_rank_results):
    # per rank: ZeRO-3 over 2 ranks holds about half the model states of DP over 2
    by_name = dict(zip(TWO, two_rank_results))
    dp, zero3 = by_name["dp"]["ranks"][0], by_name["zero3"]["ranks"][0]
    assert zero3["state_bytes"] < 0.75 * dp["state_bytes"]
    # 1F1B keeps two micro-batches alive on the first of two stages, one on the last
    pp = by_name["pp-1f1b"]["ranks"]
    assert pp[0]["activation_peak_bytes"] > 1.5 * pp[1]["activation_peak_bytes"]


def test_four_ranks_match_one_process(tmp_path):
    _check(run_jobs(list(FOUR.values()), folder=tmp_path), FOUR)
