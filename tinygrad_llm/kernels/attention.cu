// Fused ("flash") scaled dot-product attention, forward and backward, that never builds the
// T_q x T_k score matrix in memory.
//
//   attention_forward<E, D, BN>(q, k, v, seg, slopes, o, lse, H, Hkv, Tq, Tk, causal, window,
//                               scale)
//   attention_backward_prep<E, D>(o, do, delta, n_rows)            delta_i = sum_d dO_id O_id
//   attention_backward_dq<E, D, BN>(q, k, v, do, lse, delta, seg, slopes, dq, H, Hkv, Tq, Tk,
//                                   causal, window, scale)
//   attention_backward_dkdv<E, D, BN>(q, k, v, do, lse, delta, seg, slopes, dk, dv, H, Hkv, Tq,
//                                     Tk, causal, window, scale)
//
// q, o, do, dq: (B, H, Tq, D); k, v, dk, dv: (B, Hkv, Tk, D), all contiguous; lse, delta:
// (B, H, Tq) in the accumulator type A (float for E = float and bf16, double for E = double).
// E is the element type: float, double (so the host emulator can check the algorithm against
// float64) or tgl::bf16 (bf16 storage, float32 accumulation on the tensor cores through
// mma.sync.m16n8k16). D, the head dim, is 32, 64 or 128; BN, the rows of the streamed side per
// step, is 32, or 16 where a GPU's shared memory cannot hold the larger tiles (the glue picks it).
// Query head h reads key/value head h / (H / Hkv) (grouped-query attention).
//
// The mask: query i (0-based among the Tq queries) sits at position p = i + (Tk - Tq) (the
// queries are the LAST Tq positions of the sequence, as with a KV cache) and sees key j when
//   j < Tk,  and j <= p if causal,  and j > p - window if window > 0 (a sliding window of
//   `window` keys, itself included),  and seg[j] == seg[p] if seg is not null
// (seg: (B, Tk) int32 document ids; a token attends only within its own document). A query that
// sees no key at all gets O = 0 and lse = -inf.
//
// The scores: s_ij = scale q_i.k_j + slopes[h] (j - p) where slopes is not null (ALiBi: one
// slope per query head, in the accumulator type; the bias is added after the scaling, before
// the mask). The bias is a constant, so the backward's formulas below do not change: P is
// recomputed with the same bias and dS flows to q and k through the scaled product alone.
//
// Work split. A block has 4 warps and owns BM = 64 rows: 64 queries of one (batch, head) in the
// forward and dq kernels, 64 keys of one (batch, kv head) in the dkdv kernel. Each warp owns 16 of
// those rows, the M of one m16n8k16 tensor-core tile, and walks the other side in tiles of BN
// rows staged through shared memory. Every matrix product is a warp_mma over shared-memory
// operands whose result lands in registers in the mma "C fragment" layout: lane (g = lane / 4,
// t = lane % 4) holds rows g and g + 8, columns 8n + 2t and 8n + 2t + 1 of n-tile n. For bf16 the
// product is mma.sync; for float and double it is the same layout computed with scalar FMAs, so
// the softmax code after it is shared by all three types. A row's four lanes (one quad) reduce
// with two shuffles. A bf16 fragment register holds two elements adjacent along k; where a
// product reads a tile down its rows (P V, dS K, P^T dO, dS^T Q) that tile is stored transposed
// (the forward's V for every type; in the backward a second copy of K, Q and dO, bf16 only), so
// each pair is one 4-byte shared-memory load.
//
// Forward: the online-softmax recurrence. For each query row keep m (the running max of the
// scaled scores), l (the running sum of exp(s - m)) and the unnormalised output acc. For each key
// tile, with scores s_j = scale q.k_j (masked to -inf):
//   m' = max(m, max_j s_j);  alpha = exp(m - m');  p_j = exp(s_j - m')
//   l' = alpha l + sum_j p_j;  acc' = alpha acc + sum_j p_j v_j
// (Milakov & Gimelshein 2018; Dao et al. 2022). After the last tile O = acc / l and the kernel
// saves lse = m + log(l), one number per row: with it the backward gets every probability back as
// P_ij = exp(s_ij - lse_i) without another max/sum pass. Memory is O(T D), not O(T^2).
//
// Backward. With dP = dO V^T and delta_i = sum_j P_ij dP_ij = dO_i . O_i (computed first, by
// attention_backward_prep, one warp per row):
//   dV = P^T dO;  dS = P * (dP - delta);  dQ = scale dS K;  dK = scale dS^T Q.
// P is recomputed tile by tile from Q, K and lse instead of being saved: saving it would cost
// the T^2 memory this kernel exists to avoid, and recomputing costs one more QK^T product,
// cheap next to reading a T^2 matrix back from memory. Two kernels share the work so that
// every output element has exactly one writer and no atomics are needed (results are
// bit-identical from run to run): attention_backward_dq owns query tiles and loops over key
// tiles (writing dQ), attention_backward_dkdv owns key tiles and loops over the query tiles of
// every query head of its kv group (writing dK and dV, the GQA sum over heads done in a fixed
// order inside the block). The price is computing P and dP twice.
//
// Tails: tiles are zero-filled past T (a zero row of K or V contributes nothing once its score is
// masked) and rows past Tq / Tk are never written. The causal mask and the window trim the
// loops: a query tile runs from the first key tile its first query's window reaches to the last
// key it can see; a key tile runs over the query tiles from the first query that sees it to the
// last one whose window still holds it.
//
// Shared memory (dynamic, bytes from smem_bytes in tinygrad_llm/cuda/attention.py, which mirrors
// the layout at the top of each kernel) is above the 48 KiB default for D = 128 and for double;
// the glue raises the kernel's limit, and picks BN = 16 where the device's opt-in limit is below
// what BN = 32 needs.
//
// Index widths: every offset into q, k, v, o and their gradients is 64-bit (the (batch, head)
// base and the row times D are computed in long long), and so is the row index of
// attention_backward_prep; int holds only positions within one sequence (T < 2^31) and tile
// coordinates. The tensors may have more than 2^31 elements.
//
// Must match: attention_textbook / attention_backward_textbook in tinygrad_llm/ops/attention.py
// (segment ids included), and the float64 reference in tests/test_attention_kernel.py.
#include "common.cuh"
#include "bf16.cuh"  // tgl::bf16, Acc<T>, to_acc, put

