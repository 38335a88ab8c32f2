#!/usr/bin/env bash
# Runs every test: formatting, lints, the Rust unit and integration tests
# (kernels compiled with NVRTC for sm_80 and sm_90a; GPU tests reported as
# ignored without a GPU), and the official OpenAI Python SDK against the real
# server. A local virtual environment (.venv) provides the SDK, pytest and
# NVRTC from PyPI. One build profile (release) for everything.
set -euo pipefail
cd "$(dirname "$0")/.."

# Test tools from PyPI, pinned; reinstalled only when the pins change.
req=tests/python/requirements.txt
if [ ! -x .venv/bin/python ] || ! cmp -s "$req" .venv/.requirements 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" .venv/.requirements
fi
cu13=$(.venv/bin/python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
export LD_LIBRARY_PATH="$cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LHAMA_CUDA_INCLUDE="$cu13/include"

# The browser test's tools: Debian's chromium and the pinned npm packages
# (tests/browser). A missing one makes the test fail, never pass silently.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  else
    echo "warning: /usr/bin/chromium is missing (apt-get install chromium); the browser test will fail" >&2
  fi
fi
# The container tests' tools: Debian's docker.io (the daemon; the tests start
# it when none runs), debootstrap (the base image, since no registry is
# reachable) and docker-compose (docker/compose.yaml). Missing ones make that test fail, never pass silently.
missing=""
command -v dockerd >/dev/null || missing="$missing docker.io"
command -v debootstrap >/dev/null || missing="$missing debootstrap"
command -v docker-compose >/dev/null || missing="$missing docker-compose"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null
  else
    echo "warning:$missing missing (apt-get install$missing); the container test will fail" >&2
  fi
fi
if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.lhama-lock 2>/dev/null; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.lhama-lock)
fi

cargo fmt --all -- --check
cargo clippy --release --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked --workspace --all-targets 2>&1 | tee "$log"

# Python SDK tests against target/release/lhama (built by the step above).
LHAMA_BIN="$PWD/target/release/lhama" .venv/bin/python -m pytest -q -p no:cacheprovider tests/python 2>&1 | tee -a "$log"

# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) g += $i } }
     /^[0-9]+ passed/ { p += $1; for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) f += $i }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, g }' "$log"
