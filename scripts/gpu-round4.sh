#!/usr/bin/env bash
# One device call for the fast path with the fragment-order kernels on by
# default (tensor-core GEMV from 3 rows, gemm_frag.cu from 9): every GPU test,
# verify against transformers goldens made here, engine benchmarks against
# the same binary with both switched off, and the server over HTTP.
#   run(command="bash scripts/gpu-round4.sh", carry=[".carry"])  (.carry: lhama, gpu)
# Everything under $OUT ends up in $OUT/logs.tgz (one file comes back).
set -u
source "$(dirname "$0")/gpu-lib.sh"
OFF="LHAMA_GEMV_MMA=0 LHAMA_GEMM_FRAG=0"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
$B synth --preset tiny --seed 0 --out /tmp/tiny >/dev/null
python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >"$logs/golden.log" 2>&1
say "ttl golden rc $?: $(tail -1 "$logs/golden.log")"
LHAMA_TTL_MODEL=/tmp/ttl LHAMA_TTL_GOLDEN=/tmp/ttl.json timeout 300 .carry/gpu --ignored --nocapture --test-threads 1 >"$logs/gpu.log" 2>&1
say "gpu tests rc $?"
grep -E "test result|panicked|FAILED" "$logs/gpu.log" | head
grep -E "frag gemm|gemv mma" "$logs/gpu.log" | awk '{print $NF}' | sort -g | tail -1 | sed 's/^/largest fragment-kernel rel err: /'
grep -E "gpu vs transformers|max \|gpu - cpu\|" "$logs/gpu.log" | head -20
pack
for v in "fast:" "exact:" "fast-off:$OFF"; do
  label=${v%%:*} p=${label%-off}
  for g in ttl:/tmp/ttl.json tiny:tests/goldens/tiny.json; do
    env ${v#*:} timeout 120 $B verify --backend cuda --precision "$p" --model /tmp/${g%%:*} --golden ${g#*:} >"$logs/verify-$label-${g%%:*}.log" 2>&1
    say "verify ${g%%:*} $label rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify-$label-${g%%:*}.log" | tr -s ' ' | tr '\n' ' ')"
  done
done
pack
for v in "new:" "off:$OFF"; do
  label=${v%%:*}
  env ${v#*:} timeout 120 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch 1 \
    --prefill-seqs 256 --prefill-tokens 8192 --profile >"$logs/prefill-$label.log" 2>&1
  say "prefill $label rc $?: $(grep 'prompts of' "$logs/prefill-$label.log")"
  env ${v#*:} timeout 60 $B bench --backend cuda --model /tmp/ttl --prompt-len 512 --decode-steps 4 --batch 1 \
    >"$logs/prefill512-$label.log" 2>&1
  say "prefill 512 $label: $(grep '^prefill' "$logs/prefill512-$label.log")"
done
pack
for r in 1 2; do
  for v in "new:" "off:$OFF"; do
    label=${v%%:*}
    env ${v#*:} timeout 120 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 64 \
      --batch 1,2,3,4,8,16,32,64,128,256 >"$logs/bench-$label-$r.log" 2>&1
    say "decode $label run $r rc $?"
  done
done
for v in "new:" "off:$OFF"; do
  label=${v%%:*}
  env ${v#*:} timeout 120 $B bench --backend cuda --model /tmp/ttl --prompt-len 1536 --decode-steps 32 \
    --batch 64,256 >"$logs/bench1536-$label.log" 2>&1
  say "decode 1536 $label: $(grep -E '^ +(64|256) ' "$logs/bench1536-$label.log" | tr -s ' ' | tr '\n' ';')"
done
env LHAMA_GEMV_MMA_MIN_ROWS=1 timeout 120 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 64 \
  --batch 1,2,3 >"$logs/bench-gemv-all-rows.log" 2>&1
$B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 16 --batch 1,8,64,256 --profile >"$logs/profile-new.log" 2>&1
pack
python3 bench/decode_table.py "$logs"
# Over HTTP: 4 client processes x 64 streams, 256 requests each, 128+128.
http_load $B new
# shellcheck disable=SC2086
http_load $B off $OFF
pack
for f in "$logs"/prefill-new.log "$logs"/profile-new.log; do echo "== $f"; grep -vE "INFO" "$f" | head -80; done
