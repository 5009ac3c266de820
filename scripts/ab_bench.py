"""Interleaved A/B of resnet-mnist binaries: `bench --json` of each in turn, for several rounds,
the order rotating and reversing from round to round so that neither a drifting machine nor
a warm cache favours one binary. Prints each binary's median training and eval images/s and,
for every binary after the first, the median over the rounds of its ratio to the first.

    python3 scripts/ab_bench.py [--rounds 5] BASE NEW [OTHER...] [-- bench flags]
    python3 scripts/ab_bench.py old/resnet-mnist target/release/resnet-mnist -- --device cuda

The bench flags go to every run (default: `--steps 1000 --repeats 3`); MNIST_DIR and the
like come from the environment.
"""

import argparse
import json
import statistics
import subprocess
import sys

PHASES = ("train_images_per_s", "eval_images_per_s")


def parse_args():
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="rounds, each running every binary once (default: 5)")
    p.add_argument("binaries", nargs="+", help="the binaries; the first is the base of the ratios")
    args = p.parse_args(argv[:split])
    args.bench = argv[split + 1:] or ["--steps", "1000", "--repeats", "3"]
    if len(args.binaries) < 2:
        p.error("give at least two binaries")
    return args


def bench(binary, flags):
    cmd = [binary, "bench", "--json", *flags]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {result.returncode}:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    args = parse_args()
    bins = args.binaries
    runs = {b: [] for b in bins}
    for r in range(args.rounds):
        order = bins[r % len(bins):] + bins[:r % len(bins)]
        for b in order[::-1] if r % 2 else order:
            runs[b].append(bench(b, args.bench))
        print(f"round {r + 1}: " + "  ".join(f"{b}: {runs[b][-1]['train_images_per_s']:.0f} / "
                                             f"{runs[b][-1]['eval_images_per_s']:.0f}" for b in bins), flush=True)
    print(f"\n{'binary':40} {'train images/s':>15} {'eval images/s':>15} {'train ratio':>12} {'eval ratio':>11}")
    for b in bins:
        rates = [statistics.median(run[k] for run in runs[b]) for k in PHASES]
        ratios = [statistics.median(new[k] / base[k] for new, base in zip(runs[b], runs[bins[0]])) for k in PHASES]
        shown = "" if b == bins[0] else f"{ratios[0]:11.2f}x {ratios[1]:10.2f}x"
        print(f"{b:40} {rates[0]:15.0f} {rates[1]:15.0f} {shown}")


if __name__ == "__main__":
    main()
