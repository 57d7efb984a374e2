// mincore GPU scan kernels, part 1: storage/accumulation types and the per-element "cells".
//
// Reference (the oracle, mincore/kernels/reference.py):  h_t = a_t h_{t-1} + b_t, and the adjoint
//   G_t = dh_t + a_{t+1} G_{t+1}, db_t = G_t, da_t = G_t h_{t-1}, dh0 = a_0 G_0.
// The adjoint is written as a reverse scan of the value c_t = a_t G_t that flows into h_{t-1}:
//   c_t = a_t c_{t+1} + a_t dh_t   (coefficients at index t only, so chunks need no shifted gates),
//   G_t = dh_t + c_{t+1},  dh0 = c_0.
// So every kernel is "a linear scan over u with per-step (a, b)"; a cell says how to get (a, b)
// from its inputs at one (b, t, d) element (load) and what to write given the incoming state (emit).
//
// Types: S = storage (half_t, float, double, cplx<float>, cplx<double>), V = accumulation
// (float for half/float storage, double for double, complex of the matching precision).
// No headers: float16 conversion is one PTX instruction each way, so the file compiles the same
// under NVRTC (CuPy) and nvcc without include paths.
#pragma once

struct half_t { unsigned short x; };

template <class R> struct cplx { R re, im; };
template <class R> __device__ __forceinline__ cplx<R> operator*(cplx<R> a, cplx<R> b) {
  return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}
template <class R> __device__ __forceinline__ cplx<R> operator+(cplx<R> a, cplx<R> b) {
  return {a.re + b.re, a.im + b.im};
}
template <class R> __device__ __forceinline__ cplx<R> conj(cplx<R> a) { return {a.re, -a.im}; }

template <class V> __device__ __forceinline__ V vone() { return V(1); }
template <class V> __device__ __forceinline__ V vzero() { return V(0); }
template <> __device__ __forceinline__ cplx<float> vone() { return {1.f, 0.f}; }
template <> __device__ __forceinline__ cplx<float> vzero() { return {0.f, 0.f}; }
template <> __device__ __forceinline__ cplx<double> vone() { return {1.0, 0.0}; }
template <> __device__ __forceinline__ cplx<double> vzero() { return {0.0, 0.0}; }

// loads and stores: storage -> accumulation type and back (read-only loads through the nc path)
__device__ __forceinline__ float ld(const float* p, long long i) { return __ldg(p + i); }
__device__ __forceinline__ double ld(const double* p, long long i) { return __ldg(p + i); }
__device__ __forceinline__ float ld(const half_t* p, long long i) {
  unsigned short h = __ldg(reinterpret_cast<const unsigned short*>(p) + i);
#ifdef MINCORE_HOST_EMULATION  // tests/cuda_emulation.py runs these kernels on the CPU
  return static_cast<float>(__builtin_bit_cast(_Float16, h));
#else
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#endif
}
template <class R> __device__ __forceinline__ cplx<R> ld(const cplx<R>* p, long long i) { return p[i]; }
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(double* p, long long i, double v) { p[i] = v; }
__device__ __forceinline__ void st(half_t* p, long long i, float v) {
#ifdef MINCORE_HOST_EMULATION
  unsigned short h = __builtin_bit_cast(unsigned short, static_cast<_Float16>(v));
#else
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
#endif
  reinterpret_cast<unsigned short*>(p)[i] = h;
}
template <class R> __device__ __forceinline__ void st(cplx<R>* p, long long i, cplx<R> v) { p[i] = v; }

// warp shuffles for the intra-block carry scan (complex: two shuffles)
// (width w: lanes shuffle within aligned groups of w, a power of two <= 32)
__device__ __forceinline__ float shfl_up(float x, int o, int w) {
  return __shfl_up_sync(0xffffffffu, x, o, w);
}
__device__ __forceinline__ double shfl_up(double x, int o, int w) {
  return __shfl_up_sync(0xffffffffu, x, o, w);
}
template <class R> __device__ __forceinline__ cplx<R> shfl_up(cplx<R> x, int o, int w) {
  return {shfl_up(x.re, o, w), shfl_up(x.im, o, w)};
}

// ---- gate math (mincore/kernels/gates.py), float and double overloads --------------------------
__device__ __forceinline__ float ex(float x) { return __expf(x); }  // ~2 ulp, plenty for a gate
__device__ __forceinline__ double ex(double x) { return exp(x); }
__device__ __forceinline__ float ab(float x) { return fabsf(x); }
__device__ __forceinline__ double ab(double x) { return fabs(x); }
__device__ __forceinline__ float mx0(float x) { return fmaxf(x, 0.f); }
__device__ __forceinline__ double mx0(double x) { return fmax(x, 0.0); }
__device__ __forceinline__ float l1p(float x) { return log1pf(x); }
__device__ __forceinline__ double l1p(double x) { return log1p(x); }

