#!/usr/bin/env bash
# Exact search of a store sharded over N GPUs on M nodes (one process per GPU).
# Submit from the repository's root (sbatch runs a copy of this file, so the example is
# found through the submit directory):
#   sbatch --nodes=2 --gpus-per-node=4 examples/slurm_sharded_search.sh emb/train emb/val --k 20
#SBATCH --job-name=faissclass-sharded
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=02:00:00
#SBATCH --output=faissclass-sharded-%j.log
set -euo pipefail
GPUS_PER_NODE="${SLURM_GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
srun torchrun \
    --nnodes="$SLURM_JOB_NUM_NODES" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:29501" \
    "${SLURM_SUBMIT_DIR:-.}/examples/sharded_search.py" "$@"
