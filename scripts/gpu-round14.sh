#!/usr/bin/env bash
# Round 14, calls 1-2: the wgmma GEMM (.carry/lhama: call 1 one tensor-core group
# a k16 step, dequantizing step t + 1 while step t runs; call 2 also x rows
# past M clamped, weight copies with sources worked out once) against the
# committed loop (.carry/base, built with the f16-x experiment, run with it
# off: LHAMA_GEMM_F16X_MIN_ROWS=0): the AWQ kernel test, the graph-timed
# products at 16-4096 rows, decode and prefill, alternated twice.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round14.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
.carry/lhama synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
gpu_tests
for r in 1 2; do
  B=.carry/base gemm_env "base-$r" 16,32,64,128,256,512,2048,4096 LHAMA_GEMM_F16X_MIN_ROWS=0
  B=.carry/lhama gemm_env "new-$r" 16,32,64,128,256,512,2048,4096
done
for f in base-1 new-1 base-2 new-2; do echo "$f: $(gemm_summary "$logs/gemm-$f.log")"; done
pack
for r in 1 2; do
  B=.carry/base bench_env "dec-base-$r" LHAMA_GEMM_F16X_MIN_ROWS=0 -- --prompt-len 128 --decode-steps 32 --batch 32,64,128,256
  B=.carry/lhama bench_env "dec-new-$r" -- --prompt-len 128 --decode-steps 32 --batch 32,64,128,256
  B=.carry/base bench_env "pre-base-$r" LHAMA_GEMM_F16X_MIN_ROWS=0 -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  B=.carry/lhama bench_env "pre-new-$r" -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  B=.carry/base bench_env "p1536-base-$r" LHAMA_GEMM_F16X_MIN_ROWS=0 -- --prompt-len 1536 --decode-steps 4 --batch 1
  B=.carry/lhama bench_env "p1536-new-$r" -- --prompt-len 1536 --decode-steps 4 --batch 1
done
pack
