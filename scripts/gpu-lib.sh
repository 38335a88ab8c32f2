# Sourced by the device scripts of scripts/: the CUDA paths, the log folder
# ($OUT/logs, packed into $OUT/logs.tgz by `pack`: one file comes back
# whatever the count), the lhama binary carried in .carry/, and helpers.
export LHAMA_CUDA_INCLUDE=${LHAMA_CUDA_INCLUDE:-/usr/local/cuda/include}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-gpu-logs}
logs=$out/logs
mkdir -p "$logs"
B=${B:-.carry/lhama}
t0=$SECONDS
# A line of the run's summary, with the seconds since the start.
say() { echo "[$((SECONDS - t0)) s] $*"; }
pack() { tar czf "$out/logs.tgz" -C "$out" logs; }
# The "batch:tok/s" pairs of a `lhama bench` log.
rows() { grep -E '^ +[0-9]+ +[0-9.]+ +[0-9.]+$' "$1" | awk '{printf "%s:%s ", $1, $3}'; }
# The GPU tests (.carry/gpu, the ignored ones) with these cargo-test
# arguments, into $logs/gpu.log: the result line and any panic.
gpu_tests() {
  timeout 200 .carry/gpu --ignored --nocapture --test-threads 1 "$@" >"$logs/gpu.log" 2>&1
  say "gpu tests rc $?: $(grep 'test result' "$logs/gpu.log")"
  grep -E "panicked" -A4 "$logs/gpu.log" | head
}
# HTTP load: BIN serve (with the VAR=value words given after the label) on
# ttl-460m, 4 serve_bench.py processes x 64 streams x 256 requests of 128
# new tokens, then the aggregate (bench/http_aggregate.py); /metrics is kept
# in $logs/metrics-LABEL.txt.
http_load() {
  local bin=$1 label=$2
  shift 2
  env "$@" "$bin" serve --backend cuda --model /tmp/ttl --served-model-name ttl --port 8000 --max-num-seqs 256 \
    >"$logs/serve-$label.log" 2>&1 &
  local srv=$! clients=() i
  for _ in $(seq 120); do curl -sf localhost:8000/health >/dev/null 2>&1 && break; sleep 0.5; done
  for i in 1 2 3 4; do
    python3 bench/serve_bench.py --concurrency 64 --requests 256 --prompt-words 100 --max-tokens 128 \
      >"$logs/http-$label-$i.log" 2>&1 &
    clients+=($!)
  done
  wait "${clients[@]}"
  curl -s localhost:8000/metrics >"$logs/metrics-$label.txt"
  kill $srv
  wait $srv 2>/dev/null
  python3 bench/http_aggregate.py "$logs" "$label"
}
# The card and both synthetic presets in /tmp.
card_and_models() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
  $B synth --preset tiny --seed 0 --out /tmp/tiny >/dev/null
}
# A short check: card_and_models, every GPU test but the ttl-460m golden one
# (no golden is made), `verify --precision fast` on the committed tiny golden.
quick_fidelity() {
  card_and_models
  gpu_tests --skip ttl460m
  timeout 120 $B verify --backend cuda --precision fast --model /tmp/tiny --golden tests/goldens/tiny.json >"$logs/verify-tiny.log" 2>&1
  say "verify tiny rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify-tiny.log" | tr -s ' ' | tr '\n' ' ')"
}
# The card, both synthetic presets in /tmp, the ttl-460m golden made here,
# every GPU test, and `verify --precision fast` on both presets: the start of
# each round's device script.
check_fidelity() {
  card_and_models
  python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >"$logs/golden.log" 2>&1
  say "ttl golden rc $?: $(tail -1 "$logs/golden.log")"
  LHAMA_TTL_MODEL=/tmp/ttl LHAMA_TTL_GOLDEN=/tmp/ttl.json gpu_tests
  local g
  for g in ttl:/tmp/ttl.json tiny:tests/goldens/tiny.json; do
    timeout 120 $B verify --backend cuda --precision fast --model /tmp/${g%%:*} --golden ${g#*:} >"$logs/verify-${g%%:*}.log" 2>&1
    say "verify ${g%%:*} rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify-${g%%:*}.log" | tr -s ' ' | tr '\n' ' ')"
  done
  pack
}
# `lhama bench` on ttl-460m with the VAR=value words before `--` in its
# environment and the bench arguments after it, into $logs/LABEL.log; says
# its batch:tok/s pairs and prefill lines.
#   bench_env LABEL [VAR=value...] -- ARGS...
bench_env() {
  local l=$1 e=(X=1)
  shift
  while [ "$1" != "--" ]; do e+=("$1"); shift; done
  shift
  env "${e[@]}" timeout 100 $B bench --backend cuda --model /tmp/ttl "$@" >"$logs/$l.log" 2>&1
  say "$l rc $?: $(rows "$logs/$l.log") $(grep -i 'prefill' "$logs/$l.log" | tr '\n' ' ')"
}
# The graph-timed AWQ products against cuBLAS at the rows M_LIST, with the
# VAR=value words in the environment, into $logs/gemm-LABEL.log.
#   gemm_env LABEL M_LIST [VAR=value...]
gemm_env() {
  local l=$1 ms=$2
  shift 2
  env X=1 "$@" timeout 120 $B bench --backend cuda --model /tmp/ttl --gemm "$ms" >"$logs/gemm-$l.log" 2>&1
  say "gemm $l rc $?"
}
# A gemm log's lhama lines, one "shape/rows:µs(TFLOP/s)" word each.
#   gemm_summary $logs/gemm-LABEL.log
gemm_summary() { awk 'NF>=10 && $2~/^[0-9]+$/ {printf "%s/%s:%s(%s) ", substr($1,1,index($1,"[")-1), $2, $4, $5}' "$1"; echo; }
