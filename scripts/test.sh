#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit and integration
# tests. One build profile (release) for everything, so nothing is built twice.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --release --all-targets --locked -- -D warnings
cargo test --release --locked --workspace
