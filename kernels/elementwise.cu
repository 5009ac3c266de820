// Element-wise ops: residual add + ReLU, ReLU backward, and the SGD update.
#include "common.cuh"

// y = relu(a + b): the residual join, fused so the sum is never stored.
extern "C" __global__ void add_relu(const float* __restrict__ a, const float* __restrict__ b,
                                    float* __restrict__ y, unsigned int n) {
    for (unsigned int i = global_index(); i < n; i += grid_stride()) {
        y[i] = fmaxf(a[i] + b[i], 0.0f);
    }
}

// dy *= (y > 0). Serves both plain ReLUs and the residual join, whose masked gradient flows
// unchanged into the skip and the branch.
extern "C" __global__ void relu_backward(const float* __restrict__ y, float* __restrict__ dy,
                                         unsigned int n) {
    for (unsigned int i = global_index(); i < n; i += grid_stride()) {
        if (!(y[i] > 0.0f)) dy[i] = 0.0f;
    }
}

// SGD with momentum over the flat parameter buffer, one launch for every layer (PyTorch
// semantics: the first step sets buf = g).
extern "C" __global__ void sgd_momentum(float* __restrict__ params, const float* __restrict__ grads,
                                        float* __restrict__ momentum, unsigned int n, float lr,
                                        float mu, unsigned int first) {
    for (unsigned int i = global_index(); i < n; i += grid_stride()) {
        const float m = first ? grads[i] : mu * momentum[i] + grads[i];
        momentum[i] = m;
        params[i] -= lr * m;
    }
}
