// A CPU-backed libcuda.so.1 for tests: the subset of NVIDIA's driver API that cudarc calls on
// this project's path, with the semantics of the driver API reference, over host memory and
// the kernel emulator. It lets CudarcDevice (src/backend/cuda/hw.rs) and everything cudarc
// does beneath it run in CI without a GPU. It checks what a GPU would not check at once
// (kernel arguments point into live allocations, copies stay inside them), so a wrong pointer
// fails the call instead of corrupting memory. It says nothing about GPU speed or about the
// PTX, whose kernels it binds by name to the emulator's builds of the same sources.
//
// Work runs synchronously when it is queued, so every stream is always idle. Stream capture
// records launches, copies, memsets and host functions; a graph replays them in order.
//
// RESNET_MNIST_FAKE_CUDA_FAULT injects the failures a user meets:
//   no-device        cuInit fails with CUDA_ERROR_NO_DEVICE (no GPU, or no driver for it)
//   zero-devices     cuInit succeeds, cuDeviceGetCount reports 0
//   oom              every allocation fails with CUDA_ERROR_OUT_OF_MEMORY
//   unsupported-ptx  cuModuleLoadData refuses PTX that does not target sm_90 with
//                    CUDA_ERROR_UNSUPPORTED_PTX_VERSION, as a driver older than the NVRTC
//                    that built the PTX does; PTX recompiled for this device loads
//   launch-failure   the first kernel fails: CUDA_ERROR_LAUNCH_FAILED, sticky, reported by
//                    the next call that waits for the stream, and by every call after it;
//                    launch-failure:N makes the N-th kernel fail instead (1-based)
// A call this fake does not implement prints its name and returns CUDA_ERROR_NOT_SUPPORTED.
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_emu.h"

extern "C" const emu::KernelEntry* emu_kernels(std::size_t* count);

namespace {

// NVIDIA's values (cuda.h).
enum CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_UNKNOWN = 999,
};

struct ErrorText {
    CUresult code;
    const char* name;
    const char* text;
};

