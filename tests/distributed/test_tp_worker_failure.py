"""A rank that dies mid-generation ends in a clear error within a bound, and no worker
process is left behind: not after a failure, not after the engine process dies."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from engine_util import greedy, random_prompts

from ember.engine.llm import LLM
from ember.errors import EmberError, WorkerError

BOUND_S = 30
OPTIONS = dict(dtype="float32", block_size=4, max_num_batched_tokens=8, latency_model="analytic")


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (psutil-free: /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if is_running(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if is_running(p)]


@pytest.mark.parametrize("victim", [0, 1])
def test_killed_rank_fails_the_step_clearly_and_leaves_no_process(victim, hf_checkpoints):
    llm = LLM(str(hf_checkpoints("llama_gqa")), pipeline_parallel_size=2, **OPTIONS)
    engine, executor = llm.engine, llm.engine.runner
    pids = executor.worker_pids
    reported = []
    executor.add_failure_listener(reported.append)
    for prompt in random_prompts(3, vocab=300, min_len=10, max_len=20, seed=4):
        engine.add_request(None, prompt, greedy(20))
    engine.step()
    engine.step()  # mid-generation: prefill chunks done, requests running
    os.kill(pids[victim], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=rf"worker rank {victim} \(pid {pids[victim]}\) exited with signal 9") as info:
        for _ in range(100):
            engine.step()
    assert isinstance(info.value, EmberError)
    assert time.monotonic() - start < BOUND_S
    # the instance's loss was reported (once) before the error, naming the dead rank
    assert [(f.rank, f.pid) for f in reported] == [(victim, pids[victim])]
    assert wait_gone(pids, 5) == []
    assert all(p.returncode is not None for p in executor._procs)  # reaped, no zombies
    with pytest.raises(WorkerError, match="workers are gone"):
        engine.step()
    llm.close()  # harmless after a failure


def test_workers_exit_when_the_engine_process_is_killed(hf_checkpoints, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from ember.engine.llm import LLM
        llm = LLM({str(hf_checkpoints("llama_gqa"))!r}, tensor_parallel_size=2, **{OPTIONS!r})
        print(*llm.engine.runner.worker_pids, flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    engine = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in engine.stdout.readline().split()]
        assert len(pids) == 2 and all(is_running(p) for p in pids)
        engine.kill()
        engine.wait(10)
        assert wait_gone(pids, 10) == []
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()


def test_unsupported_layout_is_a_clear_error_before_any_process_starts(hf_checkpoints):
    from ember.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="tensor_parallel_size=3 must divide the model's 4 attention heads"):
        LLM(str(hf_checkpoints("llama_gqa")), tensor_parallel_size=3, **OPTIONS)
    with pytest.raises(InvalidInputError, match="pipeline_parallel_size=3 exceeds the model's 2 layers"):
        LLM(str(hf_checkpoints("llama_gqa")), pipeline_parallel_size=3, **OPTIONS)
