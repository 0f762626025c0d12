// A host-side emulator for the kernels in tinygrad_llm/kernels: each CUDA thread of a block runs
// as an OS thread, __syncthreads is a block barrier, warp shuffles exchange through a per-warp
// slot array between two warp barriers, __syncwarp is a warp barrier, and blocks run one after
// another (so `__shared__` becomes a function-local static). The tensor-core instruction
// mma.sync.m16n8k16 (bf16 in, float32 out) is modelled the same way: each lane deposits its
// fragment registers, and each lane then computes its four outputs from the whole warp's
// fragments, decoded with the PTX ISA's layout, so a kernel that puts an element in the wrong
// register gets the wrong answer here too. It runs the real kernel sources, unmodified, so the tests can
// check the kernels' logic (reductions, packs, tails, index arithmetic) and the glue's launch
// arguments on a machine without a GPU. Speed is not the point: small sizes only.
//
// Two more things a GPU would show and a plain run would not:
// - shared-memory bank conflicts of the mma fragment loads: each lane reports the shared address
//   of every fragment register it loads (attention.cu's pair()), and at each emulated mma the
//   warp's loads since the last one are grouped by position, one warp-wide load each, and
//   counted the way the hardware splits them: one wavefront per distinct 4-byte word in the
//   busiest of the 32 banks (emu_fragment_bank_stats);
// - huge tensors: emu_set_block_range(first, end) runs only the blocks with linear index
//   first <= x + gx (y + gy z) < end, so a test can hand a kernel arrays of more than 2^31
//   elements (mapped, never filled) and run just the last block, whose offsets need 64 bits.
//
// Exported: emu_<kernel>_<float|double>(cfg, sizes, n_args, args) -> 0, or -1 (argument count),
// i + 1 (argument i's byte size), -2 (a write past the dynamic shared memory), where cfg = grid xyz,
// block xyz, dynamic shared bytes; args[i] points at the i-th argument's value and sizes[i] is its byte size, checked
// against the kernel's parameter list (a Python int passed where the kernel takes a 4-byte int
// fails here, as it would corrupt the launch on a GPU).
#include <atomic>
#include <barrier>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __CUDACC_RTC__ 1      // common.cuh: skip cuda_runtime.h
#define TGL_HOST_EMULATION 1  // common.cuh: dynamic shared memory comes from here
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct dim3 { unsigned x = 1, y = 1, z = 1; };
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

