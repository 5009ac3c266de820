#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and no Rust toolchain, from the repository
# root, with device-bin/ built by scripts/build_device_bin.sh. In this order, each step with
# its own time limit (the whole took 3½ minutes on an H200; 12 at most): nvidia-smi and the
# card's two ceilings (FP32 sgemm, device-to-device copy); `bench --device cuda` at batch 64
# and 1024; the GPU tests (tests/cuda_device.rs: every op against the CPU, sgemm, graph
# replay, every block variant, a 1-epoch run against the CPU's accuracy and one of the fast
# recipe to 99 %); a 20-epoch run and a --recipe fast run with their wall times; each
# kernel's time in a few training steps and an eval pass (Nsight Compute, where it works);
# scripts/bench_vs_pytorch.py --device cuda when torch is there. A short table comes last.
# What it prints goes to $OUT/log.txt (or ./gpu-check-out), beside the few long outputs
# (the tests' log, ncu's CSV, the PyTorch comparison); the runs' own folders go to a temporary
# one, since a lent machine brings back only a few files.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin=device-bin
out="${OUT:-$root/gpu-check-out}"
work="$(mktemp -d)"
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
[ -x "$bin/resnet-mnist" ] && [ -x "$bin/cuda_device" ] ||
    { echo "gpu_check: $bin/resnet-mnist and $bin/cuda_device are missing: run scripts/build_device_bin.sh" >&2; exit 2; }
export MNIST_DIR="$root/$bin/mnist" RESNET_MNIST_OFFLINE=1 NO_COLOR=1 PYTHONUNBUFFERED=1

. scripts/gpu_env.sh

declare -a rows
row() { rows+=("$(printf '%-34s %s' "$1" "$2")"); }
step() { echo; echo "== $1 ($(date +%T))"; }
have_torch() { python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; }

step "nvidia-smi"
nvidia-smi 2>&1 | head -20
row "GPU" "$(nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1)"
row "libraries" "${GPU_LIBDIRS:-none found}"

step "the card's ceilings (torch)"
if have_torch; then
    timeout 60 python3 - >"$work/ceilings.txt" 2>&1 <<'PY'
import sys, torch
sys.path.insert(0, "scripts")
from bench_vs_pytorch import cuda_median_seconds, gpu_sgemm_gflops
print(f"sgemm FP32 (TF32 off) 8192^3: {gpu_sgemm_gflops() / 1e3:.0f} TFLOP/s")
src = torch.rand(2 ** 30, device="cuda"); dst = torch.empty_like(src)
seconds = cuda_median_seconds(lambda: dst.copy_(src))
print(f"device copy 4 GiB: {2 * src.numel() * 4 / seconds / 1e12:.2f} TB/s (read + write)")
PY
    cat "$work/ceilings.txt"
    row "ceilings" "$(paste -sd';' "$work/ceilings.txt")"
else
    row "ceilings" "skipped: no torch with CUDA here"
fi

step "bench --device cuda"
timeout 90 "$bin/resnet-mnist" bench --device cuda --steps 2000 --repeats 5 --json >"$work/bench.json" 2>"$work/bench.err"
cat "$work/bench.json" "$work/bench.err" | tail -5
# A large batch says how much of batch 64's step is launches and gaps rather than arithmetic.
timeout 60 "$bin/resnet-mnist" bench --device cuda --steps 200 --repeats 3 --batch-size 1024 --eval-batch 1024 \
    --json >"$work/bench1024.json" 2>>"$work/bench.err"
cat "$work/bench1024.json"
rate() { python3 -c "import json,sys; print(round(json.load(open('$work/$1'))['$2']))" 2>/dev/null || echo "?"; }
row "bench train images/s (target 500k)" "$(rate bench.json train_images_per_s)"
row "bench eval images/s" "$(rate bench.json eval_images_per_s)"
row "bench train images/s, batch 1024" "$(rate bench1024.json train_images_per_s)"

step "GPU tests (tests/cuda_device.rs)"
# The fake-driver test needs the build machine's target folder; it runs in CI instead.
timeout 120 "$bin/cuda_device" --skip the_suite_passes_on_the_fake_driver --test-threads 1 --nocapture \
    >"$out/cuda_device.txt" 2>&1
rc=$?
grep -E '^test |test result|1 epoch|note:|panicked|assert' "$out/cuda_device.txt" | tail -30
skipped=$(grep -c 'note: skipping' "$out/cuda_device.txt")
row "GPU tests" "$(grep -o 'test result: [a-zA-Z]*\. [0-9]* passed; [0-9]* failed' "$out/cuda_device.txt" | tail -1 ||
    echo "exit $rc"), $skipped skipped for want of a device"
row "1 epoch (test)" "$(grep -o '1 epoch: .*' "$out/cuda_device.txt" | head -1)"

timed_run() {  # name, limit in seconds, then the train flags
    local name="$1" limit="$2" start rc wall
    shift 2
    start=$(date +%s.%N)
    timeout "$limit" "$bin/resnet-mnist" train --device cuda --quiet --out "$work/$name" "$@" >"$work/$name.txt" 2>&1
    rc=$?
    wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
    tail -25 "$work/$name.txt"
    row "$name" "$(grep '^Best' "$work/$name.txt" | head -1) (wall ${wall} s, exit $rc)"
}
step "20 epochs on the GPU"
timed_run run20 90 --epochs 20
step "--recipe fast on the GPU"
timed_run fast 45 --recipe fast

step "each kernel's time (Nsight Compute)"
ncu="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)"
if [ -n "$ncu" ]; then
    # 10 steps of warm-up, 10 timed training steps and an eval pass; each kernel timed alone.
    timeout 90 "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv \
        --launch-count 2000 "$bin/resnet-mnist" bench --device cuda --steps 10 --repeats 1 \
        >"$out/ncu.csv" 2>"$work/ncu.err"
    tail -5 "$work/ncu.err"
    python3 scripts/ncu_summary.py "$out/ncu.csv" | tee "$work/kernels.txt" | head -60
    row "kernels (ncu)" "$(tail -1 "$work/kernels.txt")"
else
    row "kernels (ncu)" "skipped: no ncu here"
fi

step "bench_vs_pytorch.py --device cuda"
if have_torch; then
    timeout 150 python3 scripts/bench_vs_pytorch.py --device cuda --bin "$bin/resnet-mnist" --repeats 2 \
        --steps 1000 >"$out/vs_pytorch.txt" 2>&1
    tail -22 "$out/vs_pytorch.txt"
    row "vs PyTorch, train" "$(grep "fastest train" "$out/vs_pytorch.txt" | tail -1)"
    row "vs PyTorch, eval" "$(grep "fastest eval" "$out/vs_pytorch.txt" | tail -1)"
else
    row "vs PyTorch" "skipped: no torch with CUDA here"
fi

echo
echo "== summary"
printf '%s\n' "${rows[@]}"
