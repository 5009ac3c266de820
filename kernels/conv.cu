// Stride-1 convolutions with zero padding as implicit GEMMs: the im2col matrix is never
// stored, each tile loader computes the input pixel a (row, column) of it stands for.
//
// All three products share one shared-memory tiled core, `gemm_tile`, over a "problem"
// that says how to read A (M x K) and B (K x N):
//   forward          y[co][pix]  = sum_k W[co][k]  * im2col(x)[k][pix]      M=c_out, K=c_in*kk
//   backward data    dx[ci][pix] = sum_k W'[ci][k] * im2col'(dy)[k][pix]    M=c_in,  K=c_out*kk
//   backward filter  dW[co][k]   = sum_p dy[co][p] * im2col(x)[k][p]        M=c_out, N=c_in*kk
// where `pix`/`p` run over batch x output plane and kk = kernel^2.
//
// Each product can split its reduction: blockIdx.z takes `split_len` of the K terms and
// writes its partial product to slice z of its output, and `sum_splits` adds the slices in
// a fixed order (deterministic, unlike atomics). At batch 64 a layer is only tens of tiles,
// too few to fill a large GPU, and a tile's K loop is a long chain of dependent loads and
// barriers: splitting the loop is what gives the GPU enough independent blocks.
#include "common.cuh"

// A block computes a (ROWS * TILE_M) x TILE_N tile of the output with TILE_THREADS threads:
// thread (ty, tx) owns rows ty, ty + TILE_M, ... (ROWS of them, 1 or 2: the host takes 2 when
// M is above TILE_M, so that each staged element of B, the costly one to load, serves 32
// rows instead of 16) and the TILE_COLS consecutive columns from TILE_COLS * tx, which it
// reads from a staged B row in one vector load of shared memory.
// The tile sizes come from src/backend/cuda/tiles.rs, as -D flags.
#if !defined(TILE_M) || !defined(TILE_N) || !defined(TILE_K) || !defined(TILE_THREADS) || !defined(MAX_THREAD_ROWS)
#error "conv.cu needs TILE_M, TILE_N, TILE_K, TILE_THREADS and MAX_THREAD_ROWS from src/backend/cuda/tiles.rs"
#endif
#define TILE_COLS (TILE_N / 16)
static_assert(TILE_THREADS == TILE_M * 16, "one thread per row and 16th of the columns");
static_assert(TILE_COLS == 4, "a thread's columns are one float4 of a staged B row");
static_assert(TILE_K * TILE_M == TILE_THREADS, "the A stage loads one element per thread and row group");
static_assert(TILE_K * TILE_N % TILE_THREADS == 0, "the B stage loads whole rounds of threads");
static_assert(MAX_THREAD_ROWS == 2, "the kernels instantiate 1 and 2 rows a thread");

// The geometry, with the kernel side as a template parameter: SIDE is 1, 3 or 5 where the
// network uses them, so that the im2col index arithmetic divides by constants (a multiply
// and a shift) instead of running integer division; SIDE = 0 takes `kernel` at run time.
template <int SIDE>
struct ConvGeom {
    int batch, c_in, c_out, height, width, kernel_, pad, h_out, w_out;
    __device__ int kernel() const { return SIDE > 0 ? SIDE : kernel_; }
};

template <int SIDE>
__device__ __forceinline__ ConvGeom<SIDE> make_geom(int batch, int c_in, int c_out, int height, int width,
                                                    int kernel, int pad) {
    ConvGeom<SIDE> g = {batch, c_in, c_out, height, width, kernel, pad, height + 2 * pad + 1 - kernel,
                        width + 2 * pad + 1 - kernel};
    return g;
}

// Calls LAUNCH(SIDE, ROWS) with SIDE fixed to `kernel` where it is 1, 3 or 5, else 0, and
// ROWS to `rows`.
#define WITH_SIDE_ROWS(kernel, rows, LAUNCH)          \
    switch (kernel * 4 + rows) {                      \
        case 1 * 4 + 1: LAUNCH(1, 1); break;          \
        case 1 * 4 + 2: LAUNCH(1, 2); break;          \
        case 3 * 4 + 1: LAUNCH(3, 1); break;          \
        case 3 * 4 + 2: LAUNCH(3, 2); break;          \
        case 5 * 4 + 1: LAUNCH(5, 1); break;          \
        case 5 * 4 + 2: LAUNCH(5, 2); break;          \
        default:                                      \
            if (rows == 1) {                          \
                LAUNCH(0, 1);                         \
            } else {                                  \
                LAUNCH(0, 2);                         \
            }                                         \
    }

