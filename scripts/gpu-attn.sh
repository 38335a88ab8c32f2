#!/usr/bin/env bash
# A/B on the device: .carry/lhama (new) against .carry/lhama-base, with the
# GPU tests (.carry/gpu, all): decode attention held to 4 blocks an SM on
# the f16 cache. Also the fragment
# GEMM's 64-row tiles at every M (LHAMA_GEMM_FRAG_TALL_ROWS) and the server
# over HTTP. Logs in $OUT/logs.tgz.
set -u
source "$(dirname "$0")/gpu-lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >"$logs/golden.log" 2>&1
say "golden: $(tail -1 "$logs/golden.log")"
LHAMA_TTL_MODEL=/tmp/ttl LHAMA_TTL_GOLDEN=/tmp/ttl.json timeout 200 .carry/gpu --ignored --nocapture --test-threads 1 >"$logs/gpu.log" 2>&1
say "gpu tests rc $?: $(grep 'test result' "$logs/gpu.log")"
grep -E "gpu vs transformers" "$logs/gpu.log"
grep -E "panicked" -A3 "$logs/gpu.log" | head
for r in 1 2; do
  for b in new:$B base:.carry/lhama-base; do
    label=${b%%:*}
    timeout 100 ${b#*:} bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 64 \
      --batch 1,8,32,64,128,256 >"$logs/bench-$label-$r.log" 2>&1
    say "decode $label $r: $(grep -E '^ +[0-9]+ +[0-9.]+ +[0-9.]+$' "$logs/bench-$label-$r.log" | awk '{printf "%s:%s ", $1, $3}')"
  done
done
for b in new:$B base:.carry/lhama-base; do
  label=${b%%:*}
  timeout 100 ${b#*:} bench --backend cuda --model /tmp/ttl --prompt-len 1536 --decode-steps 32 --batch 64,256 \
    >"$logs/bench1536-$label.log" 2>&1
  say "decode 1536 $label: $(grep -E '^ +[0-9]+ +[0-9.]+ +[0-9.]+$' "$logs/bench1536-$label.log" | awk '{printf "%s:%s ", $1, $3}')"
done
pack
LHAMA_CUDA_GRAPHS=0 timeout 100 ncu --clock-control none --section SpeedOfLight --section Occupancy -k regex:paged_attention_decode \
  --launch-skip 30 --launch-count 1 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 2 --batch 256 \
  >"$logs/ncu-attn-256.log" 2>&1
grep -E "paged_att|Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy" "$logs/ncu-attn-256.log"
for tr in 512 1000000; do
  LHAMA_GEMM_FRAG_TALL_ROWS=$tr timeout 100 $B bench --backend cuda --model /tmp/ttl --gemm 512,2048,4096 >"$logs/gemm-tall$tr.log" 2>&1
  LHAMA_GEMM_FRAG_TALL_ROWS=$tr timeout 100 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch 1 \
    --prefill-seqs 256 --prefill-tokens 8192 >"$logs/prefill-tall$tr.log" 2>&1
  say "tall rows $tr: $(grep 'prompts of' "$logs/prefill-tall$tr.log")"
done
paste <(awk '{print $1, $2, $4}' "$logs/gemm-tall512.log") <(awk '{print $4, $5}' "$logs/gemm-tall1000000.log") | grep -v INFO
pack
timeout 100 $B verify --backend cuda --model /tmp/ttl --golden /tmp/ttl.json --precision fast >"$logs/verify.log" 2>&1
say "verify ttl fast rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify.log" | tr -s ' ' | tr '\n' ' ')"
http_load $B new
pack
