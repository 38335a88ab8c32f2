#!/usr/bin/env bash
# Round 13, call 2: the fused decode attention adds up the qkv product's K
# splits itself (no reduce launch; LHAMA_QKV_DEFER_MIN_ROWS, default 1):
# fidelity and the GPU tests, then decode at 1-256 rows against the reduce
# launch (=0) and against the cluster GEMV at 1 row (=2), alternated, two
# rounds; long contexts.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round13b.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
check_fidelity
for r in 1 2; do
  bench_env "decode-new-$r" -- --prompt-len 128 --decode-steps 32 --batch 1,2,4,8,16,32,64,128,256
  bench_env "decode-off-$r" LHAMA_QKV_DEFER_MIN_ROWS=0 -- --prompt-len 128 --decode-steps 32 --batch 1,2,4,8,16,32,64,128,256
  bench_env "decode-from2-$r" LHAMA_QKV_DEFER_MIN_ROWS=2 -- --prompt-len 128 --decode-steps 32 --batch 1,2
  pack
done
for v in new off; do
  e=X=1
  [ $v = off ] && e=LHAMA_QKV_DEFER_MIN_ROWS=0
  bench_env "decode512-$v" $e -- --prompt-len 512 --decode-steps 32 --batch 1,64,256
  bench_env "decode1536-$v" $e -- --prompt-len 1536 --decode-steps 32 --batch 1,256
  pack
done
