// GELU, elementwise over a contiguous array of n elements, forward and backward.
//
//   approximate = 1 (tanh):  y = x h,  h = 0.5 (1 + tanh u),  u = sqrt(2/pi) (x + 0.044715 x^3)
//                            dy/dx = h + 2 sqrt(2/pi) x h (1 - h) (1 + 3 * 0.044715 x^2)
//   approximate = 0 (erf):   y = 0.5 x (1 + erf(x / sqrt 2))
//                            dy/dx = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
//
//   gelu_forward<T>(x, y, n, approximate)
//   gelu_backward<T>(x, dy, dx, n, approximate)      dx = dy * dy/dx(x)
//
// T is the storage type: float, double, or tgl::bf16 (computed in float, see bf16.cuh).
//
// Work split: a grid-stride loop, each thread handling one 16-byte pack (4 floats / 2 doubles /
// 8 bf16) per step when every buffer is 16-byte aligned; the last n % pack elements (or all of them,
// when unaligned) go through the scalar loop. Pure bandwidth: 1 read + 1 write forward,
// 2 reads + 1 write backward; the backward recomputes tanh from x instead of saving it.
//
// Must match: gelu_tanh_forward_cpu / gelu_tanh_backward_cpu (approximate = 1) and
// gelu_exact_forward_cpu / gelu_exact_backward_cpu (approximate = 0) in tinygrad_llm/ops/activation.py,
// which evaluate h by the same formula as gelu_h below (one_over_one_plus_exp in ops/elementwise.py).
#include "common.cuh"
#include "bf16.cuh"

using namespace tgl;

// 0.5 (1 + tanh u) = 1 / (1 + exp(-2u)): the same number without the cancellation of 1 + tanh u
// near tanh u = -1 (x < -4 or so), where float32 would lose every digit; and 1 - tanh^2 u =
// 4 h (1 - h). exp(-2u) overflowing to inf gives h = 0, the right limit.
template <typename T> __device__ __forceinline__ T gelu_h(T x) {
    const T u = T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
    return T(1) / (T(1) + exp_(T(-2) * u));
}

template <typename T> __device__ __forceinline__ T gelu_y(T x, int approximate) {
    if (approximate) return x * gelu_h(x);
    return T(0.5) * x * (T(1) + erf_(x * T(0.7071067811865476)));
}

template <typename T> __device__ __forceinline__ T gelu_dydx(T x, int approximate) {
    if (approximate) {
        const T k = T(0.7978845608028654), c = T(0.044715);
        const T h = gelu_h(x);
        return h + T(2) * k * x * h * (T(1) - h) * (T(1) + T(3) * c * x * x);
    }
    return T(0.5) * (T(1) + erf_(x * T(0.7071067811865476))) +
           x * exp_(T(-0.5) * x * x) * T(0.3989422804014327);
}

template <typename T>
__global__ void gelu_forward(const T* __restrict__ x, T* __restrict__ y, long long n,
                             int approximate) {
    constexpr int P = Pack<T>::N;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long head = 0;  // elements done by the packed loop
    if (aligned16(x) && aligned16(y)) {
        head = n / P * P;
        for (long long i = tid * P; i < head; i += stride * P) {
            T v[P];
            load_pack(x + i, v);
#pragma unroll
            for (int k = 0; k < P; ++k) put(v + k, gelu_y(to_acc(v[k]), approximate));
            store_pack(y + i, v);
        }
    }
    for (long long i = head + tid; i < n; i += stride) put(y + i, gelu_y(to_acc(x[i]), approximate));
}

template <typename T>
__global__ void gelu_backward(const T* __restrict__ x, const T* __restrict__ dy,
                              T* __restrict__ dx, long long n, int approximate) {
    constexpr int P = Pack<T>::N;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long head = 0;
    if (aligned16(x) && aligned16(dy) && aligned16(dx)) {
        head = n / P * P;
        for (long long i = tid * P; i < head; i += stride * P) {
            T v[P], g[P];
            load_pack(x + i, v);
            load_pack(dy + i, g);
#pragma unroll
            for (int k = 0; k < P; ++k) put(v + k, to_acc(g[k]) * gelu_dydx(to_acc(v[k]), approximate));
            store_pack(dx + i, v);
        }
    }
    for (long long i = head + tid; i < n; i += stride)
        put(dx + i, to_acc(dy[i]) * gelu_dydx(to_acc(x[i]), approximate));
}

#ifndef __CUDACC_RTC__  // for nvcc's check and report; NVRTC builds only what name_expressions names
template __global__ void gelu_forward<float>(const float*, float*, long long, int);
template __global__ void gelu_forward<double>(const double*, double*, long long, int);
template __global__ void gelu_backward<float>(const float*, const float*, float*, long long, int);
template __global__ void gelu_backward<double>(const double*, const double*, double*, long long, int);
template __global__ void gelu_forward<bf16>(const bf16*, bf16*, long long, int);
template __global__ void gelu_backward<bf16>(const bf16*, const bf16*, bf16*, long long, int);
#endif
