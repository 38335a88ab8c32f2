#!/usr/bin/env bash
# Round 7, call 3: decode attention's ring forms (cp.async into a ring of
# 2-4 chunk buffers in shared memory, LHAMA_ATTN_STAGES) against the
# register form (0), alternated ROUNDS times at 128- and 512-token prompts
# (and 1,536 at 64 / 256 rows); the GPU tests (the ring forms bit-equal to
# the register form) and verify first.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round7b.sh 2", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
ROUNDS=${1:-2}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
$B synth --preset tiny --seed 0 --out /tmp/tiny >/dev/null
python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >"$logs/golden.log" 2>&1
say "ttl golden rc $?: $(tail -1 "$logs/golden.log")"
LHAMA_TTL_MODEL=/tmp/ttl LHAMA_TTL_GOLDEN=/tmp/ttl.json gpu_tests
for st in 0 3; do
  for g in ttl:/tmp/ttl.json tiny:tests/goldens/tiny.json; do
    timeout 120 env LHAMA_ATTN_STAGES=$st $B verify --backend cuda --precision fast --model /tmp/${g%%:*} --golden ${g#*:} \
      >"$logs/verify-${g%%:*}-$st.log" 2>&1
    say "verify ${g%%:*} stages $st rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify-${g%%:*}-$st.log" | tr -s ' ' | tr '\n' ' ')"
  done
done
pack
for round in $(seq "$ROUNDS"); do
  for st in 0 2 3 4; do
    for len in 128 512; do
      timeout 90 env LHAMA_ATTN_STAGES=$st $B bench --backend cuda --model /tmp/ttl --prompt-len $len --decode-steps 32 \
        --batch 1,8,16,32,64,128,256 >"$logs/bench-$st-$len-$round.log" 2>&1
      say "stages $st prompt $len round $round rc $?: $(rows "$logs/bench-$st-$len-$round.log")"
    done
  done
done
pack
for st in 0 2 3 4; do
  timeout 120 env LHAMA_ATTN_STAGES=$st $B bench --backend cuda --model /tmp/ttl --prompt-len 1536 --decode-steps 32 \
    --batch 64,256 >"$logs/bench-$st-1536.log" 2>&1
  say "stages $st prompt 1536 rc $?: $(rows "$logs/bench-$st-1536.log")"
done
pack
