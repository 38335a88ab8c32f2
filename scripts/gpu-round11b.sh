#!/usr/bin/env bash
# Round 11, call 2: the wgmma GEMM with x through the cp.async ring (f32,
# converted in shared memory), and the fragment GEMM from 2 rows by default
# (LHAMA_FRAG_MIN_ROWS=9: the GEMVs up to 8 rows, as before). The kernel
# tests, graph-timed products, decode and prefill with and without each,
# alternated; then every GPU test with wgmma from 128 rows.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round11b.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
timeout 150 .carry/gpu --ignored --nocapture --test-threads 1 awq_ silu >"$logs/awq.log" 2>&1
say "awq tests rc $?: $(grep 'test result' "$logs/awq.log")"
grep -E "panicked" -A4 "$logs/awq.log" | head
grep "wgmma" "$logs/awq.log" | head -12
pack
gemm_env base 32,64,128,256,512,2048,4096
gemm_env wgmma 32,64,128,256,512,2048,4096 LHAMA_GEMM_WGMMA_MIN_ROWS=1
gemm_env small 1,2,4,8,16,32,64
pack
for r in 1 2; do
  bench_env "pf256-base-$r" -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  bench_env "pf256-wg-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=128 -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  bench_env "pf-base-$r" -- --prompt-len 512 --decode-steps 4 --batch 1
  bench_env "pf-wg-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=128 -- --prompt-len 512 --decode-steps 4 --batch 1
  bench_env "pf1536-base-$r" -- --prompt-len 1536 --decode-steps 4 --batch 1
  bench_env "pf1536-wg-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=128 -- --prompt-len 1536 --decode-steps 4 --batch 1
  bench_env "dec-base-$r" -- --prompt-len 128 --decode-steps 32 --batch 64,128,256
  bench_env "dec-wg128-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=128 -- --prompt-len 128 --decode-steps 32 --batch 64,128,256
  bench_env "dec-wg64-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=64 -- --prompt-len 128 --decode-steps 32 --batch 64,128,256
  bench_env "small-new-$r" -- --prompt-len 128 --decode-steps 32 --batch 1,2,4,8,16
  bench_env "small-old-$r" LHAMA_FRAG_MIN_ROWS=9 -- --prompt-len 128 --decode-steps 32 --batch 1,2,4,8,16
  pack
done
export LHAMA_GEMM_WGMMA_MIN_ROWS=128
check_fidelity
pack
