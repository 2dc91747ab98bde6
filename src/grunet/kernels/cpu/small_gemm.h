// A register-blocked GEMM for the per-step products of the GRU time loop.
//
// Why not BLAS: a time step multiplies a small (B, H) state by the same (H, 3H) matrix, T times. MKL on
// this CPU runs a 50x75 @ 75x225 product at ~35 GFLOP/s: it re-packs the weight matrix on every call and
// its tiles do not fit 75 or 225. Here the weights are packed once per sequence into `PackedB` (K rows of
// N values, N padded to whole vectors), and each call runs MR x NV-vector tiles whose accumulators stay in
// registers for the whole K loop: C[i, j] (+)= sum_k A[i, k] * B[k, j].
// GCC vector extensions keep this portable: a 64-byte vector is one AVX-512 register, two AVX2 registers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace grunet {

template <typename S>
struct Vec {
  static constexpr int kWidth = 64 / sizeof(S);  // values per 64-byte vector
  typedef S type __attribute__((vector_size(64), aligned(64)));
  typedef S type_u __attribute__((vector_size(64), aligned(sizeof(S))));  // unaligned loads/stores
};

// GRUNET_POISON_BUFFERS set: every buffer the kernel takes (packed weights here, pooled tensors in gru_cpu.h)
// is filled with NaN, so that a value read before it is written shows up in the results (tests run so)
inline bool poison_buffers() {
  static const bool p = std::getenv("GRUNET_POISON_BUFFERS") != nullptr;
  return p;
}

// B (K, N) in row-major with N padded to a multiple of the vector width (zeros), 64-byte aligned. A product
// reads A's row as K values, or, with segments, as blocks of `seg` values `stride` apart (A's gate blocks
// padded to whole vectors, whose padding B's packing left out).
template <typename S>
struct PackedB {
  int64_t K = 0, N = 0, Np = 0, seg = 0, stride = 0;
  std::unique_ptr<S[]> storage;  // uninitialised on allocation: every call packs the weights afresh
  S* data = nullptr;

  void allocate(int64_t K_, int64_t N_) {
    constexpr int W = Vec<S>::kWidth;
    K = K_, N = N_, seg = stride = K;
    Np = (N + W - 1) / W * W;
    storage.reset(new S[K * Np + W]);
    if (poison_buffers()) std::fill(storage.get(), storage.get() + K * Np + W, S(NAN));
    data = storage.get();
    const auto misalign = reinterpret_cast<uintptr_t>(data) % 64;  // align the panel to 64 bytes
    if (misalign) data += (64 - misalign) / sizeof(S);
  }

  // src(k, n) = trans ? src[n * ld + k] : src[k * ld + n]
  void pack(const S* src, int64_t ld, bool trans, int64_t K_, int64_t N_) {
    allocate(K_, N_);
    for (int64_t k = 0; k < K; ++k) {
      S* row = data + k * Np;
      if (trans)
        for (int64_t n = 0; n < N; ++n) row[n] = src[n * ld + k];
      else
        std::memcpy(row, src + k * ld, N * sizeof(S));
      std::fill(row + N, row + Np, S(0));
    }
  }

  // (K, G * Hp) = w^T in gate blocks, w (G * H, K) with row stride ldw: row k holds w[(g H + u) ldw + k]
  // at column g Hp + u, zeros in each block's padding
  void pack_gates_transposed(const S* w, int64_t ldw, int64_t G, int64_t H, int64_t K_, int64_t Hp) {
    allocate(K_, G * Hp);
    for (int64_t k = 0; k < K; ++k)  // rows written in order: strided reads are cheaper than strided writes
      for (int64_t g = 0; g < G; ++g) {
        S* dst = data + k * Np + g * Hp;
        const S* src = w + g * H * ldw + k;
        for (int64_t u = 0; u < H; ++u) dst[u] = src[u * ldw];
        std::fill(dst + H, dst + Hp, S(0));
      }
  }

  // w (K, N) with row stride ld, for products whose A rows come in blocks of seg_ values stride_ apart.
  // Products write whole padded rows (Np columns, zeros past N), so that C's padding is defined too.
  void pack_segments(const S* w, int64_t ld, int64_t K_, int64_t N_, int64_t seg_, int64_t stride_) {
    pack(w, ld, false, K_, N_);
    N = Np;
    seg = seg_;
    stride = stride_;
  }
};

