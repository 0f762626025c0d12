// Fused cross-entropy over large vocabularies: logits (n_rows, V) and int64 targets (n_rows,).
//
//   cross_entropy_forward<T>(logits, targets, loss, lse, n_rows, V, ignore_index)
//       lse[r]  = log sum_v exp(logits[r, v])            (written for every row)
//       loss[r] = lse[r] - logits[r, targets[r]]         (0 where targets[r] == ignore_index,
//                                                         NaN where the target is out of range)
//   cross_entropy_backward<T>(logits, targets, lse, dloss, dloss_stride, dlogits, n_rows, V,
//                             ignore_index)
//       dlogits[r, v] = (exp(logits[r, v] - lse[r]) - [v == targets[r]]) * dloss[r * dloss_stride]
//       rows with targets[r] == ignore_index get zeros. dloss_stride = 0 broadcasts one scalar
//       (the mean reduction's 1/count already folded in by the caller), 1 reads one per row.
//
// Work split: one block per row (blockDim.x a multiple of 32, at most 1024); at V = 50,304 each
// of 512 threads covers ~25 float4 packs. The forward reads the row ONCE (online max and
// sum-of-exp, common.cuh) and keeps only lse: the probabilities are never stored. The backward
// reads the row once more and writes dlogits directly, so a training step touches the logits
// three times (matmul write, forward read, backward read) plus one dlogits write.
//
// Must match: cross_entropy_forward_cpu / cross_entropy_backward_cpu in
// tinygrad_llm/ops/cross_entropy.py with label_smoothing = 0 (the op keeps the reference path
// for label smoothing).
#include "common.cuh"

using namespace tgl;

template <typename T>
__global__ void cross_entropy_forward(const T* __restrict__ logits,
                                      const long long* __restrict__ targets, T* __restrict__ loss,
                                      T* __restrict__ lse, int n_rows, int V,
                                      long long ignore_index) {
    __shared__ T scratch[64];
    const int row = blockIdx.x;
    if (row >= n_rows) return;
    const T* xr = logits + (long long)row * V;
    constexpr int P = Pack<T>::N;
    const bool vec = (V % P == 0) && aligned16(logits);

    T m, s;
    row_online_stats(xr, V, vec, m, s, scratch);

    if (threadIdx.x == 0) {
        const T row_lse = m + log_(s);
        const long long t = targets[row];
        lse[row] = row_lse;
        if (t == ignore_index) {
            loss[row] = T(0);
        } else if (t < 0 || t >= V) {
            loss[row] = T(0) / T(0);  // a bad target poisons the loss instead of reading out of bounds
        } else {
            loss[row] = row_lse - xr[t];
        }
    }
}

template <typename T>
__global__ void cross_entropy_backward(const T* __restrict__ logits,
                                       const long long* __restrict__ targets,
                                       const T* __restrict__ lse, const T* __restrict__ dloss,
                                       int dloss_stride, T* __restrict__ dlogits, int n_rows,
                                       int V, long long ignore_index) {
    const int row = blockIdx.x;
    if (row >= n_rows) return;
    const long long off = (long long)row * V;
    const T* xr = logits + off;
    T* dr = dlogits + off;
    const long long t = targets[row];
    const bool ignored = (t == ignore_index);
    const T g = ignored ? T(0) : dloss[(long long)row * dloss_stride];
    const T row_lse = lse[row];
    constexpr int P = Pack<T>::N;
    const bool vec = (V % P == 0) && aligned16(logits) && aligned16(dlogits);

    if (ignored) {  // still write every element: the output buffer is uninitialised
        if (vec) {
            T z[P] = {};
            for (int i = threadIdx.x * P; i < V; i += blockDim.x * P) store_pack(dr + i, z);
        } else {
            for (int i = threadIdx.x; i < V; i += blockDim.x) dr[i] = T(0);
        }
        return;
    }
    if (vec) {
        for (int i = threadIdx.x * P; i < V; i += blockDim.x * P) {
            T v[P];
            load_pack(xr + i, v);
#pragma unroll
            for (int k = 0; k < P; ++k)
                v[k] = (exp_(v[k] - row_lse) - (i + k == t ? T(1) : T(0))) * g;
            store_pack(dr + i, v);
        }
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            dr[i] = (exp_(xr[i] - row_lse) - (i == t ? T(1) : T(0))) * g;
    }
}

#ifndef __CUDACC_RTC__  // for nvcc's check and report; NVRTC builds only what name_expressions names
template __global__ void cross_entropy_forward<float>(const float*, const long long*, float*,
                                                      float*, int, int, long long);
template __global__ void cross_entropy_forward<double>(const double*, const long long*, double*,
                                                       double*, int, int, long long);
template __global__ void cross_entropy_backward<float>(const float*, const long long*,
                                                       const float*, const float*, int, float*,
                                                       int, int, long long);
template __global__ void cross_entropy_backward<double>(const double*, const long long*,
                                                        const double*, const double*, int,
                                                        double*, int, int, long long);
#endif