constexpr ErrorText kErrors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_INVALID_PTX, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {CUDA_ERROR_UNSUPPORTED_PTX_VERSION, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
     "the provided PTX was compiled with an unsupported toolchain."},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE", "the operation cannot be performed in the present state"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
     "operation not permitted when stream is capturing"},
    {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
     "operation failed due to a previous error during capture"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

// Attribute values of one H100-class device (CUdevice_attribute numbering); others are
// CUDA_ERROR_INVALID_VALUE.
const std::map<int, int> kAttributes = {
    {1, 1024},      // MAX_THREADS_PER_BLOCK
    {2, 1024},      // MAX_BLOCK_DIM_X
    {3, 1024},      // MAX_BLOCK_DIM_Y
    {4, 64},        // MAX_BLOCK_DIM_Z
    {5, 2147483647},  // MAX_GRID_DIM_X
    {6, 65535},     // MAX_GRID_DIM_Y
    {7, 65535},     // MAX_GRID_DIM_Z
    {8, 49152},     // MAX_SHARED_MEMORY_PER_BLOCK
    {9, 65536},     // TOTAL_CONSTANT_MEMORY
    {10, 32},       // WARP_SIZE
    {12, 65536},    // MAX_REGISTERS_PER_BLOCK
    {13, 1980000},  // CLOCK_RATE (kHz)
    {16, 132},      // MULTIPROCESSOR_COUNT
    {31, 1},        // CONCURRENT_KERNELS
    {36, 2619000},  // MEMORY_CLOCK_RATE (kHz)
    {37, 5120},     // GLOBAL_MEMORY_BUS_WIDTH
    {38, 52428800}, // L2_CACHE_SIZE
    {39, 2048},     // MAX_THREADS_PER_MULTIPROCESSOR
    {41, 1},        // UNIFIED_ADDRESSING
    {75, 9},        // COMPUTE_CAPABILITY_MAJOR
    {76, 0},        // COMPUTE_CAPABILITY_MINOR
    {81, 233472},   // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
    {82, 65536},    // MAX_REGISTERS_PER_MULTIPROCESSOR
    {97, 232448},   // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    {106, 32},      // MAX_BLOCKS_PER_MULTIPROCESSOR
    {115, 1},       // MEMORY_POOLS_SUPPORTED
};

constexpr const char* kDeviceName = "NVIDIA H100 (fake driver: kernels emulated on the CPU)";
constexpr std::size_t kTotalMemory = std::size_t{80} << 30;
constexpr std::size_t kAlignment = 256;  // what cuMemAlloc guarantees
constexpr const char* kDeviceArch = "sm_90";

using CUdeviceptr = unsigned long long;
using HostFn = void (*)(void*);

struct Context {};
struct Module {
    std::vector<const emu::KernelEntry*> kernels;
};
struct Function {
    const emu::KernelEntry* kernel;
    Module* module;
};

// One piece of queued work, with everything it needs copied in, as the driver does for
// kernel arguments: the caller may reuse its own buffers as soon as the call returns.
struct Op {
    enum class Kind { Launch, Memset, Copy, HostFunc } kind;
    const emu::KernelEntry* kernel = nullptr;
    unsigned int grid[3] = {}, block[3] = {}, shared_bytes = 0;
    std::vector<std::vector<unsigned char>> args;
    void* dst = nullptr;
    const void* src = nullptr;
    std::size_t bytes = 0;
    unsigned char value = 0;
    HostFn fn = nullptr;
    void* user_data = nullptr;
};

struct Graph {
    std::vector<Op> ops;
};
struct GraphExec {
    std::vector<Op> ops;
};

enum CaptureStatus { CAPTURE_NONE = 0, CAPTURE_ACTIVE = 1, CAPTURE_INVALIDATED = 2 };

struct Stream {
    CaptureStatus capture = CAPTURE_NONE;
    std::unique_ptr<Graph> graph;
};

struct Driver {
    std::mutex mutex;
    bool initialized = false;
    std::string fault;
    CUresult sticky = CUDA_SUCCESS;
    // Kernels run so far, and the one that fails (0: none).
    unsigned long long launched = 0, failing = 0;
    Context primary;
    int primary_refs = 0;
    std::map<CUdeviceptr, std::size_t> allocations;
    std::size_t allocated = 0;
    std::map<void*, std::unique_ptr<Stream>> streams;
    // The legacy (0) and per-thread (0x2) default streams.
    Stream default_stream;
    std::map<void*, std::unique_ptr<Module>> modules;
    std::map<void*, std::unique_ptr<Function>> functions;
    std::map<void*, std::unique_ptr<Graph>> graphs;
    std::map<void*, std::unique_ptr<GraphExec>> execs;
    std::map<void*, bool> events;
};

Driver& driver() {
    static Driver* d = new Driver;  // never destroyed: cudarc frees its handles at exit
    return *d;
}

thread_local Context* current = nullptr;

CUresult report(CUresult code, const char* fmt, ...) {
    std::fprintf(stderr, "fake libcuda: ");
    va_list args;
    va_start(args, fmt);
    std::vfprintf(stderr, fmt, args);
    va_end(args);
    std::fputc('\n', stderr);
    return code;
}

bool fault(const char* name) { return driver().fault == name; }

// The checks every call after cuInit makes, in the driver's order: initialized, then the
// sticky error of a failed kernel, then a current context.
CUresult ready(bool needs_context) {
    Driver& d = driver();
    if (!d.initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (d.sticky != CUDA_SUCCESS) return d.sticky;
    if (needs_context && current == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
    return CUDA_SUCCESS;
}

Stream* find_stream(void* handle) {
    Driver& d = driver();
    if (handle == nullptr || handle == reinterpret_cast<void*>(0x2)) return &d.default_stream;
    auto it = d.streams.find(handle);
    return it == d.streams.end() ? nullptr : it->second.get();
}

// The allocation holding [address, address + bytes), or nullptr.
const std::pair<const CUdeviceptr, std::size_t>* allocation_of(CUdeviceptr address, std::size_t bytes) {
    auto& allocations = driver().allocations;
    auto it = allocations.upper_bound(address);
    if (it == allocations.begin()) return nullptr;
    --it;
    if (address + bytes > it->first + it->second) return nullptr;
    return &*it;
}

bool in_device_memory(const void* address, std::size_t bytes) {
    return allocation_of(reinterpret_cast<CUdeviceptr>(address), bytes) != nullptr;
}

// Reports the first pointer argument of a kernel launch that lies in no live allocation:
// checked at the launch, and again at each replay of a graph that holds it, since the
// memory may have been freed after the capture.
CUresult check_pointers(const char* call, const Op& op) {
    const emu::KernelEntry& kernel = *op.kernel;
    for (std::size_t i = 0; i < kernel.params.count; ++i) {
        if (!kernel.params.pointers[i]) continue;
        CUdeviceptr address = 0;
        std::memcpy(&address, op.args[i].data(), sizeof address);
        if (!allocation_of(address, 0)) {
            return report(CUDA_ERROR_ILLEGAL_ADDRESS, "%s(%s): parameter %zu is 0x%llx, which is not in any "
                          "allocation", call, kernel.name, i, address);
        }
    }
    return CUDA_SUCCESS;
}

void run(const Op& op) {
    Driver& d = driver();
    switch (op.kind) {
        case Op::Kind::Launch: {
            if (++d.launched == d.failing) {
                d.sticky = CUDA_ERROR_LAUNCH_FAILED;
                return;
            }
            std::vector<void*> pointers;
            for (const auto& arg : op.args) pointers.push_back(const_cast<unsigned char*>(arg.data()));
            emu::launch(*op.kernel, op.grid, op.block, op.shared_bytes, pointers.data());
            return;
        }
        case Op::Kind::Memset:
            std::memset(op.dst, op.value, op.bytes);
            return;
        case Op::Kind::Copy:
            std::memcpy(op.dst, op.src, op.bytes);
            return;
        case Op::Kind::HostFunc:
            op.fn(op.user_data);
            return;
    }
}

// Queues `op` on the stream: recorded while it captures, run now otherwise.
CUresult enqueue(void* stream_handle, Op op) {
    Stream* stream = find_stream(stream_handle);
    if (!stream) return CUDA_ERROR_INVALID_HANDLE;
    if (stream->capture == CAPTURE_ACTIVE) {
        stream->graph->ops.push_back(std::move(op));
        return CUDA_SUCCESS;
    }
    if (stream->capture == CAPTURE_INVALIDATED) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    run(op);
    return CUDA_SUCCESS;
}

// Calls that wait for a stream are not allowed while it captures, and invalidate the capture.
CUresult wait_for(Stream* stream) {
    if (stream->capture != CAPTURE_NONE) {
        stream->capture = CAPTURE_INVALIDATED;
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    return driver().sticky;
}

CUresult copy(void* dst, const void* src, std::size_t bytes, void* stream, bool dst_device, const char* call) {
    if (bytes == 0) return CUDA_SUCCESS;
    if (!in_device_memory(dst_device ? dst : src, bytes)) {
        return report(CUDA_ERROR_INVALID_VALUE, "%s: %zu bytes at %p are not inside one allocation", call, bytes,
                      dst_device ? dst : src);
    }
    Op op{Op::Kind::Copy};
    op.dst = dst;
    op.src = src;
    op.bytes = bytes;
    return enqueue(stream, std::move(op));
}

// PTX entry names: `.entry NAME(` after `.visible` or `.weak`.
std::vector<std::string> ptx_entries(const std::string& ptx) {
    std::vector<std::string> names;
    for (std::size_t at = ptx.find(".entry "); at != std::string::npos; at = ptx.find(".entry ", at + 1)) {
        const std::size_t begin = at + 7, end = ptx.find('(', begin);
        if (end == std::string::npos) break;
        std::string name = ptx.substr(begin, end - begin);
        while (!name.empty() && name.back() == ' ') name.pop_back();
        names.push_back(name);
    }
    return names;
}

// The `.param` declarations of entry `name`, each `.param .u64 name_param_0`, counted.
std::size_t ptx_param_count(const std::string& ptx, const std::string& name) {
    const std::size_t begin = ptx.find(".entry " + name + "(");
    const std::size_t end = ptx.find(')', begin);
    std::size_t count = 0;
    for (std::size_t at = ptx.find(".param", begin); at < end; at = ptx.find(".param", at + 1)) ++count;
    return count;
}

const emu::KernelEntry* emulated(const std::string& name) {
    std::size_t count = 0;
    const emu::KernelEntry* table = emu_kernels(&count);
    for (std::size_t i = 0; i < count; ++i) {
        if (name == table[i].name) return &table[i];
    }
    return nullptr;
}

template <class T>
void* handle_of(std::map<void*, std::unique_ptr<T>>& table, std::unique_ptr<T> object) {
    void* handle = object.get();
    table[handle] = std::move(object);
    return handle;
}

}  // namespace

#define API extern "C" __attribute__((visibility("default")))
#define LOCK std::lock_guard<std::mutex> lock(driver().mutex)

API CUresult cuGetErrorName(CUresult error, const char** name) {
    for (const ErrorText& e : kErrors) {
        if (e.code == error) {
            *name = e.name;
            return CUDA_SUCCESS;
        }
    }
    *name = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuGetErrorString(CUresult error, const char** text) {
    for (const ErrorText& e : kErrors) {
        if (e.code == error) {
            *text = e.text;
            return CUDA_SUCCESS;
        }
    }
    *text = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuInit(unsigned int flags) {
    LOCK;
    Driver& d = driver();
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    const char* fault = std::getenv("RESNET_MNIST_FAKE_CUDA_FAULT");
    d.fault = fault ? fault : "";
    if (d.fault == "launch-failure") d.failing = 1;
    if (d.fault.rfind("launch-failure:", 0) == 0) {
        char* end = nullptr;
        d.failing = std::strtoull(d.fault.c_str() + 15, &end, 10);
        if (d.failing == 0 || *end != '\0') d.fault = "?";
    }
    if (!d.fault.empty() && d.fault != "no-device" && d.fault != "zero-devices" && d.fault != "oom" &&
        d.fault != "unsupported-ptx" && d.failing == 0) {
        return report(CUDA_ERROR_INVALID_VALUE, "RESNET_MNIST_FAKE_CUDA_FAULT=%s is not a fault this fake knows",
                      fault);
    }
    if (d.fault == "no-device") return CUDA_ERROR_NO_DEVICE;
    d.initialized = true;
    return CUDA_SUCCESS;
}

API CUresult cuDriverGetVersion(int* version) {
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    *version = 13000;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetCount(int* count) {
    LOCK;
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(false)) return r;
    *count = fault("zero-devices") ? 0 : 1;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGet(int* device, int ordinal) {
    LOCK;
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(false)) return r;
    if (ordinal != 0 || fault("zero-devices")) return CUDA_ERROR_INVALID_DEVICE;
    *device = 0;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetAttribute(int* value, int attribute, int device) {
    LOCK;
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(false)) return r;
    if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
    auto it = kAttributes.find(attribute);
    if (it == kAttributes.end()) {
        return report(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute: attribute %d is not implemented", attribute);
    }
    *value = it->second;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetName(char* name, int length, int device) {
    LOCK;
    if (!name || length <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(false)) return r;
    if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
    std::snprintf(name, static_cast<std::size_t>(length), "%s", kDeviceName);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceTotalMem_v2(std::size_t* bytes, int device) {
    LOCK;
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(false)) return r;
    if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = kTotalMemory;
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRetain(Context** context, int device) {
    LOCK;
    if (!context) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(false)) return r;
    if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
    ++driver().primary_refs;
    *context = &driver().primary;
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRelease_v2(int device) {
    LOCK;
    if (CUresult r = ready(false); r == CUDA_ERROR_NOT_INITIALIZED) return r;
    if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (driver().primary_refs == 0) return CUDA_ERROR_INVALID_CONTEXT;
    --driver().primary_refs;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetCurrent(Context** context) {
    if (!context) return CUDA_ERROR_INVALID_VALUE;
    LOCK;
    if (!driver().initialized) return CUDA_ERROR_NOT_INITIALIZED;
    *context = current;
    return CUDA_SUCCESS;
}

API CUresult cuCtxSetCurrent(Context* context) {
    LOCK;
    if (!driver().initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (context != nullptr && context != &driver().primary) return CUDA_ERROR_INVALID_CONTEXT;
    current = context;
    return CUDA_SUCCESS;
}

API CUresult cuCtxSynchronize() {
    LOCK;
    if (CUresult r = ready(true)) return r;
    for (auto& entry : driver().streams) {
        if (entry.second->capture != CAPTURE_NONE) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    return CUDA_SUCCESS;
}

API CUresult cuStreamCreate(void** stream, unsigned int flags) {
    LOCK;
    if (!stream || flags > 1) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(true)) return r;
    *stream = handle_of(driver().streams, std::make_unique<Stream>());
    return CUDA_SUCCESS;
}

API CUresult cuStreamDestroy_v2(void* stream) {
    LOCK;
    if (CUresult r = ready(true); r == CUDA_ERROR_NOT_INITIALIZED || r == CUDA_ERROR_INVALID_CONTEXT) return r;
    return driver().streams.erase(stream) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

API CUresult cuStreamSynchronize(void* stream) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    Stream* s = find_stream(stream);
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    return wait_for(s);
}

namespace {
CUresult allocate(CUdeviceptr* address, std::size_t bytes, const char* call) {
    if (!address) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(true)) return r;
    Driver& d = driver();
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    if (fault("oom") || d.allocated + bytes > kTotalMemory) return CUDA_ERROR_OUT_OF_MEMORY;
    void* memory = std::aligned_alloc(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
    if (!memory) return report(CUDA_ERROR_OUT_OF_MEMORY, "%s: the host has no %zu bytes to give", call, bytes);
    *address = reinterpret_cast<CUdeviceptr>(memory);
    d.allocations[*address] = bytes;
    d.allocated += bytes;
    return CUDA_SUCCESS;
}

CUresult release(CUdeviceptr address) {
    Driver& d = driver();
    auto it = d.allocations.find(address);
    if (it == d.allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    d.allocated -= it->second;
    d.allocations.erase(it);
    std::free(reinterpret_cast<void*>(address));
    return CUDA_SUCCESS;
}

bool capturing(void* stream) {
    Stream* s = find_stream(stream);
    return s && s->capture != CAPTURE_NONE;
}
}  // namespace

API CUresult cuMemAlloc_v2(CUdeviceptr* address, std::size_t bytes) {
    LOCK;
    return allocate(address, bytes, "cuMemAlloc_v2");
}

API CUresult cuMemAllocAsync(CUdeviceptr* address, std::size_t bytes, void* stream) {
    LOCK;
    if (!find_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    if (capturing(stream)) {
        return report(CUDA_ERROR_NOT_SUPPORTED, "cuMemAllocAsync inside a stream capture is not implemented");
    }
    return allocate(address, bytes, "cuMemAllocAsync");
}

API CUresult cuMemFree_v2(CUdeviceptr address) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    return release(address);
}

API CUresult cuMemFreeAsync(CUdeviceptr address, void* stream) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    if (!find_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    if (capturing(stream)) {
        return report(CUDA_ERROR_NOT_SUPPORTED, "cuMemFreeAsync inside a stream capture is not implemented");
    }
    return release(address);
}

API CUresult cuMemGetInfo_v2(std::size_t* free, std::size_t* total) {
    LOCK;
    if (!free || !total) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(true)) return r;
    *total = kTotalMemory;
    *free = kTotalMemory - driver().allocated;
    return CUDA_SUCCESS;
}

API CUresult cuMemGetAddressRange_v2(CUdeviceptr* base, std::size_t* size, CUdeviceptr address) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    const auto* allocation = allocation_of(address, 1);
    if (!allocation) return CUDA_ERROR_NOT_FOUND;
    if (base) *base = allocation->first;
    if (size) *size = allocation->second;
    return CUDA_SUCCESS;
}

API CUresult cuMemsetD8Async(CUdeviceptr address, unsigned char value, std::size_t count, void* stream) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    if (count == 0) return CUDA_SUCCESS;
    if (!allocation_of(address, count)) {
        return report(CUDA_ERROR_INVALID_VALUE, "cuMemsetD8Async: %zu bytes at 0x%llx are not inside one allocation",
                      count, address);
    }
    Op op{Op::Kind::Memset};
    op.dst = reinterpret_cast<void*>(address);
    op.bytes = count;
    op.value = value;
    return enqueue(stream, std::move(op));
}

API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, std::size_t bytes, void* stream) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    return copy(reinterpret_cast<void*>(dst), src, bytes, stream, true, "cuMemcpyHtoDAsync_v2");
}

API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, std::size_t bytes, void* stream) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    return copy(dst, reinterpret_cast<const void*>(src), bytes, stream, false, "cuMemcpyDtoHAsync_v2");
}

API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, std::size_t bytes) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    if (CUresult r = wait_for(&driver().default_stream)) return r;
    return copy(reinterpret_cast<void*>(dst), src, bytes, nullptr, true, "cuMemcpyHtoD_v2");
}

API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, std::size_t bytes) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    if (CUresult r = wait_for(&driver().default_stream)) return r;
    return copy(dst, reinterpret_cast<const void*>(src), bytes, nullptr, false, "cuMemcpyDtoH_v2");
}

