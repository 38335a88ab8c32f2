#!/usr/bin/env bash
# Round 13, call 4: the wgmma GEMM's 128-row tile on x rounded to f16 by a
# launch of its own (LHAMA_GEMM_F16X_MIN_ROWS, default 256; 0 never, 1 from
# the 128-row tile's first rows): the AWQ kernel test, the graph-timed
# products against cuBLAS with and without it, prefill and decode at many
# rows alternated; then more K splits for the small tiles
# (LHAMA_MMA_SPLIT_BLOCKS, default twice the SMs) in the products at 8-64 rows.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round13c.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
gpu_tests awq_matmul_matches_cpu
grep -E "f16-x|f16 x m=" "$logs/gpu.log" | head -5
for r in 1 2; do
  gemm_env "f16x-$r" 128,256,512,2048,4096 LHAMA_GEMM_F16X_MIN_ROWS=1
  gemm_env "f32x-$r" 128,256,512,2048,4096 LHAMA_GEMM_F16X_MIN_ROWS=0
done
grep -E "^ *(M|m|[0-9])" "$logs/gemm-f16x-1.log" | head -3
pack
for r in 1 2; do
  for v in 1 0; do
    bench_env "prefill-$v-$r" LHAMA_GEMM_F16X_MIN_ROWS=$v -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
    bench_env "prefill512-$v-$r" LHAMA_GEMM_F16X_MIN_ROWS=$v -- --prompt-len 512 --decode-steps 4 --batch 1
    bench_env "decode-$v-$r" LHAMA_GEMM_F16X_MIN_ROWS=$v -- --prompt-len 128 --decode-steps 32 --batch 128,256
  done
  pack
done
bench_env prefill1536-1 LHAMA_GEMM_F16X_MIN_ROWS=1 -- --prompt-len 1536 --decode-steps 4 --batch 1
bench_env prefill1536-0 LHAMA_GEMM_F16X_MIN_ROWS=0 -- --prompt-len 1536 --decode-steps 4 --batch 1
for sb in 264 528 1056; do
  gemm_env "split$sb" 8,16,32,64 LHAMA_MMA_SPLIT_BLOCKS=$sb
done
pack
