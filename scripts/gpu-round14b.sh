#!/usr/bin/env bash
# Round 14, call 3: the wgmma GEMM's wide tile (128 rows x 256 columns; this
# call ran its first switch, LHAMA_GEMM_WIDE_MIN_ROWS, default 1024, 0 never,
# since replaced by LHAMA_GEMM_WIDE_MIN_BLOCKS from its figures) and the 128-row tile's
# leaner loaders (.carry/lhama) against the committed GEMM (.carry/base, run
# with LHAMA_GEMM_F16X_MIN_ROWS=0): the GPU tests, the graph-timed products at
# 64-4096 rows (base, wide never, wide from 1 row), prefill and decode.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round14b.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
.carry/lhama synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
gpu_tests
grep -E "wide tile" "$logs/gpu.log" | head -3
M=64,128,256,512,1024,2048,4096
for r in 1 2; do
  B=.carry/base gemm_env "base-$r" $M LHAMA_GEMM_F16X_MIN_ROWS=0
  B=.carry/lhama gemm_env "narrow-$r" $M LHAMA_GEMM_WIDE_MIN_ROWS=0
  B=.carry/lhama gemm_env "wide-$r" $M LHAMA_GEMM_WIDE_MIN_ROWS=1
done
for f in base-1 narrow-1 wide-1 base-2 narrow-2 wide-2; do echo "$f: $(gemm_summary "$logs/gemm-$f.log")"; done
pack
for r in 1 2; do
  B=.carry/base bench_env "p1536-base-$r" LHAMA_GEMM_F16X_MIN_ROWS=0 -- --prompt-len 1536 --decode-steps 4 --batch 1
  B=.carry/lhama bench_env "p1536-new-$r" -- --prompt-len 1536 --decode-steps 4 --batch 1
  B=.carry/lhama bench_env "p1536-narrow-$r" LHAMA_GEMM_WIDE_MIN_ROWS=0 -- --prompt-len 1536 --decode-steps 4 --batch 1
  B=.carry/base bench_env "pre-base-$r" LHAMA_GEMM_F16X_MIN_ROWS=0 -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  B=.carry/lhama bench_env "pre-new-$r" -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  B=.carry/lhama bench_env "pre-narrow-$r" LHAMA_GEMM_WIDE_MIN_ROWS=0 -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  B=.carry/base bench_env "dec-base-$r" LHAMA_GEMM_F16X_MIN_ROWS=0 -- --prompt-len 128 --decode-steps 32 --batch 1,8,32,64,128,256
  B=.carry/lhama bench_env "dec-new-$r" -- --prompt-len 128 --decode-steps 32 --batch 1,8,32,64,128,256
done
pack
