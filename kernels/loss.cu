// Softmax cross-entropy and the fc layer's bias pieces (its products go through cuBLAS).
#include "common.cuh"

// One thread per example: the class count is small (10), so a row fits in registers.
// The target is smoothed as CrossEntropyLoss(label_smoothing) smooths it, (1 - e) * onehot
// + e / classes; e = 0 adds only exact zeros. Writes d(mean loss)/d(logits) =
// (softmax - target)/batch (the CPU backend's formula, term by term), then adds the block's loss sum
// and correct count to the device-side stats with one atomic each, so reading the running
// loss costs a copy only when it is printed. Launch with a block size that is a multiple of 32.
extern "C" __global__ void softmax_xent(const float* __restrict__ logits,
                                        const unsigned int* __restrict__ labels,
                                        float* __restrict__ dlogits, unsigned int batch,
                                        unsigned int classes, float smoothing,
                                        double* __restrict__ loss_sum,
                                        unsigned long long* __restrict__ correct) {
    __shared__ float warp_losses[WARP_SIZE];
    const unsigned int row = global_index();
    float loss = 0.0f;
    unsigned int hit = 0;
    if (row < batch) {
        const float* z = logits + (size_t)row * classes;
        float* dz = dlogits + (size_t)row * classes;
        const unsigned int label = labels[row];
        unsigned int arg = 0;
        float max = z[0];
        for (unsigned int c = 1; c < classes; ++c) {
            if (z[c] > max) {
                max = z[c];
                arg = c;
            }
        }
        float sum = 0.0f;
        for (unsigned int c = 0; c < classes; ++c) sum += expf(z[c] - max);
        const float spread = smoothing / (float)classes;
        for (unsigned int c = 0; c < classes; ++c) {
            dz[c] = expf(z[c] - max) / sum / (float)batch - spread / (float)batch;
        }
        dz[label] -= (1.0f - smoothing) / (float)batch;
        const float log_sum_exp = max + logf(sum);
        const float nll = log_sum_exp - z[label];
        float uniform = 0.0f;
        for (unsigned int c = 0; c < classes; ++c) uniform += log_sum_exp - z[c];
        loss = (1.0f - smoothing) * nll + spread * uniform;
        hit = arg == label;
    }
    // Every thread takes part in the reductions, including those past the batch.
    const float block_loss = block_sum(loss, warp_losses);
    const unsigned int block_hits = warp_sum_u32(hit);
    if (threadIdx.x == 0) atomicAdd(loss_sum, (double)block_loss);
    if (threadIdx.x % WARP_SIZE == 0 && block_hits) atomicAdd(correct, (unsigned long long)block_hits);
}

// y[r][c] += bias[c] over a row-major [rows, cols] matrix: the bias of `x * W^T` after sgemm.
extern "C" __global__ void add_bias_rows(float* __restrict__ y, const float* __restrict__ bias,
                                         unsigned int rows, unsigned int cols) {
    for (unsigned int i = global_index(); i < rows * cols; i += grid_stride()) {
        y[i] += bias[i % cols];
    }
}

// out[c] = sum over rows of m[r][c]: one block per column (the fc bias gradient, 10 columns).
// Dynamic shared memory holds one float per warp.
extern "C" __global__ void column_sums(const float* __restrict__ m, float* __restrict__ out,
                                       unsigned int rows, unsigned int cols) {
    DYNAMIC_SHARED(float, warp_sums);
    const unsigned int col = blockIdx.x;
    float v = 0.0f;
    for (unsigned int r = threadIdx.x; r < rows; r += blockDim.x) v += m[(size_t)r * cols + col];
    v = block_sum(v, warp_sums);
    if (threadIdx.x == 0) out[col] = v;
}
