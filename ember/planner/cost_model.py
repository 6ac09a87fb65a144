"""Time and memory of a plan, per layer and strategy, from a model and a hardware profile.

Time of one optimizer step (``M`` micro-batches, ``pp`` stages; GPipe and 1F1B alike)::

    c_k = sum over stage k's layers of (micro_s + step_s / M) + transitions + fixed_k
    T   = sum_k c_k + (M - 1) * max_k c_k             # fill/drain bubble + steady state
          + step_sync                                 # gradient norm and loss all-reduces

``micro_s`` is what a layer costs per micro-batch: forward and backward compute (backward
recomputes the forward under checkpointing), TP all-reduces on the critical path (2 forward,
2 backward, 2 more when recomputing; already inside the times of a layer profiled with TP),
and ZeRO all-gathers / reduce-scatters overlapped with the compute they prefetch for.
Compute times scale by ``HardwareProfile.slowdown`` (ranks sharing a machine's cores).
``step_s`` is what it costs once per step: the DDP gradient
all-reduce beyond what overlaps with backward, and the optimizer. Amortizing it over the
micro-batches keeps ``T`` a function of per-stage sums, which the search minimizes exactly.

Memory of one device of stage k (bytes; fp32 weights, gradients and AdamW moments)::

    peak_k = sum over layers of (states + activations * in_flight_k) + fixed_k
             + max(transients)                       # the largest one-layer-at-a-time buffer

``in_flight_k`` = micro-batches whose activations are alive at once: ``M`` for GPipe,
``min(M, pp - k)`` for 1F1B, 1 without pipelining (gradient accumulation); the first stage
of a pipeline holds one more (torch's shape inference, see ``in_flight``).
"""

from __future__ import annotations

from typing import NamedTuple

from ember.planner.profiles import HardwareProfile, ModelProfile
from ember.planner.strategy import LayerStrategy, Plan

BYTES_PARAM = 4  # fp32 weights and gradients; AdamW keeps two fp32 moments
BYTES_OPTIM = 8


class LayerCost(NamedTuple):
    micro_s: float  # per micro-batch
    step_s: float  # per optimizer step
    state_bytes: float  # parameters + gradients + optimizer states, this rank
    activation_bytes: float  # saved for backward, one micro-batch
    transient_bytes: float  # alive only while this layer runs


class StageCost(NamedTuple):
    micro_s: float  # c_k: the stage's time per micro-batch, step costs amortized
    memory_bytes: float  # peak per device
    state_bytes: float
    activation_bytes: float  # all in-flight micro-batches
    transient_bytes: float


class PlanCost(NamedTuple):
    iteration_s: float
    samples_per_s: float
    stages: tuple[StageCost, ...]

    @property
    def peak_memory_bytes(self) -> float:
        return max(stage.memory_bytes for stage in self.stages)


def in_flight(schedule: str, *, stage: int, pp: int, num_micro_batches: int) -> int:
    if pp == 1:
        return 1  # plain gradient accumulation: one micro-batch at a time
    flight = num_micro_batches if schedule == "gpipe" else min(num_micro_batches, pp - stage)
    # NOTE: torch.distributed.pipelining (2.13) infers shapes with a real forward on the first
    # stage and that graph stays alive for the run: one more micro-batch there.
    return flight + (1 if stage == 0 else 0)


def pipeline_time(stage_micro_s: list[float], num_micro_batches: int) -> float:
    return sum(stage_micro_s) + (num_micro_batches - 1) * max(stage_micro_s)