namespace detail {

// c[0:n] (+)= v[0:n] for 0 < n <= W: one masked store with AVX-512 (an edge tile of 75 or 225 columns
// otherwise stores its last partial vector value by value, ~5% of a per-step product), else a loop.
template <typename S>
inline void store_partial(S* c, const typename Vec<S>::type& v, int n, bool accumulate) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float>) {
    const __mmask16 m = (__mmask16)((1u << n) - 1u);
    __m512 x = (__m512)v;
    if (accumulate) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, c));
    _mm512_mask_storeu_ps(c, m, x);
    return;
  } else if constexpr (std::is_same_v<S, double>) {
    const __mmask8 m = (__mmask8)((1u << n) - 1u);
    __m512d x = (__m512d)v;
    if (accumulate) x = _mm512_add_pd(x, _mm512_maskz_loadu_pd(m, c));
    _mm512_mask_storeu_pd(c, m, x);
    return;
  }
#endif
  for (int j = 0; j < n; ++j) c[j] = accumulate ? c[j] + v[j] : v[j];
}

// One MR x (NV * W) tile of C = P Q (+ C if accumulate); `cols` <= NV * W valid columns of C. Element
// (i, k) of P is broadcast: P_T = false, P (M, K) row-major, P[i * ldp + k] (the per-step products, with
// K in segments, see PackedB); P_T = true, P (K, M) row-major, P[k * ldp + i] (the weight gradients' D^T).
// Row k of Q is read as NV vectors. (P_T is a template argument so that both strides stay compile-time.)
// ONE_PIECE: P's row is not segmented (seg = stride = K); NSEG > 0: it is NSEG segments (K = NSEG seg; the
// backward's three gate blocks); FULL: cols = NV * W. They are template arguments because GCC then emits a
// tighter loop nest: a 25x75 @ 75x240 step product went from 105 to 114 GFLOP/s, the 700x28 @ 28x240 input
// product from 88 to 109, the backward's dh product 1-3% (as runtime values they are only known when the
// tile is inlined, and it is not).
template <typename S, int MR, int NV, bool P_T, bool ONE_PIECE = false, bool FULL = false, int NSEG = 0>
inline void tile(int64_t K, int64_t seg, int64_t stride, const S* P, int64_t ldp, const S* Q, int64_t ldq, S* C,
                 int64_t ldc, int64_t cols, bool accumulate, const S* bias) {
  if constexpr (ONE_PIECE) seg = stride = K;
  if constexpr (NSEG > 0) K = NSEG * seg;
  if constexpr (FULL) cols = NV * Vec<S>::kWidth;
  using V = typename Vec<S>::type;
  using VU = typename Vec<S>::type_u;
  constexpr int W = Vec<S>::kWidth;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[i][v] = bias ? V(*reinterpret_cast<const VU*>(bias + v * W)) : V{};
#pragma GCC unroll 4
  for (int64_t k0 = 0, a0 = 0; k0 < K; k0 += seg, a0 += stride) {  // Q's rows k0.., P's k index a0..
    const S* Qs = Q + k0 * ldq;
    const S* Ps = P + (P_T ? a0 * ldp : a0);
    for (int64_t k = 0; k < seg; ++k) {
      V q[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) q[v] = *reinterpret_cast<const VU*>(Qs + k * ldq + v * W);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const S p = P_T ? Ps[k * ldp + i] : Ps[i * ldp + k];
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[i][v] += p * q[v];
      }
    }
  }
  if (cols == NV * W) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        VU* c = reinterpret_cast<VU*>(C + i * ldc + v * W);
        *c = accumulate ? *c + acc[i][v] : acc[i][v];
      }
    return;
  }
  for (int i = 0; i < MR; ++i)  // edge tile: whole vectors, then the valid part of the last one
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      const int64_t n = std::min<int64_t>(W, cols - v * W);
      if (n <= 0) break;
      VU* c = reinterpret_cast<VU*>(C + i * ldc + v * W);
      if (n == W) *c = accumulate ? *c + acc[i][v] : acc[i][v];
      else store_partial<S>(C + i * ldc + v * W, acc[i][v], (int)n, accumulate);
    }
}


// f(R, NV) with a tile's shape as compile-time constants: R rows in [1, 5], NV vectors in [1, 3]
template <typename F>
inline void with_tile_shape(int64_t rows, int64_t nv, const F& f) {
  auto with_nv = [&](auto r) {
    if (nv == 3) f(r, std::integral_constant<int, 3>{});
    else if (nv == 2) f(r, std::integral_constant<int, 2>{});
    else f(r, std::integral_constant<int, 1>{});
  };
  switch (rows) {
    case 5: with_nv(std::integral_constant<int, 5>{}); break;
    case 4: with_nv(std::integral_constant<int, 4>{}); break;
    case 3: with_nv(std::integral_constant<int, 3>{}); break;
    case 2: with_nv(std::integral_constant<int, 2>{}); break;
    default: with_nv(std::integral_constant<int, 1>{}); break;
  }
}

}  // namespace detail