// A filter tap index t = (c, ky, kx), c the channel: with SIDE fixed, its divisions are by
// constants.
struct Tap {
    int c, ky, kx;
};

template <int SIDE>
__device__ __forceinline__ Tap tap(const ConvGeom<SIDE>& g, int t) {
    const int kernel = g.kernel(), kk = kernel * kernel, c = t / kk, r = t - c * kk, ky = r / kernel;
    return {c, ky, r - ky * kernel};
}

// A pixel index p = (img, y, x) over images of height x width planes: divisions by run-time
// sizes, which the loaders below do once per thread where p indexes B's columns, fixed for
// the whole reduction, and per element only where the reduction runs over pixels.
struct Pixel {
    int img, y, x;
};

__device__ __forceinline__ Pixel pixel(int p, int height, int width) {
    const int plane = height * width, img = p / plane, r = p - img * plane, y = r / width;
    return {img, y, r - y * width};
}

// Each problem reads A through a(row, k) and B through b(col, k), where `col` is what a
// thread works out once about its column of B (`col(n)`), since a thread loads the same
// column at every step of the reduction.

// B = im2col(x): element (k, n) is x[img][ci][oy + ky - pad][ox + kx - pad] with
// k = (ci, ky, kx) and n = (img, oy, ox), or 0 in the padding.
template <int SIDE>
struct ForwardProblem {
    ConvGeom<SIDE> g;
    const float* x;
    const float* w;
    int m, n, k;
    struct Col {
        const float* image;
        int y, x;  // the output pixel, less the padding: its input window's corner
    };
    __device__ float a(int row, int col) const { return w[row * k + col]; }
    __device__ Col col(int n) const {
        const Pixel q = pixel(n, g.h_out, g.w_out);
        return {x + (size_t)q.img * g.c_in * g.height * g.width, q.y - g.pad, q.x - g.pad};
    }
    __device__ float b(const Col& c, int row) const {
        const Tap t = tap(g, row);
        const int iy = c.y + t.ky, ix = c.x + t.kx;
        if (iy < 0 || iy >= g.height || ix < 0 || ix >= g.width) return 0.0f;
        return c.image[(t.c * g.height + iy) * g.width + ix];
    }
};

// dx[img][ci][iy][ix] = sum over (co, ky, kx) of W[co][ci][ky][kx] * dy[img][co][iy+pad-ky][ix+pad-kx].
template <int SIDE>
struct BackwardDataProblem {
    ConvGeom<SIDE> g;
    const float* dy;
    const float* w;
    int m, n, k;
    struct Col {
        const float* image;
        int y, x;  // the input pixel, plus the padding
    };
    __device__ float a(int ci, int col) const {
        const Tap t = tap(g, col);
        return w[((t.c * g.c_in + ci) * g.kernel() + t.ky) * g.kernel() + t.kx];
    }
    __device__ Col col(int n) const {
        const Pixel q = pixel(n, g.height, g.width);
        return {dy + (size_t)q.img * g.c_out * g.h_out * g.w_out, q.y + g.pad, q.x + g.pad};
    }
    __device__ float b(const Col& c, int row) const {
        const Tap t = tap(g, row);
        const int oy = c.y - t.ky, ox = c.x - t.kx;
        if (oy < 0 || oy >= g.h_out || ox < 0 || ox >= g.w_out) return 0.0f;
        return c.image[(t.c * g.h_out + oy) * g.w_out + ox];
    }
};

