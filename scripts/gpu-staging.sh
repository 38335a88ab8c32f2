#!/usr/bin/env bash
# Page-locked against pageable staging (LHAMA_PINNED_STAGING), with the
# baseline binary (.carry/base/lhama, e697384) in the same call: engine decode
# at 1, 8, 64 and 256 rows, two alternated rounds, and verify of the pageable
# path.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-staging.sh", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset tiny --seed 0 --out /tmp/tiny >/dev/null
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
LHAMA_PINNED_STAGING=none timeout 60 $B verify --backend cuda --precision fast --model /tmp/tiny \
  --golden tests/goldens/tiny.json >"$logs/verify-none.log" 2>&1
say "verify tiny, pageable staging rc $?: $(grep -E 'verify:' "$logs/verify-none.log")"
for round in 1 2; do
  for v in both none up down base; do
    bin=$B; [ $v = base ] && bin=.carry/base/lhama
    LHAMA_PINNED_STAGING=$v timeout 60 $bin bench --backend cuda --model /tmp/ttl --prompt-len 128 \
      --decode-steps 32 --batch 1,8,64,256 >"$logs/bench-$v-$round.log" 2>&1
    say "bench $v $round rc $?: $(rows "$logs/bench-$v-$round.log")"
  done
done
pack