namespace tgl {

namespace flash {

constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;
constexpr int BM = 16 * WARPS;  // rows a block owns (queries, or keys in dkdv)
// Row strides in shared memory, padded against bank conflicts (32 banks of 4 bytes).
// float / double: a warp reads one element from each of 8 rows (lanes with the same g share it);
// a pad of 1 puts the 8 rows in 8 banks. bf16: a fragment load is lane (g, t) reading the 4-byte
// pair at row g, column 2t, i.e. word g LD/2 + t. With a pad of 8 elements a row is D/2 + 4 words
// (BN/2 + 4 for P, dS and the transposed tiles), 4 mod 8 for every D and BN here, so the 8 rows
// start 4 banks apart and the 32 lanes hit 32 different banks (a pad of 2 made it g (D/2 + 1) + t:
// 4-way conflicts at D = 64 and 128, 2-way on the BN-wide tiles). It also keeps every row
// 16-byte aligned. tests/test_attention_kernel.py counts the conflicts in the emulator.
template <typename E, int D, int BN> struct Stride {
    static constexpr int pad = sizeof(E) == 2 ? 8 : 1;
    static constexpr int LD = D + pad;   // a Q, K, V or dO row
    static constexpr int LDP = BN + pad;  // a row of P or dS, or of a transposed tile
    // bf16 backward: a second, transposed copy of the tiles read down their rows as the B of a
    // product (K in dq; Q and dO in dkdv), so every fragment pair is one 4-byte load. The scalar
    // float/double path reads elements one by one either way and skips the copy.
    static constexpr bool transposed_copy = sizeof(E) == 2;
};

__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }

template <typename T> __device__ __forceinline__ T quad_max(T v) {
    v = max(v, __shfl_xor_sync(FULL_MASK, v, 1));
    return max(v, __shfl_xor_sync(FULL_MASK, v, 2));
}
template <typename T> __device__ __forceinline__ T quad_sum(T v) {
    v += __shfl_xor_sync(FULL_MASK, v, 1);
    return v + __shfl_xor_sync(FULL_MASK, v, 2);
}

// acc[n] (a 16 x 8 C fragment, n = 0..NT-1) += A (16 x K) times B (K x 8 NT), with
// A(m, k) = a[m a_rs + k a_cs] and B(k, n) = b[k b_ks + n b_ns]: the strides let one routine
// read Q K^T (B = K^T, so b_ks = 1), P V (B = V, b_ns = 1) and the backward's transposes.
// Float and double: each lane computes its own four outputs per n-tile, k in order.
template <int NT, typename E, typename A>
__device__ __forceinline__ void warp_mma(A (&acc)[NT][4], const E* a, int a_rs, int a_cs,
                                         const E* b, int b_ks, int b_ns, int K) {
    const int g = lane_id() >> 2, t = lane_id() & 3;
    for (int k = 0; k < K; ++k) {
        const A a0 = to_acc(a[g * a_rs + k * a_cs]), a1 = to_acc(a[(g + 8) * a_rs + k * a_cs]);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            const A b0 = to_acc(b[k * b_ks + (8 * n + 2 * t) * b_ns]);
            const A b1 = to_acc(b[k * b_ks + (8 * n + 2 * t + 1) * b_ns]);
            acc[n][0] += a0 * b0;
            acc[n][1] += a0 * b1;
            acc[n][2] += a1 * b0;
            acc[n][3] += a1 * b1;
        }
    }
}

