// mincore GPU scan kernels, part 2: the scan skeleton shared by every cell (llm.c dev/cuda style:
// reference -> kernel -> launcher; the reference is mincore/kernels/reference.py, the launcher
// mincore/kernels/cupy_engine.py; the block shape is chosen by shape in gpu_common.plan).
//
// Layout (B, T, D), D contiguous. Block = (dpb channels) x (nseg time segments); thread (dl, seg)
// owns channel d = (blockIdx.x % nd) * dpb + dl of batch b = blockIdx.x / nd (nd = ceil(D / dpb)).
// The T range [c*L, c*L + L) of global chunk c = blockIdx.z is walked in tiles of nseg*N steps;
// within a tile, segment seg owns N consecutive steps. Consecutive threads take consecutive d at
// the same t: every load is a coalesced row piece of dpb*sizeof(S) bytes (dpb >= 8: full sectors).
//
// Per tile (the chunked-T scan, on chip):
//   1. chunk totals: each thread loads its N steps into registers (all loads first) and composes
//      (A, B) with A = prod a, B = local scan from 0;
//   2. carry scan over segments: groups of nseg lanes scan each channel's nseg pairs with shuffles
//      (Hillis-Steele, log2(nseg) steps, one pass for the block) and fold in the previous tile's carry;
//   3. apply: each thread rescans its N register-resident steps from its carry-in and writes.
// Inputs are read once and outputs written once: minimal traffic. nseg == 1 is the plain
// thread-per-channel recurrence (no shared memory, no barriers) used when B*D fills the device.
//
// Napkin math (H100 80GB HBM3: 2.9 TB/s measured device copy; 132 SMs): min_gru fwd at
// (8, 65536, 256) float32 moves 3 * 134M * 4 B = 1.6 GB -> 0.55 ms at copy speed; backward moves 6
// values per element, so fwd+bwd at copy speed is 1.64 ms. B*D = 2048 channels is 1.5% of the 135k
// threads the device holds, so T is split into 32 segments (65k threads, N = 8 loads per input in
// flight each: 65k * 8 * 8 B = 4 MB, above the ~2-3 MB latency x bandwidth product, IF the loads
// really are all in flight: with the gate math between them they were not, see "cells" in
// scan_common.cu). Measured (docs/BENCHMARKS.md): fwd 0.84 ms, bwd (16 segments) 1.62 ms, 67% of
// copy; at (64, 4096, 256) (16k channels, 4 segments) 81%. The segment scan is ~2 log2(nseg)
// shuffles per tile per lane group, against nseg*N*dpb loads per block.
//
// Global chunks (gridDim.z = C > 1, only for very small B*D): MODE_TOTALS writes each chunk's
// (A, B) to cA/cB, mc_carry scans them per channel (carry-in into cB), MODE_APPLY rescans each
// chunk from its carry. Inputs are read twice there (5/3 of minimal traffic for min_gru fwd).
#include "scan_common.cu"

enum { MODE_FULL = 0, MODE_TOTALS = 1, MODE_APPLY = 2 };

