"""Starts the real `lhama serve` (built by the test command) on a free port
with a freshly synthesized tiny model."""

import json
import os
import subprocess
import tempfile
import threading
import urllib.request

import pytest

LHAMA = os.environ.get("LHAMA_BIN", os.path.join(os.path.dirname(__file__), "../../target/release/lhama"))


class Server:
    def __init__(self, *extra, env=None):
        self.dir = tempfile.TemporaryDirectory()
        subprocess.run([LHAMA, "synth", "--preset", "tiny", "--seed", "0", "--out", self.dir.name],
                       check=True, capture_output=True)
        self.proc = subprocess.Popen(
            [LHAMA, "serve", "--model", self.dir.name, "--host", "127.0.0.1", "--port", "0",
             "--served-model-name", "tiny", "--log-format", "json", *extra],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "RUST_LOG": "info", **(env or {})},
        )
        # Wait on the server's own log lines: the address first, then either
        # "lhama serving" (loaded) or "model failed to load".
        address, state = None, None
        for line in self.proc.stderr:
            try:
                fields = json.loads(line)
            except ValueError:
                continue
            address = address or fields.get("address")
            if fields.get("message") in ("lhama serving", "model failed to load"):
                state = fields["message"]
                break
        assert address and state, "the server stopped before it was ready"
        assert state == "lhama serving", state
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self.base = f"http://{address}"
        with urllib.request.urlopen(self.base + "/health") as r:
            assert r.status == 200
            # A forced backend (LHAMA_BACKEND=cuda on a GPU machine) must be the one serving.
            want = os.environ.get("LHAMA_BACKEND")
            if want:
                assert json.load(r)["backend"] == want

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.dir.cleanup()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def keyed_server():
    # Engine steps slowed to 5 ms, so that a running request keeps the only
    # running place long enough for the queue test.
    s = Server("--api-key", "secret", "--max-queue-requests", "1", "--max-num-seqs", "1", "--max-body-bytes", "100000",
               env={"LHAMA_TEST_STEP_DELAY_MS": "5"})
    yield s
    s.stop()


@pytest.fixture
def slow_server():
    # Engine steps slowed to 20 ms: a running stream keeps the server
    # draining for a while after SIGTERM.
    s = Server(env={"LHAMA_TEST_STEP_DELAY_MS": "20"})
    yield s
    s.stop()
