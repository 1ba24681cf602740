"""Draws the soak's CSV (elapsed_s,series,value): one panel per kind of series, one line per service.

Usage: soak-plot.py soak.csv soak.png
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KINDS = [
    ("rss_bytes", "resident memory (MiB)", 1 / 1048576),
    ("open_fds", "open file descriptors", 1),
    ("disk_bytes", "bytes on disk (MiB)", 1 / 1048576),
    ("tree_decisions", "coordinator: decisions kept", 1),
    ("tree_log_entries", "counters: log entries", 1),
    ("tree_prepared", "counters: prepared transactions", 1),
]


def main(src, dst):
    series = defaultdict(list)
    with open(src) as f:
        for row in csv.DictReader(f):
            series[row["series"]].append((float(row["elapsed_s"]) / 60, float(row["value"])))
    fig, axes = plt.subplots(len(KINDS), 1, figsize=(10, 3 * len(KINDS)), sharex=True)
    for ax, (kind, title, scale) in zip(axes, KINDS):
        for name, points in sorted(series.items()):
            service, what = name.rsplit(" ", 1)
            if what != kind:
                continue
            ax.plot([t for t, _ in points], [v * scale for _, v in points], label=service)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        if ax.has_data():
            ax.legend(fontsize="small", loc="upper left")
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(dst, dpi=80)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
