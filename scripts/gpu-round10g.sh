#!/usr/bin/env bash
# Round 10g: only the row-tile skip kept, in the 64-row tiles (the 128-row
# tiles' code is again that of d9e73e5, same SASS), against .carry/head/lhama
# (d9e73e5): the GPU test of the products, the graph-timed products at 8-128
# rows, decode at 16-128 rows alternated twice.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round10g.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
gpu_tests awq_matmul
for v in new head; do
  bin=$B; [ $v = head ] && bin=.carry/head/lhama
  timeout 120 $bin bench --backend cuda --model /tmp/ttl --gemm 8,16,32,64,128 >"$logs/gemm-$v.log" 2>&1
  say "gemm $v rc $?"
done
for round in 1 2; do
  for v in new head; do
    bin=$B; [ $v = head ] && bin=.carry/head/lhama
    timeout 100 $bin bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 32 --batch 16,32,64,128 \
      >"$logs/bench-$v-$round.log" 2>&1
    say "bench $v round $round: $(rows "$logs/bench-$v-$round.log")"
  done
done
pack
