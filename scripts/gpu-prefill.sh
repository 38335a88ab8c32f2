#!/usr/bin/env bash
# The tensor-core prefill attention (kernels/attention_mma.cu) on the device:
# every GPU test (.carry/gpu), verify on ttl-460m against a transformers
# golden made here, prefill with it and without (LHAMA_PREFILL_MMA=0), and
# the server over HTTP. .carry/: lhama, gpu. Logs in $OUT/logs.tgz.
set -u
source "$(dirname "$0")/gpu-lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
(python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >"$logs/golden.log" 2>&1) &
golden=$!
timeout 120 .carry/gpu --ignored --nocapture --test-threads 1 rope_kv_write_and_paged_attention_match_cpu >"$logs/gpu-attn.log" 2>&1
say "attention test rc $?: $(grep 'test result' "$logs/gpu-attn.log")"
grep -E "tiled attention|panicked" "$logs/gpu-attn.log" | awk '{print $2, $3, $4, $5, $NF}' | sort | uniq -c | sort -k6 -g | tail -8
grep -A4 panicked "$logs/gpu-attn.log" | head -8
for v in "mma:" "off:LHAMA_PREFILL_MMA=0"; do
  label=${v%%:*}
  for p in 64 16; do
    env ${v#*:} timeout 60 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch 1 \
      --prefill-seqs 256 --prefill-tokens $((p * 128)) >"$logs/prefill-$label-$p.log" 2>&1
    say "prefill $label, $p a pass: $(grep 'prompts of' "$logs/prefill-$label-$p.log")"
  done
  for len in 512 1536; do
    env ${v#*:} timeout 60 $B bench --backend cuda --model /tmp/ttl --prompt-len $len --decode-steps 4 --batch 1 \
      >"$logs/prefill$len-$label.log" 2>&1
    say "prefill $label, one $len: $(grep '^prefill' "$logs/prefill$len-$label.log")"
  done
done
timeout 60 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 64 \
  --prefill-tokens 8192 --profile >"$logs/prefill-profile.log" 2>&1
grep -A10 "profile, prefill" "$logs/prefill-profile.log"
pack
wait $golden
say "golden: $(tail -1 "$logs/golden.log")"
LHAMA_TTL_MODEL=/tmp/ttl LHAMA_TTL_GOLDEN=/tmp/ttl.json timeout 200 .carry/gpu --ignored --nocapture --test-threads 1 >"$logs/gpu.log" 2>&1
say "gpu tests rc $?: $(grep 'test result' "$logs/gpu.log")"
grep -E "gpu vs transformers|panicked" "$logs/gpu.log"
timeout 100 $B verify --backend cuda --model /tmp/ttl --golden /tmp/ttl.json --precision fast >"$logs/verify.log" 2>&1
say "verify ttl fast rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify.log" | tr -s ' ' | tr '\n' ' ')"
pack
http_load $B new
pack
