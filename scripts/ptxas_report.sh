#!/usr/bin/env bash
# Registers, shared memory and spills of every kernel for a real architecture (default
# sm_90), from `ptxas -v` over the PTX that build.rs embeds. Fails if any kernel spills.
#   scripts/ptxas_report.sh [sm_XX]
# Needs ptxas: a CUDA toolkit's bin on PATH, or `pip install nvidia-cuda-nvcc-cu12==12.9.86`
# (this script installs it into the NVRTC virtualenv of .ci/cuda-env.sh when missing).
set -euo pipefail
arch="${1:-sm_90}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. .ci/cuda-env.sh
venv="${RESNET_MNIST_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/resnet-mnist/cuda-venv}"
if ! command -v ptxas >/dev/null; then
    ptxas_bin="$(compgen -G "$venv/lib/python3*/site-packages/nvidia/cuda_nvcc/bin" | head -n1 || true)"
    if [ -z "$ptxas_bin" ]; then
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'nvidia-cuda-nvcc-cu12==12.9.86'
        ptxas_bin="$(compgen -G "$venv/lib/python3*/site-packages/nvidia/cuda_nvcc/bin" | head -n1)"
    fi
    PATH="$ptxas_bin:$PATH"
fi
# The embedded PTX targets compute_70; ptxas compiles it for any later sm_.
cargo build --quiet --features cuda --lib
out="$(dirname "$(ls -t "${CARGO_TARGET_DIR:-target}"/debug/build/resnet-mnist-*/out/conv.ptx | head -n1)")"
printf '%-24s %5s %8s %8s %12s\n' kernel regs smem_B cmem_B spill_st/ld
spilled=0
for ptx in "$out"/*.ptx; do
    ptxas -v --gpu-name "$arch" -o /dev/null "$ptx" 2>&1 | awk '
        /Compiling entry function/ { gsub(/[\047]/, "", $0); name = $(NF-2) }
        /spill stores/ { st = $5; ld = $9 }
        /Used [0-9]+ registers/ {
            regs = $5; smem = 0; cmem = 0
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /smem/) smem = $(i-2)
                if ($(i) ~ /cmem\[0\]/) cmem = $(i-2)
            }
            printf "%-24s %5s %8s %8s %12s\n", name, regs, smem, cmem, st "/" ld
        }'
    if ptxas -v --gpu-name "$arch" -o /dev/null "$ptx" 2>&1 | grep -Eq '[1-9][0-9]* bytes spill'; then
        spilled=1
    fi
done
if [ "$spilled" -ne 0 ]; then
    echo "some kernel spills registers" >&2
    exit 1
fi
