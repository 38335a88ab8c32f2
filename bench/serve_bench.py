#!/usr/bin/env python3
"""End-to-end load on a running OpenAI-compatible server: CONCURRENCY clients
each send streamed /v1/completions requests back to back until REQUESTS are
done, and the figures a serving benchmark reports come out: output tok/s,
request/s, time to first token, inter-token latency and end-to-end latency
(p50 / p90 / p99). Standard library only, so it runs wherever the server does.

Usage: serve_bench.py [--url http://localhost:8000] [--model ttl]
                      [--concurrency 16] [--requests 128] [--prompt-words 100]
                      [--max-tokens 128] [--temperature 0]
                      [--extra-json '{"guided_regex": "[a-z ]+"}']
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

WORDS = ("a capital do Brasil é Brasília e o maior estado é o Amazonas onde corre o rio "
         "que leva o mesmo nome").split()


def prompt(words, i):
    return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words))


def one_request(url, body):
    """Sends one streamed request; returns (ttft, chunk times, completion tokens, end)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    times, tokens = [], None
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if event.get("error"):
            raise RuntimeError(f"error event: {event['error']}")
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        if event.get("choices") and event["choices"][0].get("text"):
            times.append(time.perf_counter())
    end = time.perf_counter()
    conn.close()
    if not times or tokens is None:
        raise RuntimeError("the stream carried no text or no usage")
    return times[0] - start, times, tokens, end - start


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://localhost:8000")
    ap.add_argument("--model", default="ttl")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--extra-json", default="{}", help="fields merged into every request body")
    args = ap.parse_args()

    results, errors = [], []
    lock = threading.Lock()
    next_index = [0]

    def worker():
        while True:
            with lock:
                i = next_index[0]
                if i >= args.requests:
                    return
                next_index[0] += 1
            body = {
                "model": args.model,
                "prompt": prompt(args.prompt_words, i),
                "max_tokens": args.max_tokens,
                "temperature": args.temperature,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
                **json.loads(args.extra_json),
            }
            try:
                r = one_request(args.url, body)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - report and go on
                with lock:
                    errors.append(str(e))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start

    if errors:
        print(f"{len(errors)} requests failed, first: {errors[0]}", file=sys.stderr)
    if not results:
        sys.exit(1)
    tokens = sum(r[2] for r in results)
    ttft = [r[0] * 1e3 for r in results]
    itl = [(b - a) * 1e3 for r in results for a, b in zip(r[1], r[1][1:])]
    e2e = [r[3] * 1e3 for r in results]
    print(f"concurrency {args.concurrency}, {len(results)} requests ({len(errors)} failed), "
          f"prompt ~{args.prompt_words} words, {args.max_tokens} new tokens, temperature {args.temperature}"
          + (f", extra {args.extra_json}" if args.extra_json != "{}" else ""))
    print(f"wall {wall:.2f} s: {tokens / wall:.1f} output tok/s, {len(results) / wall:.2f} requests/s")
    for name, v in (("TTFT", ttft), ("ITL", itl), ("E2E", e2e)):
        if v:
            print(f"{name:5} ms: mean {statistics.mean(v):9.2f}  p50 {pct(v, 50):9.2f}  "
                  f"p90 {pct(v, 90):9.2f}  p99 {pct(v, 99):9.2f}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
