// 2x2 stride-2 max-pool over NCHW planes.
#include "common.cuh"

// One thread per output: keeps the first maximum in scan order, as PyTorch does, and its
// position within the input plane for the backward pass.
extern "C" __global__ void maxpool_forward(const float* __restrict__ x, float* __restrict__ y,
                                           unsigned int* __restrict__ argmax, unsigned int planes,
                                           unsigned int height, unsigned int width) {
    const unsigned int ho = height / 2, wo = width / 2, n = planes * ho * wo;
    for (unsigned int o = global_index(); o < n; o += grid_stride()) {
        const unsigned int plane = o / (ho * wo), oy = o / wo % ho, ox = o % wo;
        const float* in = x + (size_t)plane * height * width;
        const unsigned int top = 2 * oy * width + 2 * ox;
        const unsigned int candidates[3] = {top + 1, top + width, top + width + 1};
        unsigned int best = top;
        for (int c = 0; c < 3; ++c) {
            if (in[candidates[c]] > in[best]) best = candidates[c];
        }
        y[o] = in[best];
        argmax[o] = best;
    }
}

// One thread per input element, so every element is written (zero unless it was its window's
// arg-max; rows and columns an odd size leaves outside every window stay zero) without a
// separate clearing pass and without write conflicts.
extern "C" __global__ void maxpool_backward(const float* __restrict__ dy,
                                            const unsigned int* __restrict__ argmax,
                                            float* __restrict__ dx, unsigned int planes,
                                            unsigned int height, unsigned int width) {
    const unsigned int ho = height / 2, wo = width / 2, n = planes * height * width;
    for (unsigned int i = global_index(); i < n; i += grid_stride()) {
        const unsigned int plane = i / (height * width), within = i % (height * width);
        const unsigned int oy = within / width / 2, ox = within % width / 2;
        float g = 0.0f;
        if (oy < ho && ox < wo) {
            const size_t o = ((size_t)plane * ho + oy) * wo + ox;
            if (argmax[o] == within) g = dy[o];
        }
        dx[i] = g;
    }
}
