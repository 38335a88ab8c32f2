#!/usr/bin/env bash
# Round 12, call 1: the wgmma GEMM in row tiles of 16, 32, 64 and 128
# (smallest holding M): fidelity and the GPU tests (every tile against the
# CPU reference), the graph-timed products against cuBLAS with wgmma from 128
# rows (the default) and from 2 rows, fast verify with wgmma from 2 rows, and
# decode at 1-256 rows with wgmma from 128 (default), 17 and 2 rows,
# alternated, two rounds.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round12.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
check_fidelity
timeout 120 env LHAMA_GEMM_WGMMA_MIN_ROWS=2 $B verify --backend cuda --precision fast --model /tmp/ttl --golden /tmp/ttl.json >"$logs/verify-ttl-wg2.log" 2>&1
say "verify ttl wgmma from 2 rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify-ttl-wg2.log" | tr -s ' ' | tr '\n' ' ')"
gemm_env base 1,2,4,8,16,32,64,128,256,512,2048,4096
gemm_env wg2 2,4,8,16,32,64,128 LHAMA_GEMM_WGMMA_MIN_ROWS=2
pack
for r in 1 2; do
  bench_env "decode-base-$r" -- --prompt-len 128 --decode-steps 32 --batch 1,2,4,8,16,32,64,128,256
  bench_env "decode-wg17-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=17 -- --prompt-len 128 --decode-steps 32 --batch 16,32,64,128
  bench_env "decode-wg2-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=2 -- --prompt-len 128 --decode-steps 32 --batch 2,4,8,16,32,64
  pack
done
