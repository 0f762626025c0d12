// Layer norm over the last axis of a contiguous (n_rows, C) array, forward and backward.
//
//   layernorm_forward<T>(x, w, b, y, xhat, rstd, n_rows, C, eps)
//       mean = sum x / C,  var = sum (x - mean)^2 / C,  rstd = 1 / sqrt(var + eps)
//       xhat = (x - mean) rstd,  y = xhat w + b            (w or b may be null: 1 and 0)
//       the op saves xhat and rstd for the backward, which never needs x or the mean
//   layernorm_backward_dx<T>(dy, xhat, w, rstd, dx, n_rows, C)
//       g = dy w,  dx = rstd (g - mean_c(g) - xhat mean_c(g xhat))
//   layernorm_backward_dwdb<T>(dy, xhat, dw_part, db_part, n_rows, C, rows_per_chunk)
//       dw_part[k, c] = sum over rows r of chunk k of dy[r, c] xhat[r, c];  db_part likewise of dy
//       (either output may be null); column_sum then folds the chunks: dw[c] = sum_k dw_part[k, c]
//   column_sum<T>(part, out, n_chunks, C)
//
// Work split. Forward and dx: one warp per row (blockDim = (32, rows per block)), the row read
// three times (mean, variance, output) by the same warp: the second and third reads hit L1, and
// two-pass variance avoids the cancellation of E[x^2] - mean^2. dw/db: columns across threads
// (coalesced along c) and rows split into chunks across blockIdx.y; each thread sums its column
// over its chunk, writing one partial per (chunk, column); column_sum adds the partials in a
// fixed order, so the result is deterministic (no atomics) in float32 and float64 alike.
//
// Rows up to 1024 wide (GPT-2's 768 among them) take one fused backward instead:
//   layernorm_backward_warp<T, J>(dy, xhat, w, rstd, dx, dw_part, db_part, n_rows, C)
//   (dx, dw_part, db_part may each be null; dynamic shared memory: 2 C values of T)
// one warp per row, 4 warps per block, blocks striding over the rows; lane l holds columns
// l, l + 32, ..., l + 32 (J - 1) of dy and xhat in registers, so each is read from memory once,
// and keeps its columns' running dw and db sums in registers across all the rows it visits. At
// the end the block's warps add their sums into shared memory one warp after the other (a fixed
// order: deterministic), and the block writes one partial row; column_sum folds the partials.
// Traffic: dy, xhat read once, dx written once (plus a partial row per block).
//
// Must match: layer_norm_forward_cpu, layer_norm_backward_cpu and _param_grads (dw, db) in
// tinygrad_llm/ops/norm.py.
#include "common.cuh"

using namespace tgl;

template <typename T>
__global__ void layernorm_forward(const T* __restrict__ x, const T* __restrict__ w,
                                  const T* __restrict__ b, T* __restrict__ y,
                                  T* __restrict__ xhat_out, T* __restrict__ rstd, int n_rows,
                                  int C, T eps) {
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= n_rows) return;  // whole warps leave together: only warp shuffles follow
    const int lane = threadIdx.x;
    const T* xr = x + (long long)row * C;
    T* yr = y + (long long)row * C;

    T sum = T(0);
    for (int i = lane; i < C; i += 32) sum += xr[i];
    const T mu = warp_sum(sum) / T(C);
    T sq = T(0);
    for (int i = lane; i < C; i += 32) {
        const T d = xr[i] - mu;
        sq += d * d;
    }
    const T rs = T(1) / sqrt_(warp_sum(sq) / T(C) + eps);
    for (int i = lane; i < C; i += 32) {
        const T xhat = (xr[i] - mu) * rs;
        yr[i] = xhat * (w ? w[i] : T(1)) + (b ? b[i] : T(0));
        xhat_out[(long long)row * C + i] = xhat;
    }
    if (lane == 0) rstd[row] = rs;
}

template <typename T>
__global__ void layernorm_backward_dx(const T* __restrict__ dy, const T* __restrict__ xhat,
                                      const T* __restrict__ w, const T* __restrict__ rstd,
                                      T* __restrict__ dx, int n_rows, int C) {
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= n_rows) return;
    const int lane = threadIdx.x;
    const long long off = (long long)row * C;
    const T* dyr = dy + off;
    const T* xr = xhat + off;
    T* dxr = dx + off;
    const T rs = rstd[row];

    T sum_g = T(0), sum_gx = T(0);
    for (int i = lane; i < C; i += 32) {
        const T g = dyr[i] * (w ? w[i] : T(1));
        sum_g += g;
        sum_gx += g * xr[i];
    }
    const T mean_g = warp_sum(sum_g) / T(C);
    const T mean_gx = warp_sum(sum_gx) / T(C);
    for (int i = lane; i < C; i += 32) {
        const T g = dyr[i] * (w ? w[i] : T(1));
        dxr[i] = rs * (g - mean_g - xr[i] * mean_gx);
    }
}

