#!/usr/bin/env python3
"""Draws BENCHMARKS.md's charts from the recorded figures, with the standard library only.

    python3 benches/chart.py      # reads benches/results/*.csv, writes benches/results/*.svg

One chart per crate: for each backend, platform's rate as a share of the raw client's
in the same run (1.0 = as fast as the raw client), one bar per workload.
"""

import csv
import html
import os

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COLOURS = ["#4c72b0", "#dd8452"]


def ratios(rows, key, series):
    """[(backend, {series: ratio})] in the order the file lists backends."""
    out = {}
    for row in rows:
        if not row["raw"]:
            continue
        ratio = float(row["platform"]) / float(row["raw"])
        out.setdefault(row["backend"], {})[row[key]] = ratio
    return [(backend, values) for backend, values in out.items() if any(s in values for s in series)]


def chart(title, data, series, labels, path):
    bar, gap, left, top, width = 14, 12, 150, 50, 420
    top_value = max(2.0, max(v for _, values in data for v in values.values()) * 1.05)
    height = top + len(data) * (len(series) * bar + gap) + 50
    x = lambda v: left + width * v / top_value  # noqa: E731
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 40}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, label in enumerate(labels):
        svg.append(f'<rect x="{left + i * 130}" y="30" width="12" height="12" fill="{COLOURS[i]}"/>')
        svg.append(f'<text x="{left + i * 130 + 16}" y="40">{html.escape(label)}</text>')
    y = top
    for backend, values in data:
        svg.append(f'<text x="{left - 8}" y="{y + len(series) * bar / 2 + 4}" text-anchor="end">'
                   f'{html.escape(backend)}</text>')
        for i, s in enumerate(series):
            if s in values:
                v = values[s]
                svg.append(f'<rect x="{left}" y="{y}" width="{x(v) - left:.1f}" height="{bar - 2}" '
                           f'fill="{COLOURS[i]}"/>')
                svg.append(f'<text x="{x(v) + 4:.1f}" y="{y + bar - 4}" font-size="10">{v:.2f}</text>')
            y += bar
        y += gap
    svg.append(f'<line x1="{x(1):.1f}" y1="{top - 4}" x2="{x(1):.1f}" y2="{y}" stroke="black" '
               'stroke-dasharray="4 3"/>')
    for tick in range(0, int(top_value) + 1):
        svg.append(f'<text x="{x(tick):.1f}" y="{y + 16}" text-anchor="middle" font-size="10">{tick}.0</text>')
    svg.append(f'<text x="{left + width / 2}" y="{y + 34}" text-anchor="middle">'
               'platform / raw client, same run (1.0 = as fast as the raw client)</text>')
    svg.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(svg) + "\n")


def read(name):
    with open(os.path.join(HERE, name), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def main():
    queue = read("queue.csv")
    chart("platform-queue: send + receive + ack, 256-byte messages", ratios(queue, "batch", ["1", "100"]),
          ["1", "100"], ["batch 1", "batch 100"], os.path.join(HERE, "queue.svg"))
    store = read("store.csv")
    chart("platform-store: put + get", ratios(store, "workload", ["small", "large"]),
          ["small", "large"], ["4 KiB objects", "16 MiB objects"], os.path.join(HERE, "store.svg"))


if __name__ == "__main__":
    main()
