#!/usr/bin/env bash
# Round 14, call 8 (a switch since removed): twice as many K splits for the wgmma GEMM's 16-row tile
# (LHAMA_MMA_SPLIT_BLOCKS_16, default four times the SMs) against the
# general target (twice the SMs, =264 on an H100-SXM's 132): every GPU test
# but the ttl-460m golden one, verify on the committed tiny golden, the
# graph-timed products at 2-32 rows and decode at 2-16 rows, alternated.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round14d.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
quick_fidelity
for r in 1 2; do
  gemm_env "s528-$r" 2,4,8,16,32
  gemm_env "s264-$r" 2,4,8,16,32 LHAMA_MMA_SPLIT_BLOCKS_16=264
done
for f in s528-1 s264-1 s528-2 s264-2; do echo "$f: $(gemm_summary "$logs/gemm-$f.log")"; done
for r in 1 2; do
  bench_env "dec528-$r" -- --prompt-len 128 --decode-steps 32 --batch 2,4,8,16
  bench_env "dec264-$r" LHAMA_MMA_SPLIT_BLOCKS_16=264 -- --prompt-len 128 --decode-steps 32 --batch 2,4,8,16
done
pack
