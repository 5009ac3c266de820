# Sourced by the scripts that run the binaries on a GPU machine without a CUDA toolkit set
# up: puts the driver, cuBLAS and NVRTC on LD_LIBRARY_PATH from wherever they are (a CUDA
# toolkit, or Python's nvidia-* wheels as in /opt/torch/.venv/lib/python3.12/site-packages/
# nvidia/cu13/lib), and sets GPU_LIBDIRS to what it found.
GPU_LIBDIRS="$(find /usr/local/nvidia /usr/local/cuda*/lib64 /opt /usr/local/lib /usr/lib/python3* -maxdepth 10 \
    \( -name 'libcuda.so.1' -o -name 'libcublas.so.1[23]' -o -name 'libnvrtc.so.1[23]' \) 2>/dev/null |
    xargs -r -n1 dirname | sort -u | paste -sd:)"
export LD_LIBRARY_PATH="${GPU_LIBDIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
