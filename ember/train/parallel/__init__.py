"""The Galvatron plan runtime: a plan from ``ember.planner`` applied on ``torch.distributed``
(FSDP2 data parallelism, DTensor tensor parallelism, pipelining), one process per rank.

``mesh`` (process groups and device meshes of a plan), ``layers`` (TP of a decoder layer,
batch re-layout between TP degrees, checkpointing), ``stage`` (one pipeline stage as a
module), ``sync`` (data-parallel gradient sums, global gradient norm), ``memory``
(activation peak through saved-tensor hooks), ``trainer`` (one optimizer step of a plan on
this rank), ``run`` (``ember train --plan`` under torchrun) and ``probe`` (a few synthetic
steps per plan, for tests, ``ember bench plan`` and the cost-model check; ``launch_local``).
``ember.train.parallelize`` builds a rank's model from these. Submodules import torch; this
package imports nothing.
"""