API CUresult cuModuleLoadData(void** module, const void* image) {
    LOCK;
    if (!module || !image) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(true)) return r;
    const std::string ptx(static_cast<const char*>(image));
    if (ptx.find(".version") == std::string::npos || ptx.find(".target") == std::string::npos) {
        return report(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: the image is not PTX text (no .version/.target)");
    }
    if (fault("unsupported-ptx") && ptx.find(std::string(".target ") + kDeviceArch) == std::string::npos) {
        return CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
    }
    auto loaded = std::make_unique<Module>();
    for (const std::string& name : ptx_entries(ptx)) {
        const emu::KernelEntry* kernel = emulated(name);
        if (!kernel) {
            return report(CUDA_ERROR_NOT_SUPPORTED,
                          "cuModuleLoadData: the PTX defines kernel %s, which the emulator was not built with",
                          name.c_str());
        }
        const std::size_t declared = ptx_param_count(ptx, name);
        if (declared != kernel->params.count) {
            return report(CUDA_ERROR_INVALID_PTX, "cuModuleLoadData: kernel %s has %zu parameters in the PTX, %zu in "
                          "the emulator's build", name.c_str(), declared, kernel->params.count);
        }
        loaded->kernels.push_back(kernel);
    }
    *module = handle_of(driver().modules, std::move(loaded));
    return CUDA_SUCCESS;
}

