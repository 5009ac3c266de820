# Source this (bash) to build with `--features cuda` on a machine without a CUDA toolkit:
# installs NVRTC from PyPI into a private virtualenv once, then puts its lib folder on
# LD_LIBRARY_PATH. Idempotent: re-sourcing reuses the install and adds the path once.
#   . .ci/cuda-env.sh && cargo test --features cuda
# RESNET_MNIST_CUDA_VENV overrides where the virtualenv lives.

_cuda_env_venv="${RESNET_MNIST_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/resnet-mnist/cuda-venv}"
_cuda_env_lib="$_cuda_env_venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib"

if ! compgen -G "$_cuda_env_lib/libnvrtc.so*" >/dev/null; then
    python3 -m venv "$_cuda_env_venv" &&
        "$_cuda_env_venv/bin/pip" install --quiet --disable-pip-version-check 'nvidia-cuda-nvrtc-cu12==12.9.86' ||
        { echo "cuda-env: installing NVRTC from PyPI failed" >&2; return 1 2>/dev/null || exit 1; }
fi

# cudarc 0.19 (cuda-13000) probes libnvrtc.so, libnvrtc.so.13 and libnvrtc.so.12 among others;
# the wheel ships libnvrtc.so.12, which matches, so no symlink is needed.
for _cuda_env_dir in $_cuda_env_lib; do
    case ":${LD_LIBRARY_PATH:-}:" in
    *":$_cuda_env_dir:"*) ;;
    *) export LD_LIBRARY_PATH="$_cuda_env_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
done
unset _cuda_env_venv _cuda_env_lib _cuda_env_dir