// 1 / (1 + e) for e in (0, 1]: the float division's IEEE slow path is a branch, and 1 + e in [1, 2]
// is where __fdividef is within 2 ulp
__device__ __forceinline__ float rcp1p(float e) { return __fdividef(1.f, 1.f + e); }
__device__ __forceinline__ double rcp1p(double e) { return 1.0 / (1.0 + e); }

// sigmoid(x) and sigmoid(-x) from one exp of a non-positive argument (no overflow either sign)
template <class A> __device__ __forceinline__ void sig2(A x, A& s, A& sneg) {
  A e = ex(-ab(x)), r = rcp1p(e);
  s = x >= A(0) ? r : e * r;
  sneg = x >= A(0) ? e * r : r;
}
template <class A> __device__ __forceinline__ A softplus(A x) { return mx0(x) + l1p(ex(-ab(x))); }
// v >= 0 decided on the bits for float: -0.0 counts (as in IEEE), a negative subnormal does not, even
// where float comparisons flush denormals (an H100 run took v = -1e-45 as >= 0: g'(v) = 1, not 1/4)
__device__ __forceinline__ bool nonneg(float v) {
  const int b = __float_as_int(v);
  return (b >= 0 && v == v) || b == static_cast<int>(0x80000000u);
}
__device__ __forceinline__ bool nonneg(double v) { return v >= 0.0; }

// h~ = g(v) (log_space, appendix B: v + 0.5 for v >= 0, sigmoid(v) below) or v; dht = dh~/dv
template <class A> __device__ __forceinline__ void htilde(A v, bool log_space, A& ht, A& dht) {
  if (!log_space) { ht = v; dht = A(1); return; }
  A s, sn;
  sig2(v, s, sn);
  const bool pos = nonneg(v);
  ht = pos ? v + A(0.5) : s;
  dht = pos ? A(1) : s * sn;
}

enum { LOG_SPACE = 1, NORMALIZE = 2 };

// Pointers and sizes handed to every cell. x*: inputs, y*: outputs, h0: the (B, D) state before t=0.
template <class S> struct Args {
  const S *x0, *x1, *x2, *x3, *x4, *h0;
  S *y0, *y1, *y2;
  int flags;  // LOG_SPACE | NORMALIZE
  int D;
};

// ---- cells. fetch(g, i, ip, hb, r) only loads element i's inputs into r (Raw); prep(g, r, e) turns
// them into e.a, e.b (and what emit needs). The kernel fetches all N steps of a tile before the first
// prep: the gate math has branches (flags, slow paths), and a load after a branch is not hoisted
// above it, which left one step's loads in flight per thread (36% of copy on an H100, SASS read).
// emit(g, i, e, s_in, part) writes the outputs of element i and returns s_out = e.a * s_in + e.b.
// i: flat index of (b, t, d); ip: index of h_{t-1} in x-arrays, or -1 meaning h0[hb] (hb = b*D + d);
// part: the thread's running sum for reductions over (b, t) (lru dlam).
template <class S, class V> __device__ __forceinline__ V ld_prev(const S* h, const S* h0, long long ip,
                                                                 long long hb) {
  return ld(ip >= 0 ? h : h0, ip >= 0 ? ip : hb);  // one load from a selected pointer: no branch
}

template <class S_, class V_> struct ScanFwd {  // x0 = a, x1 = b; y0 = h
  using S = S_; using V = V_;
  static constexpr bool HAS_PART = false;
  struct Step { V a, b; };
  __device__ static V b(const Step& e) { return e.b; }
  using Raw = Step;
  __device__ static void fetch(const Args<S>& g, long long i, long long, long long, Raw& r) {
    r.a = ld(g.x0, i); r.b = ld(g.x1, i);
  }
  __device__ static void prep(const Args<S>&, const Raw& r, Step& e) { e = r; }
  __device__ static V emit(const Args<S>& g, long long i, const Step& e, V s, V&) {
    V h = e.a * s + e.b;
    st(g.y0, i, h);
    return h;
  }
};

