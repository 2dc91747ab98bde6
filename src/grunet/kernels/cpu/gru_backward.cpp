// grunet fused CPU GRU, backward over the whole sequence (one layer, one direction).
//
// Forward (gru_forward.cpp): h' = n + z (h - n), n = tanh(a_n), r = sigma(a_r), z = sigma(a_z) with
//   reset-after:  a_n = G_n + r * a,  a = W_hn h + b_hn;      reset-before: a_n = G_n + W_hn (r h).
// Walking time backwards with dh = dL/dh' (+ dL/dout_t), per row and unit:
//   dn   = dh (1 - z)            dz = dh (h - n)            dh_prev = dh z  (+ the recurrent terms below)
//   da_n = dn (1 - n^2)          da_z = dz sigma'(z)
//   reset-after:   da_r = da_n a sigma'(r),   da = da_n r
//                  dG_h = [da_r | da_z | da]       -> dh_prev += dG_h W_hh          (one GEMM per step)
//                  dG_x = [da_r | da_z | da_n]     (input side: dx, dW_ih, db_ih)
//   reset-before:  d(rh) = da_n W_hn  (GEMM),  da_r = d(rh) h sigma'(r),  dh_prev += d(rh) r
//                  dG = [da_r | da_z | da_n]       -> dh_prev += dG_rz W_h[rz]      (second GEMM)
// After the loop, each thread multiplies its chunk's dG (all steps stacked, chunk-major) in a few big
// products, and the per-chunk weight gradients are summed into chunk 0's at the end. The weight gradients
// go through small_gemm_tn (register tiles over the whole K = T * rows; MKL ran these transposed shapes at
// ~70% of this core's peak); dG's rows are padded to whole vectors (ldg) for it:
//   dx = dG_x W_ih,  dW_ih = dG_x^T x,  db_ih = sum dG_x,
//   reset-after:  dW_hh = dG_h^T hprev,  db_hh = sum dG_h
//   reset-before: dW_h[rz] = dG_rz^T hprev,  dW_hn = da_n^T (r h)
// Padded steps (t >= lengths[b]) passed h through unchanged: dh flows past them and their dG rows are 0.
#include "gru_cpu.h"

namespace grunet {
namespace {

template <typename S>
struct Bwd {
  int64_t T, B, I, H, ldg;  // ldg: row stride of dG (3H padded, see gru_backward)
  const StepMatrix<S>* W_h;   // op = reset-after W_hh (3H, H); reset-before W_h[rz] (2H, H)
  const StepMatrix<S>* W_hn;  // reset-before W_hn (H, H)
  const S* w_ih;              // (3H, I)
  const int64_t* len;         // (B,) or nullptr
  bool reverse, reset_after, has_b_ih, has_b_hh, need_dx, need_weights;
  const S* dout;              // (T, B, H) user layout, or nullptr: no gradient reached the outputs
  const S* zero_row;          // (H,) zeros, read instead of dout's rows when dout is nullptr
  const S* xs;                // chunk-major (T*B, I)
  const S* gates;             // chunk-major (T*B, 3H) r | z | n
  const S* aux;               // chunk-major (T*B, H): a (reset-after) or rh (reset-before)
  const S* hprev;             // chunk-major (T*B, H)
  S* dG;                      // chunk-major (T*B, 3H): reset-after dG_h, then dG_x; reset-before dG
  S* da_n;                    // chunk-major (T*B, H): reset-after only
  S* dh;                      // (B, H): in dh_n, out dh0
  S* drh;                     // (B, H) scratch, reset-before
  S* dx;                      // (T, B, I) user layout
  S* dx_scratch;              // chunk-major (T*B, I)
  S* dw_ih;                   // per chunk (3H, I)
  S* dw_hh;                   // per chunk (3H, H)
  S* db_ih;                   // per chunk (3H,)
  S* db_hh;                   // per chunk (3H,)

