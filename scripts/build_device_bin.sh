#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh runs on a machine with an NVIDIA GPU and no Rust
# toolchain, into device-bin/ (ignored by git): the release binary and the GPU test binary,
# built with `--features cuda` and stripped, and the four MNIST files.
#   scripts/build_device_bin.sh [MNIST_DIR]      (default: $MNIST_DIR, else ../shared/data/mnist)
# Then, on the GPU machine, from the repository root: scripts/gpu_check.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mnist="${1:-${MNIST_DIR:-$root/../shared/data/mnist}}"
# CUDA 13's NVRTC: the PTX it writes (compute_75) loads on drivers of CUDA 13 and newer, as a
# current H100/H200 machine has; the binary recompiles it with the local NVRTC on older ones.
export RESNET_MNIST_NVRTC="${RESNET_MNIST_NVRTC:-13}"
. .ci/cuda-env.sh
cargo build --release --features cuda
test_bin="$(cargo test --release --features cuda --test cuda_device --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda_device" and m.get("executable"):
        print(m["executable"])')"
rm -rf device-bin
mkdir -p device-bin/mnist
strip -o device-bin/resnet-mnist target/release/resnet-mnist
strip -o device-bin/cuda_device "$test_bin"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    cp "$mnist/$f.gz" device-bin/mnist/ 2>/dev/null || cp "$mnist/$f" device-bin/mnist/
done
du -sh device-bin/* | sed 's/^/device-bin: /'
