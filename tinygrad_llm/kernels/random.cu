// Counter-based random numbers on the GPU: Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel
// random numbers: as easy as 1, 2, 3", SC 2011), the generator of cuRAND, PyTorch and JAX.
//
//   philox_uniform<T>(out, n, key0, key1, counter)   out[i] uniform in [0, 1)
//   philox_normal<T>(out, n, key0, key1, counter)    out[i] standard normal (Box-Muller)
//
// Element i is a pure function of (key, counter + i): the 128-bit Philox counter of element i is
// (low and high words of counter + i, 0, 0) and the key is (key0, key1). So a draw needs no state
// on the device, and the generator's whole state is (seed, counter): a checkpoint stores two
// integers and a resumed run draws the very same numbers. Words used: float uniform, the top 24
// bits of word 0; double uniform, 53 bits of words 0 and 1; normal, Box-Muller on two uniforms
// (words 0, 1 in float; 0-1 and 2-3 in double), u1 taken in (0, 1] so the log is finite.
//
// Work split: grid-stride loop, one element per thread per step (the arithmetic, about 10 integer
// multiplies per element, hides under the store at these sizes).
//
// Must match: philox_ref / uniform_ref / normal_ref in tinygrad_llm/cuda/random.py (the same
// integer arithmetic in array operations): uniform bit for bit, normal to the last few ulp.
#include "common.cuh"

using namespace tgl;

namespace tgl {
struct Words { unsigned w[4]; };

__device__ __forceinline__ Words philox4x32_10(unsigned long long ctr, unsigned k0, unsigned k1) {
    unsigned c0 = (unsigned)ctr, c1 = (unsigned)(ctr >> 32), c2 = 0, c3 = 0;
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        const unsigned long long p0 = (unsigned long long)0xD2511F53u * c0;
        const unsigned long long p1 = (unsigned long long)0xCD9E8D57u * c2;
        const unsigned hi0 = (unsigned)(p0 >> 32), lo0 = (unsigned)p0;
        const unsigned hi1 = (unsigned)(p1 >> 32), lo1 = (unsigned)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    return Words{{c0, c1, c2, c3}};
}

// [0, 1) from the top bits; (0, 1] is 1 minus it
__device__ __forceinline__ float unit_f(unsigned a) { return (a >> 8) * (1.0f / 16777216.0f); }
__device__ __forceinline__ double unit_d(unsigned a, unsigned b) {
    return ((((unsigned long long)a) << 21) ^ (b >> 11)) * (1.0 / 9007199254740992.0);
}
template <typename T> __device__ __forceinline__ T uniform_of(const Words& w);
template <> __device__ __forceinline__ float uniform_of<float>(const Words& w) { return unit_f(w.w[0]); }
template <> __device__ __forceinline__ double uniform_of<double>(const Words& w) {
    return unit_d(w.w[0], w.w[1]);
}
template <typename T> __device__ __forceinline__ T normal_of(const Words& w);
template <> __device__ __forceinline__ float normal_of<float>(const Words& w) {
    const float u1 = 1.0f - unit_f(w.w[0]), u2 = unit_f(w.w[1]);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
}
template <> __device__ __forceinline__ double normal_of<double>(const Words& w) {
    const double u1 = 1.0 - unit_d(w.w[0], w.w[1]), u2 = unit_d(w.w[2], w.w[3]);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
}  // namespace tgl

template <typename T>
__global__ void philox_uniform(T* __restrict__ out, long long n, unsigned key0, unsigned key1,
                               unsigned long long counter) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = uniform_of<T>(philox4x32_10(counter + (unsigned long long)i, key0, key1));
}

template <typename T>
__global__ void philox_normal(T* __restrict__ out, long long n, unsigned key0, unsigned key1,
                              unsigned long long counter) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = normal_of<T>(philox4x32_10(counter + (unsigned long long)i, key0, key1));
}

#ifndef __CUDACC_RTC__  // for nvcc's check and report; NVRTC builds only what name_expressions names
template __global__ void philox_uniform<float>(float*, long long, unsigned, unsigned, unsigned long long);
template __global__ void philox_uniform<double>(double*, long long, unsigned, unsigned, unsigned long long);
template __global__ void philox_normal<float>(float*, long long, unsigned, unsigned, unsigned long long);
template __global__ void philox_normal<double>(double*, long long, unsigned, unsigned, unsigned long long);
#endif
