// grunet fused CPU GRU: what the forward and backward translation units share.
//
// Shapes (one layer, one direction): x (T, B, I), h (B, H), w_ih (3H, I), w_hh (3H, H), rows r | z | n.
// The equations are in gru_forward.cpp (forward) and gru_backward.cpp (their derivatives).
//
// Why the code looks the way it does:
//  * the per-step products run in a register-blocked kernel on weights packed once per call
//    (small_gemm.h), ~110 GFLOP/s per core here, ~95% of the FMA peak; MKL ran them at ~35;
//  * kernel-private buffers use a padded gate layout (rows of Hp = H rounded up to whole vectors, see
//    padded_units), so every elementwise pass is whole vectors; sigmoid/tanh use an inline polynomial exp
//    that GCC vectorises inside the `#pragma omp simd` loops (no libm call per vector) and that keeps NaN
//    and inf as libm does (the library is built without -ffast-math, see build.py);
//  * rows of a batch do not interact, so threads split the batch and each runs the whole time loop on
//    its own rows: no synchronisation per time step;
//  * a fresh state (h0 = 0) skips step 0's W_hh h product and those rows of dW_hh; dh0's product runs
//    only when h0 needs a gradient.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <vector>

#include "small_gemm.h"

// BLAS (Fortran ABI, column major, 32-bit integers) and MKL's thread control, as exported by libtorch_cpu.
// Weak, so that a libtorch without them still loads: gemm() then falls back to at::addmm_out.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
            const int*, const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
// MKL's C interface (the lower-case export of libtorch_cpu is the Fortran one, taking int*)
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