// d = a b + c on the tensor cores: a is 16 x 16 bf16 (4 registers of 2), b 16 x 8 bf16
// (2 registers), c and d 16 x 8 float in the C fragment layout described above.
__device__ __forceinline__ void mma_bf16(float* c, const unsigned* a, const unsigned* b) {
#ifdef TGL_HOST_EMULATION
    ::tgl_emulated_mma_m16n8k16_bf16(c, a, b);  // the emulator's scalar model of the fragments
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // bf16 mma needs sm_80 or newer; the glue refuses bf16 on older GPUs
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ __forceinline__ unsigned pack2(bf16 lo, bf16 hi) {
    return unsigned(lo.bits) | (unsigned(hi.bits) << 16);
}

// p[0] and p[stride] as one register (p[0] in the low half). With stride 1 the pair is adjacent
// and starts at an even element (every row stride and tile offset is even for bf16), so it is
// one aligned 4-byte load instead of two 2-byte loads.
__device__ __forceinline__ unsigned pair(const bf16* p, int stride) {
#ifdef TGL_HOST_EMULATION
    ::tgl_emulated_fragment_load(p, stride);  // the emulator counts shared-memory bank conflicts
#endif
    if (stride != 1) return pack2(p[0], p[stride]);
#ifdef TGL_HOST_EMULATION
    unsigned r;
    std::memcpy(&r, p, 4);
    return r;
#else
    return *reinterpret_cast<const unsigned*>(p);
#endif
}

// bf16: the same product on the tensor cores, 16 of K per mma. Fragments (PTX ISA, mma.m16n8k16):
// A regs 0..3 hold (row g, cols 2t, 2t+1), (g + 8, same), (g, 2t + 8, 2t + 9), (g + 8, same);
// B regs 0..1 hold (rows 2t, 2t + 1, col g), (rows 2t + 8, 2t + 9, col g). K is a multiple of 16.
template <int NT>
__device__ __forceinline__ void warp_mma(float (&acc)[NT][4], const bf16* a, int a_rs, int a_cs,
                                         const bf16* b, int b_ks, int b_ns, int K) {
    const int g = lane_id() >> 2, t = lane_id() & 3;
    for (int k0 = 0; k0 < K; k0 += 16) {
        const bf16* a_lo = a + g * a_rs + (k0 + 2 * t) * a_cs;
        const bf16* a_hi = a_lo + 8 * a_rs;
        const unsigned af[4] = {pair(a_lo, a_cs), pair(a_hi, a_cs), pair(a_lo + 8 * a_cs, a_cs),
                                pair(a_hi + 8 * a_cs, a_cs)};
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            const bf16* bp = b + (k0 + 2 * t) * b_ks + (8 * n + g) * b_ns;
            const unsigned bf[2] = {pair(bp, b_ks), pair(bp + 8 * b_ks, b_ks)};
            mma_bf16(acc[n], af, bf);
        }
    }
}

template <int NT, typename A> __device__ __forceinline__ void zero(A (&acc)[NT][4]) {
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[n][e] = A(0);
}

// Rows [row0, row0 + rows) of a (T, D) matrix into shared memory (row stride LD), zeros past T.
template <int D, int LD, typename E>
__device__ __forceinline__ void load_rows(E* dst, const E* src, int row0, int rows, int T) {
    for (int idx = threadIdx.x; idx < rows * D; idx += THREADS) {
        const int r = idx / D, c = idx % D;
        dst[r * LD + c] = row0 + r < T ? src[(long long)(row0 + r) * D + c] : E{};
    }
}

// The same rows stored transposed: dst[c LDT + r] holds row r, column c (so a product that reads
// the tile down its rows reads adjacent elements, one 4-byte load per bf16 pair).
template <int D, int LDT, typename E>
__device__ __forceinline__ void load_rows_transposed(E* dst, const E* src, int row0, int rows,
                                                     int T) {
    for (int idx = threadIdx.x; idx < rows * D; idx += THREADS) {
        const int r = idx / D, c = idx % D;
        dst[c * LDT + r] = row0 + r < T ? src[(long long)(row0 + r) * D + c] : E{};
    }
}

