// bfloat16 for the kernels: a 16-bit storage type of our own (the upper half of an IEEE float),
// its conversions, and its 16-byte packs. Arithmetic happens in float: Acc<T>::type is the type a
// kernel computes in for storage type T (float for bf16, T itself otherwise), to_acc(x) converts
// a stored value to it and put(p, v) rounds a computed value into storage. For float and double
// both are the identity, so one kernel body serves all three instantiations.
//
// Conversions round to nearest even, like __float2bfloat16_rn; no CUDA header needed, and the host
// emulator (tests/kernel_emulator.cpp) runs the same code. NumPy's bfloat16 (ml_dtypes) has the
// same bits, so CuPy hands these kernels ml_dtypes arrays as they are.
#pragma once
#include "common.cuh"

namespace tgl {

struct bf16 { unsigned short bits; };

__device__ __forceinline__ float to_acc(bf16 x) { return __uint_as_float(unsigned(x.bits) << 16); }
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ bf16 to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{(unsigned short)((u >> 16) | 0x40u)};  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16{(unsigned short)(u >> 16)};
}
__device__ __forceinline__ void put(bf16* p, float v) { *p = to_bf16(v); }
__device__ __forceinline__ void put(float* p, float v) { *p = v; }
__device__ __forceinline__ void put(double* p, double v) { *p = v; }

template <typename E> struct Acc { using type = E; };
template <> struct Acc<bf16> { using type = float; };

// 16 bytes = 8 bf16, moved as one float4 whose bits are split into halves (the local array need
// not be 16-byte aligned; the global pointer is, as aligned16 checked).
template <> struct Pack<bf16> { static constexpr int N = 8; };
__device__ __forceinline__ void load_pack(const bf16* p, bf16* v) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    const unsigned w[4] = {__float_as_uint(f.x), __float_as_uint(f.y), __float_as_uint(f.z),
                           __float_as_uint(f.w)};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        v[2 * i].bits = (unsigned short)(w[i] & 0xffffu);
        v[2 * i + 1].bits = (unsigned short)(w[i] >> 16);
    }
}
__device__ __forceinline__ void store_pack(bf16* p, const bf16* v) {
    unsigned w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = unsigned(v[2 * i].bits) | (unsigned(v[2 * i + 1].bits) << 16);
    *reinterpret_cast<float4*>(p) = make_float4(__uint_as_float(w[0]), __uint_as_float(w[1]),
                                                __uint_as_float(w[2]), __uint_as_float(w[3]));
}

}  // namespace tgl
