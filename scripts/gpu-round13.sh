#!/usr/bin/env bash
# Round 13, call 1: kernels that let their dependents launch before their own
# wait (LHAMA_PDL_EARLY=1) against the default: the GPU tests and fidelity in
# that mode, decode at 1-256 rows and prefill alternated, two rounds, and an
# Nsight Systems timeline of batch-1 decode steps in both modes (per-kernel
# start and end inside the replayed graphs; nsys was not on the device, so no
# timeline came back). Ran once (docs/BENCHMARKS.md round 13); the switch was
# slower at 1-16 rows and has since been removed, so this script no longer
# measures anything different from the default.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round13.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
export LHAMA_PDL_EARLY=1
check_fidelity
unset LHAMA_PDL_EARLY
for r in 1 2; do
  bench_env "decode-early-$r" LHAMA_PDL_EARLY=1 -- --prompt-len 128 --decode-steps 32 --batch 1,2,4,8,16,64,256
  bench_env "decode-base-$r" -- --prompt-len 128 --decode-steps 32 --batch 1,2,4,8,16,64,256
  pack
done
bench_env prefill-early LHAMA_PDL_EARLY=1 -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
bench_env prefill-base -- --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
bench_env prefill512-early LHAMA_PDL_EARLY=1 -- --prompt-len 512 --decode-steps 4 --batch 1
bench_env prefill512-base -- --prompt-len 512 --decode-steps 4 --batch 1
pack
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/nsight-systems*/bin/nsys 2>/dev/null | head -1)
say "nsys: ${NSYS:-none}"
if [ -n "$NSYS" ]; then
  for mode in base early; do
    e=X=1
    [ $mode = early ] && e=LHAMA_PDL_EARLY=1
    env $e timeout 120 "$NSYS" profile --cuda-graph-trace=node -t cuda -o /tmp/b1-$mode --force-overwrite true \
      $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 16 --batch 1 >"$logs/nsys-$mode.log" 2>&1
    say "nsys $mode rc $?"
    timeout 120 "$NSYS" stats -r cuda_gpu_trace -f csv -o "$logs/b1-$mode" /tmp/b1-$mode.nsys-rep >>"$logs/nsys-$mode.log" 2>&1
    say "nsys stats $mode rc $?: $(ls $logs | grep b1-$mode)"
    pack
  done
fi
