#!/usr/bin/env python3
"""Runs the README's client examples (the sh block with the curl commands and
the Python block using the openai SDK) against a server already listening on
localhost:8000 with the served name "ttl", and prints what they answered.
Fails when a command fails or an answer is not a completion.

Usage: python3 scripts/readme-examples.py [README.md]
"""

import json
import re
import subprocess
import sys


def blocks(text, lang):
    return re.findall(r"```" + lang + r"\n(.*?)```", text, re.S)


def main():
    readme = open(sys.argv[1] if len(sys.argv) > 1 else "README.md", encoding="utf-8").read()
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