template <class Cell, int N>
__global__ void __launch_bounds__(256) mc_scan(
    const typename Cell::S* x0, const typename Cell::S* x1, const typename Cell::S* x2,
    const typename Cell::S* x3, const typename Cell::S* x4,
    const typename Cell::S* h0,   // (B, D) state before t = 0 (h_{t-1} for backward cells)
    const typename Cell::S* s0,   // (B, D) initial scan state (h0 forward, zeros backward)
    typename Cell::S* y0, typename Cell::S* y1, typename Cell::S* y2,
    typename Cell::S* yfin,       // (B, D) final state (dh0), written when fin != 0
    typename Cell::V* part,       // (B, C, nseg, D) per-thread partial sums (lru dlam)
    typename Cell::V* cA, typename Cell::V* cB,  // (B, C, D) chunk totals / carries
    int B, int T, int D, int L, int rev, int mode, int flags, int fin) {
  using S = typename Cell::S;
  using V = typename Cell::V;
  using Step = typename Cell::Step;
  const Args<S> g{x0, x1, x2, x3, x4, h0, y0, y1, y2, flags, D};
  const int dpb = blockDim.x, nseg = blockDim.y, dl = threadIdx.x, seg = threadIdx.y;
  const int nd = (D + dpb - 1) / dpb;  // blockIdx.x = b * nd + (block of dpb channels): B may exceed 65535
  const int b = blockIdx.x / nd, d = (blockIdx.x % nd) * dpb + dl, c = blockIdx.z, C = gridDim.z;
  const bool live = d < D;
  const long long hb = (long long)b * D + d, cb = ((long long)b * C + c) * D + d;
  const long long u_begin = (long long)c * L, u_end = min((long long)T, u_begin + L);

  V s = vzero<V>(), P = vone<V>(), acc = vzero<V>();
  if (live && mode == MODE_FULL) s = ld(s0, hb);
  if (live && mode == MODE_APPLY) s = cB[cb];

  extern __shared__ __align__(16) unsigned char smem[];
  const int W = dpb + 1;  // padded row: the scanning warp reads a column without bank conflicts
  V* shA = reinterpret_cast<V*>(smem);  // [2][nseg][W], double-buffered by tile parity
  V* shB = shA + 2 * nseg * W;
  V* carS = shB + 2 * nseg * W;  // [dpb] state carried between tiles
  V* carP = carS + dpb;          // [dpb] product of a carried between tiles (MODE_TOTALS)
  if (nseg > 1) {
    if (seg == 0) { carS[dl] = s; carP[dl] = P; }
    __syncthreads();
  }

  int buf = 0;
  for (long long u0 = u_begin; u0 < u_end; u0 += (long long)nseg * N, buf ^= 1) {
    Step e[N];
    V A = vone<V>(), Bc = vzero<V>();
    // Whole tiles (all but the last of a chunk) take a branch-free path that issues every load of
    // the tile before any math (see "cells" in scan_common.cu): N loads per input in flight. Kept
    // apart from the guarded loop on purpose: one loop with `whole || guard` compiles (nvcc 13,
    // sm_90) to at most 2 loads in a row and ~120 registers instead of 16-40 and 48-80.
    const bool whole = live && u0 + (long long)nseg * N <= u_end;
    if (whole) {
      typename Cell::Raw r[N];
#pragma unroll
      for (int j = 0; j < N; ++j) {  // 1. fetch this thread's N steps, then their totals
        const long long u = u0 + (long long)seg * N + j;
        const long long t = rev ? T - 1 - u : u, i = ((long long)b * T + t) * D + d;
        Cell::fetch(g, i, t > 0 ? i - D : -1, hb, r[j]);
      }
#pragma unroll
      for (int j = 0; j < N; ++j) {
        Cell::prep(g, r[j], e[j]);
        Bc = e[j].a * Bc + Cell::b(e[j]);
        A = e[j].a * A;
      }
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const long long u = u0 + (long long)seg * N + j;
        if (live && u < u_end) {
          const long long t = rev ? T - 1 - u : u, i = ((long long)b * T + t) * D + d;
          typename Cell::Raw r;
          Cell::fetch(g, i, t > 0 ? i - D : -1, hb, r);
          Cell::prep(g, r, e[j]);
          Bc = e[j].a * Bc + Cell::b(e[j]);
          A = e[j].a * A;
        }
      }
    }
    V s_in;
    if (nseg == 1) {
      s_in = s;
      s = A * s + Bc;
      P = A * P;
    } else {  // 2. carry scan over the nseg segments of the tile
      V* a_ = shA + buf * nseg * W;
      V* b_ = shB + buf * nseg * W;
      a_[seg * W + dl] = A;
      b_[seg * W + dl] = Bc;
      __syncthreads();
      // One pass: each warp scans 32/nseg channels at once, lanes [q*nseg, (q+1)*nseg) holding the
      // segments of channel dd (shuffles of width nseg); the dpb*nseg/32 warps cover all dpb channels.
      const int tid = seg * dpb + dl, lane = tid & 31, sg = lane & (nseg - 1);
      const int dd = (tid >> 5) * (32 / nseg) + lane / nseg;
      V xa = a_[sg * W + dd], xb = b_[sg * W + dd];
      for (int o = 1; o < nseg; o <<= 1) {  // inclusive, earlier segment on the right of *
        const V pa = shfl_up(xa, o, nseg), pb = shfl_up(xb, o, nseg);
        if (sg >= o) { xb = xa * pb + xb; xa = xa * pa; }
      }
      V ea = shfl_up(xa, 1, nseg), eb = shfl_up(xb, 1, nseg);  // exclusive prefix
      if (sg == 0) { ea = vone<V>(); eb = vzero<V>(); }
      const V cs = carS[dd], cp = carP[dd];
      __syncwarp();
      a_[sg * W + dd] = ea * cp;
      b_[sg * W + dd] = ea * cs + eb;
      if (sg == nseg - 1) { carS[dd] = xa * cs + xb; carP[dd] = xa * cp; }
      __syncthreads();
      s_in = b_[seg * W + dl];
    }
    if (mode != MODE_TOTALS) {  // 3. apply: rescan the register-resident steps from the carry-in
      V x = s_in;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const long long u = u0 + (long long)seg * N + j;
        if (whole || (live && u < u_end)) {
          const long long t = rev ? T - 1 - u : u, i = ((long long)b * T + t) * D + d;
          x = Cell::emit(g, i, e[j], x, acc);
        }
      }
      if (nseg == 1) s = x;  // the exact sequential recurrence on the thread-per-channel path
    }
  }
  if (nseg > 1) { s = carS[dl]; P = carP[dl]; }  // written before the loop's last barrier
  if (live && Cell::HAS_PART) part[(((long long)b * C + c) * nseg + seg) * D + d] = acc;
  if (!live || seg != 0) return;
  if (mode == MODE_TOTALS) { cA[cb] = P; cB[cb] = s; }
  else if (fin && c == C - 1) st(yfin, hb, s);
}

// Carry scan over global chunks, one thread per channel: cB[b, c, d] <- state entering chunk c.
template <class V, class S>
__global__ void mc_carry(V* cA, V* cB, const S* s0, int B, int C, int D) {
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long long)B * D) return;
  const long long b = idx / D, d = idx % D;
  V s = ld(s0, idx);
  for (int c = 0; c < C; ++c) {
    const long long k = (b * C + c) * D + d;
    const V A = cA[k], Bv = cB[k];
    cB[k] = s;
    s = A * s + Bv;
  }
}
