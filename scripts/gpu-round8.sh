#!/usr/bin/env bash
# Round 8: decode attention with the newest position's k/v put into the
# registers of the lane group that meets it (put_newest), so the score and
# value loops read every position alike (no per-position selects or
# shared-memory reads). Fidelity as always (check_fidelity), then the engine
# benchmark of this binary against the baseline (.carry/base/lhama)
# alternated ROUNDS times at 128-, 512- and 1,536-token prompts.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round8.sh 2", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
BASE=.carry/base/lhama
ROUNDS=${1:-2}
check_fidelity
bench() { # label, prompt length, batches
  local label=$1 bin=$B
  [ "$label" = base ] && bin=$BASE
  timeout 120 $bin bench --backend cuda --model /tmp/ttl --prompt-len "$2" --decode-steps 32 \
    --batch "$3" >"$logs/bench-$label-$2-$round.log" 2>&1
  say "bench $label prompt $2 round $round rc $?: $(rows "$logs/bench-$label-$2-$round.log")"
}
for round in $(seq "$ROUNDS"); do
  for v in new base; do
    bench $v 128 1,8,64,256
    bench $v 512 64,256
    bench $v 1536 256
  done
  pack
done
pack
