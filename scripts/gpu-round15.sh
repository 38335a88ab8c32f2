#!/usr/bin/env bash
# Round 15, call 1 (an experiment that did not land: its code is not in the
# repository, docs/BENCHMARKS.md round 15): the norm fold (a 1-token step's residual add and RMSNorm
# inside the qkv and gate_up GEMVs, LHAMA_NORM_FOLD_ROWS=1) against the same
# binary without it (=0): fidelity and every GPU test, decode at 1, 2 and 8
# rows (128-token prompts) and at 1 row after 512 and 1,536 tokens,
# alternated twice; the batch-1 step by kernel family with the fold
# (LHAMA_PROFILE_SKIP); the graph-timed products after the wgmma refactor
# (e3d6eb0) for comparison with round 14.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round15.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
check_fidelity
for r in 1 2; do
  bench_env "dec-off-$r" LHAMA_NORM_FOLD_ROWS=0 -- --prompt-len 128 --decode-steps 64 --batch 1,2,8
  bench_env "dec-on-$r" -- --prompt-len 128 --decode-steps 64 --batch 1,2,8
  bench_env "p512-off-$r" LHAMA_NORM_FOLD_ROWS=0 -- --prompt-len 512 --decode-steps 64 --batch 1
  bench_env "p512-on-$r" -- --prompt-len 512 --decode-steps 64 --batch 1
done
bench_env "p1536-off" LHAMA_NORM_FOLD_ROWS=0 -- --prompt-len 1536 --decode-steps 32 --batch 1
bench_env "p1536-on" -- --prompt-len 1536 --decode-steps 32 --batch 1
pack
for f in none awq_gemv_norm awq_gemv_cluster awq_gemv_partial awq_gemv_silu paged_attention_decode add_rmsnorm lm_head sample; do
  bench_env "skip-$f" LHAMA_PROFILE_SKIP=$f -- --prompt-len 128 --decode-steps 64 --batch 1
done
bench_env "skip-off-add_rmsnorm" LHAMA_NORM_FOLD_ROWS=0 LHAMA_PROFILE_SKIP=add_rmsnorm -- --prompt-len 128 --decode-steps 64 --batch 1
gemm_env new 1,16,64,128,512,2048,4096
echo "gemm: $(gemm_summary "$logs/gemm-new.log")"
bench_env "dec-all" -- --prompt-len 128 --decode-steps 32 --batch 16,64,256 --prefill-seqs 256 --prefill-tokens 8192
pack
