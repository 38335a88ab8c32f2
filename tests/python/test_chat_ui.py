"""lhama's built-in chat page in a real browser (Debian's chromium through
playwright-core, tests/browser/chat_ui.mjs), on a phone-sized screen: the page
loads with its Content-Security-Policy, streams an answer with TTFT and tok/s,
and its stop button cancels the request on the server (/metrics shows no
running sequence); with --api-key the page asks for the key first. Missing
tools make the test fail, never pass."""

import json
import os
import shutil
import subprocess

from conftest import Server

BROWSER_DIR = os.path.join(os.path.dirname(__file__), "..", "browser")


def drive(server, key, shot="-"):
    assert shutil.which("node"), "node is not installed"
    assert os.path.exists("/usr/bin/chromium"), "Debian's chromium is not installed (scripts/test.sh installs it)"
    assert os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")), \
        "tests/browser/node_modules is missing: run `npm ci` there (scripts/test.sh does)"
    out = subprocess.run(["node", "chat_ui.mjs", server.base, key, shot], cwd=BROWSER_DIR,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return report["results"], report["console"]


def check(results, console):
    assert "failure" not in results, (results, console)
    assert results["contentType"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in results["csp"]
    assert results["models"] == ["tiny"]
    assert results["answer"], results
    assert "TTFT" in results["stats"] and "tok/s" in results["stats"], results
    assert results["runningBeforeStop"] == 1, results
    assert results["runningAfterStop"] == 0
    assert "parado" in results["statsAfterStop"], results
    assert results["turns"] == 2 + 2 * results["longAttempts"], results
    assert results["fitsTheScreen"], "the page is wider than a phone's screen"
    assert not [c for c in console if c.startswith(("error", "pageerror"))], console


def test_the_chat_page_streams_and_stops():
    # A pause per engine step keeps the long answer streaming while stop is pressed.
    server = Server(env={"LHAMA_TEST_STEP_DELAY_MS": "20"})
    try:
        results, console = drive(server, "-", os.environ.get("LHAMA_CHAT_SCREENSHOT", "-"))
    finally:
        server.stop()
    check(results, console)
    assert results["systemBox"] is False, "this model's template has no system role"
    assert results["keyBox"] is False, "no key is needed"


def test_with_an_api_key_the_page_asks_for_it():
    server = Server("--api-key", "secret", "--system-prompt", "merge", env={"LHAMA_TEST_STEP_DELAY_MS": "20"})
    try:
        results, console = drive(server, "secret")
    finally:
        server.stop()
    assert results.get("askedForKey"), results
    # 401s while the key was missing are expected in the console; nothing else.
    console = [c for c in console if "401" not in c]
    check(results, console)
    assert results["systemBox"] is True, "merged system messages get a box"
    assert results["keyBox"] is True