  template <int ACT, bool RESET_AFTER>
  void step(int64_t t, int64_t b0, int64_t nb) const {
    const int64_t H3 = 3 * H, row0 = T * b0 + t * nb;
    S* dG_t = dG + row0 * ldg;
    S* dh_c = dh + b0 * H;
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t b = b0 + i, row = row0 + i;
      S* __restrict d = dh_c + i * H;
      S* __restrict dg = dG + row * ldg;
      if (len && t >= len[b]) {  // padding: h passed through, the output was a constant 0
        std::fill(dg, dg + H3, S(0));
        if (RESET_AFTER) std::fill(da_n + row * H, da_n + (row + 1) * H, S(0));
        continue;
      }
      const S* __restrict g = gates + row * H3;
      const S* __restrict hp = hprev + row * H;
      const S* __restrict dO = dout ? dout + (t * B + b) * H : zero_row;
      const S* __restrict a = aux + row * H;
      if (RESET_AFTER) {
        S* __restrict dan = da_n + row * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const S r = g[j], z = g[H + j], n = g[2 * H + j];
          const S dhj = d[j] + dO[j];
          const S dn = dhj * (S(1) - z);
          const S dz = dhj * (hp[j] - n);
          const S dan_j = dn * (S(1) - n * n);
          dg[j] = dan_j * a[j] * sigma_grad<ACT>(r);  // da_r
          dg[H + j] = dz * sigma_grad<ACT>(z);        // da_z
          dg[2 * H + j] = dan_j * r;                  // da = d(W_hn h + b_hn)
          dan[j] = dan_j;
          d[j] = dhj * z;
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const S z = g[H + j], n = g[2 * H + j];
          const S dhj = d[j] + dO[j];
          const S dn = dhj * (S(1) - z);
          const S dz = dhj * (hp[j] - n);
          dg[H + j] = dz * sigma_grad<ACT>(z);
          dg[2 * H + j] = dn * (S(1) - n * n);
          d[j] = dhj * z;
        }
      }
    }
    if (RESET_AFTER) {
      W_h->mul(nb, dG_t, ldg, dh_c, H, true);  // dh_prev += [da_r | da_z | da] W_hh
      return;
    }
    S* drh_c = drh + b0 * H;
    W_hn->mul(nb, dG_t + 2 * H, ldg, drh_c, H, false);  // d(rh) = da_n W_hn
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t b = b0 + i, row = row0 + i;
      if (len && t >= len[b]) continue;
      const S* __restrict g = gates + row * H3;
      const S* __restrict hp = hprev + row * H;
      const S* __restrict q = drh_c + i * H;
      S* __restrict dg = dG + row * ldg;
      S* __restrict d = dh_c + i * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const S r = g[j];
        dg[j] = q[j] * hp[j] * sigma_grad<ACT>(r);  // da_r
        d[j] += q[j] * r;
      }
    }
    W_h->mul(nb, dG_t, ldg, dh_c, H, true);  // dh_prev += [da_r | da_z] W_h[rz]
  }

  // the chunk's weight, bias and input gradients: big GEMMs over its T * nb rows
  void after_loop(int64_t c, int64_t b0, int64_t nb) const {
    const int64_t H3 = 3 * H, base = T * b0, rows = T * nb;
    const bool tn = H <= 256 && I <= 256;  // small_gemm_tn beat MKL up to H = 256, not at H = 1024
    S* dGc = dG + base * ldg;
    if (need_weights) {
      S* dwh = dw_hh + c * H3 * H;
      if (reset_after) {
        if (tn) small_gemm_tn<S>(H, H3, rows, hprev + base * H, H, dGc, ldg, dwh, H);
        else gemm<S>(true, false, H3, H, rows, S(1), dGc, ldg, hprev + base * H, H, S(0), dwh, H);
        if (has_b_hh) column_sums(dGc, rows, H3, ldg, db_hh + c * H3);
      } else {
        if (tn) {
          small_gemm_tn<S>(H, 2 * H, rows, hprev + base * H, H, dGc, ldg, dwh, H);
          small_gemm_tn<S>(H, H, rows, aux + base * H, H, dGc + 2 * H, ldg, dwh + 2 * H * H, H);
        } else {
          gemm<S>(true, false, 2 * H, H, rows, S(1), dGc, ldg, hprev + base * H, H, S(0), dwh, H);
          gemm<S>(true, false, H, H, rows, S(1), dGc + 2 * H, ldg, aux + base * H, H, S(0), dwh + 2 * H * H, H);
        }
      }
    }
    if (reset_after)  // dG_h -> dG_x: the n block becomes da_n
      for (int64_t r = 0; r < rows; ++r)
        std::copy(da_n + (base + r) * H, da_n + (base + r + 1) * H, dGc + r * ldg + 2 * H);
    if (need_weights) {
      if (tn) small_gemm_tn<S>(I, H3, rows, xs + base * I, I, dGc, ldg, dw_ih + c * H3 * I, I);
      else gemm<S>(true, false, H3, I, rows, S(1), dGc, ldg, xs + base * I, I, S(0), dw_ih + c * H3 * I, I);
      if (has_b_ih) column_sums(dGc, rows, H3, ldg, db_ih + c * H3);
    }
    if (need_dx) {
      S* dxc = dx_scratch + base * I;
      gemm<S>(false, false, rows, I, H3, S(1), dGc, ldg, w_ih, I, S(0), dxc, I);
      for (int64_t t = 0; t < T; ++t) std::copy(dxc + t * nb * I, dxc + (t + 1) * nb * I, dx + (t * B + b0) * I);
    }
  }
};