struct float4 { float x, y, z, w; };
struct double2 { double x, y; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline double2 make_double2(double a, double b) { return {a, b}; }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
using std::max;
using std::min;
using std::exp; using std::log; using std::sqrt; using std::tanh; using std::erf;
// expf, logf, sqrtf, tanhf, erff come from <cmath> in the global namespace

// --- the block's barrier and the warps' shuffle slots ---------------------------------------------
static std::unique_ptr<std::barrier<>> block_barrier;
struct Warp {
    std::unique_ptr<std::barrier<>> bar;
    unsigned char slot[32][8];
    unsigned frag[32][6];  // mma fragments: A's four registers, then B's two
    std::vector<long> loads[32];  // each lane's fragment loads since the last mma (byte offsets)
};
static std::vector<Warp> warps;

static std::vector<unsigned char> dynamic_shared;  // the launch's dynamic shared memory
template <typename T> T* dynamic_smem() { return reinterpret_cast<T*>(dynamic_shared.data()); }

// --- bank conflicts of the fragment loads -------------------------------------------------------
static std::atomic<long> fragment_requests{0}, fragment_wavefronts{0};
static thread_local std::vector<long> lane_loads;  // this lane's loads since its last mma
extern "C" void emu_fragment_bank_stats(long* out) {
    out[0] = fragment_requests.exchange(0);
    out[1] = fragment_wavefronts.exchange(0);
}
// A fragment register loaded from p (one 4-byte load, or two 2-byte loads p[0], p[stride]).
template <typename E> void tgl_emulated_fragment_load(const E* p, int stride) {
    const long base = long(reinterpret_cast<const unsigned char*>(p) - dynamic_shared.data());
    if (stride == 1) {
        lane_loads.push_back(base);
    } else {
        lane_loads.push_back(base);
        lane_loads.push_back(base + long(stride) * long(sizeof(E)));
    }
}
// Called by every lane of a warp between two of the mma's warp barriers: the warp's loads,
// position by position, each split into wavefronts by its busiest bank.
static void count_fragment_loads(Warp& w, int lane) {
    if (lane != 0) return;
    const size_t n = w.loads[0].size();
    for (int l = 1; l < 32; ++l)
        if (w.loads[l].size() != n) { std::fprintf(stderr, "emulator: lanes loaded different fragment counts\n"); std::abort(); }
    for (size_t i = 0; i < n; ++i) {
        std::vector<long> words[32];
        for (int l = 0; l < 32; ++l) {
            const long word = w.loads[l][i] >> 2;
            auto& bank = words[((word % 32) + 32) % 32];
            if (std::find(bank.begin(), bank.end(), word) == bank.end()) bank.push_back(word);
        }
        size_t ways = 1;
        for (auto& bank : words) ways = std::max(ways, bank.size());
        ++fragment_requests;
        fragment_wavefronts += long(ways);
    }
}

inline int flat_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { warps[flat_tid() >> 5].bar->arrive_and_wait(); }

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, d = a b + c in place on c. Lane
// (g = lane / 4, t = lane % 4) holds A(g + 8 (r & 1), 2t + 8 (r >> 1) + h) in half h of a[r],
// B(2t + 8 r + h, g) in half h of b[r], and C(g + 8 (e >> 1), 2t + (e & 1)) in c[e]. The products
// of two bf16 values are exact in float; they are added in k order.
static std::atomic<long> emulated_mma_count{0};
extern "C" long emu_mma_count() { return emulated_mma_count.load(); }
void tgl_emulated_mma_m16n8k16_bf16(float* c, const unsigned* a, const unsigned* b) {
    const int tid = flat_tid(), lane = tid & 31, g = lane >> 2, t = lane & 3;
    Warp& w = warps[tid >> 5];
    std::memcpy(w.frag[lane], a, 16);
    std::memcpy(w.frag[lane] + 4, b, 8);
    w.loads[lane].swap(lane_loads);
    w.bar->arrive_and_wait();
    count_fragment_loads(w, lane);
    auto half = [](unsigned reg, int h) { return __uint_as_float((h ? reg >> 16 : reg & 0xffffu) << 16); };
    auto A = [&](int row, int k) {
        return half(w.frag[(row & 7) * 4 + (k & 7) / 2][(row >> 3) + 2 * (k >> 3)], k & 1);
    };
    auto B = [&](int k, int col) { return half(w.frag[col * 4 + (k & 7) / 2][4 + (k >> 3)], k & 1); };
    float d[4];
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
        float acc = c[e];
        for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
        d[e] = acc;
    }
    w.bar->arrive_and_wait();  // every lane has read the fragments before they change
    w.loads[lane].clear();
    std::memcpy(c, d, 16);
    if (lane == 0) ++emulated_mma_count;
}

template <typename T> T __shfl_xor_sync(unsigned, T v, int mask) {
    const int tid = flat_tid(), lane = tid & 31;
    Warp& w = warps[tid >> 5];
    std::memcpy(w.slot[lane], &v, sizeof(T));
    w.bar->arrive_and_wait();
    T r;
    std::memcpy(&r, w.slot[lane ^ mask], sizeof(T));
    w.bar->arrive_and_wait();
    return r;
}

// One OS thread per CUDA thread of a block, kept in a pool across launches (creating hundreds of
// threads per launch cost more than the kernels); the threads walk the blocks in order, meeting at
// a barrier between blocks (so the static "shared" memory of one block is never seen by the next).
struct Pool {
    std::mutex mu;
    std::condition_variable wake, done;
    std::vector<std::thread> threads;
    std::function<void(int)> job;  // run by workers 0..n-1 of the current launch
    int n = 0, remaining = 0;
    unsigned long generation = 0;

    void run(int n_threads, std::function<void(int)> fn) {
        std::unique_lock<std::mutex> lock(mu);
        while ((int)threads.size() < n_threads) {
            const int idx = threads.size();
            threads.emplace_back([this, idx] { worker(idx); });
            threads.back().detach();
        }
        job = std::move(fn);
        n = remaining = n_threads;
        ++generation;
        wake.notify_all();
        done.wait(lock, [this] { return remaining == 0; });
    }