API CUresult cuModuleUnload(void* module) {
    LOCK;
    if (CUresult r = ready(true); r == CUDA_ERROR_NOT_INITIALIZED) return r;
    Driver& d = driver();
    if (!d.modules.erase(module)) return CUDA_ERROR_INVALID_HANDLE;
    for (auto it = d.functions.begin(); it != d.functions.end();) {
        it = it->second->module == module ? d.functions.erase(it) : std::next(it);
    }
    return CUDA_SUCCESS;
}

API CUresult cuModuleGetFunction(void** function, void* module, const char* name) {
    LOCK;
    if (!function || !name) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(true)) return r;
    auto it = driver().modules.find(module);
    if (it == driver().modules.end()) return CUDA_ERROR_INVALID_HANDLE;
    for (const emu::KernelEntry* kernel : it->second->kernels) {
        if (std::strcmp(kernel->name, name) == 0) {
            *function = handle_of(driver().functions, std::make_unique<Function>(Function{kernel, it->second.get()}));
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_NOT_FOUND;
}

API CUresult cuLaunchKernel(void* function, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                            unsigned int by, unsigned int bz, unsigned int shared_bytes, void* stream,
                            void** params, void** extra) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    auto it = driver().functions.find(function);
    if (it == driver().functions.end()) return CUDA_ERROR_INVALID_HANDLE;
    const emu::KernelEntry& kernel = *it->second->kernel;
    if (extra) return report(CUDA_ERROR_NOT_SUPPORTED, "cuLaunchKernel: the `extra` argument is not implemented");
    const unsigned long long threads = 1ull * bx * by * bz;
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || gx > 2147483647u || gy > 65535 ||
        gz > 65535 || bx > 1024 || by > 1024 || bz > 64 || threads > 1024 || shared_bytes > 49152) {
        return report(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel(%s): grid (%u,%u,%u), block (%u,%u,%u), %u bytes of "
                      "shared memory exceed the device's limits", kernel.name, gx, gy, gz, bx, by, bz, shared_bytes);
    }
    if (kernel.params.count > 0 && !params) return CUDA_ERROR_INVALID_VALUE;
    Op op{Op::Kind::Launch};
    op.kernel = &kernel;
    const unsigned int grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    std::memcpy(op.grid, grid, sizeof grid);
    std::memcpy(op.block, block, sizeof block);
    op.shared_bytes = shared_bytes;
    for (std::size_t i = 0; i < kernel.params.count; ++i) {
        const auto* bytes = static_cast<const unsigned char*>(params[i]);
        op.args.emplace_back(bytes, bytes + kernel.params.sizes[i]);
    }
    if (CUresult r = check_pointers("cuLaunchKernel", op)) return r;
    return enqueue(stream, std::move(op));
}

