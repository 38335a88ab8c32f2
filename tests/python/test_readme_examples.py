"""The README's curl and OpenAI SDK examples, run as written (pointed at the
test server) by scripts/readme-examples.py."""

import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_readme_examples_answer(server):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "readme-examples.py"), os.path.join(ROOT, "README.md"),
         "--base", server.base, "--model", "tiny"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    assert "curl chat:" in out and '"finish_reason": "length"' in out, out
    assert "curl stream:" in out, out
    assert "python SDK:" in out, out
