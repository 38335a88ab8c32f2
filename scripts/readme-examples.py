#!/usr/bin/env python3
"""Runs the README's client examples (the sh block with the curl commands and
the Python block using the openai SDK) against a running server, and prints
what they answered. Fails when a command fails or an answer is not a
completion. The examples address localhost:8000 and the model "ttl"; --base
and --model point them elsewhere (the Python SDK test does, on a free port).

Usage: python3 scripts/readme-examples.py [README.md] [--base http://HOST:PORT] [--model NAME]
"""

import argparse
import json
import re
import subprocess


def blocks(text, lang):
    return re.findall(r"```" + lang + r"\n(.*?)```", text, re.S)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("readme", nargs="?", default="README.md")
    ap.add_argument("--base", default="http://localhost:8000")
    ap.add_argument("--model", default="ttl")
    args = ap.parse_args()
    readme = open(args.readme, encoding="utf-8").read()
    host = args.base.removeprefix("http://")
    readme = (readme.replace("http://localhost:8000", args.base)
              .replace("localhost:8000", host)
              .replace('"model": "ttl"', f'"model": "{args.model}"')
              .replace('model="ttl"', f'model="{args.model}"'))
    curl = next(b for b in blocks(readme, "sh") if "curl" in b)
    commands = [c.strip() for c in curl.replace("\\\n", " ").split("\n\n") if c.strip()]
    assert len(commands) == 2, commands
    chat = subprocess.run(commands[0], shell=True, check=True, capture_output=True, text=True).stdout
    reply = json.loads(chat)
    assert reply["object"] == "chat.completion", chat
    print("curl chat:", json.dumps(reply["choices"][0], ensure_ascii=False))
    stream = subprocess.run(commands[1], shell=True, check=True, capture_output=True, text=True).stdout
    events = [line[6:] for line in stream.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", stream
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    print(f"curl stream: {len(events) - 1} chunks: {text!r}")
    python = next(b for b in blocks(readme, "python") if "OpenAI(" in b)
    print("python SDK:")
    exec(compile(python, "README.md", "exec"), {})
    print()


if __name__ == "__main__":
    main()
