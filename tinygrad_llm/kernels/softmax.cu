// Softmax over the last axis of a contiguous (n_rows, C) array, forward and backward.
//
//   softmax_forward<T>(x, y, n_rows, C)        y = exp(x - max x) / sum exp(x - max x)
//   softmax_backward<T>(y, dy, dx, n_rows, C)  dx = y * (dy - sum(y * dy))
//
// Work split (long rows): one block per row (gridDim.x = n_rows, blockDim.x a multiple of 32, at most 1024).
// Forward reads the row once to build the online (max, sum-of-exp) summary per thread, merges the
// summaries across the block (common.cuh), then reads the row again to write y: 2 reads + 1 write,
// the second read mostly from L1/L2. Backward: one block-wide sum of y * dy, then the write.
// Rows whose length is a multiple of the 16-byte pack (4 floats / 2 doubles) on 16-byte aligned
// buffers use float4/double2 loads; anything else takes the scalar loop.
//
// Short rows (C <= 1024, attention-sized) take the warp kernels instead:
//   softmax_forward_warp<T, J>(x, y, n_rows, C), softmax_backward_warp<T, J>(y, dy, dx, n_rows, C)
// one warp per row, 8 rows per block, lane l holding elements l, l + 32, ..., l + 32 (J - 1) in
// registers (J = ceil(C / 32) rounded up to 1, 2, 4, 8, 16 or 32): the row is read from memory
// once, the max and the sum are two warp reductions with no __syncthreads, and the loads stay
// coalesced (consecutive lanes, consecutive addresses) with no alignment requirement.
//
// Must match: softmax_forward_cpu / softmax_backward_cpu in tinygrad_llm/ops/softmax.py.
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

    T m, s;
    row_online_stats(xr, C, vec, m, s, scratch);
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

template <typename T, int J>
__global__ void softmax_forward_warp(const T* __restrict__ x, T* __restrict__ y, int n_rows,
                                     int C) {
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= n_rows) return;  // whole warps leave together: only warp shuffles follow
    const int lane = threadIdx.x;
    const T* xr = x + (long long)row * C;
    T* yr = y + (long long)row * C;
    T v[J];
    T m = neg_inf<T>();
#pragma unroll
    for (int j = 0; j < J; ++j) {
        const int i = lane + 32 * j;
        v[j] = i < C ? xr[i] : neg_inf<T>();
        m = max(m, v[j]);
    }
    m = warp_max(m);
    T s = T(0);
#pragma unroll
    for (int j = 0; j < J; ++j) {
        // slots past the row end hold 0, not exp(-inf - m) (NaN when the row is all -inf)
        v[j] = lane + 32 * j < C ? exp_(v[j] - m) : T(0);
        s += v[j];
    }
    const T inv = T(1) / warp_sum(s);
#pragma unroll
    for (int j = 0; j < J; ++j) {
        const int i = lane + 32 * j;
        if (i < C) yr[i] = v[j] * inv;
    }
}

template <typename T, int J>
__global__ void softmax_backward_warp(const T* __restrict__ y, const T* __restrict__ dy,
                                      T* __restrict__ dx, int n_rows, int C) {
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= n_rows) return;
    const int lane = threadIdx.x;
    const long long off = (long long)row * C;
    T a[J], b[J];
    T dot = T(0);
#pragma unroll
    for (int j = 0; j < J; ++j) {
        const int i = lane + 32 * j;
        a[j] = i < C ? y[off + i] : T(0);
        b[j] = i < C ? dy[off + i] : T(0);
        dot += a[j] * b[j];
    }
    dot = warp_sum(dot);
#pragma unroll
    for (int j = 0; j < J; ++j) {
        const int i = lane + 32 * j;
        if (i < C) dx[off + i] = a[j] * (b[j] - dot);
    }
}

#ifndef __CUDACC_RTC__  // for nvcc's check and report; NVRTC builds only what name_expressions names
// Instantiated here so `nvcc -c` checks both dtypes; CuPy finds them through name_expressions.
template __global__ void softmax_forward<float>(const float*, float*, int, int);
template __global__ void softmax_forward<double>(const double*, double*, int, int);
template __global__ void softmax_backward<float>(const float*, const float*, float*, int, int);
template __global__ void softmax_backward<double>(const double*, const double*, double*, int, int);
#define TGL_SOFTMAX_WARP(T, J)                                                               \
    template __global__ void softmax_forward_warp<T, J>(const T*, T*, int, int);             \
    template __global__ void softmax_backward_warp<T, J>(const T*, const T*, T*, int, int);
TGL_SOFTMAX_WARP(float, 1) TGL_SOFTMAX_WARP(float, 2) TGL_SOFTMAX_WARP(float, 4)
TGL_SOFTMAX_WARP(float, 8) TGL_SOFTMAX_WARP(float, 16) TGL_SOFTMAX_WARP(float, 32)
TGL_SOFTMAX_WARP(double, 1) TGL_SOFTMAX_WARP(double, 2) TGL_SOFTMAX_WARP(double, 4)
TGL_SOFTMAX_WARP(double, 8) TGL_SOFTMAX_WARP(double, 16) TGL_SOFTMAX_WARP(double, 32)
#undef TGL_SOFTMAX_WARP
#endif
