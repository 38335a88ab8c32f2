#!/usr/bin/env python3
"""The figures of several bench/serve_bench.py processes run at once against
one server: all output tokens over the slowest process's wall time, and each
process's inter-token and first-token p50.

Usage: http_aggregate.py LOG_DIR LABEL   (reads LOG_DIR/http-LABEL-*.log)
"""

import glob
import re
import sys


def aggregate(texts):
    tokens, walls, itl, ttft, failed = 0.0, [], [], [], 0
    for t in texts:
        m = re.search(r"wall ([\d.]+) s: ([\d.]+) output tok/s", t)
        if not m:
            raise ValueError("no result in a client's log: " + t[-300:])
        walls.append(float(m.group(1)))
        tokens += float(m.group(1)) * float(m.group(2))
        itl.append(float(re.search(r"ITL +ms:.*?p50 +([\d.]+)", t).group(1)))
        ttft.append(float(re.search(r"TTFT +ms:.*?p50 +([\d.]+)", t).group(1)))
        failed += int(re.search(r"\((\d+) failed\)", t).group(1))
    return tokens, max(walls), itl, ttft, failed


def main():
    logs, label = sys.argv[1:3]
    paths = sorted(glob.glob(f"{logs}/http-{label}-*.log"))
    if not paths:
        sys.exit(f"no http-{label}-*.log in {logs}")
    tokens, wall, itl, ttft, failed = aggregate(open(p).read() for p in paths)
    print(f"http {label}: {tokens / wall:.0f} output tok/s ({tokens:.0f} tokens in {wall:.2f} s from "
          f"{len(paths)} clients), ITL p50 {itl} ms, TTFT p50 {ttft} ms, {failed} failed")


if __name__ == "__main__":
    main()
