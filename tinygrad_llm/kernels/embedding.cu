// Embedding backward: dW (V, C) from dy (N, C) and the token ids (N,), summed in a fixed order.
//
//   embedding_backward<T>(dy, order, sorted_ids, dw, N, C)
//       dw[v, c] = sum of dy[i, c] over the positions i with ids[i] = v, added in increasing i
//       order = the positions sorted by (id, position), sorted_ids = ids[order]; rows of dw whose
//       id never occurs are not written (the glue allocates dw zeroed)
//
// Work split: block x = one position k of the sorted ids, block y and the threads = columns
// (coalesced along c). Only the block at the first position of each id's run works: it walks the
// run in order, adding the dy rows, and writes its dw row once. No atomics and a fixed order, so
// every run gives the same bits (atomicAdd on floats adds in whatever order the threads arrive).
// A frequent id is one long run for one block; with GPT-2's 50,257 ids the runs are short.
//
// Must match: embedding_backward_cpu in tinygrad_llm/ops/embedding.py, bit for bit: its rank
// rounds add each id's rows in the same increasing position order.
#include "common.cuh"

using namespace tgl;

template <typename T>
__global__ void embedding_backward(const T* __restrict__ dy, const long long* __restrict__ order,
                                   const long long* __restrict__ sorted_ids, T* __restrict__ dw,
                                   int N, int C) {
    const int k = blockIdx.x;
    if (k >= N) return;
    const long long id = sorted_ids[k];
    if (k > 0 && sorted_ids[k - 1] == id) return;  // not the first position of its id's run
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    T acc = dy[order[k] * C + c];
    for (int j = k + 1; j < N && sorted_ids[j] == id; ++j) acc += dy[order[j] * C + c];
    dw[id * C + c] = acc;
}

#ifndef __CUDACC_RTC__  // for nvcc's check and report; NVRTC builds only what name_expressions names
template __global__ void embedding_backward<float>(const float*, const long long*, const long long*,
                                                   float*, int, int);
template __global__ void embedding_backward<double>(const double*, const long long*,
                                                    const long long*, double*, int, int);
#endif
