#!/usr/bin/env bash
# Round 15, call 2: the sampler's argmax split over up to 16 blocks a row
# (LHAMA_SAMPLE_SLICES, default 16; at most twice the SMs in all) against
# one block a row (=1): every GPU test but the ttl-460m golden one, verify
# on the committed tiny golden; the sampler's kernel time (Nsight Compute)
# at 1 and 256 rows; decode greedy at 1-256 rows and with draws at 1 and
# 64, alternated twice.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round15b.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
quick_fidelity
for sl in 1 16; do
  for b in 1 256; do
    env X=1 LHAMA_SAMPLE_SLICES=$sl timeout 120 "$NCU" --clock-control none --kernel-name sample_rows_f32 --launch-skip 4 --launch-count 3 \
      --metrics gpu__time_duration.sum $B bench --backend cuda --model /tmp/ttl --prompt-len 16 --decode-steps 8 --batch $b \
      >"$logs/ncu-s$sl-b$b.log" 2>&1
    say "ncu slices $sl batch $b rc $?: $(grep -E 'gpu__time_duration' "$logs/ncu-s$sl-b$b.log" | awk '{print $NF $(NF-1)}' | tr '\n' ' ')"
  done
done
pack
for r in 1 2; do
  bench_env "dec-s1-$r" LHAMA_SAMPLE_SLICES=1 -- --prompt-len 128 --decode-steps 64 --batch 1,2,8,64,256
  bench_env "dec-s16-$r" -- --prompt-len 128 --decode-steps 64 --batch 1,2,8,64,256
  bench_env "draw-s1-$r" LHAMA_SAMPLE_SLICES=1 -- --prompt-len 128 --decode-steps 64 --batch 1,64 --sampling draw
  bench_env "draw-s16-$r" -- --prompt-len 128 --decode-steps 64 --batch 1,64 --sampling draw
done
bench_env "dec-s32" LHAMA_SAMPLE_SLICES=32 -- --prompt-len 128 --decode-steps 64 --batch 1,8
pack
