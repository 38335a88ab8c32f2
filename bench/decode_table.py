#!/usr/bin/env python3
"""Side-by-side decode figures of several `lhama bench` logs: one row per batch
size, one column per log (DIR/bench-LABEL.log), "tok/s (ms/step)".

Usage: decode_table.py DIR
"""

import collections
import glob
import re
import sys


def table(logs):
    """{batch: {label: (tok/s, ms/step as printed)}} from {label: log text}."""
    tab = collections.defaultdict(dict)
    for label, text in logs.items():
        for line in text.splitlines():
            m = re.match(r"\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", line)
            if m:
                tab[int(m.group(1))][label] = (float(m.group(3)), m.group(2))
    return tab


def main():
    paths = sorted(glob.glob(f"{sys.argv[1]}/bench-*.log"))
    logs = {p.rsplit("bench-", 1)[1][:-4]: open(p).read() for p in paths}
    tab = table(logs)
    labels = sorted(logs)
    print("decode tok/s (ms/step) " + " | ".join(labels))
    for b in sorted(tab):
        cells = [f"{tab[b][l][0]:.0f} ({tab[b][l][1]})" if l in tab[b] else "-" for l in labels]
        print(f"{b:>5} " + " | ".join(cells))


if __name__ == "__main__":
    main()