template <typename T>
__global__ void layernorm_backward_dwdb(const T* __restrict__ dy, const T* __restrict__ xhat,
                                        T* __restrict__ dw_part, T* __restrict__ db_part,
                                        int n_rows, int C, int rows_per_chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int r0 = blockIdx.y * rows_per_chunk;
    const int r1 = min(n_rows, r0 + rows_per_chunk);
    T dw = T(0), db = T(0);
    for (int r = r0; r < r1; ++r) {
        const long long i = (long long)r * C + c;
        const T g = dy[i];
        dw += g * xhat[i];
        db += g;
    }
    const long long o = (long long)blockIdx.y * C + c;
    if (dw_part) dw_part[o] = dw;
    if (db_part) db_part[o] = db;
}

template <typename T, int J>
__global__ void layernorm_backward_warp(const T* __restrict__ dy, const T* __restrict__ xhat,
                                        const T* __restrict__ w, const T* __restrict__ rstd,
                                        T* __restrict__ dx, T* __restrict__ dw_part,
                                        T* __restrict__ db_part, int n_rows, int C) {
    T* sh = dynamic_smem<T>();  // 2 C values: the block's dw and db sums
    const int lane = threadIdx.x, warp = threadIdx.y;
    T wv[J], dw[J], db[J];  // this lane's columns of w, and their running dw, db sums
#pragma unroll
    for (int j = 0; j < J; ++j) {
        const int c = lane + 32 * j;
        wv[j] = c < C ? (w ? w[c] : T(1)) : T(0);
        dw[j] = T(0);
        db[j] = T(0);
    }
    const T inv_c = T(1) / T(C);
    // every warp stays to the end (no early return): the block meets at __syncthreads below
    for (int row = blockIdx.x * blockDim.y + warp; row < n_rows; row += gridDim.x * blockDim.y) {
        const long long off = (long long)row * C;
        T g[J], xh[J];
        T sum_g = T(0), sum_gx = T(0);
#pragma unroll
        for (int j = 0; j < J; ++j) {
            const int c = lane + 32 * j;
            const T d = c < C ? dy[off + c] : T(0);
            xh[j] = c < C ? xhat[off + c] : T(0);
            g[j] = d * wv[j];
            sum_g += g[j];
            sum_gx += g[j] * xh[j];
            dw[j] += d * xh[j];
            db[j] += d;
        }
        const T mean_g = warp_sum(sum_g) * inv_c;
        const T mean_gx = warp_sum(sum_gx) * inv_c;
        const T rs = rstd[row];
#pragma unroll
        for (int j = 0; j < J; ++j) {
            const int c = lane + 32 * j;
            if (dx && c < C) dx[off + c] = rs * (g[j] - mean_g - xh[j] * mean_gx);
        }
    }
    if (!dw_part && !db_part) return;  // uniform: both pointers are kernel arguments
    for (int k = 0; k < (int)blockDim.y; ++k) {
        if (warp == k) {
#pragma unroll
            for (int j = 0; j < J; ++j) {
                const int c = lane + 32 * j;
                if (c < C) {
                    sh[c] = (k ? sh[c] : T(0)) + dw[j];
                    sh[C + c] = (k ? sh[C + c] : T(0)) + db[j];
                }
            }
        }
        __syncthreads();
    }
    const int tid = warp * 32 + lane, n_threads = blockDim.y * 32;
    for (int c = tid; c < C; c += n_threads) {
        if (dw_part) dw_part[(long long)blockIdx.x * C + c] = sh[c];
        if (db_part) db_part[(long long)blockIdx.x * C + c] = sh[C + c];
    }
}

template <typename T>
__global__ void column_sum(const T* __restrict__ part, T* __restrict__ out, int n_chunks, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    T acc = T(0);
    for (int k = 0; k < n_chunks; ++k) acc += part[(long long)k * C + c];
    out[c] = acc;
}

#ifndef __CUDACC_RTC__  // for nvcc's check and report; NVRTC builds only what name_expressions names
#define TGL_LN(T)                                                                                 \
    template __global__ void layernorm_forward<T>(const T*, const T*, const T*, T*, T*, T*, int,  \
                                                  int, T);                                        \
    template __global__ void layernorm_backward_dx<T>(const T*, const T*, const T*, const T*, T*,  \
                                                      int, int);                                  \
    template __global__ void layernorm_backward_dwdb<T>(const T*, const T*, T*, T*, int, int, int);
TGL_LN(float) TGL_LN(double)
#undef TGL_LN
template __global__ void column_sum<float>(const float*, float*, int, int);
template __global__ void column_sum<double>(const double*, double*, int, int);
#define TGL_LN_WARP(T, J)                                                                     \
    template __global__ void layernorm_backward_warp<T, J>(const T*, const T*, const T*,      \
                                                           const T*, T*, T*, T*, int, int);
TGL_LN_WARP(float, 1) TGL_LN_WARP(float, 2) TGL_LN_WARP(float, 4) TGL_LN_WARP(float, 8)
TGL_LN_WARP(float, 12) TGL_LN_WARP(float, 16) TGL_LN_WARP(float, 24) TGL_LN_WARP(float, 32)
// double stops at 16 slots (C <= 512): past that its registers spill; wider float64 rows (only
// gradient checks use float64) take the two-kernel path
TGL_LN_WARP(double, 1) TGL_LN_WARP(double, 2) TGL_LN_WARP(double, 4) TGL_LN_WARP(double, 8)
TGL_LN_WARP(double, 12) TGL_LN_WARP(double, 16)
#undef TGL_LN_WARP
#endif