namespace grunet {

enum Activation : int { kSigmoid = 0, kHardSigmoidKeras2 = 1, kHardSigmoidKeras3 = 2 };

// ----------------------------------------------------------------------------------------------------
// C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C, all row major with row strides lda/ldb/ldc;
// trans_a means A is stored as (K, M). A row-major matrix is its own transpose in column-major terms,
// so the Fortran call computes C^T = op(B)^T op(A)^T with the operands swapped.
template <typename S>
inline void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, S alpha, const S* A,
                 int64_t lda, const S* B, int64_t ldb, S beta, S* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int m = (int)M, n = (int)N, k = (int)K, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
  if constexpr (std::is_same_v<S, float>) {
    if (sgemm_) return sgemm_(&tb, &ta, &n, &m, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
  } else {
    if (dgemm_) return dgemm_(&tb, &ta, &n, &m, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
  }
  // Fallback: the same product through ATen on views of the raw buffers.
  auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<S>::value);
  auto a = trans_a ? at::from_blob((void*)A, {K, M}, {lda, 1}, opt).t() : at::from_blob((void*)A, {M, K}, {lda, 1}, opt);
  auto b = trans_b ? at::from_blob((void*)B, {N, K}, {ldb, 1}, opt).t() : at::from_blob((void*)B, {K, N}, {ldb, 1}, opt);
  auto c = at::from_blob((void*)C, {M, N}, {ldc, 1}, opt);
  if (K == 0) { c.mul_(beta); return; }
  auto prod = at::mm(a, b);
  if (beta == S(0)) c.copy_(prod.mul_(alpha)); else c.mul_(beta).add_(prod, alpha);
}

// Makes MKL run single-threaded in this scope (per calling thread); a no-op without MKL.
struct SingleThreadedBlas {
  int previous = 0;
  explicit SingleThreadedBlas(bool enable) {
    if (enable && MKL_Set_Num_Threads_Local) previous = MKL_Set_Num_Threads_Local(1);
    else previous = -1;
  }
  ~SingleThreadedBlas() {
    if (previous >= 0 && MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
  }
};

// ----------------------------------------------------------------------------------------------------
// recurrent activations sigma and their derivative, tanh, and the exp under them.
//
// Non-finite values must come out as torch's do (the kernel is compiled without -ffast-math for this):
// NaN in gives NaN out, exp(+inf) = +inf and exp(-inf) = 0, so sigmoid(-inf) = 0, sigmoid(+inf) = 1 and
// tanh(+-inf) = +-1 exactly, and an exp that overflows in libm overflows here too (sigmoid(-100) is 0 in
// torch's float32, and z = 0 times an infinite state must give NaN as it does there).

// min(max(v, lo), hi) that keeps NaN, as torch.clamp does (each comparison is false for NaN, so v passes)
template <typename S>
inline S clamp_keep_nan(S v, S lo, S hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// exp written out so that GCC inlines and vectorises it inside the `#pragma omp simd` gate loops (a libm
// call per vector spills every live register around it, ~3 ns per unit; glibc's vector exp/tanh are
// declared only under -ffast-math). exp(x) = 2^k exp(f), k = round(x / ln 2), |f| <= ln 2 / 2:
//   float32: Cody-Waite reduction and the Cephes degree-7 polynomial, relative error ~1e-7;
//   float64: the Taylor series to degree 13 (remainder < 2e-17), relative error a few ulp.
// k comes from the round-to-nearest of adding 1.5 * 2^23 (2^52): its low mantissa bits are k, read as an
// integer without a float -> int conversion (undefined for NaN). The argument is clamped to where 2^k is
// a normal number, and past libm's overflow and underflow points the result is +inf and 0.
template <typename S>
struct ExpConstants;
template <>
struct ExpConstants<float> {
  static constexpr float kMax = 88.3f, kMin = -87.3f;          // 2^k normal: |k| <= 126
  static constexpr float kOverflow = 88.72283935546875f;       // log(FLT_MAX)
  static constexpr float kUnderflow = -103.97208f;             // below: exp rounds to 0 in libm
  static constexpr float kShifter = 12582912.0f;               // 1.5 * 2^23
  static constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  using Bits = int32_t;
  static constexpr int kMantissa = 23, kBias = 127;
};
template <>
struct ExpConstants<double> {
  static constexpr double kMax = 709.0, kMin = -708.0;         // 2^k normal: |k| <= 1022
  static constexpr double kOverflow = 709.782712893383973096;  // log(DBL_MAX)
  static constexpr double kUnderflow = -745.1332191019412;     // below: exp rounds to 0 in libm
  static constexpr double kShifter = 6755399441055744.0;       // 1.5 * 2^52
  static constexpr double kLn2Hi = 6.93145751953125e-1, kLn2Lo = 1.42860682030941723212e-6;
  using Bits = int64_t;
  static constexpr int kMantissa = 52, kBias = 1023;
};

template <typename S>
inline S exp_(S x) {
  using C = ExpConstants<S>;
  using Bits = typename C::Bits;
  const S xc = clamp_keep_nan(x, C::kMin, C::kMax);
  const S shifted = xc * S(1.44269504088896341) + C::kShifter;  // k in the low bits, rounded to nearest
  const S kf = shifted - C::kShifter;
  const S f = (xc - kf * C::kLn2Hi) - kf * C::kLn2Lo;           // x - k ln 2 in two parts (Cody-Waite)
  S p;
  if constexpr (std::is_same_v<S, float>) {
    p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * f * f + f + 1.0f;
  } else {
    p = 1.0 / 6227020800.0;  // 1 / 13!
    p = p * f + 1.0 / 479001600.0;
    p = p * f + 1.0 / 39916800.0;
    p = p * f + 1.0 / 3628800.0;
    p = p * f + 1.0 / 362880.0;
    p = p * f + 1.0 / 40320.0;
    p = p * f + 1.0 / 5040.0;
    p = p * f + 1.0 / 720.0;
    p = p * f + 1.0 / 120.0;
    p = p * f + 1.0 / 24.0;
    p = p * f + 1.0 / 6.0;
    p = p * f + 0.5;
    p = p * f * f + f + 1.0;
  }
  const Bits k = __builtin_bit_cast(Bits, shifted) - __builtin_bit_cast(Bits, C::kShifter);
  const S scale = __builtin_bit_cast(S, (Bits)((k + C::kBias) << C::kMantissa));  // 2^k
  const S e = p * scale;
  return x > C::kOverflow ? std::numeric_limits<S>::infinity() : (x < C::kUnderflow ? S(0) : e);
}

template <int ACT, typename S>
inline S sigma(S a) {
  if constexpr (ACT == kSigmoid) {
    return S(1) / (S(1) + exp_<S>(-a));  // exp(-a) = inf for a < -88.7 (float32): 0, as in torch
  } else if constexpr (ACT == kHardSigmoidKeras2) {
    return clamp_keep_nan(S(0.2) * a + S(0.5), S(0), S(1));  // Keras 2: clip(0.2 a + 0.5, 0, 1)
  } else {
    return clamp_keep_nan(a / S(6) + S(0.5), S(0), S(1));    // Keras 3: clip(a / 6 + 0.5, 0, 1)
  }
}

// d sigma(a) / d a times g, at the point where sigma(a) = s: torch's sigmoid backward g (1 - s) s; for the
// hard sigmoid torch's clamp backward, which passes g where the clamp did not clip and gives 0 elsewhere
// (also for a NaN input or a NaN g: a select, not a product with 0)
template <int ACT, typename S>
inline S sigma_backward(S s, S g) {
  if constexpr (ACT == kSigmoid) {
    return g * (S(1) - s) * s;
  } else {
    const S slope = ACT == kHardSigmoidKeras2 ? S(0.2) : S(1) / S(6);
    return (s > S(0) && s < S(1)) ? g * slope : S(0);
  }
}

// tanh(a) = 2 sigmoid(2a) - 1 on the inline exp (abs error < 2e-7 in float32, ~2e-16 in float64)
template <typename S>
inline S tanh_(S a) {
  return S(2) / (S(1) + exp_<S>(S(-2) * a)) - S(1);
}

// Whether all n values are finite: sum of v * 0 is 0, or NaN when some v is NaN or infinite. A product
// with a zero operand is skipped only then (0 * inf and 0 * NaN are NaN in torch).
template <typename S>
inline bool all_finite(const S* v, int64_t n) {
  S acc = S(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += v[i] * S(0);
  return acc == S(0);
}

// How many batch chunks (= threads) to run the time loop on: each chunk must be big enough that its
// per-step GEMM outweighs a thread's share of the scheduling, and no more chunks than threads.
inline int64_t batch_chunks(int64_t B, int64_t H, int64_t threads) {
  if (threads <= 1) return 1;
  const int64_t min_rows = H >= 256 ? 4 : (H >= 64 ? 8 : 16);
  return std::max<int64_t>(1, std::min<int64_t>(threads, B / min_rows));
}

// Chunk c holds batch rows [chunk_begin(c), chunk_begin(c + 1)). Buffers private to the kernel (gates,
// aux, hprev, dG, the copy of x) are chunk-major: chunk c owns rows [T * b0, T * b1), time-major inside,
// so that every thread's rows are one contiguous matrix for the GEMMs after the time loop.
struct Chunking {
  int64_t T, B, n;
  int64_t begin(int64_t c) const { return B * c / n; }
  int64_t rows(int64_t c) const { return begin(c + 1) - begin(c); }
};

// ----------------------------------------------------------------------------------------------------
// Padded gate layout. Every buffer private to the kernel stores a row of H units in Hp = H rounded up to
// whole vectors (H = 75 -> Hp = 80 in float32), and a row of gates as three such blocks r | z | n at
// 0, Hp, 2 Hp. Every elementwise pass then runs on whole vectors: a row's last H % W units used to go
// through scalar copies, which cost ~40% of the forward's gate pass for H = 75. The padding units hold
// finite values that nothing reads back into the real units: their weights and biases are zero, the
// products read only the first H columns of a state row (K = H with row stride Hp), and their gradients
// are exactly zero.
// values a buffer holds past its end so that a row can be read in whole vectors
constexpr int64_t kVectorSlack = 16;

template <typename S>
inline int64_t padded_units(int64_t H) {
  constexpr int64_t W = Vec<S>::kWidth;
  return (H + W - 1) / W * W;
}

// (G * Hp,) from a (G * H,) vector with gate blocks padded by zeros; nullptr gives zeros
template <typename S>
inline std::vector<S> pad_gates(const S* b, int64_t G, int64_t H, int64_t Hp) {
  std::vector<S> v(G * Hp, S(0));
  if (b)
    for (int64_t g = 0; g < G; ++g) std::copy(b + g * H, b + (g + 1) * H, v.data() + g * Hp);
  return v;
}

// A per-step product C = A @ M with M built from a weight matrix w in gate blocks (see the two inits).
// Small matrices are packed once per call for the register-blocked kernel (small_gemm.h); big ones go to
// BLAS straight from w, one call per gate block (BLAS blocks for the caches itself; copying a 1024-unit
// layer's weights every call cost more than the products of a short sequence). `bias` (N,), when given, is
// every row's initial value. C's padding columns come out zero (or keep the bias's zeros).
template <typename S>
struct StepMatrix {
  PackedB<S> packed;
  bool use_packed = false, transposed = false;
  const S* w = nullptr;
  int64_t ldw = 0, G = 0, H = 0, Hp = 0, K = 0, N = 0;

  static bool small(int64_t K, int64_t N) { return K * N * (int64_t)sizeof(S) <= ((int64_t)512 << 10); }

  // M = w^T in gate blocks (K, G Hp), w (G H, K) with row stride ldw (the forward's products)
  void init_transposed(const S* w_, int64_t ldw_, int64_t G_, int64_t H_, int64_t K_, int64_t Hp_) {
    w = w_, ldw = ldw_, G = G_, H = H_, Hp = Hp_, K = K_, N = G * Hp, transposed = true;
    use_packed = small(K, N);
    if (use_packed) packed.pack_gates_transposed(w, ldw, G, H, K, Hp);
  }
  // M = w in gate blocks (G Hp, Hp), w (G H, H) with row stride ldw (the backward's products): A's rows are
  // G blocks of Hp values, whose padding the products skip
  void init_rows(const S* w_, int64_t ldw_, int64_t G_, int64_t H_, int64_t Hp_) {
    w = w_, ldw = ldw_, G = G_, H = H_, Hp = Hp_, K = G * Hp, N = Hp, transposed = false;
    use_packed = small(K, N);
    if (use_packed) packed.pack_segments(w, ldw, G * H, H, H, Hp);
  }
  void mul(int64_t M, const S* A, int64_t lda, S* C, int64_t ldc, bool accumulate, const S* bias = nullptr) const {
    if (M == 0) return;
    if (use_packed) return small_gemm<S>(M, A, lda, packed, C, ldc, accumulate, bias);
    if (bias) {
      for (int64_t i = 0; i < M; ++i) {
        S* c = C + i * ldc;
        if (accumulate)
          for (int64_t j = 0; j < N; ++j) c[j] += bias[j];
        else
          std::copy(bias, bias + N, c);
      }
      accumulate = true;
    }
    if (transposed) {  // C[:, g Hp : g Hp + H] (+)= A w_g^T
      for (int64_t g = 0; g < G; ++g)
        gemm<S>(false, true, M, H, K, S(1), A, lda, w + g * H * ldw, ldw, accumulate ? S(1) : S(0), C + g * Hp, ldc);
    } else {  // C[:, :H] (+)= sum_g A[:, g Hp : g Hp + H] w_g
      for (int64_t g = 0; g < G; ++g)
        gemm<S>(false, false, M, H, H, S(1), A + g * Hp, lda, w + g * H * ldw, ldw, accumulate || g > 0 ? S(1) : S(0),
                C, ldc);
    }
    if (!accumulate && Hp > H)  // the padding columns
      for (int64_t i = 0; i < M; ++i)
        for (int64_t g = 0; g < (transposed ? G : 1); ++g) std::fill(C + i * ldc + g * Hp + H, C + i * ldc + (g + 1) * Hp, S(0));
  }
};

// Run f(chunk, b0, b1) for each chunk, one per thread. In a chunked run BLAS is single-threaded (the
// threads are busy with chunks); a single chunk lets BLAS use threads only when a step is big enough.
template <typename F>
inline void for_batch_chunks(const Chunking& ch, bool big_steps, const F& f) {
  if (ch.n <= 1) {
    SingleThreadedBlas single(!big_steps);
    f(0, 0, ch.B);
    return;
  }
  at::parallel_for(0, ch.n, 1, [&](int64_t c0, int64_t c1) {
    SingleThreadedBlas single(true);
    for (int64_t c = c0; c < c1; ++c) f(c, ch.begin(c), ch.begin(c + 1));
  });
}

// Buffers of the previous calls, handed out again once nobody else holds their storage. A training step
// allocates and frees the same ~10 buffers every time; fresh pages from the OS cost a page fault each,
// which measured 15-20% of the tutorial model's forward. A buffer is reused only when the pool holds the
// one reference to its storage (autograd has released the saved tensors, the caller dropped its output).
class BufferPool {
 public:
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opt) { return poisoned(take(sizes, opt)); }

 private:
  static at::Tensor poisoned(at::Tensor t) {  // see poison_buffers (small_gemm.h)
    if (poison_buffers()) t.fill_(std::numeric_limits<double>::quiet_NaN());
    return t;
  }
  static at::Tensor take(at::IntArrayRef sizes, const at::TensorOptions& opt) {
    int64_t numel = 1;
    for (auto s : sizes) numel *= s;
    const int64_t bytes = numel * (int64_t)c10::elementSize(c10::typeMetaToScalarType(opt.dtype()));
    if (bytes < kMinBytes || bytes > kMaxBytes) return at::empty(sizes, opt);
    auto& pool = buffers();
    for (auto& t : pool)
      if (t.numel() == numel && t.dtype() == opt.dtype() && t.use_count() == 1 && t.storage().use_count() == 1)
        return t.view(sizes);
    auto t = at::empty({numel}, opt);
    if ((int64_t)pool.size() >= kMaxBuffers) pool.erase(pool.begin());
    pool.push_back(t);
    return t.view(sizes);
  }
  static constexpr int64_t kMinBytes = 4 << 10, kMaxBytes = 64 << 20, kMaxBuffers = 32;
  static std::vector<at::Tensor>& buffers() {
    thread_local std::vector<at::Tensor> pool;
    return pool;
  }
};

// Column sums of a (rows, G * Hp) row-major matrix of padded gate blocks into out (G * H,). A bias gradient
// sums T*B terms, and float accumulation over all of them would lose ~1e-5; blocks of kSumBlock rows are
// summed in S and the block sums in double (a conversion per value cost ~4% of the backward).
constexpr int64_t kSumBlock = 16;

template <typename S>
inline void gate_column_sums(const S* a, int64_t rows, int64_t lda, int64_t G, int64_t H, int64_t Hp, S* out) {
  const int64_t cols = G * Hp;
  std::vector<double> acc(cols, 0.0);
  std::vector<S> part(cols);
  double* __restrict s = acc.data();
  S* __restrict p = part.data();
  for (int64_t i0 = 0; i0 < rows; i0 += kSumBlock) {
    std::fill(p, p + cols, S(0));
    for (int64_t i = i0; i < std::min(rows, i0 + kSumBlock); ++i) {
      const S* __restrict r = a + i * lda;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) p[j] += r[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) s[j] += (double)p[j];
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t u = 0; u < H; ++u) out[g * H + u] = (S)s[g * Hp + u];
}

// The column sums of elementwise products d * xhat of padded gate rows (3 Hp) added one row at a time, for a
// pass over the rows that reads them anyway; summed as gate_column_sums (S per kSumBlock rows, then double).
template <typename S>
class GateRowSums {
 public:
  explicit GateRowSums(int64_t Hp) : Hp_(Hp), acc_(3 * Hp, 0.0), part_(3 * Hp, S(0)) {}

  // += d * xhat, d's blocks r, z from d01 and n from d2
  void add_product(const S* d01, const S* d2, const S* xhat) {
    S* __restrict p = part_.data();
    const S* __restrict a = d01;
    const S* __restrict b = d2;
    const S* __restrict x = xhat;
#pragma omp simd
    for (int64_t j = 0; j < 2 * Hp_; ++j) p[j] += a[j] * x[j];
#pragma omp simd
    for (int64_t j = 0; j < Hp_; ++j) p[2 * Hp_ + j] += b[j] * x[2 * Hp_ + j];
    if (++rows_ == kSumBlock) flush();
  }

  // out (3H,): the sums of the real units
  void write(S* out, int64_t H) {
    flush();
    for (int64_t g = 0; g < 3; ++g)
      for (int64_t u = 0; u < H; ++u) out[g * H + u] = (S)acc_[g * Hp_ + u];
  }

 private:
  void flush() {
    for (size_t j = 0; j < part_.size(); ++j) acc_[j] += (double)part_[j], part_[j] = S(0);
    rows_ = 0;
  }
  int64_t Hp_, rows_ = 0;
  std::vector<double> acc_;
  std::vector<S> part_;
};

// ----------------------------------------------------------------------------------------------------
// The gate pass: the per-unit math of a step, written once for the training forward (Fwd) and the
// inference loop (Infer) in gru_forward.cpp.

// h~ = n + z (h - n) = z h + (1 - z) n: the new state of both variants (z: the share of the old state kept)
template <typename S>
inline S state_update(S z, S n, S h) {
  return n + z * (h - n);
}

// reset-after, from the summed pre-activations a_r, a_z, the input part x_n of n and the recurrent part
// a = gh_n: r = sigma(a_r), z = sigma(a_z), n = tanh(x_n + r a); returns h~
template <int ACT, typename S>
inline S reset_after_cell(S a_r, S a_z, S x_n, S a, S h, S& r, S& z, S& n) {
  r = sigma<ACT>(a_r);
  z = sigma<ACT>(a_z);
  n = tanh_(x_n + r * a);
  return state_update(z, n, h);
}

// zoneout: h' = h + k (h~ - h), k the share of the new state (a 0/1 mask in training, 1 - p in eval);
// the order of grunet.reference.gru_step
template <typename S>
inline S zoneout_update(S h, S h_tilde, S k) {
  return h + k * (h_tilde - h);
}

// Layer norm of one gate row (three blocks of H units, Hp apart) in place, as F.layer_norm over the 3H real
// units (biased variance, eps 1e-5): v = (v - mean) rstd * gain + shift; gain and shift padded to 3 Hp.
// xhat, when given, receives (v - mean) rstd. unit (3 Hp) is 1 on a unit and 0 on padding: each pass runs
// over the whole padded row in whole vectors (no tail per gate block), the statistics skip the padding, and
// the padding comes out 0. The sums use explicit vector accumulators: GCC keeps an `omp simd reduction`'s
// partial sums in memory, a store-to-load chain per vector that cost more than the rest of the row.
constexpr double kLayerNormEps = 1e-5;

namespace vec {
template <typename S>
using V = typename Vec<S>::type;
template <typename S>
inline V<S> load(const S* p) { return *reinterpret_cast<const typename Vec<S>::type_u*>(p); }
template <typename S>
inline void store(S* p, const V<S>& v) { *reinterpret_cast<typename Vec<S>::type_u*>(p) = v; }
template <typename S>
inline S sum(const V<S>& v) {
  S s = S(0);
  for (int i = 0; i < Vec<S>::kWidth; ++i) s += v[i];
  return s;
}
}  // namespace vec

template <typename S>
inline S layer_norm_row(S* v, const S* unit, int64_t H, int64_t Hp, const S* gain, const S* shift, S* xhat) {
  using V = vec::V<S>;
  constexpr int64_t W = Vec<S>::kWidth;
  const int64_t n = 3 * Hp;  // whole vectors (padded_units)
  const V zero = {};
  V acc = zero;
  for (int64_t j = 0; j < n; j += W) acc += vec::load(unit + j) != S(0) ? vec::load(v + j) : zero;
  const S mean = vec::sum<S>(acc) / S(3 * H);
  acc = zero;
  for (int64_t j = 0; j < n; j += W) {
    const V c = vec::load(unit + j) != S(0) ? vec::load(v + j) - mean : zero;
    acc += c * c;
  }
  const S rstd = S(1) / std::sqrt(vec::sum<S>(acc) / S(3 * H) + S(kLayerNormEps));
  for (int64_t j = 0; j < n; j += W) {
    const auto real = vec::load(unit + j) != S(0);
    const V u = real ? (vec::load(v + j) - mean) * rstd : zero;
    if (xhat) vec::store(xhat + j, u);
    vec::store(v + j, real ? u * vec::load(gain + j) + vec::load(shift + j) : zero);
  }
  return rstd;
}

// The layer norm's backward of one row: d = dL/d(LN output), read from d01 (blocks r, z) and d2 (block n),
// gives out = dL/d(its input) over the 3H real units (unit as above; padding 0):
//   out = rstd (d g - mean(d g) - xhat mean(d g xhat))
// (two sources: the input side's n block comes from another buffer, read in place rather than copied)
template <typename S>
inline void layer_norm_backward_row(const S* d01, const S* d2, S* out, const S* xhat, S rstd, const S* gain,
                                    const S* unit, int64_t H, int64_t Hp) {
  using V = vec::V<S>;
  constexpr int64_t W = Vec<S>::kWidth;
  const int64_t n = 3 * Hp;
  auto d = [&](int64_t j) { return j < 2 * Hp ? vec::load(d01 + j) : vec::load(d2 + j - 2 * Hp); };
  const V zero = {};
  V a1 = zero, a2 = zero;
  for (int64_t j = 0; j < n; j += W) {
    const V u = vec::load(unit + j) != S(0) ? d(j) * vec::load(gain + j) : zero;
    a1 += u;
    a2 += u * vec::load(xhat + j);
  }
  const S m1 = vec::sum<S>(a1) / S(3 * H), m2 = vec::sum<S>(a2) / S(3 * H);
  for (int64_t j = 0; j < n; j += W) {
    const V r = rstd * (d(j) * vec::load(gain + j) - m1 - vec::load(xhat + j) * m2);
    vec::store(out + j, vec::load(unit + j) != S(0) ? r : zero);
  }
}

// (rows, Hp) copy of a (rows, H) tensor's values with zero padding units (masks in the padded layout)
template <typename S>
inline std::vector<S> pad_rows(const at::Tensor& t, int64_t rows, int64_t H, int64_t Hp) {
  std::vector<S> v(rows * Hp, S(0));
  const S* p = t.data_ptr<S>();
  for (int64_t i = 0; i < rows; ++i) std::copy(p + i * H, p + (i + 1) * H, v.data() + i * Hp);
  return v;
}

// The cell options' per-unit vectors of one layer call in the padded layout, built the same way for the
// forward and the backward from the gains and masks (already in the call's dtype, contiguous; undefined when
// absent; the zoneout mask is read in place and must outlive this). Not copyable: it points into itself.
template <typename S>
class CellVectors {
 public:
  const S* gain_x = nullptr;     // layer_norm: (3Hp) g_ih, 0 on padding
  const S* gain_h = nullptr;     // layer_norm: (3Hp) g_hh, 0 on padding
  const S* unit = nullptr;       // layer_norm: (3Hp) 1 on a unit, 0 on padding (see layer_norm_row)
  const S* rec_mask = nullptr;   // recurrent dropout: (B, Hp)

  CellVectors(bool layer_norm, double zoneout, const at::Tensor& g_ih, const at::Tensor& g_hh, const at::Tensor& m_h,
              const at::Tensor& m_z, int64_t T, int64_t B, int64_t H, int64_t Hp)
      : rows_(T * B), H_(H), Hp_(Hp) {
    if (layer_norm) {
      gain_x_ = pad_gates(g_ih.data_ptr<S>(), 3, H, Hp), gain_h_ = pad_gates(g_hh.data_ptr<S>(), 3, H, Hp);
      const std::vector<S> ones(3 * H, S(1));
      unit_ = pad_gates(ones.data(), 3, H, Hp);
    }
    if (m_h.defined()) rec_mask_ = pad_rows<S>(m_h, B, H, Hp);
    if (m_z.defined() && rows_ > 0) {
      zone_mask_ = m_z.data_ptr<S>();
      // the last rows, padded: a pass over Hp units reads no further than the mask's end
      tail_ = std::max<int64_t>(0, rows_ - (Hp + H - 1) / H);
      zone_tail_.assign((rows_ - tail_) * Hp, S(0));
      for (int64_t r = tail_; r < rows_; ++r)
        std::copy(zone_mask_ + r * H, zone_mask_ + (r + 1) * H, zone_tail_.begin() + (r - tail_) * Hp);
    } else if (zoneout > 0) {
      zone_keep_.assign(Hp, S(1.0 - zoneout));
    }
    auto ptr = [](const std::vector<S>& v) { return v.empty() ? nullptr : v.data(); };
    gain_x = ptr(gain_x_), gain_h = ptr(gain_h_), unit = ptr(unit_), rec_mask = ptr(rec_mask_);
  }
  CellVectors(const CellVectors&) = delete;
  CellVectors& operator=(const CellVectors&) = delete;

  // zoneout's share of the new state for row b at step t, Hp values (training: the (T, B, H) mask's row read
  // in place, its units past H the next row's 0s and 1s, which meet only padding; eval: 1 - p), or nullptr
  // without zoneout. (Padding a copy of the mask cost ~5% of a zoneout step.)
  const S* zone_of(int64_t t, int64_t b, int64_t B) const {
    if (!zone_mask_) return zone_keep_.empty() ? nullptr : zone_keep_.data();
    const int64_t row = t * B + b;
    return row < tail_ ? zone_mask_ + row * H_ : zone_tail_.data() + (row - tail_) * Hp_;
  }

 private:
  int64_t rows_, H_, Hp_, tail_ = 0;
  const S* zone_mask_ = nullptr;
  std::vector<S> gain_x_, gain_h_, unit_, rec_mask_, zone_tail_, zone_keep_;
};

// ----------------------------------------------------------------------------------------------------
// The contract of one layer call, as grunet.contract describes it (CellSpec, LayerWeights, Masks). The
// operators' schemas (gru_ops.cpp) spell these fields out as named arguments, which
// grunet.kernels.cpu.call_arguments fills and gru_ops.cpp turns into the structs, each in one place. Input
// and weight dropout are applied to x and W_hh before the kernel, as in every implementation, so they have
// no field here.

// CellSpec's math: what the gate pass computes
struct CellOptions {
  bool reset_after = true;
  int64_t activation = kSigmoid;   // an Activation
  bool reverse = false;
  bool layer_norm = false;         // reset-after only: gx = LN(W_ih x) g_ih + b_ih, gh = LN(W_hh h) g_hh + b_hh
  double zoneout = 0.0;            // p; training reads LayerCall::masks.zoneout, eval keeps p of the old state
};

// LayerWeights and the layer's input
struct LayerTensors {
  at::Tensor x;                              // (T, B, I)
  c10::optional<at::Tensor> h0;              // (B, H); none: zeros
  at::Tensor w_ih, w_hh;                     // (3H, I), (3H, H), rows r | z | n
  c10::optional<at::Tensor> b_ih, b_hh;      // (3H,); reset-before: b_ih is the one bias
  c10::optional<at::Tensor> g_ih, g_hh;      // (3H,) layer-norm gains
};

// Masks that reach the time loop (training only; none in eval)
struct LayerMasks {
  c10::optional<at::Tensor> recurrent;       // (B, H): multiplies h where it enters the recurrent products
  c10::optional<at::Tensor> zoneout;         // (T, B, H) 0/1: the share of the new state taken at each step
};

// Everything about a call that is not a tensor autograd tracks
struct LayerCall {
  CellOptions cell;
  LayerMasks masks;
  c10::optional<at::Tensor> lengths;         // (B,) int64
  int64_t chunks = 1;                        // threads splitting the batch (batch_chunks)
};

// What the training forward keeps for the backward (chunk-major rows, padded gate layout; see Chunking)
struct Saved {
  at::Tensor xs;       // (T*B, I) copy of x
  at::Tensor gates;    // (T*B, 3Hp) r | z | n
  at::Tensor aux;      // (T*B, Hp): a = gh_n (reset-after) or r * h (reset-before)
  at::Tensor hprev;    // (T*B, Hp) the h fed into each step
  at::Tensor xhat_x;   // layer_norm: (T*B, 3Hp) the normalised W_ih x, else undefined
  at::Tensor xhat_h;   // layer_norm: (T*B, 3Hp) the normalised W_hh h
  at::Tensor rstd;     // layer_norm: (T*B, 2) 1 / sqrt(var + eps) of the two rows

  // for autograd's save_for_backward, which stores a list: the order is defined here only
  std::vector<at::Tensor> list() const { return {xs, gates, aux, hprev, xhat_x, xhat_h, rstd}; }
  static Saved from_list(const std::vector<at::Tensor>& v) { return {v[0], v[1], v[2], v[3], v[4], v[5], v[6]}; }
  // the columns of each list() entry (all have T*B rows), 0 where it stays undefined: the layout the fake
  // implementations (grunet.kernels.cpu.ops) give the saved tensors, read from here so it is written once
  static std::vector<int64_t> columns(int64_t I, int64_t Hp, bool layer_norm) {
    const int64_t ln = layer_norm ? 1 : 0;
    return {I, 3 * Hp, Hp, Hp, ln * 3 * Hp, ln * 3 * Hp, ln * 2};
  }
};

struct ForwardResult {
  at::Tensor out;      // (T, B, H)
  at::Tensor h_n;      // (B, H)
  Saved saved;         // when keep_for_backward
};

// Which gradients the backward computes
struct GradsNeeded {
  bool x = true, h0 = true, weights = true;  // weights: w_ih, w_hh, the biases and gains
};

struct LayerGrads {  // undefined where not needed or the tensor is absent
  at::Tensor x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh;
};

// entry points (gru_forward.cpp, gru_backward.cpp); keep_for_backward: also fill ForwardResult::saved
ForwardResult gru_forward(const LayerTensors& p, const LayerCall& call, bool keep_for_backward);

// dout (T, B, H) and dh_n (B, H) may be undefined (no gradient reached that output); T: the sequence length
LayerGrads gru_backward(const at::Tensor& dout, const at::Tensor& dh_n, const LayerTensors& p, const LayerCall& call,
                        const Saved& saved, const GradsNeeded& needed, int64_t T);

// The operators' C++ signatures (their schemas are in gru_ops.cpp), for the callers that go through the
// dispatcher: the Autograd kernel (gru_autograd.cpp) and the Python binding (bindings.cpp).
namespace op_signatures {
using OptTensor = c10::optional<at::Tensor>;
using Tensors2 = std::tuple<at::Tensor, at::Tensor>;
using Tensors8 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                            at::Tensor>;
using Tensors9 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                            at::Tensor, at::Tensor>;
// x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, recurrent_mask, zoneout_mask, lengths, reset_after, activation,
// reverse, layer_norm, zoneout, then threads (gru_layer) or chunks (gru_layer_train)
#define GRUNET_LAYER_PARAMS                                                                                   \
  const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, \
      const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, bool, int64_t,  \
      bool, bool, double
using Layer = Tensors2(GRUNET_LAYER_PARAMS, int64_t);
using LayerTrain = Tensors9(GRUNET_LAYER_PARAMS, int64_t);
using LayerDoubleBackward = Tensors8(const OptTensor&, const OptTensor&, GRUNET_LAYER_PARAMS);
#undef GRUNET_LAYER_PARAMS
// dout, dh_n, w_ih, w_hh, g_ih, g_hh, recurrent_mask, zoneout_mask, lengths, the seven saved tensors,
// reset_after, activation, reverse, layer_norm, zoneout, has_b_ih, has_b_hh, need_dx, need_dh0, need_weights,
// chunks, T
using LayerBackward = Tensors8(const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
                               const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                               const OptTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
                               int64_t, bool, bool, double, bool, bool, bool, bool, bool, int64_t, c10::SymInt);
}  // namespace op_signatures

// The typed handle of the operator grunet::<name> (defined in gru_ops.cpp).
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Dispatch a runtime activation code to a template argument.
template <typename F>
inline void with_activation(int64_t activation, const F& f) {
  switch (activation) {
    case kSigmoid: f(std::integral_constant<int, kSigmoid>{}); break;
    case kHardSigmoidKeras2: f(std::integral_constant<int, kHardSigmoidKeras2>{}); break;
    case kHardSigmoidKeras3: f(std::integral_constant<int, kHardSigmoidKeras3>{}); break;
    default: TORCH_CHECK(false, "grunet: unknown activation code ", activation);
  }
}

}  // namespace grunet
