"""The CPU runtime image, built and run for real: a Docker daemon from Debian's
docker.io (started here when none runs: dockerd --iptables=false
--bridge=none, containers on the host network), a base image from debootstrap
+ docker import (no registry is reachable; the tarball is cached under
target/docker so a re-run skips debootstrap), and the lhama binary built on
the host (docker/Dockerfile's `prebuilt` target). The container serves
/health and a chat from a mounted model as a non-root user, reports healthy
through its HEALTHCHECK (`lhama health`), and `docker stop` lets a running
stream finish and exits 0. If the daemon cannot start, the test fails."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.path.join(ROOT, "target", "docker")
BASE = "lhama-debian-bookworm:minbase"
IMAGE = "lhama:ci"
LHAMA = os.environ.get("LHAMA_BIN", os.path.join(ROOT, "target", "release", "lhama"))


def sh(*args, check=True, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def ensure_daemon():
    assert shutil.which("docker"), "no docker client: install Debian's docker.io (scripts/test.sh does)"
    if sh("docker", "info", check=False).returncode == 0:
        return
    assert shutil.which("dockerd"), "no dockerd: install Debian's docker.io (scripts/test.sh does)"
    log = open(os.path.join(tempfile.gettempdir(), "lhama-dockerd.log"), "w")
    subprocess.Popen(["dockerd", "--iptables=false", "--bridge=none"], stdout=log, stderr=log,
                     start_new_session=True)
    for _ in range(120):
        if sh("docker", "info", check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"dockerd did not start; see {log.name}")


def ensure_base():
    if sh("docker", "image", "inspect", BASE, check=False).returncode == 0:
        return
    os.makedirs(CACHE, exist_ok=True)
    tarball = os.path.join(CACHE, "bookworm-minbase.tar")
    if not os.path.exists(tarball):
        assert shutil.which("debootstrap"), "no debootstrap: install Debian's package (scripts/test.sh does)"
        rootfs = os.path.join(CACHE, "rootfs")
        shutil.rmtree(rootfs, ignore_errors=True)
        sh("debootstrap", "--variant=minbase", "--include=ca-certificates", "bookworm", rootfs,
           "http://deb.debian.org/debian", timeout=900)
        sh("tar", "-C", rootfs, "-cf", tarball + ".part", ".")
        os.rename(tarball + ".part", tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
    with open(tarball, "rb") as f:
        sh("docker", "import", "-", BASE, stdin=f)


def build_image():
    context = os.path.join(ROOT, "docker", "context")
    os.makedirs(context, exist_ok=True)
    shutil.copy(LHAMA, os.path.join(context, "lhama"))
    sh("docker", "build", "--network", "host", "-f", os.path.join(ROOT, "docker", "Dockerfile"),
       "--target", "prebuilt", "--build-arg", f"BASE={BASE}", "-t", IMAGE, context,
       env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=600)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def post(url, body, stream=False):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read().decode()


def running(base):
    """Sequences the server is running now (its /metrics)."""
    _, text = get(base + "/metrics")
    for line in text.splitlines():
        if line.startswith("lhama_running_sequences"):
            return float(line.split()[-1])
    return 0.0


def inspect(name, fmt):
    return sh("docker", "inspect", "--format", fmt, name).stdout.strip()


def test_the_cpu_image_serves_as_non_root_and_drains_on_stop():
    ensure_daemon()
    ensure_base()
    build_image()
    model = tempfile.mkdtemp()
    sh(LHAMA, "synth", "--preset", "tiny", "--out", model)
    os.chmod(model, 0o755)
    for f in os.listdir(model):
        os.chmod(os.path.join(model, f), 0o644)
    port = free_port()
    name = f"lhama-ci-{os.getpid()}"
    base = f"http://127.0.0.1:{port}"
    sh("docker", "run", "-d", "--name", name, "--network", "host", "-v", f"{model}:/models:ro",
       "-e", "LHAMA_MODEL=/models", "-e", f"LHAMA_PORT={port}", "-e", "LHAMA_SERVED_MODEL_NAME=tiny",
       "-e", "LHAMA_TEST_STEP_DELAY_MS=40", IMAGE)
    try:
        deadline = time.time() + 60
        while get(base + "/health")[0] != 200:
            assert time.time() < deadline, sh("docker", "logs", name).stderr
            time.sleep(0.2)
        status, body = post(base + "/v1/chat/completions",
                            {"model": "tiny", "messages": [{"role": "user", "content": "Oi"}], "max_tokens": 5})
        assert status == 200 and json.loads(body)["choices"][0]["message"]["content"], body
        assert get(base + "/")[0] == 200, "the chat page"
        # Non-root, by the image's configuration and by the running process.
        assert inspect(name, "{{.Config.User}}") == "65532:65532"
        assert sh("docker", "exec", name, "id", "-u").stdout.strip() == "65532"
        # The HEALTHCHECK (lhama health, no shell tools) turns healthy.
        deadline = time.time() + 45
        while inspect(name, "{{.State.Health.Status}}") != "healthy":
            assert time.time() < deadline, inspect(name, "{{json .State.Health}}")
            time.sleep(0.5)
        # docker stop while a stream runs: the stream finishes, the process exits 0.
        stream = {}

        def run_stream():
            stream["status"], stream["body"] = post(
                base + "/v1/completions",
                {"model": "tiny", "prompt": "Era uma vez", "max_tokens": 40, "ignore_eos": True, "stream": True})

        t = threading.Thread(target=run_stream)
        t.start()
        deadline = time.time() + 20
        while running(base) < 1:
            assert time.time() < deadline and t.is_alive(), "the stream never ran"
            time.sleep(0.02)
        sh("docker", "stop", "-t", "20", name)
        t.join(30)
        assert stream.get("status") == 200 and stream["body"].rstrip().endswith("data: [DONE]"), stream
        assert '"finish_reason":"length"' in stream["body"], stream["body"][-300:]
        assert inspect(name, "{{.State.ExitCode}}") == "0", sh("docker", "logs", name).stderr[-2000:]
    finally:
        sh("docker", "rm", "-f", name, check=False)
        shutil.rmtree(model, ignore_errors=True)
