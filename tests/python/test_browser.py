"""lhama from a real browser: headless Chromium (Debian's package, driven by
playwright-core from npm) loads a page from another local origin that uses
the official `openai` npm package against the server: a chat completion, a
streamed one with usage, and a wrong key mapped to AuthenticationError. Without
--cors-origins the same page cannot reach the server at all. scripts/test.sh
installs Chromium and the pinned npm packages; if they are missing this test
fails and says so."""

import json
import os
import shutil
import socket
import subprocess

from conftest import Server

BROWSER_DIR = os.path.join(os.path.dirname(__file__), "..", "browser")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_page(server, page_port, key):
    assert shutil.which("node"), "node is not installed"
    assert os.path.exists("/usr/bin/chromium"), "Debian's chromium is not installed (scripts/test.sh installs it)"
    assert os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")), \
        "tests/browser/node_modules is missing: run `npm ci` there (scripts/test.sh does)"
    out = subprocess.run(["node", "run.mjs", str(page_port), server.base, key], cwd=BROWSER_DIR,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return report["results"], report["console"]


def test_the_openai_js_sdk_works_from_a_page_of_another_origin():
    page_port = free_port()
    server = Server("--api-key", "secret", "--cors-origins", f"http://127.0.0.1:{page_port}")
    try:
        results, console = run_page(server, page_port, "secret")
    finally:
        server.stop()
    assert "failure" not in results, results
    assert results["origin"] != server.base, "the page must be of another origin"
    chat = results["chat"]
    assert chat.get("object") == "chat.completion", (chat, console)
    assert chat["usage"]["completion_tokens"] > 0
    stream = results["stream"]
    assert stream.get("chunks", 0) >= 2 and stream["usage"]["completion_tokens"] > 0, (stream, console)
    auth = results["auth"]
    assert auth == {"error": "AuthenticationError", "isAuthenticationError": True, "status": 401}, auth


def test_without_cors_the_page_cannot_reach_the_server():
    page_port = free_port()
    server = Server("--api-key", "secret")
    try:
        results, _ = run_page(server, page_port, "secret")
    finally:
        server.stop()
    assert results["chat"].get("error") == "APIConnectionError", results
