#!/usr/bin/env bash
# Round 10d: the cluster reductions with every rank's load in flight before
# any is added: the GPU test of the products, the graph-timed products with
# and without clusters (and the cluster at split targets of 132 / 528
# blocks), decode at 1-128 rows.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round10d.sh", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
gpu_tests awq_matmul
declare -A ENVS=(
  [base]="LHAMA_CLUSTER_SPLITS=0 LHAMA_CLUSTER_GEMV_ROWS=0" [all]="LHAMA_CLUSTER_SPLITS=1 LHAMA_CLUSTER_GEMV_ROWS=2"
  [all132]="LHAMA_CLUSTER_SPLITS=1 LHAMA_CLUSTER_GEMV_ROWS=2 LHAMA_MMA_SPLIT_BLOCKS=132"
  [all528]="LHAMA_CLUSTER_SPLITS=1 LHAMA_CLUSTER_GEMV_ROWS=2 LHAMA_MMA_SPLIT_BLOCKS=528"
  [base132]="LHAMA_CLUSTER_SPLITS=0 LHAMA_CLUSTER_GEMV_ROWS=0 LHAMA_MMA_SPLIT_BLOCKS=132"
  [g1]="LHAMA_CLUSTER_SPLITS=0 LHAMA_CLUSTER_GEMV_ROWS=1" [f1]="LHAMA_CLUSTER_SPLITS=1 LHAMA_CLUSTER_GEMV_ROWS=0"
)
run_v() { # label, args...
  local v=$1
  shift
  env ${ENVS[$v]} timeout 120 $B bench --backend cuda --model /tmp/ttl "$@"
}
for v in base all all132 all528 base132; do
  run_v $v --gemm 1,2,4,8,16,32,64,128,256 >"$logs/gemm-$v.log" 2>&1
  say "gemm $v rc $?"
done
pack
for round in 1 2; do
  for v in base g1 f1; do
    run_v $v --prompt-len 128 --decode-steps 32 --batch 1,2,16,64,128 >"$logs/bench-$v-$round.log" 2>&1
    say "bench $v round $round: $(rows "$logs/bench-$v-$round.log")"
  done
done
pack
