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
#include <cstdint>
#include <cstring>
#include <vector>

namespace grunet {

template <typename S>
struct Vec {
  static constexpr int kWidth = 64 / sizeof(S);  // values per 64-byte vector
  typedef S type __attribute__((vector_size(64), aligned(64)));
  typedef S type_u __attribute__((vector_size(64), aligned(sizeof(S))));  // unaligned loads/stores
};

// B (K, N) in row-major with N padded to a multiple of the vector width, 64-byte aligned.
template <typename S>
struct PackedB {
  int64_t K = 0, N = 0, Np = 0;
  std::vector<S, std::allocator<S>> storage;
  S* data = nullptr;

  // src(k, n) = trans ? src[n * ld + k] : src[k * ld + n]
  void pack(const S* src, int64_t ld, bool trans, int64_t K_, int64_t N_) {
    constexpr int W = Vec<S>::kWidth;
    K = K_;
    N = N_;
    Np = (N + W - 1) / W * W;
    storage.assign(K * Np + W, S(0));
    data = storage.data();
    const auto misalign = reinterpret_cast<uintptr_t>(data) % 64;  // align the panel to 64 bytes
    if (misalign) data += (64 - misalign) / sizeof(S);
    for (int64_t k = 0; k < K; ++k) {
      S* row = data + k * Np;
      if (trans)
        for (int64_t n = 0; n < N; ++n) row[n] = src[n * ld + k];
      else
        std::memcpy(row, src + k * ld, N * sizeof(S));
    }
  }
};

namespace detail {

// One MR x (NV * W) tile of C = A @ B (+ C if accumulate); `cols` <= NV * W valid columns of C.
template <typename S, int MR, int NV>
inline void tile(int64_t K, const S* A, int64_t lda, const S* Bp, int64_t ldb, S* C, int64_t ldc, int64_t cols,
                 bool accumulate, int64_t rows, const S* bias) {
  using V = typename Vec<S>::type;
  using VU = typename Vec<S>::type_u;
  constexpr int W = Vec<S>::kWidth;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[i][v] = bias ? V(*reinterpret_cast<const VU*>(bias + v * W)) : V{};
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const V*>(Bp + k * ldb + v * W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const S a = A[i * lda + k];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[i][v] += a * b[v];
    }
  }
  if (rows == MR && cols == NV * W) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        VU* c = reinterpret_cast<VU*>(C + i * ldc + v * W);
        *c = accumulate ? *c + acc[i][v] : acc[i][v];
      }
    return;
  }
  for (int i = 0; i < rows; ++i) {  // edge tile: scalar stores of the valid part
    S buf[NV * W];
    std::memcpy(buf, &acc[i][0], sizeof(buf));
    S* c = C + i * ldc;
    for (int64_t j = 0; j < cols; ++j) c[j] = accumulate ? c[j] + buf[j] : buf[j];
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
  const int64_t K = B.K, N = B.N, Np = B.Np;
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
      auto run = [&](auto mr) {
        constexpr int R = decltype(mr)::value;
        if (nv == 3) detail::tile<S, R, 3>(K, a, lda, b, Np, c, ldc, cols, accumulate, rows, bj);
        else if (nv == 2) detail::tile<S, R, 2>(K, a, lda, b, Np, c, ldc, cols, accumulate, rows, bj);
        else detail::tile<S, R, 1>(K, a, lda, b, Np, c, ldc, cols, accumulate, rows, bj);
      };
      switch (rows) {
        case 5: run(std::integral_constant<int, 5>{}); break;
        case 4: run(std::integral_constant<int, 4>{}); break;
        case 3: run(std::integral_constant<int, 3>{}); break;
        case 2: run(std::integral_constant<int, 2>{}); break;
        default: run(std::integral_constant<int, 1>{}); break;
      }
    }
  }
}