// Segment ids of rows [row0, row0 + rows) read at seg[row + shift]; -1 past T.
__device__ __forceinline__ void load_seg(int* dst, const int* seg, int row0, int rows, int T,
                                         int shift) {
    for (int idx = threadIdx.x; idx < rows; idx += THREADS)
        dst[idx] = row0 + idx < T ? seg[row0 + idx + shift] : -1;
}

// The keys the query at position p may see, lo < j <= hi: the causal mask and the window of the
// mask at the top as two bounds per row, so the per-element test is two compares (documents and
// j < Tk are checked beside them).
__device__ __forceinline__ void key_bounds(int p, int causal, int window, int& lo, int& hi) {
    hi = causal ? p : 0x7fffffff;
    lo = window > 0 ? p - window : -1;
}

// The same for the dkdv kernel, whose rows are keys: the queries i (at positions i + off) that
// see key j, lo < i <= hi (causal: i + off >= j; the window: i + off < j + window).
__device__ __forceinline__ void query_bounds(int j, int off, int causal, int window, int& lo,
                                             int& hi) {
    lo = causal ? j - off - 1 : -1;
    hi = window > 0 ? int(min(0x7fffffffLL, (long long)j + window - 1 - off)) : 0x7fffffff;
}

// The first key tile (a multiple of BN) that a query tile starting at position p0 can see: its
// first query's window starts at p0 - window + 1, and every later query's starts later.
template <int BN> __device__ __forceinline__ int first_key_tile(int p0, int window) {
    return window > 0 ? int(max(0LL, (long long)p0 - window + 1) / BN * BN) : 0;
}

// ALiBi's slope (j - p) for the elements of a C fragment: the lane's column 8n + 2t + (e & 1) of a
// tile starting at key k0 gives slope (k0 + 2t - p) + slope (8n + (e & 1)), a per-row base plus
// a compile-time multiple of the slope (cheaper in registers than converting j - p per element).

// Write this lane's C-fragment rows (row0 + g, row0 + g + 8) of a 16 x D result, times `mul`.
template <int D, typename E, typename A>
__device__ __forceinline__ void store_rows(E* dst, const A (&acc)[D / 8][4], int row0, int T,
                                           A mul0, A mul1) {
    const int g = lane_id() >> 2, t = lane_id() & 3;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = row0 + g + 8 * half;
        if (r >= T) continue;
        const A mul = half ? mul1 : mul0;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            put(dst + (long long)r * D + 8 * n + 2 * t, acc[n][2 * half] * mul);
            put(dst + (long long)r * D + 8 * n + 2 * t + 1, acc[n][2 * half + 1] * mul);
        }
    }
}

}  // namespace flash
}  // namespace tgl

using namespace tgl;
using namespace tgl::flash;

