#!/usr/bin/env bash
# Runs every test: formatting, lints, the Rust unit and integration tests, and
# the official OpenAI Python SDK against the real server (in a local virtual
# environment this script creates). One build profile (release) for
# everything, so nothing is built twice.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --release --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked --workspace --all-targets 2>&1 | tee "$log"

# Python SDK tests against target/release/lhama (built by the step above).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip freeze 2>/dev/null | grep -qxF -f tests/python/requirements.txt; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi
LHAMA_BIN="$PWD/target/release/lhama" .venv/bin/python -m pytest -q -p no:cacheprovider tests/python 2>&1 | tee -a "$log"

# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     /^[0-9]+ passed/ { p += $1; for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) f += $i }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