API CUresult cuLaunchHostFunc(void* stream, HostFn fn, void* user_data) {
    LOCK;
    if (!fn) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(true)) return r;
    Op op{Op::Kind::HostFunc};
    op.fn = fn;
    op.user_data = user_data;
    return enqueue(stream, std::move(op));
}

API CUresult cuStreamBeginCapture_v2(void* stream, int mode) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    if (mode < 0 || mode > 2) return CUDA_ERROR_INVALID_VALUE;
    if (stream == nullptr) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;  // the legacy stream
    Stream* s = find_stream(stream);
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    if (s->capture != CAPTURE_NONE) return CUDA_ERROR_ILLEGAL_STATE;
    s->capture = CAPTURE_ACTIVE;
    s->graph = std::make_unique<Graph>();
    return CUDA_SUCCESS;
}

API CUresult cuStreamEndCapture(void* stream, void** graph) {
    LOCK;
    if (!graph) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(true)) return r;
    Stream* s = find_stream(stream);
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    if (s->capture == CAPTURE_NONE) return CUDA_ERROR_ILLEGAL_STATE;
    const bool invalidated = s->capture == CAPTURE_INVALIDATED;
    s->capture = CAPTURE_NONE;
    std::unique_ptr<Graph> captured = std::move(s->graph);
    if (invalidated) {
        *graph = nullptr;
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *graph = handle_of(driver().graphs, std::move(captured));
    return CUDA_SUCCESS;
}