template <typename E, int D, int BN>
__global__ void attention_forward(const E* __restrict__ q, const E* __restrict__ k,
                                  const E* __restrict__ v, const int* __restrict__ seg,
                                  const typename Acc<E>::type* __restrict__ slopes,
                                  E* __restrict__ o, typename Acc<E>::type* __restrict__ lse,
                                  int H, int Hkv, int Tq, int Tk, int causal, int window,
                                  typename Acc<E>::type scale) {
    using A = typename Acc<E>::type;
    constexpr int LD = Stride<E, D, BN>::LD, LDP = Stride<E, D, BN>::LDP, NT = BN / 8;
    int* seg_k = dynamic_smem<int>();                          // BN
    E* Qs = reinterpret_cast<E*>(seg_k + BN);                  // BM x LD
    E* Ks = Qs + BM * LD;                                      // BN x LD
    E* Vt = Ks + BN * LD;                                      // D x LDP: V transposed
    E* Ps = Vt + D * LDP + (threadIdx.x >> 5) * 16 * LDP;      // this warp's 16 x LDP

    const int warp = threadIdx.x >> 5, g = lane_id() >> 2, t = lane_id() & 3;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BM, off = Tk - Tq;
    const long long bh = (long long)b * H + h, bhk = (long long)b * Hkv + h / (H / Hkv);
    const E* kb = k + bhk * Tk * D;
    const E* vb = v + bhk * Tk * D;
    const int* seg_b = seg ? seg + (long long)b * Tk : nullptr;
    const A slope = slopes ? slopes[h] : A(0);
    load_rows<D, LD>(Qs, q + bh * Tq * D, q0, BM, Tq);

    int row[2], pos[2], seg_q[2];  // this lane's two query rows, their positions and documents
    for (int r = 0; r < 2; ++r) {
        row[r] = q0 + warp * 16 + g + 8 * r;
        pos[r] = row[r] + off;
        seg_q[r] = seg_b && row[r] < Tq ? seg_b[pos[r]] : -1;
    }
    // causal: the block's last query sees keys up to (its index + off); the window: its first
    // query sees nothing before (q0 + off - window + 1)
    const int kv_end = causal ? min(Tk, min(q0 + BM, Tq) + off) : Tk;
    const int kv_begin = first_key_tile<BN>(q0 + off, window);
    int lo[2], hi[2];  // this lane's rows see keys lo < j <= hi
    for (int r = 0; r < 2; ++r) key_bounds(pos[r], causal, window, lo[r], hi[r]);

    A m[2] = {neg_inf<A>(), neg_inf<A>()}, l[2] = {A(0), A(0)};
    A acc[D / 8][4];
    zero(acc);
    for (int k0 = kv_begin; k0 < kv_end; k0 += BN) {
        __syncthreads();  // the previous tile's readers are done
        load_rows<D, LD>(Ks, kb, k0, BN, Tk);
        load_rows_transposed<D, LDP>(Vt, vb, k0, BN, Tk);
        if (seg_b) load_seg(seg_k, seg_b, k0, BN, Tk, 0);
        __syncthreads();

        A s[NT][4];
        zero(s);
        warp_mma(s, Qs + warp * 16 * LD, LD, 1, Ks, 1, LD, D);  // S = Q K^T (16 x BN)
        A m_new[2] = {m[0], m[1]}, bias[2];
        for (int r = 0; r < 2; ++r) bias[r] = slope * A(k0 + 2 * t - pos[r]);
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1, c = 8 * n + 2 * t + (e & 1), j = k0 + c;
                const bool vis = j < Tk && j <= hi[r] && j > lo[r] &&
                                 (!seg_b || seg_q[r] == seg_k[c]);
                s[n][e] = vis ? s[n][e] * scale + (bias[r] + slope * A(8 * n + (e & 1)))
                              : neg_inf<A>();
                m_new[r] = max(m_new[r], s[n][e]);
            }
        A alpha[2], sum[2] = {A(0), A(0)};
        for (int r = 0; r < 2; ++r) {
            m_new[r] = quad_max(m_new[r]);
            // all masked so far: nothing to rescale (and exp(-inf - -inf) would be NaN)
            alpha[r] = m_new[r] == neg_inf<A>() ? A(1) : exp_(m[r] - m_new[r]);
        }
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                const A p = s[n][e] == neg_inf<A>() ? A(0) : exp_(s[n][e] - m_new[r]);
                sum[r] += p;
                put(Ps + (g + 8 * r) * LDP + 8 * n + 2 * t + (e & 1), p);
            }
        for (int r = 0; r < 2; ++r) {
            l[r] = l[r] * alpha[r] + quad_sum(sum[r]);
            m[r] = m_new[r];
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[n][e] *= alpha[e >> 1];
        __syncwarp();  // P is written by the whole warp before any lane reads it
        warp_mma(acc, Ps, LDP, 1, Vt, 1, LDP, BN);  // acc += P V (16 x D)
        __syncwarp();
    }

    const A inv0 = l[0] > A(0) ? A(1) / l[0] : A(0), inv1 = l[1] > A(0) ? A(1) / l[1] : A(0);
    store_rows<D>(o + bh * Tq * D, acc, q0 + warp * 16, Tq, inv0, inv1);
    if (t == 0)
        for (int r = 0; r < 2; ++r)
            if (row[r] < Tq) lse[bh * Tq + row[r]] = l[r] > A(0) ? m[r] + log_(l[r]) : neg_inf<A>();
}

// delta_i = sum_d dO_id O_id, one warp per row (blockDim = (32, 8)); rows counted in 64 bits.
template <typename E, int D>
__global__ void attention_backward_prep(const E* __restrict__ o, const E* __restrict__ dout,
                                        typename Acc<E>::type* __restrict__ delta,
                                        long long n_rows) {
    using A = typename Acc<E>::type;
    const long long r = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (r >= n_rows) return;  // whole warps leave together
    A d = A(0);
#pragma unroll
    for (int c = threadIdx.x; c < D; c += 32) d += to_acc(o[r * D + c]) * to_acc(dout[r * D + c]);
    d = warp_sum(d);
    if (threadIdx.x == 0) delta[r] = d;
}

