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
