#!/usr/bin/env bash
# Downloads here (the GPU machine has no network) the wheels the OpenAI Python
# SDK tests need on the GPU machine's Python 3.12, into .whl/ (ignored by git).
# scripts/gpu-tests.sh installs them when the run carries .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  openai==3.57.0 httpx2==2.16.2 httpcore2==2.16.2 truststore distro jiter pydantic pydantic-core \
  annotated-types typing-inspection sniffio
ls .whl
