#!/usr/bin/env bash
# Round 11, call 1: the wgmma fragment GEMM (gemm_wgmma.cu). Its kernel test
# first; then graph-timed products with and without it
# (LHAMA_GEMM_WGMMA_MIN_ROWS), the fragment GEMM for 2-8 rows
# (LHAMA_MMA_MIN_ROWS), decode and prefill with each, alternated; then the
# fidelity checks with wgmma from 128 rows.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round11.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
timeout 120 .carry/gpu --ignored --nocapture --test-threads 1 awq_matmul >"$logs/awq.log" 2>&1
say "awq test rc $?: $(grep 'test result' "$logs/awq.log")"
grep -E "panicked" -A4 "$logs/awq.log" | head
grep "wgmma" "$logs/awq.log" | head -12
pack
gemm_env base 128,256,512,2048,4096
gemm_env wgmma 128,256,512,2048,4096 LHAMA_GEMM_WGMMA_MIN_ROWS=1
gemm_env small-frag 1,2,4,8,16 LHAMA_MMA_MIN_ROWS=2
pack
for r in 1 2; do
  bench_env "pf256-base-$r" -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  bench_env "pf256-wg-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=128 -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  bench_env "pf512-base-$r" -- --prompt-len 512 --decode-steps 4 --batch 1
  bench_env "pf512-wg-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=128 -- --prompt-len 512 --decode-steps 4 --batch 1
  bench_env "dec-base-$r" -- --prompt-len 128 --decode-steps 32 --batch 128,256
  bench_env "dec-wg128-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=128 -- --prompt-len 128 --decode-steps 32 --batch 128,256
  bench_env "small-9-$r" -- --prompt-len 128 --decode-steps 32 --batch 2,4,8
  bench_env "small-2-$r" LHAMA_MMA_MIN_ROWS=2 -- --prompt-len 128 --decode-steps 32 --batch 2,4,8
  bench_env "small-5-$r" LHAMA_MMA_MIN_ROWS=5 -- --prompt-len 128 --decode-steps 32 --batch 2,4,8
  pack
done
export LHAMA_GEMM_WGMMA_MIN_ROWS=128
check_fidelity
