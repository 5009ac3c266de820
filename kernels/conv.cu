// Stride-1 convolutions with zero padding as implicit GEMMs: the im2col matrix is never
// stored, each tile loader computes the input pixel a (row, column) of it stands for.
//
// All three products share one shared-memory tiled core, `gemm_tile`, over a "problem"
// that says how to read A (M x K) and B (K x N):
//   forward          y[co][pix]  = sum_k W[co][k]  * im2col(x)[k][pix]      M=c_out, K=c_in*kk
//   backward data    dx[ci][pix] = sum_k W'[ci][k] * im2col'(dy)[k][pix]    M=c_in,  K=c_out*kk
//   backward filter  dW[co][k]   = sum_p dy[co][p] * im2col(x)[k][p]        M=c_out, N=c_in*kk
// where `pix`/`p` run over batch x output plane and kk = kernel^2.
#include "common.cuh"

// A block computes a TILE_M x TILE_N tile of the output with TILE_THREADS threads: thread
// (ty, tx) owns row ty and columns tx, tx+16, tx+32, ..., so a warp's stores are runs of 16
// consecutive floats. Each K step stages TILE_K x TILE_M of A and TILE_K x TILE_N of B.
// The tile sizes come from src/backend/cuda/tiles.rs, as -D flags.
#if !defined(TILE_M) || !defined(TILE_N) || !defined(TILE_K) || !defined(TILE_THREADS)
#error "conv.cu needs TILE_M, TILE_N, TILE_K and TILE_THREADS from src/backend/cuda/tiles.rs"
#endif
#define TILE_COLS (TILE_N / 16)
static_assert(TILE_THREADS == TILE_M * 16, "one thread per row and 16th of the columns");
static_assert(TILE_K * TILE_M == TILE_THREADS, "the A stage loads one element per thread");
static_assert(TILE_K * TILE_N % TILE_THREADS == 0, "the B stage loads whole rounds of threads");

struct ConvGeom {
    int batch, c_in, c_out, height, width, kernel, pad, h_out, w_out;
};

__device__ __forceinline__ ConvGeom make_geom(int batch, int c_in, int c_out, int height, int width,
                                              int kernel, int pad) {
    ConvGeom g = {batch, c_in, c_out, height, width, kernel, pad, height + 2 * pad + 1 - kernel,
                  width + 2 * pad + 1 - kernel};
    return g;
}

// x[img][ci][oy + ky - pad][ox + kx - pad], or 0 in the padding: element (k, p) of im2col(x)
// with k = (ci, ky, kx) and p = (img, oy, ox).
__device__ __forceinline__ float im2col_at(const ConvGeom& g, const float* x, int k, int p) {
    const int kk = g.kernel * g.kernel, plane = g.h_out * g.w_out;
    const int ci = k / kk, ky = k % kk / g.kernel, kx = k % g.kernel;
    const int img = p / plane, oy = p % plane / g.w_out, ox = p % g.w_out;
    const int iy = oy + ky - g.pad, ix = ox + kx - g.pad;
    if (iy < 0 || iy >= g.height || ix < 0 || ix >= g.width) return 0.0f;
    return x[((img * g.c_in + ci) * g.height + iy) * g.width + ix];
}

struct ForwardProblem {
    ConvGeom g;
    const float* x;
    const float* w;
    int m, n, k;
    __device__ float a(int row, int col) const { return w[row * k + col]; }
    __device__ float b(int row, int col) const { return im2col_at(g, x, row, col); }
};

// dx[img][ci][iy][ix] = sum over (co, ky, kx) of W[co][ci][ky][kx] * dy[img][co][iy+pad-ky][ix+pad-kx].
struct BackwardDataProblem {
    ConvGeom g;
    const float* dy;
    const float* w;
    int m, n, k;
    __device__ float a(int ci, int col) const {
        const int kk = g.kernel * g.kernel;
        return w[(col / kk * g.c_in + ci) * kk + col % kk];
    }
    __device__ float b(int row, int p) const {
        const int kk = g.kernel * g.kernel, plane = g.height * g.width;
        const int co = row / kk, ky = row % kk / g.kernel, kx = row % g.kernel;
        const int img = p / plane, iy = p % plane / g.width, ix = p % g.width;
        const int oy = iy + g.pad - ky, ox = ix + g.pad - kx;
        if (oy < 0 || oy >= g.h_out || ox < 0 || ox >= g.w_out) return 0.0f;
        return dy[((img * g.c_out + co) * g.h_out + oy) * g.w_out + ox];
    }
};

// The reduction runs over output pixels p; B is im2col(x) transposed.
struct BackwardFilterProblem {
    ConvGeom g;
    const float* x;
    const float* dy;
    int m, n, k;
    __device__ float a(int co, int p) const {
        const int plane = g.h_out * g.w_out;
        return dy[(p / plane * g.c_out + co) * plane + p % plane];
    }
    __device__ float b(int p, int col) const { return im2col_at(g, x, col, p); }
};

