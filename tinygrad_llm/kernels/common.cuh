// Shared device helpers for the kernels in this folder: warp and block reductions, the
// online (max, sum-of-exp) merge used by softmax and cross-entropy, and 16-byte packed loads.
//
// Everything is templated on T = float or double so the GPU path can be gradient-checked in
// float64. Kernels include this file; CuPy compiles each .cu with this folder on the include
// path (see tinygrad_llm/cuda/runtime.py).
#pragma once

#ifndef __CUDACC_RTC__  // NVRTC (CuPy) has the vector types and math built in
#include <cuda_runtime.h>
#endif

namespace tgl {

constexpr unsigned FULL_MASK = 0xffffffffu;

// exp/log/sqrt/tanh/erf overloads that pick the float or double intrinsic; the float versions
// are the accurate ones (expf, not __expf), so the kernels agree with NumPy to a few ulp.
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
__device__ __forceinline__ float rsqrt_(float x) { return rsqrtf(x); }
__device__ __forceinline__ double rsqrt_(double x) { return rsqrt(x); }
__device__ __forceinline__ float sqrt_(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_(double x) { return sqrt(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
__device__ __forceinline__ float erf_(float x) { return erff(x); }
__device__ __forceinline__ double erf_(double x) { return erf(x); }

template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return -__longlong_as_double(0x7ff0000000000000LL);
}

// --- 16-byte packs: float4 / double2 ------------------------------------------------------------
// A pack is used only when every row starts on a 16-byte boundary (the caller checks the base
// pointers and that the row length is a multiple of the pack), so the loads are single
// 128-bit transactions.
template <typename T> struct Pack;
template <> struct Pack<float> { static constexpr int N = 4; };
template <> struct Pack<double> { static constexpr int N = 2; };

__device__ __forceinline__ void load_pack(const float* p, float* v) {
    float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}
__device__ __forceinline__ void load_pack(const double* p, double* v) {
    double2 q = *reinterpret_cast<const double2*>(p);
    v[0] = q.x; v[1] = q.y;
}
__device__ __forceinline__ void store_pack(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store_pack(double* p, const double* v) {
    *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
}

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}

// Dynamic shared memory (sized at launch), as a T array. The host emulator in tests/ supplies
// its own.
#ifndef TGL_HOST_EMULATION
template <typename T> __device__ __forceinline__ T* dynamic_smem() {
    extern __shared__ __align__(16) unsigned char tgl_smem[];
    return reinterpret_cast<T*>(tgl_smem);
}
#endif

// --- reductions ---------------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

template <typename T> __device__ __forceinline__ T warp_max(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the whole block; every thread gets the result. blockDim.x must be a multiple of 32
// (at most 1024); `scratch` holds 32 values. The trailing __syncthreads lets the caller reuse
// scratch right away.
template <typename T> __device__ __forceinline__ T block_sum(T v, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : T(0);
    v = warp_sum(v);
    __syncthreads();
    return v;
}

// --- online softmax statistics ------------------------------------------------------------------
// (m, s) summarises a set of values as its max m and s = sum exp(v - m). Two summaries merge
// exactly: m = max(m1, m2), s = s1 exp(m1 - m) + s2 exp(m2 - m). This is what lets softmax and
// cross-entropy find the max and the sum in ONE pass over a row (Milakov & Gimelshein, 2018).
// An empty summary is (-inf, 0); the guard keeps exp(-inf - -inf) = NaN out of it.
// A NaN value makes s NaN, and a NaN s stays NaN through every later add and merge (NaN times
// anything, plus anything), so a row holding a NaN gives NaN out, as NumPy does: every
// comparison with NaN is false, so without its own branch a NaN would be skipped silently.
template <typename T> __device__ __forceinline__ T rescale(T s, T m_old, T m_new) {
    return m_old == m_new ? s : s * exp_(m_old - m_new);
}

template <typename T> __device__ __forceinline__ void online_add(T& m, T& s, T v) {
    if (v > m) {
        s = rescale(s, m, v) + T(1);
        m = v;
    } else if (v > neg_inf<T>()) {
        s += exp_(v - m);
    } else if (v != v) {
        s = v;
    }
}

template <typename T> __device__ __forceinline__ void online_merge(T& m, T& s, T m2, T s2) {
    const T mn = max(m, m2);
    s = rescale(s, m, mn) + rescale(s2, m2, mn);
    m = mn;
}

template <typename T> __device__ __forceinline__ void warp_online(T& m, T& s) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const T m2 = __shfl_xor_sync(FULL_MASK, m, o);
        const T s2 = __shfl_xor_sync(FULL_MASK, s, o);
        online_merge(m, s, m2, s2);
    }
}

// Block-wide merge of every thread's (m, s); every thread gets the row's summary.
// scratch holds 64 values.
template <typename T> __device__ __forceinline__ void block_online(T& m, T& s, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    warp_online(m, s);
    if (lane == 0) { scratch[warp] = m; scratch[32 + warp] = s; }
    __syncthreads();
    m = lane < n_warps ? scratch[lane] : neg_inf<T>();
    s = lane < n_warps ? scratch[32 + lane] : T(0);
    warp_online(m, s);
    __syncthreads();
}

// The online (max, sum-of-exp) summary of one row of C values, merged over the block: every
// thread gets (m, s). Softmax and cross-entropy both start with this one pass over the row.
// vec: the row may be read in 16-byte packs (C a multiple of the pack, the buffer aligned).
// scratch holds 64 values.
template <typename T>
__device__ __forceinline__ void row_online_stats(const T* __restrict__ xr, int C, bool vec, T& m,
                                                 T& s, T* scratch) {
    constexpr int P = Pack<T>::N;
    m = neg_inf<T>();
    s = T(0);
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
}

}  // namespace tgl
