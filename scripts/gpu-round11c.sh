#!/usr/bin/env bash
# Round 11, call 3: the final binary (wgmma GEMM from 128 rows, x through
# registers; the fragment GEMM from 2 rows): fidelity, the graph-timed
# products against cuBLAS, decode at 1-256 rows and long contexts, prefill,
# HTTP, with the previous defaults (LHAMA_GEMM_WGMMA_MIN_ROWS=0
# LHAMA_FRAG_MIN_ROWS=9) alternated for decode and prefill.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round11c.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
check_fidelity
gemm_env all 1,2,4,8,16,32,64,128,256,512,2048,4096
pack
for r in 1 2; do
  bench_env "decode128-$r" -- --prompt-len 128 --decode-steps 32 --batch 1,2,4,8,16,32,64,128,256
  bench_env "decode128-old-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=0 LHAMA_FRAG_MIN_ROWS=9 -- --prompt-len 128 --decode-steps 32 --batch 1,2,4,8,16,32,64,128,256
  bench_env "prefill256-$r" -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  bench_env "prefill256-old-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=0 -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  bench_env "prefill512-$r" -- --prompt-len 512 --decode-steps 4 --batch 1
  bench_env "prefill512-old-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=0 -- --prompt-len 512 --decode-steps 4 --batch 1
  pack
done
bench_env decode512 -- --prompt-len 512 --decode-steps 32 --batch 64,256
bench_env decode1536 -- --prompt-len 1536 --decode-steps 32 --batch 256
bench_env prefill1536 -- --prompt-len 1536 --decode-steps 4 --batch 1
pack
say "http: $(http_load $B new | tail -3 | tr '\n' ' ')"
pack