    void worker(int idx) {
        unsigned long seen = 0;
        for (;;) {
            std::function<void(int)> fn;
            {
                std::unique_lock<std::mutex> lock(mu);
                wake.wait(lock, [&] { return generation != seen && idx < n; });
                seen = generation;
                fn = job;
            }
            fn(idx);
            std::lock_guard<std::mutex> lock(mu);
            if (--remaining == 0) done.notify_all();
        }
    }
};
static Pool& pool = *new Pool;  // never destroyed: its detached threads wait in it until exit

// Bytes past the launch's dynamic shared memory that must still hold their fill after the
// launch: a kernel that writes past what the glue asked for fails instead of corrupting memory.
constexpr int SHARED_GUARD = 1024;

// The blocks a launch runs, by linear index (all of them unless a test narrows it).
static long long block_first = 0, block_end = -1;
extern "C" void emu_set_block_range(long long first, long long end) { block_first = first; block_end = end; }

template <class F> bool launch(const int* cfg, F body) {
    gridDim = {unsigned(cfg[0]), unsigned(cfg[1]), unsigned(cfg[2])};
    blockDim = {unsigned(cfg[3]), unsigned(cfg[4]), unsigned(cfg[5])};
    // NaN-filled, like poisoned outputs: a kernel reading shared memory it never wrote shows
    dynamic_shared.assign(cfg[6] + 16 + SHARED_GUARD, 0xff);
    const int n = blockDim.x * blockDim.y * blockDim.z;
    if (n % 32) { std::fprintf(stderr, "emulator: block of %d threads is not whole warps\n", n); std::abort(); }
    block_barrier = std::make_unique<std::barrier<>>(n);
    std::barrier<> between_blocks(n);
    warps = std::vector<Warp>(n / 32);
    for (auto& w : warps) w.bar = std::make_unique<std::barrier<>>(32);
    pool.run(n, [&](int t) {
        threadIdx = {unsigned(t % blockDim.x), unsigned(t / blockDim.x % blockDim.y),
                     unsigned(t / (blockDim.x * blockDim.y))};
        const long long total = (long long)gridDim.x * gridDim.y * gridDim.z;
        const long long end = block_end < 0 ? total : std::min(block_end, total);
        for (long long id = block_first; id < end; ++id) {
            blockIdx = {unsigned(id % gridDim.x), unsigned(id / gridDim.x % gridDim.y),
                        unsigned(id / ((long long)gridDim.x * gridDim.y))};
            body();
            between_blocks.arrive_and_wait();
        }
    });
    return std::all_of(dynamic_shared.begin() + cfg[6], dynamic_shared.end(),
                       [](unsigned char c) { return c == 0xff; });
}

#include "../tinygrad_llm/kernels/softmax.cu"
#include "../tinygrad_llm/kernels/layernorm.cu"
#include "../tinygrad_llm/kernels/cross_entropy.cu"
#include "../tinygrad_llm/kernels/gelu.cu"
#include "../tinygrad_llm/kernels/adamw.cu"
#include "../tinygrad_llm/kernels/attention.cu"
#include "../tinygrad_llm/kernels/embedding.cu"
#include "../tinygrad_llm/kernels/random.cu"

template <class F> struct Launcher;
template <class... A> struct Launcher<void (*)(A...)> {
    template <size_t... I>
    static void call(void (*k)(A...), void** a, std::index_sequence<I...>) {
        k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(a[I])...);
    }
    static int run(void (*k)(A...), const int* cfg, const int* sizes, int n_args, void** a) {
        const int want[] = {int(sizeof(A))...};
        if (n_args != int(sizeof...(A))) return -1;
        for (int i = 0; i < n_args; ++i)
            if (sizes[i] != want[i]) return i + 1;  // argument i has the wrong byte size
        if (!launch(cfg, [=] { call(k, a, std::index_sequence_for<A...>{}); }))
            return -2;  // wrote past its dynamic shared memory
        return 0;
    }
};

#define EXPORT(name, T)                                                                   \
    extern "C" int emu_##name##_##T(const int* cfg, const int* sizes, int n, void** a) { \
        auto k = &name<T>;                                                                \
        return Launcher<decltype(k)>::run(k, cfg, sizes, n, a);                           \
    }
#define EXPORT2(name) EXPORT(name, float) EXPORT(name, double)

