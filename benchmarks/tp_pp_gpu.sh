#!/usr/bin/env bash
# Tensor/pipeline parallel inference on a GPU machine: parity against one process, then
# `ember bench offline` with the distributed system side by side. NCCL, one CUDA device
# per rank (rank r uses cuda:r), so it needs TP*PP GPUs.
#
#   TP=2 PP=1 bash benchmarks/tp_pp_gpu.sh        # results under bench_out/
set -euo pipefail
cd "$(dirname "$0")/.."
TP=${TP:-2}
PP=${PP:-1}
OUT=${OUT:-bench_out}
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
if (( NGPU < TP * PP )); then
  echo "needs $((TP * PP)) GPUs for TP=$TP PP=$PP, found $NGPU (NCCL: one device per rank)" >&2
  exit 2
fi
mkdir -p "$OUT"
python benchmarks/tp_pp_parity.py --device cuda --tp "$TP" --pp "$PP" 2>&1 | tee "$OUT/tp${TP}_pp${PP}_parity.txt"
ember bench offline --dtype bfloat16 --device cuda --no-compile \
  --tensor-parallel-size "$TP" --pipeline-parallel-size "$PP" \
  --out "$OUT/offline_tp${TP}_pp${PP}.json" 2>&1 | tee "$OUT/offline_tp${TP}_pp${PP}.txt"
