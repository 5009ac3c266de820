"""Each kernel's time from Nsight Compute's CSV (`ncu --csv --metrics gpu__time_duration.sum`).

    python3 scripts/ncu_summary.py ncu.csv

One line per kernel and launch shape (grid, block), slowest total first: launches, median and
total microseconds, and each one's share of the total. Kernels that ncu times alone run without
the launch gaps a graph replay has, so the total is the kernels' own time, a floor under a step.
"""

import csv
import statistics
import sys
from collections import defaultdict

TO_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}


def read_times(path):
    """{(kernel, grid, block): [microseconds per launch]} from the rows of gpu__time_duration.sum."""
    with open(path, newline="") as f:
        rows = csv.DictReader(line for line in f if line.startswith('"'))
        times = defaultdict(list)
        for row in rows:
            if row.get("Metric Name") != "gpu__time_duration.sum":
                continue
            name = row["Kernel Name"].split("(")[0]
            value = float(row["Metric Value"].replace(",", "")) * TO_US[row["Metric Unit"]]
            times[(name, row["Grid Size"], row["Block Size"])].append(value)
    return times


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    times = read_times(sys.argv[1])
    if not times:
        raise SystemExit(f"{sys.argv[1]}: no gpu__time_duration.sum rows (did ncu run?)")
    total = sum(sum(v) for v in times.values())
    print(f"{'kernel':34} {'grid':>16} {'block':>12} {'launches':>8} {'median us':>10} {'total us':>10} {'share':>6}")
    for (name, grid, block), v in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        print(f"{name[:34]:34} {grid:>16} {block:>12} {len(v):8} {statistics.median(v):10.2f} {sum(v):10.1f} "
              f"{100 * sum(v) / total:5.1f}%")
    launches = sum(len(v) for v in times.values())
    print(f"{launches} launches of {len({k[0] for k in times})} kernels, {total / 1e3:.2f} ms of kernel time in all")


if __name__ == "__main__":
    main()
