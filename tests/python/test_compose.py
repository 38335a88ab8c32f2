"""docker/compose.yaml for real: two lhama replicas (the CPU image that
test_docker.py builds) behind nginx from Debian's packages (docker/
nginx.Dockerfile on the same imported base), brought up with Debian's
docker-compose. Under a steady load one replica is stopped: new requests go
to the other, streams in flight on the stopped one finish (it drains), and
no request fails. Missing tools make the test fail, never pass."""

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request

import test_docker as d

COMPOSE = os.path.join(d.ROOT, "docker", "compose.yaml")
NGINX = "lhama-nginx:ci"


def compose(*args, env, check=True, timeout=300):
    assert shutil.which("docker-compose"), "docker-compose is not installed (scripts/test.sh installs it)"
    return d.sh("docker-compose", "-f", COMPOSE, "-p", "lhamaci", *args, env=env, check=check,
                timeout=timeout)


def request(i, results, lock):
    body = {"model": "ttl", "prompt": f"Pedido {i}", "max_tokens": 12, "ignore_eos": True,
            "stream": i % 2 == 0}
    req = urllib.request.Request("http://127.0.0.1:8000/v1/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read().decode()
            ok = r.status == 200 and (not body["stream"] or text.rstrip().endswith("data: [DONE]"))
            upstream = r.headers.get("x-upstream", "")
    except Exception as e:  # noqa: BLE001 - every failure is counted
        ok, upstream, text = False, "", str(e)
    with lock:
        results.append((time.time(), ok, upstream, text[-200:]))


def test_a_stopped_replica_loses_no_request():
    d.ensure_daemon()
    d.ensure_base()
    d.build_image()
    d.sh("docker", "build", "--network", "host", "-f", os.path.join(d.ROOT, "docker", "nginx.Dockerfile"),
         "--build-arg", f"BASE={d.BASE}", "-t", NGINX, os.path.join(d.ROOT, "docker"),
         env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=600)
    model = tempfile.mkdtemp()
    d.sh(d.LHAMA, "synth", "--preset", "tiny", "--out", model)
    os.chmod(model, 0o755)
    for f in os.listdir(model):
        os.chmod(os.path.join(model, f), 0o644)
    env = {**os.environ, "LHAMA_IMAGE": d.IMAGE, "NGINX_IMAGE": NGINX, "MODEL_DIR": model,
           "LHAMA_TEST_STEP_DELAY_MS": "10"}
    try:
        compose("up", "-d", "--no-build", env=env)
        deadline = time.time() + 90
        while d.get("http://127.0.0.1:8000/health")[0] != 200:
            assert time.time() < deadline, compose("logs", env=env, check=False).stdout[-3000:]
            time.sleep(0.3)
        results, lock = [], threading.Lock()
        stop_at = {}
        done = threading.Event()

        def client(k):
            i = k
            while not done.is_set():
                request(i, results, lock)
                i += 8

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        def wait_for(what, cond):
            deadline = time.time() + 60
            while not cond():
                assert time.time() < deadline, f"timed out waiting for {what}"
                time.sleep(0.05)

        def upstreams(since):
            with lock:
                return {r[2] for r in results if r[0] > since}

        for t in threads:
            t.start()
        # Load on both replicas, then one stops; the load goes on until 16
        # more requests have finished after the stop.
        wait_for("both replicas to answer", lambda: len(upstreams(0)) >= 2)
        stop_at["start"] = time.time()
        compose("stop", "lhama-a", env=env)
        stop_at["end"] = time.time()
        wait_for("requests after the stop",
                 lambda: len([r for r in results if r[0] > stop_at["end"] + 0.5]) >= 16)
        done.set()
        for t in threads:
            t.join(60)
        failed = [r for r in results if not r[1]]
        assert not failed, failed[:5]
        before = {r[2] for r in results if r[0] < stop_at["start"]}
        after = [r for r in results if r[0] > stop_at["end"] + 0.5]
        assert {"127.0.0.1:8001", "127.0.0.1:8002"} <= before, before
        assert after and all(r[2] == "127.0.0.1:8002" for r in after), {r[2] for r in after}
        a = d.sh("docker", "inspect", "--format", "{{.State.ExitCode}}", "lhamaci_lhama-a_1").stdout.strip()
        assert a == "0", "the stopped replica drained and exited 0"
    finally:
        compose("down", "-t", "5", env=env, check=False)
        shutil.rmtree(model, ignore_errors=True)
