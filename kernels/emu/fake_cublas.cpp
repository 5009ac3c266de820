// A CPU-backed libcublas.so.13 for tests, beside the fake driver (fake_driver.cpp): handles,
// streams, workspaces and cublasSgemm_v2, column-major with every transpose and leading
// dimension as the cuBLAS documentation defines them. Products are queued on the handle's
// stream as host functions (cuLaunchHostFunc), so they are ordered with kernels and are
// recorded by stream capture like the kernels cuBLAS launches on a GPU. The matrices must lie
// inside device allocations (checked through cuMemGetAddressRange_v2).
#include <cstdio>
#include <cstdint>
#include <memory>
#include <vector>

namespace {

// cuBLAS's values (cublas_api.h).
enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };

using CUdeviceptr = unsigned long long;

struct Gemm {
    bool trans_a, trans_b;
    int m, n, k;
    float alpha, beta;
    const float* a;
    int lda;
    const float* b;
    int ldb;
    float* c;
    int ldc;
};

struct Handle {
    void* stream = nullptr;
    // Argument blocks of queued products: a captured graph replays them, so they live as
    // long as the handle.
    std::vector<std::unique_ptr<Gemm>> queued;
};

}  // namespace

extern "C" int cuCtxGetCurrent(void** context);
extern "C" int cuLaunchHostFunc(void* stream, void (*fn)(void*), void* user_data);
extern "C" int cuMemGetAddressRange_v2(CUdeviceptr* base, std::size_t* size, CUdeviceptr address);

namespace {

cublasStatus_t report(cublasStatus_t status, const char* what) {
    std::fprintf(stderr, "fake libcublas: %s\n", what);
    return status;
}

// Column j of op(X) is row j of X when transposed: element (i, j) of op(X) with leading
// dimension ld.
float element(const float* x, bool trans, int ld, int i, int j) {
    return trans ? x[j + static_cast<std::size_t>(i) * ld] : x[i + static_cast<std::size_t>(j) * ld];
}

// C = alpha·op(A)·op(B) + beta·C; with beta = 0, C is written without being read.
void run_gemm(void* data) {
    const Gemm& g = *static_cast<const Gemm*>(data);
    for (int j = 0; j < g.n; ++j) {
        for (int i = 0; i < g.m; ++i) {
            float sum = 0.0f;
            for (int p = 0; p < g.k; ++p) sum += element(g.a, g.trans_a, g.lda, i, p) * element(g.b, g.trans_b, g.ldb, p, j);
            float& out = g.c[i + static_cast<std::size_t>(j) * g.ldc];
            out = g.beta == 0.0f ? g.alpha * sum : g.alpha * sum + g.beta * out;
        }
    }
}

// Whether a column-major rows × cols matrix with leading dimension ld lies in one allocation.
bool in_device_memory(const void* x, int rows, int cols, int ld) {
    if (rows == 0 || cols == 0) return true;
    const std::size_t bytes = (static_cast<std::size_t>(cols - 1) * ld + rows) * sizeof(float);
    CUdeviceptr base = 0;
    std::size_t size = 0;
    const auto address = reinterpret_cast<CUdeviceptr>(x);
    return cuMemGetAddressRange_v2(&base, &size, address) == 0 && address + bytes <= base + size;
}

bool op_valid(int op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

}  // namespace

#define API extern "C" __attribute__((visibility("default")))

API cublasStatus_t cublasCreate_v2(Handle** handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    void* context = nullptr;
    if (cuCtxGetCurrent(&context) != 0 || !context) {
        return report(CUBLAS_STATUS_NOT_INITIALIZED, "cublasCreate_v2: no current CUDA context");
    }
    *handle = new Handle;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasDestroy_v2(Handle* handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasSetStream_v2(Handle* handle, void* stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasGetStream_v2(Handle* handle, void** stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

// The documentation asks for a 256-byte aligned workspace; its size is the caller's choice.
API cublasStatus_t cublasSetWorkspace_v2(Handle* handle, void* workspace, std::size_t bytes) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (reinterpret_cast<std::uintptr_t>(workspace) % 256 != 0) {
        return report(CUBLAS_STATUS_INVALID_VALUE, "cublasSetWorkspace_v2: the workspace is not 256-byte aligned");
    }
    if (bytes > 0 && !in_device_memory(workspace, static_cast<int>(bytes / sizeof(float)), 1, 1)) {
        return report(CUBLAS_STATUS_INVALID_VALUE, "cublasSetWorkspace_v2: the workspace is not device memory");
    }
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasSgemm_v2(Handle* handle, int transa, int transb, int m, int n, int k, const float* alpha,
                                  const float* a, int lda, const float* b, int ldb, const float* beta, float* c,
                                  int ldc) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    const bool trans_a = transa != CUBLAS_OP_N, trans_b = transb != CUBLAS_OP_N;
    const int a_rows = trans_a ? k : m, b_rows = trans_b ? n : k;
    // The documented argument checks, in the documented terms.
    if (!op_valid(transa) || !op_valid(transb) || m < 0 || n < 0 || k < 0 || !alpha || !beta ||
        lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1)) {
        return report(CUBLAS_STATUS_INVALID_VALUE, "cublasSgemm_v2: invalid transpose, size or leading dimension");
    }
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    if (!in_device_memory(a, a_rows, trans_a ? m : k, lda) || !in_device_memory(b, b_rows, trans_b ? k : n, ldb) ||
        !in_device_memory(c, m, n, ldc)) {
        return report(CUBLAS_STATUS_EXECUTION_FAILED, "cublasSgemm_v2: a matrix reaches outside its allocation");
    }
    // The host pointer mode: alpha and beta are read now, not when the product runs.
    handle->queued.push_back(std::make_unique<Gemm>(Gemm{trans_a, trans_b, m, n, k, *alpha, *beta, a, lda, b, ldb, c, ldc}));
    if (cuLaunchHostFunc(handle->stream, run_gemm, handle->queued.back().get()) != 0) {
        handle->queued.pop_back();
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    return CUBLAS_STATUS_SUCCESS;
}

#define NOT_IMPLEMENTED(name) \
    API cublasStatus_t name() { return report(CUBLAS_STATUS_NOT_SUPPORTED, #name " is not implemented"); }
NOT_IMPLEMENTED(cublasDasum_v2)
NOT_IMPLEMENTED(cublasDgemmStridedBatched)
NOT_IMPLEMENTED(cublasDgemm_v2)
NOT_IMPLEMENTED(cublasDgemv_v2)
NOT_IMPLEMENTED(cublasGemmEx)
NOT_IMPLEMENTED(cublasGemmStridedBatchedEx)
NOT_IMPLEMENTED(cublasHgemm)
NOT_IMPLEMENTED(cublasHgemmStridedBatched)
NOT_IMPLEMENTED(cublasSasum_v2)
NOT_IMPLEMENTED(cublasSgemmStridedBatched)
NOT_IMPLEMENTED(cublasSgemv_v2)
