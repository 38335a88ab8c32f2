#!/usr/bin/env python3
"""Time to first token of a chat turn that follows a long history, with and
without the prefix cache. Starts `lhama serve` twice on the given model (once
with --prefix-caching false), and on each: sends the history's last user turn
(streamed), then three follow-up turns that each repeat the whole history plus
the previous answer and a new question, timing each turn's first token.
Standard library only.

Usage: prefix_cache_ttft.py --lhama target/release/lhama --model DIR
                            [--backend cpu] [--history-tokens 1500]
"""

import argparse
import http.client
import json
import os
import subprocess
import time
import urllib.request

TEXT = ("O rio Amazonas atravessa a floresta e recebe muitos afluentes antes de chegar ao mar; "
        "as cidades às suas margens vivem da pesca, do comércio e do transporte pelos barcos. ").split()


def start(lhama, model, backend, extra):
    proc = subprocess.Popen(
        [lhama, "serve", "--model", model, "--backend", backend, "--host", "127.0.0.1", "--port", "0",
         "--served-model-name", "m", "--log-format", "json", *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "info"})
    address = None
    for line in proc.stderr:
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        address = address or fields.get("address")
        if fields.get("message") == "lhama serving":
            break
        if fields.get("message") == "model failed to load":
            raise SystemExit(line)
    return proc, address


def turn(address, messages):
    """Streams one chat turn; returns (seconds to the first content, answer, usage)."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    body = {"model": "m", "messages": messages, "max_tokens": 16, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    first, text, usage = None, "", None
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            usage = event["usage"]
        for c in event.get("choices", []):
            if c["delta"].get("content"):
                first = first or time.perf_counter() - t0
                text += c["delta"]["content"]
    conn.close()
    return first, text, usage


def tokens_per_word(address):
    sample = " ".join(TEXT * 4)
    req = urllib.request.Request(f"http://{address}/tokenize", json.dumps({"prompt": sample}).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["count"] / len(sample.split())


def history(words):
    msgs, i = [], 0
    while i < words:
        n = min(120, words - i)
        msgs.append({"role": "user" if len(msgs) % 2 == 0 else "assistant",
                     "content": " ".join(TEXT[(i + j) % len(TEXT)] for j in range(n))})
        i += n
    if msgs[-1]["role"] == "assistant":
        msgs.append({"role": "user", "content": "E depois?"})
    return msgs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lhama", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--history-tokens", type=int, default=1500)
    args = ap.parse_args()
    base = None
    for label, extra in (("prefix cache on", []), ("prefix cache off", ["--prefix-caching", "false"])):
        proc, address = start(args.lhama, args.model, args.backend, extra)
        try:
            # Sized with the model's own tokenizer (checked against usage below).
            base = base or history(int(args.history_tokens / tokens_per_word(address)))
            msgs = list(base)
            ttft, answer, usage = turn(address, msgs)
            print(f"{label}: first turn  prompt {usage['prompt_tokens']} tokens, "
                  f"cached {usage['prompt_tokens_details']['cached_tokens']}, TTFT {ttft * 1e3:.1f} ms")
            for q in ("Por quê?", "Conte mais.", "E o mar?"):
                msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": q}]
                ttft, answer, usage = turn(address, msgs)
                print(f"{label}: next turn   prompt {usage['prompt_tokens']} tokens, "
                      f"cached {usage['prompt_tokens_details']['cached_tokens']}, TTFT {ttft * 1e3:.1f} ms")
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
