#!/usr/bin/env bash
# A short device call: every GPU test but the ttl-460m one (no golden made),
# verify on the tiny preset, and a decode benchmark at 1, 2 and 8 rows.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-check.sh", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
gpu_tests --skip ttl460m
$B synth --preset tiny --seed 0 --out /tmp/tiny >/dev/null
timeout 60 $B verify --backend cuda --precision fast --model /tmp/tiny --golden tests/goldens/tiny.json >"$logs/verify-tiny.log" 2>&1
say "verify tiny rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify-tiny.log" | tr -s ' ' | tr '\n' ' ')"
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
timeout 60 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 32 --batch 1,2,8 >"$logs/bench.log" 2>&1
say "bench rc $?: $(rows "$logs/bench.log")"
pack