// Weight gradients: out (N, M) = B^T A, i.e. out[j, i] = sum_k A[k, i] * B[k, j], with A (K, M) row stride
// lda and B (K, N) row stride ldb, summed over K (the T * rows of a chunk). Each MR x NV-vector tile of
// out^T keeps its accumulators in registers over the whole K loop and is stored transposed at the end.
// B's rows are read in whole vectors: columns up to N rounded up to the vector width must lie inside B's
// row (the caller pads ldb).
template <typename S>
void small_gemm_tn_block(int64_t M, int64_t N, int64_t K, const S* A, int64_t lda, const S* B, int64_t ldb, S* out,
                         int64_t ldo, bool accumulate) {
  using V = typename Vec<S>::type;
  using VU = typename Vec<S>::type_u;
  constexpr int W = Vec<S>::kWidth;
  constexpr int MR = 5, NV = 3;
  const int64_t Np = (N + W - 1) / W * W;
  for (int64_t j0 = 0; j0 < Np; j0 += NV * W) {
    const int64_t nv = std::min<int64_t>(NV, (Np - j0) / W);
    const int64_t cols = std::min<int64_t>(N - j0, nv * W);
    for (int64_t i0 = 0; i0 < M; i0 += MR) {
      const int64_t rows = std::min<int64_t>(MR, M - i0);
      auto run = [&](auto mr, auto nvc) {
        constexpr int R = decltype(mr)::value, NVC = decltype(nvc)::value;
        V acc[R][NVC];
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
          for (int v = 0; v < NVC; ++v) acc[i][v] = V{};
        const S* a = A + i0;
        const S* b = B + j0;
        for (int64_t k = 0; k < K; ++k) {
          V bv[NVC];
#pragma GCC unroll 16
          for (int v = 0; v < NVC; ++v) bv[v] = *reinterpret_cast<const VU*>(b + k * ldb + v * W);
#pragma GCC unroll 16
          for (int i = 0; i < R; ++i) {
            const S av = a[k * lda + i];
#pragma GCC unroll 16
            for (int v = 0; v < NVC; ++v) acc[i][v] += av * bv[v];
          }
        }
        for (int i = 0; i < R; ++i) {
          S buf[NVC * W];
          std::memcpy(buf, &acc[i][0], sizeof(buf));
          if (accumulate)
            for (int64_t j = 0; j < cols; ++j) out[(j0 + j) * ldo + i0 + i] += buf[j];
          else
            for (int64_t j = 0; j < cols; ++j) out[(j0 + j) * ldo + i0 + i] = buf[j];
        }
      };
      auto with_nv = [&](auto mr) {
        if (nv == 3) run(mr, std::integral_constant<int, 3>{});
        else if (nv == 2) run(mr, std::integral_constant<int, 2>{});
        else run(mr, std::integral_constant<int, 1>{});
      };
      switch (rows) {
        case 5: with_nv(std::integral_constant<int, 5>{}); break;
        case 4: with_nv(std::integral_constant<int, 4>{}); break;
        case 3: with_nv(std::integral_constant<int, 3>{}); break;
        case 2: with_nv(std::integral_constant<int, 2>{}); break;
        default: with_nv(std::integral_constant<int, 1>{}); break;
      }
    }
  }
}

// K is walked in blocks of at most kBlockTN rows (later blocks add to out) so that a block of B stays in L2.
constexpr int64_t kBlockTN = 768;

template <typename S>
void small_gemm_tn(int64_t M, int64_t N, int64_t K, const S* A, int64_t lda, const S* B, int64_t ldb, S* out,
                   int64_t ldo) {
  if (K > kBlockTN) {
    const int64_t blocks = (K + kBlockTN - 1) / kBlockTN, kb = (K + blocks - 1) / blocks;  // even blocks
    for (int64_t k0 = 0; k0 < K; k0 += kb)
      small_gemm_tn_block(M, N, std::min(kb, K - k0), A + k0 * lda, lda, B + k0 * ldb, ldb, out, ldo, k0 > 0);
    return;
  }
  small_gemm_tn_block(M, N, K, A, lda, B, ldb, out, ldo, false);
}

}  // namespace grunet