// The reduction runs over output pixels p; B is im2col(x) transposed, its columns the taps.
template <int SIDE>
struct BackwardFilterProblem {
    ConvGeom<SIDE> g;
    const float* x;
    const float* dy;
    int m, n, k;
    using Col = Tap;
    __device__ float a(int co, int p) const {
        const Pixel q = pixel(p, g.h_out, g.w_out);
        return dy[((q.img * g.c_out + co) * g.h_out + q.y) * g.w_out + q.x];
    }
    __device__ Col col(int n) const { return tap(g, n); }
    __device__ float b(const Col& t, int p) const {
        const Pixel q = pixel(p, g.h_out, g.w_out);
        const int iy = q.y + t.ky - g.pad, ix = q.x + t.kx - g.pad;
        if (iy < 0 || iy >= g.height || ix < 0 || ix >= g.width) return 0.0f;
        return x[((q.img * g.c_in + t.c) * g.height + iy) * g.width + ix];
    }
};

// One K step's staged tiles. Each kernel declares it once and hands it down, so that its
// instantiations share one block's worth of shared memory.
struct Stage {
    float a[TILE_K][MAX_THREAD_ROWS * TILE_M];
    alignas(16) float b[TILE_K][TILE_N];
};

// Accumulates rows m0.. and columns n0.. of A[:, k_begin:k_end] * B[k_begin:k_end, :] into
// `acc`, row r of a thread's being its row ty + r * TILE_M. When `row_sum` is set, thread
// tx == 0 also sums its rows of A (the bias gradient is the row sum of dy), reusing the
// staged tile instead of a second pass over dy.
template <int ROWS, class Problem>
__device__ void gemm_tile(const Problem& p, Stage& stage, int m0, int n0, int k_begin, int k_end,
                          float (&acc)[ROWS][TILE_COLS], float (*row_sum)[ROWS]) {
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    // This thread's column of the B stage, the same at every step.
    const int nn = tid % TILE_N, n = n0 + nn;
    const bool n_inside = n < p.n;
    const typename Problem::Col col = p.col(n);
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        // Consecutive threads read consecutive k of A and consecutive columns of B: the
        // contiguous direction of W, dy and x in each problem.
        for (int r = 0; r < ROWS; ++r) {
            const int kk = tid % TILE_K, mm = tid / TILE_K + r * TILE_M, k = k0 + kk, m = m0 + mm;
            stage.a[kk][mm] = (k < k_end && m < p.m) ? p.a(m, k) : 0.0f;
        }
        for (int i = 0; i < TILE_K * TILE_N / TILE_THREADS; ++i) {
            const int kk = tid / TILE_N + i * (TILE_THREADS / TILE_N), k = k0 + kk;
            stage.b[kk][nn] = (k < k_end && n_inside) ? p.b(col, k) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < TILE_K; ++kk) {
            for (int r = 0; r < ROWS; ++r) {
                const float a = stage.a[kk][ty + r * TILE_M];
                for (int j = 0; j < TILE_COLS; ++j) acc[r][j] += a * stage.b[kk][TILE_COLS * tx + j];
            }
        }
        if (row_sum && tx == 0) {
            for (int kk = 0; kk < TILE_K; ++kk) {
                for (int r = 0; r < ROWS; ++r) (*row_sum)[r] += stage.a[kk][ty + r * TILE_M];
            }
        }
        // The next iteration overwrites the tiles: wait until everyone is done reading.
        __syncthreads();
    }
}

// Row r of this thread's rows in the tile at row m0.
__device__ __forceinline__ int tile_row(int m0, int r) {
    return m0 + threadIdx.x / 16 + r * TILE_M;
}

// Calls out(row, column, value) for each of this thread's accumulated outputs that lies
// inside the m x n product.
template <int ROWS, class Out>
__device__ __forceinline__ void each_output(const float (&acc)[ROWS][TILE_COLS], int m0, int n0, int m, int n,
                                            Out out) {
    for (int r = 0; r < ROWS; ++r) {
        const int row = tile_row(m0, r);
        if (row >= m) return;
        for (int j = 0; j < TILE_COLS; ++j) {
            const int col = n0 + TILE_COLS * (threadIdx.x % 16) + j;
            if (col < n) out(row, col, acc[r][j]);
        }
    }
}

// The first row and column of a block's tile.
struct Corner {
    int m0, n0;
};

