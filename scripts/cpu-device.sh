#!/usr/bin/env bash
# The CPU backend on the device machine's CPU: the ttl-460m golden made by
# transformers there, `lhama verify` of the CPU fast path against it (AMX
# where the CPU has it, and switched off), and `lhama bench` of the new
# binary alternated with a baseline (.carry/base/lhama), all threads and 2,
# prompts of 128 and 1,024 tokens.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/cpu-device.sh", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
say "cpu: $(lscpu | grep 'Model name' | tr -s ' '), $(nproc) threads; amx: $(grep -o -w -E 'amx_int8|avx512_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')"
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
$B synth --preset tiny --seed 0 --out /tmp/tiny >/dev/null
timeout 300 python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >"$logs/goldens.log" 2>&1
say "goldens rc $?: $(tail -1 "$logs/goldens.log")"
for amx in 1 0; do
  for m in ttl:/tmp/ttl.json tiny:tests/goldens/tiny.json; do
    IFS=: read -r name golden <<<"$m"
    LHAMA_CPU_AMX=$amx timeout 240 $B verify --backend cpu --model /tmp/$name --golden "$golden" \
      >"$logs/verify-$name-amx$amx.log" 2>&1
    say "verify cpu $name amx=$amx rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify-$name-amx$amx.log" | tr -s ' ' | tr '\n' ' ')"
  done
done
for threads in $(nproc) 2; do
  for round in 1 2; do
    for bin in base:.carry/base/lhama new:$B; do
      IFS=: read -r label b <<<"$bin"
      timeout 120 $b bench --backend cpu --threads "$threads" --model /tmp/ttl --prompt-len 128 --decode-steps 16 --batch 1,8 \
        >"$logs/bench-$label-t$threads-$round.log" 2>&1
      say "bench $label threads $threads round $round rc $?: $(grep prefill "$logs/bench-$label-t$threads-$round.log" | tr -s ' ') $(rows "$logs/bench-$label-t$threads-$round.log")"
      timeout 120 $b bench --backend cpu --threads "$threads" --model /tmp/ttl --prompt-len 1024 --decode-steps 2 --batch 1 \
        >"$logs/bench1024-$label-t$threads-$round.log" 2>&1
      say "bench1024 $label threads $threads round $round rc $?: $(grep prefill "$logs/bench1024-$label-t$threads-$round.log" | tr -s ' ')"
    done
  done
done
pack
