#!/usr/bin/env bash
# The combine kernel over whole tokens (grid T, 256 threads over H * D) on
# the device, against .carry/lhama-base (466fa10, grid (T, H) of D threads):
# the GPU tests but the ttl-460m one (it needs a golden made here; the
# combine's arithmetic per output is unchanged), packed prefill and HTTP.
set -u
source "$(dirname "$0")/gpu-lib.sh"
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
gpu_tests --skip ttl460m
for r in 1 2; do
  for b in new:$B base:.carry/lhama-base; do
    timeout 60 ${b#*:} bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch 1 \
      --prefill-seqs 256 --prefill-tokens 8192 >"$logs/prefill-${b%%:*}-$r.log" 2>&1
    say "prefill ${b%%:*} $r: $(grep 'prompts of' "$logs/prefill-${b%%:*}-$r.log")"
  done
done
timeout 60 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 64 \
  --prefill-tokens 8192 --profile >"$logs/prefill-profile.log" 2>&1
grep -A10 "profile, prefill" "$logs/prefill-profile.log"
timeout 60 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 64 --batch 1,8,64,256 >"$logs/decode.log" 2>&1
grep -E "^prefill|^ +[0-9]+ +[0-9.]+ +[0-9.]+$" "$logs/decode.log"
pack
http_load $B new
http_load .carry/lhama-base base
pack
