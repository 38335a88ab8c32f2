#!/usr/bin/env bash
# Round 12, call 2: the final binary (wgmma GEMM from 2 rows in tiles of 16-128
# rows): fidelity and the GPU tests, the graph-timed products against cuBLAS,
# decode at 1-256 rows against wgmma from 128 rows (round 11's default)
# alternated, two rounds; prefill, long contexts and HTTP.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round12b.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
check_fidelity
gemm_env all 1,2,4,8,16,32,64,128,256,512,2048,4096
pack
for r in 1 2; do
  bench_env "decode128-$r" -- --prompt-len 128 --decode-steps 32 --batch 1,2,4,8,16,32,64,128,256
  bench_env "decode128-old-$r" LHAMA_GEMM_WGMMA_MIN_ROWS=128 -- --prompt-len 128 --decode-steps 32 --batch 1,2,4,8,16,32,64,128,256
  pack
done
bench_env prefill256 -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
bench_env prefill512 -- --prompt-len 512 --decode-steps 4 --batch 1
bench_env decode512 -- --prompt-len 512 --decode-steps 32 --batch 64,256
bench_env decode1536 -- --prompt-len 1536 --decode-steps 32 --batch 256
bench_env prefill1536 -- --prompt-len 1536 --decode-steps 4 --batch 1
pack
say "http: $(http_load $B new | tail -3 | tr '\n' ' ')"
pack
