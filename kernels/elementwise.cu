// Element-wise ops: the residual joins, ReLU backward and scaling.
#include "common.cuh"

// y = alpha*a + beta*y, then ReLU when relu: the residual joins (fused, so the sum is never
// stored apart) and the gradient sums of their backward. beta = 0 never reads y, so a copy
// into a fresh buffer cannot pick up its NaNs.
extern "C" __global__ void axpby(float alpha, const float* __restrict__ a, float beta,
                                 float* __restrict__ y, unsigned int n, int relu) {
    for (unsigned int i = global_index(); i < n; i += grid_stride()) {
        float v = alpha * a[i];
        if (beta != 0.0f) v += beta * y[i];
        y[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// y *= alpha.
extern "C" __global__ void scale(float* __restrict__ y, unsigned int n, float alpha) {
    for (unsigned int i = global_index(); i < n; i += grid_stride()) {
        y[i] *= alpha;
    }
}

// dy *= (y > 0). Serves both plain ReLUs and the residual join relu(a + b), whose masked
// gradient flows unchanged into the skip and the branch.
extern "C" __global__ void relu_backward(const float* __restrict__ y, float* __restrict__ dy,
                                         unsigned int n) {
    for (unsigned int i = global_index(); i < n; i += grid_stride()) {
        if (!(y[i] > 0.0f)) dy[i] = 0.0f;
    }
}
