#!/usr/bin/env bash
# One device call for round 6 (the GEMV norm tail, the register-held
# lm_head, add_rmsnorm a warp a row): every GPU test with the ttl-460m golden
# made here, verify on both presets, then the engine benchmark of this binary
# against the baseline's (.carry/base/lhama) and against itself with each
# change switched off, alternated, and a per-kernel profile at batch 1 and 8.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round6.sh", carry=[".pack"])
# Run on the H200 at e8b9331 (first call) and a6a004b (second
# call); LHAMA_NORM_TAIL and LHAMA_CUDA_FUSED_SILU_MMA were removed after it
# (both measured slower, docs/BENCHMARKS.md "round 6"), so only the
# baseline and LHAMA_LM_HEAD_ROWS comparisons still apply to later builds.
set -u
source "$(dirname "$0")/gpu-lib.sh"
BASE=.carry/base/lhama
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
$B synth --preset tiny --seed 0 --out /tmp/tiny >/dev/null
python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >"$logs/golden.log" 2>&1
say "ttl golden rc $?: $(tail -1 "$logs/golden.log")"
LHAMA_TTL_MODEL=/tmp/ttl LHAMA_TTL_GOLDEN=/tmp/ttl.json gpu_tests
grep -E "^lm_head" "$logs/gpu.log" | head -30
for g in ttl:/tmp/ttl.json tiny:tests/goldens/tiny.json; do
  timeout 120 $B verify --backend cuda --precision fast --model /tmp/${g%%:*} --golden ${g#*:} >"$logs/verify-${g%%:*}.log" 2>&1
  say "verify ${g%%:*} rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify-${g%%:*}.log" | tr -s ' ' | tr '\n' ' ')"
done
pack
bench() { # label, env words...
  local label=$1 bin=$B
  shift
  [ "$label" = base ] && bin=$BASE
  timeout 90 env "$@" $bin bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 32 \
    --batch 1,2,4,8,64,256 >"$logs/bench-$label-$round.log" 2>&1
  say "bench $label $round rc $?: $(rows "$logs/bench-$label-$round.log")"
}
for round in 1 2; do
  bench new
  bench base
  bench no-tail LHAMA_NORM_TAIL=0
  bench f32-tail LHAMA_NORM_TAIL=f32
  bench no-lmh LHAMA_LM_HEAD_ROWS=0
  bench no-silu-mma LHAMA_CUDA_FUSED_SILU_MMA=0
done
pack
for v in "new:$B" "base:$BASE"; do
  timeout 90 ${v#*:} bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 16 --batch 1,8 --profile \
    >"$logs/profile-${v%%:*}.log" 2>&1
  say "profile ${v%%:*} rc $?"
done
pack