template <typename E, int D, int BN>
__global__ void attention_backward_dq(const E* __restrict__ q, const E* __restrict__ k,
                                      const E* __restrict__ v, const E* __restrict__ dout,
                                      const typename Acc<E>::type* __restrict__ lse,
                                      const typename Acc<E>::type* __restrict__ delta,
                                      const int* __restrict__ seg,
                                      const typename Acc<E>::type* __restrict__ slopes,
                                      E* __restrict__ dq, int H, int Hkv, int Tq, int Tk,
                                      int causal, int window, typename Acc<E>::type scale) {
    using A = typename Acc<E>::type;
    constexpr int LD = Stride<E, D, BN>::LD, LDP = Stride<E, D, BN>::LDP, NT = BN / 8;
    int* seg_k = dynamic_smem<int>();                          // BN
    E* Qs = reinterpret_cast<E*>(seg_k + BN);                  // BM x LD
    E* dOs = Qs + BM * LD;                                     // BM x LD
    E* Ks = dOs + BM * LD;                                     // BN x LD
    E* Vs = Ks + BN * LD;                                      // BN x LD
    constexpr bool TC = Stride<E, D, BN>::transposed_copy;
    E* Kt = Vs + BN * LD;                                      // D x LDP: K transposed (TC)
    E* dSs = Kt + (TC ? D * LDP : 0) + (threadIdx.x >> 5) * 16 * LDP;  // this warp's 16 x LDP
    const E* Kb = TC ? Kt : Ks;  // K as the B of dS K: B(key, d) = Kb[key kb_k + d kb_n]
    constexpr int kb_k = TC ? 1 : LD, kb_n = TC ? LDP : 1;

    const int warp = threadIdx.x >> 5, g = lane_id() >> 2, t = lane_id() & 3;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BM, off = Tk - Tq;
    const long long bh = (long long)b * H + h, bhk = (long long)b * Hkv + h / (H / Hkv);
    const E* kb = k + bhk * Tk * D;
    const E* vb = v + bhk * Tk * D;
    const int* seg_b = seg ? seg + (long long)b * Tk : nullptr;
    const A slope = slopes ? slopes[h] : A(0);
    load_rows<D, LD>(Qs, q + bh * Tq * D, q0, BM, Tq);
    load_rows<D, LD>(dOs, dout + bh * Tq * D, q0, BM, Tq);

    int row[2], pos[2], seg_q[2];
    A lse_r[2], delta_r[2];
    for (int r = 0; r < 2; ++r) {
        row[r] = q0 + warp * 16 + g + 8 * r;
        pos[r] = row[r] + off;
        const bool in = row[r] < Tq;
        seg_q[r] = seg_b && in ? seg_b[pos[r]] : -1;
        lse_r[r] = in ? lse[bh * Tq + row[r]] : A(0);
        delta_r[r] = in ? delta[bh * Tq + row[r]] : A(0);
    }
    const int kv_end = causal ? min(Tk, min(q0 + BM, Tq) + off) : Tk;
    const int kv_begin = first_key_tile<BN>(q0 + off, window);
    int lo[2], hi[2];
    for (int r = 0; r < 2; ++r) {
        key_bounds(pos[r], causal, window, lo[r], hi[r]);
        if (row[r] >= Tq) hi[r] = -1;  // a row past Tq sees nothing (and is never stored)
    }

    A acc[D / 8][4];
    zero(acc);
    for (int k0 = kv_begin; k0 < kv_end; k0 += BN) {
        __syncthreads();
        load_rows<D, LD>(Ks, kb, k0, BN, Tk);
        load_rows<D, LD>(Vs, vb, k0, BN, Tk);
        if (TC) load_rows_transposed<D, LDP>(Kt, kb, k0, BN, Tk);
        if (seg_b) load_seg(seg_k, seg_b, k0, BN, Tk, 0);
        __syncthreads();

        A s[NT][4], dp[NT][4];
        zero(s);
        zero(dp);
        warp_mma(s, Qs + warp * 16 * LD, LD, 1, Ks, 1, LD, D);    // S = Q K^T
        warp_mma(dp, dOs + warp * 16 * LD, LD, 1, Vs, 1, LD, D);  // dP = dO V^T
        A bias[2];
        for (int r = 0; r < 2; ++r) bias[r] = slope * A(k0 + 2 * t - pos[r]) - lse_r[r];
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1, c = 8 * n + 2 * t + (e & 1), j = k0 + c;
                const bool vis = j < Tk && j <= hi[r] && j > lo[r] &&
                                 (!seg_b || seg_q[r] == seg_k[c]);
                const A p = vis ? exp_(s[n][e] * scale + (bias[r] + slope * A(8 * n + (e & 1))))
                                : A(0);
                put(dSs + (g + 8 * r) * LDP + c, p * (dp[n][e] - delta_r[r]));  // dS
            }
        __syncwarp();
        warp_mma(acc, dSs, LDP, 1, Kb, kb_k, kb_n, BN);  // dQ += dS K
        __syncwarp();
    }
    store_rows<D>(dq + bh * Tq * D, acc, q0 + warp * 16, Tq, scale, scale);
}