API CUresult cuStreamIsCapturing(void* stream, int* status) {
    LOCK;
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(true)) return r;
    Stream* s = find_stream(stream);
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    *status = s->capture;
    return CUDA_SUCCESS;
}

API CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long flags) {
    LOCK;
    if (!exec) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(true)) return r;
    auto it = driver().graphs.find(graph);
    if (it == driver().graphs.end()) return CUDA_ERROR_INVALID_HANDLE;
    if (flags != 0) return report(CUDA_ERROR_NOT_SUPPORTED, "cuGraphInstantiateWithFlags: flags %llu are not "
                                  "implemented", flags);
    *exec = handle_of(driver().execs, std::make_unique<GraphExec>(GraphExec{it->second->ops}));
    return CUDA_SUCCESS;
}

API CUresult cuGraphLaunch(void* exec, void* stream) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    auto it = driver().execs.find(exec);
    if (it == driver().execs.end()) return CUDA_ERROR_INVALID_HANDLE;
    Stream* s = find_stream(stream);
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    if (s->capture != CAPTURE_NONE) {
        return report(CUDA_ERROR_NOT_SUPPORTED, "cuGraphLaunch into a capturing stream is not implemented");
    }
    for (const Op& op : it->second->ops) {
        if (op.kind != Op::Kind::Launch) continue;
        if (CUresult r = check_pointers("cuGraphLaunch", op)) return r;
    }
    for (const Op& op : it->second->ops) {
        run(op);
        if (driver().sticky != CUDA_SUCCESS) break;
    }
    return CUDA_SUCCESS;
}

