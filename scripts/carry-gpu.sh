#!/usr/bin/env bash
# Builds here what the GPU run needs and copies it into .carry/ (ignored by
# git) under stable names: the lhama binary and the test executables that
# talk to a GPU. With scripts/fetch-gpu-wheels.sh too, then with the device tool:
#   run(command="bash scripts/gpu-tests.sh", carry=[".carry", ".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
rm -rf .carry && mkdir -p .carry
cp target/release/lhama .carry/lhama
cargo test --release --locked --workspace --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, shutil, sys
wanted = {"gpu", "server_openai", "server_lifecycle", "server_bad_input", "server_extras", "server_guided"}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in wanted and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], ".carry/" + m["target"]["name"])
'
strip .carry/* 2>/dev/null || true
ls -la .carry