template <typename E, int D, int BN>
__global__ void attention_backward_dkdv(const E* __restrict__ q, const E* __restrict__ k,
                                        const E* __restrict__ v, const E* __restrict__ dout,
                                        const typename Acc<E>::type* __restrict__ lse,
                                        const typename Acc<E>::type* __restrict__ delta,
                                        const int* __restrict__ seg,
                                        const typename Acc<E>::type* __restrict__ slopes,
                                        E* __restrict__ dk, E* __restrict__ dv, int H, int Hkv,
                                        int Tq, int Tk, int causal, int window,
                                        typename Acc<E>::type scale) {
    using A = typename Acc<E>::type;
    constexpr int LD = Stride<E, D, BN>::LD, LDP = Stride<E, D, BN>::LDP, NT = BN / 8;
    int* seg_q = dynamic_smem<int>();                          // BN
    A* lse_s = reinterpret_cast<A*>(seg_q + BN);               // BN
    A* delta_s = lse_s + BN;                                   // BN
    E* Ks = reinterpret_cast<E*>(delta_s + BN);                // BM x LD
    E* Vs = Ks + BM * LD;                                      // BM x LD
    E* Qs = Vs + BM * LD;                                      // BN x LD
    E* dOs = Qs + BN * LD;                                     // BN x LD
    constexpr bool TC = Stride<E, D, BN>::transposed_copy;
    E* Qt = dOs + BN * LD;                                     // D x LDP: Q transposed (TC)
    E* dOt = Qt + (TC ? D * LDP : 0);                          // D x LDP: dO transposed (TC)
    E* Ps = dOt + (TC ? D * LDP : 0) + (threadIdx.x >> 5) * 16 * LDP;  // this warp's 16 x LDP
    // Q and dO as the B of P^T dO and dS^T Q: B(query, d) = Xb[query b_k + d b_n]
    const E* Qb = TC ? Qt : Qs;
    const E* dOb = TC ? dOt : dOs;
    constexpr int b_k = TC ? 1 : LD, b_n = TC ? LDP : 1;

    const int warp = threadIdx.x >> 5, g = lane_id() >> 2, t = lane_id() & 3;
    const int b = blockIdx.z, hk = blockIdx.y, k0 = blockIdx.x * BM, off = Tk - Tq;
    const int group = H / Hkv;
    const long long bhk = (long long)b * Hkv + hk;
    const int* seg_b = seg ? seg + (long long)b * Tk : nullptr;
    load_rows<D, LD>(Ks, k + bhk * Tk * D, k0, BM, Tk);
    load_rows<D, LD>(Vs, v + bhk * Tk * D, k0, BM, Tk);

    int key[2], seg_k[2], lo[2], hi[2];  // this lane's two key rows, their documents, the
    for (int r = 0; r < 2; ++r) {          // queries lo < i <= hi that may see them
        key[r] = k0 + warp * 16 + g + 8 * r;
        seg_k[r] = seg_b && key[r] < Tk ? seg_b[key[r]] : -1;
        query_bounds(key[r], off, causal, window, lo[r], hi[r]);
        if (key[r] >= Tk) hi[r] = -1;  // a key past Tk is seen by nobody (and never stored)
    }
    // causal: query i sees key k0 once i + off >= k0; start at the tile holding that query.
    // The window: query i still sees the tile's last key k0 + BM - 1 while i + off - window <
    // k0 + BM - 1, so the queries from k0 + BM - 1 + window - off on see none of the tile.
    const int q_begin = causal ? max(0, k0 - off) / BN * BN : 0;
    const int q_end = window > 0
        ? int(min((long long)Tq, max(0LL, (long long)k0 + BM - 1 + window - off))) : Tq;

    A dk_acc[D / 8][4], dv_acc[D / 8][4];
    zero(dk_acc);
    zero(dv_acc);
    for (int h = hk * group; h < (hk + 1) * group; ++h) {
        const long long bh = (long long)b * H + h;
        const A slope = slopes ? slopes[h] : A(0);
        for (int i0 = q_begin; i0 < q_end; i0 += BN) {
            __syncthreads();
            load_rows<D, LD>(Qs, q + bh * Tq * D, i0, BN, Tq);
            load_rows<D, LD>(dOs, dout + bh * Tq * D, i0, BN, Tq);
            if (TC) {
                load_rows_transposed<D, LDP>(Qt, q + bh * Tq * D, i0, BN, Tq);
                load_rows_transposed<D, LDP>(dOt, dout + bh * Tq * D, i0, BN, Tq);
            }
            for (int idx = threadIdx.x; idx < BN; idx += THREADS) {
                const bool in = i0 + idx < Tq;
                lse_s[idx] = in ? lse[bh * Tq + i0 + idx] : A(0);
                delta_s[idx] = in ? delta[bh * Tq + i0 + idx] : A(0);
            }
            if (seg_b) load_seg(seg_q, seg_b, i0, BN, Tq, off);
            __syncthreads();

            A st[NT][4], dpt[NT][4];  // S^T and dP^T: 16 keys x BN queries
            zero(st);
            zero(dpt);
            warp_mma(st, Ks + warp * 16 * LD, LD, 1, Qs, 1, LD, D);    // S^T = K Q^T
            warp_mma(dpt, Vs + warp * 16 * LD, LD, 1, dOs, 1, LD, D);  // dP^T = V dO^T
            A bias[2];  // slope (key - p) at the lane's first column: p = i0 + 2t + off
            for (int r = 0; r < 2; ++r) bias[r] = slope * A(key[r] - (i0 + 2 * t + off));
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = e >> 1, c = 8 * n + 2 * t + (e & 1), i = i0 + c;
                    const bool vis = i < Tq && i <= hi[r] && i > lo[r] &&
                                     (!seg_b || seg_q[c] == seg_k[r]);
                    st[n][e] = vis ? exp_(st[n][e] * scale + (bias[r] - slope * A(8 * n + (e & 1))) -
                                          lse_s[c]) : A(0);  // P^T
                    put(Ps + (g + 8 * r) * LDP + c, st[n][e]);
                }
            __syncwarp();
            warp_mma(dv_acc, Ps, LDP, 1, dOb, b_k, b_n, BN);  // dV += P^T dO
            __syncwarp();  // every lane has read P^T before dS^T overwrites it
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = e >> 1, c = 8 * n + 2 * t + (e & 1);
                    put(Ps + (g + 8 * r) * LDP + c, st[n][e] * (dpt[n][e] - delta_s[c]));
                }
            __syncwarp();
            warp_mma(dk_acc, Ps, LDP, 1, Qb, b_k, b_n, BN);  // dK += dS^T Q
            __syncwarp();
        }
    }
    store_rows<D>(dk + bhk * Tk * D, dk_acc, k0 + warp * 16, Tk, scale, scale);
    store_rows<D>(dv + bhk * Tk * D, dv_acc, k0 + warp * 16, Tk, A(1), A(1));
}

