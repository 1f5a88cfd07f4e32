#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): vLLM vs transformers, an 8B QLoRA DPO step at 2048 tokens,
# bf16 MFU of a ~1B model. Random weights built locally; nothing is downloaded. Sized for 8 minutes on one
# H100/H200 and stopped at 480 s; it has not been timed on a GPU yet.
#   bash benchmarks/gpu_check.sh [OUT_DIR]     (default: $OUT, else benchmarks/results)
# Needs the gpu extra for the vLLM row: pip install -c constraints-gpu.txt -e ".[gpu]"
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results}}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
timeout 480 "${PYTHON:-python3}" benchmarks/gpu_check.py --out "$out/gpu_check.json" --workdir "${TMPDIR:-/tmp}" 2>&1 | tee "$out/gpu_check.log"