// Runs gemm_tile over this block's tile, (blockIdx.y, blockIdx.x), and its slice of the
// reduction, the `split_len` terms from blockIdx.z * split_len.
template <int ROWS, class Problem>
__device__ __forceinline__ Corner block_tile(const Problem& p, Stage& stage, int split_len,
                                             float (&acc)[ROWS][TILE_COLS], float (*row_sum)[ROWS]) {
    const Corner c = {(int)blockIdx.y * ROWS * TILE_M, (int)blockIdx.x * TILE_N};
    const int k_begin = blockIdx.z * split_len;
    gemm_tile<ROWS>(p, stage, c.m0, c.n0, k_begin, min(k_begin + split_len, p.k), acc, row_sum);
    return c;
}

template <int SIDE, int ROWS>
__device__ void forward(Stage& stage, const float* x, const float* w, const float* bias, float* y, int batch,
                        int c_in, int c_out, int height, int width, int kernel, int pad, int relu, int split_len) {
    const ConvGeom<SIDE> g = make_geom<SIDE>(batch, c_in, c_out, height, width, kernel, pad);
    const int plane = g.h_out * g.w_out;
    const ForwardProblem<SIDE> p = {g, x, w, c_out, batch * plane, c_in * kernel * kernel};
    float acc[ROWS][TILE_COLS] = {};
    const Corner c = block_tile<ROWS>(p, stage, split_len, acc, nullptr);
    float* slice = y + (size_t)blockIdx.z * c_out * p.n;
    each_output(acc, c.m0, c.n0, p.m, p.n, [&](int co, int n, float v) {
        v += blockIdx.z == 0 ? bias[co] : 0.0f;
        slice[(n / plane * c_out + co) * plane + n % plane] = relu ? fmaxf(v, 0.0f) : v;
    });
}

// y = conv(x, W) + b, ReLU fused when `relu`: the epilogue writes each output exactly once.
// Split (gridDim.z > 1), slice z of y's shape at y + z*|y| gets split z's partial sum, the
// bias in slice 0 alone, and the host passes relu = 0 (sum_splits applies it).
// Grid: (ceil(batch*h_out*w_out / TILE_N), ceil(c_out / (rows*TILE_M)), splits), TILE_THREADS threads.
extern "C" __global__ void conv2d_forward(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ bias, float* __restrict__ y, int batch,
                                          int c_in, int c_out, int height, int width, int kernel, int pad,
                                          int relu, int split_len, int rows) {
    __shared__ Stage stage;
#define FORWARD(SIDE, ROWS) \
    forward<SIDE, ROWS>(stage, x, w, bias, y, batch, c_in, c_out, height, width, kernel, pad, relu, split_len)
    WITH_SIDE_ROWS(kernel, rows, FORWARD)
#undef FORWARD
}

template <int SIDE, int ROWS>
__device__ void backward_data(Stage& stage, const float* dy, const float* w, float* dx, int batch, int c_in,
                              int c_out, int height, int width, int kernel, int pad, int accumulate, int split_len) {
    const ConvGeom<SIDE> g = make_geom<SIDE>(batch, c_in, c_out, height, width, kernel, pad);
    const int plane = height * width;
    const BackwardDataProblem<SIDE> p = {g, dy, w, c_in, batch * plane, c_out * kernel * kernel};
    float acc[ROWS][TILE_COLS] = {};
    const Corner c = block_tile<ROWS>(p, stage, split_len, acc, nullptr);
    float* slice = dx + (size_t)blockIdx.z * c_in * p.n;
    each_output(acc, c.m0, c.n0, p.m, p.n, [&](int ci, int n, float v) {
        float* out = slice + (n / plane * c_in + ci) * plane + n % plane;
        *out = accumulate ? *out + v : v;
    });
}

// dx (+)= conv_transpose(dy, W). Split, slice z of dx's shape at dx + z*|dx| gets split z's
// partial sum and the host passes accumulate = 0 (sum_splits accumulates).
// Grid: (ceil(batch*height*width / TILE_N), ceil(c_in / (rows*TILE_M)), splits).
extern "C" __global__ void conv2d_backward_data(const float* __restrict__ dy, const float* __restrict__ w,
                                                float* __restrict__ dx, int batch, int c_in, int c_out,
                                                int height, int width, int kernel, int pad, int accumulate,
                                                int split_len, int rows) {
    __shared__ Stage stage;
#define BACKWARD_DATA(SIDE, ROWS) \
    backward_data<SIDE, ROWS>(stage, dy, w, dx, batch, c_in, c_out, height, width, kernel, pad, accumulate, split_len)
    WITH_SIDE_ROWS(kernel, rows, BACKWARD_DATA)
#undef BACKWARD_DATA
}