EXPORT2(softmax_forward)
EXPORT2(softmax_backward)
#define EXPORTJ(name, T, J)                                                                     \
    extern "C" int emu_##name##_##T##_##J(const int* cfg, const int* sizes, int n, void** a) { \
        auto k = &name<T, J>;                                                                   \
        return Launcher<decltype(k)>::run(k, cfg, sizes, n, a);                                 \
    }
#define EXPORT_WARP(name, T) \
    EXPORTJ(name, T, 1) EXPORTJ(name, T, 2) EXPORTJ(name, T, 4) EXPORTJ(name, T, 8) EXPORTJ(name, T, 16) EXPORTJ(name, T, 32)
EXPORT_WARP(softmax_forward_warp, float)
EXPORT_WARP(softmax_forward_warp, double)
EXPORT_WARP(softmax_backward_warp, float)
EXPORT_WARP(softmax_backward_warp, double)
#define EXPORT_LN(T) \
    EXPORTJ(layernorm_backward_warp, T, 1) EXPORTJ(layernorm_backward_warp, T, 2) \
    EXPORTJ(layernorm_backward_warp, T, 4) EXPORTJ(layernorm_backward_warp, T, 8) \
    EXPORTJ(layernorm_backward_warp, T, 12) EXPORTJ(layernorm_backward_warp, T, 16)
EXPORT_LN(float)
EXPORT_LN(double)
EXPORTJ(layernorm_backward_warp, float, 24)
EXPORTJ(layernorm_backward_warp, float, 32)
EXPORT2(layernorm_forward)
EXPORT2(layernorm_backward_dx)
EXPORT2(layernorm_backward_dwdb)
EXPORT2(column_sum)
EXPORT2(cross_entropy_forward)
EXPORT2(cross_entropy_backward)
EXPORT2(gelu_forward)
EXPORT2(gelu_backward)
EXPORT(gelu_forward, bf16)
EXPORT(gelu_backward, bf16)
EXPORT2(adamw_step)

// attention: emu_attention_<kernel>_<float|double|bf16>_<D>[_<BN>] (prep has no BN)
#define EXPORT_ATTN(name, T, tname, D)                                                          \
    extern "C" int emu_##name##_##tname##_##D(const int* cfg, const int* sizes, int n, void** a) { \
        auto k = &name<T, D>;                                                                   \
        return Launcher<decltype(k)>::run(k, cfg, sizes, n, a);                                 \
    }
#define EXPORT_ATTN_BN(name, T, tname, D, BN)                                                   \
    extern "C" int emu_##name##_##tname##_##D##_##BN(const int* cfg, const int* sizes, int n,   \
                                                     void** a) {                                \
        auto k = &name<T, D, BN>;                                                               \
        return Launcher<decltype(k)>::run(k, cfg, sizes, n, a);                                 \
    }
#define EXPORT_ATTN_TILES(T, tname, D, BN)                                                    \
    EXPORT_ATTN_BN(attention_forward, T, tname, D, BN)                                          \
    EXPORT_ATTN_BN(attention_backward_dq, T, tname, D, BN)                                      \
    EXPORT_ATTN_BN(attention_backward_dkdv, T, tname, D, BN)
#define EXPORT_ATTN_ALL(T, tname, D) \
    EXPORT_ATTN(attention_backward_prep, T, tname, D) EXPORT_ATTN_TILES(T, tname, D, 32)
EXPORT_ATTN_ALL(float, float, 32) EXPORT_ATTN_ALL(float, float, 64) EXPORT_ATTN_ALL(float, float, 128)
EXPORT_ATTN_ALL(double, double, 32) EXPORT_ATTN_ALL(double, double, 64) EXPORT_ATTN_ALL(double, double, 128)
EXPORT_ATTN_ALL(tgl::bf16, bf16, 32) EXPORT_ATTN_ALL(tgl::bf16, bf16, 64) EXPORT_ATTN_ALL(tgl::bf16, bf16, 128)
// the BN = 16 tiles the glue picks on GPUs with less shared memory (float D = 128, double D = 32),
// and one bf16 size so the 16-wide P V product runs through the mma model too
EXPORT_ATTN_TILES(float, float, 128, 16) EXPORT_ATTN_TILES(float, float, 64, 16)
EXPORT_ATTN_TILES(double, double, 32, 16) EXPORT_ATTN_TILES(tgl::bf16, bf16, 64, 16)
EXPORT2(embedding_backward)
EXPORT2(philox_uniform)
EXPORT2(philox_normal)
