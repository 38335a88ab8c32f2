#!/usr/bin/env bash
# A change against its baseline, on the same card in one run: `lhama bench`
# of a baseline binary and of the new one (exact and fast precision) at
# several batch sizes, with 128-token and 1536-token prompts.
# Usage: bench/gpu_compare.sh MODEL_DIR BASE_BIN NEW_BIN
set -euo pipefail
model=$1
base=$2
new=$3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for shape in "128 1,8,64,256" "1536 64,256"; do
  set -- $shape
  for run in "base:$base:" "exact:$new:--precision exact" "fast:$new:--precision fast"; do
    IFS=: read -r label bin flags <<<"$run"
    echo "== $label, prompt $1"
    # shellcheck disable=SC2086
    "$bin" bench --backend cuda --model "$model" --prompt-len "$1" --decode-steps 64 --batch "$2" $flags 2>&1 | grep -v INFO
  done
done
