// The optimizer updates, one launch each over the flat parameter buffer, with torch.optim's
// semantics operation by operation (the CPU backend's sgd_step and adam_step).
#include "common.cuh"

// What changes from step to step, written into a device buffer before each step so that a
// captured step replays with the next step's values: `StepScalars` in src/backend/mod.rs.
struct StepScalars {
    float lr;
    float momentum;     // SGD's mu
    float first;        // SGD: 1 at the first step, whose buffer becomes the gradient
    float decay;        // AdamW: 1 - lr * weight_decay; 1 for Adam
    float lerp_weight;  // Adam: 1 - beta1
    float step_size;    // Adam: lr / (1 - beta1^t)
    float bias2_sqrt;   // Adam: sqrt(1 - beta2^t)
};

// torch.optim.SGD: g += wd * p; buf = mu * buf + g (buf = g at the first step);
// p -= lr * (nesterov ? g + mu * buf : buf).
extern "C" __global__ void sgd_step(float* __restrict__ params, const float* __restrict__ grads,
                                    float* __restrict__ momentum, unsigned int n,
                                    const float* __restrict__ scalars, float weight_decay,
                                    int nesterov) {
    const StepScalars s = *reinterpret_cast<const StepScalars*>(scalars);
    for (unsigned int i = global_index(); i < n; i += grid_stride()) {
        float g = grads[i];
        if (weight_decay != 0.0f) g = g + weight_decay * params[i];
        const float m = s.first != 0.0f ? g : s.momentum * momentum[i] + g;
        momentum[i] = m;
        params[i] -= s.lr * (nesterov ? g + s.momentum * m : m);
    }
}

// torch.optim.Adam (l2 = its weight decay) and AdamW (decay = 1 - lr * wd, l2 = 0):
// m = lerp(m, g, 1 - beta1); v = beta2 * v + (1 - beta2) * g * g;
// p += -step_size * m / (sqrt(v) / bias2_sqrt + eps).
extern "C" __global__ void adam_step(float* __restrict__ params, const float* __restrict__ grads,
                                     float* __restrict__ m1, float* __restrict__ m2, unsigned int n,
                                     const float* __restrict__ scalars, float beta2,
                                     float one_minus_beta2, float eps, float l2) {
    const StepScalars s = *reinterpret_cast<const StepScalars*>(scalars);
    const float w = s.lerp_weight;
    for (unsigned int i = global_index(); i < n; i += grid_stride()) {
        float g = grads[i];
        const float p0 = params[i];
        if (l2 != 0.0f) g = g + l2 * p0;
        const float p = p0 * s.decay;
        float m = m1[i];
        // torch's lerp, exact at both ends.
        m = fabsf(w) < 0.5f ? m + w * (g - m) : g - (g - m) * (1.0f - w);
        const float v = m2[i] * beta2 + one_minus_beta2 * g * g;
        const float denom = sqrtf(v) / s.bias2_sqrt + eps;
        m1[i] = m;
        m2[i] = v;
        params[i] = p + -s.step_size * m / denom;
    }
}
