// Batch assembly from the device-resident data set: the only per-step input is `start`.
#include "common.cuh"

// One block per example: gathers image `order[start + blockIdx.x]` from the uint8 data set
// into normalized floats `(p/255 - mean)/std` (the CPU backend's formula, bit for bit) and
// copies its label. Reading uint8 keeps the whole of MNIST (47 MB) resident on the device.
extern "C" __global__ void gather_batch(const unsigned char* __restrict__ images,
                                        const unsigned char* __restrict__ labels,
                                        const unsigned int* __restrict__ order, unsigned int start,
                                        unsigned int pixels, float mean, float std_dev,
                                        float* __restrict__ x, unsigned int* __restrict__ batch_labels) {
    const unsigned int example = order[start + blockIdx.x];
    const unsigned char* src = images + (size_t)example * pixels;
    float* dst = x + (size_t)blockIdx.x * pixels;
    for (unsigned int i = threadIdx.x; i < pixels; i += blockDim.x) {
        dst[i] = ((float)src[i] / 255.0f - mean) / std_dev;
    }
    if (threadIdx.x == 0) batch_labels[blockIdx.x] = labels[example];
}

// SplitMix64's output function (src/augment.rs: mix64).
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Draw `draw` of `example` in `epoch`, uniform in [0, 1) (src/augment.rs: uniform).
__device__ __forceinline__ double uniform_draw(unsigned long long seed, unsigned int epoch,
                                               unsigned int example, unsigned int draw) {
    const unsigned long long key =
        mix64(seed ^ mix64(((unsigned long long)epoch << 32) | (unsigned long long)example));
    const unsigned long long bits = mix64(key + (unsigned long long)(draw + 1) * 0x9e3779b97f4a7c15ull);
    return (double)(bits >> 11) * (1.0 / 9007199254740992.0);
}

// The u8 pixel (x, y) of a side x side image scaled to [0, 1], or 0 outside it.
__device__ __forceinline__ float pixel_or_zero(const unsigned char* src, int side, int x, int y) {
    return x >= 0 && x < side && y >= 0 && y < side ? (float)src[y * side + x] / 255.0f : 0.0f;
}

// gather_batch with torchvision's RandomAffine applied first, one block per example (the
// CPU backend's gather, after src/augment.rs). Each example's transform is drawn from the
// counter (seed, epoch, example): angle in [-degrees, degrees], translations in
// [-max_shift, max_shift] rounded half to even, scale in [scale_lo, scale_hi]. Every thread
// computes the same inverse matrix, in double as the host does, then bilinear samples with
// zero fill about the image centre, and normalizes.
extern "C" __global__ void gather_augmented(const unsigned char* __restrict__ images,
                                            const unsigned char* __restrict__ labels,
                                            const unsigned int* __restrict__ order,
                                            unsigned int start, int side, float mean,
                                            float std_dev, float* __restrict__ x,
                                            unsigned int* __restrict__ batch_labels,
                                            unsigned int seed_lo, unsigned int seed_hi,
                                            unsigned int epoch, float degrees, float max_shift,
                                            float scale_lo, float scale_hi) {
    const unsigned int example = order[start + blockIdx.x];
    const unsigned long long seed = ((unsigned long long)seed_hi << 32) | seed_lo;
    const double deg = degrees, shift = max_shift, lo = scale_lo, hi = scale_hi;
    const double angle = -deg + 2.0 * deg * uniform_draw(seed, epoch, example, 0);
    const double tx = rint(-shift + 2.0 * shift * uniform_draw(seed, epoch, example, 1));
    const double ty = rint(-shift + 2.0 * shift * uniform_draw(seed, epoch, example, 2));
    const double scale = lo + (hi - lo) * uniform_draw(seed, epoch, example, 3);
    const double rad = angle * (3.141592653589793 / 180.0);
    const double sn = sin(rad), cs = cos(rad);
    const double a = cs / scale, b = sn / scale, d = -sn / scale, e = cs / scale;
    const float m0 = (float)a, m1 = (float)b, m2 = (float)(a * -tx + b * -ty);
    const float m3 = (float)d, m4 = (float)e, m5 = (float)(d * -tx + e * -ty);

    const unsigned char* src = images + (size_t)example * side * side;
    float* dst = x + (size_t)blockIdx.x * side * side;
    const float centre = ((float)side - 1.0f) * 0.5f;
    for (int i = threadIdx.x; i < side * side; i += blockDim.x) {
        const float xc = (float)(i % side) - centre, yc = (float)(i / side) - centre;
        const float ix = m0 * xc + m1 * yc + m2 + centre, iy = m3 * xc + m4 * yc + m5 + centre;
        const float fx0 = floorf(ix), fy0 = floorf(iy);
        const float fx = ix - fx0, fy = iy - fy0;
        const int x0 = (int)fx0, y0 = (int)fy0;
        const float v = (1.0f - fx) * (1.0f - fy) * pixel_or_zero(src, side, x0, y0) +
                        fx * (1.0f - fy) * pixel_or_zero(src, side, x0 + 1, y0) +
                        (1.0f - fx) * fy * pixel_or_zero(src, side, x0, y0 + 1) +
                        fx * fy * pixel_or_zero(src, side, x0 + 1, y0 + 1);
        dst[i] = (v - mean) / std_dev;
    }
    if (threadIdx.x == 0) batch_labels[blockIdx.x] = labels[example];
}
