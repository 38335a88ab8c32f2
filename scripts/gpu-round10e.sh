#!/usr/bin/env bash
# Round 10e: the fragment GEMM's cluster reduction over the rows below M only;
# the GEMV's cluster for all products or those of at most 4,096 outputs
# (LHAMA_CLUSTER_GEMV_MAX_N): the GPU test of the products, the graph-timed
# products, decode at 1-256 rows alternated twice, one 128-token prefill.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round10e.sh", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
gpu_tests awq_matmul
declare -A ENVS=(
  [base]="LHAMA_CLUSTER_SPLITS=0 LHAMA_CLUSTER_GEMV_ROWS=0" [all]="LHAMA_CLUSTER_SPLITS=1 LHAMA_CLUSTER_GEMV_ROWS=2"
  [all132]="LHAMA_CLUSTER_SPLITS=1 LHAMA_CLUSTER_GEMV_ROWS=2 LHAMA_MMA_SPLIT_BLOCKS=132"
  [g1]="LHAMA_CLUSTER_SPLITS=0 LHAMA_CLUSTER_GEMV_ROWS=1"
  [g1n]="LHAMA_CLUSTER_SPLITS=0 LHAMA_CLUSTER_GEMV_ROWS=1 LHAMA_CLUSTER_GEMV_MAX_N=4096"
  [g2n]="LHAMA_CLUSTER_SPLITS=0 LHAMA_CLUSTER_GEMV_ROWS=2 LHAMA_CLUSTER_GEMV_MAX_N=4096"
  [f1]="LHAMA_CLUSTER_SPLITS=1 LHAMA_CLUSTER_GEMV_ROWS=0"
)
run_v() { # label, args...
  local v=$1
  shift
  env ${ENVS[$v]} timeout 120 $B bench --backend cuda --model /tmp/ttl "$@"
}
for v in base all all132; do
  run_v $v --gemm 1,2,4,8,16,32,64,128,256 >"$logs/gemm-$v.log" 2>&1
  say "gemm $v rc $?"
done
pack
for round in 1 2; do
  for v in base g1 g1n g2n f1; do
    run_v $v --prompt-len 128 --decode-steps 32 --batch 1,2,16,64,128,256 >"$logs/bench-$v-$round.log" 2>&1
    say "bench $v round $round: $(rows "$logs/bench-$v-$round.log")"
  done
  for v in base g1n; do
    run_v $v --prompt-len 128 --decode-steps 4 --batch 1 >"$logs/prefill128-$v-$round.log" 2>&1
    say "prefill128 $v round $round: $(grep -i 'prefill' "$logs/prefill128-$v-$round.log" | tr '\n' ' ')"
  done
done
pack
