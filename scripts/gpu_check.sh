#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and no Rust toolchain, from the repository
# root, with device-bin/ built by scripts/build_device_bin.sh. In this order, each step with
# its own time limit so that the whole stays under 8 minutes: nvidia-smi; the GPU tests
# (tests/cuda_device.rs: every op against the CPU, sgemm, graph replay, every block variant,
# a 1-epoch run to 98 %, and one of the fast recipe to 99 %); `bench --device cuda`; a
# 20-epoch run and a --recipe fast run with their wall times;
# scripts/bench_vs_pytorch.py --device cuda when torch is there. A short table comes last.
# Logs go to $OUT (or ./gpu-check-out).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin=device-bin
out="${OUT:-$root/gpu-check-out}"
mkdir -p "$out"
[ -x "$bin/resnet-mnist" ] && [ -x "$bin/cuda_device" ] ||
    { echo "gpu_check: $bin/resnet-mnist and $bin/cuda_device are missing: run scripts/build_device_bin.sh" >&2; exit 2; }
export MNIST_DIR="$root/$bin/mnist" RESNET_MNIST_OFFLINE=1 NO_COLOR=1

# The driver, cuBLAS and NVRTC from a CUDA toolkit or from Python's nvidia-* wheels (as in
# /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib), wherever they are.
libdirs="$(find /usr/local/nvidia /usr/local/cuda*/lib64 /opt /usr/local/lib /usr/lib/python3* -maxdepth 10 \
    \( -name 'libcuda.so.1' -o -name 'libcublas.so.1[23]' -o -name 'libnvrtc.so.1[23]' \) 2>/dev/null |
    xargs -r -n1 dirname | sort -u | paste -sd:)"
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

declare -a rows
row() { rows+=("$(printf '%-34s %s' "$1" "$2")"); }
step() { echo; echo "== $1"; }

step "nvidia-smi"
nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt" | head -20
row "GPU" "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
row "libraries" "${libdirs:-none found}"

step "GPU tests (tests/cuda_device.rs)"
# The fake-driver test needs the build machine's target folder; it runs in CI instead.
timeout 180 "$bin/cuda_device" --skip the_suite_passes_on_the_fake_driver --test-threads 1 --nocapture \
    >"$out/cuda_device.txt" 2>&1
rc=$?
grep -E '^test |test result|1 epoch|note:' "$out/cuda_device.txt" | tail -20
skipped=$(grep -c 'note: skipping' "$out/cuda_device.txt")
row "GPU tests" "$(grep -o 'test result: [a-zA-Z]*\. [0-9]* passed; [0-9]* failed' "$out/cuda_device.txt" | tail -1 ||
    echo "exit $rc"), $skipped skipped for want of a device"
row "1 epoch (test)" "$(grep -o '1 epoch: .*' "$out/cuda_device.txt" | head -1)"

step "bench --device cuda"
timeout 60 "$bin/resnet-mnist" bench --device cuda --json >"$out/bench.json" 2>"$out/bench.err"
cat "$out/bench.json" "$out/bench.err" | tail -5
rate() { python3 -c "import json,sys; print(round(json.load(open('$out/bench.json'))['$1']))" 2>/dev/null || echo "?"; }
row "bench train images/s (target 500k)" "$(rate train_images_per_s)"
row "bench eval images/s" "$(rate eval_images_per_s)"

step "20 epochs on the GPU"
start=$(date +%s.%N)
timeout 120 "$bin/resnet-mnist" train --device cuda --epochs 20 --quiet --out "$out/run20" >"$out/train20.txt" 2>&1
rc=$?
wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
tail -4 "$out/train20.txt"
row "20 epochs" "$(grep '^Best' "$out/train20.txt" | head -1) (wall ${wall} s, exit $rc)"

step "--recipe fast on the GPU"
start=$(date +%s.%N)
timeout 60 "$bin/resnet-mnist" train --device cuda --recipe fast --quiet --out "$out/fast" >"$out/fast.txt" 2>&1
rc=$?
wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
tail -3 "$out/fast.txt"
row "--recipe fast" "$(grep '^Best' "$out/fast.txt" | head -1) (wall ${wall} s, exit $rc)"

step "bench_vs_pytorch.py --device cuda"
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    timeout 90 python3 scripts/bench_vs_pytorch.py --device cuda --bin "$bin/resnet-mnist" --repeats 3 \
        >"$out/vs_pytorch.txt" 2>&1
    tail -8 "$out/vs_pytorch.txt"
    row "vs PyTorch" "$(grep -i 'ratio' "$out/vs_pytorch.txt" | tail -1)"
else
    row "vs PyTorch" "skipped: no torch with CUDA here"
fi

echo
echo "== summary"
printf '%s\n' "${rows[@]}"