// Backward cells keep per step only a, dh and the factors c_k with output_k = G c_k: registers hold
// N steps of them, and fewer registers let more blocks share an SM.
template <class S_, class V_> struct ScanBwd {  // x0 = a, x1 = h, x2 = dh; y0 = da, y1 = db
  using S = S_; using V = V_;
  static constexpr bool HAS_PART = false;
  struct Step { V a, dh, hp; };
  __device__ static V b(const Step& e) { return e.a * e.dh; }  // the adjoint scan: c = a (c' + dh)
  using Raw = Step;
  __device__ static void fetch(const Args<S>& g, long long i, long long ip, long long hb, Raw& r) {
    r.a = ld(g.x0, i); r.dh = ld(g.x2, i); r.hp = ld_prev<S, V>(g.x1, g.h0, ip, hb);
  }
  __device__ static void prep(const Args<S>&, const Raw& r, Step& e) { e = r; }
  __device__ static V emit(const Args<S>& g, long long i, const Step& e, V s, V&) {
    V G = e.dh + s;
    st(g.y0, i, G * e.hp); st(g.y1, i, G);
    return e.a * G;
  }
};

template <class S_, class V_> struct GruFwd {  // x0 = k, x1 = v; y0 = h
  using S = S_; using V = V_;
  static constexpr bool HAS_PART = false;
  struct Step { V a, b; };
  __device__ static V b(const Step& e) { return e.b; }
  struct Raw { V k, v; };
  __device__ static void fetch(const Args<S>& g, long long i, long long, long long, Raw& r) {
    r.k = ld(g.x0, i); r.v = ld(g.x1, i);
  }
  __device__ static void prep(const Args<S>& g, const Raw& r, Step& e) {
    V z, ht, dht;
    sig2(r.k, z, e.a);
    htilde(r.v, g.flags & LOG_SPACE, ht, dht);
    e.b = z * ht;
  }
  __device__ static V emit(const Args<S>& g, long long i, const Step& e, V s, V&) {
    V h = e.a * s + e.b;
    st(g.y0, i, h);
    return h;
  }
};

template <class S_, class V_> struct GruBwd {  // x0 = k, x1 = v, x2 = h, x3 = dh; y0 = dk, y1 = dv
  using S = S_; using V = V_;
  static constexpr bool HAS_PART = false;
  struct Step { V a, dh, ck, cv; };
  __device__ static V b(const Step& e) { return e.a * e.dh; }  // the adjoint scan: c = a (c' + dh)
  struct Raw { V k, v, dh, hp; };
  __device__ static void fetch(const Args<S>& g, long long i, long long ip, long long hb, Raw& r) {
    r.k = ld(g.x0, i); r.v = ld(g.x1, i); r.dh = ld(g.x3, i); r.hp = ld_prev<S, V>(g.x2, g.h0, ip, hb);
  }
  __device__ static void prep(const Args<S>& g, const Raw& r, Step& e) {
    V z, ht, dht;  // a = 1 - z, b = z h~; dz/dk = z (1 - z); da = G h_{t-1}, db = G
    sig2(r.k, z, e.a);
    htilde(r.v, g.flags & LOG_SPACE, ht, dht);
    e.dh = r.dh; e.ck = (ht - r.hp) * z * e.a; e.cv = z * dht;
  }
  __device__ static V emit(const Args<S>& g, long long i, const Step& e, V s, V&) {
    V G = e.dh + s;
    st(g.y0, i, G * e.ck); st(g.y1, i, G * e.cv);
    return e.a * G;
  }
};

// minLSTM gates: normalize uses diff = softplus(-kf) - softplus(-ki), f' = sigmoid(-diff), i' = sigmoid(diff)
template <class V> __device__ __forceinline__ void lstm_gates(V kf, V ki, int flags, V& a, V& ig, V& f,
                                                              V& fn, V& i, V& in) {
  sig2(kf, f, fn);
  sig2(ki, i, in);
  if (flags & NORMALIZE) { sig2(softplus(-kf) - softplus(-ki), ig, a); }
  else { a = f; ig = i; }
}

template <class S_, class V_> struct LstmFwd {  // x0 = kf, x1 = ki, x2 = v; y0 = h
  using S = S_; using V = V_;
  static constexpr bool HAS_PART = false;
  struct Step { V a, b; };
  __device__ static V b(const Step& e) { return e.b; }
  struct Raw { V kf, ki, v; };
  __device__ static void fetch(const Args<S>& g, long long i, long long, long long, Raw& r) {
    r.kf = ld(g.x0, i); r.ki = ld(g.x1, i); r.v = ld(g.x2, i);
  }
  __device__ static void prep(const Args<S>& g, const Raw& r, Step& e) {
    V ig, f, fn, ii, in, ht, dht;
    lstm_gates(r.kf, r.ki, g.flags, e.a, ig, f, fn, ii, in);
    htilde(r.v, g.flags & LOG_SPACE, ht, dht);
    e.b = ig * ht;
  }
  __device__ static V emit(const Args<S>& g, long long i, const Step& e, V s, V&) {
    V h = e.a * s + e.b;
    st(g.y0, i, h);
    return h;
  }
};

