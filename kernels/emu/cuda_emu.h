// Host emulation of the CUDA execution model, enough to run kernels/*.cu unchanged on the
// CPU for tests: a block's threads run as fibers (ucontext) on the calling OS thread, blocks
// one after another. A fiber runs until it finishes, reaches __syncthreads() or a warp
// shuffle; the scheduler releases a barrier once every thread of the block waits at it and a
// shuffle once every lane of the warp has posted its value. A barrier some threads never
// reach, or a shuffle reading a lane the block does not have, aborts with a message.
#pragma once

#include <math.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

namespace emu {

// The launch and fiber the calling code runs in.
const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
void* dynamic_shared();
void sync_threads();
// Posts `bits` for this lane, waits for the warp, and returns lane `src_lane`'s bits.
uint64_t shuffle(uint64_t bits, unsigned int src_lane, const char* what);
unsigned int lane_id();

template <class T>
T shuffle_as(T v, unsigned int src_lane, const char* what) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 64 bits");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = shuffle(bits, src_lane, what);
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}

// A kernel as the launcher sees it: arguments come as an array of pointers to each value,
// the layout cuLaunchKernel takes.
using Entry = void (*)(void** args);

template <class... A, std::size_t... I>
void call_with(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

// A kernel's parameters as cuLaunchKernel copies them: how many, each one's size, and which
// are pointers (device addresses a launch may be checked against).
struct Params {
    std::size_t count;
    const std::size_t* sizes;
    const bool* pointers;
};

template <class... A>
struct ParamsOf {
    // One spare element keeps the arrays well-formed for kernels without parameters.
    static constexpr std::size_t sizes[] = {sizeof(A)..., 0};
    static constexpr bool pointers[] = {std::is_pointer_v<A>..., false};
    static constexpr Params value = {sizeof...(A), sizes, pointers};
};

template <class... A>
constexpr Params params_of(void (*)(A...)) {
    return ParamsOf<A...>::value;
}

struct KernelEntry {
    const char* name;
    Entry entry;
    Params params;
};

// Runs `kernel` to completion over the grid, blocks one after another on the calling thread.
void launch(const KernelEntry& kernel, const unsigned int grid[3], const unsigned int block[3],
            unsigned int shared_bytes, void** args);

}  // namespace emu

#define threadIdx (emu::thread_idx())
#define blockIdx (emu::block_idx())
#define blockDim (emu::block_dim())
#define gridDim (emu::grid_dim())
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
// Blocks run one at a time on one OS thread, so per-thread statics are per-block shared
// memory; thread_local keeps concurrent launches from different test threads apart.
#define __shared__ static thread_local
#define __syncthreads() emu::sync_threads()
#define DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(emu::dynamic_shared())

template <class T>
T __shfl_xor_sync(unsigned int, T v, int mask) {
    return emu::shuffle_as(v, emu::lane_id() ^ static_cast<unsigned int>(mask), "__shfl_xor_sync");
}

template <class T>
T __shfl_down_sync(unsigned int, T v, unsigned int delta) {
    const unsigned int src = emu::lane_id() + delta;
    // CUDA returns the caller's own value when the source is past the warp.
    return emu::shuffle_as(v, src < 32 ? src : emu::lane_id(), "__shfl_down_sync");
}

// Fibers never run concurrently, so plain read-modify-writes are atomic.
template <class T>
T atomicAdd(T* address, T v) {
    const T old = *address;
    *address = old + v;
    return old;
}

using std::min;
