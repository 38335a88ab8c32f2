"""Starts the real `lhama serve` (built by the test command) on a free port
with a freshly synthesized tiny model."""

import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

LHAMA = os.environ.get("LHAMA_BIN", os.path.join(os.path.dirname(__file__), "../../target/release/lhama"))


class Server:
    def __init__(self, *extra, broken=False):
        self.dir = tempfile.TemporaryDirectory()
        subprocess.run([LHAMA, "synth", "--preset", "tiny", "--seed", "0", "--out", self.dir.name],
                       check=True, capture_output=True)
        if broken:
            with open(os.path.join(self.dir.name, "config.json"), "w") as f:
                f.write("{ not json")
        self.proc = subprocess.Popen(
            [LHAMA, "serve", "--model", self.dir.name, "--host", "127.0.0.1", "--port", "0",
             "--served-model-name", "tiny", "--log-format", "json", *extra],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "RUST_LOG": "info"},
        )
        address = None
        for line in self.proc.stderr:
            try:
                address = json.loads(line).get("fields", {}).get("address")
            except ValueError:
                continue
            if address:
                break
        assert address, "the server did not print its address"
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self.base = f"http://{address}"
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(self.base + "/health") as r:
                    if r.status == 200:
                        # A forced backend (LHAMA_BACKEND=cuda on a GPU machine) must be the one serving.
                        want = os.environ.get("LHAMA_BACKEND")
                        if want:
                            assert json.load(r)["backend"] == want
                        break
            except urllib.error.HTTPError as e:
                if broken and b"failed to load" in e.read():
                    break
            except OSError:
                pass
            assert time.time() < deadline, "server never became healthy"
            time.sleep(0.05)

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
    s = Server("--api-key", "secret", "--max-queue-requests", "1", "--max-body-bytes", "100000")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def broken_server():
    s = Server(broken=True)
    yield s
    s.stop()
