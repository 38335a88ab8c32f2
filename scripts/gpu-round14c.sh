#!/usr/bin/env bash
# Round 14, call 4: the final binary (.carry/lhama: the wide tile where its
# grid fills 7/10 of the SMs, LHAMA_GEMM_WIDE_MIN_BLOCKS) against the
# committed GEMM (.carry/base with LHAMA_GEMM_F16X_MIN_ROWS=0): fidelity,
# every GPU test, the graph-timed products at 1-4096 rows, prefill, decode at
# 128- and 1,536-token prompts, HTTP.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round14c.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
check_fidelity
gemm_env new 1,2,4,8,16,32,64,128,256,512,1024,1536,2048,4096
B=.carry/base gemm_env base 512,1024,1536,2048,4096 LHAMA_GEMM_F16X_MIN_ROWS=0
for f in new base; do echo "$f: $(gemm_summary "$logs/gemm-$f.log")"; done
pack
for r in 1 2; do
  B=.carry/base bench_env "pre-base-$r" LHAMA_GEMM_F16X_MIN_ROWS=0 -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  bench_env "pre-new-$r" -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
  B=.carry/base bench_env "p512-base-$r" LHAMA_GEMM_F16X_MIN_ROWS=0 -- --prompt-len 512 --decode-steps 4 --batch 1
  bench_env "p512-new-$r" -- --prompt-len 512 --decode-steps 4 --batch 1
  B=.carry/base bench_env "p1536-base-$r" LHAMA_GEMM_F16X_MIN_ROWS=0 -- --prompt-len 1536 --decode-steps 16 --batch 1,256
  bench_env "p1536-new-$r" -- --prompt-len 1536 --decode-steps 16 --batch 1,256
  B=.carry/base bench_env "dec-base-$r" LHAMA_GEMM_F16X_MIN_ROWS=0 -- --prompt-len 128 --decode-steps 32 --batch 1,8,64,128,256
  bench_env "dec-new-$r" -- --prompt-len 128 --decode-steps 32 --batch 1,8,64,128,256
done
pack
http_load .carry/lhama new
pack