// p[0:n] += p[c * n : (c + 1) * n] for c in [1, chunks)
template <typename S>
void sum_into_first(S* p, int64_t chunks, int64_t n) {
  for (int64_t c = 1; c < chunks; ++c) {
    S* __restrict p0 = p;
    const S* __restrict pc = p + c * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) p0[i] += pc[i];
  }
}

}  // namespace

// Returns [dx (T,B,I), dh0 (B,H), dw_ih, dw_hh, db_ih, db_hh]; undefined where not asked for or no bias
// (for reset-before db_ih is the grad of the one bias).
std::vector<at::Tensor> gru_backward(const c10::optional<at::Tensor>& dout_in, const c10::optional<at::Tensor>& dh_n,
                                     const at::Tensor& w_ih_in, const at::Tensor& w_hh_in, const at::Tensor& xs,
                                     const at::Tensor& gates, const at::Tensor& aux, const at::Tensor& hprev,
                                     const c10::optional<at::Tensor>& lengths, bool reset_after, int64_t activation,
                                     bool reverse, bool has_b_ih, bool has_b_hh, bool need_dx,
                                     bool need_weights, int64_t chunks, int64_t T) {
  const auto w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  // dout may be absent (the outputs were not used; the Python side does not materialise zeros for it)
  const auto dout = dout_in.has_value() ? dout_in->contiguous() : at::Tensor();
  const int64_t I = w_ih.size(1), H = w_hh.size(1);
  const int64_t B = dout.defined() ? dout.size(1) : dh_n.has_value() ? dh_n->size(0) : T > 0 ? hprev.size(0) / T : 0;
  if (dout.defined()) TORCH_CHECK(dout.size(0) == T, "grunet: dout must be (T, B, H)");
  const auto opt = hprev.options();
  const auto zero_row = at::zeros({H}, opt);
  at::Tensor len;
  if (lengths.has_value()) len = lengths->to(at::kLong).contiguous();

  auto dh = dh_n.has_value() ? dh_n->to(hprev.scalar_type()).contiguous().clone() : at::zeros({B, H}, opt);
  // dG rows padded to whole vectors: small_gemm_tn reads B's columns in whole vectors (also from the n
  // block at 2H for reset-before's dW_hn); the padding is never stored anywhere
  const int64_t W = hprev.scalar_type() == at::kDouble ? 8 : 16;
  const int64_t ldg = std::max((3 * H + W - 1) / W * W, 2 * H + (H + W - 1) / W * W);
  auto dG = BufferPool::empty({T * B, ldg}, opt);
  auto da_n = reset_after ? BufferPool::empty({T * B, H}, opt) : at::Tensor();
  auto drh = reset_after ? at::Tensor() : BufferPool::empty({B, H}, opt);
  at::Tensor dx, dx_scratch, dw_ih, dw_hh, db_ih, db_hh;
  if (need_dx) {
    dx = BufferPool::empty({T, B, I}, opt);
    dx_scratch = BufferPool::empty({T * B, I}, opt);
  }
  if (need_weights) {
    // per-chunk partials, summed into chunk 0's after the loop (a chunk without rows zeroes its own)
    dw_ih = BufferPool::empty({chunks, 3 * H, I}, opt);
    dw_hh = BufferPool::empty({chunks, 3 * H, H}, opt);
    if (has_b_ih) db_ih = BufferPool::empty({chunks, 3 * H}, opt);
    if (has_b_hh && reset_after) db_hh = BufferPool::empty({chunks, 3 * H}, opt);
  }
  const Chunking ch{T, B, chunks};
  const bool big_steps = B * H * 3 * H >= ((int64_t)1 << 20);

  AT_DISPATCH_FLOATING_TYPES(hprev.scalar_type(), "grunet_gru_backward", [&] {
    using S = scalar_t;
    StepMatrix<S> W_h, W_hn;
    const S* wh = w_hh.data_ptr<S>();
    if (reset_after) {
      W_h.init(wh, H, false, 3 * H, H);
    } else {
      W_h.init(wh, H, false, 2 * H, H);
      W_hn.init(wh + 2 * H * H, H, false, H, H);
    }
    auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; };
    Bwd<S> bw{T, B, I, H, ldg, &W_h, &W_hn, w_ih.data_ptr<S>(), len.defined() ? len.data_ptr<int64_t>() : nullptr,
              reverse, reset_after, has_b_ih, has_b_hh && reset_after, need_dx, need_weights,
              ptr(dout), zero_row.data_ptr<S>(), ptr(xs), ptr(gates), ptr(aux), ptr(hprev), ptr(dG), ptr(da_n), ptr(dh),
              ptr(drh), ptr(dx), ptr(dx_scratch), ptr(dw_ih), ptr(dw_hh), ptr(db_ih), ptr(db_hh)};
    with_activation(activation, [&](auto act) {
      constexpr int ACT = decltype(act)::value;
      for_batch_chunks(ch, big_steps, [&](int64_t c, int64_t b0, int64_t b1) {
        const int64_t nb = b1 - b0;
        if (nb == 0) {
          if (need_weights) {
            auto zero = [&](const at::Tensor& p) { if (p.defined()) p[c].zero_(); };
            zero(dw_ih), zero(dw_hh), zero(db_ih), zero(db_hh);
          }
          return;
        }
        for (int64_t s = T - 1; s >= 0; --s) {  // the forward's processing order, reversed
          const int64_t t = reverse ? T - 1 - s : s;
          if (reset_after) bw.template step<ACT, true>(t, b0, nb);
          else bw.template step<ACT, false>(t, b0, nb);
        }
        bw.after_loop(c, b0, nb);
      });
    });
  });
  auto reduce = [&](const at::Tensor& partials) {  // sum of the per-chunk gradients, into chunk 0's
    if (!partials.defined()) return partials;
    AT_DISPATCH_FLOATING_TYPES(partials.scalar_type(), "grunet_gru_backward_reduce", [&] {
      sum_into_first<scalar_t>(partials.data_ptr<scalar_t>(), chunks, partials.numel() / chunks);
    });
    return partials[0];
  };
  return {dx, dh, reduce(dw_ih), reduce(dw_hh), reduce(db_ih), reduce(db_hh)};
}

}  // namespace grunet
