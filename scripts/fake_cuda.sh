#!/usr/bin/env bash
# Runs a command with the fake libcuda and libcublas (kernels/emu/fake_*.cpp, built by
# build.rs with `--features cuda`) on LD_LIBRARY_PATH, so that `--device cuda` runs through
# cudarc and the driver API on the CPU. Test infrastructure: it says nothing of GPU speed.
#   scripts/fake_cuda.sh target/release/resnet-mnist train --device cuda --epochs 1
# RESNET_MNIST_FAKE_CUDA_FAULT=no-device|zero-devices|oom|unsupported-ptx|launch-failure
# injects a start-up failure (see kernels/emu/fake_driver.cpp).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# The most recently built one, of any profile.
driver="$(ls -t "$root"/target/*/build/resnet-mnist-*/out/fake-cuda/driver/libcuda.so.1 2>/dev/null | head -n1 || true)"
fake="${driver%/driver/libcuda.so.1}"
[ -n "$fake" ] || { echo "fake_cuda: no fake driver built yet: cargo build --features cuda" >&2; exit 2; }
export LD_LIBRARY_PATH="$fake/driver:$fake/cublas${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