// Accumulates rows m0.. and columns n0.. of A[:, k_begin:k_end] * B[k_begin:k_end, :] into
// `acc`. When `row_sum` is set, thread tx == 0 of each row also sums that row of A (the bias
// gradient is the row sum of dy), reusing the staged tile instead of a second pass over dy.
template <class Problem>
__device__ void gemm_tile(const Problem& p, int m0, int n0, int k_begin, int k_end, float (&acc)[TILE_COLS],
                          float* row_sum) {
    __shared__ float a_tile[TILE_K][TILE_M];
    __shared__ float b_tile[TILE_K][TILE_N];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        // Consecutive threads read consecutive k of A and consecutive columns of B: the
        // contiguous direction of W, dy and x in each problem.
        {
            const int kk = tid % TILE_K, mm = tid / TILE_K, k = k0 + kk, m = m0 + mm;
            a_tile[kk][mm] = (k < k_end && m < p.m) ? p.a(m, k) : 0.0f;
        }
        for (int i = 0; i < TILE_K * TILE_N / TILE_THREADS; ++i) {
            const int kk = tid / TILE_N + i * (TILE_THREADS / TILE_N), nn = tid % TILE_N;
            const int k = k0 + kk, n = n0 + nn;
            b_tile[kk][nn] = (k < k_end && n < p.n) ? p.b(k, n) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < TILE_K; ++kk) {
            const float a = a_tile[kk][ty];
            for (int j = 0; j < TILE_COLS; ++j) acc[j] += a * b_tile[kk][tx + 16 * j];
        }
        if (row_sum && tx == 0) {
            for (int kk = 0; kk < TILE_K; ++kk) *row_sum += a_tile[kk][ty];
        }
        // The next iteration overwrites the tiles: wait until everyone is done reading.
        __syncthreads();
    }
}

// y = conv(x, W) + b, ReLU fused when `relu`: the epilogue writes each output exactly once.
// Grid: (ceil(batch*h_out*w_out / TILE_N), ceil(c_out / TILE_M)), TILE_THREADS threads.
extern "C" __global__ void conv2d_forward(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ bias, float* __restrict__ y, int batch,
                                          int c_in, int c_out, int height, int width, int kernel, int pad,
                                          int relu) {
    const ConvGeom g = make_geom(batch, c_in, c_out, height, width, kernel, pad);
    const int plane = g.h_out * g.w_out;
    const ForwardProblem p = {g, x, w, c_out, batch * plane, c_in * kernel * kernel};
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
    float acc[TILE_COLS] = {};
    gemm_tile(p, m0, n0, 0, p.k, acc, nullptr);
    const int co = m0 + threadIdx.x / 16;
    if (co >= c_out) return;
    for (int j = 0; j < TILE_COLS; ++j) {
        const int n = n0 + threadIdx.x % 16 + 16 * j;
        if (n >= p.n) continue;
        const float v = acc[j] + bias[co];
        y[(n / plane * c_out + co) * plane + n % plane] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// dx (+)= conv_transpose(dy, W). Grid: (ceil(batch*height*width / TILE_N), ceil(c_in / TILE_M)).
extern "C" __global__ void conv2d_backward_data(const float* __restrict__ dy, const float* __restrict__ w,
                                                float* __restrict__ dx, int batch, int c_in, int c_out,
                                                int height, int width, int kernel, int pad, int accumulate) {
    const ConvGeom g = make_geom(batch, c_in, c_out, height, width, kernel, pad);
    const int plane = height * width;
    const BackwardDataProblem p = {g, dy, w, c_in, batch * plane, c_out * kernel * kernel};
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
    float acc[TILE_COLS] = {};
    gemm_tile(p, m0, n0, 0, p.k, acc, nullptr);
    const int ci = m0 + threadIdx.x / 16;
    if (ci >= c_in) return;
    for (int j = 0; j < TILE_COLS; ++j) {
        const int n = n0 + threadIdx.x % 16 + 16 * j;
        if (n >= p.n) continue;
        float* out = dx + (n / plane * c_in + ci) * plane + n % plane;
        *out = accumulate ? *out + acc[j] : acc[j];
    }
}

// Split-K weight and bias gradient. The reduction (batch x output plane, up to ~37k terms)
// is much longer than the output (c_out x c_in*kk, a few thousand), so blockIdx.z takes one
// slice of `split_len` pixels and writes its partial [dW | db] to `partials[z]`;
// `sum_splits` adds the slices in a fixed order, keeping the result deterministic.
// Grid: (ceil(c_in*kk / TILE_N), ceil(c_out / TILE_M), splits).
extern "C" __global__ void conv2d_backward_filter(const float* __restrict__ x, const float* __restrict__ dy,
                                                  float* __restrict__ partials, int batch, int c_in, int c_out,
                                                  int height, int width, int kernel, int pad, int split_len) {
    const ConvGeom g = make_geom(batch, c_in, c_out, height, width, kernel, pad);
    const int patch = c_in * kernel * kernel, pixels = batch * g.h_out * g.w_out;
    const BackwardFilterProblem p = {g, x, dy, c_out, patch, pixels};
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
    const int k_begin = blockIdx.z * split_len, k_end = min(k_begin + split_len, pixels);
    float acc[TILE_COLS] = {};
    float bias_sum = 0.0f;
    gemm_tile(p, m0, n0, k_begin, k_end, acc, blockIdx.x == 0 ? &bias_sum : nullptr);
    const int co = m0 + threadIdx.x / 16;
    if (co >= c_out) return;
    float* partial = partials + (size_t)blockIdx.z * (c_out * patch + c_out);
    for (int j = 0; j < TILE_COLS; ++j) {
        const int n = n0 + threadIdx.x % 16 + 16 * j;
        if (n < patch) partial[co * patch + n] = acc[j];
    }
    if (blockIdx.x == 0 && threadIdx.x % 16 == 0) partial[c_out * patch + co] = bias_sum;
}

// out[i] = sum over s of partials[s * len + i], in order s = 0, 1, ...
extern "C" __global__ void sum_splits(const float* __restrict__ partials, float* __restrict__ out, int splits,
                                      int len) {
    for (unsigned int i = global_index(); i < (unsigned int)len; i += grid_stride()) {
        float v = 0.0f;
        for (int s = 0; s < splits; ++s) v += partials[(size_t)s * len + i];
        out[i] = v;
    }
}