// Instantiated here for nvcc only (`nvcc -c` checks each one and the compile report lists them):
// NVRTC (CuPy) instantiates just the ones the glue names through name_expressions, so a first
// call compiles the 1-3 kernels it needs instead of all of them.
#ifndef __CUDACC_RTC__
#define TGL_ATTENTION_BN(E, D, BN)                                                              \
    template __global__ void attention_forward<E, D, BN>(                                       \
        const E*, const E*, const E*, const int*, const Acc<E>::type*, E*, Acc<E>::type*, int,  \
        int, int, int, int, int, Acc<E>::type);                                                 \
    template __global__ void attention_backward_dq<E, D, BN>(                                   \
        const E*, const E*, const E*, const E*, const Acc<E>::type*, const Acc<E>::type*,       \
        const int*, const Acc<E>::type*, E*, int, int, int, int, int, int, Acc<E>::type);       \
    template __global__ void attention_backward_dkdv<E, D, BN>(                                 \
        const E*, const E*, const E*, const E*, const Acc<E>::type*, const Acc<E>::type*,       \
        const int*, const Acc<E>::type*, E*, E*, int, int, int, int, int, int, Acc<E>::type);
#define TGL_ATTENTION(E, D)                                                                     \
    template __global__ void attention_backward_prep<E, D>(const E*, const E*, Acc<E>::type*,   \
                                                           long long);                         \
    TGL_ATTENTION_BN(E, D, 32) TGL_ATTENTION_BN(E, D, 16)
TGL_ATTENTION(float, 32) TGL_ATTENTION(float, 64) TGL_ATTENTION(float, 128)
TGL_ATTENTION(bf16, 32) TGL_ATTENTION(bf16, 64) TGL_ATTENTION(bf16, 128)
// double on the GPU at D = 32 only: at 64 and 128 the backward's two D-wide accumulators need
// more than 255 registers and spill (the host emulator instantiates every D in double)
TGL_ATTENTION(double, 32)
#undef TGL_ATTENTION
#undef TGL_ATTENTION_BN
#endif
