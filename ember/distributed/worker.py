"""A rank process: joins the process group, loads its shard, holds the KV cache of its
layers and KV heads, and runs steps as they arrive on its pipe.

A step is micro-batched: its requests are cut into (up to) pp contiguous micro-batches;
stage s runs micro-batch m, sends the hidden states to stage s + 1 (asynchronously) and
goes on with m + 1 while s + 1 works on m, so the stages overlap.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from ember.attention import allocate_kv_cache
from ember.attention.kv_cache import apply_kv_copies, read_slots, write_slots
from ember.attention.step_inputs import LogitsRows, build_step_inputs
from ember.core.batch import ScheduledRequest
from ember.distributed.messages import (
    KVShard,
    ReadKV,
    Ready,
    Shutdown,
    StepRequest,
    StepResult,
    WireTensor,
    WorkerFailed,
    WorkerInit,
    WriteKV,
)
from ember.distributed.process import exit_rank
from ember.distributed.sharded_loader import load_shard
from ember.distributed.shards import local_sizes
from ember.distributed.stage import Stage
from ember.models.config import ModelArchConfig
from ember.models.loader import _read_json


def split_microbatches(items: list[ScheduledRequest], count: int) -> list[list[ScheduledRequest]]:
    """Up to ``count`` contiguous, non-empty groups of about equal token counts."""
    count = min(count, len(items))
    if count <= 1:
        return [items] if items else []
    total = sum(r.num_tokens for r in items)
    groups: list[list[ScheduledRequest]] = [[]]
    done = 0
    for index, item in enumerate(items):
        remaining_items = len(items) - index
        remaining_groups = count - len(groups)
        full = done >= total * len(groups) / count
        if groups[-1] and remaining_groups and (full or remaining_items <= remaining_groups):
            groups.append([])
        groups[-1].append(item)
        done += item.num_tokens
    return groups


def _watch_parent(parent_pid: int) -> None:
    # NOTE: a rank blocked in a collective never reads its pipe again; if the engine process
    # dies (even by SIGKILL) the rank must still go. PR_SET_PDEATHSIG would fire when the
    # engine's *thread* that started us exits, which an engine built in a thread would do.
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="ember-parent-watch", daemon=True).start()


class RankWorker:
    def __init__(self, init: WorkerInit):
        self.init = init
        layout = self.layout = init.layout
        self.rank = init.rank
        self.coord = layout.coord(init.rank)
        self.arch = ModelArchConfig.from_hf(_read_json(init.model_path / "config.json", required=True))
        if init.device.startswith("cuda"):
            self.device = torch.device("cuda", init.rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
            backend = "nccl"
        else:
            self.device = torch.device("cpu")
            backend = "gloo"
        dist.init_process_group(
            backend,
            init_method=f"tcp://{init.master_addr}:{init.master_port}",
            rank=init.rank,
            world_size=layout.world_size,
            timeout=timedelta(seconds=init.timeout_s),
        )
        # NOTE: every rank creates every group, in the same order (new_group is collective).
        self.tp_group = None
        for pp in range(layout.pp_size):
            ranks = layout.tp_group_ranks(0, pp)
            group = dist.new_group(ranks) if layout.tp_size > 1 else None
            if init.rank in ranks:
                self.tp_group = group
        dtype = getattr(torch, init.dtype)
        module = load_shard(
            init.model_path, self.arch, layout, init.rank, dtype=dtype, device=self.device, group=self.tp_group
        )
        self.num_params = sum(p.numel() for p in module.parameters())
        self.stage = Stage(module, self.arch)
        self.is_first = self.coord.pp == 0
        self.is_last = self.coord.pp == layout.pp_size - 1
        self.is_result_rank = self.is_last and self.coord.tp == 0
        sizes = local_sizes(self.arch, layout.tp_size, self.coord.tp)
        self.kv_caches = allocate_kv_cache(
            num_layers=len(self.stage.layers),
            num_blocks=init.num_blocks,
            block_size=init.block_size,
            num_kv_heads=sizes["num_kv_heads"],
            head_dim=self.arch.head_dim,
            dtype=dtype,
            device=self.device,
        )
        self.dtype = dtype
        self.prev_rank = None if self.is_first else init.rank - layout.tp_size
        self.next_rank = None if self.is_last else init.rank + layout.tp_size

    @torch.inference_mode()
    def step(self, request: StepRequest) -> StepResult | None:
        apply_kv_copies(self.kv_caches, request.batch.kv_copies)
        pending, rows_out = [], []
        for items in split_microbatches(request.batch.requests, self.layout.pp_size):
            inputs = build_step_inputs(
                items, block_size=self.init.block_size, device=self.device, backend=self.init.attention_backend
            )
            if self.is_first:
                h = self.stage.embed(inputs.input_ids, inputs.positions)
            else:
                h = torch.empty(inputs.num_tokens, self.arch.hidden_size, dtype=self.dtype, device=self.device)
                dist.recv(h, src=self.prev_rank)
            h = self.stage.run_layers(h, inputs.positions, self.kv_caches, inputs.meta)
            if not self.is_last:
                pending.append((dist.isend(h.contiguous(), dst=self.next_rank), h))
                continue
            rows_out.extend(self._logits(self.stage.finish(h), inputs.rows))
        for work, _ in pending:
            work.wait()
        if not self.is_result_rank:
            return None
        sample = [(r, lg) for r, lg in rows_out if r.kind == "sample"]
        vocab = self.arch.vocab_size
        return StepResult(
            step_id=request.step_id,
            sample_ids=[r.request_id for r, _ in sample],
            logits=torch.cat([lg for _, lg in sample]).numpy() if sample else torch.empty(0, vocab).numpy(),
            prompt_logits={r.request_id: (r.first_position, lg.numpy()) for r, lg in rows_out if r.kind == "prompt"},
            tree_logits={r.request_id: lg.numpy() for r, lg in rows_out if r.kind == "tree"},
        )

    def _logits(self, hidden: torch.Tensor, rows: list[LogitsRows]) -> list[tuple[LogitsRows, torch.Tensor]]:
        if not rows:
            return []
        index = torch.cat([torch.arange(r.start, r.end) for r in rows]).to(self.device)
        local = self.stage.local_logits(hidden[index]).contiguous()
        if self.tp_group is not None:
            parts = [torch.empty_like(local) for _ in range(self.layout.tp_size)]
            dist.all_gather(parts, local, group=self.tp_group)
            local = torch.cat(parts, dim=-1)
        logits = local[:, : self.arch.vocab_size].float().cpu()
        out, start = [], 0
        for r in rows:
            out.append((r, logits[start : start + r.end - r.start]))
            start += r.end - r.start
        return out


def worker_main(init: WorkerInit, conn) -> None:
    """Entry point of a rank process (``multiprocessing`` spawn target)."""
    _watch_parent(init.parent_pid)
    if init.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // init.layout.world_size))
    try:
        worker = RankWorker(init)
        conn.send(Ready(rank=init.rank, pid=os.getpid(), num_params=worker.num_params))
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                exit_rank(1)  # the engine is gone
            if isinstance(message, StepRequest):
                result = worker.step(message)
                if result is not None:
                    conn.send(result)
            elif isinstance(message, ReadKV):
                slots = torch.tensor(message.slots, dtype=torch.long, device=worker.device)
                kv = WireTensor.of(read_slots(worker.kv_caches, slots))
                conn.send(KVShard(request_id=message.request_id, rank=init.rank, kv=kv))
            elif isinstance(message, WriteKV):
                slots = torch.tensor(message.slots, dtype=torch.long, device=worker.device)
                write_slots(worker.kv_caches, slots, message.kv.tensor().to(worker.device))
            elif isinstance(message, Shutdown):
                # NOTE: leave the group together (barrier) before destroying it; exit_rank
                # skips interpreter finalization, where gloo may abort.
                dist.barrier()
                dist.destroy_process_group()
                conn.close()
                exit_rank(0)
            else:
                raise TypeError(f"unexpected message {type(message).__name__}")
    except Exception:  # noqa: BLE001 -- any failure is reported to the engine, then the rank exits
        try:
            conn.send(WorkerFailed(rank=init.rank, error=traceback.format_exc()))
        except (OSError, EOFError):
            pass
        exit_rank(1)


def connect(argv: list[str]):
    """The engine's connection: ``FD`` (a socket pair's end, from ``LocalLauncher``) or
    ``--connect HOST:PORT`` (a remote launcher's listener; the key in EMBER_WORKER_AUTHKEY)."""
    from multiprocessing.connection import Client, Connection

    if argv[0] != "--connect":
        return Connection(int(argv[0]))
    host, _, port = argv[1].rpartition(":")
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ["EMBER_WORKER_AUTHKEY"]))
    conn.send(os.getpid())  # NOTE: which rank this connection is, to the launcher that started it
    return conn


if __name__ == "__main__":
    import sys

    _conn = connect(sys.argv[1:])
    worker_main(_conn.recv(), _conn)
