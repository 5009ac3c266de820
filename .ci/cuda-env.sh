# Source this (bash) to build with `--features cuda` on a machine without a CUDA toolkit:
# installs NVRTC from PyPI into a private virtualenv once, then puts its lib folder on
# LD_LIBRARY_PATH. Idempotent: re-sourcing reuses the install and adds the path once.
#   . .ci/cuda-env.sh && cargo test --features cuda
# RESNET_MNIST_NVRTC=13 takes CUDA 13's NVRTC instead of CUDA 12's (the default);
# RESNET_MNIST_CUDA_VENV overrides where the virtualenv lives.

_cuda_env_venv="${RESNET_MNIST_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/resnet-mnist/cuda-venv}"
case "${RESNET_MNIST_NVRTC:-12}" in
12) _cuda_env_pkg='nvidia-cuda-nvrtc-cu12==12.9.86' _cuda_env_sub=cuda_nvrtc/lib ;;
13) _cuda_env_pkg='nvidia-cuda-nvrtc==13.0.88' _cuda_env_sub=cu13/lib ;;
*) echo "cuda-env: RESNET_MNIST_NVRTC must be 12 or 13" >&2; return 1 2>/dev/null || exit 1 ;;
esac
_cuda_env_lib="$_cuda_env_venv/lib/python3*/site-packages/nvidia/$_cuda_env_sub"

if ! compgen -G "$_cuda_env_lib/libnvrtc.so*" >/dev/null; then
    { [ -x "$_cuda_env_venv/bin/pip" ] || python3 -m venv "$_cuda_env_venv"; } &&
        "$_cuda_env_venv/bin/pip" install --quiet --disable-pip-version-check "$_cuda_env_pkg" ||
        { echo "cuda-env: installing NVRTC ($_cuda_env_pkg) from PyPI failed" >&2; return 1 2>/dev/null || exit 1; }
fi

# cudarc 0.19 (cuda-13000) probes libnvrtc.so, then libnvrtc.so.13 before libnvrtc.so.12;
# the wheels ship libnvrtc.so.12 and libnvrtc.so.13, which match, so no symlink is needed.
for _cuda_env_dir in $_cuda_env_lib; do
    case ":${LD_LIBRARY_PATH:-}:" in
    *":$_cuda_env_dir:"*) ;;
    *) export LD_LIBRARY_PATH="$_cuda_env_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
done
unset _cuda_env_venv _cuda_env_pkg _cuda_env_sub _cuda_env_lib _cuda_env_dir