class CostModel:
    """Prices layers, transitions and stages for one (model, hardware) pair."""

    def __init__(self, model: ModelProfile, hardware: HardwareProfile):
        self.model = model
        self.hw = hardware

    # ---- per layer
    def layer_cost(
        self,
        strategy: LayerStrategy,
        *,
        num_devices: int,
        devices_per_stage: int,
        micro_batch_size: int,
        num_micro_batches: int,
    ) -> LayerCost:
        hw, layer = self.hw, self.model.layer
        tp = strategy.tp
        dp = devices_per_stage // tp
        samples = micro_batch_size / dp  # the TP group's share of one micro-batch
        slow = hw.slowdown(num_devices)
        act_bytes = samples * layer.boundary_bytes_per_sample
        if layer.measured_with_tp:
            # NOTE: timed on the TP layer itself, its all-reduces included, with its tp ranks
            # computing at once; rescale to num_devices ranks computing at once.
            slow /= hw.slowdown(tp)
            forward_comm = backward_comm = 0.0
        else:
            tp_all_reduce = hw.collective_s("all_reduce", tp, act_bytes)
            forward_comm = 2 * tp_all_reduce
            backward_comm = (4 if strategy.checkpoint else 2) * tp_all_reduce
        forward = layer.forward_s[tp](samples) * slow
        backward = layer.backward_s[tp](samples) * slow
        if strategy.checkpoint:
            backward += forward
        params = layer.sharded_params(tp)
        param_bytes = BYTES_PARAM * params

        step_s = 0.0
        zero_forward = zero_backward = zero_measured = 0.0
        sharded = dp > 1 and strategy.dp_type != "ddp"
        measured = layer.zero_overhead_s.get(strategy.dp_type, {}).get(dp)
        if sharded and measured is not None:
            # NOTE: profiled on the real FSDP2 layer (tp = 1); TP shrinks the messages, but
            # where this is measured (CPUs) latency and hooks dominate, so it is kept as is.
            zero_measured = measured
        elif sharded:
            gather = hw.collective_s("all_gather", dp, param_bytes)
            scatter = hw.collective_s("reduce_scatter", dp, param_bytes)
            zero_forward = gather
            zero_backward = scatter + (gather if strategy.dp_type == "zero3" else 0.0)
        elif dp > 1 and dp in layer.ddp_overhead_s:
            step_s += layer.ddp_overhead_s[dp]  # measured with the runtime's GradSync
        elif dp > 1:
            sync = hw.collective_s("all_reduce", dp, param_bytes)
            step_s += hw.overlapped_s(backward, sync) - backward
        micro_s = (
            hw.overlapped_s(forward, zero_forward)
            + forward_comm
            + zero_measured
            + hw.overlapped_s(backward, zero_backward)
            + backward_comm
        )
        local_params = params / dp if sharded else params
        step_s += self.model.optimizer_s_per_param * local_params * slow

        full_act = layer.activation_bytes[tp](samples)
        if strategy.dp_type == "ddp" or dp == 1:
            states = (2 * BYTES_PARAM + BYTES_OPTIM) * params
            transient = 0.0
        elif strategy.dp_type == "zero2":
            # NOTE: the unsharded parameters stay from forward to backward (not resharded).
            states = BYTES_PARAM * params + (2 * BYTES_PARAM + BYTES_OPTIM) * params / dp
            transient = BYTES_PARAM * params  # unsharded gradients before reduce-scatter
        else:
            states = (2 * BYTES_PARAM + BYTES_OPTIM) * params / dp
            transient = 2 * BYTES_PARAM * params  # unsharded parameters + gradients
        if strategy.checkpoint:
            activation = act_bytes
            transient += full_act  # the recomputed layer during its backward
        else:
            activation = full_act
        return LayerCost(micro_s, step_s / num_micro_batches, states, activation, transient)

    def transition_s(self, tp_from: int, tp_to: int, *, samples_per_rank: float) -> float:
        """Re-laying out one micro-batch between layers of different TP degree (forward and
        backward together): one all-gather over ``max/min`` ranks of the larger layout."""
        if tp_from == tp_to:
            return 0.0
        big, small = max(tp_from, tp_to), min(tp_from, tp_to)
        nbytes = samples_per_rank * big * self.model.layer.boundary_bytes_per_sample
        return self.hw.collective_s("all_gather", big // small, nbytes)

    # ---- per stage, apart from its decoder layers
    def stage_fixed(
        self,
        *,
        stage: int,
        pp: int,
        num_devices: int,
        micro_batch_size: int,
        num_micro_batches: int,
        schedule: str,
    ) -> StageCost:
        """Embedding (first stage), final norm + head + loss (last stage), pipeline p2p."""
        m, hw = self.model, self.hw
        n = num_devices // pp
        samples = micro_batch_size / n
        slow = hw.slowdown(num_devices)
        flight = in_flight(schedule, stage=stage, pp=pp, num_micro_batches=num_micro_batches)
        micro = step = states = activation = transient = 0.0
        boundary = samples * m.layer.boundary_bytes_per_sample
        if stage == 0:
            # NOTE: the embedding saves only token ids; its output is saved by the first
            # layer and counted there.
            micro += (m.embed_forward_s(samples) + m.embed_backward_s(samples)) * slow
            step += self._replicated_step(m.embed_params, n, slow)
            states += (2 * BYTES_PARAM + BYTES_OPTIM) * m.embed_params
        if stage == pp - 1:
            head = m.head_params + (m.embed_params if m.tied_embeddings and pp > 1 else 0)
            micro += (m.head_forward_s(samples) + m.head_backward_s(samples)) * slow
            step += self._replicated_step(head, n, slow)
            states += (2 * BYTES_PARAM + BYTES_OPTIM) * head
            activation += m.head_activation_bytes(samples) * flight
        if m.tied_embeddings and pp > 1 and stage in (0, pp - 1):
            step += hw.collective_s("all_reduce", 2, BYTES_PARAM * m.embed_params)
        if pp > 1 and hw.pipeline_s_per_micro_batch is not None:
            # NOTE: the profiled schedule slot covers scheduling and p2p latency; add the
            # bytes of activations (forward) and their gradients (backward).
            per_byte = hw.links["p2p"][min(hw.links["p2p"])].seconds_per_byte
            micro += hw.pipeline_s_per_micro_batch
            micro += per_byte * boundary * ((stage < pp - 1) + (stage > 0))
        else:
            if stage < pp - 1:
                micro += hw.collective_s("p2p", 2, boundary)  # activations forward
            if stage > 0:
                micro += hw.collective_s("p2p", 2, boundary)  # their gradients backward
        micro += step / num_micro_batches
        return StageCost(micro, states + activation + transient, states, activation, transient)

    def _replicated_step(self, num_params: int, group: int, slow: float) -> float:
        sync = self.hw.collective_s("all_reduce", group, BYTES_PARAM * num_params)
        return sync + self.model.optimizer_s_per_param * num_params * slow

    # ---- whole plan
    def evaluate(self, plan: Plan) -> PlanCost:
        """Predicted step time and per-stage memory of ``plan`` (the oracle the search
        minimizes; tests compare the search against brute force over this function)."""
        kw = dict(
            num_devices=plan.num_devices,
            micro_batch_size=plan.micro_batch_size,
            num_micro_batches=plan.num_micro_batches,
        )
        stages = []
        for k in range(plan.pp):
            fixed = self.stage_fixed(stage=k, pp=plan.pp, schedule=plan.schedule, **kw)
            flight = in_flight(plan.schedule, stage=k, pp=plan.pp, num_micro_batches=plan.num_micro_batches)
            micro, states, activation = fixed.micro_s, fixed.state_bytes, fixed.activation_bytes
            transient = fixed.transient_bytes
            prev_tp = 1
            for i in plan.stage_range(k):
                s = plan.layers[i]
                cost = self.layer_cost(s, devices_per_stage=plan.devices_per_stage, **kw)
                micro += (
                    cost.micro_s
                    + cost.step_s
                    + self.transition_s(prev_tp, s.tp, samples_per_rank=plan.samples_per_rank)
                )
                states += cost.state_bytes
                activation += cost.activation_bytes * flight
                transient = max(transient, cost.transient_bytes)
                prev_tp = s.tp
            micro += self.transition_s(prev_tp, 1, samples_per_rank=plan.samples_per_rank)
            stages.append(StageCost(micro, states + activation + transient, states, activation, transient))
        time_s = pipeline_time([s.micro_s for s in stages], plan.num_micro_batches)
        time_s += self.step_sync_s(plan.num_devices)
        return PlanCost(time_s, plan.global_batch_size / time_s, tuple(stages))

    def step_sync_s(self, num_devices: int) -> float:
        """Once per step over all ranks: the global gradient norm and the step's loss (two
        scalar all-reduces)."""
        return 2 * self.hw.collective_s("all_reduce", num_devices, 8)
