// Softmax over the last axis of a contiguous (n_rows, C) array, forward and backward.
//
//   softmax_forward<T>(x, y, n_rows, C)        y = exp(x - max x) / sum exp(x - max x)
//   softmax_backward<T>(y, dy, dx, n_rows, C)  dx = y * (dy - sum(y * dy))
//
// Work split: one block per row (gridDim.x = n_rows, blockDim.x a multiple of 32, at most 1024).
// Forward reads the row once to build the online (max, sum-of-exp) summary per thread, merges the
// summaries across the block (common.cuh), then reads the row again to write y: 2 reads + 1 write,
// the second read mostly from L1/L2. Backward: one block-wide sum of y * dy, then the write.
// Rows whose length is a multiple of the 16-byte pack (4 floats / 2 doubles) on 16-byte aligned
// buffers use float4/double2 loads; anything else takes the scalar loop.
//
// Must match: softmax_forward_ref / softmax_backward_ref in tinygrad_llm/ops/softmax.py.
#include "common.cuh"

using namespace tgl;

template <typename T>
__global__ void softmax_forward(const T* __restrict__ x, T* __restrict__ y, int n_rows, int C) {
    __shared__ T scratch[64];
    const int row = blockIdx.x;
    if (row >= n_rows) return;  // uniform per block: no thread is left waiting at a barrier
    const T* xr = x + (long long)row * C;
    T* yr = y + (long long)row * C;
    constexpr int P = Pack<T>::N;
    const bool vec = (C % P == 0) && aligned16(x) && aligned16(y);

    T m = neg_inf<T>(), s = T(0);
    if (vec) {
        for (int i = threadIdx.x * P; i < C; i += blockDim.x * P) {
            T v[P];
            load_pack(xr + i, v);
#pragma unroll
            for (int k = 0; k < P; ++k) online_add(m, s, v[k]);
        }
    } else {
        for (int i = threadIdx.x; i < C; i += blockDim.x) online_add(m, s, xr[i]);
    }
    block_online(m, s, scratch);
    const T inv = T(1) / s;

    if (vec) {
        for (int i = threadIdx.x * P; i < C; i += blockDim.x * P) {
            T v[P];
            load_pack(xr + i, v);
#pragma unroll
            for (int k = 0; k < P; ++k) v[k] = exp_(v[k] - m) * inv;
            store_pack(yr + i, v);
        }
    } else {
        for (int i = threadIdx.x; i < C; i += blockDim.x) yr[i] = exp_(xr[i] - m) * inv;
    }
}

template <typename T>
__global__ void softmax_backward(const T* __restrict__ y, const T* __restrict__ dy,
                                 T* __restrict__ dx, int n_rows, int C) {
    __shared__ T scratch[32];
    const int row = blockIdx.x;
    if (row >= n_rows) return;
    const long long off = (long long)row * C;
    const T* yr = y + off;
    const T* dyr = dy + off;
    T* dxr = dx + off;
    constexpr int P = Pack<T>::N;
    const bool vec = (C % P == 0) && aligned16(y) && aligned16(dy) && aligned16(dx);

    T dot = T(0);  // sum_j y_j dy_j: the Jacobian-vector product's shared term
    if (vec) {
        for (int i = threadIdx.x * P; i < C; i += blockDim.x * P) {
            T a[P], b[P];
            load_pack(yr + i, a);
            load_pack(dyr + i, b);
#pragma unroll
            for (int k = 0; k < P; ++k) dot += a[k] * b[k];
        }
    } else {
        for (int i = threadIdx.x; i < C; i += blockDim.x) dot += yr[i] * dyr[i];
    }
    dot = block_sum(dot, scratch);

    if (vec) {
        for (int i = threadIdx.x * P; i < C; i += blockDim.x * P) {
            T a[P], b[P];
            load_pack(yr + i, a);
            load_pack(dyr + i, b);
#pragma unroll
            for (int k = 0; k < P; ++k) a[k] = a[k] * (b[k] - dot);
            store_pack(dxr + i, a);
        }
    } else {
        for (int i = threadIdx.x; i < C; i += blockDim.x) dxr[i] = yr[i] * (dyr[i] - dot);
    }
}

// Instantiated here so `nvcc -c` checks both dtypes; CuPy finds them through name_expressions.
template __global__ void softmax_forward<float>(const float*, float*, int, int);
template __global__ void softmax_forward<double>(const double*, double*, int, int);
template __global__ void softmax_backward<float>(const float*, const float*, float*, int, int);
template __global__ void softmax_backward<double>(const double*, const double*, double*, int, int);
