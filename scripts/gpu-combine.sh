#!/usr/bin/env bash
# The combine kernel over whole tokens (grid T, 256 threads over H * D) on
# the device, against .carry/lhama-base (466fa10, grid (T, H) of D threads):
# the GPU tests but the ttl-460m one (it needs a golden made here; the
# combine's arithmetic per output is unchanged), packed prefill and HTTP.
set -u
export LHAMA_CUDA_INCLUDE=${LHAMA_CUDA_INCLUDE:-/usr/local/cuda/include}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-gpu-logs}
logs=$out/logs
mkdir -p "$logs"
B=.carry/lhama
t0=$SECONDS
say() { echo "[$((SECONDS - t0)) s] $*"; }
pack() { tar czf "$out/logs.tgz" -C "$out" logs; }
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
timeout 150 .carry/gpu --ignored --nocapture --test-threads 1 --skip ttl460m >"$logs/gpu.log" 2>&1
say "gpu tests rc $?: $(grep 'test result' "$logs/gpu.log")"
grep -E "panicked" -A4 "$logs/gpu.log" | head
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
for b in new:$B base:.carry/lhama-base; do
  ${b#*:} serve --backend cuda --model /tmp/ttl --served-model-name ttl --port 8000 --max-num-seqs 256 >"$logs/serve-${b%%:*}.log" 2>&1 &
  srv=$!
  for _ in $(seq 120); do curl -sf localhost:8000/health >/dev/null 2>&1 && break; sleep 0.5; done
  for i in 1 2 3 4; do
    python3 bench/serve_bench.py --concurrency 64 --requests 256 --prompt-words 100 --max-tokens 128 >"$logs/http-${b%%:*}-$i.log" 2>&1 &
  done
  wait $(jobs -p | grep -v "^$srv$") 2>/dev/null
  kill $srv; wait $srv 2>/dev/null
  python3 - "$logs" "${b%%:*}" <<'PY'
import glob, re, sys
logs, label = sys.argv[1:]
tok, walls, itl, fails = 0.0, [], [], 0
for p in sorted(glob.glob(f"{logs}/http-{label}-*.log")):
    t = open(p).read()
    m = re.search(r"wall ([\d.]+) s: ([\d.]+) output tok/s", t)
    if not m:
        print(label, p, "no result:", t[-300:]); continue
    walls.append(float(m.group(1))); tok += float(m.group(1)) * float(m.group(2))
    itl.append(re.search(r"ITL +ms:.*?p50 +([\d.]+)", t).group(1))
    fails += int(re.search(r"\((\d+) failed\)", t).group(1))
if walls:
    print(f"http {label}: {tok / max(walls):.0f} output tok/s ({tok:.0f} tokens in {max(walls):.2f} s), ITL p50 {itl} ms, {fails} failed")
PY
done
pack