template <class S_, class V_> struct LstmBwd {  // x0..x4 = kf, ki, v, h, dh; y0..y2 = dkf, dki, dv
  using S = S_; using V = V_;
  static constexpr bool HAS_PART = false;
  struct Step { V a, dh, cf, ci, cv; };
  __device__ static V b(const Step& e) { return e.a * e.dh; }  // the adjoint scan: c = a (c' + dh)
  struct Raw { V kf, ki, v, dh, hp; };
  __device__ static void fetch(const Args<S>& g, long long i, long long ip, long long hb, Raw& r) {
    r.kf = ld(g.x0, i); r.ki = ld(g.x1, i); r.v = ld(g.x2, i); r.dh = ld(g.x4, i);
    r.hp = ld_prev<S, V>(g.x3, g.h0, ip, hb);
  }
  __device__ static void prep(const Args<S>& g, const Raw& r, Step& e) {
    V ig, f, fn, ii, in, ht, dht;  // da = G h_{t-1}, d(ig) = G h~
    lstm_gates(r.kf, r.ki, g.flags, e.a, ig, f, fn, ii, in);
    htilde(r.v, g.flags & LOG_SPACE, ht, dht);
    if (g.flags & NORMALIZE) {  // d f'/d diff = -f' i', d i'/d diff = f' i': d diff = G f' i' (h~ - h_{t-1})
      const V dd = e.a * ig * (ht - r.hp);
      e.cf = -fn * dd; e.ci = in * dd;
    } else {
      e.cf = r.hp * e.a * fn; e.ci = ht * ig * in;
    }
    e.dh = r.dh; e.cv = ig * dht;
  }
  __device__ static V emit(const Args<S>& g, long long i, const Step& e, V s, V&) {
    V G = e.dh + s;
    st(g.y0, i, G * e.cf); st(g.y1, i, G * e.ci); st(g.y2, i, G * e.cv);
    return e.a * G;
  }
};

template <class S_> struct LruFwd {  // complex; x0 = lam (D,), x1 = bu; y0 = h
  using S = S_; using V = S_;
  static constexpr bool HAS_PART = false;
  struct Step { V a, b; };
  __device__ static V b(const Step& e) { return e.b; }
  using Raw = Step;
  __device__ static void fetch(const Args<S>& g, long long i, long long, long long hb, Raw& r) {
    r.a = g.x0[hb % g.D]; r.b = g.x1[i];
  }
  __device__ static void prep(const Args<S>&, const Raw& r, Step& e) { e = r; }
  __device__ static V emit(const Args<S>& g, long long i, const Step& e, V s, V&) {
    V h = e.a * s + e.b;
    g.y0[i] = h;
    return h;
  }
};

// PyTorch's convention (dL/dRe + i dL/dIm): G_t = dh_t + conj(lam) G_{t+1}, dbu = G,
// dlam = sum_{b,t} G_t conj(h_{t-1}) (per-thread partial sums, reduced by the launcher), dh0 = conj(lam) G_0
template <class S_> struct LruBwd {  // x0 = lam, x1 = h, x2 = dh; y0 = dbu
  using S = S_; using V = S_;
  static constexpr bool HAS_PART = true;
  struct Step { V a, dh, hp; };
  __device__ static V b(const Step& e) { return e.a * e.dh; }  // the adjoint scan: c = a (c' + dh)
  using Raw = Step;
  __device__ static void fetch(const Args<S>& g, long long i, long long ip, long long hb, Raw& r) {
    r.a = g.x0[hb % g.D]; r.dh = g.x2[i]; r.hp = (ip >= 0 ? g.x1 : g.h0)[ip >= 0 ? ip : hb];
  }
  __device__ static void prep(const Args<S>&, const Raw& r, Step& e) {
    e.a = conj(r.a); e.dh = r.dh; e.hp = conj(r.hp);
  }
  __device__ static V emit(const Args<S>& g, long long i, const Step& e, V s, V& part) {
    V G = e.dh + s;
    part = part + G * e.hp;
    g.y0[i] = G;
    return e.a * G;
  }
};