API CUresult cuGraphExecDestroy(void* exec) {
    LOCK;
    return driver().execs.erase(exec) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

API CUresult cuGraphDestroy(void* graph) {
    LOCK;
    return driver().graphs.erase(graph) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

// The driver's private interfaces, which NVRTC asks for when it finds a libcuda.so.1 loaded:
// there are none here, so it works as it does on a machine without a driver.
API CUresult cuGetExportTable(const void** table, const void* /*uuid*/) {
    if (!table) return CUDA_ERROR_INVALID_VALUE;
    *table = nullptr;
    return CUDA_ERROR_NOT_SUPPORTED;
}

// Events, which cudarc uses when its per-buffer tracking is on: with work done when queued,
// an event is complete as soon as it is recorded.
API CUresult cuEventCreate(void** event, unsigned int flags) {
    LOCK;
    if (!event || flags > 0xf) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = ready(true)) return r;
    static std::uintptr_t issued = 0;
    *event = reinterpret_cast<void*>(++issued);
    driver().events[*event] = false;
    return CUDA_SUCCESS;
}

API CUresult cuEventRecord(void* event, void* stream) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    if (!driver().events.count(event) || !find_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    if (capturing(stream)) return report(CUDA_ERROR_NOT_SUPPORTED, "cuEventRecord inside a capture is not implemented");
    driver().events[event] = true;
    return CUDA_SUCCESS;
}

API CUresult cuEventSynchronize(void* event) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    return driver().events.count(event) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

API CUresult cuEventQuery(void* event) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    return driver().events.count(event) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

API CUresult cuStreamWaitEvent(void* stream, void* event, unsigned int flags) {
    LOCK;
    if (CUresult r = ready(true)) return r;
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    return driver().events.count(event) && find_stream(stream) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

API CUresult cuEventDestroy_v2(void* event) {
    LOCK;
    return driver().events.erase(event) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

// The rest of what cudarc's driver API binds: present, so that a call reaches a message
// naming it instead of cudarc's missing-symbol panic, and never silently successful.
#define NOT_IMPLEMENTED(name) \
    API CUresult name() { return report(CUDA_ERROR_NOT_SUPPORTED, #name " is not implemented"); }
NOT_IMPLEMENTED(cuCtxCreate_v3)
NOT_IMPLEMENTED(cuCtxCreate_v4)
NOT_IMPLEMENTED(cuCtxDestroy_v2)
NOT_IMPLEMENTED(cuCtxGetCacheConfig)
NOT_IMPLEMENTED(cuCtxGetLimit)
NOT_IMPLEMENTED(cuCtxGetStreamPriorityRange)
NOT_IMPLEMENTED(cuCtxSetCacheConfig)
NOT_IMPLEMENTED(cuCtxSetFlags)
NOT_IMPLEMENTED(cuCtxSetLimit)
NOT_IMPLEMENTED(cuDeviceGetDefaultMemPool)
NOT_IMPLEMENTED(cuDeviceGetMemPool)
NOT_IMPLEMENTED(cuDeviceGetUuid)
NOT_IMPLEMENTED(cuDeviceGetUuid_v2)
NOT_IMPLEMENTED(cuDeviceSetMemPool)
NOT_IMPLEMENTED(cuEventElapsedTime)
NOT_IMPLEMENTED(cuEventElapsedTime_v2)
NOT_IMPLEMENTED(cuFuncGetAttribute)
NOT_IMPLEMENTED(cuFuncSetAttribute)
NOT_IMPLEMENTED(cuFuncSetCacheConfig)
NOT_IMPLEMENTED(cuGraphUpload)
NOT_IMPLEMENTED(cuLaunchCooperativeKernel)
NOT_IMPLEMENTED(cuMemAdvise_v2)
NOT_IMPLEMENTED(cuMemAllocFromPoolAsync)
NOT_IMPLEMENTED(cuMemAllocManaged)
NOT_IMPLEMENTED(cuMemFreeHost)
NOT_IMPLEMENTED(cuMemHostAlloc)
NOT_IMPLEMENTED(cuMemPoolCreate)
NOT_IMPLEMENTED(cuMemPoolDestroy)
NOT_IMPLEMENTED(cuMemPoolGetAttribute)
NOT_IMPLEMENTED(cuMemPoolSetAttribute)
NOT_IMPLEMENTED(cuMemPoolTrimTo)
NOT_IMPLEMENTED(cuMemPrefetchAsync_v2)
NOT_IMPLEMENTED(cuMemcpyDtoDAsync_v2)
NOT_IMPLEMENTED(cuMemcpyDtoD_v2)
NOT_IMPLEMENTED(cuMemcpyPeerAsync)
NOT_IMPLEMENTED(cuMemsetD8_v2)
NOT_IMPLEMENTED(cuModuleGetGlobal_v2)
NOT_IMPLEMENTED(cuModuleLoad)
NOT_IMPLEMENTED(cuOccupancyAvailableDynamicSMemPerBlock)
NOT_IMPLEMENTED(cuOccupancyMaxActiveBlocksPerMultiprocessor)
NOT_IMPLEMENTED(cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags)
NOT_IMPLEMENTED(cuOccupancyMaxPotentialBlockSize)
NOT_IMPLEMENTED(cuOccupancyMaxPotentialBlockSizeWithFlags)
NOT_IMPLEMENTED(cuStreamAttachMemAsync)
NOT_IMPLEMENTED(cuStreamCreateWithPriority)
NOT_IMPLEMENTED(cuPointerGetAttribute)
NOT_IMPLEMENTED(cuPointerGetAttributes)
