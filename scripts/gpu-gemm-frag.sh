#!/usr/bin/env bash
# The checks the fast path's fragment-order kernels need before they can be
# its default, on the device machine, with .carry/ from scripts/carry-gpu.sh:
#   run(command="bash scripts/gpu-gemm-frag.sh", carry=[".carry"])
# The two switches, set explicitly in every configuration: LHAMA_GEMV_MMA
# (tensor-core GEMV, kernels/gemv_mma.cu) and LHAMA_GEMM_FRAG (GEMM from 9
# rows, kernels/gemm_frag.cu). Configurations: off (the default when this
# ran, round 4's call 1; both are on by default since), gemv, both.
#   1. the AWQ kernel tests (every path, ragged shapes, both tile heights);
#   2. verify on ttl-460m against a transformers golden made here, per
#      configuration;
#   3. the AWQ products against cuBLAS (`--gemm`), off and both, and both
#      with 128-row tiles everywhere (LHAMA_GEMM_FRAG_TALL_ROWS=1);
#   4. prefill of 256 prompts of 128 tokens packed 64 a pass, per
#      configuration, with the kernels of one pass;
#   5. decode at 1-256 rows, configurations alternated twice.
set -u
export LHAMA_CUDA_INCLUDE=${LHAMA_CUDA_INCLUDE:-/usr/local/cuda/include}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-gpu-logs}
mkdir -p "$out"
B=.carry/lhama
t0=$SECONDS
say() { echo "[$((SECONDS - t0)) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
(python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >"$out/golden.log" 2>&1 || echo "golden: FAILED") &
golden=$!
timeout 240 .carry/gpu --ignored --nocapture --test-threads 1 awq_matmul_matches_cpu the_down_gemv_takes_silu_of_gate_up \
  split_products_are_added_up_by_their_consumers >"$out/gpu-awq.log" 2>&1
say "awq kernel tests: rc=$?"
grep -E "frag gemm|gemv mma|test result|FAILED|panicked" "$out/gpu-awq.log" | sort | uniq -c | sort -rn | head -12
grep -E "frag gemm" "$out/gpu-awq.log" | awk '{print $NF}' | sort -g | tail -1 | sed 's/^/largest frag gemm rel err: /'
grep -E "panicked" -A3 "$out/gpu-awq.log" | head -20
configs=("off:LHAMA_GEMV_MMA=0 LHAMA_GEMM_FRAG=0" "gemv:LHAMA_GEMV_MMA=1 LHAMA_GEMM_FRAG=0" "both:LHAMA_GEMV_MMA=1 LHAMA_GEMM_FRAG=1")
for c in "${configs[@]}"; do
  label=${c%%:*}
  env ${c#*:} timeout 120 $B bench --backend cuda --model /tmp/ttl --gemm 1,8,16,64,128,256,512,2048,4096 >"$out/gemm-$label.log" 2>&1
  say "gemm $label rc $?"
done
LHAMA_GEMV_MMA=1 LHAMA_GEMM_FRAG=1 LHAMA_GEMM_FRAG_TALL_ROWS=1 timeout 120 $B bench --backend cuda --model /tmp/ttl \
  --gemm 16,64,128,256,512,2048,4096 >"$out/gemm-both-tall.log" 2>&1
say "gemm both, 128-row tiles, rc $?"
for c in "${configs[@]}"; do
  label=${c%%:*}
  env ${c#*:} timeout 120 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch 1 \
    --prefill-seqs 256 --prefill-tokens 8192 --profile >"$out/prefill-$label.log" 2>&1
  say "prefill $label rc $?: $(grep 'prompts of' "$out/prefill-$label.log")"
done
wait $golden
say "golden: $(tail -1 "$out/golden.log")"
for c in "${configs[@]}"; do
  label=${c%%:*}
  env ${c#*:} timeout 120 $B verify --backend cuda --model /tmp/ttl --golden /tmp/ttl.json --precision fast >"$out/verify-$label.log" 2>&1
  say "verify $label rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$out/verify-$label.log" | tr -s ' ' | tr '\n' ' ')"
done
for r in 1 2; do
  for c in "${configs[@]}"; do
    label=${c%%:*}
    env ${c#*:} timeout 120 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 64 \
      --batch 1,2,4,8,16,32,64,128,256 >"$out/bench-$label-$r.log" 2>&1
    say "decode $label run $r rc $?"
  done
done
python3 bench/decode_table.py "$out"
for f in "$out"/gemm-*.log; do echo "== $f"; grep -vE "^backend|^$" "$f" | tail -40; done
for c in off both; do echo "== prefill profile $c"; grep -A14 "profile, prefill" "$out/prefill-$c.log"; done