// C (M, N) = A (M, K) @ B (+ C when accumulate) (+ bias (N,) on every row, when given: it must hold
// B.Np values, the padding included); A row-major with row stride lda, C with ldc.
template <typename S>
void small_gemm(int64_t M, const S* A, int64_t lda, const PackedB<S>& B, S* C, int64_t ldc, bool accumulate,
                const S* bias = nullptr) {
  constexpr int W = Vec<S>::kWidth;
  constexpr int MR = 5, NV = 3;  // 15 accumulators + 3 B vectors + a broadcast: fits 32 AVX-512 registers
  const int64_t K = B.K, N = B.N, Np = B.Np, seg = B.seg, stride = B.stride;
  // one tile, through the instantiation that fits its row segments and width (see detail::tile)
  auto tile_of = [&](auto r, auto nvc, const S* a, const S* b, S* c, int64_t cols, const S* bj) {
    constexpr int R = decltype(r)::value, NVC = decltype(nvc)::value;
    if (seg != K && K == 3 * seg && cols == NVC * W)
      detail::tile<S, R, NVC, false, false, true, 3>(K, seg, stride, a, lda, b, Np, c, ldc, cols, accumulate, bj);
    else if (seg != K) detail::tile<S, R, NVC, false>(K, seg, stride, a, lda, b, Np, c, ldc, cols, accumulate, bj);
    else if (cols == NVC * W)
      detail::tile<S, R, NVC, false, true, true>(K, K, K, a, lda, b, Np, c, ldc, cols, accumulate, bj);
    else detail::tile<S, R, NVC, false, true>(K, K, K, a, lda, b, Np, c, ldc, cols, accumulate, bj);
  };
  for (int64_t j0 = 0; j0 < Np; j0 += NV * W) {
    const int64_t nv = std::min<int64_t>(NV, (Np - j0) / W);
    const int64_t cols = std::min<int64_t>(N - j0, nv * W);
    for (int64_t i0 = 0; i0 < M; i0 += MR) {
      const int64_t rows = std::min<int64_t>(MR, M - i0);
      const S* a = A + i0 * lda;
      const S* b = B.data + j0;
      S* c = C + i0 * ldc + j0;
      const S* bj = bias ? bias + j0 : nullptr;
      // full-height tiles use all MR rows; the last rows run a smaller instantiation
      detail::with_tile_shape(rows, nv, [&](auto r, auto v) { tile_of(r, v, a, b, c, cols, bj); });
    }
  }
}

// Weight gradients: out (N, M) = D^T A, out[j, i] = sum_k D[k, j] * A[k, i], summed over K (the T * rows
// of a chunk), with A (K, M) of row stride lda and D (K, .) of row stride ldd. Each tile holds MR rows j of
// out (D's values broadcast) by NV vectors of its columns i (A's rows, read in whole vectors: A's rows must
// be readable up to M rounded up to the vector width), in registers over the whole K loop, and is stored
// with contiguous (masked at the edge) vector stores into out's rows.
// D's columns come in `blocks` gate blocks `seg` apart of which the first `valid` are real: block g's
// column g * seg + u is out's row g * valid + u, and the padding columns are never computed.

// K is walked in blocks of at most kBlockTN rows (later blocks add to out) so that a block of A stays in L2.
constexpr int64_t kBlockTN = 768;

template <typename S>
void small_gemm_tn(int64_t M, int64_t K, const S* A, int64_t lda, const S* D, int64_t ldd, int64_t blocks,
                   int64_t seg, int64_t valid, S* out, int64_t ldo) {
  constexpr int W = Vec<S>::kWidth;
  constexpr int MR = 5, NV = 3;  // 15 accumulators + 3 A vectors + a broadcast, as in small_gemm
  const int64_t kblocks = std::max<int64_t>(1, (K + kBlockTN - 1) / kBlockTN), kb = (K + kblocks - 1) / kblocks;
  for (int64_t k0 = 0; k0 < std::max<int64_t>(K, 1); k0 += std::max<int64_t>(kb, 1)) {
    const int64_t nk = std::min(kb, K - k0);
    const bool accumulate = k0 > 0;
    for (int64_t i0 = 0; i0 < M; i0 += NV * W) {
      const int64_t cols = std::min<int64_t>(M - i0, NV * W), nv = (cols + W - 1) / W;
      for (int64_t g = 0; g < blocks; ++g)
        for (int64_t u0 = 0; u0 < valid; u0 += MR) {
          const int64_t rows = std::min<int64_t>(MR, valid - u0);
          const S* a = A + k0 * lda + i0;
          const S* d = D + k0 * ldd + g * seg + u0;
          S* o = out + (g * valid + u0) * ldo + i0;
          detail::with_tile_shape(rows, nv, [&](auto r, auto v) {
            // out's rows are D's columns (broadcast), its columns A's (vectors)
            detail::tile<S, decltype(r)::value, decltype(v)::value, true>(nk, nk, nk, d, ldd, a, lda, o, ldo, cols,
                                                                          accumulate, nullptr);
          });
        }
    }
  }
}

}  // namespace grunet