template <int SIDE, int ROWS>
__device__ void backward_filter(Stage& stage, const float* x, const float* dy, float* partials, int batch,
                                int c_in, int c_out, int height, int width, int kernel, int pad, int split_len) {
    const ConvGeom<SIDE> g = make_geom<SIDE>(batch, c_in, c_out, height, width, kernel, pad);
    const int patch = c_in * kernel * kernel, pixels = batch * g.h_out * g.w_out;
    const BackwardFilterProblem<SIDE> p = {g, x, dy, c_out, patch, pixels};
    float acc[ROWS][TILE_COLS] = {};
    float bias_sums[ROWS] = {};
    const Corner c = block_tile<ROWS>(p, stage, split_len, acc, blockIdx.x == 0 ? &bias_sums : nullptr);
    float* partial = partials + (size_t)blockIdx.z * (c_out * patch + c_out);
    each_output(acc, c.m0, c.n0, p.m, p.n, [&](int co, int n, float v) { partial[co * patch + n] = v; });
    if (blockIdx.x == 0 && threadIdx.x % 16 == 0) {
        for (int r = 0; r < ROWS; ++r) {
            const int co = tile_row(c.m0, r);
            if (co < c_out) partial[c_out * patch + co] = bias_sums[r];
        }
    }
}

// Weight and bias gradient, [dW | db]: the reduction (batch x output plane, up to ~37k
// terms) is much longer than the output (c_out x c_in*kk, a few thousand), so it is split
// nearly always; slice z of `partials` gets split z's [dW | db].
// Grid: (ceil(c_in*kk / TILE_N), ceil(c_out / (rows*TILE_M)), splits).
extern "C" __global__ void conv2d_backward_filter(const float* __restrict__ x, const float* __restrict__ dy,
                                                  float* __restrict__ partials, int batch, int c_in, int c_out,
                                                  int height, int width, int kernel, int pad, int split_len,
                                                  int rows) {
    __shared__ Stage stage;
#define BACKWARD_FILTER(SIDE, ROWS) \
    backward_filter<SIDE, ROWS>(stage, x, dy, partials, batch, c_in, c_out, height, width, kernel, pad, split_len)
    WITH_SIDE_ROWS(kernel, rows, BACKWARD_FILTER)
#undef BACKWARD_FILTER
}

// out[i] = act(sum over s of partials[s * len + i], plus out[i] when `accumulate`), ReLU when
// `relu`. `lanes` threads (a power of two dividing the block) share each element: lane l
// sums splits l, l + lanes, ... in order, then lane 0 adds the lanes' sums in order, so the
// result does not depend on scheduling, and a long list of splits is read `lanes` at a time.
extern "C" __global__ void sum_splits(const float* __restrict__ partials, float* __restrict__ out, int splits,
                                      int len, int lanes, int accumulate, int relu) {
    DYNAMIC_SHARED(float, lane_sums);
    const int per_block = blockDim.x / lanes, lane = threadIdx.x / per_block, e = threadIdx.x % per_block;
    for (int base = blockIdx.x * per_block; base < len; base += gridDim.x * per_block) {
        const int i = base + e;
        float v = 0.0f;
        if (i < len) {
            for (int s = lane; s < splits; s += lanes) v += partials[(size_t)s * len + i];
        }
        lane_sums[threadIdx.x] = v;
        __syncthreads();
        if (lane == 0 && i < len) {
            float total = accumulate ? out[i] : 0.0f;
            for (int l = 0; l < lanes; ++l) total += lane_sums[l * per_block + e];
            out[i] = relu ? fmaxf(total, 0.0f) : total;
        }
        // The next round overwrites lane_sums.
        __syncthreads();
    }
}
