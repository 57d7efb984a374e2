// Host emulation of the CUDA features mincore's kernels use, so the CUDA C of the "cupy" engine can
// run on a CPU in tests (tests/cuda_emulation.py). Every GPU thread of a block is a fiber;
// __syncthreads is a block barrier, warp shuffles exchange through a slot array between two warp
// barriers. Blocks run one after another, so one static buffer serves as shared memory.
// Only what scan_common.cu / scan_kernels.cu use is provided. It checks semantics, not speed, and
// not what only hardware shows (memory model, real float16 conversion instructions, NVRTC).
#pragma once
#include <math.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#define MINCORE_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
#define __align__(n)
#define __launch_bounds__(n)

struct mc_uint3 { unsigned x, y, z; };
inline mc_uint3 threadIdx, blockIdx, blockDim, gridDim;
using std::max;
using std::min;

inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, sizeof i); return i; }
template <class T> inline T __ldg(const T* p) { return *p; }
alignas(16) inline unsigned char smem[1 << 16];  // `extern __shared__ unsigned char smem[]` binds here

// GPU threads are fibers (ucontext) on one OS thread, switched only at barriers: deterministic, and
// a barrier that not every thread of its group reaches is reported instead of hanging.
struct mc_barrier { int n, count = 0; unsigned long gen = 0; };
struct mc_fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;  // uninitialised: no page is touched that the fiber does not use
  mc_barrier* wait = nullptr;
  unsigned long wait_gen = 0;
  bool done = false;
  unsigned tid = 0;
};
inline ucontext_t mc_sched;
inline mc_fiber* mc_self;
inline std::vector<mc_barrier> mc_warps;
inline mc_barrier mc_block_bar;
inline unsigned long long mc_slots[1024];
inline const std::function<void()>* mc_body;

inline void mc_arrive(mc_barrier& b) {
  if (++b.count == b.n) { b.count = 0; ++b.gen; return; }
  mc_self->wait = &b;
  mc_self->wait_gen = b.gen;
  swapcontext(&mc_self->ctx, &mc_sched);
}
inline void __syncthreads() { mc_arrive(mc_block_bar); }
inline void __syncwarp(unsigned = 0xffffffffu) { mc_arrive(mc_warps[mc_self->tid / 32]); }
template <class T> inline T __shfl_up_sync(unsigned, T v, int o, int width = 32) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  const unsigned t = mc_self->tid, lane = t % 32 % width;  // lanes shuffle within groups of width
  std::memcpy(&mc_slots[t], &v, sizeof(T));
  __syncwarp();
  T r = v;
  if (lane >= static_cast<unsigned>(o)) std::memcpy(&r, &mc_slots[t - o], sizeof(T));
  __syncwarp();  // nobody overwrites a slot before every lane has read
  return r;
}

inline void mc_fiber_main() {
  (*mc_body)();
  mc_self->done = true;
}  // returning resumes mc_sched through uc_link

// Run `body` as a grid (gx, gy, gz) of blocks (bx, by, 1). Throws on a barrier deadlock.
inline void mc_emulate(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                       const std::function<void()>& body) {
  gridDim = {gx, gy, gz};
  blockDim = {bx, by, 1};
  const unsigned n = bx * by;
  constexpr size_t kStack = 1 << 16;
  if (n > 1024) throw std::runtime_error("block larger than 1024 threads");
  mc_body = &body;
  for (unsigned z = 0; z < gz; ++z)
    for (unsigned y = 0; y < gy; ++y)
      for (unsigned x = 0; x < gx; ++x) {
        blockIdx = {x, y, z};
        mc_block_bar = {static_cast<int>(n)};
        mc_warps.clear();
        for (unsigned w = 0; w * 32 < n; ++w) mc_warps.push_back({static_cast<int>(std::min(32u, n - 32 * w))});
        std::vector<mc_fiber> fs(n);
        for (unsigned t = 0; t < n; ++t) {
          fs[t].tid = t;
          fs[t].stack.reset(new char[kStack]);
          getcontext(&fs[t].ctx);
          fs[t].ctx.uc_stack.ss_sp = fs[t].stack.get();
          fs[t].ctx.uc_stack.ss_size = kStack;
          fs[t].ctx.uc_link = &mc_sched;
          makecontext(&fs[t].ctx, mc_fiber_main, 0);
        }
        for (unsigned left = n; left > 0;) {
          bool progress = false;
          for (auto& f : fs) {
            if (f.done || (f.wait && f.wait->gen == f.wait_gen)) continue;
            f.wait = nullptr;
            mc_self = &f;
            threadIdx = {f.tid % bx, f.tid / bx, 0};
            swapcontext(&mc_sched, &f.ctx);
            progress = true;
            if (f.done) --left;
          }
          if (!progress) throw std::runtime_error("barrier deadlock: some threads never arrive");
        }
      }
}
