#!/usr/bin/env bash
# lhama's CUDA backend and Hugging Face transformers' generate() on the same
# checkpoint and the same card, in one run. Usage: bench/gpu_bench.sh MODEL_DIR
# (a ttl-460m preset: `lhama synth --preset ttl-460m --out DIR`).
set -euo pipefail
model=$1
lhama=${LHAMA_BIN:-target/release/lhama}
nvidia-smi --query-gpu=name --format=csv,noheader
for sampling in greedy draw; do
  echo "lhama, --sampling $sampling:"
  "$lhama" bench --backend cuda --model "$model" --prompt-len 128 --decode-steps 64 --batch 1,8,64,256 --sampling "$sampling" 2>&1 | grep -v INFO
done
python3 "$(dirname "$0")/hf_generate.py" "$model" --batches 1,8,64,256 --prompt-len 128 --new-tokens 128
