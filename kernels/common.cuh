// Helpers shared by every kernel family. The same sources compile under NVRTC (to PTX) and
// under the host emulator in emu/, which defines the CUDA built-ins before including them.
#pragma once

// `extern __shared__` arrays have no host equivalent: the emulator defines this macro to
// fetch the launch's dynamic shared memory instead.
#ifndef DYNAMIC_SHARED
#define DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

#define WARP_SIZE 32

// Index of this thread in a 1-D grid of 1-D blocks.
__device__ __forceinline__ unsigned int global_index() {
    return blockIdx.x * blockDim.x + threadIdx.x;
}

// Threads in a 1-D grid: the step of a grid-stride loop.
__device__ __forceinline__ unsigned int grid_stride() {
    return gridDim.x * blockDim.x;
}

// Sum of `v` over the 32 lanes of a warp, returned to every lane. The block size must be a
// multiple of 32 so that every lane exists.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

__device__ __forceinline__ unsigned int warp_sum_u32(unsigned int v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Sum of `v` over a 1-D block whose size is a multiple of 32, valid in thread 0. `scratch`
// holds one float per warp. Warps reduce with shuffles, then the first warp reduces the
// per-warp sums: two barrier-free steps instead of a log2(block) shared-memory tree.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const unsigned int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const unsigned int warps = blockDim.x / WARP_SIZE;
    v = 0.0f;
    if (warp == 0) {
        v = lane < warps ? scratch[lane] : 0.0f;
        v = warp_sum(v);
    }
    return v;
}
