// A fused Adam / AdamW step over many parameter tensors in one launch (a list of pointers).
//
//   adamw_step<T>(params, grads, exp_avg, exp_avg_sq, chunk_tensor, chunk_start, sizes,
//                 n_chunks, chunk, lr, beta1, beta2, eps, weight_decay, decoupled, bias_c1,
//                 bias_c2)
//       decoupled = 1 (AdamW): p <- p (1 - lr wd)     decoupled = 0 (Adam): g <- g + wd p
//       m <- m + (1 - beta1) (g - m)                     (PyTorch's lerp form)
//       v <- beta2 v + (1 - beta2) g^2
//       p <- p - lr / bias_c1 * m / (sqrt(v) / sqrt(bias_c2) + eps)
//   with bias_c1 = 1 - beta1^t and bias_c2 = 1 - beta2^t computed by the caller for step t.
//   params, grads, exp_avg, exp_avg_sq: device arrays of n_tensors pointers; sizes: n_tensors
//   element counts. Every tensor in one launch shares T and the hyperparameters (one launch per
//   parameter group and dtype).
//
// Work split: the tensors are cut into chunks of `chunk` elements; block k handles chunk k,
// whose tensor index and first element the host tabulated once (chunk_tensor, chunk_start), so no
// thread searches for its tensor. Within a chunk threads stride by blockDim.x (coalesced).
// Each element is read 4 times and written 3 times; nothing else touches memory.
//
// Must match: Adam._update in tinygrad_llm/optim/adam.py (the optimizer keeps each parameter
// group in one flat bucket, so there a launch sees a single tensor; the list form serves callers
// with separate arrays).
#include "common.cuh"

using namespace tgl;

template <typename T>
__global__ void adamw_step(T* const* __restrict__ params, const T* const* __restrict__ grads,
                           T* const* __restrict__ exp_avg, T* const* __restrict__ exp_avg_sq,
                           const int* __restrict__ chunk_tensor,
                           const long long* __restrict__ chunk_start,
                           const long long* __restrict__ sizes, int n_chunks, int chunk, T lr,
                           T beta1, T beta2, T eps, T weight_decay, int decoupled, T bias_c1,
                           T bias_c2) {
    const T decay = decoupled ? T(1) - lr * weight_decay : T(1);
    const T l2 = decoupled ? T(0) : weight_decay;
    const T step = lr / bias_c1;
    const T sqrt_c2 = sqrt_(bias_c2);
    for (int k = blockIdx.x; k < n_chunks; k += gridDim.x) {
        const int t = chunk_tensor[k];
        const long long start = chunk_start[k];
        const long long end = min(sizes[t], start + (long long)chunk);
        T* p = params[t];
        const T* g = grads[t];
        T* m = exp_avg[t];
        T* v = exp_avg_sq[t];
        for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
            const T pi = p[i] * decay;
            const T gi = g[i] + l2 * p[i];
            const T mi = m[i] + (T(1) - beta1) * (gi - m[i]);
            const T vi = beta2 * v[i] + (T(1) - beta2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = pi - step * mi / (sqrt_(vi) / sqrt_c2 + eps);
        }
    }
}

#ifndef __CUDACC_RTC__  // for nvcc's check and report; NVRTC builds only what name_expressions names
template __global__ void adamw_step<float>(float* const*, const float* const*, float* const*,
                                           float* const*, const int*, const long long*,
                                           const long long*, int, int, float, float, float, float,
                                           float, int, float, float);
template __global__ void adamw_step<double>(double* const*, const double* const*, double* const*,
                                            double* const*, const int*, const long long*,
                                            const long long*, int, int, double, double, double,
                                            double, double, int, double, double);
#endif
